"""A chapter that the book build has just executed is not executed a second time by the tests.

README command 1 (``jupyter-book build .``) executes every chapter and keeps each execution that
raised no error in ``_build/.jupyter_cache`` (jupyter-cache, through myst-nb; an execution that
raised is not kept). README command 2 (``pytest``) would execute every chapter again with nbval:
on a 2-core CPU that is the same 7 minutes again. So, for each chapter and the appendix, when

- the cache holds an execution of exactly this notebook's code (jupyter-cache's own hash of the code
  cells and the kernel),
- made after the last change to anything the execution reads (the package, the photos, the saved
  benchmark reports, ``pyproject.toml``, ``requirements.txt``, the installed packages), and
- with no error output in any cell,

the test checks that execution instead of running nbval. In every other case (no build, an edited
code cell, a changed package, ``CONVVIS_REEXECUTE=1``) nbval executes the notebook as before. The
check is one test item per notebook, ``<notebook>::executed by the book build``, which fails if a
cell of that execution holds an error; a stale record is never used (decided when the tests are
collected, before any test can touch a file), so a passing run still means each chapter ran top to
bottom on the current code. The unit tests, the second configuration (``tests/test_configurations.py``) and
the students' editions always execute.
"""

from __future__ import annotations

import json
import os
import sysconfig
from datetime import timezone
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent
CACHE = ROOT / "_build" / ".jupyter_cache"
# what a chapter's execution reads besides its own code cells (which the cache's hash covers)
INPUTS = ["convvis", "data", "benchmarks", "pyproject.toml", "requirements.txt"]
REUSED_NAME = "executed by the book build"


def _newest_input() -> tuple[float, str]:
    """(mtime, path) of the most recently changed file the chapters' execution depends on; the
    installed packages count through their folder's mtime (an install or removal changes it)."""
    newest = (os.stat(sysconfig.get_paths()["purelib"]).st_mtime, "the installed packages")
    for name in INPUTS:
        path = ROOT / name
        files = [path] if path.is_file() else (p for p in path.rglob("*") if p.is_file()
                                                 and "__pycache__" not in p.parts)
        for f in files:
            newest = max(newest, (f.stat().st_mtime, str(f.relative_to(ROOT))))
    return newest


def cached_execution(notebook: Path):
    """The book build's cached execution of ``notebook``, or (None, why not)."""
    if os.environ.get("CONVVIS_REEXECUTE") == "1":
        return None, "CONVVIS_REEXECUTE=1"
    if not CACHE.is_dir():
        return None, f"no book build ({CACHE} is missing)"
    try:
        import nbformat
        from jupyter_cache import get_cache
    except ImportError as err:
        return None, f"cannot read the build's cache: {err}"
    cache = get_cache(CACHE)
    try:
        record = cache.match_cache_notebook(nbformat.read(notebook, as_version=4))
    except KeyError:
        return None, "the build's cache holds no execution of this notebook's current code"
    return record, cache


def _made(record) -> float:
    """The record's creation time as a timestamp (jupyter-cache stores UTC)."""
    return record.created.replace(tzinfo=record.created.tzinfo or timezone.utc).timestamp()


def _errors(nb) -> list[str]:
    return [f"cell {i}: {o.get('ename')}: {o.get('evalue')}" for i, c in enumerate(nb.cells)
            if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]


class ReusedExecution(pytest.Item):
    """The build's cached execution of a notebook, current when the tests started (decided at
    collection, before any test can touch a file): passes when no cell of it holds an error."""

    def __init__(self, *, record, cache, newest, **kwargs):
        super().__init__(**kwargs)
        self.record, self.cache, self.newest = record, cache, newest

    def runtest(self):
        # freshness was decided at collection (a stale record gets nbval instead); what is left to
        # check is what the execution printed
        nb = self.cache.get_cache_bundle(self.record.pk).nb
        errors = _errors(nb)
        assert not errors, f"{self.path.name}: the build's execution has errors: {errors}"
        seconds = (self.record.data or {}).get("execution_seconds")
        newest, what = self.newest
        self.user_properties.append(("executed_by_the_build", json.dumps(
            {"record": self.record.pk, "created": str(self.record.created), "seconds": seconds,
             "newer_than": what})))

    def reportinfo(self):
        return self.path, None, f"{self.path.name}::{REUSED_NAME}"


class ReusedNotebook(pytest.File):
    def __init__(self, *, record, cache, newest, **kwargs):
        super().__init__(**kwargs)
        self.record, self.cache, self.newest = record, cache, newest

    def collect(self):
        yield ReusedExecution.from_parent(self, name=REUSED_NAME, record=self.record, cache=self.cache,
                                          newest=self.newest)


@pytest.hookimpl(wrapper=True)
def pytest_collect_file(file_path: Path, parent):
    collectors = yield
    if file_path.suffix != ".ipynb" or file_path.parent.name not in ("chapters", "appendix"):
        return collectors
    record, cache = cached_execution(file_path)
    if record is None:
        return collectors
    newest = _newest_input()
    if _made(record) <= newest[0]:  # stale: nbval executes it
        return collectors
    # the build executed exactly this code after the last change to its inputs: check that instead
    return [ReusedNotebook.from_parent(parent, path=file_path, record=record, cache=cache, newest=newest)]
