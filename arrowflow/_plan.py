"""From the flow graph to a physical plan.

The planner walks back from the requested outputs (sinks) and:

- fuses chains of stateless operators (filter, select, with_columns, map_batches) into one
  ``chain`` operator, so a batch passes through them with no hand-off (Flink's chaining);
- inserts a hash ``exchange`` before every keyed operator: rows move to the worker that owns
  their key group;
- computes every output schema before any data moves, so a wrong column fails here;
- pushes column projection into sources: a source reads only the columns something
  downstream uses;
- derives a fingerprint from the stateful operators and their schemas, which checkpoints
  record so a restore onto a changed flow can name what changed.

The plan is plain data (dataclasses holding polars expressions, sources, sinks and user
functions) and is serialized once per worker with cloudpickle.

Worked example::

    read_parquet -> filter -> with_columns -> key_by(user_id).agg(...) -> write_parquet

becomes ``source(read_parquet) -> chain(filter, with_columns) -> exchange(user_id) ->
agg -> sink(write_parquet)``: five physical operators, one exchange.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import polars as pl

from arrowflow._api.flow import (
    STATELESS,
    Flow,
    Node,
    describe_expr,
    fingerprint_of,
    uses_all_columns,
)
from arrowflow._foundation.keygroups import DEFAULT_MAX_PARALLELISM
from arrowflow.errors import PlanError

MAIN = "main"


@dataclass(frozen=True)
class Edge:
    """Input edge of an operator: output ``port`` (``main`` or a side-output name) of ``op``."""

    op: str
    port: str = MAIN


@dataclass
class OpSpec:
    """One physical operator. ``steps`` are the logical operators fused into it."""

    id: str
    kind: str  # source | chain | union | exchange | agg | process | sink
    inputs: list[Edge]
    schema: pl.Schema
    steps: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def stateful(self) -> bool:
        return self.kind in ("agg", "window", "process")


@dataclass
class Plan:
    flow_name: str
    ops: list[OpSpec]  # in topological order
    outputs: list[str]  # ids of the sink operators
    fingerprint: str

    @property
    def operator_fingerprints(self) -> dict[str, str]:
        """Per operator that a checkpoint depends on: its fingerprint. Sources and sinks count by
        id and kind only (new columns in the input files don't block a restore)."""
        prints = {}
        for op in self.ops:
            if op.stateful:
                prints[op.id] = fingerprint_of(_fingerprint_entry(op))
            elif op.kind == "sink" and op.params["sink"].transient:
                continue  # a live-results tap: not part of what a checkpoint restores
            elif op.kind in ("source", "sink"):
                prints[op.id] = fingerprint_of([op.id, op.kind])
        return prints

    def op(self, op_id: str) -> OpSpec:
        for spec in self.ops:
            if spec.id == op_id:
                return spec
        raise KeyError(op_id)

    def consumers(self, op_id: str) -> list[tuple[OpSpec, int, str]]:
        """(consumer, input index, port) for every edge leaving ``op_id``."""
        found = []
        for spec in self.ops:
            for index, edge in enumerate(spec.inputs):
                if edge.op == op_id:
                    found.append((spec, index, edge.port))
        return found

    @property
    def sources(self) -> list[OpSpec]:
        return [op for op in self.ops if op.kind == "source"]

    @property
    def bounded(self) -> bool:
        return all(op.params["source"].bounded for op in self.sources)

    def _repr_html_(self) -> str:
        from arrowflow._api.display import plan_html

        return plan_html(self)

    def explain(self) -> str:
        lines = [
            f"plan of flow {self.flow_name!r} (fingerprint {self.fingerprint}), {len(self.ops)} operators:"
        ]
        for spec in self.ops:
            inputs = ", ".join(e.op if e.port == MAIN else f"{e.op}[{e.port}]" for e in spec.inputs)
            lines.append(f"  {spec.kind:<8} {spec.id}{'  <- ' + inputs if inputs else ''}")
            lines.append(f"           {describe_op(spec)}")
            cols = ", ".join(f"{k}: {v}" for k, v in spec.schema.items())
            lines.append(f"           schema {{{cols}}}")
        return "\n".join(lines)


def describe_op(spec: OpSpec) -> str:
    params = spec.params
    if spec.kind == "source":
        text = params["source"].describe()
        if params.get("columns") is not None:
            text += f"; reads columns {params['columns']}"
        return text
    if spec.kind == "chain":
        parts = []
        for step in params["steps"]:
            if step["kind"] == "map_batches":
                parts.append(f"{step['id']}: map_batches({getattr(step['fn'], '__name__', 'fn')})")
            else:
                exprs = step.get("predicates") or step.get("exprs")
                parts.append(
                    f"{step['id']}: {step['kind']}({', '.join(describe_expr(e) for e in exprs)})"
                )
        return " | ".join(parts)
    if spec.kind == "exchange":
        return f"hash partition by {params['keys']} into {params.get('max_parallelism', DEFAULT_MAX_PARALLELISM)} key groups"
    if spec.kind == "agg":
        aggs = ", ".join(f"{k}={describe_expr(v)}" for k, v in params["aggs"].items())
        return f"keyed running aggregation by {params['keys']}: {aggs}"
    if spec.kind == "watermark":
        return f"event time {params['column']!r}, watermark = max seen - {params['delay_ms']}ms"
    if spec.kind == "window":
        aggs = ", ".join(f"{k}={describe_expr(v)}" for k, v in params["aggs"].items())
        return f"{params['window'].spec.describe()} windows by {params['keys']}: {aggs}"
    if spec.kind == "process":
        return params["process"].describe()
    if spec.kind == "sink":
        return params["sink"].describe()
    if spec.kind == "union":
        return f"union of {len(spec.inputs)} inputs"
    return spec.kind


def _needed(outputs: list[Node]) -> list[Node]:
    """Nodes the outputs depend on, in topological order."""
    order: list[Node] = []
    seen: set[int] = set()

    def visit(node: Node) -> None:
        if id(node) in seen:
            return
        seen.add(id(node))
        for parent in node.inputs:
            visit(parent)
        order.append(node)

    for node in outputs:
        visit(node)
    return order


ALL = None  # "every column" in the projection analysis


def _roots(exprs: list[pl.Expr]) -> set[str] | None:
    names: set[str] = set()
    for expr in exprs:
        if uses_all_columns(expr):
            return ALL
        names.update(expr.meta.root_names())
    return names


def _required_columns(
    flow: Flow, order: list[Node], outputs: list[Node]
) -> dict[int, set[str] | None]:
    """For each node, the columns of its output that something downstream reads."""
    required: dict[int, set[str] | None] = {id(n): set() for n in order}

    def need(node: Node, columns: set[str] | None) -> None:
        current = required[id(node)]
        if current is ALL:
            return
        required[id(node)] = ALL if columns is ALL else current | columns

    for node in outputs:
        required[id(node)] = ALL
    for node in reversed(order):
        out = required[id(node)]
        kind, params = node.kind, node.params
        if kind == "source":
            continue
        parent = node.inputs[0]
        if kind == "sink":
            need(parent, ALL)
        elif kind == "filter":
            roots = _roots(params["predicates"])
            need(parent, ALL if out is ALL or roots is ALL else out | roots)
        elif kind == "with_columns":
            roots = _roots(params["exprs"])
            produced = {e.meta.output_name(raise_if_undetermined=False) for e in params["exprs"]}
            need(parent, ALL if out is ALL or roots is ALL else (out - produced) | roots)
        elif kind == "select":
            need(parent, _roots(params["exprs"]))
        elif kind in ("map_batches", "process"):  # a function may read any column
            need(parent, ALL)
        elif kind == "union":
            for each in node.inputs:
                need(each, out)
        elif kind == "agg":
            roots = _roots(list(params["aggs"].values()))
            need(parent, ALL if roots is ALL else roots | set(params["keys"]))
        elif kind == "watermark":
            need(parent, ALL if out is ALL else out | {params["column"]})
        elif kind == "window":
            roots = _roots(list(params["aggs"].values()))
            late_read = any(n.kind == "side_output" and n.inputs[0] is node for n in order)
            need(
                parent,
                ALL
                if roots is ALL or late_read
                else roots | set(params["keys"]) | {params["time_column"]},
            )
        elif kind == "side_output":
            if node.side != "malformed":
                need(parent, ALL)
        else:
            need(parent, ALL)
    return required


def build_plan(
    flow: Flow, outputs: list[Node], *, max_parallelism: int = DEFAULT_MAX_PARALLELISM
) -> Plan:
    """Turn the part of ``flow`` that ``outputs`` need into a physical plan."""
    if not outputs:
        msg = f"flow {flow.name!r}: nothing to run; add a sink or collect a stream"
        raise PlanError(msg)
    if (
        isinstance(max_parallelism, bool)
        or not isinstance(max_parallelism, int)
        or max_parallelism < 1
    ):
        msg = f"max_parallelism must be a positive number of key groups (default {DEFAULT_MAX_PARALLELISM}), got {max_parallelism!r}"
        raise PlanError(msg)
    order = _needed(outputs)
    consumers: dict[int, int] = {}
    for node in order:
        for parent in node.inputs:
            consumers[id(parent)] = consumers.get(id(parent), 0) + 1
    required = _required_columns(flow, order, outputs)

    ops: list[OpSpec] = []
    edge_of: dict[int, Edge] = {}  # logical node -> edge that carries its output
    chain_of: dict[int, OpSpec] = {}  # logical stateless node -> the chain op it ended in

    for node in order:
        kind, params = node.kind, node.params
        schema = flow.schema_of(node)  # raises SchemaError / PlanError with the operator id
        if kind == "source":
            source = params["source"]
            columns = required[id(node)]
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
            spec = OpSpec(
                node.id,
                "source",
                [],
                schema,
                [node.id],
                {"source": source, "columns": read_columns},
            )
            ops.append(spec)
            edge_of[id(node)] = Edge(spec.id)
        elif kind == "side_output":
            parent_edge = edge_of[id(node.inputs[0])]
            edge_of[id(node)] = Edge(parent_edge.op, node.side or MAIN)
        elif kind in STATELESS:
            parent = node.inputs[0]
            step = {
                "id": node.id,
                "kind": kind,
                **{k: v for k, v in params.items() if k != "schema"},
            }
            if kind == "map_batches":
                step["schema"] = schema
            previous = chain_of.get(id(parent))
            fusable = (
                previous is not None
                and consumers.get(id(parent), 0) == 1
                and edge_of[id(parent)] == Edge(previous.id)
            )
            if fusable:
                assert previous is not None
                previous.params["steps"].append(step)
                previous.steps.append(node.id)
                previous.schema = schema
                chain_of[id(node)] = previous
            else:
                spec = OpSpec(
                    node.id, "chain", [edge_of[id(parent)]], schema, [node.id], {"steps": [step]}
                )
                ops.append(spec)
                chain_of[id(node)] = spec
            edge_of[id(node)] = Edge(chain_of[id(node)].id)
        elif kind == "union":
            spec = OpSpec(
                node.id, "union", [edge_of[id(p)] for p in node.inputs], schema, [node.id]
            )
            ops.append(spec)
            edge_of[id(node)] = Edge(spec.id)
        elif kind in ("agg", "process", "window"):
            # Keyed operators: a hash exchange, then the operator on the exchange's output.
            parent = node.inputs[0]
            upstream = flow.schema_of(parent)
            exchange = _exchange(node, edge_of[id(parent)], upstream, max_parallelism)
            keyed: dict[str, Any] = {"keys": params["keys"], "max_parallelism": max_parallelism}
            if kind == "agg":
                keyed.update(aggs=params["aggs"], agg=params["agg"](upstream))
            elif kind == "process":
                function = params["process"].bind(upstream, schema, max_parallelism)
                keyed.update(process=function, fn=function.fn)
            else:
                keyed.update(aggs=params["aggs"], window=params["window"](upstream))
            spec = OpSpec(node.id, kind, [Edge(exchange.id)], schema, [node.id], keyed)
            ops.extend([exchange, spec])
            edge_of[id(node)] = Edge(spec.id)
        elif kind == "watermark":
            spec = OpSpec(
                node.id,
                "watermark",
                [edge_of[id(node.inputs[0])]],
                schema,
                [node.id],
                {
                    "column": params["column"],
                    "delay_ms": params["delay_ms"],
                    "idle_timeout_ms": params["idle_timeout_ms"],
                    "dtype": schema[params["column"]],
                },
            )
            ops.append(spec)
            edge_of[id(node)] = Edge(spec.id)
        elif kind == "sink":
            spec = OpSpec(
                node.id,
                "sink",
                [edge_of[id(node.inputs[0])]],
                schema,
                [node.id],
                {"sink": params["sink"]},
            )
            ops.append(spec)
            edge_of[id(node)] = Edge(spec.id)
        else:
            msg = f"internal: the planner does not know operator kind {kind!r} ({node.id!r})"
            raise PlanError(msg)

    ids = [op.id for op in ops]
    if len(set(ids)) != len(ids):
        twice = sorted({i for i in ids if ids.count(i) > 1})
        msg = f"flow {flow.name!r}: several physical operators are called {twice}; rename the operator(s) with name="
        raise PlanError(msg)
    fingerprint = fingerprint_of(
        [_fingerprint_entry(op) for op in ops if op.stateful or op.kind in ("source", "sink")]
    )
    return Plan(flow.name, ops, [n.id for n in outputs], fingerprint)


def _exchange(node: Node, upstream: Edge, schema: pl.Schema, max_parallelism: int) -> OpSpec:
    """The hash exchange in front of a keyed operator: rows move to the owner of their key group."""
    return OpSpec(
        f"{node.id}.exchange",
        "exchange",
        [upstream],
        schema,
        [],
        {"keys": node.params["keys"], "max_parallelism": max_parallelism},
    )


def _fingerprint_entry(op: OpSpec) -> list[Any]:
    """What a checkpoint's state depends on. Stateless operators are left out on purpose:
    changing a filter between runs is fine (as in Flink), changing an aggregation is not."""
    entry: list[Any] = [op.id, op.kind, op.steps, {k: str(v) for k, v in op.schema.items()}]
    if op.kind == "agg":
        entry.append(
            {
                "keys": op.params["keys"],
                "aggs": {name: str(expr) for name, expr in op.params["aggs"].items()},
                "state": {k: str(v) for k, v in op.params["agg"].state_schema.items()},
                "max_parallelism": op.params["max_parallelism"],
            }
        )
    if op.kind == "window":
        entry.append(
            {**op.params["window"].fingerprint(), "max_parallelism": op.params["max_parallelism"]}
        )
    elif op.kind == "process":
        entry.append(
            {**op.params["process"].fingerprint(), "max_parallelism": op.params["max_parallelism"]}
        )
    return entry
