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
default to GrabCut's 5 components and gamma = 50 (our choices). Iterating (re-fitting the colour
models on the current segmentation, as GrabCut does) is available and off by default, as in the
paper's one-shot procedure.
"""

from __future__ import annotations

import os
import time
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "seeds_from_saliency",
    "ColourModel",
    "fit_colour_model",
    "pairwise_weights",
    "graph_cut",
    "largest_component",
    "bounding_box",
    "box_iou",
    "Segmentation",
    "segment",
    "localise",
    "localisation_correct",
    "read_ilsvrc_boxes",
    "ILSVRCLocalisation",
    "imagenet_wnids",
    "threshold_box",
    "centre_box",
    "grabcut_mask",
]

_NEIGHBOURS = ((0, 1), (1, 0), (1, 1), (1, -1))  # right, down, down-right, down-left


def _check_photo(photo: np.ndarray) -> np.ndarray:
    photo = np.asarray(photo)
    if photo.ndim != 3 or photo.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 RGB photo, got shape {photo.shape}")
    if not np.issubdtype(photo.dtype, np.floating):
        raise TypeError(f"expected a float photo in [0, 1], got {photo.dtype}")
    return photo.astype(np.float64)


def seeds_from_saliency(
    saliency: np.ndarray | torch.Tensor, fg_quantile: float = 0.95, bg_quantile: float = 0.30
) -> tuple[np.ndarray, np.ndarray]:
    """Foreground and background seed masks (H,W bool) from a saliency map's quantiles.

    Foreground: the pixels above the map's ``fg_quantile`` quantile (the top 5 % by default);
    background: those below its ``bg_quantile`` quantile (the bottom 30 %). Selected by rank, so
    the sets have exactly those sizes even when many values are equal (ties broken by pixel
    index). A constant map (all zeros, say) has no meaningful order and raises ``ValueError``.
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
    n = s.size
    order = np.argsort(-s.ravel(), kind="stable")  # most salient first; ties by pixel index
    n_fg = max(1, int(round((1 - fg_quantile) * n)))
    n_bg = max(1, int(round(bg_quantile * n)))
    fg = np.zeros(n, dtype=bool)
    bg = np.zeros(n, dtype=bool)
    fg[order[:n_fg]] = True
    bg[order[n - n_bg :]] = True
    fg, bg = fg.reshape(s.shape), bg.reshape(s.shape)
    return fg, bg


@dataclass
class ColourModel:
    """A Gaussian mixture over RGB colours (weights (K,), means (K,3), covariances (K,3,3))."""

    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray

    def neg_log_likelihood(self, colours: np.ndarray) -> np.ndarray:
        """-log p(colour) for (..., 3) colours; returns shape (...)."""
        x = colours.reshape(-1, 3)
        out = np.empty((x.shape[0], len(self.weights)))
        for k, (w, mu, cov) in enumerate(zip(self.weights, self.means, self.covariances)):
            chol = np.linalg.cholesky(cov)
            z = np.linalg.solve(chol, (x - mu).T)  # (3, P)
            maha = (z**2).sum(0)
            log_det = 2 * np.log(np.diag(chol)).sum()
            out[:, k] = np.log(w) - 0.5 * (maha + log_det + 3 * np.log(2 * np.pi))
        m = out.max(1, keepdims=True)
        log_p = m[:, 0] + np.log(np.exp(out - m).sum(1))
        return (-log_p).reshape(colours.shape[:-1])


def fit_colour_model(
    colours: np.ndarray,
    components: int = 5,
    *,
    max_samples: int | None = 2000,
    max_iter: int = 20,
    reg: float = 1e-4,
    seed: int = 0,
) -> ColourModel:
    """Fit a full-covariance Gaussian mixture to (P,3) colours (scikit-learn's ``GaussianMixture``).

    ``max_samples`` draws at most that many seed pixels at random before fitting (speed; the
    benchmark measures the effect on the masks). With fewer than ``2 * components`` pixels the
    component count is reduced to ``len(colours) // 2`` (a documented fallback); with fewer than 2
    pixels, ``ValueError``.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    colours = np.asarray(colours, dtype=np.float64).reshape(-1, 3)
    n = len(colours)
    if n < 2:
        raise ValueError(f"only {n} seed pixel(s): too few to fit a colour model")
    k = min(components, n // 2)
    rng = np.random.default_rng(seed)
    if max_samples is not None and n > max_samples:
        colours = colours[rng.choice(n, max_samples, replace=False)]
    gmm = GaussianMixture(k, covariance_type="full", reg_covar=reg, max_iter=max_iter, random_state=seed,
                          init_params="k-means++")
    with warnings.catch_warnings():
        # a capped number of EM iterations is a deliberate speed/quality trade (see benchmarks/)
        warnings.simplefilter("ignore", ConvergenceWarning)
        gmm.fit(colours)
    return ColourModel(gmm.weights_, gmm.means_, gmm.covariances_)


def pairwise_weights(photo: np.ndarray, gamma: float = 50.0) -> tuple[list[np.ndarray], float]:
    """Contrast-sensitive Potts weights on the 8-neighbour grid (GrabCut's form).

    Returns one (H,W) array per neighbour direction (right, down, down-right, down-left), where
    entry (y,x) weights the edge from (y,x) to its neighbour, ``gamma * exp(-beta d^2) / dist``,
    zero where the neighbour is outside the image; and beta = 1 / (2 mean d^2) over all edges.
    """
    photo = _check_photo(photo)
    h, w, _ = photo.shape
    diffs, masks = [], []
    for dy, dx in _NEIGHBOURS:
        # pixel (y, x) and its neighbour (y + dy, x + dx), for every pixel whose neighbour exists
        ys, yt = slice(0, h - dy), slice(dy, h)
        x0 = max(0, -dx)
        xs, xt = slice(x0, w - max(0, dx)), slice(x0 + dx, w - max(0, dx) + dx)
        d2 = np.zeros((h, w))
        valid = np.zeros((h, w), dtype=bool)
        d2[ys, xs] = ((photo[ys, xs] - photo[yt, xt]) ** 2).sum(-1)
        valid[ys, xs] = True
        diffs.append(d2)
        masks.append(valid)
    total = sum(d[m].sum() for d, m in zip(diffs, masks))
    count = sum(m.sum() for m in masks)
    mean = total / max(count, 1)
    beta = 1.0 / (2 * mean) if mean > 0 else 0.0
    weights = []
    for (dy, dx), d2, valid in zip(_NEIGHBOURS, diffs, masks):
        dist = np.hypot(dy, dx)
        weights.append(np.where(valid, gamma * np.exp(-beta * d2) / dist, 0.0))
    return weights, beta


def graph_cut(
    cost_fg: np.ndarray,
    cost_bg: np.ndarray,
    weights: Sequence[np.ndarray],
    fg_seeds: np.ndarray | None = None,
    bg_seeds: np.ndarray | None = None,
) -> np.ndarray:
    """Minimum-energy binary labelling by max-flow (PyMaxflow's grid API). True = foreground.

    ``cost_fg`` / ``cost_bg`` (H,W) are the unary costs of labelling a pixel foreground /
    background; ``weights`` the pairwise weights from :func:`pairwise_weights`; seeds are hard
    constraints (a foreground seed is never background, and vice versa).
    """
    import maxflow

    h, w = cost_fg.shape
    big = 1e9
    g = maxflow.Graph[float]()
    nodes = g.add_grid_nodes((h, w))
    for (dy, dx), wt in zip(_NEIGHBOURS, weights):
        structure = np.zeros((3, 3))
        structure[1 + dy, 1 + dx] = 1
        g.add_grid_edges(nodes, weights=wt, structure=structure, symmetric=True)
    # PyMaxflow: a node on the sink side (segment True) pays its source capacity, a node on the
    # source side pays its sink capacity. True = foreground, so foreground pays cost_fg.
    base = np.minimum(cost_fg, cost_bg)  # capacities must be >= 0; a per-pixel constant is free
    src, snk = cost_fg - base, cost_bg - base
    if fg_seeds is not None:
        src, snk = np.where(fg_seeds, 0.0, src), np.where(fg_seeds, big, snk)
    if bg_seeds is not None:
        src, snk = np.where(bg_seeds, big, src), np.where(bg_seeds, 0.0, snk)
    g.add_grid_tedges(nodes, src, snk)
    g.maxflow()
    return g.get_grid_segments(nodes)


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
    max_samples: int | None = 2000,
    max_iter: int = 20,
    seed: int = 0,
) -> Segmentation:
    """The paper's pipeline on one photo: seeds, colour models, graph cut, largest component, box.

    ``photo`` is H x W x 3 in [0, 1] at the saliency map's resolution (for a model input,
    :func:`convvis.deprocess` of the image). ``iterations`` > 0 re-fits the colour models on the
    current segmentation and cuts again, that many times (GrabCut's iteration; the paper does not
    iterate). ``timings`` records seconds spent per stage.

    ``hard_seeds`` says which seeds are also hard constraints of the cut: ``"both"`` (default),
    ``"foreground"`` or ``"none"``. The paper uses the seeds to estimate the colour models and says
    nothing more. Each choice has a failure mode, measured in chapter 4 and the tests: hard
    background seeds force low-saliency pixels *inside* an object to background; with only
    foreground seeds hard, scattered seeds from a speckled map pull nearly the whole image into
    the foreground (on the book's photos, 15 of 17 boxes then cover almost the whole image).

    ``smooth`` > 0 blurs the map with a Gaussian of that many pixels before the seeds are chosen
    (not in the paper; it turns a speckled map's scattered seeds into blobs). Default 0.
    """
    if hard_seeds not in ("foreground", "both", "none"):
        raise ValueError(f"hard_seeds must be 'foreground', 'both' or 'none', not {hard_seeds!r}")
    photo = _check_photo(photo)
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
    fg_model = fit_colour_model(photo[fg], components, max_samples=max_samples, max_iter=max_iter, seed=seed)
    bg_model = fit_colour_model(photo[bg], components, max_samples=max_samples, max_iter=max_iter, seed=seed)
    t["colour_models"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    weights, _ = pairwise_weights(photo, gamma)
    cost_fg, cost_bg = fg_model.neg_log_likelihood(photo), bg_model.neg_log_likelihood(photo)
    t["energy"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    hard_fg = fg if hard_seeds in ("foreground", "both") else None
    hard_bg = bg if hard_seeds == "both" else None
    mask = graph_cut(cost_fg, cost_bg, weights, hard_fg, hard_bg)
    t["graph_cut"] = time.perf_counter() - t0
    for _ in range(iterations):
        t0 = time.perf_counter()
        if mask.sum() >= 2 and (~mask).sum() >= 2:
            fg_model = fit_colour_model(photo[mask], components, max_samples=max_samples, seed=seed)
            bg_model = fit_colour_model(photo[~mask], components, max_samples=max_samples, seed=seed)
        cost_fg, cost_bg = fg_model.neg_log_likelihood(photo), bg_model.neg_log_likelihood(photo)
        mask = graph_cut(cost_fg, cost_bg, weights, hard_fg, hard_bg)
        t["iterations"] = t.get("iterations", 0.0) + time.perf_counter() - t0
    t0 = time.perf_counter()
    obj = largest_component(mask)
    box = bounding_box(obj)
    t["component_and_box"] = time.perf_counter() - t0
    return Segmentation(fg, bg, mask, obj, box, t)


def localise(
    model,
    image: torch.Tensor,
    targets: Sequence[int] | torch.Tensor | None = None,
    **segment_kwargs,
) -> list[Segmentation]:
    """Saliency + graph cut for a batch: one :class:`Segmentation` per (image, target).

    ``image`` (N,3,H,W) normalised for ``model`` (a :class:`convvis.LoadedModel`, whose
    preprocessing is needed to recover the photo's colours); ``targets`` one class per image
    (default: top-1). The saliency maps are computed in one batched backward pass.
    """
    from .images import deprocess
    from .saliency import saliency_map

    maps = saliency_map(model, image, targets)
    photos = deprocess(image, model)
    return [segment(p, m, **segment_kwargs) for p, m in zip(photos, maps)]


def localisation_correct(
    predictions: Sequence[tuple[int, Sequence[float] | None]],
    objects: Sequence[tuple[Sequence[int], Sequence[float]]],
    iou_threshold: float = 0.5,
) -> bool:
    """The ILSVRC localisation criterion for one image.

    ``predictions``: up to k ``(class, box)`` guesses (top-1: one; top-5: five); ``objects``: the
    ground truth as ``(accepted classes, box)``. Correct when some guess has a class accepted for
    some object and a box with IoU >= ``iou_threshold`` with that object's box.
    """
    for cls, box in predictions:
        if box is None:
            continue
        for classes, gt in objects:
            if cls in classes and box_iou(box, gt) >= iou_threshold:
                return True
    return False


# ---- baselines -----------------------------------------------------------------------------------


def threshold_box(saliency: np.ndarray | torch.Tensor, quantile: float = 0.95):
    """Thresholded saliency alone (no graph cut): box around the largest component above ``quantile``."""
    fg, _ = seeds_from_saliency(saliency, quantile, min(0.30, quantile / 2))
    return bounding_box(largest_component(fg))


def centre_box(size: int, fraction: float = 0.8) -> tuple[float, float, float, float]:
    """A fixed central box covering ``fraction`` of each side of a ``size`` x ``size`` image."""
    m = size * (1 - fraction) / 2
    return (m, m, size - m, size - m)


def grabcut_mask(photo: np.ndarray, saliency: np.ndarray | torch.Tensor, iterations: int = 1,
                 fg_quantile: float = 0.95, bg_quantile: float = 0.30,
                 hard_seeds: str = "both") -> np.ndarray:
    """OpenCV's GrabCut seeded like :func:`segment`.

    The seeds chosen as in :func:`segment` are definite foreground / background as ``hard_seeds``
    says; every other pixel starts as "probably background". Needs ``opencv-python-headless``.
    Returns the (H,W) bool foreground.
    """
    import cv2

    photo = _check_photo(photo)
    fg, bg = seeds_from_saliency(saliency, fg_quantile, bg_quantile)
    mask = np.full(fg.shape, cv2.GC_PR_BGD, np.uint8)
    if hard_seeds == "both":
        mask[bg] = cv2.GC_BGD
    mask[fg] = cv2.GC_FGD if hard_seeds in ("foreground", "both") else cv2.GC_PR_FGD
    bgr = np.ascontiguousarray((np.clip(photo, 0, 1) * 255).astype(np.uint8)[..., ::-1])
    bgd, fgd = np.zeros((1, 65)), np.zeros((1, 65))
    cv2.grabCut(bgr, mask, None, bgd, fgd, iterations, cv2.GC_INIT_WITH_MASK)
    return (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)


# ---- the ILSVRC localisation format -------------------------------------------------------------


def imagenet_wnids() -> list[str]:
    """The 1000 ILSVRC-2012 WordNet ids in class-index order (offline, from timm's tables)."""
    from timm.data import ImageNetInfo

    wnids = list(ImageNetInfo().label_names())
    assert len(wnids) == 1000
    return wnids


def read_ilsvrc_boxes(xml_path: str | os.PathLike) -> dict:
    """Parse one ILSVRC (PASCAL-VOC style) annotation file.

    Returns ``{"filename", "width", "height", "objects": [(wnid, [x0, y0, x1, y1])]}`` with boxes
    converted from the file's inclusive 1-based pixel corners to [x0, y0, x1, y1) in 0-based pixels.
    """
    path = Path(xml_path)
    if not path.is_file():
        raise FileNotFoundError(f"no annotation file {path}")
    root = ET.parse(path).getroot()
    size = root.find("size")
    if size is None or root.find("filename") is None:
        raise ValueError(f"{path} is not an ILSVRC annotation (no <filename> or <size>)")
    objects = []
    for obj in root.iter("object"):
        bb = obj.find("bndbox")
        x0, y0, x1, y1 = (float(bb.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax"))
        objects.append((obj.find("name").text.strip(), [x0 - 1, y0 - 1, x1, y1]))
    return {"filename": root.find("filename").text.strip(), "width": int(size.find("width").text),
            "height": int(size.find("height").text), "objects": objects}


class ILSVRCLocalisation(torch.utils.data.Dataset):
    """ILSVRC validation images with their boxes, prepared for a model.

    ``images_dir`` holds ``<filename>.JPEG`` files, ``annotations_dir`` the matching ``.xml`` files
    (the layout of ``ILSVRC2012_img_val`` and ``ILSVRC2012_bbox_val``). Each item is
    ``(image (3,S,S) normalised, index)``; ``objects(index)`` gives the ground truth as
    ``[(accepted classes, box in model-input pixels)]``, ready for :func:`localisation_correct`.
    Use it with a ``DataLoader`` (``num_workers``, ``pin_memory``) to evaluate at scale on a GPU.
    """

    def __init__(self, images_dir, annotations_dir, spec, limit: int | None = None):
        self.images_dir, self.annotations_dir = Path(images_dir), Path(annotations_dir)
        if not self.annotations_dir.is_dir():
            raise FileNotFoundError(f"no annotation folder {self.annotations_dir}")
        self.spec = spec
        self.xml = sorted(self.annotations_dir.glob("*.xml"))[:limit]
        if not self.xml:
            raise FileNotFoundError(f"no .xml annotation files in {self.annotations_dir}")
        self.index = {w: i for i, w in enumerate(imagenet_wnids())}

    def __len__(self) -> int:
        return len(self.xml)

    def _record(self, i: int) -> dict:
        return read_ilsvrc_boxes(self.xml[i])

    def image_path(self, i: int) -> Path:
        rec = self._record(i)
        for ext in (".JPEG", ".jpeg", ".jpg", ".png"):
            p = self.images_dir / (rec["filename"] + ext)
            if p.exists():
                return p
        raise FileNotFoundError(f"no image for {rec['filename']} in {self.images_dir}")

    def __getitem__(self, i: int):
        from .images import load_image

        return load_image(self.image_path(i), self.spec, device="cpu")[0], i

    def objects(self, i: int) -> list[tuple[list[int], tuple[float, float, float, float]]]:
        from .images import box_to_input

        rec = self._record(i)
        out = []
        for wnid, box in rec["objects"]:
            if wnid not in self.index:
                raise KeyError(f"{wnid} in {self.xml[i].name} is not an ILSVRC-2012 class")
            out.append(([self.index[wnid]], box_to_input(box, (rec["height"], rec["width"]), self.spec)))
        return out
