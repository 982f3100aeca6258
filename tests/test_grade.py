"""Grading a class: synthetic submissions (right, wrong, library hand-off, deleted checker, error
outside the exercises, hang, not a notebook) get exactly the rows they should, in one batch."""

import csv
import json
from pathlib import Path

import nbformat
import pytest

from convvis import sandbox
from convvis.assignments import make_editions
from convvis.grade import STATUSES, Exercise, _identify, exercises, grade, main, summary

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = sorted((ROOT / "chapters").glob("*.ipynb"))

RIGHT_RULE = '''def my_relu_backward(x, grad, rule):
    if rule == "gradient":
        return grad * (x > 0)
    if rule == "deconvnet":
        return grad.clamp(min=0)
    return grad.clamp(min=0) * (x > 0)'''
WRONG_RULE = '''def my_relu_backward(x, grad, rule):
    return grad * (x > 0) if rule != "guided" else grad.clamp(min=0) * (x > 0)'''
LIBRARY_RULE = '''from convvis.deconvnet import relu_backward

def my_relu_backward(x, grad, rule):
    return relu_backward(x, grad, rule)'''
CHECK_RULE = "from convvis.checks import check_relu_rule\n\ncheck_relu_rule(my_relu_backward)"
RIGHT_SEEDS = '''import numpy as np

def my_seeds(saliency, fg_quantile=0.95, bg_quantile=0.30):
    return saliency > np.quantile(saliency, fg_quantile), saliency < np.quantile(saliency, bg_quantile)'''
STUB_CUT = '''def my_graph_cut(cost_fg, cost_bg, weights, fg_seeds, bg_seeds):
    raise NotImplementedError("Exercise: write the body of my_graph_cut()")'''


def _notebook(path: Path, *cells: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nbformat.write(nb, path)
    return path


def test_exercises_come_from_the_chapters_checker_calls():
    book = exercises(CHAPTERS)
    assert {stem: [e.function for e in exs] for stem, exs in book.items()} == {
        "02_class_models": ["class_model_step"], "03_saliency": ["my_saliency"],
        "04_graphcut_segmentation": ["my_seeds", "my_graph_cut"], "05_deconvnet": ["my_relu_backward"]}
    assert book["03_saliency"] == [Exercise("03_saliency", "check_saliency", "my_saliency")]
    assert _identify(Path("sub/alice/05_deconvnet.ipynb"), book) == ("alice", "05_deconvnet")
    assert _identify(Path("sub/bob_05_deconvnet.ipynb"), book) == ("bob", "05_deconvnet")
    assert _identify(Path("sub/carol.ipynb"), book) == ("carol", None)


# student -> (notebook cells, {exercise: (status, words the message must contain)})
SUBMISSIONS = {
    "alice": ("05_deconvnet", [RIGHT_RULE, CHECK_RULE], {"my_relu_backward": ("passed", "checks passed")}),
    "bob": ("05_deconvnet", [WRONG_RULE, CHECK_RULE],
            {"my_relu_backward": ("failed", "you computed the 'gradient' rule")}),
    "carol": ("05_deconvnet", [LIBRARY_RULE, CHECK_RULE],
              {"my_relu_backward": ("failed", "convvis's own answer")}),
    # deletes the checker cell (the grader still runs it), and a cell outside the exercises raises
    "dave": ("05_deconvnet", ["x = 1 / 0", RIGHT_RULE],
             {"my_relu_backward": ("missing", "no longer calls check_relu_rule(my_relu_backward)"),
              "(notebook)": ("error", "ZeroDivisionError")}),
    "erin": ("05_deconvnet", [RIGHT_RULE, "import time\ntime.sleep(600)", CHECK_RULE],
             {"my_relu_backward": ("timeout", "time limit (in cell 2)")}),
    "frank": ("05_deconvnet", None, {"my_relu_backward": ("unparsable", "does not parse")}),
    # one exercise right, the other still the stub; the checker of a sister exercise sees no stub
    "gina": ("04_graphcut_segmentation",
             [RIGHT_SEEDS + "\n\n\n" + STUB_CUT,
              "from convvis.checks import check_seeds\ncheck_seeds(my_seeds)",
              "from convvis.checks import check_graph_cut\ncheck_graph_cut(my_graph_cut)"],
             {"my_seeds": ("passed", "checks passed"), "my_graph_cut": ("error", "not answered")}),
    # a student who patches the checker module does not pass
    "hugo": ("05_deconvnet", ["import convvis.checks\nconvvis.checks.check_relu_rule = lambda f: print('ok')",
                              WRONG_RULE, CHECK_RULE],
             {"my_relu_backward": ("failed", "you computed the 'gradient' rule")}),
}


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    root = tmp_path_factory.mktemp("submissions")
    for student, (stem, cells, _) in SUBMISSIONS.items():
        path = root / student / f"{stem}.ipynb"
        if cells is None:
            path.parent.mkdir(parents=True)
            path.write_text('{"cells": [ {"cell_type": "code", "source": "print(1)"')  # cut short
        else:
            _notebook(path, *cells)
    out = root / "grades.csv"
    assert main([str(root), "--out", str(out), "--timeout", "25", "--chapters", *map(str, CHAPTERS)]) == 0
    with open(out) as f:
        return list(csv.DictReader(f))


def test_each_submission_gets_the_rows_it_should(graded):
    got = {(r["student"], r["exercise"]): (r["status"], r["message"]) for r in graded}
    want = {(s, ex): v for s, (_, _, rows) in SUBMISSIONS.items() for ex, v in rows.items()}
    assert set(got) == set(want)
    for key, (status, words) in want.items():
        assert got[key][0] == status and words in got[key][1], (key, got[key])
    assert list(graded[0]) == ["student", "chapter", "exercise", "status", "message", "notebook", "sandbox"]
    ok, why = sandbox.available()
    assert all(r["sandbox"] == ("bwrap" if ok else f"none: {why}") for r in graded)
    assert all(r["status"] in STATUSES for r in graded)


def test_the_summary_table(graded):
    from convvis.grade import Row

    rows = [Row(**r) for r in graded]
    table = summary(rows).splitlines()
    assert table[0].split()[:4] == ["student", "my_relu_backward", "my_seeds", "my_graph_cut"]
    assert len(table) == 1 + len(SUBMISSIONS) + 1
    line = {t.split()[0]: t for t in table[1:-1]}
    assert line["alice"].split()[1] == "ok" and line["bob"].split()[1] == "FAIL"
    assert line["gina"].split()[1:3] == ["ok", "ERR"] and "outside the exercises" in line["dave"]
    assert table[-1] == "2 passed, 3 failed, 1 error, 1 missing, 1 timeout, 1 unparsable"


def test_the_command_refuses_bad_input(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main([str(tmp_path / "nothing.ipynb")])
    assert "no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(tmp_path)])
    assert "no notebooks" in capsys.readouterr().err


def test_slow_a_real_teacher_edition_passes(tmp_path):
    """Slow (executes chapter 5 in full, 1-3 min on CPU): the teacher edition, i.e. the student
    edition with the solutions filled in, passes the grader."""
    make_editions([ROOT / "chapters" / "05_deconvnet.ipynb"], tmp_path)
    sub = tmp_path / "submissions" / "teacher" / "05_deconvnet.ipynb"
    sub.parent.mkdir(parents=True)
    sub.write_text((tmp_path / "teacher" / "05_deconvnet.ipynb").read_text())
    rows = grade([sub], CHAPTERS, timeout=900, progress=False)
    assert [(r.student, r.exercise, r.status) for r in rows] == [("teacher", "my_relu_backward", "passed")], \
        json.dumps([r.__dict__ for r in rows])
