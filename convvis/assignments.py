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

Chapters default to every notebook under ``chapters/`` that has at least one marked region. Each
edition runs from where it is written as long as ``convvis`` is installed and its photos are found
(the editable install, or ``$CONVVIS_DATA``); on Colab its first cell installs the book's release.
Nothing generated belongs in the repository: write OUT outside it (or to an ignored folder).
"""

from __future__ import annotations

import argparse
import copy
import json
import re
from pathlib import Path

__all__ = ["BEGIN", "END", "student_source", "teacher_source", "make_editions", "default_chapters", "main"]

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


def make_editions(chapters: list[Path], out: Path) -> dict[str, int]:
    """Write the student and teacher editions of ``chapters`` under ``out``; returns regions per chapter."""
    counts = {}
    for path in chapters:
        nb = json.loads(Path(path).read_text())
        student, n = _edition(nb, student_source)
        if n == 0:
            continue
        teacher, _ = _edition(nb, teacher_source)
        for name, edition in (("student", student), ("teacher", teacher)):
            target = out / name / Path(path).name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(edition, indent=1, ensure_ascii=False) + "\n")
        counts[Path(path).stem] = n
    return counts


def default_chapters() -> list[Path]:
    """The book's chapter notebooks (``chapters/*.ipynb`` of the source checkout), sorted."""
    root = Path(__file__).resolve().parent.parent / "chapters"
    if not root.is_dir():
        raise FileNotFoundError(f"no chapters folder at {root}: pass the notebooks explicitly")
    return sorted(root.glob("*.ipynb"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m convvis.assignments", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help="folder to write student/ and teacher/ into")
    p.add_argument("chapters", nargs="*", type=Path, help="chapter notebooks (default: all with exercises)")
    args = p.parse_args(argv)
    chapters = args.chapters or default_chapters()
    missing = [str(c) for c in chapters if not c.exists()]
    if missing:
        p.error(f"no such notebook: {', '.join(missing)}")
    counts = make_editions(chapters, args.out)
    if not counts:
        p.error("none of these notebooks has a marked solution region")
    for stem, n in counts.items():
        print(f"{stem}: {n} exercise(s)")
    print(f"student editions in {args.out / 'student'}, teacher editions in {args.out / 'teacher'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
