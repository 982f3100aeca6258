"""Asserts that cannot fail or are looser than their words, found mechanically, and claims about
other libraries the chapters make.

An assert backs a sentence only if it fails when the sentence is false. Two kinds are found here.

- A range check that cannot fail: a check on an image that has been clamped on its way to the
  check. `convvis.deprocess` and `convvis.stretch` clip to [0, 1], so
  `shown = convvis.deprocess(x, net); assert shown.max() <= 1` holds whatever `x` is. The first
  checker reads every chapter's code cells and reports each assert that compares the min or max of
  such a clamped value with a number.
- A bound looser than its words: the prose says "above 0.5" (or "more than", "over", "below",
  "less than", "fewer than", "under") and the assert next to it allows the number itself
  (`x >= 0.5`). The second checker reads each code cell's asserts that compare with a number by
  `>=` or `<=`, and the markdown cells on either side of it, and reports a number the prose
  bounds strictly in the same direction.
"""

import ast
import json
import re
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


# the prose says the quantity is strictly larger / strictly smaller than the number that follows
LOWER_WORDS = r"(?:above|more than|greater than|over|exceeds?)"
UPPER_WORDS = r"(?:below|less than|fewer than|under)"


def _spellings(value) -> list[str]:
    """How prose writes a number: 0.5 -> "0.5", also "50 %"; 400000 -> "400 000", "400,000", "400000"."""
    out = []
    if float(value).is_integer() and abs(value) >= 1:
        n = int(value)
        out += [f"{n:,}".replace(",", " "), f"{n:,}", str(n)]
    elif "e" not in repr(float(value)):  # 1e-05: the prose writes powers of ten in LaTeX; not matched
        out.append(repr(float(value)))
    if 0 < value < 1:
        pct = f"{100 * value:.10g}"
        out += [f"{pct} %", f"{pct}%"]
    return out


def _non_strict_bounds(source: str) -> list[tuple[float, str, str]]:
    """(number, "lower" or "upper", assert) for each `>=` / `<=` of an assert against a number."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Assert):
            continue
        for cmp in (n for n in ast.walk(node.test) if isinstance(n, ast.Compare)):
            operands = [cmp.left, *cmp.comparators]
            for op, a, b in zip(cmp.ops, operands, operands[1:]):
                if not isinstance(op, (ast.GtE, ast.LtE)):
                    continue
                for on_right, o in ((True, b), (False, a)):
                    if (isinstance(o, ast.Constant) and isinstance(o.value, (int, float))
                            and not isinstance(o.value, bool)):
                        # x >= N and N <= x bound x from below; x <= N and N >= x from above
                        lower = isinstance(op, ast.GtE) == on_right
                        out.append((o.value, "lower" if lower else "upper", ast.unparse(node.test)))
    return out


def bounds_looser_than_their_words(prose: str, source: str) -> list[str]:
    """Each `>=`/`<=` assert of `source` whose number `prose` bounds strictly, in the same direction."""
    text = " ".join(prose.split())
    found = []
    for value, kind, test in _non_strict_bounds(source):
        words = LOWER_WORDS if kind == "lower" else UPPER_WORDS
        for spelt in _spellings(value):
            hit = re.search(rf"\b{words}\s+\$?{re.escape(spelt)}(?![\d,.]*\d)", text)
            if hit:
                found.append(f"'{hit.group(0)}', asserted as {test}")
                break
    return found


def test_the_second_checker_flags_above_asserted_with_ge_and_passes_the_fixes():
    # the defect of chapter 4 on commit 9b6026c (cell 23), and its fix
    prose = "With the smoothness term, IoU is above 0.5 at the default gamma."
    assert len(bounds_looser_than_their_words(prose, "assert iou[GAMMA] >= 0.5 > iou[0.0]\n")) == 1
    assert len(bounds_looser_than_their_words(prose, "assert 0.5 <= iou[GAMMA]\n")) == 1
    assert bounds_looser_than_their_words(prose, "assert iou[GAMMA] > 0.5 > iou[0.0]\n") == []
    # the words allow the number itself: "at least" with >= is right
    assert bounds_looser_than_their_words("IoU of at least 0.5.", "assert iou >= 0.5\n") == []
    # the other direction is another bound ("above 20" steps, "within 20" asserted as <= 20)
    assert bounds_looser_than_their_words("scores above 20, within 20 steps", "assert s <= 20\n") == []
    # upper words, per cent, and thousands written with spaces
    assert len(bounds_looser_than_their_words("fewer than 1 % are clipped", "assert c <= 0.01\n")) == 1
    assert len(bounds_looser_than_their_words("over 400 000 units", "assert n >= 400_000\n")) == 1
    assert bounds_looser_than_their_words("over 400 000 units", "assert n > 400_000\n") == []
    assert bounds_looser_than_their_words("over 4000 units", "assert n >= 400\n") == []  # another number


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_no_strict_sentence_is_asserted_with_a_non_strict_bound(nb):
    cells = json.loads(nb.read_text())["cells"]
    found = []
    for k, cell in enumerate(cells):
        if cell["cell_type"] != "code":
            continue
        source = "\n".join(line for line in "".join(cell["source"]).splitlines()
                           if not line.lstrip().startswith(("%", "!")))
        # the prose an assert backs sits in the markdown cell just before or just after it
        before = next((c for c in reversed(cells[:k]) if c["cell_type"] == "markdown"), None)
        after = next((c for c in cells[k + 1 :] if c["cell_type"] == "markdown"), None)
        prose = " ".join("".join(c["source"]) for c in (before, after) if c)
        found += [f"cell {k}: {f}" for f in bounds_looser_than_their_words(prose, source)]
    assert not found, f"{nb.name}: strict words asserted with a bound that allows the number: {found}"


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
