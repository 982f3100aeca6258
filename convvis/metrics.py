"""How faithful is a saliency map? Deletion / insertion AUC, the pointing game, rank correlation.

None of these is in the paper (Simonyan et al. 2013 report localisation error only); they are the
checks later work applies to it, and the book always names the protocol a number was measured with.

Deletion / insertion (Petsiuk et al. 2018, RISE): rank pixels by saliency; *deletion* replaces the
most salient pixels first by a substrate and tracks the class score as more are replaced;
*insertion* starts from the substrate and puts the most salient pixels back first. The area under
the curve (x: fraction of pixels changed, 0..1) is low for a good map under deletion and high under
insertion.

Model randomisation (Adebayo et al. 2018): a map that explains the model must change when the
model's weights are randomised (:func:`randomisation_cascade`).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .common import Target, as_module, checked_targets, class_names_of, input_checks, settle
from .saliency import fixed_targets, saliency_map

__all__ = [
    "Protocol",
    "PROTOCOLS",
    "perturbation_curve",
    "auc",
    "deletion_auc",
    "insertion_auc",
    "gaussian_blur",
    "pointing_game",
    "rank_correlation",
    "with_steps",
    "pixel_ranks",
    "parameter_layers",
    "randomised_copy",
    "randomized_copy",
    "randomisation_cascade",
]


@dataclass(frozen=True)
class Protocol:
    """One deletion/insertion protocol.

    ``pixels_per_step`` (or, if None, ``steps`` equal steps) sets how many pixels change between
    two points of the curve; ``deletion`` / ``insertion`` name the substrate (``"zero"``: zero in
    the model's normalised input space, which is the colour ``mean`` of the model's preprocessing
    in every pixel, mid-grey for the embedded models' mean = std = 0.5, and not the data set's
    mean colour; ``"blur"``: a Gaussian-blurred copy);
    ``score`` is ``"probability"`` (softmax of the target) or ``"logit"`` (the paper's S_c).
    """

    name: str
    pixels_per_step: int | None = None
    steps: int | None = None
    deletion: str = "zero"
    insertion: str = "blur"
    score: str = "probability"
    blur_size: int = 11
    blur_sigma: float = 5.0

    def __post_init__(self) -> None:
        if (self.pixels_per_step is None) == (self.steps is None):
            raise ValueError("give exactly one of pixels_per_step and steps")
        for sub in (self.deletion, self.insertion):
            if sub not in ("zero", "blur"):
                raise ValueError(f"substrate must be 'zero' or 'blur', not {sub!r}")
        if self.score not in ("probability", "logit"):
            raise ValueError(f"score must be 'probability' or 'logit', not {self.score!r}")

    def step_size(self, n_pixels: int) -> int:
        if self.pixels_per_step is not None:
            return self.pixels_per_step
        return -(-n_pixels // self.steps)  # ceil: the last step reaches every pixel

    def points(self, n_pixels: int) -> int:
        """Points on a curve over an image of ``n_pixels``: the unchanged image, then one per step
        until every pixel has changed."""
        return -(-n_pixels // self.step_size(n_pixels)) + 1


PROTOCOLS: dict[str, Protocol] = {
    # RISE's reference evaluation: softmax probability, 224 pixels per step on 224 x 224 inputs
    # (225 points), deletion to zero of the normalised tensor, insertion from an 11 x 11, sigma 5
    # Gaussian blur of the image.
    "rise": Protocol("rise", pixels_per_step=224, deletion="zero", insertion="blur", score="probability"),
    # A constant baseline for both curves and few steps, like the protocol behind this paper's
    # published deletion/insertion numbers (Xplique): constant 0 substrate, 10 equal steps.
    "constant": Protocol("constant", steps=10, deletion="zero", insertion="zero", score="probability"),
}


def _protocol(protocol: str | Protocol) -> Protocol:
    if isinstance(protocol, Protocol):
        return protocol
    try:
        return PROTOCOLS[protocol]
    except KeyError:
        raise ValueError(f"unknown protocol {protocol!r}; choose from {sorted(PROTOCOLS)}") from None


def gaussian_blur(image: torch.Tensor, size: int = 11, sigma: float = 5.0) -> torch.Tensor:
    """Per-channel Gaussian blur with zero padding (RISE's insertion substrate). (N,C,H,W)."""
    ax = torch.arange(size, dtype=image.dtype, device=image.device) - (size - 1) / 2
    g = torch.exp(-(ax**2) / (2 * sigma**2))
    k2 = torch.outer(g, g)
    k2 = (k2 / k2.sum()).expand(image.shape[1], 1, size, size)
    return F.conv2d(image, k2, padding=size // 2, groups=image.shape[1])


def _substrate(image: torch.Tensor, kind: str, p: Protocol) -> torch.Tensor:
    if kind == "zero":
        return torch.zeros_like(image)
    return gaussian_blur(image, p.blur_size, p.blur_sigma)


def pixel_ranks(saliency: torch.Tensor) -> torch.Tensor:
    """(N,H,W) saliency -> (N,H,W) rank of each pixel, 0 = most salient; ties by pixel index."""
    flat = saliency.flatten(1)
    order = torch.argsort(-flat, dim=1, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order))
    return ranks.view_as(saliency)


def perturbation_curve(
    model: nn.Module,
    image: torch.Tensor,
    saliency: torch.Tensor,
    target: Target = None,
    mode: str = "deletion",
    protocol: str | Protocol = "rise",
    *,
    chunk: int = 8,
    progress: bool = False,
) -> torch.Tensor:
    """The deletion or insertion curve of each image: (N, S+1) scores, point k after k steps.

    ``image`` (N,C,H,W); ``saliency`` (N,H,W) at the same resolution (higher = more important).
    ``target`` defaults to each image's top-1 class on the unperturbed image, which costs one more
    forward pass of the images. Given ``target``, the curve runs only its own passes: the model's
    outputs are checked (unnormalised, ``target`` in range) on the first chunk's. The perturbed
    copies go through the network ``chunk`` at a time, whichever images and steps they come from,
    so memory stays bounded by ``chunk`` images whatever N and S are. ``progress`` shows a bar
    over the chunks. Reads the device twice: every check once, after the first chunk is queued,
    and the finished curve.
    """
    if mode not in ("deletion", "insertion"):
        raise ValueError(f"mode must be 'deletion' or 'insertion', not {mode!r}")
    if isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise ValueError(f"chunk must be a positive integer (images per forward pass), not {chunk!r}")
    p = _protocol(protocol)
    module = as_module(model)
    shape = tuple(image.shape) if isinstance(image, torch.Tensor) else ()
    n, c, h, w = shape if len(shape) == 4 else (0, 0, 0, 0)

    def wrong_shape():
        raise ValueError(
            f"saliency must have shape {(n, h, w)} to match the image, got {tuple(saliency.shape)}"
        )

    def not_finite():
        raise ValueError("saliency contains NaN or infinite values")

    matches = tuple(saliency.shape) == (n, h, w)
    saliency_checks = [(not matches, wrong_shape),
                       (~torch.isfinite(saliency).all() if matches else False, not_finite)]
    names = class_names_of(model)
    with torch.no_grad():
        pending = input_checks(model, image, saliency_checks)
        if not matches:  # known on the host: nothing below can run
            settle(pending)
        if target is None:  # the top-1 class needs the unperturbed images' own scores
            t, index = checked_targets(module(image), None, pending, class_names=names)
        image = image.detach()
        step = p.step_size(h * w)
        n_points = p.points(h * w)
        counts = torch.clamp(torch.arange(n_points, device=image.device) * step, max=h * w)
        ranks = pixel_ranks(saliency.to(image.device))
        substrate = _substrate(image, p.deletion if mode == "deletion" else p.insertion, p)
        total = n * n_points  # (image, step) pairs, image-major
        out = None
        for start in tqdm(range(0, total, chunk), desc=mode, disable=not progress, leave=False):
            pair = torch.arange(start, min(start + chunk, total), device=image.device)
            img_i, k = pair // n_points, pair % n_points
            changed = (ranks[img_i] < counts[k].view(-1, 1, 1))[:, None]  # (B,1,H,W)
            if mode == "deletion":
                batch = torch.where(changed, substrate[img_i], image[img_i])
            else:
                batch = torch.where(changed, image[img_i], substrate[img_i])
            logits = module(batch.contiguous(memory_format=torch.channels_last))
            if out is None:
                if target is not None:  # checked on this chunk's outputs: no pass of its own
                    t, index = checked_targets(logits, target, pending, n=n, class_names=names)
                # one read for every check (the image's, the saliency map's, the outputs', the
                # targets'), after the first chunk is queued; none for the other chunks
                settle(pending)
            vals = logits.softmax(dim=1) if p.score == "probability" else logits
            picked = vals.gather(1, index[img_i][:, None])[:, 0]
            if out is None:  # kept on the device until the curve is complete
                out = torch.empty(n, n_points, dtype=picked.dtype, device=picked.device)
            out[img_i, k] = picked
    return out.cpu().double()


def auc(curve: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Area under curves sampled at equal steps over x in [0, 1] (trapezoid rule); (N,S+1) -> (N,)."""
    c = torch.as_tensor(curve, dtype=torch.float64)
    if c.ndim == 1:
        c = c[None]
    if c.shape[1] < 2:
        raise ValueError("a curve needs at least two points")
    return (c.sum(dim=1) - (c[:, 0] + c[:, -1]) / 2) / (c.shape[1] - 1)


def deletion_auc(model, image, saliency, target: Target = None, protocol: str | Protocol = "rise",
                 *, chunk: int = 8, progress: bool = False) -> torch.Tensor:
    """Deletion AUC per image (N,): lower means the map found what the score depends on."""
    return auc(perturbation_curve(model, image, saliency, target, "deletion", protocol, chunk=chunk,
                                  progress=progress))


def insertion_auc(model, image, saliency, target: Target = None, protocol: str | Protocol = "rise",
                  *, chunk: int = 8, progress: bool = False) -> torch.Tensor:
    """Insertion AUC per image (N,): higher means the map's top pixels suffice for the score."""
    return auc(perturbation_curve(model, image, saliency, target, "insertion", protocol, chunk=chunk,
                                  progress=progress))


def pointing_game(saliency: torch.Tensor | np.ndarray, boxes: Sequence[Sequence[float]],
                  tolerance: float = 15.0) -> bool:
    """Zhang et al. (2016)'s pointing game for one map: is its maximum on an object?

    ``saliency`` (H,W); ``boxes`` ``[x0, y0, x1, y1]`` in the map's pixel coordinates (x1, y1
    exclusive). A hit when the most salient pixel lies within ``tolerance`` pixels of any box
    (15 in the original protocol).
    """
    s = torch.as_tensor(saliency)
    if s.ndim != 2:
        raise ValueError(f"expected one (H,W) map, got shape {tuple(s.shape)}")
    if len(boxes) == 0:
        raise ValueError("no ground-truth boxes given")
    iy, ix = np.unravel_index(int(torch.argmax(s)), tuple(s.shape))
    px, py = ix + 0.5, iy + 0.5  # pixel centre
    for x0, y0, x1, y1 in boxes:
        dx = max(x0 - px, 0.0, px - x1)
        dy = max(y0 - py, 0.0, py - y1)
        if (dx * dx + dy * dy) ** 0.5 <= tolerance:
            return True
    return False


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman's rank correlation between maps, per image: (N,H,W) x (N,H,W) -> (N,) in [-1, 1].

    Tied values share their average rank (as ``scipy.stats.spearmanr``), so blocks of equal
    values (zeros, say) count as ties, not as an order. A constant map has no order: its
    correlation is NaN.
    """
    from scipy.stats import rankdata  # scipy is loaded only where it is needed

    a, b = torch.as_tensor(a), torch.as_tensor(b)
    if a.shape != b.shape:
        raise ValueError(f"maps differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.ndim < 2:
        raise ValueError(f"expected (N,H,W) maps, got shape {tuple(a.shape)}")
    fa = a.detach().flatten(1).double().cpu().numpy()
    fb = b.detach().flatten(1).double().cpu().numpy()
    if not (np.isfinite(fa).all() and np.isfinite(fb).all()):
        raise ValueError("maps contain NaN or infinite values")
    ra = rankdata(fa, method="average", axis=1)
    rb = rankdata(fb, method="average", axis=1)
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (ra * rb).sum(1) / (np.linalg.norm(ra, axis=1) * np.linalg.norm(rb, axis=1))
    return torch.from_numpy(rho)


def with_steps(protocol: str | Protocol, *, pixels_per_step: int | None = None,
               steps: int | None = None) -> Protocol:
    """A copy of a protocol with another step size (e.g. CPU-sized runs of the RISE protocol)."""
    return replace(_protocol(protocol), name=_protocol(protocol).name + "*",
                   pixels_per_step=pixels_per_step, steps=steps)


# ---- the model-randomisation check --------------------------------------------------------------


def parameter_layers(model: nn.Module) -> list[str]:
    """Names of the modules that own parameters directly, in registration (input-to-output) order."""
    module = as_module(model)
    return [n for n, m in module.named_modules() if n and any(True for _ in m.parameters(recurse=False))]


def randomised_copy(model: nn.Module, layers: Sequence[str], seed: int = 0) -> nn.Module:
    """A deep copy of the model with the named modules' parameters re-initialised.

    Used for the model-randomisation sanity check (Adebayo et al. 2018): randomise the top layers,
    then more and more of them ("cascading"), and see whether the saliency map changes. Each module
    is reset with its own ``reset_parameters()`` (PyTorch's default initialisation; batch norm goes
    back to the identity with fresh running statistics) under a private random stream, so the
    global RNG is untouched. The caller's model is never modified.
    """
    module = copy.deepcopy(as_module(model))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name in layers:
            m = module.get_submodule(name)
            if not hasattr(m, "reset_parameters"):
                raise ValueError(f"module {name!r} ({type(m).__name__}) has no reset_parameters()")
            m.reset_parameters()
            if hasattr(m, "reset_running_stats"):
                m.reset_running_stats()
    module.eval()
    return module


def randomized_copy(model: nn.Module, layers: Sequence[str], seed: int = 0) -> nn.Module:
    """Deprecated spelling of :func:`randomised_copy` (kept for one release)."""
    warnings.warn("randomized_copy is deprecated; use convvis.randomised_copy", DeprecationWarning,
                  stacklevel=2)
    return randomised_copy(model, layers, seed)


def randomisation_cascade(
    model: nn.Module,
    image: torch.Tensor,
    target: Target,
    stages: Sequence[tuple[str, Sequence[str]]],
    *,
    method=None,
    seed: int = 0,
    progress: bool = False,
):
    """Adebayo et al. (2018)'s cascading model-randomisation check of a saliency method.

    ``stages`` lists ``(label, module names)`` from the output towards the input; stage k
    re-initialises the modules of stages 0..k together (cumulatively, :func:`randomised_copy`
    with ``seed``), and the map of each randomised copy is compared with the trained model's.
    ``method(model, image, target)`` gives (N,H,W) maps (default :func:`saliency_map`, the paper's).
    Targets are resolved once on the trained model, so every copy explains the same classes.

    Returns ``(trained, randomised, correlations)``: the trained model's maps (N,H,W), one (N,H,W)
    tensor per stage, and a NumPy array (stages, N) of Spearman rank correlations between each
    stage's maps and the trained maps (:func:`convvis.rank_correlation`). A method that passes
    the check gives correlations that fall as more layers are randomised. ``progress`` shows a
    bar over the stages. The caller's model is never modified.
    """
    method = saliency_map if method is None else method
    if not stages:
        raise ValueError("no stages to randomise")
    t = fixed_targets(model, image, target)
    trained = method(model, image, t)
    randomised, so_far, correlations = [], [], []
    for _label, group in tqdm(stages, desc="randomisation cascade", disable=not progress, leave=False):
        so_far += list(group)
        m = method(randomised_copy(model, so_far, seed=seed), image, t)
        randomised.append(m)
        correlations.append(rank_correlation(trained, m).cpu().numpy())
    return trained, randomised, np.array(correlations)

