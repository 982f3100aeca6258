"""Figures shared by the chapters: image grids with titles, heat-map overlays, boxes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .images import deprocess
from .loaded_model import LoadedModel

__all__ = [
    "show_images", "overlay", "draw_box", "prediction_title", "to_display", "signed_to_rgb", "stretch",
    "show_checkpoints",
]


def to_display(x: np.ndarray | torch.Tensor) -> np.ndarray:
    """A photo (H,W,3) or map (H,W) as a NumPy array for ``imshow`` (tensors are detached)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    x = np.asarray(x)
    if x.ndim == 3 and x.shape[0] in (1, 3) and x.shape[2] not in (1, 3):
        raise ValueError(
            f"got a channels-first array {x.shape}; use convvis.deprocess for model tensors"
        )
    if x.ndim == 3 and x.shape[2] == 1:
        x = x[..., 0]
    if x.ndim not in (2, 3):
        raise ValueError(f"cannot show an array of shape {x.shape}")
    return x


def prediction_title(name: str, score: float | None = None, prob: float | None = None,
                     width: int = 22) -> str:
    """'class name' on one line (shortened to ``width``), then 'S=12.3  p=0.95' if given."""
    short = name if len(name) <= width else name[: width - 1] + "…"
    parts = []
    if score is not None:
        parts.append(f"S={score:.1f}")
    if prob is not None:
        parts.append(f"p={prob:.2f}")
    return short + ("\n" + "  ".join(parts) if parts else "")


def show_images(
    images: Sequence[np.ndarray | torch.Tensor],
    titles: Sequence[str] | None = None,
    ncols: int = 4,
    size: float = 2.6,
    cmap: str | None = None,
    suptitle: str | None = None,
    fontsize: float = 11,
):
    """Show photos (H,W,3 in [0,1]) or maps (H,W) in a grid; returns the matplotlib figure.

    Keep ``ncols * size`` near 10 inches: the book's text column shows figures about 750 px wide,
    and wider figures shrink their titles below legibility.

    Maps are drawn with ``cmap`` (default ``"inferno"``), photos as they are.
    """
    import matplotlib.pyplot as plt

    n = len(images)
    if n == 0:
        raise ValueError("no images to show")
    if titles is not None and len(titles) != n:
        raise ValueError(f"{n} images but {len(titles)} titles")
    ncols = max(1, min(ncols, n))
    nrows = (n + ncols - 1) // ncols
    height = size * nrows + (0.3 if suptitle else 0.0)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, height), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (ax, img) in enumerate(zip(axes.flat, images)):
        arr = to_display(img)
        ax.imshow(arr, cmap=(cmap or "inferno") if arr.ndim == 2 else None)
        if titles is not None:
            ax.set_title(titles[i], fontsize=fontsize)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def overlay(ax, photo: np.ndarray | torch.Tensor, heat: np.ndarray | torch.Tensor,
            alpha: float = 0.55, cmap: str = "inferno", percentile: float = 99.0):
    """Draw ``photo`` (H,W,3) with a heat map (H,W, any non-negative scale) on top.

    The heat map is scaled to [0, 1] by its ``percentile``-th value so that one extreme pixel does
    not wash the rest out; it is drawn with opacity growing with its value. Returns ``ax``.
    """
    photo, heat = to_display(photo), to_display(heat).astype(np.float32)
    if heat.ndim != 2 or heat.shape != photo.shape[:2]:
        raise ValueError(f"heat map {heat.shape} does not match photo {photo.shape[:2]}")
    top = np.percentile(heat, percentile)
    h = np.clip(heat / top, 0.0, 1.0) if top > 0 else np.zeros_like(heat)
    import matplotlib

    rgba = matplotlib.colormaps[cmap](h)
    rgba[..., 3] = alpha * h
    ax.imshow(photo)
    ax.imshow(rgba)
    ax.axis("off")
    return ax


def draw_box(ax, box: Sequence[float], color: str = "lime", label: str | None = None, lw: float = 2.0):
    """Draw an ``[x0, y0, x1, y1]`` box (pixels, x1/y1 exclusive) on ``ax``."""
    from matplotlib.patches import Rectangle

    x0, y0, x1, y1 = (float(v) for v in box)
    ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec=color, lw=lw))
    if label:
        ax.text(x0, y0, label, color="black", fontsize=8, va="bottom",
                bbox={"facecolor": color, "alpha": 0.8, "pad": 1, "lw": 0})
    return ax


def signed_to_rgb(w: np.ndarray | torch.Tensor, percentile: float = 99.0) -> np.ndarray:
    """Show a signed (3,H,W) gradient as an RGB image: mid-grey is zero.

    Each value becomes ``0.5 + 0.5 * w / m`` (clipped to [0, 1]) with ``m`` the ``percentile``-th
    value of ``|w|``, so positive components brighten a channel and negative ones darken it.
    Returns H x W x 3.
    """
    if isinstance(w, torch.Tensor):
        w = w.detach().float().cpu().numpy()
    w = np.asarray(w, dtype=np.float32)
    if w.ndim == 4 and w.shape[0] == 1:
        w = w[0]
    if w.ndim != 3 or w.shape[0] != 3:
        raise ValueError(f"expected a (3,H,W) gradient, got shape {w.shape}")
    m = float(np.percentile(np.abs(w), percentile))
    out = 0.5 + 0.5 * w / m if m > 0 else np.full_like(w, 0.5)
    return np.clip(out, 0.0, 1.0).transpose(1, 2, 0)


def stretch(image: np.ndarray | torch.Tensor, low: float = 1.0, high: float = 99.0) -> np.ndarray:
    """Contrast-stretch an H x W x 3 (or N x H x W x 3) image for display, per image.

    Values are mapped linearly so that the ``low``-th percentile goes to 0 and the ``high``-th to
    1, then clipped. Used for class-model images, whose colours stay close to the mean colour.
    """
    x = to_display(image) if not (isinstance(image, np.ndarray) and image.ndim == 4) else image
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 4:
        return np.stack([stretch(v, low, high) for v in x])
    lo, hi = np.percentile(x, low), np.percentile(x, high)
    return np.clip((x - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(x)


def show_checkpoints(report: dict, images: dict, model: LoadedModel, step: int | None = None):
    """The images of :func:`convvis.paper_checkpoints` at one step count: a row per lambda, a column
    per class; returns the matplotlib figure.

    Each panel is contrast-stretched (:func:`stretch`; the judges saw the images unstretched) and
    titled with the judges' ranks of its class, 1 being a judge's top class. ``step``: one of
    ``report["checkpoints"]`` (default the last). ``model``: the network the images were made on
    (its preprocessing undoes the normalisation).
    """
    import matplotlib.pyplot as plt

    step = report["checkpoints"][-1] if step is None else step
    if step not in report["checkpoints"]:
        raise ValueError(f"step {step} is not one of the report's checkpoints {report['checkpoints']}")
    lambdas, names = report["lambdas"], report["class_names"] or [str(c) for c in report["classes"]]
    rows = {(r["lambda"], r["step"]): r for r in report["rows"]}
    ncols = len(report["classes"])
    fig, axes = plt.subplots(len(lambdas), ncols, figsize=(2.5 * ncols, 2.75 * len(lambdas)), squeeze=False)
    for i, lam in enumerate(lambdas):
        shown = stretch(deprocess(images[lam, step], model))
        for k in range(ncols):
            ax = axes[i, k]
            ax.imshow(shown[k])
            judged = rows[lam, step]["judges"]
            ranks = ", ".join(f"{j.split('_')[-1]}: {v['rank'][k] + 1}" for j, v in judged.items())
            ax.set_title(f"{names[k][:18]}\nrank {ranks}", fontsize=8.5)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[i, 0].set_ylabel(f"λ = {lam:g}", fontsize=10)
    fig.suptitle(f"Eq. 1 (paper preset) on {report['model']}, {step} steps", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    return fig
