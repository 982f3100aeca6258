"""Chapters survive the last-bit differences a GPU makes between backward passes (issue #23).

On a GPU two backward passes of the same input differ in their last bits (atomic adds, another
algorithm, another summation order), so an assert that compares two separate passes exactly passes
on a CPU and fails on a GPU: chapter 3 did, on an H200. This test makes a CPU fail the same way.
It executes a chapter in a fresh kernel with a first cell injected that wraps
``torch.autograd.grad`` and ``torch.autograd.backward`` (which ``Tensor.backward`` calls) so that
every gradient they return or accumulate is multiplied elementwise by ``1 + delta``, with delta
drawn afresh for every call and element, uniform in +-4 ulps of the gradient's dtype (4 * 2**-23 in
float32). The torch functions themselves are wrapped, so ``convvis``'s calls are perturbed too.

Like a GPU run, the perturbed run is not the reference run: ``convvis.reference_run`` answers False,
so the facts measured on the reference configuration are not checked and the identities are, as on
a GPU. Every chapter must still reach its end.

Cells whose gradient involves no rounding at all (a copy, a product with 1 or 0; listed in EXACT
with the reason) keep their exact asserts: a GPU cannot change those bits, so the perturbation is
paused while they run.

Chapters perturbed in CI (``DEFAULT``): 03_saliency (the chapter that failed on the H200, and the
most comparisons between separate passes: maps against gradients) and 05_deconvnet (the most
identities, and cheap). So that CI does not execute them a third time, their perturbed run is their
run under the second configuration in ``tests/test_configurations.py`` (which also makes it the
students' edition); this file's own chapter test runs only on request. The others are left out of
the default to keep CI short: 00 and the appendix compute no gradient, 04 asserts no identity
between gradients (its gradient facts are reference-run facts), 01's and 02's cross-pass identities
already carry stated tolerances (1e-5 and 1e-2 relative), and 01 and 02 are the slowest chapters
under the perturbation. All of them passed it when this test was written; set
``CONVVIS_FRAGILITY_CHAPTERS=all`` (or a comma-separated list of chapter stems) to run them here,
on their reference parameters (with ``FAST`` below).
``CONVVIS_FRAGILITY_REFERENCE=1`` keeps the reference run a reference run (on a CPU), so that the
facts measured there are checked under the perturbation too.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from convvis.assignments import make_editions

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parent.parent
CELL_TIMEOUT = 600
ULPS = 4  # |delta| <= ULPS * eps of the gradient's dtype
SEED = 23  # the perturbation's own generator: the chapters' random draws are left as they are

ALL = sorted(p.stem for p in (ROOT / "chapters").glob("[0-9][0-9]_*.ipynb")) + ["performance"]
DEFAULT = ["03_saliency", "05_deconvnet"]
NO_GRADIENTS = {"00_models_and_images", "performance"}  # nothing to perturb there

# Smaller parameters where a chapter's CPU time is in work the perturbation does not reach (chapter 3:
# deletion and insertion curves, SmoothGrad and Integrated Gradients samples), injected after the
# parameters cell as tests/test_configurations.py does; the run is not the reference run either way.
FAST: dict[str, dict[str, str]] = {
    "03_saliency": {"EVAL_STEP": "224 * 32", "SG_SAMPLES": "4", "IG_STEPS": "4"},
}

# chapter -> [(a line of the cell that computes the gradient, why it is rounding-free)]
EXACT: dict[str, list[tuple[str, str]]] = {
    "01_taylor_gradient": [
        ("linear = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 5)).eval()",
         "the gradient of a linear score is the one-hot output gradient times the weight matrix: "
         "every entry is 1 * w plus zeros, exact in any order of summation"),
        ("per_image = convvis.input_gradient(linear, some_images, target=[0, 1, 2, 3])",
         "the same linear model, one target per image: each image's gradient is 1 * its class's weight "
         "row (the cell's other calls are compared only for errors and the model's state)"),
    ],
    "05_deconvnet": [
        ("(grad,) = torch.autograd.grad(Y, X, R)\nunpooled = F.max_unpool2d(",
         "max pooling's backward copies each value of R to one position (2 x 2 windows, stride 2, "
         "no overlap): no arithmetic"),
        ('for rule in ("gradient", "deconvnet", "guided"):',
         "a rectifier's backward multiplies R by a 0/1 mask, elementwise: no arithmetic that rounds"),
    ],
}

PERTURB = f'''\
# Injected by tests/test_gpu_fragility.py: every gradient torch computes is multiplied by 1 + delta,
# |delta| <= {ULPS} ulps, fresh per call and element, as a GPU's last bits differ between passes.
import torch as _torch

import convvis as _convvis

_FRAGILITY = {{"on": True, "grad_calls": 0, "backward_calls": 0}}
_fragility_generator = _torch.Generator().manual_seed({SEED})
_autograd_grad, _autograd_backward = _torch.autograd.grad, _torch.autograd.backward


def _factor(g):
    u = _torch.rand(g.shape, generator=_fragility_generator, dtype=_torch.float64) * 2 - 1
    return (1 + {ULPS} * _torch.finfo(g.dtype).eps * u).to(g.dtype).to(g.device)


def _perturbed_grad(*args, **kwargs):
    out = _autograd_grad(*args, **kwargs)
    if not _FRAGILITY["on"]:
        return out
    _FRAGILITY["grad_calls"] += 1
    return tuple(g if g is None or not g.is_floating_point() else g * _factor(g) for g in out)


def _leaves(roots):
    """The leaf tensors a backward pass from `roots` accumulates .grad into."""
    found, seen = [], set()
    stack = [t.grad_fn for t in roots]
    found += [t for t in roots if t.grad_fn is None and t.requires_grad]
    while stack:
        fn = stack.pop()
        if fn is None or id(fn) in seen:
            continue
        seen.add(id(fn))
        if hasattr(fn, "variable"):  # AccumulateGrad: its leaf
            found.append(fn.variable)
        stack.extend(f for f, _ in fn.next_functions)
    return found


def _perturbed_backward(tensors, *args, **kwargs):
    roots = [tensors] if isinstance(tensors, _torch.Tensor) else list(tensors)
    inputs = kwargs.get("inputs")
    if inputs is not None:
        leaves = [inputs] if isinstance(inputs, _torch.Tensor) else list(inputs)
    else:
        leaves = _leaves(roots) if _FRAGILITY["on"] else []
    _autograd_backward(tensors, *args, **kwargs)
    if not _FRAGILITY["on"]:
        return
    _FRAGILITY["backward_calls"] += 1
    with _torch.no_grad():
        for leaf in leaves:
            if leaf.grad is not None and leaf.grad.is_floating_point():
                if leaf.grad.requires_grad:  # create_graph: keep the graph, out of place
                    leaf.grad = leaf.grad * _factor(leaf.grad)
                else:
                    leaf.grad.mul_(_factor(leaf.grad))


_torch.autograd.grad, _torch.autograd.backward = _perturbed_grad, _perturbed_backward


def _not_the_reference_run(reference, namespace, device, **kwargs):
    print("Perturbed run (tests/test_gpu_fragility.py): not the reference run, as on a GPU.")
    return False


_convvis.reference_run = _not_the_reference_run
'''


def perturbation_cell() -> str:
    """PERTURB; with CONVVIS_FRAGILITY_REFERENCE=1 the reference run stays one (on a CPU), so the facts
    measured there are checked under the perturbation too: do they survive another CPU's last bits?"""
    if os.environ.get("CONVVIS_FRAGILITY_REFERENCE") == "1":
        return PERTURB.split("\n\ndef _not_the_reference_run")[0] + "\n"
    return PERTURB


def selected() -> list[str]:
    """The chapters this file runs itself: none unless CONVVIS_FRAGILITY_CHAPTERS names some (CI
    perturbs DEFAULT inside tests/test_configurations.py's runs)."""
    env = os.environ.get("CONVVIS_FRAGILITY_CHAPTERS", "").strip()
    if not env:
        return []
    return ALL if env == "all" else [c.strip() for c in env.split(",") if c.strip()]


def _path(chapter: str) -> Path:
    return ROOT / ("appendix" if chapter == "performance" else "chapters") / f"{chapter}.ipynb"


def perturbed(chapter: str, nb=None):
    """The chapter (or ``nb``, a prepared copy of it: then FAST is not applied) with the perturbation
    injected as its first cell and paused around EXACT cells."""
    fast = nb is None and chapter in FAST
    if nb is None:
        nb = nbformat.read(_path(chapter), as_version=4)
    for snippet, _ in EXACT.get(chapter, []):
        hits = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and snippet in c.source]
        assert len(hits) == 1, f"{chapter}: EXACT's cell {snippet!r} found {len(hits)} times"
        i = hits[0]
        nb.cells.insert(i + 1, nbformat.v4.new_code_cell('_FRAGILITY["on"] = True'))
        nb.cells.insert(i, nbformat.v4.new_code_cell('_FRAGILITY["on"] = False  # rounding-free gradient'))
    if fast:
        p = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
        overrides = "\n".join(f"{k} = {v}" for k, v in FAST[chapter].items())
        nb.cells.insert(p + 1, nbformat.v4.new_code_cell(overrides))
    first = nbformat.v4.new_code_cell(perturbation_cell(), metadata={"tags": ["injected-perturbation"]})
    nb.cells.insert(0, first)
    # the perturbation must have reached the gradients the chapter computed
    calls = '_FRAGILITY["grad_calls"] + _FRAGILITY["backward_calls"]'
    check = "" if chapter in NO_GRADIENTS else f"assert {calls} > 0, _FRAGILITY\n"
    nb.cells.append(nbformat.v4.new_code_cell(check + 'print("perturbed gradient calls:", _FRAGILITY)'))
    return nb


def run(nb, cwd: Path):
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                                     resources={"metadata": {"path": str(cwd)}})
    client.execute()


def test_every_exact_cell_is_found_and_every_chapter_is_known(tmp_path):
    assert set(DEFAULT) <= set(ALL) and set(EXACT) <= set(ALL)
    for chapter in EXACT:
        perturbed(chapter)  # asserts that each snippet names exactly one cell
    # CI perturbs DEFAULT's students' editions (tests/test_configurations.py): the cells are there too
    make_editions([_path(c) for c in DEFAULT], tmp_path)
    for chapter in DEFAULT:
        student = tmp_path / "student" / f"{chapter}.ipynb"
        perturbed(chapter, nbformat.read(student if student.exists() else _path(chapter), as_version=4))


def test_the_perturbation_changes_the_last_bits_of_grad_and_backward():
    """The injected cell on its own: gradients move by a few ulps, no more, and differ per call."""
    import torch

    namespace: dict = {}
    saved = torch.autograd.grad, torch.autograd.backward
    try:
        exec(PERTURB, namespace)  # noqa: S102 (the test's own source)
        x = torch.linspace(-1, 1, 1000, requires_grad=True)
        (a,) = torch.autograd.grad((x**3).sum(), x)
        (b,) = torch.autograd.grad((x**3).sum(), x)
        exact = 3 * x.detach() ** 2
        rel = ((a - exact).abs() / exact.abs().clamp_min(1e-30)).max().item()
        assert not torch.equal(a, b) and 0 < rel <= (ULPS + 1) * torch.finfo(torch.float32).eps
        y = x.detach().clone().requires_grad_(True)
        (y**3).sum().backward()  # through Tensor.backward
        assert not torch.equal(y.grad, exact)
        assert torch.allclose(y.grad, exact, rtol=(ULPS + 1) * 2**-23, atol=0)
        assert namespace["_FRAGILITY"]["grad_calls"] == 2 and namespace["_FRAGILITY"]["backward_calls"] == 1
    finally:
        torch.autograd.grad, torch.autograd.backward = saved
        import convvis
        from convvis import runtime

        convvis.reference_run = runtime.reference_run


@pytest.mark.parametrize("chapter", selected() or [None])
def test_chapter_runs_with_perturbed_gradients(chapter):
    if chapter is None:
        pytest.skip("CI perturbs DEFAULT's chapters in tests/test_configurations.py; "
                    "set CONVVIS_FRAGILITY_CHAPTERS to run chapters here")
    nb = perturbed(chapter)
    start = time.perf_counter()
    try:
        run(nb, _path(chapter).parent)
    except nbclient.exceptions.CellExecutionError as err:
        pytest.fail(f"{chapter} fails when the last bits of its gradients change, as on a GPU:\n{err}")
    print(f"{chapter}: {time.perf_counter() - start:.0f} s with perturbed gradients")
