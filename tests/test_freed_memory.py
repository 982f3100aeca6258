"""convvis.setup keeps freed memory for reuse (issue #24): counted in page faults, nothing timed.

The setting is process-wide and cannot be undone, so each measurement runs in a fresh Python.
"""

import json
import os
import subprocess
import sys
import textwrap
import warnings

import pytest

from convvis import runtime

TENSOR_MIB = 256

# Allocate and free a 256 MiB tensor (torch.ones writes every page) `rounds` times, twice in a row;
# print the minor page faults (getrusage) of each run of `rounds` and the page size.
_LOOP = textwrap.dedent("""
    import json, resource, sys
    import torch, convvis

    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    applied = None
    if sys.argv[1] == "setup":
        convvis.setup(device="cpu")
        applied = convvis.runtime._malloc_state["applied"]
    counts = []
    for _ in range(2):
        f0 = faults()
        for _ in range(10):
            t = torch.ones({n} // 4)
            del t
        counts.append(faults() - f0)
    print(json.dumps({{"counts": counts, "page": resource.getpagesize(), "applied": applied}}))
""").format(n=TENSOR_MIB * 2**20)


def _loop(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _LOOP, mode], capture_output=True, text=True, check=True,
                         env={**os.environ, "CONVVIS_KEEP_FREED_MEMORY": "1"})
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(runtime._glibc() is None, reason="keeping freed memory needs glibc's mallopt "
                    "(Linux with glibc); elsewhere setup() leaves the allocator alone and says so")
def test_after_setup_a_freed_tensor_is_reused_not_faulted_in_again():
    """Ten allocate-and-free rounds of a 256 MiB tensor, twice. Without setup (``import convvis``
    alone changes nothing) every round faults the tensor's pages in again: ten tensors' worth per
    run. After setup, the second run faults less than one tensor's worth. The first run is not
    asserted near one tensor: on glibc 2.36 the heap may take new pages for the first few rounds
    (2 to 8 tensors' worth measured; see keep_freed_memory's docstring), but never all ten."""
    plain, kept = _loop("import"), _loop("setup")
    one = TENSOR_MIB * 2**20 / plain["page"]  # one tensor's worth of pages
    assert plain["applied"] is None and kept["applied"] is True
    assert all(c >= 9 * one for c in plain["counts"]), plain  # the faults the setting removes
    assert kept["counts"][1] < one, kept
    assert kept["counts"][0] < 9.5 * one, kept


def test_setup_twice_is_harmless_and_the_keyword_turns_it_off():
    code = textwrap.dedent("""
        import json, convvis
        convvis.setup(device="cpu", keep_freed_memory=False)
        off = convvis.runtime._malloc_state["applied"]
        a = convvis.setup(seed=1, device="cpu")
        b = convvis.setup(seed=1, device="cpu")
        print(json.dumps([off, convvis.runtime._malloc_state["applied"], str(a), str(b)]))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    off, on, a, b = json.loads(out.stdout.strip().splitlines()[-1])
    assert off is False and a == b == "cpu"
    assert on is (runtime._glibc() is not None)


def test_where_it_cannot_apply_it_does_nothing_and_warns_once(monkeypatch):
    monkeypatch.setattr(runtime, "_glibc", lambda: None)
    monkeypatch.setattr(runtime, "_malloc_state", {"applied": False, "warned": False})
    monkeypatch.delenv("CONVVIS_KEEP_FREED_MEMORY", raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert runtime.keep_freed_memory() is False
        runtime.setup(seed=None, device="cpu")
        runtime.setup(seed=None, device="cpu")
    assert len(caught) == 1 and "not glibc" in str(caught[0].message)
    assert runtime._malloc_state["applied"] is False


_MAPS = textwrap.dedent("""
    import hashlib, sys
    import convvis

    device = convvis.setup(seed=0, device="cpu", keep_freed_memory=sys.argv[1] == "keep")
    net = convvis.load_model(device=device)
    x = convvis.load_images(convvis.sample_names()[:4], net)
    for _ in range(2):  # the second pass runs on reused memory where it is kept
        maps = convvis.saliency_map(net, x)
    print(convvis.runtime._malloc_state["applied"], hashlib.sha256(maps.numpy().tobytes()).hexdigest())
""")


def test_the_maps_are_bit_for_bit_the_same_with_freed_memory_kept():
    """The setting changes where memory comes from, never a result: the same bits either way."""
    env = {**os.environ, "CONVVIS_KEEP_FREED_MEMORY": "1"}
    out = {mode: subprocess.run([sys.executable, "-c", _MAPS, mode], capture_output=True, text=True,
                                check=True, env=env).stdout.split()[-2:] for mode in ("keep", "release")}
    assert out["release"][0] == "False" and out["keep"][0] == str(runtime._glibc() is not None)
    assert out["keep"][1] == out["release"][1]
