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
    assert "has a marked solution region" in capsys.readouterr().err


EXERCISES = ["02_class_models", "03_saliency", "04_graphcut_segmentation", "05_deconvnet"]


@pytest.mark.parametrize("stem", EXERCISES)
def test_student_edition_runs_with_only_the_exercise_stubs_failing(stem, tmp_path):
    """A student runs every cell: the only errors are the stubs' NotImplementedError, each one reached."""
    import nbformat
    from nbclient import NotebookClient

    make_editions([ROOT / "chapters" / f"{stem}.ipynb"], tmp_path)
    nb = nbformat.read(tmp_path / "student" / f"{stem}.ipynb", as_version=4)
    NotebookClient(nb, timeout=900, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    others = [f"{e.ename}: {e.evalue}" for e in errors
              if not (e.ename == "NotImplementedError" and e.evalue.startswith("Exercise:"))]
    assert not others, f"{stem} student edition: errors other than the exercise stubs: {others}"
    assert errors, f"{stem} student edition: no exercise stub was reached"
