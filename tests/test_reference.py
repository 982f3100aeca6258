"""The API reference page (appendix/reference.md) documents every public name."""

import re
from pathlib import Path

import pytest

import convvis

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "appendix" / "reference.md"
HTML = ROOT / "_build" / "html" / "appendix" / "reference.html"


def test_every_public_name_has_an_entry():
    entry = re.compile(r"^\.\. (?:autofunction|autoclass|py:data):: convvis\.(\w+)$", re.M)
    listed = set(entry.findall(PAGE.read_text()))
    missing = [n for n in convvis.__all__ if n not in listed]
    assert not missing, f"public names missing from {PAGE.name}: {missing}"
    stale = sorted(listed - set(convvis.__all__))
    assert not stale, f"{PAGE.name} documents names that are not public: {stale}"


def test_the_built_page_renders_every_entry():
    """After the book is built (README command 1), every name has its anchor and a docstring."""
    if not HTML.exists():
        pytest.skip("the book is not built; run `jupyter-book build .` first")
    html = HTML.read_text()
    ids = set(re.findall(r'id="(convvis\.[\w.]+)"', html))
    missing = [n for n in convvis.__all__ if f"convvis.{n}" not in ids]
    assert not missing, f"not rendered: {missing}"
    # docstrings parsed as reStructuredText, not shown as literal blocks of Markdown
    assert "<pre><span></span>  The bare" not in html
    assert 'class="field-list' in html  # napoleon turned Parameters sections into fields


def _data_entries():
    """name -> the text of each `py:data` entry of the page (the page's sentences about a constant)."""
    text = PAGE.read_text()
    found = re.findall(r"^\.\. py:data:: convvis\.(\w+)\n(.*?)(?=^\.\. |^```)", text, re.M | re.S)
    return {name: " ".join(body.split()) for name, body in found}


def test_the_values_the_page_quotes_are_the_package_values():
    # the page writes each constant's value out; a changed constant must not leave it stale
    import ast

    entries = _data_entries()
    for name in ("EMBEDDED_MODELS", "PAPER_LAMBDA", "LEGIBILITY_JUDGES", "RULES"):
        quoted = re.search(r": ``([^`]+)``", entries[name]).group(1)
        assert ast.literal_eval(quoted) == getattr(convvis, name), (name, quoted)
    for name in ("REDUCTIONS", "PROTOCOLS"):  # every option named, and only those, in the package's order
        named = re.findall(r'``"(\w+)"``', entries[name])
        assert named == list(getattr(convvis, name)), (name, named)
    # "rise": "probability, 224 pixels per step, zero substrate for deletion, blurred image for insertion";
    # "constant": "10 equal steps, zero substrate both ways"
    rise, constant = convvis.PROTOCOLS["rise"], convvis.PROTOCOLS["constant"]
    assert (rise.score, rise.pixels_per_step) == ("probability", 224)
    assert (rise.deletion, rise.insertion) == ("zero", "blur")
    assert (constant.steps, constant.deletion, constant.insertion) == (10, "zero", "zero")
