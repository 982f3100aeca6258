"""Sphinx glue for the book.

The API reference page (appendix/reference.md): convvis's docstrings are written to be read in a
terminal and in the book: they use |w| for an absolute value, which reStructuredText would read as
a substitution reference. Escape it before autodoc parses the docstring.

The executed chapters: the published book is static, so it carries no Jupyter widgets. The
build's kernel shows ``tqdm.auto`` progress bars as widgets (ipywidgets is installed), and a widget
on a page without a kernel is a frozen bar or a control that does nothing. Drop every output that
is a widget view, and the widget state myst-nb would attach to the page, so no page needs the
widget scripts. In Jupyter and on Colab the same cells show live bars and controls.
"""

import re

from docutils import nodes

_BAR = re.compile(r"(?<!\\)\|")


def _escape(app, what, name, obj, options, lines):
    for i, line in enumerate(lines):
        if line.lstrip().startswith(("+-", "|-")):  # a real table
            continue
        lines[i] = _BAR.sub(r"\\|", line)


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def _is_widget_output(node) -> bool:
    """A myst-nb mime bundle (one display output, all its formats) that offers a widget view."""
    return (isinstance(node, nodes.container) and node.get("nb_element") == "mime_bundle"
            and any(c.get("mime_type") == WIDGET_VIEW for c in node.children))


def _drop_widgets(app, doctree):
    for bundle in list(doctree.findall(_is_widget_output)):
        parent = bundle.parent
        parent.remove(bundle)  # the text/plain fallback too: a frozen "0%|" line is no better
        while (isinstance(parent, nodes.container) and not parent.children
               and "cell_output" in parent["classes"]):
            grand = parent.parent
            grand.remove(parent)
            parent = grand
    # myst-nb keeps each page's scripts (here: the widget state) in the environment, keyed
    # "ipywidgets_state" and "ipywidgets_<i>"; with no widget left on the page, none is needed
    js_files = getattr(app.env, "nb_metadata", {}).get(app.env.docname, {}).get("js_files", {})
    for key in [k for k in js_files if k.startswith("ipywidgets")]:
        del js_files[key]


def setup(app):
    app.connect("autodoc-process-docstring", _escape)
    app.connect("doctree-read", _drop_widgets)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
