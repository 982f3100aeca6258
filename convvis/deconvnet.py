"""Gradients, DeconvNets and guided backprop: one backward pass, three rules at the rectifiers.

Paper, Sect. 4: reconstructing the input of layer n with a DeconvNet (Zeiler & Fergus 2014) is,
layer by layer, the same computation as back-propagating the gradient, except at the rectifiers:

| layer           | gradient back-prop                         | DeconvNet                         |
|-----------------|--------------------------------------------|-----------------------------------|
| convolution     | transposed convolution (flipped kernel)    | the same                          |
| max pooling     | route to the argmax of each pooling region | unpool with the recorded switches |
| ReLU            | R_n = R_{n+1} * 1(X_n > 0)  (forward sign)  | R_n = R_{n+1} * 1(R_{n+1} > 0)      |

Guided backprop (Springenberg et al. 2014) applies both gates. :func:`backprop_rule` makes any model
back-propagate with one of these rules at every ``nn.ReLU`` / ``nn.ReLU6`` module (in-place ones
included), and puts the model back exactly as it was on exit.

For ReLU6 the "gradient" gate is ``1(0 < X_n < 6)``; "deconvnet" ignores the forward input entirely
(``relu`` of the backward signal), as Zeiler & Fergus's rule does; "guided" multiplies both.
"""

from __future__ import annotations

import contextlib
import threading
import types
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from .common import (
    RECTIFIERS,
    Target,
    as_module,
    capture_output,
    check_eval_mode,
    check_image,
    frozen_parameters,
    score_gradient,
)

__all__ = [
    "RULES",
    "relu_backward",
    "backprop_rule",
    "rule_gradient",
    "reconstruct",
    "FunctionalRectifierError",
]

RULES = ("gradient", "deconvnet", "guided")
_state = threading.local()


class FunctionalRectifierError(RuntimeError):
    """The model applies rectifiers as functions (``F.relu``), which a module swap cannot reach."""


def relu_backward(x: torch.Tensor, grad: torch.Tensor, rule: str, upper: float | None = None) -> torch.Tensor:
    """The backward signal through a rectifier under ``rule``.

    ``x`` is the rectifier's forward input X_n, ``grad`` the signal R_{n+1} arriving from above;
    ``upper`` is 6 for ReLU6 (the gradient is also blocked where X_n >= 6). Returns R_n:

    * ``"gradient"``:  R_{n+1} * 1(X_n > 0) [* 1(X_n < upper)]
    * ``"deconvnet"``: R_{n+1} * 1(R_{n+1} > 0)
    * ``"guided"``:    both gates
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, not {rule!r}")
    forward_gate = x > 0
    if upper is not None:
        forward_gate = forward_gate & (x < upper)
    if rule == "gradient":
        return grad * forward_gate
    if rule == "deconvnet":
        return grad.clamp(min=0)
    return grad.clamp(min=0) * forward_gate


class _Rectify(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, rule, upper):
        ctx.save_for_backward(x)
        ctx.rule, ctx.upper = rule, upper
        return x.clamp(0, upper) if upper is not None else x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return relu_backward(x, grad, ctx.rule, ctx.upper), None, None


def _rule_forward(module: nn.Module, rule: str):
    upper = 6.0 if isinstance(module, nn.ReLU6) else None

    def forward(self, x):
        _state.inside = getattr(_state, "inside", 0) + 1
        try:
            # out of place even for in-place modules: the swapped forward's result is what the
            # surrounding code uses, and the caller's tensor must not be overwritten
            return _Rectify.apply(x, rule, upper)
        finally:
            _state.inside -= 1

    return types.MethodType(forward, module)


# Rectifiers written as functions, which a module swap cannot reach. Always rectifiers:
_ALWAYS = {
    torch.relu, torch.relu_, F.relu, F.relu_, F.relu6, F.hardtanh, F.hardtanh_,
    torch.Tensor.relu, torch.Tensor.relu_,
    F.threshold, F.threshold_, torch.threshold, torch.threshold_,
    torch.clamp_min, torch.clamp_min_, torch.Tensor.clamp_min, torch.Tensor.clamp_min_,
    F.leaky_relu, F.leaky_relu_, F.prelu, F.rrelu, F.rrelu_, F.elu, F.elu_, F.celu, F.celu_, F.selu,
    F.selu_, F.gelu, F.silu, F.mish, F.hardswish, F.softplus,
}
_ALWAYS |= {getattr(torch, n) for n in ("rrelu", "rrelu_", "selu", "selu_", "celu", "celu_", "prelu")
            if hasattr(torch, n)}
# A clamp is a rectifier when its lower bound is 0 (x.clamp(min=0), torch.clip(x, 0, 6), ...).
_CLAMPS = {torch.clamp, torch.clip, torch.clamp_, torch.clip_, torch.Tensor.clamp, torch.Tensor.clip,
           torch.Tensor.clamp_, torch.Tensor.clip_}
# torch.maximum(x, 0-tensor) / torch.max(x, zeros): a rectifier when one side is all zeros.
_MAXIMA = {torch.maximum, torch.max, torch.Tensor.maximum, torch.Tensor.max, torch.fmax}


def _is_rectifier_call(func, args, kwargs) -> bool:
    if func in _ALWAYS:
        return True
    if func in _CLAMPS:
        lower = kwargs.get("min", args[1] if len(args) > 1 else None)
        if isinstance(lower, torch.Tensor):
            return lower.numel() > 0 and bool((lower == 0).all())
        return lower is not None and float(lower) == 0.0
    if func in _MAXIMA and len(args) >= 2 and isinstance(args[1], torch.Tensor):
        other = args[1]
        return other.is_floating_point() and other.numel() > 0 and bool((other == 0).all())
    return False


class _WatchRectifiers(TorchFunctionMode):
    """Records rectifier *functions* called outside the swapped modules during a forward pass."""

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not getattr(_state, "inside", 0) and _is_rectifier_call(func, args, kwargs):
            self.calls.append(getattr(func, "__name__", str(func)))
        return func(*args, **kwargs)


@contextlib.contextmanager
def backprop_rule(model: nn.Module, rule: str = "guided") -> Iterator[nn.Module]:
    """Make ``model`` back-propagate with ``rule`` at every ReLU / ReLU6 module, temporarily.

    Inside the ``with`` block, autograd through the model follows the gradient, DeconvNet or guided
    rule at the rectifiers (convolutions, pooling and everything else are untouched). Forward values
    are unchanged. Each rectifier module's ``forward`` is swapped for one that applies the rule; on
    exit, also when the body raises, the original forwards are restored, so the model comes back
    exactly as it was.

    Rectifiers the swap cannot reach are refused, not silently treated as the plain gradient:
    functions (``F.relu``, ``F.relu6``, ``hardtanh``, ``F.threshold``, ``clamp``/``clip`` with a
    lower bound of 0, ``torch.maximum(x, 0)``), modules that call them (``nn.Threshold``,
    ``nn.Hardtanh``), and other activations for which the rules are not defined (leaky ReLU, ELU,
    GELU, SiLU, ...). Every forward pass inside the block watches for them and raises
    :class:`FunctionalRectifierError` (for ``rule="gradient"`` they are harmless and allowed).
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, not {rule!r}")
    module = as_module(model)
    rectifiers = [m for m in module.modules() if isinstance(m, RECTIFIERS)]
    saved = [(m, m.__dict__.get("forward", None)) for m in rectifiers]
    root_saved = module.__dict__.get("forward", None)
    try:
        for m in rectifiers:
            m.forward = _rule_forward(m, rule)
        # read after the swap: when the root is itself a rectifier, its swapped forward must run
        original_root_forward = module.forward
        if rule != "gradient":

            def watched_forward(self, *args, **kwargs):
                with _WatchRectifiers() as watch:
                    out = original_root_forward(*args, **kwargs)
                if watch.calls:
                    names = sorted(set(watch.calls))
                    raise FunctionalRectifierError(
                        f"the model applies {len(watch.calls)} rectifier(s) or activation(s) as "
                        f"functions ({', '.join(names)}) that the {rule!r} rule cannot reach; "
                        "replace them with nn.ReLU / nn.ReLU6 modules, or use rule='gradient'"
                    )
                return out

            module.forward = types.MethodType(watched_forward, module)
        yield module
    finally:
        for m, fwd in saved:
            if fwd is None:
                m.__dict__.pop("forward", None)
            else:
                m.forward = fwd
        if root_saved is None:
            module.__dict__.pop("forward", None)
        else:
            module.forward = root_saved


def rule_gradient(
    model: nn.Module, image: torch.Tensor, target: Target = None, rule: str = "guided"
) -> torch.Tensor:
    """dS_c/dI computed with ``rule`` at the rectifiers; (N,C,H,W), same as ``image``.

    ``rule="gradient"`` is the true gradient (:func:`convvis.input_gradient`); ``"deconvnet"`` is
    the DeconvNet reconstruction of the class score; ``"guided"`` guided backprop. It is the same
    recipe as every other gradient (:func:`convvis.common.score_gradient`), run inside
    :func:`backprop_rule`.
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, not {rule!r}")
    with backprop_rule(model, rule):
        grad, _, _, _ = score_gradient(model, image, target)
    return grad


def reconstruct(
    model: nn.Module,
    image: torch.Tensor,
    layer: str,
    channel: int,
    rule: str = "deconvnet",
    unit: str | tuple[int, int] = "max",
) -> torch.Tensor:
    """Project one unit of an intermediate feature map back to the input (the DeconvNet use case).

    Parameters
    ----------
    layer:
        Name of the module whose output holds the feature map (``model.get_submodule(layer)``).
    channel:
        Which feature map (channel) of that output.
    unit:
        ``"max"``: each image's strongest activation in that channel, all others set to zero, as
        Zeiler & Fergus do; ``(i, j)``: that spatial position; ``"all"``: the whole map (summed).
    rule:
        ``"gradient"``, ``"deconvnet"`` or ``"guided"`` at every rectifier below the layer.

    Returns
    -------
    torch.Tensor
        (N,C,H,W) reconstruction in input space: d(selected activation)/dI under ``rule``. The
        backward pass starts from 1; Zeiler & Fergus send the activation's own value back, so
        under the DeconvNet rule (linear, or positively homogeneous at the rectifiers) their
        reconstruction of a positive activation is this one times its value.
    """
    module = as_module(model)
    check_eval_mode(module)
    check_image(image, module)
    with capture_output(module, layer) as store, backprop_rule(module, rule), frozen_parameters(module), \
            torch.enable_grad():
        x = image.detach().requires_grad_(True)
        module(x)
        a = store["output"]
        if a.ndim != 4:
            raise ValueError(f"layer {layer!r} outputs shape {tuple(a.shape)}, not a (N,C,h,w) feature map")
        if not 0 <= channel < a.shape[1]:
            raise IndexError(f"channel {channel} is out of range: layer {layer!r} has {a.shape[1]} channels")
        fmap = a[:, channel]
        if unit == "all":
            selected = fmap.sum()
        elif unit == "max":
            flat = fmap.flatten(1)
            selected = flat.gather(1, flat.argmax(dim=1, keepdim=True)).sum()
        else:
            i, j = unit
            selected = fmap[:, i, j].sum()
        (g,) = torch.autograd.grad(selected, x)
    return g
