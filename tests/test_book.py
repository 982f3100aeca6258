"""Hygiene of the book's sources: what the build relies on and git must not hold."""

import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = sorted((ROOT / "chapters").glob("*.ipynb"))
NOTEBOOKS = CHAPTERS + sorted((ROOT / "appendix").glob("*.ipynb"))


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


def first_code_cell(nb):
    return next(c for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code")


@pytest.mark.parametrize("nb", CHAPTERS, ids=lambda p: p.name)
def test_colab_cell_installs_the_branch_the_launch_button_opens_from_the_configured_repository(nb):
    # The launch button opens the notebook from repository.branch; the cell must install the
    # package (and photos) from the same branch, or the notebook and convvis drift apart.
    # tests/test_colab.py runs the cell and checks that the branch exists.
    repo = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]
    cell = first_code_cell(nb)
    first = "".join(cell["source"])
    assert '"google.colab" in sys.modules' in first, f"{nb.name}: first code cell is not the Colab install"
    # Removed from the HTML pages (it does nothing outside Colab, and a reader would scroll past 30
    # lines before the first sentence); it stays first in the notebook, where Colab runs it.
    assert "remove-cell" in cell["metadata"].get("tags", []), f"{nb.name}: the Colab cell shows on the page"
    names = re.search(r'REPO, REF = "([^"]+)", "([^"]+)"', first)
    assert names, f"{nb.name}: the Colab cell does not name REPO and REF"
    assert names.group(1) == repo["url"], f"{nb.name}: Colab cell clones {names.group(1)}, not {repo['url']}"
    assert names.group(2) == repo["branch"], f"{nb.name}: Colab cell installs {names.group(2)}, " \
        f"the launch button opens {repo['branch']}"
    assert first.count("https://") == 1, f"{nb.name}: the address must appear once, in REPO"


def test_colab_cell_is_the_same_in_every_chapter():
    cells = {nb.name: "".join(first_code_cell(nb)["source"]) for nb in CHAPTERS}
    first = cells[CHAPTERS[0].name]
    differ = [name for name, cell in cells.items() if cell != first]
    assert not differ, f"the Colab install cell of {differ} differs from {CHAPTERS[0].name}'s"


# Sphinx/MyST syntax that Colab and Jupyter show as literal text: roles ({doc}`...`, {ref}`...`),
# directives (```{note} or :::{note}), targets "(label)=", substitutions "{{ name }}".
SPHINX_ONLY = re.compile(r"\{[\w:-]+\}`|^\s*(```|:::)\{|^\([\w-]+\)=\s*$|\{\{", re.M)


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_markdown_reads_right_outside_the_book(nb):
    # Links between pages are plain Markdown links to the sibling .ipynb: the build resolves them
    # to pages, Colab and Jupyter follow them as relative links.
    cells = json.loads(nb.read_text())["cells"]
    found = [(i, m.group(0)) for i, c in enumerate(cells) if c["cell_type"] == "markdown"
             for m in SPHINX_ONLY.finditer("".join(c["source"]))]
    assert not found, f"{nb.name}: Sphinx-only syntax renders literally on Colab (cell, text): {found}"
    for i, c in enumerate(cells):
        if c["cell_type"] != "markdown":
            continue
        for target in re.findall(r"\]\(([^)#:]+\.ipynb)(?:#[^)]*)?\)", "".join(c["source"])):
            assert (nb.parent / target).is_file(), f"{nb.name}, cell {i}: link to missing {target}"


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
    checkout = next(s for s in steps if s.get("uses", "").startswith("actions/checkout"))
    assert checkout["with"]["fetch-depth"] == 0, "tests/test_colab.py needs the branch main in CI"
    upload = next(s for s in steps if s.get("uses", "").startswith("actions/upload-pages-artifact"))
    assert upload["with"]["path"] == "_build/html"
    deploy = wf["jobs"]["deploy"]
    assert deploy["needs"] == "build" and deploy["permissions"] == {"pages": "write", "id-token": "write"}
    assert any(s.get("uses", "").startswith("actions/deploy-pages") for s in deploy["steps"])
    # YAML reads a bare `on:` key as True
    triggers = wf.get("on", wf.get(True))
    assert "main" in triggers["push"]["branches"]


def test_static_pages_drop_widget_outputs_and_state():
    """_ext/convvis_docs.py: a display output offering a widget view (a tqdm.auto bar in the build's
    kernel) leaves the page with all its formats, its emptied output box, and the page's widget state."""
    import importlib.util
    from types import SimpleNamespace

    from docutils import nodes
    from docutils.frontend import get_default_settings
    from docutils.parsers.rst import Parser
    from docutils.utils import new_document

    spec = importlib.util.spec_from_file_location("convvis_docs", ROOT / "_ext" / "convvis_docs.py")
    ext = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ext)

    def bundle(*mimes):
        b = nodes.container(nb_element="mime_bundle")
        for m in mimes:
            b += nodes.container("", nodes.Text(m), mime_type=m)
        return b

    doc = new_document("page", get_default_settings(Parser))
    bar_only = nodes.container(nb_element="cell_code_output", classes=["cell_output"])
    bar_only += bundle(ext.WIDGET_VIEW, "text/plain")
    mixed = nodes.container(nb_element="cell_code_output", classes=["cell_output"])
    mixed += [bundle(ext.WIDGET_VIEW, "text/plain"), bundle("text/plain")]
    cell = nodes.container(classes=["cell"])
    cell += [bar_only]
    doc += [cell, mixed]
    js = {"ipywidgets_state": (None, {}), "ipywidgets_0": ("x.js", {}), "other": ("y.js", {})}
    app = SimpleNamespace(env=SimpleNamespace(docname="page", nb_metadata={"page": {"js_files": js}}))

    ext._drop_widgets(app, doc)
    assert not list(doc.findall(ext._is_widget_output))
    assert not cell.children  # the emptied output box goes too
    assert len(mixed.children) == 1 and mixed.children[0].astext() == "text/plain"  # the rest stays
    assert list(js) == ["other"]
