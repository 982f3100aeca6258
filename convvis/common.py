"""Plumbing shared by every method: targets, input checks, frozen weights, layer capture, and the
one recipe that takes a class score's gradient.

Every gradient the book computes (the paper's saliency map, SmoothGrad, Integrated Gradients,
DeconvNet and guided backprop, Grad-CAM) is the same computation:

    forward the image  ->  pick each image's target score S_c  ->  backward to the input
    (or to one layer's output)

:func:`score_gradient` is that recipe, written once. The backward rules of Sect. 4 are not a second
recipe: :func:`convvis.backprop_rule` changes what autograd does at the rectifiers, and the same
recipe runs inside it.
"""

from __future__ import annotations

import contextlib
import difflib
import warnings
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from .loaded_model import LoadedModel

__all__ = [
    "Target",
    "as_module",
    "class_names_of",
    "num_classes_of",
    "check_image",
    "check_eval_mode",
    "check_scores",
    "check_photo",
    "scores_and_targets",
    "RECTIFIERS",
    "deprecated_argument",
    "resolve_targets",
    "frozen_parameters",
    "capture_output",
    "score_gradient",
]

#: A class per image: ``None`` (each image's top-1 class), an ``int``, a class name such as
#: ``"tabby cat"``, or a sequence / tensor of those, one per image.
Target = int | str | Sequence[int | str] | torch.Tensor | None

#: The rectifier modules convvis reads and swaps (ReLU6 is EfficientNet-Lite's).
RECTIFIERS = (nn.ReLU, nn.ReLU6)


def as_module(model) -> nn.Module:
    """The ``nn.Module`` that computes the scores: ``model.model`` for a :class:`convvis.LoadedModel`,
    the model itself for any other ``nn.Module``."""
    if isinstance(model, LoadedModel):
        return model.model
    if isinstance(model, nn.Module):
        return model
    raise TypeError(f"expected an nn.Module or LoadedModel, got {type(model).__name__}")


def class_names_of(model) -> list[str] | None:
    """The model's class names (index-aligned with its scores), or ``None`` if it has none."""
    names = getattr(model, "class_names", None)
    return list(names) if names else None


def num_classes_of(model) -> int | None:
    """How many classes the model scores, when it can be read without a forward pass."""
    names = class_names_of(model)
    if names:
        return len(names)
    module = as_module(model)
    last = None
    for m in module.modules():
        if isinstance(m, nn.Linear):
            last = m
    return last.out_features if last is not None else None


def _reference_parameter(module: nn.Module) -> torch.Tensor | None:
    for p in module.parameters():
        if p.is_floating_point():
            return p
    return None


def _first_conv_channels(module: nn.Module) -> int | None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    return None


def check_image(image, model=None) -> None:
    """Refuse anything that is not a finite (N,C,H,W) float batch the model can read.

    Checked: a tensor; four dimensions; floating point; no NaN or Inf (one bad pixel would turn the
    whole map into zeros, and ``target=None`` into class 0); and, given ``model``, the same dtype
    and device as its weights and the channel count of its first convolution. Each failure says
    what convvis expects. Reads one value back from the image's device (the NaN/Inf check).
    """
    _check_image_form(image)
    settle([_image_finite(image)])
    if model is not None:
        _check_image_fits(image, as_module(model))


def _check_image_form(image) -> None:
    """What the host knows without reading the image: type, dimensions, dtype, batch size."""
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"image must be a torch.Tensor, got {type(image).__name__}")
    if image.ndim != 4:
        raise ValueError(
            f"image must be an (N,C,H,W) batch, got shape {tuple(image.shape)}; "
            "use image[None] for a single (C,H,W) image"
        )
    if not image.is_floating_point():
        raise TypeError(
            f"image must be a floating-point tensor normalised for the model, got {image.dtype}; "
            "load photos with convvis.load_image"
        )
    if image.shape[0] == 0:
        raise ValueError("image is an empty batch (N = 0)")


def _check_image_fits(image: torch.Tensor, module: nn.Module) -> None:
    """The image matches the model's weights (dtype, device) and first convolution (channels)."""
    p = _reference_parameter(module)
    if p is not None:
        if image.dtype != p.dtype:
            raise TypeError(
                f"image is {image.dtype} but the model's weights are {p.dtype}; "
                f"convert one of them (e.g. image.to({p.dtype}))"
            )
        if image.device != p.device:
            raise ValueError(
                f"image is on {image.device} but the model is on {p.device}; "
                f"move it with image.to({str(p.device)!r})"
            )
    channels = _first_conv_channels(module)
    if channels is not None and image.shape[1] != channels:
        raise ValueError(
            f"image has {image.shape[1]} channel(s) but the model reads {channels}; "
            "convvis.load_image converts grayscale and RGBA photos to RGB"
        )


# ---- checks evaluated on the device, read back together -----------------------------------------

#: A check of data: ``(flag, fail)``. ``flag`` is a bool, or a 0-dim bool tensor on the data's
#: device, that is True when the check fails; ``fail()`` raises the error that says so. Reading a
#: device value back to the host waits until the device has finished everything queued before it,
#: so the hot paths evaluate each check where the data is and read all the flags at once
#: (:func:`settle`).
Check = tuple[torch.Tensor | bool, Callable[[], None]]


def settle(checks: Sequence[Check]) -> None:
    """Raise the error of the first failing check in ``checks``; one read for all the device flags."""
    flags = [f for f, _ in checks if isinstance(f, torch.Tensor)]
    if flags:
        if len({f.device for f in flags}) == 1:
            read = iter(torch.stack(flags).tolist())  # the one read
        else:  # flags on different devices cannot be stacked: one read each
            read = iter([bool(f) for f in flags])
        values = [next(read) if isinstance(f, torch.Tensor) else f for f, _ in checks]
    else:
        values = [f for f, _ in checks]
    for failed, (_, fail) in zip(values, checks):
        if failed:
            fail()


def _image_finite(image: torch.Tensor) -> Check:
    def fail():
        bad = ~torch.isfinite(image)
        n_nan = int(torch.isnan(image).sum())
        raise ValueError(
            f"image contains {n_nan} NaN and {int(bad.sum()) - n_nan} infinite value(s); "
            "every pixel must be finite"
        )

    return ~torch.isfinite(image).all(), fail


def _scores_unnormalised(scores: torch.Tensor) -> Check:
    def fail():
        raise ValueError(
            "the model's outputs are non-negative and sum to 1 per image: they look like softmax "
            "probabilities. The paper differentiates the unnormalised score S_c (the logit); "
            "remove the final softmax."
        )

    if scores.ndim != 2:
        raise ValueError(f"the model must output (N, classes) scores, got shape {tuple(scores.shape)}")
    if scores.shape[1] <= 1:
        return False, fail
    with torch.no_grad():
        s = scores.detach()
        # torch.allclose(s.sum(1), 1, atol=1e-3), i.e. |sum - 1| <= atol + rtol * 1 (False for a
        # NaN, as allclose), written out: torch.isclose dispatches three times as many operations,
        # each a kernel launch the host must issue on a GPU
        sums_to_one = ((s.sum(1) - 1).abs() <= 1e-3 + 1e-5).all()
        low, high = torch.aminmax(s)
        flag = (low >= 0) & (high <= 1) & sums_to_one
    return flag, fail


def check_eval_mode(model) -> None:
    """Refuse a model in training mode.

    In training mode batch norm normalises with the batch's statistics and *overwrites* its
    running statistics on every forward pass, and dropout is random: scores would depend on the
    rest of the batch and on chance, and the model would come back changed.
    """
    module = as_module(model)
    if module.training:
        raise ValueError(
            "the model is in training mode: batch norm and dropout would make each image's score "
            "depend on the rest of the batch and on chance, and batch norm would overwrite its "
            "running statistics. Call model.eval() first."
        )


def check_scores(scores: torch.Tensor) -> None:
    """The model must output (N, classes) unnormalised scores, not softmax probabilities."""
    settle([_scores_unnormalised(scores)])


def check_photo(photo) -> np.ndarray:
    """Refuse anything that is not an H x W x 3 float RGB photo; return it as a float64 array.

    A photo is what :func:`convvis.to_photo` returns, values in [0, 1] (the range is not checked).
    """
    photo = np.asarray(photo)
    if photo.ndim != 3 or photo.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 RGB photo, got shape {photo.shape}")
    if not np.issubdtype(photo.dtype, np.floating):
        raise TypeError(f"expected a float photo in [0, 1], got {photo.dtype}")
    return photo.astype(np.float64)


def _class_index(name: str, class_names: Sequence[str] | None) -> int:
    if not class_names:
        raise TypeError(
            f"target {name!r} is a class name, but this model has no class names; "
            "pass a class index, or load the model with convvis.load_model"
        )
    key = name.strip().lower()
    for i, n in enumerate(class_names):
        if n.lower() == key:
            return i
    lowered = [n.lower() for n in class_names]
    close = [class_names[i] for i, n in enumerate(lowered) if key in n or n in key]
    close += [class_names[lowered.index(n)] for n in difflib.get_close_matches(key, lowered, n=5)]
    close = list(dict.fromkeys(close))[:5]
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(f"unknown class name {name!r}{hint}")


def resolve_targets(
    target: Target,
    scores: torch.Tensor | None = None,
    *,
    n: int | None = None,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Turn ``target`` into an (N,) long tensor of class indices.

    ``None``: each image's top-1 class (argmax of ``scores``, which is then required). An ``int``
    or a class name (``"tabby cat"``, matched case-insensitively against ``class_names``): that
    class for every image. A sequence or tensor of N ints or names: one class per image.

    ``n`` and ``num_classes`` default to ``scores.shape``, so targets can also be checked before
    any forward pass. Non-integer values (``1.7``, bools), unknown names, wrong lengths and
    out-of-range indices raise errors that say so.
    """
    out, check = _resolve_targets(target, scores, n=n, num_classes=num_classes, class_names=class_names,
                                  device=device)
    if check is not None:
        settle([check])
    return out


def _resolve_targets(
    target: Target,
    scores: torch.Tensor | None = None,
    *,
    n: int | None = None,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, Check | None]:
    """:func:`resolve_targets`, with the range check of a tensor's values left on the device:
    ``(targets, check)``, ``check`` None when the host has checked everything already."""
    if scores is not None:
        n = scores.shape[0] if n is None else n
        num_classes = scores.shape[1] if num_classes is None else num_classes
        device = scores.device if device is None else device
    if target is None:
        if scores is None:
            raise ValueError("target=None (top-1) needs the model's scores")
        return scores.detach().argmax(dim=1), None
    if isinstance(target, bool) or (isinstance(target, torch.Tensor) and target.dtype == torch.bool):
        raise TypeError("target must be a class index or name, not a bool")
    if isinstance(target, (int, np.integer, str)):
        items: list = [target]
    elif isinstance(target, torch.Tensor):
        if target.is_floating_point() or target.is_complex():
            raise TypeError(f"target must hold integer class indices, got {target.dtype}")
        # kept where it is (no read): converted, and range-checked on the device by the caller
        where = device if device is not None else torch.get_default_device()
        out = _target_count(target.detach().reshape(-1).to(device=where, dtype=torch.long, copy=True), n)
        return out, _targets_in_range(out, num_classes)
    elif isinstance(target, np.ndarray):
        if not np.issubdtype(target.dtype, np.integer):
            raise TypeError(f"target must hold integer class indices, got {target.dtype}")
        items = target.reshape(-1).tolist()
    elif isinstance(target, Sequence):
        items = list(target)
    elif isinstance(target, (float, np.floating)):
        raise TypeError(f"target {target!r} is not an integer class index or a class name")
    else:
        raise TypeError(
            f"target must be an int, a class name, a sequence or a tensor, not {type(target).__name__}"
        )
    idx = []
    for t in items:
        if isinstance(t, str):
            idx.append(_class_index(t, class_names))
        elif isinstance(t, (bool, np.bool_)):
            raise TypeError("target must be a class index or name, not a bool")
        elif isinstance(t, (int, np.integer)):
            idx.append(int(t))
        elif isinstance(t, torch.Tensor) and t.numel() == 1 and not t.is_floating_point():
            idx.append(int(t))
        else:
            raise TypeError(f"target {t!r} is not an integer class index or a class name")
    if not idx:
        raise ValueError("no target classes given")
    out = _target_count(torch.tensor(idx, dtype=torch.long, device=device), n)
    if num_classes is not None:
        for i in idx:  # the host holds these values: checked here, no read
            if i < 0 or i >= num_classes:
                raise IndexError(f"target class {i} is out of range: the model has {num_classes} classes")
    return out, None


def _target_count(out: torch.Tensor, n: int | None) -> torch.Tensor:
    if not out.numel():
        raise ValueError("no target classes given")
    if n is not None:
        if out.numel() == 1:
            out = out.expand(n)
        elif out.numel() != n:
            raise ValueError(f"got {out.numel()} targets for a batch of {n} images")
    return out


def _targets_in_range(out: torch.Tensor, num_classes: int | None) -> Check | None:
    if num_classes is None:
        return None
    bad = (out < 0) | (out >= num_classes)

    def fail():
        first = int(out[bad][0])
        raise IndexError(f"target class {first} is out of range: the model has {num_classes} classes")

    return bad.any(), fail


@contextlib.contextmanager
def frozen_parameters(model) -> Iterator[nn.Module]:
    """Temporarily set ``requires_grad=False`` on every parameter; restore each flag on exit.

    With frozen weights autograd neither computes nor stores what weight gradients would need,
    so an input-gradient pass costs one forward and one backward to the input, nothing more.
    Parameters that are frozen already (as :func:`convvis.load_model` leaves them) are not
    touched, so repeated calls on a frozen model cost one walk over its modules. The flags that
    were switched off are switched back on in ``finally``, also when the body raises.
    """
    module = as_module(model)
    thawed = [p for p in _parameters(module) if p.requires_grad]
    try:
        for p in thawed:
            p.requires_grad_(False)
        yield module
    finally:
        for p in thawed:
            p.requires_grad_(True)


def _parameters(module: nn.Module) -> list[torch.Tensor]:
    """Every parameter of ``module`` and its submodules, once each, in no particular order: what
    ``module.parameters()`` yields, for a fraction of its cost (no names are built)."""
    out, seen, stack, visited = [], set(), [module], set()
    while stack:
        m = stack.pop()
        if id(m) in visited:
            continue
        visited.add(id(m))
        for p in m._parameters.values():
            if p is not None and id(p) not in seen:
                seen.add(id(p))
                out.append(p)
        stack.extend(c for c in m._modules.values() if c is not None)
    return out


@contextlib.contextmanager
def capture_output(model, layer: str) -> Iterator[dict[str, torch.Tensor]]:
    """Record the output of ``model.get_submodule(layer)`` while the block runs.

    Yields a dict whose ``"output"`` entry holds the layer's latest output (with its autograd
    history, so gradients can be taken with respect to it). The forward hook is removed on exit,
    also when the body raises. An unknown layer name raises ``ValueError``.
    """
    module = as_module(model)
    try:
        target = module.get_submodule(layer)
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


def scores_and_targets(
    model, image: torch.Tensor, target: Target = None, *, checks: Sequence[Check] = ()
) -> tuple[torch.Tensor, torch.Tensor]:
    """The checked forward pass every method starts with: ``(scores, target)``.

    Checks the model (eval mode) and the image (:func:`check_image`), computes the scores (N, K)
    of the image, checks they are unnormalised (:func:`check_scores`), and resolves ``target`` to an
    (N,) long tensor (:func:`resolve_targets`; ``None``: each image's top-1 class). Runs in the
    caller's autograd mode: under ``torch.no_grad()`` for scores alone, with gradients enabled
    (and an image that requires them) for :func:`score_gradient`. The checks that need the data
    (NaN/Inf pixels, softmax outputs, target indices held in a tensor) are evaluated on the
    device and read back together, once. ``checks`` adds the caller's own checks of other inputs
    to that one read (see :data:`Check`), reported after the image's and before the scores'.
    """
    scores, t, _, pending = _checked_forward(model, image, target, checks)
    settle(pending)
    return scores, t


def _checked_forward(model, image: torch.Tensor, target: Target, checks: Sequence[Check] = ()):
    """``common.scores_and_targets`` with its data checks not yet read: ``(scores, target, index,
    checks)``. ``index`` is ``target`` made safe to gather with before the checks are read (a
    tensor's out-of-range values clamped; equal to ``target`` whenever the checks pass);
    ``checks`` (the image's, then the caller's ``checks``, then the scores' and the targets')
    must go to :func:`_settle` before any result is used."""
    pending = input_checks(model, image, checks)
    scores = as_module(model)(image)
    t, index = checked_targets(scores, target, pending, class_names=class_names_of(model))
    return scores, t, index, pending


def input_checks(model, image, checks: Sequence[Check] = ()) -> list[Check]:
    """The checks :func:`scores_and_targets` makes before its forward pass, for a caller that runs
    the model itself. What the host knows is checked now (eval mode; the image is an (N,C,H,W)
    float tensor with the model's dtype, device and channels); the checks of data (finite pixels,
    then the caller's ``checks``) are returned unread, for one :func:`settle` later."""
    module = as_module(model)
    check_eval_mode(module)
    _check_image_form(image)
    _check_image_fits(image, module)
    return [_image_finite(image), *checks]


def checked_targets(
    scores: torch.Tensor,
    target: Target,
    pending: list[Check],
    *,
    n: int | None = None,
    class_names: Sequence[str] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``target`` resolved against model outputs ``scores`` (N', K): ``(target, index)``, (n,) each.

    Appends to ``pending`` the check that ``scores`` are unnormalised and, for a tensor of targets,
    that its values lie in [0, K); ``index`` is ``target`` clamped into range, safe to gather with
    before ``pending`` is read (equal to ``target`` whenever the checks pass). ``n`` (default N')
    is the number of images: ``scores`` need not be the images' own outputs when ``target`` is
    given (only their class count K and device are used, and they are checked for softmax), while
    ``target=None`` takes each image's top-1 class, so ``scores`` must then be theirs. A target
    the host can refuse raises at once, after ``pending`` is read (a bad pixel is reported first).
    """
    pending.append(_scores_unnormalised(scores))
    try:
        t, in_range = _resolve_targets(target, scores, n=n, class_names=class_names)
    except (TypeError, ValueError, IndexError):
        settle(pending)  # a bad pixel or softmax scores are reported first, as before any target
        raise
    index = t
    if in_range is not None:
        pending.append(in_range)
        index = t.clamp(0, scores.shape[1] - 1)  # an index out of range would abort a GPU kernel
    return t, index


def score_gradient(
    model,
    image: torch.Tensor,
    target: Target = None,
    *,
    layer: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The one recipe: d S_c / d (input or a layer's output), for a batch, in one backward pass.

    Runs the checked forward pass (``common.scores_and_targets``: eval mode, image, unnormalised
    scores, ``target``) with the weights frozen, and differentiates the sum of the selected scores.
    Images in an eval-mode batch are independent, so the gradient of the sum is each image's own
    gradient.

    Returns ``(grad, score, target, features)``: ``grad`` has the shape of ``image`` (N,C,H,W) or,
    with ``layer``, of that layer's output; ``score`` (N,) is S_c(I); ``target`` (N,) the classes;
    ``features`` the detached layer output (``None`` without ``layer``). Run it inside
    :func:`convvis.backprop_rule` for DeconvNet or guided backprop. Neither the model nor the
    image is modified.
    """
    module = as_module(model)
    if not isinstance(image, torch.Tensor):
        check_image(image)  # says what it expects; a tensor is checked in full by scores_and_targets
    x = image.detach()  # a new leaf: the caller's tensor is untouched
    if x.is_floating_point():  # any other dtype is refused by scores_and_targets, with a message
        x.requires_grad_(True)
    ctx = capture_output(module, layer) if layer is not None else contextlib.nullcontext({})
    with ctx as store, frozen_parameters(module), torch.enable_grad():
        scores, t, index, checks = _checked_forward(model, x, target)
        selected = scores.gather(1, index[:, None])[:, 0]
        wrt = store["output"] if layer is not None else x
        if layer is not None and not (isinstance(wrt, torch.Tensor) and wrt.requires_grad):
            settle(checks)
            raise ValueError(f"layer {layer!r} does not output a tensor that depends on the image")
        (grad,) = torch.autograd.grad(selected.sum(), wrt)
    # read the checks once, after the backward pass is queued: the device runs forward and
    # backward without waiting for the host in between
    settle(checks)
    feats = store["output"].detach() if layer is not None else None
    return grad, selected.detach(), t, feats


def deprecated_argument(function: str, old: str, old_value, new: str, new_value, default=None):
    """The value of a renamed keyword argument, warning when the old name was used.

    ``old_value`` is ``None`` when the caller did not use the old name. Passing both names raises
    ``TypeError``. For one release after a rename (British spelling, ``target`` for classes).
    """
    if old_value is None:
        return new_value
    warnings.warn(f"{function}({old}=...) is deprecated; use {new}=...", DeprecationWarning, stacklevel=3)
    if new_value is not default:
        raise TypeError(f"{function}() got both {new}= and its deprecated spelling {old}=")
    return old_value
