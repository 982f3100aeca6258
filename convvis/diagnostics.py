"""What a call asks of the host: torch operations dispatched and reads of tensor values.

At small batches a GPU waits for its host: every torch operation is issued by the CPU, and every
read of a device value on the host (``bool(t)``, ``t.item()``, ``t.cpu()``, ...) waits until the
device has finished all that was queued before it. Both counts are the same on any device, so they
can be taken on a CPU. ``tests/test_host_reads.py`` holds the hot paths to at most one read per
call with :func:`count_host_reads`; ``benchmarks/run.py --only host`` and
``benchmarks/localise.py`` count operations with :func:`count_operations`.

Neither is used by the library itself; both patch or intercept torch only inside their ``with``
block.
"""

from __future__ import annotations

import contextlib

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["count_host_reads", "count_operations", "HOST_READS"]

# the Tensor methods through which the host reads a tensor's values
HOST_READS = ("__bool__", "item", "tolist", "cpu", "__int__", "__float__", "__index__", "numpy", "__array__")


class _Operations(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def count_operations() -> _Operations:
    """``with count_operations() as ops: ...`` then ``ops.count``: the torch operations dispatched
    in the block, forward and backward alike, views included."""
    return _Operations()


@contextlib.contextmanager
def count_host_reads():
    """``with count_host_reads() as reads: ...``: ``reads`` lists, in order, the name of each call
    through which the host read a tensor's values (one of ``HOST_READS``).

    A tensor that ``cpu()`` returned is a host copy: reading it again is not counted (on a CPU
    ``cpu()`` returns the tensor itself, so inside the block a copy is handed back instead, with
    the same values). Not counted, because they make no such call: the waits some operations make
    on CUDA by themselves (``torch.linalg.cholesky`` checking its result, ``torch.nonzero`` sizing
    its output, copies from host memory).
    """
    counted: list[str] = []
    host, keep = set(), []  # ids of host copies, kept alive so that ids are not reused
    saved = {name: getattr(torch.Tensor, name) for name in HOST_READS}

    def wrap(name, original):
        def read(self, *args, **kwargs):
            if id(self) not in host:
                counted.append(name)
            out = original(self, *args, **kwargs)
            if name == "cpu" and isinstance(out, torch.Tensor):
                out = out.clone() if out is self else out
                host.add(id(out))
                keep.append(out)
            return out

        return read

    for name, original in saved.items():
        setattr(torch.Tensor, name, wrap(name, original))
    try:
        yield counted
    finally:
        for name, original in saved.items():
            setattr(torch.Tensor, name, original)
