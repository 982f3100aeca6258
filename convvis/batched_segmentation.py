"""The graph cuts of many (photo, class) pairs at once: the batched path of ``python -m convvis.localise``.

:func:`convvis.segment` is the one-photo reference. For a network batch of n photos and their k
saliency maps each, :func:`prepare_cuts` does the dense work of all n * k pairs together, in torch
on the maps' device (the GPU when there is one):

* the seeds, by the same rank rule as :func:`convvis.seeds_from_saliency` (a stable sort gives the
  same tie-breaking), so they are exactly the same;
* the foreground and background colour models of every pair, by
  :func:`convvis.colour_model.fit_colour_model_groups` (the same subsample, k-means++ start and
  seed as :func:`convvis.fit_colour_model`; one batched EM in torch for both kinds of model where
  their subsamples have the same size, which saves a GPU's host half the EM's operations);
* the unaries of every pair, the pairwise weights once per photo (not once per class), and the
  hard seeds folded into the terminal capacities (an edge from a free pixel to a seed becomes a
  unary term of the free pixel, as :func:`convvis.graph_cut` does).

What is left for a pool process, :func:`cut_prepared`, is building the graph from those arrays,
the max-flow, the largest component and the box. The arrays travel as float32 to halve what
crosses the process boundary; the reference works in float64, so a cut can differ where two
labellings' energies tie to float32 rounding. ``benchmarks/localise.py --agreement`` measures the
difference on the 272-photo fixture and the tests hold it on a sample.

Supported: the paper's settings as :func:`convvis.segment` takes them, with ``hard_seeds="both"``,
``smooth=0`` and ``iterations=0`` (the defaults); anything else raises ``ValueError`` (the command
then uses :func:`convvis.segment`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .colour_model import fit_colour_model_groups, log_density_coefficients, mixture_costs
from .segmentation import (
    bounding_box,
    largest_component,
    neighbour_pairs,
    pairwise_weights,
    seed_counts,
    seeds_from_saliency,
)

__all__ = ["PreparedCuts", "prepare_cuts", "cut_prepared", "segment_batch", "BATCHED_SETTINGS"]

# segment()'s keywords the batched path reproduces, with the values it supports for the others
BATCHED_SETTINGS = {"fg_quantile", "bg_quantile", "components", "gamma", "max_samples", "max_iter", "seed"}
_FIXED = {"hard_seeds": "both", "smooth": 0.0, "iterations": 0}


@dataclass
class PreparedCuts:
    """The dense work of n photos x k classes, ready for :func:`cut_prepared` (NumPy, on the CPU).

    ``weights`` (n,4,H,W) float32: the pairwise weights of each photo, one map per direction of
    :func:`convvis.neighbour_pairs` (entry at the pixel, zero where the neighbour is outside).
    ``pay`` (n,k,2,H,W) float32: the cost of labelling each free pixel foreground (``[:, :, 0]``)
    and background (``[:, :, 1]``), shifted so the smaller is 0, with the edges to seeds folded in;
    zero at the seeds. ``labels`` (n,k,H,W) int8: 0 free, 1 foreground seed, 2 background seed.
    ``notes`` (n lists of k): None, or why a pair has no cut (the message :func:`convvis.segment`
    raises, e.g. for a constant map). ``history`` (n,k,2,max_iter): the foreground and background
    colour models' mean log-likelihood per EM iteration (NaN after they stopped).
    """

    weights: np.ndarray
    pay: np.ndarray
    labels: np.ndarray
    notes: list
    history: np.ndarray

    def task(self, i: int) -> dict:
        """The arrays of photo ``i``, for a pool process."""
        return {"weights": self.weights[i], "pay": self.pay[i], "labels": self.labels[i],
                "notes": self.notes[i]}


def _check_settings(kwargs: dict) -> dict:
    settings = {}
    for key, value in kwargs.items():
        if key in _FIXED:
            if value != _FIXED[key]:
                raise ValueError(f"the batched graph cut supports only {key}={_FIXED[key]!r}, "
                                 f"got {value!r}; use convvis.segment")
        elif key in BATCHED_SETTINGS:
            settings[key] = value
        else:
            raise TypeError(f"unknown segment() setting {key!r}")
    return settings


def _seeds(maps: torch.Tensor, fg_quantile: float, bg_quantile: float, engine: str):
    """(B,P) float maps -> fg, bg (B,P) bool and a note per row (None when the row is usable)."""
    b, n = maps.shape
    if not 0 <= bg_quantile < fg_quantile <= 1:
        raise ValueError(f"need 0 <= bg_quantile < fg_quantile <= 1, got {bg_quantile}, {fg_quantile}")
    if engine in ("numpy", "cpu"):
        # on a CPU the reference's O(n) partition per map beats a batched full sort (about 7x here)
        fg = np.zeros((b, n), bool)
        bg = np.zeros((b, n), bool)
        notes = [None] * b
        for i, row in enumerate(maps.numpy()):
            try:
                f, g = seeds_from_saliency(row[None], fg_quantile, bg_quantile)
                fg[i], bg[i] = f[0], g[0]
            except ValueError as e:
                notes[i] = str(e)
                fg[i, :1], bg[i, n - 1:] = True, True  # placeholders: the row's results are dropped
        n_fg, n_bg = seed_counts(n, fg_quantile, bg_quantile)
        if any(notes):  # the placeholders hold one seed each: give them the right counts
            fg[[i for i in range(b) if notes[i]], :n_fg] = True
            bg[[i for i in range(b) if notes[i]], n - n_bg:] = True
        return torch.as_tensor(fg), torch.as_tensor(bg), notes, (n_fg, n_bg)
    finite = torch.isfinite(maps).all(1)
    safe = torch.where(finite[:, None], maps, torch.zeros_like(maps))
    constant = safe.amax(1) == safe.amin(1)
    notes = [None] * b
    for i in torch.nonzero(~finite | constant).flatten().tolist():
        notes[i] = ("saliency map contains NaN or infinite values" if not bool(finite[i]) else
                    "the saliency map is constant: it ranks no pixel above another, so it gives no seeds")
    n_fg, n_bg = seed_counts(n, fg_quantile, bg_quantile)
    # the n_fg largest, ties to the lowest pixel index: a stable descending sort; the n_bg smallest,
    # ties to the highest index: a stable ascending sort of the reversed rows
    top = torch.sort(safe, dim=1, descending=True, stable=True).indices[:, :n_fg]
    low = n - 1 - torch.sort(safe.flip(1), dim=1, stable=True).indices[:, :n_bg]
    fg = torch.zeros_like(maps, dtype=torch.bool).scatter_(1, top, True)
    bg = torch.zeros_like(maps, dtype=torch.bool).scatter_(1, low, True)
    return fg, bg, notes, (n_fg, n_bg)


def _pairwise(photos: torch.Tensor, gamma: float, engine: str) -> torch.Tensor:
    """(n,H,W,3) -> (n,4,H,W) weights, as :func:`convvis.pairwise_weights` per photo."""
    n, h, w, _ = photos.shape
    if engine in ("numpy", "cpu"):
        # the reference itself: faster than torch's strided slices on a CPU
        return torch.as_tensor(np.stack([np.stack(pairwise_weights(p, gamma)[0]) for p in photos.numpy()]))
    diffs, places = [], []
    for (dy, dx), a, b in neighbour_pairs(h, w):
        d = photos[:, a[0], a[1]] - photos[:, b[0], b[1]]
        diffs.append((d * d).sum(-1))
        places.append(((dy, dx), a))
    count = sum(d[0].numel() for d in diffs)
    mean = sum(d.sum((1, 2)) for d in diffs) / max(count, 1)  # (n,)
    beta = torch.where(mean > 0, 1.0 / (2 * mean), torch.zeros_like(mean))
    out = photos.new_zeros((n, 4, h, w))
    for k, (((dy, dx), a), d2) in enumerate(zip(places, diffs)):
        out[:, k, a[0], a[1]] = gamma * torch.exp(-beta[:, None, None] * d2) / math.hypot(dy, dx)
    return out


def prepare_cuts(
    photos: torch.Tensor,
    maps: torch.Tensor,
    *,
    fg_quantile: float = 0.95,
    bg_quantile: float = 0.30,
    components: int = 5,
    gamma: float = 50.0,
    max_samples: int | None = 1000,
    max_iter: int = 10,
    seed: int = 0,
    engine: str = "auto",
    **fixed,
) -> PreparedCuts:
    """Seeds, colour models, unaries and pairwise weights of n photos x k saliency maps at once.

    ``photos`` (n,H,W,3) in [0, 1] (``deprocess`` of the network's input, as a tensor), ``maps``
    (n,k,H,W), both on the device the work should run on; computed in float64. The keywords are
    :func:`convvis.segment`'s, with the same defaults (``hard_seeds``, ``smooth`` and
    ``iterations`` only at their defaults). ``engine``: ``"torch"`` runs every step in torch (the
    GPU code, also on a CPU), ``"numpy"`` the seeds, colour models and pairwise weights with the
    reference's own NumPy functions, ``"auto"`` (default) torch on a GPU; on a CPU the seeds and
    pairwise weights by the reference's NumPy functions (a partition per map beat a batched full
    sort about 6x there) and the rest in torch, with one intra-op thread for the call (restored
    after): with the pool's processes busy, a second thread made the small batched EM 5-10x
    slower on this project's 2-core CPU.
    """
    if engine not in ("auto", "torch", "numpy"):
        raise ValueError(f"engine must be 'auto', 'torch' or 'numpy', not {engine!r}")
    if engine == "auto" and maps.device.type == "cpu":
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return _prepare(photos, maps, fg_quantile, bg_quantile, components, gamma, max_samples,
                            max_iter, seed, "cpu", fixed)
        finally:
            torch.set_num_threads(threads)
    return _prepare(photos, maps, fg_quantile, bg_quantile, components, gamma, max_samples, max_iter,
                    seed, engine, fixed)


@torch.no_grad()
def _prepare(photos, maps, fg_quantile, bg_quantile, components, gamma, max_samples, max_iter, seed,
             engine, fixed) -> PreparedCuts:
    _check_settings(fixed)
    if photos.ndim != 4 or photos.shape[-1] != 3:
        raise ValueError(f"expected (n,H,W,3) photos, got {tuple(photos.shape)}")
    if maps.ndim != 4 or maps.shape[0] != photos.shape[0] or maps.shape[2:] != photos.shape[1:3]:
        raise ValueError(f"maps {tuple(maps.shape)} do not match photos {tuple(photos.shape)} as (n,k,H,W)")
    n, k, h, w = maps.shape
    p = h * w
    x = photos.to(torch.float64).reshape(n, p, 3)
    fg, bg, flat_notes, (n_fg, n_bg) = _seeds(maps.reshape(n * k, p), fg_quantile, bg_quantile, engine)
    notes = [flat_notes[i * k:(i + 1) * k] for i in range(n)]
    owner = torch.arange(n, device=x.device).repeat_interleave(k)  # the photo of each pair
    groups = []
    for mask, count in ((fg, n_fg), (bg, n_bg)):
        if count < 2:
            raise ValueError(f"only {count} seed pixel(s): too few to fit a colour model")
        # each row has exactly `count` seeds, listed in pixel order as photo[mask] lists them
        idx = torch.nonzero(mask)[:, 1].reshape(n * k, count)
        groups.append(x[owner[:, None], idx])
    # the foreground and background models in one EM where their subsamples match (on a GPU the
    # EM's cost is the host issuing its many small operations)
    fits = fit_colour_model_groups(groups, components, max_samples=max_samples, max_iter=max_iter,
                                   seed=seed, engine="numpy" if engine == "numpy" else "torch")
    if fits[0]["weights"].shape == fits[1]["weights"].shape:  # one call for both
        coefs = log_density_coefficients(*(torch.cat([f[key] for f in fits]).to(x)
                                           for key in ("weights", "means", "covariances"))).chunk(2)
    else:
        coefs = [log_density_coefficients(f["weights"].to(x), f["means"].to(x), f["covariances"].to(x))
                 for f in fits]  # (n*k,10,K) each
    history = [f["history"] for f in fits]
    # (n, k*2, 10, K): the fg and bg model of each class of a photo, evaluated on its pixels at once
    coef = torch.stack(coefs, 1).reshape(n, k * 2, *coefs[0].shape[1:])
    cost = mixture_costs(x, coef).reshape(n, k, 2, h, w)  # (fg, bg) costs
    fg, bg = fg.reshape(n, k, h, w), bg.reshape(n, k, h, w)
    free = ~(fg | bg)
    base = torch.minimum(cost[:, :, 0], cost[:, :, 1])
    pay_fg, pay_bg = cost[:, :, 0] - base, cost[:, :, 1] - base
    weights = _pairwise(x.reshape(n, h, w, 3), gamma, engine)
    for d, (_, a, b) in enumerate(neighbour_pairs(h, w)):
        wab = weights[:, d, a[0], a[1]][:, None]  # (n,1,...): one photo's weights for its k classes
        for s, t in ((a, b), (b, a)):  # graph_cut's order of additions
            pay_bg[:, :, s[0], s[1]] += wab * (free[:, :, s[0], s[1]] & fg[:, :, t[0], t[1]])
            pay_fg[:, :, s[0], s[1]] += wab * (free[:, :, s[0], s[1]] & bg[:, :, t[0], t[1]])
    pay = torch.stack([pay_fg, pay_bg], 2) * free[:, :, None]
    labels = fg.to(torch.int8) + 2 * bg.to(torch.int8)
    hist = np.stack(history, 1).reshape(n, k, 2, -1)
    return PreparedCuts(weights.float().cpu().numpy(), pay.float().cpu().numpy(),
                        labels.cpu().numpy(), notes, hist)


def cut_prepared(weights: np.ndarray, pay: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The max-flow of one prepared pair: (H,W) bool foreground, as :func:`convvis.graph_cut`.

    ``weights`` (4,H,W) the photo's pairwise weights, ``pay`` (2,H,W) the pair's folded unaries,
    ``labels`` (H,W) its seeds (see :class:`PreparedCuts`). The graph has a node for each free
    pixel only (the seeds' labels are known and their edges are already unary terms), and its
    edges, the neighbour pairs of free pixels, go in with one ``add_edges`` call: less to build and
    a smaller graph to search than the full grid with isolated seed nodes that
    :func:`convvis.graph_cut` builds, for the same minimum.
    """
    import maxflow

    h, w = labels.shape
    free = labels == 0
    n = int(free.sum())
    out = labels == 1
    if n == 0:
        return out
    ids = np.full((h, w), -1, np.int64)
    ids[free] = np.arange(n)
    src, dst, cap = [], [], []
    for (_, a, b), wt in zip(neighbour_pairs(h, w), weights):
        both = free[a] & free[b]
        src.append(ids[a][both])
        dst.append(ids[b][both])
        cap.append(wt[a][both])
    cap = np.concatenate(cap).astype(np.float64)
    g = maxflow.Graph[float](n, len(cap))
    nodes = g.add_nodes(n)
    g.add_edges(np.concatenate(src), np.concatenate(dst), cap, cap)
    # a node on the sink side (segment True, foreground) pays its source capacity: pay[0]
    g.add_grid_tedges(nodes, pay[0][free].astype(np.float64), pay[1][free].astype(np.float64))
    g.maxflow()
    out[free] = g.get_grid_segments(nodes)
    return out


def segment_batch(photos, maps, **kwargs) -> list[list[dict]]:
    """:func:`prepare_cuts` then :func:`cut_prepared` for every pair, in this process.

    Returns for each photo, for each class, ``{"mask", "object_mask", "box", "note"}`` (the
    fields of :class:`convvis.Segmentation` the localisation uses; ``note`` and no mask for a
    pair without seeds). For tests and small runs; the command sends :meth:`PreparedCuts.task`
    to its pool instead.
    """
    prep = prepare_cuts(photos, maps, **kwargs)
    out = []
    for i in range(len(prep.notes)):
        row = []
        for j, note in enumerate(prep.notes[i]):
            if note is not None:
                row.append({"mask": None, "object_mask": None, "box": None, "note": note})
                continue
            mask = cut_prepared(prep.weights[i], prep.pay[i, j], prep.labels[i, j])
            obj = largest_component(mask)
            row.append({"mask": mask, "object_mask": obj, "box": bounding_box(obj), "note": None})
        out.append(row)
    return out
