"""The gradient of a class score with respect to the input image, and its first-order Taylor model.

Paper, Sect. 3 (Eqs. 2-4): around an image I0 the unnormalised class score is approximately linear,

    S_c(I) ~= w^T I + b,    w = dS_c/dI evaluated at I0.                                (Eq. 3-4)

For a linear classifier S_c(I) = w_c^T I + b_c (Eq. 2) the approximation is exact and w = w_c.

Everything here works on (N,3,H,W) batches with one target class per image, takes gradients with
respect to the image only (no parameter gradient is computed or accumulated), and leaves the model
and the image exactly as they were.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .models import LoadedModel

__all__ = [
    "Target",
    "as_module",
    "frozen_parameters",
    "resolve_targets",
    "class_score",
    "input_gradient",
    "TaylorCurve",
    "taylor_curve",
    "rectifier_states",
    "first_region_boundary",
    "capture_output",
]

Target = int | Sequence[int] | torch.Tensor | None


def as_module(model: nn.Module | LoadedModel) -> nn.Module:
    """The ``nn.Module`` behind a :class:`LoadedModel` (or the module itself)."""
    if isinstance(model, LoadedModel):
        return model.model
    if isinstance(model, nn.Module):
        return model
    raise TypeError(f"expected an nn.Module or LoadedModel, got {type(model).__name__}")


@contextlib.contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[nn.Module]:
    """Temporarily set ``requires_grad=False`` on every parameter; restore each flag on exit.

    With frozen weights autograd neither computes nor stores what weight gradients would need,
    so an input-gradient pass costs one forward and one backward to the input, nothing more.
    Flags are restored in ``finally``, also when the body raises.
    """
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield model
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)


@contextlib.contextmanager
def capture_output(model: nn.Module, layer: str) -> Iterator[dict[str, torch.Tensor]]:
    """Record the output of ``model.get_submodule(layer)`` while the block runs.

    Yields a dict whose ``"output"`` entry holds the layer's latest output (with its autograd
    history, so gradients can be taken with respect to it). The forward hook is removed on exit,
    also when the body raises. An unknown layer name raises ``ValueError``.
    """
    try:
        target = model.get_submodule(layer)
    except AttributeError:
        raise ValueError(f"the model has no module named {layer!r}") from None
    store: dict[str, torch.Tensor] = {}

    def keep(mod, args, out):
        store["output"] = out

    handle = target.register_forward_hook(keep)
    try:
        yield store
    finally:
        handle.remove()


def _check_image(image: torch.Tensor) -> None:
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"image must be a torch.Tensor, got {type(image).__name__}")
    if image.ndim != 4:
        raise ValueError(
            f"image must be an (N,C,H,W) batch, got shape {tuple(image.shape)}; "
            "use image[None] for a single (C,H,W) image"
        )
    if not image.is_floating_point():
        raise TypeError(f"image must be a floating-point tensor, got {image.dtype}")


def _check_model_mode(model: nn.Module) -> None:
    if model.training:
        raise ValueError(
            "the model is in training mode: batch norm and dropout would make each image's score "
            "depend on the rest of the batch and on chance. Call model.eval() first."
        )


def _check_scores(scores: torch.Tensor) -> None:
    if scores.ndim != 2:
        raise ValueError(f"the model must output (N, classes) scores, got shape {tuple(scores.shape)}")
    with torch.no_grad():
        s = scores.detach()
        if s.shape[1] > 1 and s.min() >= 0 and s.max() <= 1 and torch.allclose(
            s.sum(1), torch.ones_like(s[:, 0]), atol=1e-3
        ):
            raise ValueError(
                "the model's outputs are non-negative and sum to 1 per image: they look like softmax "
                "probabilities. The paper differentiates the unnormalised score S_c (the logit); "
                "remove the final softmax."
            )


def resolve_targets(target: Target, scores: torch.Tensor) -> torch.Tensor:
    """Turn ``target`` into an (N,) long tensor of class indices on ``scores``' device.

    ``None``: each image's top-1 class (argmax of its scores). An ``int``: that class for every
    image. A sequence or tensor of N ints: one class per image. Out-of-range indices, wrong lengths
    and non-integer values raise errors that say so.
    """
    n, classes = scores.shape
    if target is None:
        return scores.detach().argmax(dim=1)
    if isinstance(target, bool):
        raise TypeError("target must be a class index, not a bool")
    if isinstance(target, (int, np.integer)):
        t = torch.full((n,), int(target), dtype=torch.long, device=scores.device)
    else:
        t = torch.as_tensor(target, device=scores.device)
        if t.is_floating_point() or t.dtype == torch.bool or t.is_complex():
            raise TypeError(f"target must hold integer class indices, got {t.dtype}")
        t = t.long().reshape(-1)
        if t.numel() == 1:
            t = t.expand(n)
        elif t.numel() != n:
            raise ValueError(f"got {t.numel()} targets for a batch of {n} images")
    bad = (t < 0) | (t >= classes)
    if bad.any():
        raise IndexError(f"target class {int(t[bad][0])} is out of range: the model has {classes} classes")
    return t


def class_score(model: nn.Module | LoadedModel, image: torch.Tensor, target: Target = None) -> torch.Tensor:
    """The unnormalised class score S_c(I) of each image, shape (N,), no gradient.

    ``target`` as in :func:`resolve_targets` (default: each image's top-1 class).
    """
    module = as_module(model)
    _check_image(image)
    _check_model_mode(module)
    with torch.no_grad():
        scores = module(image)
    _check_scores(scores)
    t = resolve_targets(target, scores)
    return scores.gather(1, t[:, None])[:, 0]


def input_gradient(
    model: nn.Module | LoadedModel,
    image: torch.Tensor,
    target: Target = None,
    *,
    return_score: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """w = dS_c/dI at ``image`` (paper Eq. 4): the gradient of the unnormalised score.

    Parameters
    ----------
    model:
        A classifier in eval mode whose outputs are unnormalised scores (N, classes).
    image:
        (N,C,H,W) float batch, normalised for the model. Not modified.
    target:
        Class per image (see :func:`resolve_targets`); default: each image's top-1 class.
    return_score:
        Also return the scores S_c(I) (N,) and the targets (N,).

    Returns
    -------
    torch.Tensor
        (N,C,H,W), same dtype and device as ``image``; sign convention: a step along ``+w``
        raises S_c. With ``return_score``, the tuple ``(gradient, score, target)``.

    One forward and one backward pass for the whole batch: the images are independent in eval
    mode, so the gradient of the sum of their scores is each image's own gradient.
    """
    module = as_module(model)
    _check_image(image)
    _check_model_mode(module)
    x = image.detach().requires_grad_(True)  # a new leaf: the caller's tensor is untouched
    with frozen_parameters(module), torch.enable_grad():
        scores = module(x)
        _check_scores(scores)
        t = resolve_targets(target, scores)
        selected = scores.gather(1, t[:, None])[:, 0]
        (grad,) = torch.autograd.grad(selected.sum(), x)
    if return_score:
        return grad, selected.detach(), t
    return grad


@dataclass
class TaylorCurve:
    """True score against its first-order prediction along one direction (all arrays shape (E,)).

    ``true[k] = S_c(I0 + eps[k] d)`` and ``linear[k] = S_c(I0) + eps[k] w.d``; ``abs_error`` is
    ``|true - linear|``, ``rel_error`` is ``abs_error / |true - S_c(I0)|`` (how wrong the predicted
    *change* is; NaN where the score did not change at all, since the ratio is undefined there).
    """

    eps: np.ndarray
    true: np.ndarray
    linear: np.ndarray
    score0: float
    slope: float  # w.d, the directional derivative

    @property
    def abs_error(self) -> np.ndarray:
        return np.abs(self.true - self.linear)

    @property
    def rel_error(self) -> np.ndarray:
        change = np.abs(self.true - self.score0)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(change > 0, self.abs_error / change, np.nan)


def taylor_curve(
    model: nn.Module | LoadedModel,
    image: torch.Tensor,
    direction: torch.Tensor,
    eps: Sequence[float] | np.ndarray,
    target: Target = None,
    *,
    normalize: bool = True,
    chunk: int = 16,
) -> TaylorCurve:
    """Compare S_c(I0 + eps d) with its first-order prediction S_c(I0) + eps w.d.

    Parameters
    ----------
    image:
        (1,C,H,W), the expansion point I0.
    direction:
        d, shape (C,H,W) or (1,C,H,W); scaled to unit L2 norm when ``normalize`` (so ``eps`` is the
        L2 length of the step in normalised-input units).
    eps:
        Step lengths (E,), any sign.
    target:
        One class (default: top-1 at I0).
    chunk:
        How many perturbed images go through the network at once.
    """
    _check_image(image)
    if image.shape[0] != 1:
        raise ValueError(f"taylor_curve expands around one image, got a batch of {image.shape[0]}")
    d = direction.detach().to(image.device, image.dtype).reshape(1, *image.shape[1:])
    if normalize:
        norm = d.norm()
        if norm == 0:
            raise ValueError("the direction is all zeros")
        d = d / norm
    grad, score0, t = input_gradient(model, image, target, return_score=True)
    slope = float((grad * d).sum())
    eps_arr = np.asarray(eps, dtype=np.float64).reshape(-1)
    module = as_module(model)
    true = []
    with torch.no_grad():
        for start in range(0, len(eps_arr), chunk):
            e = torch.as_tensor(eps_arr[start : start + chunk], dtype=image.dtype, device=image.device)
            batch = image.detach() + e.view(-1, 1, 1, 1) * d
            true.append(module(batch)[:, int(t[0])].double().cpu().numpy())
    s0 = float(score0[0])
    return TaylorCurve(eps_arr, np.concatenate(true), s0 + eps_arr * slope, s0, slope)


_RECTIFIERS = (nn.ReLU, nn.ReLU6)


@torch.no_grad()
def rectifier_states(model: nn.Module | LoadedModel, image: torch.Tensor) -> list[torch.Tensor]:
    """Which linear piece every rectifier unit is on, for each image of the batch.

    Returns one int8 tensor per ``nn.ReLU`` / ``nn.ReLU6`` module (in forward order), shaped like
    that module's input: 0 where the input is <= 0 (gradient blocked), 1 on the identity piece,
    2 where ReLU6 saturates (input >= 6). Two images with identical states lie in the same linear
    region of a ReLU network, where its scores are exactly affine in the input.

    Read with forward *pre*-hooks, because in-place rectifiers overwrite their input; the hooks are
    removed on exit, also when the forward pass raises.
    """
    module = as_module(model)
    _check_image(image)
    states: list[torch.Tensor] = []

    def record(mod, args):
        x = args[0]
        s = (x > 0).to(torch.int8)
        if isinstance(mod, nn.ReLU6):
            s = s + (x >= 6).to(torch.int8)
        states.append(s)

    handles = [m.register_forward_pre_hook(record) for m in module.modules() if isinstance(m, _RECTIFIERS)]
    if not handles:
        raise ValueError("the model has no nn.ReLU or nn.ReLU6 modules to read")
    try:
        module(image)
    finally:
        for h in handles:
            h.remove()
    return states


def first_region_boundary(
    model: nn.Module | LoadedModel,
    image: torch.Tensor,
    direction: torch.Tensor,
    max_eps: float,
    *,
    normalize: bool = True,
    iters: int = 50,
) -> tuple[float, float]:
    """Bracket the first step length at which any rectifier unit changes piece along ``direction``.

    Inside the linear region around ``image`` (no unit has switched) a ReLU network is exactly
    affine, so the first-order Taylor model is exact there; this finds where that stops. Bisection
    on the unit states of :func:`rectifier_states` between 0 and ``max_eps``.

    Returns ``(lo, hi)`` with no switch at ``lo`` and at least one at ``hi``. Raises ``ValueError``
    if nothing switches up to ``max_eps``. Use float64 models and images to resolve small steps.
    """
    _check_image(image)
    if image.shape[0] != 1:
        raise ValueError("first_region_boundary works on one image, shape (1,C,H,W)")
    d = direction.detach().to(image.device, image.dtype).reshape(image.shape)
    if normalize:
        d = d / d.norm()
    ref = rectifier_states(model, image)

    def switched(eps: float) -> bool:
        now = rectifier_states(model, image + eps * d)
        return any(bool((a != b).any()) for a, b in zip(ref, now))

    if not switched(max_eps):
        raise ValueError(f"no rectifier unit changes state up to eps = {max_eps}")
    lo, hi = 0.0, float(max_eps)
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if switched(mid):
            hi = mid
        else:
            lo = mid
    return lo, hi
