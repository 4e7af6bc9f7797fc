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

import html
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import polars as pl

from arrowflow._foundation.keygroups import DEFAULT_MAX_PARALLELISM
from arrowflow._graph.graph import Graph
from arrowflow._graph.kinds import KINDS, kind_of
from arrowflow._graph.nodes import Node, describe_expr, fingerprint_of, uses_all_columns
from arrowflow._graph.operator_kind import ALL, Columns, OperatorKind
from arrowflow._graph.physical import MAIN, Edge, OpSpec
from arrowflow.errors import PlanError

#: How often a run commits over an unbounded source when nothing else says (seconds).
DEFAULT_EMIT_S = 1.0

__all__ = [
    "DEFAULT_EMIT_S",
    "MAIN",
    "PHYSICAL",
    "Edge",
    "OpSpec",
    "Plan",
    "bound_columns",
    "build_plan",
    "describe_op",
    "kind_named",
    "set_html_renderer",
    "split_watermark_inputs",
]


class Chain(OperatorKind):
    """Physical only: stateless steps fused into one operator (each logical stateless kind plans
    into one step, see :meth:`arrowflow._graph.kinds.Planning.chain`)."""

    name = "chain"
    operator = "arrowflow._runtime.operators:ChainOp"

    def explain(self, spec: OpSpec) -> str:
        parts = []
        for step in spec.params["steps"]:
            if step["kind"] == "map_batches":
                parts.append(f"{step['id']}: map_batches({getattr(step['fn'], '__name__', 'fn')})")
            else:
                exprs = step.get("predicates") or step.get("exprs")
                parts.append(
                    f"{step['id']}: {step['kind']}({', '.join(describe_expr(e) for e in exprs)})"
                )
        return " | ".join(parts)


class Exchange(OperatorKind):
    """Physical only: the hash exchange in front of a keyed operator; rows move to the owner of
    their key group."""

    name = "exchange"
    category = "exchange"
    operator = "arrowflow._runtime.operators:ExchangeOp"

    def explain(self, spec: OpSpec) -> str:
        params = spec.params
        return f"hash partition by {params['keys']} into {params.get('max_parallelism', DEFAULT_MAX_PARALLELISM)} key groups"


#: The kinds of physical operators that no logical node has (the others are in ``KINDS``).
PHYSICAL: dict[str, OperatorKind] = {kind.name: kind for kind in (Chain(), Exchange())}


def kind_named(name: str) -> OperatorKind | None:
    """The kind of a logical node or physical operator called ``name``, if there is one.

    Parameters
    ----------
    name
        A key of :data:`arrowflow._graph.kinds.KINDS` or of :data:`PHYSICAL`.
    """
    return KINDS.get(name) or PHYSICAL.get(name)


def _physical(spec: OpSpec) -> OperatorKind:
    found = kind_named(spec.kind)
    if found is None:
        msg = f"internal: unknown physical operator kind {spec.kind!r} ({spec.id!r})"
        raise PlanError(msg)
    return found


_html_renderer: Callable[[Plan], str] | None = None


def set_html_renderer(render: Callable[[Plan], str]) -> None:
    """Show plans in notebooks with ``render``.

    The facade's display module calls this once, when it is imported (the planner does not
    import the facade); until then ``Plan._repr_html_`` shows the ``explain()`` text.

    Parameters
    ----------
    render
        Plan -> a self-contained HTML fragment; called per display, must not raise.
    """
    global _html_renderer
    _html_renderer = render


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
            entry = _physical(op).operator_fingerprint(op)
            if entry is not None:
                prints[op.id] = fingerprint_of(entry)
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

    def emission_interval(self, *, checkpoint_every: Any) -> float | None:
        """Seconds between the commits a run makes to emit output (docs/checkpoints.md,
        "Emission"): the shortest ``emit_every`` of the flow's operators and sinks; without
        one, :data:`DEFAULT_EMIT_S` over an unbounded source when the run has no checkpoint
        interval (else its output would never show); otherwise None (commits at checkpoints
        and at the end only)."""
        own = [op.params.get("emit_every_s") for op in self.ops]
        own += [op.params["sink"].emit_every_s for op in self.ops if op.kind == "sink"]
        chosen = [float(every) for every in own if every is not None]
        if chosen:
            return min(chosen)
        if not self.bounded and checkpoint_every is None:
            return DEFAULT_EMIT_S
        return None

    def _repr_html_(self) -> str:
        if _html_renderer is None:
            return f"<pre>{html.escape(self.explain())}</pre>"
        return _html_renderer(self)

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
    """One line on what physical operator ``spec`` does (its kind's ``explain``)."""
    return _physical(spec).explain(spec)


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


def _required_columns(order: list[Node], outputs: list[Node]) -> dict[int, Columns]:
    """For each node, the columns of its output that something downstream reads."""
    required: dict[int, Columns] = {id(n): set() for n in order}
    readers: dict[int, list[Node]] = {id(n): [] for n in order}
    for node in order:
        for parent in node.inputs:
            readers[id(parent)].append(node)

    def need(node: Node, columns: Columns) -> None:
        current = required[id(node)]
        if current is ALL:
            return
        required[id(node)] = ALL if columns is ALL else current | columns

    for node in outputs:
        required[id(node)] = ALL
    for node in reversed(order):
        wanted = kind_of(node.kind).input_columns(node, required[id(node)], readers[id(node)])
        for parent, columns in zip(node.inputs, wanted, strict=True):
            need(parent, columns)
    return required


class _Planning:
    """The state of one :func:`build_plan` walk: what operator kinds plan through
    (:class:`arrowflow._graph.kinds.Planning`)."""

    def __init__(
        self, graph: Graph, order: list[Node], outputs: list[Node], max_parallelism: int
    ) -> None:
        self.graph = graph
        self.max_parallelism = max_parallelism
        self.ops: list[OpSpec] = []
        self.edge_of: dict[int, Edge] = {}  # logical node -> edge that carries its output
        self.chain_of: dict[int, OpSpec] = {}  # logical stateless node -> the chain it ended in
        self.consumers: dict[int, int] = {}
        for node in order:
            for parent in node.inputs:
                self.consumers[id(parent)] = self.consumers.get(id(parent), 0) + 1
        self.columns = _required_columns(order, outputs)

    def schema(self, node: Node) -> pl.Schema:
        return self.graph.schema_of(node)

    def required(self, node: Node) -> Columns:
        return self.columns[id(node)]

    def edge(self, node: Node) -> Edge:
        return self.edge_of[id(node)]

    def add(self, node: Node, spec: OpSpec) -> None:
        self.ops.append(spec)
        self.edge_of[id(node)] = Edge(spec.id)

    def route(self, node: Node, edge: Edge) -> None:
        self.edge_of[id(node)] = edge

    def chain(self, node: Node, step: dict[str, Any]) -> None:
        parent = node.inputs[0]
        schema = self.schema(node)
        previous = self.chain_of.get(id(parent))
        fusable = (
            previous is not None
            and self.consumers.get(id(parent), 0) == 1
            and self.edge_of[id(parent)] == Edge(previous.id)
        )
        if fusable:
            assert previous is not None
            previous.params["steps"].append(step)
            previous.steps.append(node.id)
            previous.schema = schema
            self.chain_of[id(node)] = previous
        else:
            kind = PHYSICAL["chain"]
            spec = OpSpec(
                node.id,
                kind.name,
                [self.edge_of[id(parent)]],
                schema,
                [node.id],
                {"steps": [step]},
                operator=kind.operator or "",
            )
            self.ops.append(spec)
            self.chain_of[id(node)] = spec
        self.edge_of[id(node)] = Edge(self.chain_of[id(node)].id)

    def exchange(
        self, node: Node, keys: list[str], *, combiner: Any = None, schema: Any = None
    ) -> Edge:
        kind = PHYSICAL["exchange"]
        params: dict[str, Any] = {"keys": keys, "max_parallelism": self.max_parallelism}
        if combiner is not None:
            params["combiner"] = combiner
        spec = OpSpec(
            f"{node.id}.exchange",
            kind.name,
            [self.edge_of[id(node.inputs[0])]],
            schema if combiner is not None else self.schema(node.inputs[0]),
            [],
            params,
            operator=kind.operator or "",
        )
        self.ops.append(spec)
        return Edge(spec.id)


def build_plan(
    flow: Graph, outputs: list[Node], *, max_parallelism: int = DEFAULT_MAX_PARALLELISM
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
    planning = _Planning(flow, order, outputs, max_parallelism)
    for node in order:
        flow.schema_of(node)  # raises SchemaError / PlanError with the operator id
        kind_of(node.kind).plan(node, planning)
    ops = planning.ops

    ids = [op.id for op in ops]
    if len(set(ids)) != len(ids):
        twice = sorted({i for i in ids if ids.count(i) > 1})
        msg = f"flow {flow.name!r}: several physical operators are called {twice}; rename the operator(s) with name="
        raise PlanError(msg)
    entries = [_physical(op).fingerprint(op) for op in ops]
    fingerprint = fingerprint_of([entry for entry in entries if entry is not None])
    return Plan(flow.name, ops, [n.id for n in outputs], fingerprint)


# ---------------------------------------------------------------------- per-split watermarks
# (the design is in arrowflow._foundation.watermarks)


def split_watermark_inputs(plan: Plan) -> dict[str, dict[str, bool]]:
    """Watermark operators that can keep per-split watermarks, with their upstream sources.

    For each watermark operator whose input reaches sources only through stateless chains and
    unions on their main ports (so a source's batch arrives synchronously, while the worker
    knows its split), the sources it reads -> True when the event-time column reaches it
    unchanged (only filters, and ``with_columns`` that do not write the column, in between),
    so that a source's statistics of that column bound what the operator sees.
    """
    by_id = {op.id: op for op in plan.ops}

    def keeps(steps: list[dict[str, Any]], column: str) -> bool:
        for step in steps:
            if step["kind"] == "filter":
                continue
            if step["kind"] != "with_columns":
                return False
            for expr in step["exprs"]:
                if uses_all_columns(expr) or expr.meta.output_name(raise_if_undetermined=False) in (
                    None,
                    column,
                ):
                    return False
        return True

    found: dict[str, dict[str, bool]] = {}
    for spec in plan.ops:
        if spec.kind != "watermark":
            continue
        column = spec.params["column"]
        sources: dict[str, bool] = {}
        pending = [(edge, True) for edge in spec.inputs]
        direct = True
        while pending and direct:
            edge, unchanged = pending.pop()
            op = by_id[edge.op]
            if edge.port != MAIN:
                direct = False
            elif op.kind == "source":
                sources[op.id] = sources.get(op.id, True) and unchanged
            elif op.kind == "union":
                pending.extend((each, unchanged) for each in op.inputs)
            elif op.kind == "chain":
                still = unchanged and keeps(op.params["steps"], column)
                pending.extend((each, still) for each in op.inputs)
            else:
                direct = False
        if direct and sources:
            found[spec.id] = sources
    return found


def bound_columns(plan: Plan) -> dict[str, str]:
    """Source id -> the event-time column whose lower bounds its splits should report: the
    column of every per-split watermark operator downstream of it, when they agree and the
    column reaches each of them unchanged."""
    columns: dict[str, set[str | None]] = {}
    by_id = {op.id: op for op in plan.ops}
    for op_id, sources in split_watermark_inputs(plan).items():
        column = by_id[op_id].params["column"]
        for source_id, unchanged in sources.items():
            columns.setdefault(source_id, set()).add(column if unchanged else None)
    return {
        source_id: name
        for source_id, names in columns.items()
        if len(names) == 1
        for name in names
        if name is not None
    }
