"""The published book in a real browser: headless Chromium opens every built page, offline.

Needs the built book (``jupyter-book build .``, README command 1), Playwright for Python and a
Chromium (Debian's ``chromium``; ``$CHROMIUM`` overrides the path). Where those are missing the
tests skip, unless ``CONVVIS_REQUIRE_BROWSER=1`` (set by ``.ci/run``), which turns a skip into a
failure so that CI cannot pass without looking.

Every page must: typeset all its math (MathJax served by the book), load every image, carry no
Jupyter widget (the book is static), request nothing outside the book, log no console error from
our content, and link only to pages and anchors that exist.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
HTML = ROOT / "_build" / "html"
REQUIRED = os.environ.get("CONVVIS_REQUIRE_BROWSER") == "1"

# Console messages from the themes Jupyter Book 1 ships, not from the book's content; each with why.
THIRD_PARTY_CONSOLE = {
    # pydata-sphinx-theme reads the light/dark choice from localStorage, empty on a first visit
    r"^Got invalid theme mode: \. Resetting to auto\.$": "pydata-sphinx-theme, first visit",
    # sphinx-thebe's config script is added twice by Jupyter Book 1 (thebe itself is not used here)
    r"Identifier 'THEBE_JS_URL' has already been declared": "sphinx-thebe config added twice by JB 1",
}


def pages() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]] + [c["file"] for part in toc.get("parts", []) for c in part["chapters"]]
    return [f + ".html" for f in files]


def _unavailable(why: str):
    if REQUIRED:
        pytest.fail(f"CONVVIS_REQUIRE_BROWSER=1 but {why}")
    pytest.skip(why)


@pytest.fixture(scope="module")
def browser():
    if not (HTML / "index.html").exists():
        _unavailable("the book is not built (run `jupyter-book build .`)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("Playwright for Python is not installed (pip install playwright)")
    exe = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not exe:
        _unavailable("no Chromium found (apt-get install chromium, or set $CHROMIUM)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


_DRAWS = re.compile(r"plt\.(subplots|figure|show)\(|show_images\(|\.imshow\(")


def _figure_cells(html_name: str) -> int:
    """How many of the page's notebook code cells draw a figure (each must put an image on the page)."""
    nb = ROOT / html_name.replace(".html", ".ipynb")
    if not nb.exists():
        return 0
    cells = json.loads(nb.read_text())["cells"]
    return sum(1 for c in cells if c["cell_type"] == "code" and _DRAWS.search("".join(c["source"]))
               and "remove-cell" not in c["metadata"].get("tags", []))


def _our_console_errors(messages: list[str]) -> list[str]:
    return [m for m in messages if not any(re.search(pat, m) for pat in THIRD_PARTY_CONSOLE)]


@pytest.mark.parametrize("name", pages())
def test_page_works_offline(browser, name):
    path = HTML / name
    assert path.exists(), f"{name} was not built"
    page = browser.new_page()
    outside, errors = [], []

    def route(r):
        url = r.request.url
        if url.startswith(("file://", "data:", "blob:", "about:")):
            r.continue_()
        else:  # the network is cut: a page that needs it shows up here, and fails below
            outside.append(url)
            r.abort()

    page.route("**/*", route)
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(path.as_uri(), wait_until="load")
    # MathJax typesets asynchronously; its startup promise resolves when the page is done
    page.evaluate("async () => { if (window.MathJax && MathJax.startup) await MathJax.startup.promise }")
    page.wait_for_timeout(300)

    assert not outside, f"{name} requested outside the book: {outside}"
    n_math = page.evaluate("document.querySelectorAll('.math').length")
    n_typeset = page.evaluate("document.querySelectorAll('.math mjx-container, mjx-container').length")
    n_errors = page.evaluate("document.querySelectorAll('mjx-merror').length")
    assert n_typeset >= n_math, f"{name}: {n_math - n_typeset} of {n_math} math elements not typeset"
    assert n_errors == 0, f"{name}: {n_errors} MathJax errors"
    images = page.evaluate(
        "Array.from(document.images)"
        ".map(i => ({src: i.getAttribute('src'), ok: i.complete && i.naturalWidth > 0}))"
    )
    broken = [i["src"] for i in images if not i["ok"]]
    assert not broken, f"{name}: images not loaded: {broken}"
    expected = _figure_cells(name)
    assert len(images) >= expected, (
        f"{name}: {len(images)} images on the page, but {expected} code cells draw figures "
        "(a kernel with a non-inline matplotlib backend, e.g. MPLBACKEND=Agg, drops them)")
    # static pages: a widget (a build-time progress bar, a control) would be frozen or dead here
    widget = "script[type^='application/vnd.jupyter.widget'], .jupyter-widgets"
    widgets = page.evaluate(f"document.querySelectorAll(\"{widget}\").length")
    assert widgets == 0, f"{name}: {widgets} Jupyter widget views or widget state on a static page"
    assert not _our_console_errors(errors), f"{name}: console errors: {_our_console_errors(errors)}"
    page.close()


@pytest.mark.parametrize("name", pages())
def test_internal_links_and_anchors_exist(name):
    if not (HTML / "index.html").exists():
        _unavailable("the book is not built (run `jupyter-book build .`)")
    path = HTML / name
    text = path.read_text()
    for href in re.findall(r'<a[^>]+href="([^"]+)"', text):
        url = urlparse(href)
        if url.scheme or href.startswith(("mailto:", "javascript:")):
            continue
        target = (path.parent / unquote(url.path)).resolve() if url.path else path
        assert target.exists(), f"{name}: link to missing {href}"
        if url.fragment and target.suffix == ".html":
            ids = set(re.findall(r'id="([^"]+)"', target.read_text()))
            assert url.fragment in ids, f"{name}: link to missing anchor {href}"
