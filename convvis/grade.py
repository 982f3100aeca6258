"""Grade a class: execute each submitted notebook and run every exercise's checker.

``python -m convvis.grade SUBMISSIONS... --out grades.csv`` takes notebooks (or folders of them),
one per student and chapter: ``alice/03_saliency.ipynb`` or ``alice_03_saliency.ipynb``. For each
it

* finds the chapter by the file name and the chapter's exercises by the checker calls in the
  book's own chapter notebook (``check_saliency(my_saliency)``), so an exercise whose checker cell
  was deleted is still graded, and reported as ``missing``;
* executes the notebook top to bottom in a fresh kernel, in an empty working folder, with no proxy
  in the kernel's environment, under one time limit for the whole notebook;
* then runs, in that kernel, each exercise's checker from a freshly loaded :mod:`convvis.checks`
  on the student's function (what the notebook's own checker cell printed is not trusted);
* writes one CSV row per student and exercise: ``student, chapter, exercise, status, message,
  notebook``, and prints a summary table (one line per submission).

Status is one of :data:`STATUSES`: ``passed`` (the checker's line), ``failed`` (the checker's
:class:`~convvis.checks.CheckFailed` message), ``error`` (any other exception, e.g. the unanswered
stub's ``NotImplementedError``), ``missing`` (the notebook no longer calls that checker; the
grader's own run follows in the message), ``timeout`` or ``unparsable`` (for every exercise of
the notebook). A cell outside the exercises that raises adds a row with exercise ``(notebook)``.
No submission stops the batch.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm.auto import tqdm

from .assignments import default_chapters

__all__ = ["STATUSES", "Exercise", "Row", "exercises", "grade", "grade_notebook", "summary", "write_csv",
           "main"]

STATUSES = ("passed", "failed", "error", "missing", "timeout", "unparsable")
_CALL = re.compile(r"^[ \t]*(check_\w+)\(\s*(\w+)\s*\)", re.M)
_MARK = "@@convvis.grade@@"
_PROXY = {"http_proxy", "https_proxy", "all_proxy", "ftp_proxy", "no_proxy"}
_SYMBOL = {"passed": "ok", "failed": "FAIL", "error": "ERR", "missing": "MISS", "timeout": "TIME",
           "unparsable": "PARSE"}


@dataclass(frozen=True)
class Exercise:
    """One exercise: the chapter (notebook stem), its checker and the student's function."""

    chapter: str
    checker: str
    function: str

    @property
    def call(self) -> str:
        return f"{self.checker}({self.function})"


@dataclass
class Row:
    student: str
    chapter: str
    exercise: str
    status: str
    message: str
    notebook: str


def _code_cells(nb: dict) -> list[str]:
    return ["".join(c["source"]) if isinstance(c["source"], list) else c["source"]
            for c in nb["cells"] if c["cell_type"] == "code"]


def exercises(chapters: list[Path]) -> dict[str, list[Exercise]]:
    """The exercises of each chapter notebook, by its checker calls, in order: stem -> exercises."""
    out = {}
    for path in chapters:
        nb = json.loads(Path(path).read_text())
        found = [Exercise(Path(path).stem, m.group(1), m.group(2))
                 for src in _code_cells(nb) for m in _CALL.finditer(src)]
        if found:
            out[Path(path).stem] = found
    return out


def _identify(path: Path, book: dict[str, list[Exercise]]) -> tuple[str, str | None]:
    """(student, chapter stem or None) from a submission's path."""
    stems = [s for s in book if s in path.stem]
    stem = max(stems, key=len) if stems else None
    if stem is None:
        return path.stem, None
    rest = path.stem.replace(stem, "").strip(" _-.")
    return rest or path.parent.name, stem


def _grader_cell(ex: Exercise) -> str:
    # run in the student's kernel after their notebook; a reloaded convvis.checks undoes any patching
    return f"""\
import contextlib as _grade_cl, importlib as _grade_il, io as _grade_io, json as _grade_js
_grade_out = _grade_io.StringIO()
try:
    _grade_checks = _grade_il.reload(_grade_il.import_module("convvis.checks"))
    with _grade_cl.redirect_stdout(_grade_out):
        _grade_checks.{ex.checker}({ex.function})
    _grade_r = ["passed", (_grade_out.getvalue().strip().splitlines() or [""])[-1]]
except Exception as _grade_e:
    _grade_r = ["failed" if type(_grade_e).__name__ == "CheckFailed" else "error",
                str(_grade_e) if type(_grade_e).__name__ == "CheckFailed"
                else f"{{type(_grade_e).__name__}}: {{_grade_e}}"]
print({_MARK!r} + _grade_js.dumps(_grade_r))
"""


def _kernel_env() -> dict[str, str]:
    """This process's environment without proxies: the kernel works offline."""
    return {k: v for k, v in os.environ.items() if k.lower() not in _PROXY}


def _one_line(text: str, limit: int = 500) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def grade_notebook(path: Path, book: dict[str, list[Exercise]], timeout: float = 600,
                   kernel_name: str = "python3") -> list[Row]:
    """Grade one submission (see the module docstring); never raises for a bad notebook."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    path = Path(path)
    student, stem = _identify(path, book)
    try:
        nb = nbformat.read(path, as_version=4)
        nb.cells  # noqa: B018 - a JSON file that is not a notebook fails here
    except Exception as e:  # any reason a file is not a notebook
        why = _one_line(f"the notebook does not parse: {type(e).__name__}: {e}", 300)
        return [Row(student, stem or "", ex.function, "unparsable", why, str(path))
                for ex in book.get(stem, [])] or [Row(student, "", "", "unparsable", why, str(path))]
    sources = [c.source for c in nb.cells if c.cell_type == "code"]
    if stem is None:  # chapter not in the name: the chapters whose checkers the notebook calls
        calls = {m.group(1) for src in sources for m in _CALL.finditer(src)}
        todo = [ex for exs in book.values() for ex in exs if ex.checker in calls]
        stem = todo[0].chapter if todo else ""
    else:
        todo = book[stem]
    if not todo:
        return [Row(student, "", "", "missing", "no exercise of the book found in this notebook", str(path))]

    n_own = len(nb.cells)
    for ex in todo:
        nb.cells.append(nbformat.v4.new_code_cell(_grader_cell(ex)))
    deadline = time.monotonic() + timeout
    with tempfile.TemporaryDirectory(prefix="convvis-grade-") as work:
        client = NotebookClient(
            nb, kernel_name=kernel_name, allow_errors=True, startup_timeout=120,
            timeout_func=lambda cell: max(1, int(deadline - time.monotonic())),
            shutdown_kernel="immediate", resources={"metadata": {"path": work}})
        stopped = None
        try:
            client.execute(env=_kernel_env())
        except CellTimeoutError:
            stopped = "timeout", f"the notebook ran past the {timeout:g} s time limit"
        except DeadKernelError as e:
            stopped = "error", _one_line(f"the kernel died: {e}", 300)
        except Exception as e:
            stopped = "error", _one_line(f"the notebook could not be run: {type(e).__name__}: {e}", 300)
    if stopped:
        running = max((i for i, c in enumerate(nb.cells) if c.cell_type == "code"
                       and c.get("execution_count") is not None), default=None)  # the last one started
        where = f" (in cell {running + 1})" if running is not None and running < n_own else ""
        return [Row(student, stem, ex.function, stopped[0], stopped[1] + where, str(path)) for ex in todo]

    rows = []
    exercise_cell = re.compile("|".join(rf"\b{re.escape(ex.checker)}\(|def {re.escape(ex.function)}\("
                                        for ex in todo))
    for i, cell in enumerate(nb.cells[:n_own]):
        errors = [o for o in cell.get("outputs", []) if o.output_type == "error"]
        if errors and cell.cell_type == "code" and not exercise_cell.search(cell.source):
            e = errors[0]
            rows.append(Row(student, stem, "(notebook)", "error",
                            _one_line(f"cell {i + 1}, outside the exercises, raised {e.ename}: {e.evalue}"),
                            str(path)))
            break
    for ex, cell in zip(todo, nb.cells[n_own:]):
        text = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
        marked = [line for line in text.splitlines() if line.startswith(_MARK)]
        if marked:
            status, message = json.loads(marked[-1][len(_MARK):])
        else:
            errors = [f"{o.ename}: {o.evalue}" for o in cell.outputs if o.output_type == "error"]
            status, message = "error", f"the checker could not be run: {errors[:1] or 'no result'}"
        if status == "error" and message.startswith("NotImplementedError: Exercise:"):
            message = "not answered: " + message
        if not any(re.search(rf"\b{re.escape(ex.checker)}\(\s*{re.escape(ex.function)}\s*\)", s)
                   for s in sources):
            status, message = "missing", (f"the notebook no longer calls {ex.call} (checker cell deleted?); "
                                          f"the grader's own run: {message}")
        rows.append(Row(student, stem, ex.function, status, _one_line(message), str(path)))
    return rows


def _submissions(paths: list[Path]) -> list[Path]:
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(q for q in p.rglob("*.ipynb") if ".ipynb_checkpoints" not in q.parts)
        else:
            out.append(p)
    return out


def grade(submissions: list[Path], chapters: list[Path] | None = None, timeout: float = 600,
          progress: bool = True) -> list[Row]:
    """Grade every submission (notebooks or folders of them); one :class:`Row` per student and exercise."""
    book = exercises(chapters or default_chapters())
    rows = []
    for path in tqdm(_submissions(submissions), desc="grading", unit="notebook", disable=not progress):
        rows += grade_notebook(path, book, timeout)
    return rows


def write_csv(rows: list[Row], out: Path) -> None:
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(Row.__dataclass_fields__))
        w.writeheader()
        w.writerows(asdict(r) for r in rows)


def summary(rows: list[Row]) -> str:
    """A plain-text table: one line per submission, one column per exercise, and the counts."""
    columns = list(dict.fromkeys(r.exercise for r in rows if r.exercise and r.exercise != "(notebook)"))
    subs = list(dict.fromkeys((r.student, r.notebook) for r in rows))
    width = {c: max(len(c), 5) for c in columns}
    who = max([len("student")] + [len(s) for s, _ in subs])
    lines = ["  ".join(["student".ljust(who), *(c.ljust(width[c]) for c in columns), "notebook"])]
    for student, notebook in subs:
        mine = {r.exercise: r.status for r in rows if (r.student, r.notebook) == (student, notebook)}
        cells = [_SYMBOL.get(mine.get(c, ""), "").ljust(width[c]) for c in columns]
        note = f"{notebook}" + ("  (a cell outside the exercises raised)" if "(notebook)" in mine else "")
        lines.append("  ".join([student.ljust(who), *cells, note]))
    counts = {s: sum(r.status == s for r in rows if r.exercise != "(notebook)") for s in STATUSES}
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items() if n) or "nothing graded")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m convvis.grade", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("submissions", nargs="+", type=Path, help="submitted notebooks, or folders of them")
    p.add_argument("--out", type=Path, default=Path("grades.csv"), help="CSV to write (default grades.csv)")
    p.add_argument("--timeout", type=float, default=600, help="seconds per notebook (default 600)")
    p.add_argument("--chapters", nargs="+", type=Path, help="the book's chapter notebooks (default: the "
                   "chapters/ folder next to the package)")
    args = p.parse_args(argv)
    missing = [str(s) for s in args.submissions if not s.exists()]
    if missing:
        p.error(f"no such file or folder: {', '.join(missing)}")
    if not _submissions(args.submissions):
        p.error("no notebooks to grade")
    rows = grade(args.submissions, args.chapters, args.timeout)
    write_csv(rows, args.out)
    print(summary(rows))
    print(f"{len(rows)} rows written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
