"""Otter-Grader: the chapters' exercises as Otter Assign sources, and the round trip a Gradescope
course makes with them, offline: ``otter assign`` for every chapter with exercises, then ``otter run``
(Otter's grading without a container) on the teacher's solution (full marks), the untouched student
notebook (zero) and a solution with one named mistake (that question fails with the checker's
message, the others pass)."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_assignments import ANSWERS, SHOWN, leaks

from convvis.assignments import BEGIN, OTTER_BEGIN, OTTER_END, main, make_otter, otter_source

ROOT = Path(__file__).resolve().parent.parent
EXERCISES = ["02_class_models", "03_saliency", "04_graphcut_segmentation", "05_deconvnet"]
QUESTIONS = {"02_class_models": ["class_model_step"], "03_saliency": ["saliency"],
             "04_graphcut_segmentation": ["seeds", "graph_cut"], "05_deconvnet": ["relu_rule"]}

# stem -> (question, solution text, the same with one named mistake, words of the checker's message)
MISTAKES = {
    "02_class_models": ("class_model_step", "return (x + lr * grad).detach()",
                        "return (x - lr * grad).detach()", "the step goes downhill"),
    "03_saliency": ("saliency", "grad[0].abs().amax(0)", "grad[0].abs().sum(0)",
                    "you summed |w| over the colour channels"),
    "04_graphcut_segmentation": ("seeds", "fg = saliency > np.quantile(saliency, fg_quantile)",
                                 "fg = saliency > fg_quantile",
                                 "you compared the saliency values with the quantile level itself"),
    "05_deconvnet": ("relu_rule", "return grad * (x > 0)", "return grad * (x >= 0)",
                     "the forward gate is 1(x > 0), strictly"),
}
SUBMISSIONS = ("solution", "untouched", "mistake")
# stem -> (a solution line, the same preceded by handing the exercise to convvis's own implementation)
HANDOFF = {"05_deconvnet": ('    if rule == "gradient":', '    from convvis import relu_backward\n\n'
                                                           '    return relu_backward(x, grad, rule)\n'
                                                           '    if rule == "gradient":')}
IMPORTS = {"02_class_models": ["import torch"], "03_saliency": ["import torch"],
           "04_graphcut_segmentation": ["import numpy as np"], "05_deconvnet": []}


def _cells(nb: dict, kind: str | None = None) -> list[str]:
    return ["".join(c["source"]) if isinstance(c["source"], list) else c["source"]
            for c in nb["cells"] if kind in (None, c["cell_type"])]


def test_the_otter_sources():
    """Otter's v1 blocks around each exercise; the tests only call the book's checkers."""
    generic = set()  # the tests with the names of question, checker and function left out
    for stem in EXERCISES:
        chapter = json.loads((ROOT / "chapters" / f"{stem}.ipynb").read_text())
        nb, questions = otter_source(ROOT / "chapters" / f"{stem}.ipynb")
        assert questions == QUESTIONS[stem]
        raw, code = _cells(nb, "raw"), _cells(nb, "code")
        assert raw[0].startswith("# ASSIGNMENT CONFIG\n") and "runs_on" not in raw[0]
        assert code[0] in _cells(chapter, "code") and '"google.colab" in sys.modules' in code[0]
        blocks = [r.split("\n")[0] for r in raw[1:]]
        assert blocks == ["# BEGIN QUESTION", "# BEGIN SOLUTION", "# END SOLUTION", "# BEGIN TESTS",
                          "# END TESTS", "# END QUESTION"] * len(questions)
        assert [re.search(r"name: (\w+)", r).group(1) for r in raw if r.startswith("# BEGIN Q")] == questions
        solutions = [c for c in code if OTTER_BEGIN in c]
        tests = [c for c in code if "def test_" in c]
        assert len(solutions) == len(tests) == len(questions)
        for src in solutions:  # the book's markers, Otter's spelling, same lines otherwise
            assert BEGIN not in src and src.count(OTTER_BEGIN) == src.count(OTTER_END) == 1
            book = src.replace(OTTER_BEGIN, BEGIN).replace(OTTER_END, "### END SOLUTION")
            assert any(book in c for c in _cells(chapter, "code"))
        for question, src in zip(questions, tests):
            assert re.search(rf"checks\.check_{question}\(function\)", src)
            function = re.search(r'env\.get\("(\w+)"\)', src).group(1)
            generic.add(re.sub(r"\btest_\w+|\bcheck_\w+", "X", src).replace(function, "F"))
        # the notebook holds only what the exercises need: the install cell, their imports, themselves
        assert code == [code[0], *IMPORTS[stem], *[c for pair in zip(solutions, tests) for c in pair]]
    assert len(generic) == 1  # one test for all, nothing of its own: the checker does the checking
    nb, _ = otter_source(ROOT / "chapters" / "05_deconvnet.ipynb", colab=True, tests_url="https://x.org/t")
    config = _cells(nb, "raw")[0]
    assert 'runs_on: "colab"' in config and '"url_prefix": "https://x.org/t"' in config


def _otter(*args, cwd: Path) -> str:
    # offline as convvis.grade runs kernels: no proxy in the environment
    env = {k: v for k, v in os.environ.items() if k.lower() not in
           {"http_proxy", "https_proxy", "all_proxy", "ftp_proxy", "no_proxy"}}
    done = subprocess.run([sys.executable, "-m", "otter", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"otter {args[0]} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def _with_mistake(solution: Path, target: Path, old: str, new: str) -> Path:
    nb = json.loads(solution.read_text())
    hits = 0
    for cell in nb["cells"]:
        src = "".join(cell["source"])
        if cell["cell_type"] == "code" and old in src:
            cell["source"], hits = src.replace(old, new, 1), hits + 1
    assert hits == 1, f"{solution}: the solution line {old!r} is not there once"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(nb))
    return target


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """(stem, submission) -> {question: (score, max_score, output)}; also the assign output folders."""
    out = tmp_path_factory.mktemp("course")
    assert make_otter([ROOT / "chapters" / f"{s}.ipynb" for s in EXERCISES], out) == QUESTIONS
    results, seconds = {}, {}
    for stem in EXERCISES:
        t0 = time.monotonic()
        folder = out / "otter" / stem
        _otter("assign", f"{stem}.ipynb", "dist", cwd=folder)
        (autograder,) = (folder / "dist" / "autograder").glob("*.zip")
        solution = folder / "dist" / "autograder" / f"{stem}.ipynb"
        _, old, new, _ = MISTAKES[stem]
        mistake = _with_mistake(solution, folder / "mistake" / f"{stem}.ipynb", old, new)
        untouched = folder / "dist" / "student" / f"{stem}.ipynb"
        submissions = [("solution", solution), ("untouched", untouched), ("mistake", mistake)]
        if stem in HANDOFF:  # the checker's refusal of the library's own answer, through Otter
            handoff = _with_mistake(solution, folder / "handoff" / f"{stem}.ipynb", *HANDOFF[stem])
            submissions.append(("handoff", handoff))
        for kind, nb in submissions:
            res = folder / "results" / kind
            res.mkdir(parents=True)
            _otter("run", "-a", autograder, "-o", res, nb, cwd=folder)
            tests = json.loads((res / "results.json").read_text())["tests"]
            results[stem, kind] = {t["name"]: (t["score"], t["max_score"], t["output"]) for t in tests
                                   if "score" in t}
        seconds[stem] = time.monotonic() - t0
    for (stem, kind), r in results.items():  # the note's table: pytest -s shows it
        got, top = sum(s for s, _, _ in r.values()), sum(m for _, m, _ in r.values())
        print(f"{stem:26s} {kind:10s} {got:g} / {top:g}")
    print("seconds per chapter (assign + 3 runs):", {k: round(v) for k, v in seconds.items()})
    return out, results


@pytest.mark.parametrize("stem", EXERCISES)
def test_otter_grades_solution_untouched_and_mistake(graded, stem):
    _, results = graded
    solution, untouched, mistake = (results[stem, kind] for kind in SUBMISSIONS)
    assert sorted(solution) == sorted(QUESTIONS[stem])
    assert all(score == top == 1 for score, top, _ in solution.values()), solution
    assert all(score == 0 and top == 1 for score, top, _ in untouched.values()), untouched
    question, _, _, message = MISTAKES[stem]
    score, _, output = mistake[question]
    assert score == 0 and "CheckFailed: " in output and message in output, output
    assert all(s == 1 for q, (s, _, _) in mistake.items() if q != question), mistake


def test_otter_refuses_the_library_answer(graded):
    _, results = graded
    for stem in HANDOFF:
        (score, _, output), = results[stem, "handoff"].values()
        assert score == 0 and "convvis's own answer to this exercise" in output, output


@pytest.mark.parametrize("stem", EXERCISES)
def test_otter_student_notebook_does_not_show_the_answers(graded, stem):
    out, _ = graded
    dist = out / "otter" / stem / "dist"
    student = dist / "student" / f"{stem}.ipynb"
    found = leaks(student, dist / "autograder" / f"{stem}.ipynb", ANSWERS[stem], stub=r"(?m)^\s*\.\.\.\s*$")
    assert not found, f"{stem}: the Otter student notebook shows the answer: {found}"
    stubs = [c for c in _cells(json.loads(student.read_text()), "code") if re.search(r"(?m)^\s*\.\.\.$", c)]
    assert len(stubs) == len(QUESTIONS[stem])
    for test in (dist / "student" / "tests").glob("*.py"):  # the public tests the students receive
        text = test.read_text()
        assert not [p for p in (*ANSWERS[stem], SHOWN) if re.search(p, text)], test


def test_the_otter_command_refuses_bad_input(tmp_path, capsys):
    def refused(*argv):
        with pytest.raises(SystemExit):
            main([str(tmp_path / "course"), *argv])
        return capsys.readouterr().err

    chapter0 = str(ROOT / "chapters" / "00_models_and_images.ipynb")
    assert "no exercise" in refused("--format", "otter", chapter0)
    assert "unknown chapter 07_nothing" in refused("--format", "otter", "07_nothing")
    assert "options of --format otter" in refused("--colab")
    assert main([str(tmp_path / "course"), "--format", "otter", "05_deconvnet"]) == 0  # a name works too
    source = tmp_path / "course" / "otter" / "05_deconvnet" / "05_deconvnet.ipynb"
    mine = tmp_path / "course" / "otter" / "05_deconvnet" / "notes.txt"
    source.write_text("the teacher's edits")
    mine.write_text("the teacher's file")
    assert "already there" in refused("--format", "otter", "05_deconvnet", "03_saliency")
    assert source.read_text() == "the teacher's edits"  # nothing written, not even 03_saliency
    assert not (tmp_path / "course" / "otter" / "03_saliency").exists()
    assert main([str(tmp_path / "course"), "--format", "otter", "--colab", "--force", "05_deconvnet"]) == 0
    assert 'runs_on: "colab"' in _cells(json.loads(source.read_text()), "raw")[0]
    assert mine.read_text() == "the teacher's file"
    # the student and teacher editions: the same rule
    assert main([str(tmp_path / "course"), "05_deconvnet"]) == 0
    edition = tmp_path / "course" / "student" / "05_deconvnet.ipynb"
    edition.write_text("the teacher's edits")
    assert "would overwrite" in refused("05_deconvnet")
    assert edition.read_text() == "the teacher's edits"
    assert main([str(tmp_path / "course"), "--force", "05_deconvnet"]) == 0
    assert edition.read_text() != "the teacher's edits"
