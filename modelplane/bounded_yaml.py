"""YAML from outside read with a bound on what its aliases expand to.

PyYAML's safe loader builds an alias as a second reference to the anchored object, so nine levels of nine aliases
(under 1 KiB of text, the "billion laughs") load at once; whoever walks the result then visits 9**9 values. Every
reader of YAML that comes from outside the process (manifests, the policy file, storage Secrets) reads it here, so
that the text's size limit also bounds the work of walking what it becomes. Aliases stay allowed: they are a
documented convenience of manifests; only their expansion is counted. A node that contains itself (``&a [*a]``)
would never end a walk and is refused too.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import yaml

# Per text, all its documents together: scalars, sequences and mappings, each alias counted as its whole node.
MAX_EXPANDED_NODES = 100_000


class YAMLExpansionError(yaml.YAMLError):
    """A document's aliases expand beyond MAX_EXPANDED_NODES nodes, or a node refers to itself."""

    @property
    def problem(self) -> str:  # the attribute callers quote from PyYAML's own errors
        return str(self)


def _expanded_size(root: yaml.Node, limit: int) -> int:
    """How many nodes a walk of ``root`` visits with every alias followed; YAMLExpansionError beyond ``limit``.

    Iterative (a deep document must not exhaust the stack) and memoised by node: a node reached by many aliases is
    measured once, so measuring costs the text's size, not the expansion's."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            open_nodes.discard(key)
            sizes[key] = 1 + sum(sizes[id(child)] for child in _children(node))
            if sizes[key] > limit:
                raise YAMLExpansionError(f"aliases expand the text beyond {MAX_EXPANDED_NODES:,} values")
            continue
        if key in sizes:
            continue
        if key in open_nodes:
            raise YAMLExpansionError("an alias refers to itself (the node that holds it)")
        open_nodes.add(key)
        stack.append((node, True))
        for child in _children(node):
            if id(child) in open_nodes:
                raise YAMLExpansionError("an alias refers to itself (the node that holds it)")
            if id(child) not in sizes:
                stack.append((child, False))
    return sizes[id(root)]


def _children(node: yaml.Node) -> Iterator[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        yield from node.value
    elif isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            yield key
            yield value


class _BoundedSafeLoader(yaml.SafeLoader):
    """PyYAML's safe loader that measures each composed document before building Python objects from it, against
    one budget for the whole text (many small documents must not add up to what one may not be)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._nodes_left = MAX_EXPANDED_NODES

    def get_node(self) -> yaml.Node | None:
        return self._measured(super().get_node())

    def get_single_node(self) -> yaml.Node | None:
        return self._measured(super().get_single_node())

    def _measured(self, node: yaml.Node | None) -> yaml.Node | None:
        if node is not None:
            self._nodes_left -= _expanded_size(node, self._nodes_left)
        return node


def safe_load(text: str) -> Any:
    """``yaml.safe_load`` with the expansion bound: YAMLExpansionError (a YAMLError) beyond it."""
    return yaml.load(text, Loader=_BoundedSafeLoader)  # noqa: S506  # a SafeLoader subclass


def safe_load_all(text: str) -> list[Any]:
    """Every document of ``text``, as ``yaml.safe_load_all``, each under the expansion bound."""
    return list(yaml.load_all(text, Loader=_BoundedSafeLoader))  # a SafeLoader subclass
