"""The gradient of a class score with respect to the input image, and its first-order Taylor model.

Paper, Sect. 3 (Eqs. 2-4): around an image I0 the unnormalised class score is approximately linear,

    S_c(I) ~= w^T I + b,    w = dS_c/dI evaluated at I0.                                (Eq. 3-4)

For a linear classifier S_c(I) = w_c^T I + b_c (Eq. 2) the approximation is exact and w = w_c.

Everything here works on (N,3,H,W) batches with one target class per image, takes gradients with
respect to the image only (no parameter gradient is computed or accumulated), and leaves the model
and the image exactly as they were.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .common import (
    RECTIFIERS,
    Target,
    as_module,
    check_eval_mode,
    check_image,
    deprecated_argument,
    score_gradient,
    scores_and_targets,
)

__all__ = [
    "class_score",
    "input_gradient",
    "TaylorCurve",
    "taylor_curve",
    "rectifier_states",
    "first_region_boundary",
]


def class_score(model: nn.Module, image: torch.Tensor, target: Target = None) -> torch.Tensor:
    """The unnormalised class score S_c(I) of each image, shape (N,), no gradient.

    ``target`` as in :func:`resolve_targets` (default: each image's top-1 class).
    """
    with torch.no_grad():
        scores, t = scores_and_targets(model, image, target)
    return scores.gather(1, t[:, None])[:, 0]


def input_gradient(
    model: nn.Module,
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
    grad, score, t, _ = score_gradient(model, image, target)
    if return_score:
        return grad, score, t
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
    model: nn.Module,
    image: torch.Tensor,
    direction: torch.Tensor,
    eps: Sequence[float] | np.ndarray,
    target: Target = None,
    *,
    normalise: bool = True,
    chunk: int = 16,
    normalize: bool | None = None,
) -> TaylorCurve:
    """Compare S_c(I0 + eps d) with its first-order prediction S_c(I0) + eps w.d.

    Parameters
    ----------
    image:
        (1,C,H,W), the expansion point I0.
    direction:
        d, shape (C,H,W) or (1,C,H,W); scaled to unit L2 norm when ``normalise`` (so ``eps`` is the
        L2 length of the step in normalised-input units). ``normalize=`` is the deprecated spelling.
    eps:
        Step lengths (E,), any sign.
    target:
        One class (default: top-1 at I0).
    chunk:
        How many perturbed images go through the network at once.
    """
    normalise = deprecated_argument("taylor_curve", "normalize", normalize, "normalise", normalise, True)
    check_image(image, model)
    if image.shape[0] != 1:
        raise ValueError(f"taylor_curve expands around one image, got a batch of {image.shape[0]}")
    d = direction.detach().to(image.device, image.dtype).reshape(1, *image.shape[1:])
    if normalise:
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


@torch.no_grad()
def rectifier_states(model: nn.Module, image: torch.Tensor) -> list[torch.Tensor]:
    """Which linear piece every rectifier unit is on, for each image of the batch.

    Returns one int8 tensor per ``nn.ReLU`` / ``nn.ReLU6`` module (in forward order), shaped like
    that module's input: 0 where the input is <= 0 (gradient blocked), 1 on the identity piece,
    2 where ReLU6 saturates (input >= 6). Two images with identical states lie in the same linear
    region of a ReLU network, where its scores are exactly affine in the input.

    Read with forward *pre*-hooks, because in-place rectifiers overwrite their input; the hooks are
    removed on exit, also when the forward pass raises.
    """
    module = as_module(model)
    check_eval_mode(module)  # a training-mode pass would overwrite batch-norm statistics
    check_image(image, module)
    states: list[torch.Tensor] = []

    def record(mod, args):
        x = args[0]
        s = (x > 0).to(torch.int8)
        if isinstance(mod, nn.ReLU6):
            s = s + (x >= 6).to(torch.int8)
        states.append(s)

    handles = [m.register_forward_pre_hook(record) for m in module.modules() if isinstance(m, RECTIFIERS)]
    if not handles:
        raise ValueError("the model has no nn.ReLU or nn.ReLU6 modules to read")
    try:
        module(image)
    finally:
        for h in handles:
            h.remove()
    return states


def first_region_boundary(
    model: nn.Module,
    image: torch.Tensor,
    direction: torch.Tensor,
    max_eps: float,
    *,
    normalise: bool = True,
    iters: int = 50,
    normalize: bool | None = None,
) -> tuple[float, float]:
    """Bracket a step length along ``direction`` at which some rectifier unit has changed piece.

    Inside the linear region around ``image`` (no unit has switched) a ReLU network is exactly
    affine, so the first-order Taylor model is exact there; this brackets where that stops. Bisection
    on the unit states of :func:`rectifier_states` between 0 and ``max_eps``.

    Returns ``(lo, hi)`` with no switch at ``lo`` and at least one at ``hi``. Bisection does not
    prove that this is the *first* switch along the way: a unit that switches and switches back
    between two probes goes unseen (chapter 1 checks its sampled steps below ``lo`` itself).
    Raises ``ValueError`` if nothing switches up to ``max_eps``. Use float64 models and images to
    resolve small steps. ``normalise`` scales ``direction`` to unit L2 norm (``normalize=`` is its
    deprecated spelling).
    """
    normalise = deprecated_argument("first_region_boundary", "normalize", normalize, "normalise", normalise,
                                    True)
    check_eval_mode(model)
    check_image(image, model)
    if image.shape[0] != 1:
        raise ValueError("first_region_boundary works on one image, shape (1,C,H,W)")
    d = direction.detach().to(image.device, image.dtype).reshape(image.shape)
    if normalise:
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
