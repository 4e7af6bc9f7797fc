"""Operator kinds: one class per kind, and one table (:data:`KINDS`) from kind name to kind.

The base class and the protocols its hooks receive are in :mod:`arrowflow._graph.operator_kind`;
a family of kinds that outgrows this module gets a module of its own beside it, and its line
in the table here.

A node of the graph (:class:`arrowflow._graph.nodes.Node`) names its kind by a string,
``node.kind``; everything that depends on the kind reads the table instead of switching on
the string:

- the graph model asks the kind for the node's output schema, whether that schema is known
  without I/O, and the side outputs it has (:mod:`arrowflow._graph.graph`);
- the planner asks it which columns it needs from its inputs (projection push-down), and
  how it plans into physical operators (:mod:`arrowflow._plan`);
- ``explain()``, the notebook display and checkpoints ask it for its description, its
  colour family and its fingerprint;
- the worker builds the physical operator the kind names by a ``"module:object"`` string,
  so this layer never imports the runtime.

A kind is stateless: the table holds one instance of each class, and every hook gets the
node (or the physical :class:`~arrowflow._graph.physical.OpSpec`) it is about. A hook is
called while a flow is built or planned, in the process that builds it, never in a worker
and never per batch; it must do no I/O beyond reading a source's schema.

Worked example, ``stream.filter(pl.col("amount") > 0)``: the facade adds a node of kind
``"filter"`` with ``params={"predicates": [...]}``; :class:`Filter` computes its schema (its
input's, once the predicate is checked to be Boolean), needs the predicate's columns plus
those downstream needs, and plans into one step of a ``chain`` (fused with the stateless
steps around it); it is left out of the fingerprint, so changing a filter between runs does
not block a restore. How to add a kind: docs/operators.md.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from arrowflow._foundation.watermarks import check_time_column
from arrowflow._graph.nodes import Node, _polars_schema_error, describe_expr
from arrowflow._graph.operator_kind import (
    ALL,
    Columns,
    OperatorKind,
    Planning,
    Schemas,
    aggs_text,
    columns_read,
    state_entry,
)
from arrowflow._graph.physical import MAIN, Edge, OpSpec
from arrowflow.errors import PlanError, SchemaError
from arrowflow.sources import MALFORMED_SCHEMA

MALFORMED = "malformed"


# ---------------------------------------------------------------------- sources and sinks


class Source(OperatorKind):
    """Reads a :class:`arrowflow.sources.Source`; its ``malformed`` side output has the rows
    (and files) it could not parse."""

    name = "source"
    category = "source"
    operator = "arrowflow._runtime.worker:SourceOp"

    def output_schema(self, graph: Schemas, node: Node) -> pl.Schema:
        return node.params["source"].schema()

    def schema_is_static(self, graph: Schemas, node: Node) -> bool:
        return bool(node.params["source"].schema_is_static)

    def side_outputs(self, node: Node) -> list[str]:
        return [MALFORMED]

    def side_output_schema(self, graph: Schemas, node: Node, side: str) -> pl.Schema:
        return MALFORMED_SCHEMA

    def input_columns(self, node: Node, needed: Columns, readers: list[Node]) -> list[Columns]:
        return []

    def plan(self, node: Node, planning: Planning) -> None:
        schema = planning.schema(node)
        source = node.params["source"]
        if source.schema_is_static:
            source.check_schema()  # its schema was taken as the flow was built: do the files agree?
        columns = planning.required(node)
        read_columns = None
        if columns is not ALL:
            keep = [c for c in schema.names() if c in columns]
            if not keep and len(schema):
                # Nothing downstream names a column (pl.lit(1), pl.len()), but every row
                # still counts: a batch of zero columns has zero rows, so read one column.
                keep = [schema.names()[0]]
            if len(keep) < len(schema):
                source = source.with_columns_pruned(keep)
                read_columns = keep
        planning.add(node, self.spec(node, [], schema, {"source": source, "columns": read_columns}))

    def describe(self, node: Node) -> str:
        return node.params["source"].describe()

    def explain(self, spec: OpSpec) -> str:
        text = spec.params["source"].describe()
        if spec.params.get("columns") is not None:
            text += f"; reads columns {spec.params['columns']}"
        return text

    def fingerprint(self, spec: OpSpec) -> list[Any] | None:
        return state_entry(spec)

    def operator_fingerprint(self, spec: OpSpec) -> list[Any] | None:
        # By id and kind only: new columns in the input files don't block a restore.
        return [spec.id, spec.kind]


class Sink(OperatorKind):
    """Writes its input to a :class:`arrowflow.sinks.Sink`."""

    name = "sink"
    category = "sink"
    operator = "arrowflow._runtime.operators:SinkOp"

    def output_schema(self, graph: Schemas, node: Node) -> pl.Schema:
        upstream = graph.schema_of(node.inputs[0])
        node.params["sink"].validate(upstream, node.id)
        return upstream

    def plan(self, node: Node, planning: Planning) -> None:
        edge = planning.edge(node.inputs[0])
        planning.add(
            node, self.spec(node, [edge], planning.schema(node), {"sink": node.params["sink"]})
        )

    def describe(self, node: Node) -> str:
        return node.params["sink"].describe()

    def explain(self, spec: OpSpec) -> str:
        return spec.params["sink"].describe()

    def fingerprint(self, spec: OpSpec) -> list[Any] | None:
        return state_entry(spec)

    def operator_fingerprint(self, spec: OpSpec) -> list[Any] | None:
        if spec.params["sink"].transient:
            return None  # a live-results tap: not part of what a checkpoint restores
        return [spec.id, spec.kind]


class SideOutput(OperatorKind):
    """A side output of its input operator (``stream.side_output("late")``): an edge from
    one of that operator's ports, no operator of its own."""

    name = "side_output"

    def output_schema(self, graph: Schemas, node: Node) -> pl.Schema:
        return side_output_schema(graph, node)

    def input_columns(self, node: Node, needed: Columns, readers: list[Node]) -> list[Columns]:
        # The malformed rows of a source are whole raw rows: they need none of its columns.
        return [set() if node.side == MALFORMED else ALL]

    def plan(self, node: Node, planning: Planning) -> None:
        parent_edge = planning.edge(node.inputs[0])
        planning.route(node, Edge(parent_edge.op, node.side or MAIN))

    def describe(self, node: Node) -> str:
        return f"side output {node.side!r} of {node.inputs[0].id!r}"


# ---------------------------------------------------------------------- stateless, fused into chains


class Stateless(OperatorKind):
    """A per-batch operator that runs as a step of a ``chain``: its node's params, with its id
    and kind, are the step."""

    def plan(self, node: Node, planning: Planning) -> None:
        planning.chain(node, self.step(node, planning))

    def step(self, node: Node, planning: Planning) -> dict[str, Any]:
        """The chain step that runs ``node`` (see :meth:`Planning.chain`)."""
        params = {k: v for k, v in node.params.items() if k != "schema"}
        return {"id": node.id, "kind": self.name, **params}


class Filter(Stateless):
    """Keeps the rows where every predicate is true."""

    name = "filter"

    def output_schema(self, graph: Schemas, node: Node) -> pl.Schema:
        upstream = graph.schema_of(node.inputs[0])
        try:
            lf = pl.LazyFrame(schema=upstream)
            for predicate in node.params["predicates"]:
                dtype = lf.select(predicate).collect_schema().dtypes()
                if len(dtype) != 1 or dtype[0] != pl.Boolean:
                    msg = (
                        f"operator {node.id!r}: a filter predicate must be a Boolean expression, "
                        f"{predicate} is {dtype[0] if len(dtype) == 1 else dtype}; "
                        f"compare it with something, e.g. pl.col('x') > 0"
                    )
                    raise SchemaError(msg)
        except pl.exceptions.PolarsError as exc:
            raise _polars_schema_error(node.id, exc) from None
        return upstream

    def input_columns(self, node: Node, needed: Columns, readers: list[Node]) -> list[Columns]:
        roots = columns_read(node.params["predicates"])
        return [ALL if needed is ALL or roots is ALL else needed | roots]

    def describe(self, node: Node) -> str:
        return "filter(" + ", ".join(describe_expr(e) for e in node.params["predicates"]) + ")"


def _schema_after(graph: Schemas, node: Node, method: Any) -> pl.Schema:
    """The schema polars gives ``method`` (``select``/``with_columns``) of the node's exprs."""
    upstream = graph.schema_of(node.inputs[0])
    try:
        return method(pl.LazyFrame(schema=upstream), node.params["exprs"]).collect_schema()
    except pl.exceptions.PolarsError as exc:
        raise _polars_schema_error(node.id, exc) from None


class Select(Stateless):
    """Computes exactly the given columns."""

    name = "select"

    def output_schema(self, graph: Schemas, node: Node) -> pl.Schema:
        return _schema_after(graph, node, pl.LazyFrame.select)

    def input_columns(self, node: Node, needed: Columns, readers: list[Node]) -> list[Columns]:
        return [columns_read(node.params["exprs"])]

    def describe(self, node: Node) -> str:
        return f"{self.name}(" + ", ".join(describe_expr(e) for e in node.params["exprs"]) + ")"


class WithColumns(Stateless):
    """Adds or replaces columns."""

    name = "with_columns"

    def output_schema(self, graph: Schemas, node: Node) -> pl.Schema:
        return _schema_after(graph, node, pl.LazyFrame.with_columns)

    def input_columns(self, node: Node, needed: Columns, readers: list[Node]) -> list[Columns]:
        exprs = node.params["exprs"]
        roots = columns_read(exprs)
        produced = {e.meta.output_name(raise_if_undetermined=False) for e in exprs}
        return [ALL if needed is ALL or roots is ALL else (needed - produced) | roots]

    def describe(self, node: Node) -> str:
        return f"{self.name}(" + ", ".join(describe_expr(e) for e in node.params["exprs"]) + ")"


class MapBatches(Stateless):
    """A user function DataFrame -> DataFrame per batch (it may read any column)."""

    name = "map_batches"

    def output_schema(self, graph: Schemas, node: Node) -> pl.Schema:
        upstream = graph.schema_of(node.inputs[0])
        declared = node.params.get("schema")
        if declared is not None:
            return declared
        try:
            out = node.params["fn"](pl.DataFrame(schema=upstream))
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

    def step(self, node: Node, planning: Planning) -> dict[str, Any]:
        step = super().step(node, planning)
        step["schema"] = planning.schema(node)  # the chain checks every result against it
        return step

    def describe(self, node: Node) -> str:
        fn = node.params["fn"]
        return f"map_batches({getattr(fn, '__name__', type(fn).__name__)})"


class Union(OperatorKind):
    """All rows of its inputs (same columns and types)."""

    name = "union"
    operator = "arrowflow._runtime.operators:UnionOp"

    def output_schema(self, graph: Schemas, node: Node) -> pl.Schema:
        schemas = [graph.schema_of(parent) for parent in node.inputs]
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

    def input_columns(self, node: Node, needed: Columns, readers: list[Node]) -> list[Columns]:
        return [needed for _ in node.inputs]

    def plan(self, node: Node, planning: Planning) -> None:
        inputs = [planning.edge(parent) for parent in node.inputs]
        planning.add(node, self.spec(node, inputs, planning.schema(node), {}))

    def describe(self, node: Node) -> str:
        return f"union of {len(node.inputs)} inputs"

    def explain(self, spec: OpSpec) -> str:
        return f"union of {len(spec.inputs)} inputs"


class Watermark(OperatorKind):
    """Event time on a column: passes batches through and sends watermarks downstream."""

    name = "watermark"
    operator = "arrowflow._runtime.window_op:WatermarkOp"

    def output_schema(self, graph: Schemas, node: Node) -> pl.Schema:
        upstream = graph.schema_of(node.inputs[0])
        check_time_column(upstream, node.params["column"], node.id)
        return upstream

    def input_columns(self, node: Node, needed: Columns, readers: list[Node]) -> list[Columns]:
        return [ALL if needed is ALL else needed | {node.params["column"]}]

    def plan(self, node: Node, planning: Planning) -> None:
        params, schema = node.params, planning.schema(node)
        physical = {
            "column": params["column"],
            "delay_ms": params["delay_ms"],
            "idle_timeout_ms": params["idle_timeout_ms"],
            "dtype": schema[params["column"]],
        }
        planning.add(node, self.spec(node, [planning.edge(node.inputs[0])], schema, physical))

    def describe(self, node: Node) -> str:
        return self._text(node.params)

    def explain(self, spec: OpSpec) -> str:
        return self._text(spec.params)

    @staticmethod
    def _text(params: dict[str, Any]) -> str:
        return f"event time {params['column']!r}, watermark = max seen - {params['delay_ms']}ms"


# ---------------------------------------------------------------------- keyed and stateful


class Keyed(OperatorKind):
    """A keyed, stateful operator: a hash exchange by ``params["keys"]``, then the operator,
    whose state a checkpoint restores."""

    category = "keyed"
    stateful = True
    derived_ids = (".exchange",)

    def plan(self, node: Node, planning: Planning) -> None:
        schema = planning.schema(node)
        upstream = planning.schema(node.inputs[0])
        physical: dict[str, Any] = {
            "keys": node.params["keys"],
            "max_parallelism": planning.max_parallelism,
        }
        physical.update(self.keyed_params(node, upstream, schema, planning.max_parallelism))
        combiner = self.combiner(physical)
        # With a combiner the sending side pre-aggregates each batch (one row per key) before
        # hashing it: the exchange carries partial aggregates, the operator merges them.
        edge = planning.exchange(
            node,
            node.params["keys"],
            combiner=combiner,
            schema=combiner.combined_schema if combiner is not None else None,
        )
        if combiner is not None:
            physical["combined"] = True
        planning.add(node, self.spec(node, [edge], schema, physical))

    def keyed_params(
        self, node: Node, upstream: pl.Schema, schema: pl.Schema, max_parallelism: int
    ) -> dict[str, Any]:
        """The physical operator's parameters besides ``keys`` and ``max_parallelism``."""
        return {}

    def combiner(self, physical: dict[str, Any]) -> Any:
        """What the exchange before the operator applies to each batch before hashing it (an
        object with ``counted_partial(batch)`` and ``combined_schema``; with
        ``counted_partial_query(lazy)`` as well, a source may run it in its scan), or None."""
        return None

    def state_fingerprint(self, spec: OpSpec) -> dict[str, Any]:
        """What its state depends on besides its id, kind and output schema."""
        return {"max_parallelism": spec.params["max_parallelism"]}

    def fingerprint(self, spec: OpSpec) -> list[Any] | None:
        return [*state_entry(spec), self.state_fingerprint(spec)]


class Agg(Keyed):
    """Keyed running aggregation (``key_by(...).agg(...)``)."""

    name = "agg"
    operator = "arrowflow._runtime.operators:AggOp"

    def output_schema(self, graph: Schemas, node: Node) -> pl.Schema:
        return node.params["agg"](graph.schema_of(node.inputs[0])).output_schema

    def input_columns(self, node: Node, needed: Columns, readers: list[Node]) -> list[Columns]:
        roots = columns_read(list(node.params["aggs"].values()))
        return [ALL if roots is ALL else roots | set(node.params["keys"])]

    def keyed_params(
        self, node: Node, upstream: pl.Schema, schema: pl.Schema, max_parallelism: int
    ) -> dict[str, Any]:
        return {
            "aggs": node.params["aggs"],
            "agg": node.params["agg"](upstream),
            "emit_every_s": node.params.get("emit_every_s"),
        }

    def combiner(self, physical: dict[str, Any]) -> Any:
        return physical["agg"]  # IncrementalAgg.partial: one row per key and batch

    def describe(self, node: Node) -> str:
        return f"running aggregation by {node.params['keys']}: {aggs_text(node.params['aggs'])}"

    def explain(self, spec: OpSpec) -> str:
        return (
            f"keyed running aggregation by {spec.params['keys']}: {aggs_text(spec.params['aggs'])}"
        )

    def state_fingerprint(self, spec: OpSpec) -> dict[str, Any]:
        return {
            "keys": spec.params["keys"],
            "aggs": {name: str(expr) for name, expr in spec.params["aggs"].items()},
            "state": {k: str(v) for k, v in spec.params["agg"].state_schema.items()},
            "max_parallelism": spec.params["max_parallelism"],
        }


class Window(Keyed):
    """Keyed event-time window aggregation (``key_by(...).window(...).agg(...)``); its
    ``late`` side output has the events that came after their window."""

    name = "window"
    operator = "arrowflow._runtime.window_op:make_window_op"

    def output_schema(self, graph: Schemas, node: Node) -> pl.Schema:
        return node.params["window"](graph.schema_of(node.inputs[0])).output_schema

    def input_columns(self, node: Node, needed: Columns, readers: list[Node]) -> list[Columns]:
        params = node.params
        roots = columns_read(list(params["aggs"].values()))
        late_read = any(reader.side is not None for reader in readers)  # late rows: every column
        if roots is ALL or late_read:
            return [ALL]
        return [roots | set(params["keys"]) | {params["time_column"]}]

    def keyed_params(
        self, node: Node, upstream: pl.Schema, schema: pl.Schema, max_parallelism: int
    ) -> dict[str, Any]:
        return {"aggs": node.params["aggs"], "window": node.params["window"](upstream)}

    def describe(self, node: Node) -> str:
        params = node.params
        return (
            f"{params['spec'].describe()} windows by {params['keys']}: {aggs_text(params['aggs'])}"
        )

    def explain(self, spec: OpSpec) -> str:
        params = spec.params
        return f"{params['window'].spec.describe()} windows by {params['keys']}: {aggs_text(params['aggs'])}"

    def state_fingerprint(self, spec: OpSpec) -> dict[str, Any]:
        return {
            **spec.params["window"].fingerprint(),
            "max_parallelism": spec.params["max_parallelism"],
        }


class Process(Keyed):
    """Keyed process function with declared state (``key_by(...).process(fn, states=...)``)."""

    name = "process"
    operator = "arrowflow._runtime.process_op:ProcessOp"

    def output_schema(self, graph: Schemas, node: Node) -> pl.Schema:
        return node.params["process"].learn_schema(graph.schema_of(node.inputs[0]))

    def keyed_params(
        self, node: Node, upstream: pl.Schema, schema: pl.Schema, max_parallelism: int
    ) -> dict[str, Any]:
        function = node.params["process"].bind(upstream, schema, max_parallelism)
        return {"process": function, "fn": function.fn}

    def describe(self, node: Node) -> str:
        return node.params["process"].describe()

    def explain(self, spec: OpSpec) -> str:
        return spec.params["process"].describe()

    def state_fingerprint(self, spec: OpSpec) -> dict[str, Any]:
        return {
            **spec.params["process"].fingerprint(),
            "max_parallelism": spec.params["max_parallelism"],
        }


# ---------------------------------------------------------------------- the table

#: Kind name -> kind. A new operator kind is one line here (docs/operators.md).
KINDS: dict[str, OperatorKind] = {
    kind.name: kind
    for kind in (
        Source(),
        Filter(),
        Select(),
        WithColumns(),
        MapBatches(),
        Union(),
        Watermark(),
        Agg(),
        Window(),
        Process(),
        SideOutput(),
        Sink(),
    )
}


def kind_of(name: str) -> OperatorKind:
    """The kind called ``name`` in :data:`KINDS`; a PlanError naming the known kinds if none.

    Parameters
    ----------
    name
        A node's ``kind``.
    """
    found = KINDS.get(name)
    if found is None:
        msg = f"internal: unknown operator kind {name!r}; known kinds: {sorted(KINDS)}"
        raise PlanError(msg)
    return found


def derived_ids(name: str) -> tuple[str, ...]:
    """The id suffixes the planner derives from a node of kind ``name``.

    Parameters
    ----------
    name
        A kind's name, or any other id base (a source's kind, ``"x.collect"``): then none.
    """
    found = KINDS.get(name)
    return found.derived_ids if found is not None else ()


# ---------------------------------------------------------------------- side outputs


def check_side_output(parent: Node, side: str) -> None:
    """Raise a PlanError unless ``parent`` has a side output called ``side`` (no schema needed).

    Parameters
    ----------
    parent
        The node whose side output is taken.
    side
        The side output's name (``"malformed"``, ``"late"``, a process function's).
    """
    names = kind_of(parent.kind).side_outputs(parent)
    if side in names:
        return
    if side == MALFORMED:
        msg = (
            f"side output 'malformed' exists on sources only; {parent.id!r} is a {parent.kind}; "
            f"call .side_output('malformed') on the stream a read_* method returned"
        )
        raise PlanError(msg)
    msg = f"operator {parent.id!r} ({parent.kind}) has no side output {side!r}; it has: {names or 'none'}"
    raise PlanError(msg)


def side_output_schema(graph: Schemas, node: Node) -> pl.Schema:
    """The schema of side-output node ``node``: side output ``node.side`` of its input.

    Parameters
    ----------
    graph
        The graph.
    node
        A node of kind ``side_output``.
    """
    parent = node.inputs[0]
    assert node.side is not None
    check_side_output(parent, node.side)
    return kind_of(parent.kind).side_output_schema(graph, parent, node.side)
