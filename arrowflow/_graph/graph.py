"""The graph model: operators as nodes, their ids, their schemas and their validation.

A :class:`Graph` owns a list of :class:`arrowflow._graph.nodes.Node` objects;
:class:`arrowflow._api.flow.Flow` is the user's facade over one. A pure description: building
it does no I/O.

Operator ids are stable and readable — ``read_parquet``, ``filter``, ``agg``, then
``filter-2`` for the second filter — since checkpoints key state by them; ``name=``
overrides them.

What a node's kind means (its schema, its side outputs, the ids it reserves) is its
:class:`arrowflow._graph.kinds.OperatorKind`'s, read from the one table of kinds.

Schemas are computed on demand. When every source upstream of an operator has a known
schema (given ``schema=``, or in-memory data), the operator is checked as it is added, so a
wrong column fails on the line that wrote it; otherwise the check happens at plan time,
before any data moves.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from arrowflow._graph.kinds import derived_ids, kind_of
from arrowflow._graph.nodes import _ID, Node
from arrowflow.errors import PlanError


class Graph:
    """A named graph of operators: the nodes, their ids and their schemas."""

    def __init__(self, name: str) -> None:
        if not isinstance(name, str) or not _ID.match(name):
            msg = f"Flow name must be letters, digits, '_', '-' or '.', got {name!r}"
            raise PlanError(msg)
        self.name = name
        self.nodes: list[Node] = []
        self._ids: set[str] = set()

    # ------------------------------------------------------------------ graph building
    def _new_id(self, kind: str, name: str | None) -> str:
        derived = derived_ids(kind)
        if name is not None:
            if not isinstance(name, str) or not _ID.match(name) or name in (".", ".."):
                # Names become path components of state snapshot files: "." and ".." are not names.
                msg = f"operator name must be letters, digits, '_', '-' or '.' (not '.' or '..'), got {name!r}"
                raise PlanError(msg)
            taken = [n for n in (name, *(name + suffix for suffix in derived)) if n in self._ids]
            if taken and taken[0] == name:
                msg = f"two operators are named {name!r}; operator names must be unique in a flow"
                raise PlanError(msg)
            if taken:
                msg = (
                    f"operator name {name!r} is not free: the plan would call its {kind} part "
                    f"{taken[0]!r}, a name another operator has; choose another name"
                )
                raise PlanError(msg)
            return name
        candidate, n = kind, 1
        while candidate in self._ids or any(candidate + suffix in self._ids for suffix in derived):
            n += 1
            candidate = f"{kind}-{n}"
        return candidate

    def _add(self, kind: str, inputs: list[Node], name: str | None = None, **params: Any) -> Node:
        node_id = self._new_id(params.pop("id_kind", kind), name)
        node = Node(node_id, kind, inputs, params)
        # The plan adds operators named after this one (an aggregation's exchange): keep
        # those names free too, or two physical operators would share an id.
        self._ids.update([node_id, *(node_id + suffix for suffix in derived_ids(kind))])
        self.nodes.append(node)
        return node

    def _remove(self, node: Node) -> None:
        self.nodes.remove(node)
        self._ids.difference_update(
            [node.id, *(node.id + suffix for suffix in derived_ids(node.kind))]
        )

    def unused_id(self, base: str) -> str:
        """``base``, or ``base-2``, ``base-3``... whichever no operator of the flow uses."""
        return self._new_id(base, None)

    # ------------------------------------------------------------------ schemas
    def schema_of(self, node: Node) -> pl.Schema:
        """The output schema of ``node`` (may read source metadata)."""
        if node.schema is None:
            node.schema = self._compute_schema(node)
        return node.schema

    def schema_is_static(self, node: Node) -> bool:
        """True when the schema can be computed without any I/O."""
        return kind_of(node.kind).schema_is_static(self, node)

    def _compute_schema(self, node: Node) -> pl.Schema:
        return kind_of(node.kind).output_schema(self, node)

    def _validate(self, node: Node) -> Node:
        if self.schema_is_static(node):
            try:
                self.schema_of(node)
            except Exception:
                self._remove(node)
                raise
        return node

    # ------------------------------------------------------------------ outputs
    def sinks(self) -> list[Node]:
        return [n for n in self.nodes if n.kind == "sink"]
