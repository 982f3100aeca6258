"""Weakly supervised object segmentation and localisation from saliency (paper Sect. 3.2).

A saliency map marks only the most discriminative part of an object. The paper spreads it to the
whole object with a colour-based graph cut (Boykov & Jolly 2001):

1. **seeds**: pixels above the 95% quantile of the map are foreground samples, pixels below the 30%
   quantile background samples (the rest are not used for the colour models); by default both
   seed sets are also hard constraints of the cut (see :func:`segment` for the alternatives);
2. **colour models**: a Gaussian mixture for each set of seed colours;
3. **graph cut**: minimise

       E(L) = sum_p U_p(L_p) + sum_{p~q} V_pq [L_p != L_q]

   with U_p = -log p(colour_p | GMM of label L_p), hard constraints at the seeds, and the
   contrast-sensitive Potts term V_pq = gamma * exp(-beta ||I_p - I_q||^2) / dist(p, q) on the
   8-neighbour grid, beta = 1 / (2 <||I_p - I_q||^2>) (the GrabCut form);
4. **object**: the largest connected component of the foreground, and its bounding box.

The paper used a public implementation and states neither the component count nor gamma; ours
default to GrabCut's 5 components and gamma = 50 (our choices). The paper says nothing about
iterating; we read its description as one pass (seeds, colour models, one cut), and that is our
default. Iterating (re-fitting the colour models on the current segmentation, as GrabCut does) is
available.

The colour models live in :mod:`convvis.colour_model`, the baselines the book compares with
(thresholded saliency, a centre box, OpenCV's GrabCut) in :mod:`convvis.baselines`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
import torch
from tqdm.auto import tqdm

from .colour_model import fit_colour_model, unaries
from .common import Target, check_photo, deprecated_argument
from .images import deprocess
from .saliency import saliency_map

__all__ = [
    "seeds_from_saliency",
    "neighbour_pairs",
    "pairwise_weights",
    "graph_cut",
    "graph_cut_energy",
    "largest_component",
    "bounding_box",
    "box_iou",
    "Segmentation",
    "segment",
    "localise_images",
    "HARD_SEEDS",
    "check_hard_seeds",
]

_NEIGHBOURS = ((0, 1), (1, 0), (1, 1), (1, -1))  # right, down, down-right, down-left


_Slices = tuple[slice, slice]


def neighbour_pairs(h: int, w: int) -> Iterator[tuple[tuple[int, int], _Slices, _Slices]]:
    """The 8-neighbour grid of an h x w image, each edge once: ``((dy, dx), p, q)`` per direction.

    Directions are right, down, down-right and down-left; ``p`` and ``q`` are slices such that
    ``a[p]`` and ``a[q]`` hold every pixel whose neighbour in that direction exists, and that
    neighbour. The one place the book's code walks the grid (weights, cut, energy).
    """
    for dy, dx in _NEIGHBOURS:
        x0 = max(0, -dx)
        p = (slice(0, h - dy), slice(x0, w - max(0, dx)))
        q = (slice(dy, h), slice(x0 + dx, w - max(0, dx) + dx))
        yield (dy, dx), p, q


#: Which seeds :func:`segment` (and :func:`convvis.grabcut_mask`) make hard constraints of the cut.
HARD_SEEDS = ("foreground", "both", "none")


def check_hard_seeds(hard_seeds: str) -> None:
    """Refuse a ``hard_seeds`` value that is not one of :data:`HARD_SEEDS`."""
    if hard_seeds not in HARD_SEEDS:
        raise ValueError(f"hard_seeds must be 'foreground', 'both' or 'none', not {hard_seeds!r}")


def _extreme(flat: np.ndarray, k: int, largest: bool) -> np.ndarray:
    """Boolean mask of the ``k`` largest (or smallest) entries of a 1-D array.

    Ties at the boundary go to the lowest pixel indices for the largest entries and to the
    highest for the smallest, the order of a stable descending sort. O(n) by partition, not a
    full sort (this runs once per image).
    """
    n = flat.size
    v = np.partition(flat, n - k)[n - k] if largest else np.partition(flat, k - 1)[k - 1]
    mask = flat > v if largest else flat < v
    need = k - int(mask.sum())
    if need > 0:
        tied = np.flatnonzero(flat == v)
        mask[tied[:need] if largest else tied[len(tied) - need :]] = True
    return mask


def _round_half_up(x: Fraction) -> int:
    return int((x + Fraction(1, 2)).__floor__())


def seeds_from_saliency(
    saliency: np.ndarray | torch.Tensor, fg_quantile: float = 0.95, bg_quantile: float = 0.30
) -> tuple[np.ndarray, np.ndarray]:
    """Foreground and background seed masks (H,W bool) from a saliency map, by rank.

    Of the map's n pixels, the foreground seeds are exactly the ``round((1 - fg_quantile) * n)``
    most salient ones (the top 5 % by default) and the background seeds exactly the
    ``round(bg_quantile * n)`` least salient ones (the bottom 30 %), at least one each; halves
    round up, and the products are computed in exact decimal arithmetic, so the counts are the
    same at every image size whatever floating-point rounding would do. Selected by rank, so the
    sets have those sizes even when many values are equal (ties broken by pixel index). A constant
    map (all zeros, say) has no meaningful order and raises ``ValueError``.
    """
    s = saliency.detach().cpu().numpy() if isinstance(saliency, torch.Tensor) else np.asarray(saliency)
    if s.ndim != 2:
        raise ValueError(f"expected one (H,W) saliency map, got shape {s.shape}")
    if not 0 <= bg_quantile < fg_quantile <= 1:
        raise ValueError(f"need 0 <= bg_quantile < fg_quantile <= 1, got {bg_quantile}, {fg_quantile}")
    if not np.isfinite(s).all():
        raise ValueError("saliency map contains NaN or infinite values")
    if s.max() == s.min():
        raise ValueError(
            "the saliency map is constant: it ranks no pixel above another, so it gives no seeds"
        )
    # By rank, not by comparing with the quantile values: maps with many equal values (zeros,
    # say) would otherwise give seed sets far from the intended sizes, or empty ones.
    flat = s.ravel()
    n = flat.size
    n_fg = max(1, _round_half_up((1 - Fraction(str(float(fg_quantile)))) * n))
    n_bg = max(1, _round_half_up(Fraction(str(float(bg_quantile))) * n))
    fg = _extreme(flat, n_fg, largest=True).reshape(s.shape)
    bg = _extreme(flat, n_bg, largest=False).reshape(s.shape)
    return fg, bg


def pairwise_weights(photo: np.ndarray, gamma: float = 50.0) -> tuple[list[np.ndarray], float]:
    """Contrast-sensitive Potts weights on the 8-neighbour grid (GrabCut's form).

    Returns one (H,W) array per neighbour direction (right, down, down-right, down-left), where
    entry (y,x) weights the edge from (y,x) to its neighbour, ``gamma * exp(-beta d^2) / dist``,
    zero where the neighbour is outside the image; and beta = 1 / (2 mean d^2) over all edges.
    """
    photo = check_photo(photo)
    h, w, _ = photo.shape
    regions, diffs, offsets = [], [], []
    for offset, src, dst in neighbour_pairs(h, w):
        # pixel (y, x) and its neighbour (y + dy, x + dx), for every pixel whose neighbour exists
        d = photo[src] - photo[dst]
        offsets.append(offset)
        regions.append(src)
        diffs.append(np.einsum("yxc,yxc->yx", d, d))
    count = sum(d.size for d in diffs)
    mean = sum(d.sum() for d in diffs) / max(count, 1)
    beta = 1.0 / (2 * mean) if mean > 0 else 0.0
    weights = []
    for (dy, dx), src, d2 in zip(offsets, regions, diffs):
        wt = np.zeros((h, w))  # zero where the neighbour is outside the image
        wt[src] = gamma * np.exp(-beta * d2) / np.hypot(dy, dx)
        weights.append(wt)
    return weights, beta


def graph_cut(
    cost_fg: np.ndarray,
    cost_bg: np.ndarray,
    weights: Sequence[np.ndarray],
    fg_seeds: np.ndarray | None = None,
    bg_seeds: np.ndarray | None = None,
) -> np.ndarray:
    """Minimum-energy binary labelling by max-flow (PyMaxflow, Boykov-Kolmogorov). True = foreground.

    ``cost_fg`` / ``cost_bg`` (H,W) are the unary costs of labelling a pixel foreground /
    background; ``weights`` the pairwise weights from :func:`pairwise_weights`; seeds (H,W) bool
    are hard constraints (a foreground seed is never background, and vice versa).

    Seeds are not given infinite terminal capacities: their labels are known, so they keep no edge
    and no capacity (isolated nodes, which max-flow never visits), and each edge from a free pixel
    to a seed becomes a unary term of the free pixel (cutting it costs the edge's weight exactly
    when the free pixel takes the other label). The minimum is the same (a test compares with the
    full graph); the graph max-flow searches is smaller by the seed count (35 % of the pixels with
    the default quantiles). ``benchmarks/run.py`` reports this stage's time.
    """
    import maxflow

    h, w = cost_fg.shape
    fg = np.zeros((h, w), bool) if fg_seeds is None else np.asarray(fg_seeds, bool)
    bg = np.zeros((h, w), bool) if bg_seeds is None else np.asarray(bg_seeds, bool)
    if fg.shape != (h, w) or bg.shape != (h, w):
        raise ValueError(f"seed masks {fg.shape}, {bg.shape} differ from the costs' {(h, w)}")
    if (fg & bg).any():
        raise ValueError(f"{int((fg & bg).sum())} pixel(s) are both foreground and background seeds")
    free = ~(fg | bg)
    # PyMaxflow: a node on the sink side (segment True) pays its source capacity, a node on the
    # source side its sink capacity. True = foreground, so foreground pays cost_fg, taken from
    # `pay_fg`; a per-pixel constant does not change the minimiser, so both are shifted to >= 0.
    base = np.minimum(cost_fg, cost_bg)
    pay_fg, pay_bg = cost_fg - base, cost_bg - base
    g = maxflow.Graph[float]()
    nodes = g.add_grid_nodes((h, w))
    if len(weights) != len(_NEIGHBOURS):
        raise ValueError(f"expected {len(_NEIGHBOURS)} weight maps (one per direction), got {len(weights)}")
    for ((dy, dx), a, b), wt in zip(neighbour_pairs(h, w), weights):
        # a: the pixels, b: their neighbours
        wab = np.asarray(wt, np.float64)[a]
        # a free pixel next to a seed pays the edge when it takes the label the seed does not have
        for p, q in ((a, b), (b, a)):
            pay_bg[p] += wab * (free[p] & fg[q])
            pay_fg[p] += wab * (free[p] & bg[q])
        kept = np.zeros((h, w))
        kept[a] = wab * (free[a] & free[b])  # edges touching a seed are gone (now unary terms)
        structure = np.zeros((3, 3))
        structure[1 + dy, 1 + dx] = 1
        g.add_grid_edges(nodes, weights=kept, structure=structure, symmetric=True)
    # seeds keep no capacity at all: isolated nodes, which max-flow never visits
    g.add_grid_tedges(nodes, np.where(free, pay_fg, 0.0), np.where(free, pay_bg, 0.0))
    g.maxflow()
    out = g.get_grid_segments(nodes)
    out[~free] = fg[~free]
    return out


def graph_cut_energy(
    labels: np.ndarray, cost_fg: np.ndarray, cost_bg: np.ndarray, weights: Sequence[np.ndarray]
) -> float:
    """The energy the graph cut minimises, for a labelling (True = foreground):

        E(L) = sum_p U_p(L_p) + sum_{p~q} V_pq [L_p != L_q]

    with U_p = ``cost_fg`` or ``cost_bg`` (H,W) at p and V_pq the ``weights`` of
    :func:`pairwise_weights` (one (H,W) map per direction of :func:`neighbour_pairs`, entry at p).
    Hard seeds are not part of it: :func:`graph_cut` fixes their labels, and compares labellings
    that agree on them.
    """
    lab = np.asarray(labels, bool)
    cost_fg, cost_bg = np.asarray(cost_fg, np.float64), np.asarray(cost_bg, np.float64)
    if lab.shape != cost_fg.shape or lab.shape != cost_bg.shape:
        raise ValueError(f"labels {lab.shape} and costs {cost_fg.shape}, {cost_bg.shape} differ in shape")
    if len(weights) != len(_NEIGHBOURS):
        raise ValueError(f"expected {len(_NEIGHBOURS)} weight maps (one per direction), got {len(weights)}")
    h, w = lab.shape
    energy = float(np.where(lab, cost_fg, cost_bg).sum())
    for (_, p, q), wt in zip(neighbour_pairs(h, w), weights):
        energy += float((np.asarray(wt, np.float64)[p] * (lab[p] != lab[q])).sum())
    return energy


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a boolean mask (all False if the mask is empty)."""
    from scipy import ndimage

    labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
    if n == 0:
        return np.zeros_like(mask, dtype=bool)
    sizes = np.bincount(labels.ravel())[1:]
    return labels == (1 + int(np.argmax(sizes)))


def bounding_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """``(x0, y0, x1, y1)`` around the True pixels (x1, y1 exclusive), or None if there are none."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``[x0, y0, x1, y1]`` boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@dataclass
class Segmentation:
    """Every stage of the pipeline for one image (all masks (H,W) bool)."""

    fg_seeds: np.ndarray
    bg_seeds: np.ndarray
    mask: np.ndarray  # the graph cut's foreground
    object_mask: np.ndarray  # its largest connected component
    box: tuple[int, int, int, int] | None
    timings: dict[str, float] = field(default_factory=dict)


def segment(
    photo: np.ndarray,
    saliency: np.ndarray | torch.Tensor,
    *,
    fg_quantile: float = 0.95,
    bg_quantile: float = 0.30,
    components: int = 5,
    gamma: float = 50.0,
    iterations: int = 0,
    hard_seeds: str = "both",
    smooth: float = 0.0,
    max_samples: int | None = 1000,
    max_iter: int = 10,
    seed: int = 0,
) -> Segmentation:
    """The paper's pipeline on one photo: seeds, colour models, graph cut, largest component, box.

    ``photo`` is H x W x 3 in [0, 1] at the saliency map's resolution (for a model input,
    :func:`convvis.deprocess` of the image). ``iterations`` > 0 re-fits the colour models on the
    current segmentation and cuts again, that many times (GrabCut's iteration; the paper says
    nothing about iterating, and our reading of it, the default 0, is one pass). ``timings``
    records seconds spent per stage.

    ``hard_seeds`` says which seeds are also hard constraints of the cut: ``"both"`` (default),
    ``"foreground"`` or ``"none"``. The paper uses the seeds to estimate the colour models and says
    nothing more. Each choice has a failure mode, measured in chapter 4 and the tests: hard
    background seeds force low-saliency pixels *inside* an object to background; with only
    foreground seeds hard, scattered seeds from a speckled map pull nearly the whole image into
    the foreground (on most of the book's photos the box then covers almost the whole image).

    ``smooth`` > 0 blurs the map with a Gaussian of that many pixels before the seeds are chosen
    (not in the paper; it turns a speckled map's scattered seeds into blobs). Default 0.
    """
    check_hard_seeds(hard_seeds)
    photo = check_photo(photo)
    sal = saliency.detach().cpu().numpy() if isinstance(saliency, torch.Tensor) else np.asarray(saliency)
    if sal.shape != photo.shape[:2]:
        raise ValueError(f"saliency {sal.shape} and photo {photo.shape[:2]} differ in size")
    t = {}
    t0 = time.perf_counter()
    if smooth > 0:
        from scipy import ndimage

        sal = ndimage.gaussian_filter(sal.astype(np.float64), smooth)
    fg, bg = seeds_from_saliency(sal, fg_quantile, bg_quantile)
    t["seeds"] = time.perf_counter() - t0
    t0 = time.perf_counter()

    def fit(colours):
        return fit_colour_model(colours, components, max_samples=max_samples, max_iter=max_iter, seed=seed)

    fg_model, bg_model = fit(photo[fg]), fit(photo[bg])
    t["colour_models"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    weights, _ = pairwise_weights(photo, gamma)
    hard_fg = fg if hard_seeds in ("foreground", "both") else None
    hard_bg = bg if hard_seeds == "both" else None
    needed = np.ones(fg.shape, bool)  # hard seeds' own unaries are never used
    for hard in (hard_fg, hard_bg):
        if hard is not None:
            needed &= ~hard
    cost_fg, cost_bg = unaries(photo, fg_model, bg_model, needed)
    t["energy"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    mask = graph_cut(cost_fg, cost_bg, weights, hard_fg, hard_bg)
    t["graph_cut"] = time.perf_counter() - t0
    for _ in range(iterations):
        t0 = time.perf_counter()
        if mask.sum() >= 2 and (~mask).sum() >= 2:
            fg_model = fit(photo[mask])
            bg_model = fit(photo[~mask])
        cost_fg, cost_bg = unaries(photo, fg_model, bg_model, needed)
        mask = graph_cut(cost_fg, cost_bg, weights, hard_fg, hard_bg)
        t["iterations"] = t.get("iterations", 0.0) + time.perf_counter() - t0
    t0 = time.perf_counter()
    obj = largest_component(mask)
    box = bounding_box(obj)
    t["component_and_box"] = time.perf_counter() - t0
    return Segmentation(fg, bg, mask, obj, box, t)


def localise_images(
    model,
    image: torch.Tensor,
    target: Target = None,
    *,
    progress: bool = False,
    targets: Target = None,
    **segment_kwargs,
) -> list[Segmentation]:
    """Saliency + graph cut for a batch: one :class:`Segmentation` per (image, target).

    ``image`` (N,3,H,W) normalised for ``model`` (a :class:`convvis.LoadedModel`, whose
    preprocessing is needed to recover the photo's colours); ``target`` one class per image
    (index or name; default: top-1; ``targets=`` is its deprecated spelling). The saliency maps
    are computed in one batched backward pass; ``progress`` shows a bar over the per-image graph
    cuts. ``segment_kwargs`` go to :func:`segment`.
    """
    target = deprecated_argument("localise_images", "targets", targets, "target", target)
    maps = saliency_map(model, image, target)
    photos = deprocess(image, model)
    return [segment(p, m, **segment_kwargs)
            for p, m in tqdm(list(zip(photos, maps)), desc="graph cuts", disable=not progress, leave=False)]


