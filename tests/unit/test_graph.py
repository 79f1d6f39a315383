"""The jobs as a graph: cycles named as a path, levels, dependents; linear on a wide graph."""

from __future__ import annotations

from stepcluster import graph


def test_a_chain_is_each_job_after_the_one_before():
    assert graph.chain(["a", "b", "c"]) == {"a": (), "b": ("a",), "c": ("b",)}


def test_a_cycle_is_named_as_the_path_that_closes_it():
    assert graph.find_cycle({"a": ["b"], "b": ["c"], "c": ["a"], "d": []}) == ["a", "b", "c", "a"]
    assert graph.find_cycle({"x": [], "a": ["a"]}) == ["a", "a"]
    assert graph.find_cycle({"d": ["b", "c"], "b": ["a"], "c": ["a"], "a": []}) is None   # a diamond
    # the cycle is reported from where it closes, not from where the walk began
    assert graph.find_cycle({"top": ["a"], "a": ["b"], "b": ["a"]}) == ["a", "b", "a"]


def test_levels_put_each_job_one_after_its_deepest_prerequisite():
    diamond = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"], "e": []}
    assert graph.levels(diamond) == [["a", "e"], ["b", "c"], ["d"]]
    assert graph.levels({"a": [], "b": ["a"], "c": ["a", "b"]}) == [["a"], ["b"], ["c"]]
    assert graph.levels({}) == []


def test_dependents_are_every_job_that_waits_for_one_directly_or_not():
    diamond = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"], "e": []}
    assert graph.dependents(diamond, ["b"]) == {"d"}
    assert graph.dependents(diamond, ["a"]) == {"b", "c", "d"}
    assert graph.dependents(diamond, ["d", "e"]) == set()


def test_a_ten_level_graph_of_ten_thousand_jobs():
    """Each job waits for ten jobs of the level before it: 10 levels, 90,000 edges (the walks
    are iterative: no recursion limit, whatever the depth)."""
    width = 1000
    names = [[f"l{level}j{i}" for i in range(width)] for level in range(10)]
    prerequisites = {name: (names[level - 1][:10] if level else []) for level, row in enumerate(names) for name in row}
    assert graph.find_cycle(prerequisites) is None
    assert [len(row) for row in graph.levels(prerequisites)] == [width] * 10
    assert len(graph.dependents(prerequisites, names[0][:1])) == 9 * width
    deep = {f"j{i}": ([f"j{i - 1}"] if i else []) for i in range(20_000)}     # a chain 20,000 deep
    assert graph.find_cycle(deep) is None and len(graph.levels(deep)) == 20_000
