"""Baselines for the localisation of paper Sect. 3.2, which the book compares the graph cut with.

None is in the paper: a box around thresholded saliency alone (no graph cut), a fixed centre box
(a prior with no image at all), and OpenCV's GrabCut seeded like :func:`convvis.segment`.
"""

from __future__ import annotations

import numpy as np
import torch

from .common import check_photo
from .segmentation import bounding_box, check_hard_seeds, largest_component, seeds_from_saliency

__all__ = ["threshold_box", "centre_box", "grabcut_mask"]


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
    says (one of ``convvis.segmentation.HARD_SEEDS``); every other pixel starts as "probably
    background". Needs ``opencv-python-headless``.
    Returns the (H,W) bool foreground.
    """
    import cv2

    check_hard_seeds(hard_seeds)
    photo = check_photo(photo)
    fg, bg = seeds_from_saliency(saliency, fg_quantile, bg_quantile)
    mask = np.full(fg.shape, cv2.GC_PR_BGD, np.uint8)
    if hard_seeds == "both":
        mask[bg] = cv2.GC_BGD
    mask[fg] = cv2.GC_FGD if hard_seeds in ("foreground", "both") else cv2.GC_PR_FGD
    bgr = np.ascontiguousarray((np.clip(photo, 0, 1) * 255).astype(np.uint8)[..., ::-1])
    bgd, fgd = np.zeros((1, 65)), np.zeros((1, 65))
    cv2.grabCut(bgr, mask, None, bgd, fgd, iterations, cv2.GC_INIT_WITH_MASK)
    return (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)
