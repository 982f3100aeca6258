"""Asserts that cannot fail, found mechanically, and claims about other libraries the chapters make.

An assert backs a sentence only if it fails when the sentence is false. One kind cannot fail: a
range check on an image that has been clamped on its way to the check. `convvis.deprocess` and
`convvis.stretch` clip to [0, 1], so `shown = convvis.deprocess(x, net); assert shown.max() <= 1`
holds whatever `x` is. The checker below reads every chapter's code cells and reports each assert
that compares the min or max of such a clamped value with a number.
"""

import ast
import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "chapters").glob("*.ipynb")) + sorted((ROOT / "appendix").glob("*.ipynb"))
CLAMPS = {"deprocess", "stretch", "clamp", "clamp_", "clip", "sigmoid"}  # outputs bounded whatever the input
EXTREMES = {"min", "max", "amin", "amax"}


def _called_name(node):
    func = node.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)


def _calls_a_clamp(node):
    return any(isinstance(n, ast.Call) and _called_name(n) in CLAMPS for n in ast.walk(node))


def _extreme_of(node):
    """The name whose min/max a node takes (`x.min()`, `x.max().item()`, `np.max(x)`), or None."""
    while isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "item":
        node = node.func.value
    if isinstance(node, ast.Call) and _called_name(node) == "float" and node.args:
        node = node.args[0]
    if not (isinstance(node, ast.Call) and _called_name(node) in EXTREMES):
        return None
    if isinstance(node.func, ast.Attribute) and not node.args:
        target = node.func.value  # x.max()
    else:
        target = node.args[0] if node.args else None  # np.max(x)
    return target.id if isinstance(target, ast.Name) else None


def range_checks_after_a_clamp(source: str) -> list[str]:
    """Each assert of `source` that bounds the min or max of a name last assigned from a clamp."""
    clamped, found = set(), []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Assign):
            names = {t.id for t in node.targets if isinstance(t, ast.Name)}
            clamped = (clamped | names) if _calls_a_clamp(node.value) else (clamped - names)
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Assert):
            continue
        for cmp in (n for n in ast.walk(node.test) if isinstance(n, ast.Compare)):
            operands = [cmp.left, *cmp.comparators]
            numbers = any(isinstance(o, ast.Constant) and isinstance(o.value, (int, float)) for o in operands)
            names = {_extreme_of(o) for o in operands} - {None}
            if numbers and names & clamped:
                found.append(f"line {node.lineno}: {ast.unparse(node.test)}")
                break  # one report per assert
    return found


def test_the_checker_flags_a_range_check_after_deprocess_and_passes_one_before_it():
    # the defect of chapter 2 on commit 9b6026c, and its fix
    defect = "shown = convvis.deprocess(legible.image, net)\nassert shown.min() >= 0 and shown.max() <= 1\n"
    assert len(range_checks_after_a_clamp(defect)) == 1
    fixed = "raw = legible.image.cpu() * std + mean\nassert raw.min() >= -1e-6 and raw.max() <= 1 + 1e-6\n"
    assert range_checks_after_a_clamp(fixed) == []
    clipped = "v = np.clip(a, 0, 1)\nassert float(np.max(v)) <= 1\n"
    assert len(range_checks_after_a_clamp(clipped)) == 1
    reassigned = "v = convvis.stretch(a)\nv = a * 2\nassert v.max() <= 1\n"  # the last assignment counts
    assert range_checks_after_a_clamp(reassigned) == []


def test_and_the_check_it_flags_cannot_fail():
    # Why the defect matters: a range assert after deprocess passes on values far outside [0, 1].
    import torch

    import convvis

    net = convvis.LoadedModel(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 2)))
    wild = torch.full((1, 3, 4, 4), 50.0)  # 50 standard deviations: nothing displayable
    shown = convvis.deprocess(wild, net)
    assert shown.min() >= 0 and shown.max() <= 1  # the clamp makes it true
    std, mean = (torch.tensor(v).view(1, 3, 1, 1) for v in (net.preprocessing.std, net.preprocessing.mean))
    raw = wild * std + mean
    assert raw.max() > 1  # the check on the value itself sees it


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_no_chapter_asserts_a_range_that_a_clamp_guarantees(nb):
    cells = [c for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code"]
    source = "\n".join("".join(c["source"]) for c in cells)
    source = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!")))
    found = range_checks_after_a_clamp(source)
    assert not found, f"{nb.name}: range asserts on clamped values, which cannot fail: {found}"


def test_captums_image_visualiser_sums_over_the_channels():
    # chapter 3: "some visualisers sum instead (captum's visualize_image_attr, for one)"
    pytest.importorskip("captum")
    import matplotlib
    from captum.attr import visualization as viz

    matplotlib.use("Agg")
    attr = np.zeros((1, 2, 3))
    attr[0, 0] = (1.0, 1.0, 1.0)  # sum 3, max 1
    attr[0, 1] = (2.0, 0.0, 0.0)  # sum 2, max 2
    _, axis = viz.visualize_image_attr(attr, method="heat_map", sign="absolute_value", outlier_perc=0,
                                       use_pyplot=False)
    shown = np.asarray(axis.images[0].get_array())
    assert shown[0, 0] > shown[0, 1]  # ranked by the sum (3 > 2), not by the maximum (1 < 2)
