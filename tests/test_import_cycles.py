"""No import cycle anywhere in the packages, counting imports inside functions too (an import
hidden in a method is still a cycle: it only moves the failure to run time)."""
from __future__ import annotations

from helpers.imports import find_cycle, imports, package_graph


def test_no_import_cycle():
    graph = package_graph()
    assert len(graph) > 40 and graph["llava_lite.train.recipe"]  # the walk found the package and its imports
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_walk_sees_a_cycle_hidden_in_a_function():
    graph = {"a": {"b"}, "b": {"c"}, "c": set()}
    assert find_cycle(graph) is None
    graph["c"] = {"a"}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    hidden = "def f():\n    from ..model import LlavaLite\n"
    assert imports(hidden, "llava_lite.data.probe", False, {"llava_lite.model"}) == {"llava_lite.model"}
