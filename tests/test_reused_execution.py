"""The root conftest.py checks the book build's cached execution of a chapter instead of running nbval
again: it must find the record of exactly the notebook's current code, refuse a stale or missing one,
and see an error output."""

import importlib.util
import os
from pathlib import Path

import nbformat
from jupyter_cache import get_cache

# the repository root's conftest.py (tests/ has a conftest.py of its own)
_spec = importlib.util.spec_from_file_location("book_conftest", Path(__file__).parent.parent / "conftest.py")
conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(conftest)


def _notebook(code: str, outputs=()):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code, outputs=list(outputs))])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def test_the_record_of_the_current_code_is_found_and_an_error_is_seen(tmp_path, monkeypatch):
    cache_dir = tmp_path / "_build" / ".jupyter_cache"
    monkeypatch.setattr(conftest, "CACHE", cache_dir)
    monkeypatch.delenv("CONVVIS_REEXECUTE", raising=False)
    path = tmp_path / "chapter.ipynb"
    nbformat.write(_notebook("1 / 0"), path)
    record, why = conftest.cached_execution(path)
    assert record is None and "no book build" in why

    error = nbformat.v4.new_output("error", ename="ZeroDivisionError", evalue="division by zero",
                                   traceback=[])
    cache = get_cache(cache_dir)
    cache.cache_notebook_file(path, check_validity=False)  # as the build stores an execution
    bundle = cache.get_cache_bundle(cache.list_cache_records()[0].pk)
    bundle.nb.cells[0].outputs = [error]
    assert conftest._errors(bundle.nb) == ["cell 0: ZeroDivisionError: division by zero"]
    assert conftest._errors(_notebook("1 + 1")) == []

    record, found = conftest.cached_execution(path)
    assert record is not None and found is not None
    nbformat.write(_notebook("1 / 0\n# edited"), path)  # another code: no record
    record, why = conftest.cached_execution(path)
    assert record is None and "current code" in why
    monkeypatch.setenv("CONVVIS_REEXECUTE", "1")
    assert conftest.cached_execution(path) == (None, "CONVVIS_REEXECUTE=1")


def test_the_newest_input_moves_with_the_package(tmp_path, monkeypatch):
    (tmp_path / "convvis").mkdir()
    (tmp_path / "convvis" / "a.py").write_text("")
    monkeypatch.setattr(conftest, "ROOT", tmp_path)
    before, _ = conftest._newest_input()
    newer = tmp_path / "convvis" / "b.py"
    newer.write_text("")
    os.utime(newer, (before + 100, before + 100))
    assert conftest._newest_input() == (before + 100, "convvis/b.py")
