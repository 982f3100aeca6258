"""Explicit seeding and device choice.

Nothing here runs at import time: a chapter (or a user script) calls :func:`setup` once, and
everything random or device-dependent afterwards follows from that call.
"""

from __future__ import annotations

import copy
import random

import numpy as np
import torch

__all__ = ["setup", "resolve_device", "reference_parameters", "reference_run"]


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


def reference_parameters(namespace: dict) -> dict:
    """Record a chapter's parameters as written: the UPPER-CASE names of ``namespace``.

    The last line of each chapter's parameter cell is
    ``REFERENCE = convvis.reference_parameters(globals())``: the values above it, on a CPU, are
    the chapter's *reference configuration*, the one on which its measured facts (class indices,
    ratios, counts) were measured and are asserted. Copies are taken, so later changes to a list
    do not change the record.
    """
    return {k: copy.deepcopy(v) for k, v in namespace.items()
            if k.isupper() and not k.startswith("_") and k != "REFERENCE" and not callable(v)
            and not isinstance(v, type(np))}


def _same(a, b) -> bool:
    try:
        if isinstance(a, (np.ndarray, torch.Tensor)) or isinstance(b, (np.ndarray, torch.Tensor)):
            return bool(np.array_equal(np.asarray(a), np.asarray(b)))
        return bool(a == b)
    except Exception:  # noqa: BLE001 - incomparable values are not the same
        return False


def reference_run(reference: dict, namespace: dict, device: str | torch.device, *,
                  verbose: bool = True) -> bool:
    """Is this run the chapter's reference configuration: every parameter as recorded, on a CPU?

    ``reference`` from :func:`reference_parameters`; ``namespace`` the chapter's ``globals()`` now
    (after a reader, or a test, changed parameters). Facts measured on the reference run are
    asserted only when this is True; identities (gradient equalities, closed forms, layer
    equivalences) are asserted on every run. With ``verbose``, says which parameters differ.
    """
    changed = [k for k, v in reference.items() if not _same(namespace.get(k, object()), v)]
    on_cpu = torch.device(device).type == "cpu"
    if verbose and (changed or not on_cpu):
        why = ([f"changed parameters: {', '.join(changed)}"] if changed else []) + \
              ([f"device {torch.device(device)}"] if not on_cpu else [])
        print("Not the reference run (" + "; ".join(why) + "): the facts measured on the reference "
              "run are not checked; identities still are.")
    return not changed and on_cpu

