"""Student and teacher editions generated from the chapters' marked solution regions."""

import json
from pathlib import Path

import pytest

from convvis.assignments import BEGIN, END, main, make_editions, student_source, teacher_source

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = sorted((ROOT / "chapters").glob("*.ipynb"))

SOURCE = '''def f(x):
    """Doubles x."""
    y = 1
    ### BEGIN SOLUTION
    y = 2 * x
    ### END SOLUTION
    return y'''


def test_student_and_teacher_sources_by_hand():
    assert student_source(SOURCE) == '''def f(x):
    """Doubles x."""
    y = 1
    raise NotImplementedError("Exercise: write the body of f()")
    return y'''
    assert teacher_source(SOURCE) == SOURCE.replace("    ### BEGIN SOLUTION\n", "").replace(
        "    ### END SOLUTION\n", "")
    for bad, why in [(f"{BEGIN}\n", "never closed"), (f"{END}\n", "without"),
                     (f"{BEGIN}\n{BEGIN}\n{END}\n", "inside another")]:
        with pytest.raises(ValueError, match=why):
            student_source(bad)


def _code(nb_path):
    cells = json.loads(Path(nb_path).read_text())["cells"]
    return ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]


def test_editions_of_the_real_chapters(tmp_path):
    counts = make_editions(CHAPTERS, tmp_path)
    assert counts == {"02_class_models": 1, "03_saliency": 1, "04_graphcut_segmentation": 2,
                      "05_deconvnet": 1}
    for stem, n in counts.items():
        student = "\n".join(_code(tmp_path / "student" / f"{stem}.ipynb"))
        teacher = "\n".join(_code(tmp_path / "teacher" / f"{stem}.ipynb"))
        for text in (student, teacher):
            assert BEGIN not in text and END not in text
        assert student.count('raise NotImplementedError("Exercise: write the body of') == n
        assert "NotImplementedError" not in teacher
        original = "\n".join(_code(ROOT / "chapters" / f"{stem}.ipynb"))
        kept = [line for line in original.split("\n") if line.strip() not in (BEGIN, END)]
        assert teacher == "\n".join(kept)
    assert main([str(tmp_path / "again")]) == 0
    assert sorted(p.name for p in (tmp_path / "again" / "student").iterdir()) == sorted(
        f"{s}.ipynb" for s in counts)


def test_the_command_refuses_bad_input(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main([str(tmp_path), str(tmp_path / "missing.ipynb")])
    assert "no such notebook" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(tmp_path), str(ROOT / "chapters" / "00_models_and_images.ipynb")])
    assert "no exercise (the notebook has no marked solution region)" in capsys.readouterr().err


# A student who runs every cell of a students' edition meets only the exercise stubs' errors, each
# one: tests/test_configurations.py runs each edition (under the second configuration, so that CI
# executes no chapter a third time) and checks that.


# ---- a student edition does not show the answers before the stubs --------------------------------

# What each chapter's answer looks like in code. None of it may appear in the student edition's code
# (cells, or fenced code in the prose): the exercise would be a copy. Calls to convvis are fine.
ANSWERS = {
    "02_class_models": [r"\b2\s*\*\s*lam\b", r"\blam\w*\s*\*\s*\(?\s*\w+\s*\*\*\s*2"],
    "03_saliency": [r"\.abs\(\)\s*\.\s*a?max\(", r"\ba?max\(\s*(torch\.)?abs\("],
    "04_graphcut_segmentation": [r"[<>]=?\s*np\.(quantile|percentile)\(", r"add_grid_t?edges",
                                 r"get_grid_segments", r"maxflow\.Graph"],
    "05_deconvnet": [r"clamp\(\s*min\s*=\s*0\s*\)", r"\*\s*\(\s*\w+\s*>\s*0\s*\)", r"\*\s*forward_gate"],
}
# showing the library's own answer is a leak in every chapter
SHOWN = (r"(getsource|literalinclude).*"
         r"(saliency_map|reduce_channels|seeds_from_saliency|graph_cut|relu_backward)")


STUB = r'raise NotImplementedError\("Exercise:'


def leaks(student_nb: Path, teacher_nb: Path, patterns: list[str], stub: str = STUB) -> list[str]:
    """Code in the student edition that gives an exercise's answer away: a line of a solution
    (20 characters or more), or one of ``patterns``. ``stub``: the regular expression of what
    replaces a solution (Otter's student notebooks have ``...``)."""
    import re

    def code(nb_path):
        for cell in json.loads(Path(nb_path).read_text())["cells"]:
            src = "".join(cell["source"])
            if cell["cell_type"] == "code":
                yield src
            else:
                yield from re.findall(r"```.*?\n(.*?)```", src, flags=re.S)

    student = list(code(student_nb))
    stubbed = {s for s in student if re.search(stub, s)}
    solution_lines = set()
    for src in code(teacher_nb):
        if any(re.split(stub, s, maxsplit=1)[0].strip() in src for s in stubbed):
            solution_lines |= {line.strip() for line in src.split("\n") if len(line.strip()) >= 20
                               and not line.strip().startswith(("def ", '"""', "#", "return", "import"))}
    found = []
    for src in student:
        for line in src.split("\n"):
            if line.strip() in solution_lines and src not in stubbed:
                found.append(f"solution line: {line.strip()}")
            found += [f"{p!r}: {line.strip()}" for p in (*patterns, SHOWN) if re.search(p, line)]
    return found


@pytest.mark.parametrize("stem", sorted(ANSWERS))
def test_student_editions_do_not_show_the_answers(stem, tmp_path):
    make_editions([ROOT / "chapters" / f"{stem}.ipynb"], tmp_path)
    found = leaks(tmp_path / "student" / f"{stem}.ipynb", tmp_path / "teacher" / f"{stem}.ipynb",
                  ANSWERS[stem])
    assert not found, f"{stem}: the student edition shows the answer: {found}"


def test_the_leak_finder_finds_leaks(tmp_path):
    cells = [
        {"cell_type": "code", "source": "by_hand = w.abs().amax(dim=1)", "metadata": {}, "outputs": []},
        {"cell_type": "code", "source": "q = x.square().sum() + y_very_long_name_here", "metadata": {},
         "outputs": []},
        {"cell_type": "markdown", "source": "```python\nfg = s > np.quantile(s, 0.95)\n```", "metadata": {}},
        {"cell_type": "code", "source": "print(inspect.getsource(convvis.graph_cut))", "metadata": {},
         "outputs": []},
        {"cell_type": "code", "metadata": {}, "outputs": [],
         "source": f"def f(x):\n    {BEGIN}\n    q = x.square().sum() + y_very_long_name_here\n    {END}"},
    ]
    src = tmp_path / "nb.ipynb"
    src.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    make_editions([src], tmp_path)
    found = leaks(tmp_path / "student" / "nb.ipynb", tmp_path / "teacher" / "nb.ipynb",
                  ANSWERS["03_saliency"] + ANSWERS["04_graphcut_segmentation"])
    assert len(found) == 4, found
    assert any("by_hand" in f for f in found) and any("solution line" in f for f in found)
