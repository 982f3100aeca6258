"""Explicit seeding, device choice, and the CPU allocator setting.

Nothing here runs at import time: a chapter (or a user script) calls :func:`setup` once, and
everything random or device-dependent afterwards follows from that call.
"""

from __future__ import annotations

import copy
import os
import random
import sys
import warnings

import numpy as np
import torch

__all__ = ["setup", "resolve_device", "keep_freed_memory", "reference_parameters", "reference_run"]


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


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
# Largest value mallopt(M_MMAP_THRESHOLD) takes (an int); no tensor of the book comes near 2 GiB.
_NEVER_MMAP = 2**31 - 1
_OFF_VARIABLE = "CONVVIS_KEEP_FREED_MEMORY"
_malloc_state: dict = {"applied": False, "warned": False}


def keep_freed_memory(worker_id: int | None = None) -> bool:
    """Tell the C allocator (glibc) to keep freed memory for reuse in this process; True if applied.

    ``worker_id`` is ignored: it lets this function be a ``DataLoader``'s ``worker_init_fn`` (a
    pool's ``initializer`` calls it with no argument).

    Why: a forward and backward pass allocates activations and gradients of many MiB each and
    frees them when it ends. glibc serves every block above its *mmap threshold* (128 KiB,
    sliding up to at most 32 MiB) with a fresh ``mmap`` and gives it back to the kernel with
    ``munmap`` when freed, so the next pass faults every page in again and the kernel zero-fills
    it, all of it system time: 40 % of a saliency map's CPU time at batch 80 on a 2-core CPU
    (issue #24). Two ``mallopt`` calls stop it: ``M_MMAP_THRESHOLD`` at 2**31 - 1 serves large blocks from
    the heap instead, and ``M_TRIM_THRESHOLD`` at -1 (no limit) never gives the heap's top back.
    Freed blocks are then reused by the next pass, pages already resident. A 32 MiB threshold
    (the sliding one's ceiling) does not help: a batch's activations are larger.

    The cost: the process keeps its high-water heap resident until it ends, so a long session
    that once ran a huge batch keeps that memory; and the heap can grow past the working set
    while it warms up: glibc 2.36's ``posix_memalign`` (torch aligns CPU tensors to 64 bytes)
    asks for a block 96 bytes larger than the one the same tensor freed, so the first few
    same-size allocations may each take new pages (a 256 MiB tensor allocated and freed in a
    loop: 2 to 8 tensors' worth of pages, then none). ``benchmarks/run.py --only faults``
    reports the peak RSS beside the speed. The setting is process-wide and cannot be undone
    reliably; it changes no result, only where memory comes from. Processes started later do
    not inherit it: spawned workers call this function in their initialiser. Scripts that do
    not call :func:`convvis.setup` get the same effect from the environment, set before Python
    starts (16 GiB each)::

        MALLOC_MMAP_THRESHOLD_=17179869184 MALLOC_TRIM_THRESHOLD_=17179869184 python my_script.py

    Calling it again does nothing. On a GPU only host memory is concerned (CUDA tensors come
    from torch's own caching allocator). Where it cannot apply (macOS, Windows, musl, any C
    library but glibc) it does nothing and warns once per process. The environment variable
    ``CONVVIS_KEEP_FREED_MEMORY=0`` turns it off in this process and every process it starts
    (for comparisons).
    """
    if _malloc_state["applied"]:
        return True
    if os.environ.get(_OFF_VARIABLE, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    libc = _glibc()
    if libc is None:
        if not _malloc_state["warned"]:
            _malloc_state["warned"] = True
            warnings.warn("convvis.setup: freed memory is not kept for reuse here: the C library is not "
                          f"glibc (platform {sys.platform}), so CPU runs may spend more time in page faults",
                          stacklevel=3)
        return False
    ok = libc.mallopt(_M_MMAP_THRESHOLD, _NEVER_MMAP) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, -1) == 1
    _malloc_state["applied"] = ok
    if not ok and not _malloc_state["warned"]:
        _malloc_state["warned"] = True
        warnings.warn("convvis.setup: glibc refused mallopt; freed memory is not kept for reuse",
                      stacklevel=3)
    return ok


def _glibc():
    """The running process's glibc through ctypes, or None (another C library, or no ctypes)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it (musl, bionic do not)
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.mallopt.restype = ctypes.c_int
    except (OSError, AttributeError, ImportError):
        return None
    return libc


def setup(seed: int | None = 0, device: str | torch.device | None = None, *,
          keep_freed_memory: bool = True) -> torch.device:
    """Seed Python, NumPy and PyTorch, choose the device, and keep freed memory for reuse.

    Parameters
    ----------
    seed:
        Seed for Python's ``random``, NumPy's legacy global generator and PyTorch (CPU and every CUDA
        device). ``None`` leaves all generators untouched.
    device:
        ``"cpu"``, ``"cuda"``, ``"cuda:1"``, a :class:`torch.device`, or ``None`` for CUDA when
        available, else CPU.
    keep_freed_memory:
        Tell glibc to keep freed memory for reuse instead of returning it to the kernel
        (:func:`convvis.keep_freed_memory`; process-wide): on a CPU a saliency map then
        spends no time re-faulting zeroed pages (1.5 to 1.9 times the images/s at batches 16
        to 80 on a 2-core CPU, ``benchmarks/reference/cpu-2core-2026-12-04-page-faults.json``).
        ``False`` leaves the allocator as it is (it does not undo an earlier call). Where it
        cannot apply it warns once and does nothing; on a GPU it concerns host memory only.

    Returns
    -------
    torch.device
        The device to pass to :func:`convvis.load_model` and to move images to.
    """
    dev = resolve_device(device)
    if keep_freed_memory:
        _apply_keep_freed_memory()
    if seed is not None:
        random.seed(seed)
        np.random.seed(seed)  # noqa: NPY002 - seeding the legacy generator is the point here
        torch.manual_seed(seed)  # also seeds every CUDA device
    return dev


_apply_keep_freed_memory = keep_freed_memory  # setup's keyword of the same name hides the function


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

