"""The package as a whole: one public face, and the chapters use it."""

import json
import re
from pathlib import Path

import pytest

import convvis

ROOT = Path(__file__).resolve().parents[1]


# ---- one public face ----------------------------------------------------------------------------


def test_every_public_name_resolves_and_is_unique():
    assert len(convvis.__all__) == len(set(convvis.__all__))
    for name in convvis.__all__:
        assert hasattr(convvis, name), name


@pytest.mark.parametrize("name", [
    "saliency_map", "smoothgrad", "integrated_gradients", "grad_cam", "visualise", "paper_preset",
    "ClassScore", "FourierImage", "Jitter", "segment", "localise_images", "graph_cut", "graph_cut_energy",
    "seeds_from_saliency", "fit_colour_model", "threshold_box", "grabcut_mask", "backprop_rule",
    "rule_gradient", "reconstruct", "deletion_auc", "insertion_auc", "pointing_game", "rank_correlation",
    "input_gradient", "taylor_curve", "load_model", "load_image",
])
def test_each_chapters_entry_point_is_at_the_top_level(name):
    assert name in convvis.__all__


def _chapter_texts():
    for nb in sorted((ROOT / "chapters").glob("*.ipynb")):
        for cell in json.loads(nb.read_text())["cells"]:
            yield nb.name, cell["cell_type"], "".join(cell["source"])


def test_every_convvis_name_the_chapters_mention_exists():
    """`convvis.x.y` in any chapter's prose or code must resolve: prose used to name functions
    that did not exist at that path."""
    import importlib

    missing = []
    for nb, _, text in _chapter_texts():
        for dotted in set(re.findall(r"\bconvvis(?:\.[A-Za-z_]\w*)+", text)):
            parts = dotted.split(".")
            obj = convvis
            for i, part in enumerate(parts[1:], start=1):
                if hasattr(obj, part):
                    obj = getattr(obj, part)
                    continue
                try:  # a submodule not yet imported
                    obj = importlib.import_module(".".join(parts[: i + 1]))
                except ImportError:
                    missing.append((nb, dotted))
                    break
    assert not missing, missing


def test_chapters_import_from_the_top_level_only():
    """The chapters use the public names, not module paths (convvis.checks is the course API)."""
    for nb, kind, text in _chapter_texts():
        if kind != "code":
            continue
        for line in text.splitlines():
            m = re.match(r"\s*from convvis\.(\w+) import", line)
            # checks: the course API; localise: the command-line program's module
            assert m is None or m.group(1) in ("checks", "localise"), (nb, line)


# ---- the house: no import loop, no private name across modules ------------------------------------

PACKAGE = ROOT / "convvis"


def _convvis_imports(name: str, source: str, modules: set[str]) -> list[tuple[str, str | None, int]]:
    """Every import of a convvis module in ``source`` (module ``convvis.<name>``; ``modules`` names
    the package's modules), at module level and inside functions alike:
    ``(imported module, imported name or None, line)``."""
    import ast

    here = "convvis" if name == "__init__" else f"convvis.{name}"
    package = "convvis"  # every module is directly in the package
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(a.name, None, node.lineno) for a in node.names if a.name.split(".")[0] == "convvis"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package if node.level == 1 else None
                target = base if not node.module else f"{base}.{node.module}"
            else:
                target = node.module or ""
            if target.split(".")[0] != "convvis":
                continue
            for a in node.names:
                if target == "convvis" and a.name in modules:  # from . import common
                    found.append((f"convvis.{a.name}", None, node.lineno))
                else:
                    found.append((target, a.name, node.lineno))
    return [(m, n, line) for m, n, line in found if m != here]


def _house_rules(sources: dict[str, str]) -> list[str]:
    """Problems in a package given as ``{module name: source}``: import cycles among its modules,
    and ``_private`` names imported from another module (``checks`` may: it watches the library's
    own functions on purpose)."""
    graph: dict[str, set[str]] = {}
    problems = []
    for name, source in sources.items():
        here = "convvis" if name == "__init__" else f"convvis.{name}"
        edges = graph.setdefault(here, set())
        for module, imported, line in _convvis_imports(name, source, set(sources) - {"__init__"}):
            edges.add(module)
            if imported and imported.startswith("_") and not imported.startswith("__") and name != "checks":
                problems.append(f"convvis/{name}.py:{line} imports the private name {module}.{imported}")
    # the package's __init__ imports every module; a module importing the package would be a loop
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt]
                problems.append("import loop: " + " -> ".join(cycle))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return problems


def test_no_import_loop_and_no_private_name_across_modules():
    sources = {p.stem: p.read_text(encoding="utf-8") for p in sorted(PACKAGE.glob("*.py"))}
    assert len(sources) > 10
    assert _house_rules(sources) == []


def test_the_house_rules_catch_a_loop_a_lazy_loop_and_a_private_import():
    """The checker itself can fail: a loop at module level, one hidden in a function body (the
    lazy import that used to dodge one), and a private name."""
    assert _house_rules({"a": "from .b import f\n", "b": "from .a import g\n"}) == [
        "import loop: convvis.a -> convvis.b -> convvis.a"]
    lazy = {"a": "from . import b\n", "b": "def f():\n    from .a import g\n    return g\n"}
    assert _house_rules(lazy) == ["import loop: convvis.a -> convvis.b -> convvis.a"]
    assert _house_rules({"a": "import convvis.b\n", "b": "from convvis import a\n"}) != []
    assert _house_rules({"a": "from .b import _helper\n", "b": ""}) == [
        "convvis/a.py:1 imports the private name convvis.b._helper"]
    assert _house_rules({"checks": "from .b import _helper\n", "b": ""}) == []
    assert _house_rules({"a": "from .b import helper\n", "b": "import numpy\n"}) == []
