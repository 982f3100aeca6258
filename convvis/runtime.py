"""Explicit seeding and device choice.

Nothing here runs at import time: a chapter (or a user script) calls :func:`setup` once, and
everything random or device-dependent afterwards follows from that call.
"""

from __future__ import annotations

import random

import numpy as np
import torch

__all__ = ["setup", "resolve_device"]


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """Return a :class:`torch.device`: the one asked for, else CUDA when present, else CPU.

    A CUDA device that is asked for but absent raises ``RuntimeError`` naming the problem, rather
    than failing later inside a forward pass.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"device {str(device)!r} was requested but CUDA is not available on this machine; "
            "pass device=None (auto) or 'cpu'"
        )
    return dev


def setup(seed: int | None = 0, device: str | torch.device | None = None) -> torch.device:
    """Seed Python, NumPy and PyTorch, and choose the device the book's code runs on.

    Parameters
    ----------
    seed:
        Seed for Python's ``random``, NumPy's legacy global generator and PyTorch (CPU and every CUDA
        device). ``None`` leaves all generators untouched.
    device:
        ``"cpu"``, ``"cuda"``, ``"cuda:1"``, a :class:`torch.device`, or ``None`` for CUDA when
        available, else CPU.

    Returns
    -------
    torch.device
        The device to pass to :func:`convvis.load_model` and to move images to.
    """
    dev = resolve_device(device)
    if seed is not None:
        random.seed(seed)
        np.random.seed(seed)  # noqa: NPY002 - seeding the legacy generator is the point here
        torch.manual_seed(seed)  # also seeds every CUDA device
    return dev
