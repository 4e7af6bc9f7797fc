"""Adding an operator kind the way docs/operators.md says: a class, one line in the table.

Two small real kinds are defined here and registered in ``KINDS`` for the test only:

- ``drop_nulls`` (stateless): drops the rows with a null in the given columns, as polars'
  ``DataFrame.drop_nulls``. It plans into a ``filter`` step of a chain, so it runs fused
  with its neighbours and needs no runtime code;
- ``count_by`` (keyed, stateful): the number of rows per key, as polars'
  ``group_by(...).len()``. It plans into a hash exchange and the existing keyed aggregation
  operator, which the worker builds from the spec's ``"module:object"``: a pool worker, a
  fresh process that never saw this test's table, needs no registration.

Each runs in-process, with one and with two workers, against polars over the same input.
"""

from __future__ import annotations

from typing import Any

import polars as pl
import pytest

import arrowflow as af
from arrowflow._api.display import flow_html
from arrowflow._graph.aggregates import IncrementalAgg
from arrowflow._graph.kinds import KINDS, Keyed, Stateless
from arrowflow._graph.nodes import Node
from arrowflow._graph.operator_kind import ALL, Columns, Planning, Schemas
from arrowflow._graph.physical import OpSpec
from arrowflow.errors import PlanError, SchemaError
from arrowflow.testing import CollectingSink, assert_frame_equal_unordered, collect_all

DATA = pl.DataFrame(
    {
        "user": ["ann", "bob", None, "ann", "cy", "bob", "ann", None, "cy", "dée"],
        "amount": [10.0, None, 3.0, 5.0, None, 2.5, 1.0, 4.0, 7.0, None],
        "qty": [1, 2, 3, None, 5, 6, 7, 8, None, 10],
        "note": ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"],
    }
)


# ---------------------------------------------------------------------- the two kinds


class DropNulls(Stateless):
    """Drops the rows with a null in any column of ``subset`` (every column when None)."""

    name = "drop_nulls"

    def output_schema(self, graph: Schemas, node: Node) -> pl.Schema:
        upstream = graph.schema_of(node.inputs[0])
        missing = [c for c in node.params["subset"] or [] if c not in upstream]
        if missing:
            msg = f"operator {node.id!r}: drop_nulls() names no column {missing[0]!r}; the columns are {upstream.names()}"
            raise SchemaError(msg)
        return upstream

    def input_columns(self, node: Node, needed: Columns, readers: list[Node]) -> list[Columns]:
        subset = node.params["subset"]
        return [ALL if needed is ALL or subset is None else needed | set(subset)]

    def step(self, node: Node, planning: Planning) -> dict[str, Any]:
        subset = node.params["subset"]
        columns = pl.col(subset) if subset else pl.all()
        return {
            "id": node.id,
            "kind": "filter",
            "predicates": [pl.all_horizontal(columns.is_not_null())],
        }

    def describe(self, node: Node) -> str:
        return f"drop_nulls({node.params['subset'] or 'every column'})"


class CountBy(Keyed):
    """The number of rows per key so far, emitted as ``agg`` emits (a column ``n``)."""

    name = "count_by"
    operator = "arrowflow._runtime.operators:AggOp"

    def _agg(self, node: Node, upstream: pl.Schema) -> IncrementalAgg:
        return IncrementalAgg({"n": pl.len()}, node.params["keys"], upstream, operator_id=node.id)

    def output_schema(self, graph: Schemas, node: Node) -> pl.Schema:
        return self._agg(node, graph.schema_of(node.inputs[0])).output_schema

    def input_columns(self, node: Node, needed: Columns, readers: list[Node]) -> list[Columns]:
        return [set(node.params["keys"])]

    def keyed_params(
        self, node: Node, upstream: pl.Schema, schema: pl.Schema, max_parallelism: int
    ) -> dict[str, Any]:
        return {"agg": self._agg(node, upstream)}

    def describe(self, node: Node) -> str:
        return f"count by {node.params['keys']}"

    def explain(self, spec: OpSpec) -> str:
        return f"count by {spec.params['keys']}"

    def state_fingerprint(self, spec: OpSpec) -> dict[str, Any]:
        return {
            "keys": spec.params["keys"],
            "state": {k: str(v) for k, v in spec.params["agg"].state_schema.items()},
            "max_parallelism": spec.params["max_parallelism"],
        }


# The facade methods a Stream would get (docs/operators.md, step 3).
def drop_nulls(stream: af.Stream, *subset: str, name: str | None = None) -> af.Stream:
    return stream._then("drop_nulls", name, subset=list(subset) or None)


def count_by(stream: af.Stream, *keys: str, name: str | None = None) -> af.Stream:
    return stream._then("count_by", name, keys=list(keys))


@pytest.fixture(autouse=True)
def registered(monkeypatch: pytest.MonkeyPatch) -> None:
    """The table line of each kind, for this test only."""
    monkeypatch.setitem(KINDS, "drop_nulls", DropNulls())
    monkeypatch.setitem(KINDS, "count_by", CountBy())


# ---------------------------------------------------------------------- running them


def test_a_stateless_kind_runs_on_every_executor_as_polars_does(workers: int) -> None:
    flow = af.Flow("drop_nulls")
    src = flow.from_polars(DATA, splits=3)
    priced = src.with_columns(total=pl.col("amount") * pl.col("qty"))
    out = drop_nulls(priced, "user", "amount").select("user", "total")
    everywhere = drop_nulls(src, name="complete")
    got, got_all = collect_all(out, everywhere, workers=workers, batch_size=3)
    expected = (
        DATA.with_columns(total=pl.col("amount") * pl.col("qty"))
        .drop_nulls(["user", "amount"])
        .select("user", "total")
    )
    assert_frame_equal_unordered(got, expected)
    assert_frame_equal_unordered(got_all, DATA.drop_nulls())


def test_a_keyed_kind_runs_on_every_executor_as_polars_does(workers: int) -> None:
    flow = af.Flow("count_by")
    counts = count_by(flow.from_polars(DATA, splits=4).filter(pl.col("qty") > 1), "user")
    got = counts.collect(workers=workers, batch_size=2)
    expected = DATA.filter(pl.col("qty") > 1).group_by("user").len(name="n")
    assert_frame_equal_unordered(got, expected.with_columns(pl.col("n").cast(got["n"].dtype)))


# ---------------------------------------------------------------------- what the table gives them


def test_a_stateless_kind_is_fused_pruned_described_and_left_out_of_the_fingerprint() -> None:
    flow = af.Flow("fused")
    stream = drop_nulls(flow.from_polars(DATA).filter(pl.col("qty") > 1), "user")
    stream = stream.select("user", "qty")
    stream.write_to(CollectingSink())
    plan = flow.plan()
    assert [(op.kind, op.id) for op in plan.ops] == [
        ("source", "from_polars"),
        ("chain", "filter"),
        ("sink", "collecting"),
    ]
    assert plan.op("filter").steps == ["filter", "drop_nulls", "select"]
    assert plan.op("from_polars").params["columns"] == ["user", "qty"]  # note, amount: unread
    assert "drop_nulls: filter(" in plan.explain()
    assert "drop_nulls([&#x27;user&#x27;])" in flow_html(flow)
    assert set(plan.operator_fingerprints) == {"from_polars", "collecting"}

    without = af.Flow("fused")
    without.from_polars(DATA).filter(pl.col("qty") > 1).select("user", "qty").write_to(
        CollectingSink()
    )
    # Stateless, so like a filter it does not block restoring a checkpoint of the flow without it.
    assert without.plan().fingerprint == plan.fingerprint


def test_a_keyed_kind_gets_an_exchange_its_reserved_id_and_a_fingerprint() -> None:
    flow = af.Flow("keyed")
    src = flow.from_polars(DATA)
    count_by(src, "user").write_to(CollectingSink())
    plan = flow.plan()
    assert [(op.kind, op.id) for op in plan.ops] == [
        ("source", "from_polars"),
        ("exchange", "count_by.exchange"),
        ("count_by", "count_by"),
        ("sink", "collecting"),
    ]
    spec = plan.op("count_by")
    assert spec.stateful and spec.operator == "arrowflow._runtime.operators:AggOp"
    assert plan.op("from_polars").params["columns"] == ["user"]
    assert "count by ['user']" in plan.explain()
    assert "count_by" in plan.operator_fingerprints
    other = af.Flow("keyed")
    count_by(other.from_polars(DATA), "note").write_to(CollectingSink())
    assert other.plan().fingerprint != plan.fingerprint
    with pytest.raises(PlanError, match=r"two operators are named 'count_by\.exchange'"):
        src.filter(pl.col("qty") > 0, name="count_by.exchange")  # reserved by derived_ids
    src.filter(pl.col("qty") > 0, name="mine.exchange")
    with pytest.raises(PlanError, match="not free: the plan would call its count_by part"):
        count_by(src, "user", name="mine")


def test_a_kind_checks_its_node_as_it_is_added() -> None:
    stream = af.Flow("checked").from_polars(DATA)
    with pytest.raises(
        SchemaError, match="operator 'drop_nulls': drop_nulls\\(\\) names no column 'who'"
    ):
        drop_nulls(stream, "who")
    assert [n.id for n in stream.flow.nodes] == ["from_polars"]  # the failed node is not kept


def test_a_kind_missing_from_the_table_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(KINDS, "drop_nulls")
    with pytest.raises(PlanError, match="unknown operator kind 'drop_nulls'"):
        drop_nulls(af.Flow("unknown").from_polars(DATA), "user")
