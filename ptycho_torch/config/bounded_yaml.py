"""YAML with bounded expansion: every config, stored run file and sweep file is read through here.

`yaml.safe_load` refuses Python tags but not the two ways a few hundred bytes become gigabytes or a
crash: aliases of aliases (a 383-byte document expanding to ~10^8 values, "billion laughs", which
any later copy, comparison or error message then materialises) and nesting deep enough to exhaust
the parser's recursion. `load_bounded` composes the node graph, counts the values it stands for with
every alias expanded (shared nodes counted once per use, without expanding anything) and refuses,
as a `yaml.YAMLError`, a document over MAX_VALUES values or MAX_DEPTH levels, before anything is
constructed. Callers turn that error into their usual one line.
"""

from __future__ import annotations

from typing import Any

import yaml

MAX_VALUES = 100_000  # scalars, sequences and mappings once every alias is expanded
MAX_DEPTH = 100  # nesting levels (our configs use 3)


class BoundExceeded(yaml.YAMLError):
    """A document over MAX_VALUES values (aliases expanded) or MAX_DEPTH levels."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.problem_mark = None


def expanded_size(node: yaml.Node, max_depth: int = MAX_DEPTH) -> int:
    """Values `node` stands for with every alias expanded (memoised per node, so the count itself
    costs one visit per distinct node). BoundExceeded for a recursive (self-referencing) document or
    one nested deeper than `max_depth`."""
    sizes: dict[int, int] = {}
    # iterative post-order walk: a document nested 10^5 deep must not exhaust Python's recursion
    stack: list[tuple[yaml.Node, int, bool]] = [(node, 1, False)]
    active: set[int] = set()
    while stack:
        current, depth, expanded = stack.pop()
        key = id(current)
        if expanded:
            active.discard(key)
            sizes[key] = 1 + sum(sizes[id(c)] for c in _children(current))
            continue
        if key in sizes:
            continue
        if depth > max_depth:
            raise BoundExceeded(f"nested more than {max_depth} levels deep; a config needs 3, flatten the document")
        if key in active:
            raise BoundExceeded("an alias refers to a value that contains it (a recursive document); write the "
                                "value out")
        active.add(key)
        stack.append((current, depth, True))
        stack.extend((child, depth + 1, False) for child in _children(current) if id(child) not in sizes)
    return sizes[id(node)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def load_bounded(text: str, max_values: int = MAX_VALUES, max_depth: int = MAX_DEPTH) -> Any:
    """`yaml.safe_load(text)`, refusing (BoundExceeded, a yaml.YAMLError) documents whose aliases
    expand beyond `max_values` values or that nest deeper than `max_depth`; None for an empty one."""
    loader = yaml.SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise BoundExceeded(f"nested more than {max_depth} levels deep; a config needs 3, flatten the "
                                "document") from None
        if node is None:
            return None
        size = expanded_size(node, max_depth)
        if size > max_values:
            raise BoundExceeded(f"its aliases (*name) expand to {size:.3g} values, more than the {max_values} "
                                "allowed; write the values out instead of nesting aliases")
        return loader.construct_document(node)
    finally:
        loader.dispose()


def yaml_problem(error: Exception) -> str:
    """A YAML parse error on one line: 'line L, column C: <problem>'."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return " ".join(f"{where}{problem}".split())
