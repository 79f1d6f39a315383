"""The jobs as a graph: which job waits for which. Pure functions over {job: its prerequisites}.

A `sequential` run is a chain (each job waits for the one before it), a `parallel` run without
`depends_on` is a fan (no job waits), and `depends_on` makes any directed acyclic graph. Every
function here is linear in jobs and edges: a config of 10,000 jobs is checked in milliseconds.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence


def chain(names: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """A sequential run's graph: each job after the one before it."""
    return {name: ((names[i - 1],) if i else ()) for i, name in enumerate(names)}


def find_cycle(prerequisites: Mapping[str, Sequence[str]]) -> list[str] | None:
    """A cycle, as the path that closes it ([a, b, c, a]: a waits for b, which waits for c,
    which waits for a), or None. Names a prerequisite that is not a job of the graph: ignored."""
    state: dict[str, int] = {}          # 1: on the current path, 2: done
    for start in prerequisites:
        if state.get(start):
            continue
        path, stack = [start], [iter(prerequisites[start])]
        state[start] = 1
        while stack:
            following = next(stack[-1], None)
            if following is None:
                state[path.pop()] = 2
                stack.pop()
            elif following in prerequisites and state.get(following) == 1:
                return path[path.index(following):] + [following]
            elif following in prerequisites and not state.get(following):
                state[following] = 1
                path.append(following)
                stack.append(iter(prerequisites[following]))
    return None


def levels(prerequisites: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """The jobs by level, each level in the graph's order: level 0 waits for nothing, a job is
    one level after its deepest prerequisite. The graph must have no cycle."""
    level: dict[str, int] = {}
    for start in prerequisites:
        if start in level:
            continue
        stack = [start]
        while stack:
            name = stack[-1]
            if name in level:          # reached by two paths: leveled on the first
                stack.pop()
                continue
            waiting = [p for p in prerequisites[name] if p in prerequisites and p not in level]
            if waiting:
                stack.extend(waiting)
                continue
            stack.pop()
            level[name] = 1 + max((level[p] for p in prerequisites[name] if p in prerequisites), default=-1)
    out: list[list[str]] = [[] for _ in range(1 + max(level.values(), default=-1))]
    for name in prerequisites:
        out[level[name]].append(name)
    return out


def dependents(prerequisites: Mapping[str, Sequence[str]], of: Iterable[str]) -> set[str]:
    """Every job that waits, directly or not, for one of `of` (not those themselves)."""
    waited_by: dict[str, list[str]] = {}
    for name, before in prerequisites.items():
        for p in before:
            waited_by.setdefault(p, []).append(name)
    found: set[str] = set()
    stack = list(of)
    while stack:
        for name in waited_by.get(stack.pop(), ()):
            if name not in found:
                found.add(name)
                stack.append(name)
    return found
