"""The base of operator kinds (:class:`OperatorKind`), and what its hooks may ask of the graph
and of the planner (:class:`Schemas`, :class:`Planning`).

The kinds themselves, and the one table of them, are in :mod:`arrowflow._graph.kinds`;
docs/operators.md walks through adding one.
"""

from __future__ import annotations

from typing import Any, ClassVar, Final, Protocol

import polars as pl

from arrowflow._graph.nodes import Node, describe_expr, uses_all_columns
from arrowflow._graph.physical import Edge, OpSpec
from arrowflow.errors import PlanError

#: Columns of an operator's output that something downstream reads; ``ALL`` (None): any.
Columns = set[str] | None
ALL: Final = None


class Schemas(Protocol):
    """What a kind may ask of the graph while it computes a schema (a ``Graph`` is one)."""

    def schema_of(self, node: Node) -> pl.Schema: ...

    def schema_is_static(self, node: Node) -> bool: ...


class Planning(Protocol):
    """What a kind may ask of the planner in :meth:`OperatorKind.plan` (see :mod:`arrowflow._plan`)."""

    @property
    def max_parallelism(self) -> int:
        """The number of key groups of the plan."""
        ...

    def schema(self, node: Node) -> pl.Schema:
        """The output schema of ``node`` (any node of the plan)."""
        ...

    def required(self, node: Node) -> Columns:
        """The columns of ``node``'s output that something downstream reads."""
        ...

    def edge(self, node: Node) -> Edge:
        """The edge that carries ``node``'s output (``node`` is planned already)."""
        ...

    def add(self, node: Node, spec: OpSpec) -> None:
        """Append ``spec`` to the plan; ``node``'s output is its main output."""
        ...

    def route(self, node: Node, edge: Edge) -> None:
        """``node`` has no operator of its own: its output is ``edge``."""
        ...

    def chain(self, node: Node, step: dict[str, Any]) -> None:
        """Run ``step`` in a ``chain``, fused with the stateless steps before it when the
        input is one and nothing else reads it. A step is ``{"id", "kind", ...}`` with kind
        ``filter`` (``predicates``), ``select``/``with_columns`` (``exprs``) or
        ``map_batches`` (``fn``, ``schema``): what :class:`arrowflow._runtime.operators.ChainOp`
        runs."""
        ...

    def exchange(
        self, node: Node, keys: list[str], *, combiner: Any = None, schema: Any = None
    ) -> Edge:
        """Append the hash exchange by ``keys`` in front of ``node`` (its id ``<id>.exchange``,
        which :attr:`OperatorKind.derived_ids` must reserve); the edge out of it. With a
        ``combiner`` (``counted_partial(batch)``) the exchange sends what it returns, of
        ``schema``, instead of its input rows."""
        ...


class OperatorKind:
    """One kind of logical operator, and of the physical operator it plans into.

    Subclass it, set :attr:`name` and the class attributes, override the hooks the kind
    needs, and add one instance to :data:`arrowflow._graph.kinds.KINDS` (docs/operators.md).
    A kind is stateless: one instance serves every node of its kind.

    Every hook runs in the process that builds and plans the flow, once per node (or per
    physical operator) and per plan, never in a worker and never per batch. A hook must not
    change the node it gets, and does no I/O beyond reading a source's schema.
    """

    #: The name nodes of this kind carry in ``node.kind`` (and physical operators in ``spec.kind``).
    name: ClassVar[str] = ""
    #: Colour family in the notebook display: source, stateless, exchange, keyed or sink.
    category: ClassVar[str] = "stateless"
    #: Its physical operator keeps state that checkpoints restore: its parameters are part of
    #: the plan's fingerprint, and a restore onto a plan that changed them is refused.
    stateful: ClassVar[bool] = False
    #: ``"module:object"`` of its physical operator: an ``Operator`` subclass, or a function
    #: returning one, called by the worker with the spec and the worker resources its
    #: parameters name (:func:`arrowflow._runtime.worker.build_operator`). None: the kind
    #: plans into other kinds' operators (a chain step, a side output's edge).
    operator: ClassVar[str | None] = None
    #: Suffixes of ids the planner derives from this node's id (``".exchange"``): the graph
    #: keeps them free, so that no two physical operators share an id.
    derived_ids: ClassVar[tuple[str, ...]] = ()

    # ------------------------------------------------------------------ graph model
    def output_schema(self, graph: Schemas, node: Node) -> pl.Schema:
        """The schema of ``node``'s output.

        Called once per node (the graph keeps the result on the node): as the node is added
        when :meth:`schema_is_static`, else when the flow is planned or displayed.

        Parameters
        ----------
        graph
            The graph: ``graph.schema_of(parent)`` gives an input's schema.
        node
            The node, with its ``params`` as the facade set them.

        Raises
        ------
        SchemaError, PlanError
            Naming the operator (``node.id``) and the column, and the likely fix.
        """
        msg = f"internal: no schema rule for operator kind {node.kind!r}"
        raise PlanError(msg)

    def schema_is_static(self, graph: Schemas, node: Node) -> bool:
        """True when :meth:`output_schema` needs no I/O; then the node is checked as it is
        added, so a wrong column fails on the line that wrote it. Default: every input is
        static. Called as the node is added, and by ``key_by``.

        Parameters
        ----------
        graph
            The graph: ``graph.schema_is_static(parent)`` for an input.
        node
            The node.
        """
        return all(graph.schema_is_static(parent) for parent in node.inputs)

    def side_outputs(self, node: Node) -> list[str]:
        """The names of ``node``'s side outputs. Default: the keys of
        ``params["side_outputs"]``. Called as ``stream.side_output(name)`` is taken.

        Parameters
        ----------
        node
            The node whose side outputs are asked for.
        """
        return sorted(node.params.get("side_outputs", {}))

    def side_output_schema(self, graph: Schemas, node: Node, side: str) -> pl.Schema:
        """The schema of side output ``side`` of ``node``. Default: the function
        ``params["side_outputs"][side]`` applied to the node's output schema. Called once per
        side-output node.

        Parameters
        ----------
        graph
            The graph.
        node
            The node that has the side output.
        side
            One of :meth:`side_outputs`.
        """
        return node.params["side_outputs"][side](graph.schema_of(node))

    # ------------------------------------------------------------------ planner
    def input_columns(self, node: Node, needed: Columns, readers: list[Node]) -> list[Columns]:
        """The columns ``node`` needs from each of its inputs: the planner reads only those
        from the sources. Called once per node and plan, from the outputs back to the sources.
        Default: ALL from every input, which is always correct.

        Parameters
        ----------
        node
            The node.
        needed
            The columns of ``node``'s own output that something downstream reads (ALL: any).
        readers
            The nodes of the plan that read ``node``'s output (its main output or a side one).

        Returns
        -------
        list
            One entry per input, in the order of ``node.inputs``: a set of column names, or
            ALL; an empty set when the node needs nothing of that input.
        """
        return [ALL for _ in node.inputs]

    def plan(self, node: Node, planning: Planning) -> None:
        """Plan ``node`` into physical operators. Called once per node and plan, in topological
        order (its inputs are planned, its schema computed).

        Parameters
        ----------
        node
            The node.
        planning
            The planner: :meth:`Planning.add` an :class:`OpSpec` (built with :meth:`spec`),
            :meth:`Planning.chain` a step, :meth:`Planning.exchange` in front of a keyed
            operator, or :meth:`Planning.route` the node's output to an existing edge.
        """
        msg = f"internal: the planner does not know operator kind {node.kind!r} ({node.id!r})"
        raise PlanError(msg)

    def spec(
        self, node: Node, inputs: list[Edge], schema: pl.Schema, params: dict[str, Any]
    ) -> OpSpec:
        """The physical operator of this kind for ``node``, for :meth:`plan` to add.

        Parameters
        ----------
        node
            The node it runs (its id is the operator's).
        inputs
            The edges it reads, from :meth:`Planning.edge` or :meth:`Planning.exchange`.
        schema
            Its output schema.
        params
            What its physical operator reads from ``spec.params``; shipped to every worker
            with cloudpickle.
        """
        return OpSpec(
            node.id,
            self.name,
            inputs,
            schema,
            [node.id],
            params,
            operator=self.operator or "",
            stateful=self.stateful,
        )

    # ------------------------------------------------------------------ explain, display, checkpoints
    def describe(self, node: Node) -> str:
        """One line on what the logical operator does, for the notebook display. Called per
        display; an exception shows the kind's name instead. Default: the kind's name.

        Parameters
        ----------
        node
            The node.
        """
        return node.kind

    def explain(self, spec: OpSpec) -> str:
        """One line on what the physical operator does, for ``explain()`` and the display of
        plans. Called per display. Default: the kind's name.

        Parameters
        ----------
        spec
            The physical operator, as :meth:`plan` added it.
        """
        return spec.kind

    def fingerprint(self, spec: OpSpec) -> list[Any] | None:
        """What a checkpoint depends on in this physical operator, as JSON-able data, for the
        plan's fingerprint; None (the default): not part of it. Stateless operators are left
        out on purpose: changing a filter between runs is fine (as in Flink), changing an
        aggregation is not. Called once per operator and plan. An existing kind's entry must
        never change: restores of existing checkpoints compare it.

        Parameters
        ----------
        spec
            The physical operator.
        """
        return None

    def operator_fingerprint(self, spec: OpSpec) -> list[Any] | None:
        """The operator's entry in a checkpoint's manifest, compared on restore to name what
        changed; None: not recorded. Default: :meth:`fingerprint`. Called when a checkpoint
        is written and on restore.

        Parameters
        ----------
        spec
            The physical operator.
        """
        return self.fingerprint(spec)


def state_entry(spec: OpSpec) -> list[Any]:
    """The start of a fingerprint entry: id, kind, the fused steps and the output schema."""
    return [spec.id, spec.kind, spec.steps, {k: str(v) for k, v in spec.schema.items()}]


def columns_read(exprs: list[pl.Expr]) -> Columns:
    """The columns ``exprs`` read (ALL when one of them may read columns it does not name)."""
    names: set[str] = set()
    for expr in exprs:
        if uses_all_columns(expr):
            return ALL
        names.update(expr.meta.root_names())
    return names


def aggs_text(aggs: dict[str, pl.Expr]) -> str:
    """``name=expression, ...`` for descriptions."""
    return ", ".join(f"{k}={describe_expr(v)}" for k, v in aggs.items())
