"""Every chapter runs under a second configuration, not only the one it was written with.

A student on Colab or on a GPU changes the parameter cell: another model, more steps, a finer
evaluation. The chapters assert the facts measured on their *reference configuration* (the
parameter cell as written, on a CPU) only under ``ON_REFERENCE``; identities are asserted on every
run. This test is the other half of that promise: each chapter is executed top to bottom in a fresh
kernel with a cell of overrides injected right after its ``parameters`` cell (as papermill does),
another embedded model (EfficientNet-Lite1) and smaller step and size parameters so that it runs
fast, and must reach its end without an error, knowing it is not on the reference run.
"""

from __future__ import annotations

import ast
import json
import time
from pathlib import Path

import pytest

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
    },
    "03_saliency": {
        "MODEL": '"efficientnet_lite1"',
        "EVAL_STEP": "224 * 32",
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


@pytest.mark.parametrize("chapter", sorted(OVERRIDES))
def test_chapter_runs_under_a_second_configuration(chapter):
    nb = nbformat.read(CHAPTERS / f"{chapter}.ipynb", as_version=4)
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
    # ...and it must know that this is not its reference run
    nb.cells.append(nbformat.v4.new_code_cell("assert ON_REFERENCE is False, ON_REFERENCE"))

    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                                     resources={"metadata": {"path": str(CHAPTERS)}})
    start = time.perf_counter()
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as err:
        pytest.fail(f"{chapter} under {json.dumps(overrides)} failed:\n{err}")
    print(f"{chapter}: {time.perf_counter() - start:.0f} s under the second configuration")


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
