"""Sphinx glue for the API reference page (appendix/reference.md).

convvis's docstrings are written to be read in a terminal and in the book: they use |w| for an
absolute value, which reStructuredText would read as a substitution reference. Escape it before
autodoc parses the docstring.
"""

import re

_BAR = re.compile(r"(?<!\\)\|")


def _escape(app, what, name, obj, options, lines):
    for i, line in enumerate(lines):
        if line.lstrip().startswith(("+-", "|-")):  # a real table
            continue
        lines[i] = _BAR.sub(r"\\|", line)


def setup(app):
    app.connect("autodoc-process-docstring", _escape)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
