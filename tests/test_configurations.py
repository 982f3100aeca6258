"""Every chapter runs under a second configuration, not only the one it was written with.

A student on Colab or on a GPU changes the parameter cell: another model, more steps, a finer
evaluation. The chapters assert the facts measured on their *reference configuration* (the
parameter cell as written, on a CPU) only under ``ON_REFERENCE``; identities are asserted on every
run. This test is the other half of that promise: each chapter is executed top to bottom in a fresh
kernel with a cell of overrides injected right after its ``parameters`` cell (as papermill does),
another embedded model (EfficientNet-Lite1) and smaller step and size parameters so that it runs
fast, and must reach its end without an error, knowing it is not on the reference run.

nbval already executes every chapter once, as written; this is each chapter's one other execution
in the test suite, and it carries two more promises so that no chapter is run a third time:

- a chapter with exercises is run as its **students' edition** (``convvis.assignments``): a student
  who runs every cell meets the exercise stubs' ``NotImplementedError``, each one, and no other error;
- the chapters in ``tests/test_gpu_fragility.py``'s ``DEFAULT`` run with that test's perturbation of
  every gradient's last bits, as a GPU's differ between passes.
"""

from __future__ import annotations

import ast
import json
import time
from datetime import datetime
from pathlib import Path

import pytest
from test_gpu_fragility import DEFAULT as PERTURBED
from test_gpu_fragility import perturbed

from convvis.assignments import make_editions

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = ROOT / "chapters"
CELL_TIMEOUT = 600  # seconds per cell; a whole chapter takes well under that here

# The second configuration, per chapter: parameter name -> Python source of its value.
# Another embedded model everywhere, and fewer or coarser steps so that all six chapters together
# run in a few minutes on a 2-core CPU.
OVERRIDES: dict[str, dict[str, str]] = {
    "00_models_and_images": {"MODEL": '"efficientnet_lite1"'},
    "01_taylor_gradient": {
        "MODEL": '"efficientnet_lite1"',
        "EPS": "np.logspace(-4, 2, 9)",
        "N_RANDOM": "2",
    },
    "02_class_models": {
        "MODEL": '"efficientnet_lite1"',
        "GALLERY": "[543, 968, 251, 945]",  # at least four: the priors' figure shows GALLERY[:4]
        "STEPS": "12",
        "COMPARE": "[945, 76]",
        "LAMBDAS": "[1e-3, 1e-1]",
        "LEGIBLE_STEPS": "16",  # the legible gallery's 256 steps on Lite1 were 70 % of this run
    },
    "03_saliency": {
        "MODEL": '"efficientnet_lite1"',
        "EVAL_STEP": "224 * 112",  # 4 points per curve at Lite1's 240 px: the curves' cost dominates
        "SG_SAMPLES": "4",
        "IG_STEPS": "4",
    },
    "04_graphcut_segmentation": {
        "MODEL": '"efficientnet_lite1"',
        "COMPONENTS": "3",
        "SHOW": '["squirrel.jpg", "fruits.jpg"]',
    },
    "05_deconvnet": {
        "MODEL": '"efficientnet_lite1"',
        "PHOTOS": '["cat", "squirrel"]',
        "UNITS": '[("blocks.2", 10), ("blocks.5", 100)]',
    },
}


def _parameter_cell(nb) -> int:
    hits = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(hits) == 1, f"expected one cell tagged 'parameters', found {len(hits)}"
    return hits[0]


def _assigned(source: str) -> set[str]:
    return {t.id for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Assign)
            for t in node.targets if isinstance(t, ast.Name)}


def test_every_chapter_has_a_second_configuration():
    assert sorted(OVERRIDES) == sorted(p.stem for p in CHAPTERS.glob("[0-9][0-9]_*.ipynb"))


def _stub_error(output) -> bool:
    return output.ename == "NotImplementedError" and output.evalue.startswith("Exercise:")


@pytest.mark.parametrize("chapter", sorted(OVERRIDES))
def test_chapter_runs_under_a_second_configuration(chapter, tmp_path):
    source = CHAPTERS / f"{chapter}.ipynb"
    exercises = make_editions([source], tmp_path).get(chapter, 0)
    if exercises:  # the students' edition: the solutions replaced by stubs
        source = tmp_path / "student" / f"{chapter}.ipynb"
    nb = nbformat.read(source, as_version=4)
    p = _parameter_cell(nb)
    overrides = OVERRIDES[chapter]
    unknown = set(overrides) - _assigned(nb.cells[p].source)
    assert not unknown, f"{chapter}: overrides for parameters its parameter cell does not set: {unknown}"
    injected = nbformat.v4.new_code_cell(
        "# Injected by tests/test_configurations.py: the second configuration\n"
        + "\n".join(f"{k} = {v}" for k, v in overrides.items()),
        metadata={"tags": ["injected-parameters"]},
    )
    nb.cells.insert(p + 1, injected)
    if chapter in PERTURBED:
        nb = perturbed(chapter, nb)
    # ...and it must know that this is not its reference run
    nb.cells.append(nbformat.v4.new_code_cell("assert ON_REFERENCE is False, ON_REFERENCE"))

    what = (f"{chapter} (students' edition, {exercises} exercise stub(s))" if exercises else chapter) + (
        " with perturbed gradients" if chapter in PERTURBED else "")
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3", allow_errors=True,
                                     resources={"metadata": {"path": str(CHAPTERS)}})
    start = time.perf_counter()
    client.execute()
    errors = [(i, o) for i, c in enumerate(nb.cells) if c.cell_type == "code"
              for o in c.outputs if o.output_type == "error"]
    others = [f"cell {i}: {o.ename}: {o.evalue}\n{''.join(nb.cells[i].source)[:300]}"
              for i, o in errors if not _stub_error(o)]
    assert not others, f"{what} under {json.dumps(overrides)} failed:\n" + "\n\n".join(others)
    stubs = {o.evalue for _, o in errors if _stub_error(o)}  # one message per exercise's function
    assert len(stubs) == exercises, f"{what}: stubs reached {sorted(stubs)}, expected {exercises}"
    print(f"{what}: {time.perf_counter() - start:.0f} s under the second configuration; slowest cells:",
          ", ".join(f"{i} ({t:.0f} s)" for t, i in sorted(_cell_seconds(nb), reverse=True)[:3]))


def _cell_seconds(nb) -> list[tuple[float, int]]:
    """(seconds, cell index) of each executed code cell, from nbclient's timing metadata: where CI's
    time goes, for whoever has to make it shorter."""
    out = []
    for i, cell in enumerate(nb.cells):
        t = cell.get("metadata", {}).get("execution", {})
        if "iopub.execute_input" in t and "shell.execute_reply" in t:
            a, b = (datetime.fromisoformat(t[k].replace("Z", "+00:00"))
                    for k in ("iopub.execute_input", "shell.execute_reply"))
            out.append(((b - a).total_seconds(), i))
    return out


def test_an_unknown_model_name_fails_naming_the_known_ones():
    nb = nbformat.read(CHAPTERS / "00_models_and_images.ipynb", as_version=4)
    p = _parameter_cell(nb)
    nb.cells.insert(p + 1, nbformat.v4.new_code_cell('MODEL = "efficientnet_lite9"'))
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                                     resources={"metadata": {"path": str(CHAPTERS)}})
    with pytest.raises(nbclient.exceptions.CellExecutionError) as err:
        client.execute()
    message = str(err.value)
    assert "unknown model 'efficientnet_lite9'" in message
    assert "efficientnet_lite0, efficientnet_lite1, efficientnet_lite2" in message and "vgg16" in message
