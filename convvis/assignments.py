"""Course assignments from the book's own chapters: student and teacher editions.

Solution regions are marked once, in the chapter notebooks, nbgrader-style::

    def my_saliency(model, image, target):
        \"\"\"Docstring: shapes, conventions.\"\"\"
        ### BEGIN SOLUTION
        ...
        ### END SOLUTION

``python -m convvis.assignments OUT [chapters ...]`` writes

* ``OUT/student/<chapter>.ipynb``: every marked region replaced by
  ``raise NotImplementedError("Exercise: ...")`` at the region's indentation (the signature and
  docstring above the markers stay), outputs cleared;
* ``OUT/teacher/<chapter>.ipynb``: the solutions kept, the marker lines removed, outputs cleared.

Chapters are notebooks, or the book's chapters by name (``03_saliency``); they default to every
notebook under ``chapters/`` that has at least one marked region. Each
edition runs from where it is written as long as ``convvis`` is installed and its photos are found
(the editable install, or ``$CONVVIS_DATA``); on Colab its first cell installs the book's release.
Nothing generated belongs in the repository: write OUT outside it (or to an ignored folder).

``python -m convvis.assignments OUT --format otter [chapters ...]`` writes, instead, for courses that
grade with Otter-Grader (Gradescope, Colab), ``OUT/otter/<chapter>/<chapter>.ipynb``: an Otter
Assign source notebook (Otter's "v1" format) holding the chapter's install cell, the imports the
exercises use, and each exercise as a question: the function with its solution region marked
``# BEGIN SOLUTION`` / ``# END SOLUTION``, and one test that runs the book's checker from a freshly
loaded :mod:`convvis.checks` on the student's function (the same checks, named mistakes and
hand-off refusal as in the book; a failing check's message is the test's failure message).
``--colab`` sets ``runs_on: colab``. ``otter assign`` on it writes the student notebook (each region
replaced by Otter's ``...``) and the Gradescope autograder zip. Only the exercises travel: the
chapter's experiments stay in the book, so a submission is graded in seconds.

Existing files are never overwritten without ``--force``: an edition that is already in OUT, or a
chapter's ``OUT/otter/<chapter>`` folder, stops the command before anything is written.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["BEGIN", "END", "OTTER_BEGIN", "OTTER_END", "CHECKER_CALL", "Exercise", "code_cells", "exercises",
           "student_source", "teacher_source", "make_editions", "otter_source", "make_otter",
           "default_chapters", "main"]

#: a checker call in a chapter, ``check_x(my_function)``: how an exercise is found
CHECKER_CALL = re.compile(r"^[ \t]*(check_\w+)\(\s*(\w+)\s*\)", re.M)


@dataclass(frozen=True)
class Exercise:
    """One exercise: the chapter (notebook stem), its checker and the student's function."""

    chapter: str
    checker: str
    function: str

    @property
    def call(self) -> str:
        return f"{self.checker}({self.function})"


def code_cells(nb: dict) -> list[str]:
    """The sources of a notebook's code cells, in order."""
    return ["".join(c["source"]) if isinstance(c["source"], list) else c["source"]
            for c in nb["cells"] if c["cell_type"] == "code"]


def exercises(chapters: list[Path]) -> dict[str, list[Exercise]]:
    """The exercises of each chapter notebook, by its checker calls, in order: stem -> exercises."""
    out = {}
    for path in chapters:
        nb = json.loads(Path(path).read_text())
        found = [Exercise(Path(path).stem, m.group(1), m.group(2))
                 for src in code_cells(nb) for m in CHECKER_CALL.finditer(src)]
        if found:
            out[Path(path).stem] = found
    return out


BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
_DEF = re.compile(r"^\s*(?:async\s+)?def\s+(\w+)\s*\(")


def _regions(lines: list[str]) -> list[tuple[int, int]]:
    """(begin, end) line indices of each marked region; malformed markers raise ValueError."""
    out, start = [], None
    for i, line in enumerate(lines):
        s = line.strip()
        if s == BEGIN:
            if start is not None:
                raise ValueError(f"line {i + 1}: {BEGIN} inside another solution region")
            start = i
        elif s == END:
            if start is None:
                raise ValueError(f"line {i + 1}: {END} without {BEGIN}")
            out.append((start, i))
            start = None
    if start is not None:
        raise ValueError(f"line {start + 1}: {BEGIN} is never closed by {END}")
    return out


def student_source(source: str) -> str:
    """A code cell's source with each solution region replaced by a NotImplementedError stub."""
    lines = source.split("\n")
    regions = _regions(lines)
    for begin, end in reversed(regions):
        indent = lines[begin][: len(lines[begin]) - len(lines[begin].lstrip())]
        name = next((m.group(1) for line in reversed(lines[:begin]) if (m := _DEF.match(line))), None)
        what = f"write the body of {name}()" if name else "write this part"
        lines[begin : end + 1] = [f'{indent}raise NotImplementedError("Exercise: {what}")']
    return "\n".join(lines)


def teacher_source(source: str) -> str:
    """A code cell's source with the marker lines removed and the solutions kept."""
    lines = source.split("\n")
    _regions(lines)  # validate
    return "\n".join(line for line in lines if line.strip() not in (BEGIN, END))


def _edition(nb: dict, transform) -> tuple[dict, int]:
    nb = copy.deepcopy(nb)
    n = 0
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        src = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        n += len(_regions(src.split("\n")))
        new = transform(src)
        cell["source"] = [line + "\n" for line in new.split("\n")[:-1]] + [new.split("\n")[-1]]
        cell["outputs"], cell["execution_count"] = [], None
    return nb, n


def _existing(paths: list[Path]) -> list[str]:
    return [str(t) for t in paths if t.exists()]


def make_editions(chapters: list[Path], out: Path, force: bool = False) -> dict[str, int]:
    """Write the student and teacher editions of ``chapters`` under ``out``; returns regions per chapter.

    Chapters without a marked region are skipped. Raises FileExistsError, before writing anything,
    if an edition to write is already there, unless ``force``.
    """
    editions, counts = [], {}
    for path in chapters:
        nb = json.loads(Path(path).read_text())
        student, n = _edition(nb, student_source)
        if n == 0:
            continue
        teacher, _ = _edition(nb, teacher_source)
        editions += [(out / name / Path(path).name, ed) for name, ed in (("student", student),
                                                                         ("teacher", teacher))]
        counts[Path(path).stem] = n
    there = _existing([target for target, _ in editions])
    if there and not force:
        raise FileExistsError(f"would overwrite {', '.join(there)} (pass --force to replace them)")
    for target, edition in editions:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(edition, indent=1, ensure_ascii=False) + "\n")
    return counts


# ---- Otter-Grader ---------------------------------------------------------------------------------

OTTER_BEGIN = "# BEGIN SOLUTION"
OTTER_END = "# END SOLUTION"
_INSTALL = '"google.colab" in sys.modules'
_REPO = re.compile(r'REPO,\s*REF\s*=\s*"([^"]+)",\s*"([^"]+)"')
_TOP_DEF = re.compile(r"^(?:async\s+)?def\s+(\w+)\s*\(")


def _source(cell: dict) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def _split_defs(source: str) -> list[tuple[str | None, str]]:
    """A cell's source cut before each top-level ``def``: [(function name or None, source)]."""
    lines = source.split("\n")
    starts = [i for i, line in enumerate(lines) if _TOP_DEF.match(line)]
    if not starts or starts[0] != 0:
        starts = [0, *starts]
    chunks = []
    for a, b in zip(starts, [*starts[1:], len(lines)]):
        m = _TOP_DEF.match(lines[a])
        chunks.append((m.group(1) if m else None, "\n".join(lines[a:b]).strip("\n")))
    return chunks


def _imports(cells: list[str]) -> dict[str, str]:
    """Top-level imports of the chapter's code cells: bound name -> one import statement."""
    import ast

    out = {}
    for src in cells:
        try:
            tree = ast.parse(src)
        except SyntaxError:  # IPython magics: such a cell defines nothing the exercises import
            continue
        for node in tree.body:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    out[alias.asname or alias.name.split(".")[0]] = ast.unparse(ast.Import(names=[alias]))
            elif isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    one = ast.ImportFrom(module=node.module, names=[alias], level=node.level)
                    out[alias.asname or alias.name] = ast.unparse(one)
    return out


def _free_names(source: str) -> set[str]:
    """Names ``source`` reads but never binds (builtins left out): what it needs from elsewhere."""
    import ast
    import builtins

    read, bound = set(), set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Name):
            (read if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            bound.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            bound |= {a.asname or a.name.split(".")[0] for a in node.names}
    return read - bound - set(dir(builtins))


def _otter_markers(source: str) -> str:
    """The book's ``### BEGIN/END SOLUTION`` lines as Otter's ``# BEGIN/END SOLUTION``, same indentation."""
    lines = source.split("\n")
    _regions(lines)  # validate
    swap = {BEGIN: OTTER_BEGIN, END: OTTER_END}
    return "\n".join(line[: len(line) - len(line.lstrip())] + swap[line.strip()]
                     if line.strip() in swap else line for line in lines)


# An Otter exception-based test: the book's checker on the student's function. Otter keeps only the
# function (its comments are dropped); the call below it runs the test in the source notebook.
_TEST = """\
def test_{question}(env):
    # the checker from a freshly loaded convvis.checks: what the notebook did to the module is undone.
    # A CheckFailed names the mistake; Otter reports its message as the test's failure.
    import importlib

    function = env.get("{function}")
    if not callable(function):
        raise AssertionError("the notebook defines no function {function}(): keep its name and signature")
    checks = importlib.reload(importlib.import_module("convvis.checks"))
    checks.{checker}(function)


test_{question}(globals())"""


def _cell(kind: str, source: str) -> dict:
    cell = {"cell_type": kind, "metadata": {}, "source": source}
    if kind == "code":
        cell |= {"execution_count": None, "outputs": []}
    return cell


def otter_source(chapter: Path, colab: bool = False, tests_url: str | None = None) -> tuple[dict, list[str]]:
    """The Otter Assign source notebook of one chapter, and its question names (the checkers' names
    without ``check_``). Raises ValueError if the chapter has no exercise, an exercise has no checker
    call in the chapter, an exercise uses a name the chapter defines outside its imports, or the
    chapter has no install cell.
    """
    chapter = Path(chapter)
    nb = json.loads(chapter.read_text())
    cells = nb["cells"]
    code = [_source(c) for c in cells if c["cell_type"] == "code"]
    install = next((s for s in code if _INSTALL in s), None)
    repo = _REPO.search(install or "")
    if repo is None:
        raise ValueError(f"{chapter}: no install cell (the book's first code cell, with REPO, REF = ...)")
    checkers = {ex.function: ex.checker for ex in exercises([chapter]).get(chapter.stem, [])}
    imports = _imports([s for s in code if s is not install])

    questions, needed = [], {}  # needed: the import statements the exercises use, in first-use order
    for k, cell in enumerate(cells):
        src = _source(cell)
        if cell["cell_type"] != "code" or not _regions(src.split("\n")):
            continue
        prompt = []  # the exercise's statement: the markdown right above it, up to its heading
        for above in reversed(cells[:k]):
            if above["cell_type"] != "markdown":
                break
            prompt.insert(0, _source(above))
            if _source(above).lstrip().startswith("#"):
                break
        if prompt and not prompt[0].lstrip().startswith("#"):
            prompt = prompt[-1:]  # no heading: only the paragraph right above
        for function, chunk in _split_defs(src):
            if not _regions(chunk.split("\n")):
                continue
            if function not in checkers:
                raise ValueError(f"{chapter}: the exercise {function or '(outside a function)'} has no "
                                 "checker call in the chapter (check_...(function)): it cannot be graded")
            for name in sorted(_free_names(chunk)):
                if name not in imports:
                    raise ValueError(f"{chapter}: the exercise {function}() uses {name!r}, which the chapter "
                                     "defines outside its imports; an Otter assignment holds only the "
                                     "exercises")
                needed.setdefault(name, imports[name])
            checker = checkers[function]
            questions.append((checker.removeprefix("check_"), checker, function, chunk, prompt))
            prompt = []
    if not questions:
        raise ValueError(f"{chapter}: no exercise (no {BEGIN} region)")

    # Gradescope builds the grading image from these; `otter run` (no container) uses the current
    # environment. CPU wheels of torch: grading needs no GPU, and they are far smaller.
    requirements = ["--extra-index-url https://download.pytorch.org/whl/cpu", "torch", "torchvision",
                    f"convvis @ git+{repo.group(1)}@{repo.group(2)}"]
    tests = {"files": True, "ok_format": False, **({"url_prefix": tests_url} if tests_url else {})}
    config = {"name": chapter.stem, "requirements": requirements, "generate": True, "tests": tests,
              # no manually graded question, so no PDF (and no LaTeX); on Colab Otter cannot export
              "export_cell": False if colab else {"pdf": False}}
    if colab:
        config["runs_on"] = "colab"
    title = next((_source(c).split("\n")[0].lstrip("# ").strip() for c in cells
                  if c["cell_type"] == "markdown"), chapter.stem)
    out = [
        # JSON is YAML: the values need no quoting rules of their own
        _cell("raw", "# ASSIGNMENT CONFIG\n" + "\n".join(f"{k}: {json.dumps(v)}" for k, v in config.items())),
        _cell("markdown", f"# Exercises: {title}\n\nThe exercises of the chapter *{title}* "
                          f"(`{chapter.stem}`) of the book *Deep Inside Convolutional Networks*, which "
                          "explains the methods: read it first. Write each function where its body is left "
                          "out, then run the check cell below it: it runs the book's checker "
                          "(`convvis.checks`), which names the mistake if there is one. The grader runs the "
                          "same checkers."),
        _cell("code", install),
    ]
    if needed:
        out.append(_cell("code", "\n".join(needed.values())))
    for question, checker, function, chunk, prompt in questions:
        out += [_cell("raw", f"# BEGIN QUESTION\nname: {question}\npoints: 1"),
                *(_cell("markdown", md) for md in prompt),
                _cell("markdown", f"**Question `{question}`**: write the body of `{function}()`; "
                                  f"`convvis.checks.{checker}` grades it."),
                _cell("raw", "# BEGIN SOLUTION"), _cell("code", _otter_markers(chunk)),
                _cell("raw", "# END SOLUTION"),
                _cell("raw", "# BEGIN TESTS"),
                _cell("code", _TEST.format(question=question, checker=checker, function=function)),
                _cell("raw", "# END TESTS"), _cell("raw", "# END QUESTION")]
    for i, cell in enumerate(out):
        cell["id"] = f"otter-{i}"  # nbformat 4.5 wants cell ids
    source = {"cells": out, "metadata": copy.deepcopy(nb.get("metadata", {})),
              "nbformat": 4, "nbformat_minor": 5}
    return source, [q for q, *_ in questions]


def make_otter(chapters: list[Path], out: Path, colab: bool = False, tests_url: str | None = None,
               force: bool = False) -> dict[str, list[str]]:
    """Write ``out/otter/<chapter>/<chapter>.ipynb`` for each chapter; returns its question names.

    Every chapter must have exercises (ValueError otherwise). Raises FileExistsError, before writing
    anything, if a chapter's folder is already there, unless ``force`` (which replaces only the
    source notebook, leaving whatever else the folder holds, e.g. ``otter assign``'s output).
    """
    made = {Path(c).stem: otter_source(Path(c), colab, tests_url) for c in chapters}
    there = _existing([out / "otter" / stem for stem in made])
    if there and not force:
        raise FileExistsError(f"would write into {', '.join(there)}, already there "
                              "(pass --force to replace the source notebooks in it)")
    for stem, (nb, _) in made.items():
        target = out / "otter" / stem / f"{stem}.ipynb"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    return {stem: questions for stem, (_, questions) in made.items()}


def default_chapters() -> list[Path]:
    """The book's chapter notebooks (``chapters/*.ipynb`` of the source checkout), sorted."""
    root = Path(__file__).resolve().parent.parent / "chapters"
    if not root.is_dir():
        raise FileNotFoundError(f"no chapters folder at {root}: pass the notebooks explicitly")
    return sorted(root.glob("*.ipynb"))


def _resolve(name: Path) -> Path | None:
    """A chapter argument: a notebook's path, or a chapter's name in the book (``03_saliency``)."""
    if name.is_file():
        return name
    try:
        book = default_chapters()
    except FileNotFoundError:
        return None
    return next((c for c in book if c.stem == name.stem), None)


def _has_exercise(path: Path) -> bool:
    return _edition(json.loads(Path(path).read_text()), student_source)[1] > 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m convvis.assignments", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help="folder to write into (student/ and teacher/, or otter/)")
    p.add_argument("chapters", nargs="*", type=Path,
                   help="chapter notebooks or names, e.g. 03_saliency (default: all with exercises)")
    p.add_argument("--format", choices=("editions", "otter"), default="editions",
                   help="editions: student and teacher notebooks (default); otter: Otter Assign sources")
    p.add_argument("--colab", action="store_true", help="otter: students work on Colab (runs_on: colab)")
    p.add_argument("--tests-url", help="otter: URL prefix where the public tests are published "
                   "(Otter's tests.url_prefix; on Colab the alternative is uploading tests/)")
    p.add_argument("--force", action="store_true", help="replace files that are already in OUT")
    args = p.parse_intermixed_args(argv)  # OUT --format otter CHAPTERS...: options between positionals
    if args.format != "otter" and (args.colab or args.tests_url):
        p.error("--colab and --tests-url are options of --format otter")
    if args.out.exists() and not args.out.is_dir():
        p.error(f"{args.out} is a file, not a folder")
    if args.chapters:
        chapters = [_resolve(c) for c in args.chapters]
        unknown = [str(c) for c, r in zip(args.chapters, chapters) if r is None]
        if unknown:
            p.error(f"unknown chapter {', '.join(unknown)}: no such notebook, nor a chapter of the book")
        without = [str(c) for c in chapters if not _has_exercise(c)]
        if without:
            p.error(f"{', '.join(without)}: no exercise (the notebook has no marked solution region)")
    else:
        chapters = [c for c in default_chapters() if _has_exercise(c)]
        if not chapters:
            p.error("none of the book's chapters has a marked solution region")
    try:
        if args.format == "otter":
            made = make_otter(chapters, args.out, args.colab, args.tests_url, args.force)
        else:
            counts = make_editions(chapters, args.out, args.force)
    except (FileExistsError, ValueError) as e:
        p.error(str(e))
    if args.format == "otter":
        for stem, questions in made.items():
            print(f"{stem}: {len(questions)} question(s) ({', '.join(questions)}): "
                  f"{args.out / 'otter' / stem / (stem + '.ipynb')}")
        print("next, for each: otter assign OUT/otter/<chapter>/<chapter>.ipynb OUT/otter/<chapter>/dist "
              "(the student notebook in dist/student, the Gradescope autograder zip in dist/autograder)")
        return 0
    for stem, n in counts.items():
        print(f"{stem}: {n} exercise(s)")
    print(f"student editions in {args.out / 'student'}, teacher editions in {args.out / 'teacher'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
