"""The layout of the repository, as rules that fail loudly:

- no test module imports another test module (shared builders live in tests/helpers/, shared fixtures in a
  conftest.py; under --import-mode=importlib such an import does not even collect);
- llava_lite/ keeps at most six top-level modules (the rest lives in subpackages);
- only llava_lite/cli.py and llava_lite/demo/ import data_tools (the package does not need the data tools);
- collapsed to its subpackages (llava_lite.model, .data, .train, ...), the package's import graph has no cycle.
"""
from __future__ import annotations

import ast

from helpers.imports import ROOT, find_cycle, imports, package_graph

TESTS = ROOT / "tests"
PACKAGE = ROOT / "llava_lite"
MAX_TOP_LEVEL_MODULES = 6
MAY_IMPORT_DATA_TOOLS = ("llava_lite.cli", "llava_lite.demo")


def imported_names(source: str) -> set[str]:
    """Every module name an import statement names, anywhere in the source (inside functions too)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            names.add("." * node.level + base)
            names |= {f"{'.' * node.level}{base + '.' if base else ''}{a.name}" for a in node.names}
    return names


def imported_test_modules(source: str, test_modules: set[str]) -> set[str]:
    """The test modules (by file stem) or conftest files that `source` imports."""
    found = set()
    for name in imported_names(source):
        parts = name.lstrip(".").split(".")
        if parts[0] == "tests":  # `import tests.x` or `from tests.train import test_train`
            parts = parts[1:]
        found |= {p for p in parts if p in test_modules or p == "conftest"}
    return found


def test_no_test_module_imports_another():
    stems = {p.stem for p in TESTS.rglob("test_*.py")}
    assert len(stems) > 40 and "test_train" in stems  # the walk found the test modules
    offenders = {str(p.relative_to(TESTS)): sorted(bad) for p in sorted(TESTS.rglob("*.py"))  # helpers too
                 if (bad := imported_test_modules(p.read_text(), stems))}
    assert not offenders, f"test modules importing test modules (move the shared code to helpers/): {offenders}"


def test_the_test_import_check_sees_hidden_and_dotted_imports():
    stems = {"test_train", "test_export"}
    assert imported_test_modules("from helpers.runs import base\nimport pytest\n", stems) == set()
    assert imported_test_modules("from test_train import base\n", stems) == {"test_train"}
    assert imported_test_modules("def f():\n    import test_export as e\n", stems) == {"test_export"}
    assert imported_test_modules("from tests.train import test_train\n", stems) == {"test_train"}
    assert imported_test_modules("from . import test_export\n", stems) == {"test_export"}
    assert imported_test_modules("from conftest import tiny_lm\n", stems) == {"conftest"}


def test_few_top_level_modules():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert "__init__.py" in top and "cli.py" in top  # the glob found the package
    assert len(top) <= MAX_TOP_LEVEL_MODULES, f"llava_lite/ has {len(top)} top-level modules: {top}"


def test_only_the_cli_and_the_demo_import_data_tools():
    graph = package_graph()
    importers = sorted(m for m, deps in graph.items() if m.startswith("llava_lite")
                       and any(d == "data_tools" or d.startswith("data_tools.") for d in deps))
    assert "llava_lite.demo.run" in importers  # the walk sees data_tools imports, lazy ones included
    allowed = lambda m: any(m == a or m.startswith(a + ".") for a in MAY_IMPORT_DATA_TOOLS)
    assert [m for m in importers if not allowed(m)] == []


def subpackage(module: str) -> str:
    """llava_lite.model.llava -> llava_lite.model; top-level modules (llava_lite.cli) stay themselves."""
    return ".".join(module.split(".")[:2])


def subpackage_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, deps in package_graph().items():
        if not module.startswith("llava_lite"):
            continue
        node = subpackage(module)
        graph.setdefault(node, set())
        graph[node] |= {subpackage(d) for d in deps if d.startswith("llava_lite") and subpackage(d) != node}
    for deps in list(graph.values()):
        for d in deps:
            graph.setdefault(d, set())
    return graph


def test_subpackages_form_no_cycle():
    graph = subpackage_graph()
    assert {"llava_lite.model", "llava_lite.data", "llava_lite.train", "llava_lite.serve"} <= graph.keys()
    assert "llava_lite.model" in graph["llava_lite.train"]  # collapsed edges are there
    cycle = find_cycle(graph)
    assert cycle is None, "subpackage cycle: " + " -> ".join(cycle)


def test_collapsing_keeps_a_cross_subpackage_cycle():
    modules = {"llava_lite.model.llava", "llava_lite.data.render"}
    edges = imports("from llava_lite.data.render import render\n", "llava_lite.model.llava", False, modules)
    assert edges == {"llava_lite.data.render"}
    assert subpackage("llava_lite.model.llava") == "llava_lite.model"
    assert subpackage("llava_lite.cli") == "llava_lite.cli"
    graph = {"llava_lite.model": {"llava_lite.data"}, "llava_lite.data": {"llava_lite.model"}}
    assert find_cycle(graph) == ["llava_lite.data", "llava_lite.model", "llava_lite.data"]
