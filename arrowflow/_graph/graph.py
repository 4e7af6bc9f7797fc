"""The graph model: operators as nodes, their ids, their schemas and their validation.

A :class:`Graph` owns a list of :class:`arrowflow._graph.nodes.Node` objects;
:class:`arrowflow._api.flow.Flow` is the user's facade over one. A pure description: building
it does no I/O.

Operator ids are stable and readable — ``read_parquet``, ``filter``, ``agg``, then
``filter-2`` for the second filter — since checkpoints key state by them; ``name=``
overrides them.

Schemas are computed on demand. When every source upstream of an operator has a known
schema (given ``schema=``, or in-memory data), the operator is checked as it is added, so a
wrong column fails on the line that wrote it; otherwise the check happens at plan time,
before any data moves.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from arrowflow._graph.nodes import _DERIVED_IDS, _ID, Node, _polars_schema_error
from arrowflow.errors import PlanError, SchemaError
from arrowflow.sources import MALFORMED_SCHEMA


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
        derived = _DERIVED_IDS.get(kind, ())
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
        self._ids.update([node_id, *(node_id + suffix for suffix in _DERIVED_IDS.get(kind, ()))])
        self.nodes.append(node)
        return node

    def _remove(self, node: Node) -> None:
        self.nodes.remove(node)
        self._ids.difference_update(
            [node.id, *(node.id + suffix for suffix in _DERIVED_IDS.get(node.kind, ()))]
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
        if node.kind == "source":
            return bool(getattr(node.params["source"], "schema_is_static", False))
        return all(self.schema_is_static(parent) for parent in node.inputs)

    def _compute_schema(self, node: Node) -> pl.Schema:
        kind, params = node.kind, node.params
        if kind == "source":
            return params["source"].schema()
        if kind == "side_output":
            return side_output_schema(self, node)
        upstream = self.schema_of(node.inputs[0]) if node.inputs else pl.Schema()
        try:
            if kind == "filter":
                lf = pl.LazyFrame(schema=upstream)
                for predicate in params["predicates"]:
                    dtype = lf.select(predicate).collect_schema().dtypes()
                    if len(dtype) != 1 or dtype[0] != pl.Boolean:
                        msg = (
                            f"operator {node.id!r}: a filter predicate must be a Boolean expression, "
                            f"{predicate} is {dtype[0] if len(dtype) == 1 else dtype}; "
                            f"compare it with something, e.g. pl.col('x') > 0"
                        )
                        raise SchemaError(msg)
                return upstream
            if kind == "select":
                return pl.LazyFrame(schema=upstream).select(params["exprs"]).collect_schema()
            if kind == "with_columns":
                return pl.LazyFrame(schema=upstream).with_columns(params["exprs"]).collect_schema()
        except pl.exceptions.PolarsError as exc:
            raise _polars_schema_error(node.id, exc) from None
        if kind == "map_batches":
            declared = params.get("schema")
            if declared is not None:
                return declared
            try:
                out = params["fn"](pl.DataFrame(schema=upstream))
            except Exception as exc:
                msg = (
                    f"operator {node.id!r}: the function could not be run on an empty batch to learn "
                    f"its output schema ({type(exc).__name__}: {exc}); pass schema={{...}} to map_batches"
                )
                raise SchemaError(msg) from None
            if not isinstance(out, pl.DataFrame):
                msg = (
                    f"operator {node.id!r}: the map_batches function must return a polars DataFrame, "
                    f"it returned {type(out).__name__}"
                )
                raise PlanError(msg)
            return out.schema
        if kind == "union":
            schemas = [self.schema_of(parent) for parent in node.inputs]
            first = schemas[0]
            for parent, other in zip(node.inputs[1:], schemas[1:], strict=True):
                if other != first:
                    diffs = [
                        f"{col}: {first.get(col)} vs {other.get(col)}"
                        for col in dict.fromkeys([*first.names(), *other.names()])
                        if first.get(col) != other.get(col)
                    ]
                    msg = (
                        f"operator {node.id!r}: union needs the same columns and types in every input; "
                        f"{node.inputs[0].id!r} and {parent.id!r} differ in {', '.join(diffs) or 'column order'}; "
                        f"align them with .select(...) and .cast(...) first"
                    )
                    raise SchemaError(msg)
            return first
        if kind == "agg":
            return params["agg"](upstream).output_schema
        if kind == "watermark":
            from arrowflow._foundation.watermarks import check_time_column

            check_time_column(upstream, params["column"], node.id)
            return upstream
        if kind == "window":
            return params["window"](upstream).output_schema
        if kind == "process":
            return params["process"].learn_schema(upstream)
        if kind == "sink":
            params["sink"].validate(upstream, node.id)
            return upstream
        msg = f"internal: no schema rule for operator kind {kind!r}"
        raise PlanError(msg)

    def _validate(self, node: Node) -> Node:
        if self.schema_is_static(node):
            try:
                self.schema_of(node)
            except Exception:
                self._remove(node)
                raise
        return node

    # ------------------------------------------------------------------ running
    # ------------------------------------------------------------------ outputs
    def sinks(self) -> list[Node]:
        return [n for n in self.nodes if n.kind == "sink"]


def check_side_output(parent: Node, side: str) -> None:
    """Raise a PlanError unless ``parent`` has a side output called ``side`` (no schema needed)."""
    if side == "malformed":
        if parent.kind != "source":
            msg = (
                f"side output 'malformed' exists on sources only; {parent.id!r} is a {parent.kind}; "
                f"call .side_output('malformed') on the stream a read_* method returned"
            )
            raise PlanError(msg)
        return
    declared = parent.params.get("side_outputs", {})
    if side not in declared:
        names = ["malformed"] if parent.kind == "source" else sorted(declared)
        msg = f"operator {parent.id!r} ({parent.kind}) has no side output {side!r}; it has: {names or 'none'}"
        raise PlanError(msg)


def side_output_schema(flow: Graph, node: Node) -> pl.Schema:
    parent = node.inputs[0]
    assert node.side is not None
    check_side_output(parent, node.side)
    if node.side == "malformed":
        return MALFORMED_SCHEMA
    return parent.params["side_outputs"][node.side](flow.schema_of(parent))
