"""Hygiene of the book's sources: what the build relies on and git must not hold."""

import json
import re
from pathlib import Path

import pytest
import yaml

import convvis

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = sorted((ROOT / "chapters").glob("*.ipynb"))


def toc_files():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc.get("parts", []):
        files += [c["file"] for c in part["chapters"]]
    return files


def test_there_are_chapters():
    assert CHAPTERS, "no chapter notebooks found"


@pytest.mark.parametrize("nb", CHAPTERS, ids=lambda p: p.name)
def test_notebook_is_stored_without_outputs(nb):
    cells = json.loads(nb.read_text())["cells"]
    code = [(i, c) for i, c in enumerate(cells) if c["cell_type"] == "code"]
    dirty = [i for i, c in code if c.get("outputs") or c.get("execution_count")]
    assert not dirty, f"{nb.name}: cells {dirty} have outputs or execution counts; strip them"


@pytest.mark.parametrize("nb", CHAPTERS, ids=lambda p: p.name)
def test_no_paired_markdown(nb):
    assert not nb.with_suffix(".md").exists(), f"{nb.with_suffix('.md').name} would shadow {nb.name}"


def test_toc_and_files_agree():
    listed = toc_files()
    for f in listed:
        exists = any((ROOT / (f + ext)).exists() for ext in ("", ".md", ".ipynb"))
        assert exists, f"_toc.yml lists missing {f}"
    for nb in CHAPTERS:
        assert f"chapters/{nb.stem}" in listed, f"{nb.name} is not in _toc.yml"


@pytest.mark.parametrize("nb", CHAPTERS, ids=lambda p: p.name)
def test_colab_cell_installs_the_pinned_release_from_the_configured_repository(nb):
    repo = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]
    cells = json.loads(nb.read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    first = "".join(code[0]["source"])
    assert '"google.colab" in sys.modules' in first, f"{nb.name}: first code cell is not the Colab install"
    assert "hide-output" in code[0]["metadata"].get("tags", [])
    assert f'"{repo}"' in first, f"{nb.name}: Colab cell does not clone {repo}"
    tag = re.search(r'"--branch", "([^"]+)"', first).group(1)
    assert tag == f"v{convvis.__version__}", f"{nb.name}: pins {tag}, package is {convvis.__version__}"


@pytest.mark.parametrize("nb", CHAPTERS, ids=lambda p: p.name)
def test_chapter_calls_setup_and_has_a_parameter_cell(nb):
    cells = json.loads(nb.read_text())["cells"]
    src = "".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    assert "convvis.setup(" in src
    assert any("parameters" in c["metadata"].get("tags", []) for c in cells), f"{nb.name}: no parameters cell"


def test_pages_workflow_builds_tests_and_publishes_the_book():
    wf = yaml.safe_load((ROOT / ".github" / "workflows" / "book.yml").read_text())
    steps = wf["jobs"]["build"]["steps"]
    runs = " ".join(s.get("run", "") for s in steps)
    assert "pip install -r requirements.txt && jupyter-book build ." in runs  # README command 1
    assert "pytest" in runs and "-W -n" in runs
    upload = next(s for s in steps if s.get("uses", "").startswith("actions/upload-pages-artifact"))
    assert upload["with"]["path"] == "_build/html"
    deploy = wf["jobs"]["deploy"]
    assert deploy["needs"] == "build" and deploy["permissions"] == {"pages": "write", "id-token": "write"}
    assert any(s.get("uses", "").startswith("actions/deploy-pages") for s in deploy["steps"])
    # YAML reads a bare `on:` key as True
    triggers = wf.get("on", wf.get(True))
    assert "main" in triggers["push"]["branches"]
