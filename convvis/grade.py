"""Grade a class: execute each submitted notebook and run every exercise's checker.

``python -m convvis.grade SUBMISSIONS... --out grades.csv`` takes notebooks (or folders of them),
one per student and chapter: ``alice/03_saliency.ipynb`` or ``alice_03_saliency.ipynb``. For each
it

* finds the chapter by the file name and the chapter's exercises by the checker calls in the
  book's own chapter notebook (``check_saliency(my_saliency)``), so an exercise whose checker cell
  was deleted is still graded, and reported as ``missing``;
* copies it alone into a fresh scratch folder and executes it there, top to bottom, in a sandbox
  (:mod:`convvis.sandbox`: bubblewrap, read-only view of the environment, package and book, no
  network, its own process tree, limits on memory, processes and time; the kernel starts inside),
  under one time limit for the whole notebook;
* then, in that kernel, calls each exercise's function on the checker's inputs, which the grader
  made and handed in as data, and takes back only the outputs, as data (``.npz`` read with
  ``allow_pickle=False``, and JSON);
* compares them, in its own process, with the answers :mod:`convvis.checks` computes, and names
  the mistake with the same :func:`convvis.checks.diagnose` as the in-notebook checkers. Nothing
  the notebook printed, patched or wrote is trusted: it can make its own answer fail, never pass.
  Two things only the kernel sees (the model and inputs left unchanged, convvis's own answer not
  called) are reported as seen there, and can turn a right output into ``failed``, never a wrong
  one into ``passed``;
* writes one CSV row per student and exercise: ``student, chapter, exercise, status, message,
  notebook, sandbox``, and prints a summary table (one line per submission). ``sandbox`` is
  ``bwrap``, or ``none: <why>`` where no sandbox could be made (then the notebook runs as a plain
  child process: still compared only here, but not isolated); ``--require-sandbox`` then refuses.

Status is one of :data:`STATUSES`: ``passed`` (every output right), ``failed`` (the named
mistake), ``error`` (the function raised, e.g. the unanswered stub's ``NotImplementedError``, or
no usable output came back), ``missing`` (the notebook no longer calls that checker; the
grader's own run follows in the message), ``timeout`` or ``unparsable`` (for every exercise of
the notebook). A cell outside the exercises that raises adds a row with exercise ``(notebook)``.
No submission stops the batch.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import os
import re
import signal
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm.auto import tqdm

from . import checks, sandbox
from .assignments import CHECKER_CALL, Exercise, default_chapters, exercises
from .runtime import keep_freed_memory

__all__ = ["STATUSES", "Exercise", "Row", "exercises", "grade", "grade_notebook", "summary", "write_csv",
           "main"]

STATUSES = ("passed", "failed", "error", "missing", "timeout", "unparsable")
_PROXY = {"http_proxy", "https_proxy", "all_proxy", "ftp_proxy", "no_proxy"}
_STARTUP = 120  # seconds the sandbox and kernel may take to start, beyond --timeout
_SYMBOL = {"passed": "ok", "failed": "FAIL", "error": "ERR", "missing": "MISS", "timeout": "TIME",
           "unparsable": "PARSE"}


@dataclass
class Row:
    student: str
    chapter: str
    exercise: str
    status: str
    message: str
    notebook: str
    sandbox: str = ""


def _identify(path: Path, book: dict[str, list[Exercise]]) -> tuple[str, str | None]:
    """(student, chapter stem or None) from a submission's path."""
    stems = [s for s in book if s in path.stem]
    stem = max(stems, key=len) if stems else None
    if stem is None:
        return path.stem, None
    rest = path.stem.replace(stem, "").strip(" _-.")
    return rest or path.parent.name, stem


def _harness_cell(ex: Exercise, folder: Path) -> str:
    # run in the student's kernel after their notebook: it only produces data (see convvis.sandbox)
    return (f"import convvis.sandbox as _convvis_sandbox\n"
            f"_convvis_sandbox.answer({ex.checker!r}, {ex.function!r}, globals(), {str(folder)!r})\n")


def _kernel_env() -> dict[str, str]:
    """This process's environment without proxies: the kernel works offline."""
    return {k: v for k, v in os.environ.items() if k.lower() not in _PROXY}


def _one_line(text: str, limit: int = 500) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


@functools.cache
def _answers(exercise: str) -> tuple:
    """The fixture of ``exercise`` and each case's reference, computed once, in this process."""
    fix = checks.fixture(exercise)
    model = checks.fixture_model(fix)
    return fix, [checks.reference(fix, case, model) for case in fix.cases]


def verdict(ex: Exercise, outputs: dict) -> tuple[str, str]:
    """(status, message) for what came back from the kernel (:func:`convvis.sandbox.read_outputs`).

    The outputs are compared here; what the kernel says it saw can only fail a right output.
    """
    exercise = checks.EXERCISES[ex.checker]
    fix, refs = _answers(exercise)
    if outputs["error"]:
        return "error", f"the exercise could not be run in the kernel: {outputs['error']}"
    for i, (case, ref) in enumerate(zip(fix.cases, refs)):
        if i >= len(outputs["cases"]):
            return "error", f"the kernel returned outputs for {i} of {len(fix.cases)} checks"
        got = outputs["cases"][i]
        seen = got["seen"]
        if got["error"] is not None:
            if seen:  # convvis's own answer was entered, then something raised
                return "failed", f"{seen[0]} (seen in the kernel; the function then raised {got['error']})"
            return "error", got["error"]
        try:
            message = checks.diagnose(exercise, case, ref, got["output"])
        except Exception as e:  # an output the diagnosis did not foresee: never a pass
            return "error", f"the output could not be compared: {type(e).__name__}: {e}"
        if message is not None:
            return "failed", message + (f" (also seen in the kernel: {seen[0]})" if seen else "")
        if seen:
            return "failed", f"{seen[0]} (seen in the kernel; the output itself is right)"
    return "passed", (f"\N{CHECK MARK} {ex.checker}: all {len(fix.cases)} checks passed (outputs compared "
                      "by the grader)")


def _read_run(scratch: Path) -> dict:
    """The runner's run.json (written inside the sandbox, so only trusted to speak for this notebook)."""
    try:
        path = scratch / "run.json"
        if path.is_symlink() or path.stat().st_size > 1 << 20:
            return {}
        run = json.loads(path.read_text())
        return run if isinstance(run, dict) else {}
    except Exception:  # unreadable, not JSON, nested past the recursion limit: no result
        return {}


def grade_notebook(path: Path, book: dict[str, list[Exercise]], timeout: float = 600,
                   kernel_name: str = "python3", hidden: list[Path] = (),
                   require_sandbox: bool = False) -> list[Row]:
    """Grade one submission (see the module docstring); never raises for a bad notebook.

    ``hidden``: folders and files the sandbox must not show (the other submissions, the CSV).
    """
    import nbformat

    path = Path(path)
    student, stem = _identify(path, book)
    ok, why = sandbox.available()
    if require_sandbox and not ok:
        raise RuntimeError(f"no sandbox: {why}")
    tag = "bwrap" if ok else f"none: {why}"
    try:
        nb = nbformat.read(path, as_version=4)
        nb.cells  # noqa: B018 - a JSON file that is not a notebook fails here
    except Exception as e:  # any reason a file is not a notebook
        why = _one_line(f"the notebook does not parse: {type(e).__name__}: {e}", 300)
        return [Row(student, stem or "", ex.function, "unparsable", why, str(path), tag)
                for ex in book.get(stem, [])] or [Row(student, "", "", "unparsable", why, str(path), tag)]
    sources = [c.source for c in nb.cells if c.cell_type == "code"]
    if stem is None:  # chapter not in the name: the chapters whose checkers the notebook calls
        calls = {m.group(1) for src in sources for m in CHECKER_CALL.finditer(src)}
        todo = [ex for exs in book.values() for ex in exs if ex.checker in calls]
        stem = todo[0].chapter if todo else ""
    else:
        todo = book[stem]
    unknown = [ex for ex in todo if ex.checker not in checks.EXERCISES]
    todo = [ex for ex in todo if ex.checker in checks.EXERCISES]
    # a chapter that calls a checker this version of convvis.checks does not have
    unknown = [Row(student, stem, ex.function, "error", f"the grader has no checker {ex.checker}", str(path),
                   tag) for ex in unknown]
    if unknown and not todo:
        return unknown
    if not todo:
        return [Row(student, "", "", "missing", "no exercise of the book found in this notebook", str(path),
                    tag)]

    n_own = len(nb.cells)
    with tempfile.TemporaryDirectory(prefix="convvis-grade-", ignore_cleanup_errors=True) as tmp:
        folder = Path(tmp).resolve()
        scratch = folder / "scratch"
        (folder / "in").mkdir()
        scratch.mkdir()
        for ex in todo:
            sandbox.write_fixture(_answers(checks.EXERCISES[ex.checker])[0], folder / "in")
            nb.cells.append(nbformat.v4.new_code_cell(_harness_cell(ex, folder)))
        nbformat.write(nb, scratch / "notebook.ipynb")
        for f in [folder, folder / "in", *(folder / "in").iterdir()]:
            os.chmod(f, 0o755 if f.is_dir() else 0o644)  # readable to the sandbox's user, whatever the umask
        if ok and os.geteuid() == 0:  # the sandbox runs as nobody (see convvis.sandbox)
            for f in (scratch, scratch / "notebook.ipynb"):
                os.chown(f, 65534, 65534)
        stopped = _execute(folder, timeout, hidden, ok, kernel_name)
        run = _read_run(scratch)
        if stopped is None and isinstance(run.get("stopped"), list) and len(run["stopped"]) == 2:
            status = run["stopped"][0] if run["stopped"][0] in ("timeout", "error") else "error"
            stopped = status, _one_line(run["stopped"][1], 300)
        if stopped is None and "stopped" not in run:
            with open(folder / "sandbox.log", "rb") as f:  # its tail only: the sandbox wrote it
                f.seek(max(0, f.seek(0, os.SEEK_END) - 2000))
                log = f.read().decode(errors="replace").strip().splitlines()
            stopped = "error", ("the notebook runner ended without a result (killed, or out of memory?)"
                                + (f": {_one_line(log[-1], 300)}" if log else ""))
        running = run.get("running")
        if stopped:
            where = f" (in cell {running + 1})" if isinstance(running, int) and 0 <= running < n_own else ""
            return [Row(student, stem, ex.function, stopped[0], stopped[1] + where, str(path), tag)
                    for ex in todo] + unknown
        results = {}
        for ex in todo:
            exercise = checks.EXERCISES[ex.checker]
            try:
                outputs = sandbox.read_outputs(scratch, exercise, len(_answers(exercise)[0].cases))
                results[ex] = verdict(ex, outputs)
            except sandbox.BadOutput as e:
                results[ex] = "error", f"no usable output came back from the kernel: {e}"

    rows = []
    exercise_cell = re.compile("|".join(rf"\b{re.escape(ex.checker)}\(|def {re.escape(ex.function)}\("
                                        for ex in todo))
    errors = run.get("errors") if isinstance(run.get("errors"), list) else []
    for e in errors:
        if (isinstance(e, list) and len(e) == 3 and isinstance(e[0], int) and 0 <= e[0] < n_own
                and nb.cells[e[0]].cell_type == "code" and not exercise_cell.search(nb.cells[e[0]].source)):
            rows.append(Row(student, stem, "(notebook)", "error",
                            _one_line(f"cell {e[0] + 1}, outside the exercises, raised {e[1]}: {e[2]}"),
                            str(path), tag))
            break
    for ex in todo:
        status, message = results[ex]
        if status == "error" and message.startswith("NotImplementedError: Exercise:"):
            message = "not answered: " + message
        if not any(re.search(rf"\b{re.escape(ex.checker)}\(\s*{re.escape(ex.function)}\s*\)", s)
                   for s in sources):
            status, message = "missing", (f"the notebook no longer calls {ex.call} (checker cell deleted?); "
                                          f"the grader's own run: {message}")
        rows.append(Row(student, stem, ex.function, status, _one_line(message), str(path), tag))
    return rows + unknown


def _execute(folder: Path, timeout: float, hidden, sandboxed: bool,
             kernel_name: str) -> tuple[str, str] | None:
    """Run the notebook in ``folder/scratch``; (status, message) if the grader had to stop it."""
    scratch = folder / "scratch"
    if sandboxed:
        cmd, env = sandbox.command(folder, timeout, hidden, kernel_name), None
    else:  # a plain child process with the same limits: not isolated, see the README
        cmd = sandbox.runner_command(scratch / "notebook.ipynb", timeout, kernel_name)
        env = {**_kernel_env(), "HOME": str(scratch)}
    with open(folder / "sandbox.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, cwd=scratch,
                                start_new_session=True)
        try:
            proc.wait(timeout=timeout + _STARTUP)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # bwrap's --die-with-parent takes its whole tree along
            proc.wait()
            return "timeout", f"the notebook ran past the {timeout:g} s time limit (stopped by the grader)"
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # whatever the notebook left behind
            except ProcessLookupError:
                pass
    return None


def _submissions(paths: list[Path]) -> list[Path]:
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(q for q in p.rglob("*.ipynb") if ".ipynb_checkpoints" not in q.parts)
        else:
            out.append(p)
    return out


def grade(submissions: list[Path], chapters: list[Path] | None = None, timeout: float = 600,
          progress: bool = True, hidden: list[Path] = (), require_sandbox: bool = False) -> list[Row]:
    """Grade every submission (notebooks or folders of them); one :class:`Row` per student and exercise.

    Every submission path (and ``hidden``) is kept out of every sandbox.
    """
    ok, why = sandbox.available()
    if require_sandbox and not ok:
        raise RuntimeError(f"no sandbox: {why}")
    book = exercises(chapters or default_chapters())
    paths = _submissions(submissions)
    hide = [*map(Path, submissions), *{p.parent for p in paths}, *paths, *hidden]
    rows = []
    for path in tqdm(paths, desc="grading", unit="notebook", disable=not progress):
        rows += grade_notebook(path, book, timeout, hidden=hide, require_sandbox=require_sandbox)
    return rows


def _cell(value: str) -> str:
    # a message can carry text from the student's code (an exception's name and words): a cell a
    # spreadsheet would read as a formula gets a leading quote
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def write_csv(rows: list[Row], out: Path) -> None:
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(Row.__dataclass_fields__))
        w.writeheader()
        w.writerows({k: _cell(str(v)) for k, v in asdict(r).items()} for r in rows)


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
    p.add_argument("--require-sandbox", action="store_true", help="refuse to grade where no sandbox can be "
                   "made (macOS, Windows, no bubblewrap or no user namespaces)")
    args = p.parse_args(argv)
    missing = [str(s) for s in args.submissions if not s.exists()]
    if missing:
        p.error(f"no such file or folder: {', '.join(missing)}")
    if not _submissions(args.submissions):
        p.error("no notebooks to grade")
    keep_freed_memory()  # this process; each kernel gets it from the notebook's convvis.setup() (issue #24)
    ok, why = sandbox.available()
    if args.require_sandbox and not ok:
        p.error(f"--require-sandbox: no sandbox can be made here: {why}")
    rows = grade(args.submissions, args.chapters, args.timeout, hidden=[args.out],
                 require_sandbox=args.require_sandbox)
    write_csv(rows, args.out)
    print(summary(rows))
    print("sandbox: bubblewrap, one per notebook" if ok else
          f"NO SANDBOX ({why}): the notebooks ran as plain child processes of this user; their outputs "
          "were still compared only here, but nothing kept them from reading or writing this user's files")
    print(f"{len(rows)} rows written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
