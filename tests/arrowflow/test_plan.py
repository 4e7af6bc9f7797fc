"""The planner: fusion, exchanges, projection push-down, schemas, fingerprints, explain, ids.

These tests look at the physical plan (``flow.plan()``), never run anything unless the
test says so, and compare results against polars where they do.
"""

from __future__ import annotations

import polars as pl
import polars.selectors as cs
import pytest

import arrowflow as af
from arrowflow._plan import MAIN, Edge, build_plan
from arrowflow.testing import CollectingSink, assert_frame_equal_unordered, collect_all

DATA = pl.DataFrame(
    {
        "ts": [1, 2, 3, 4],
        "user": [1, 2, 1, 3],
        "kind": ["buy", "view", "buy", "cart"],
        "amount": [10.0, 1.0, 5.0, 7.0],
        "note": ["a", "b", "c", "d"],
    }
)


def _kinds(plan) -> list[tuple[str, str]]:
    return [(op.kind, op.id) for op in plan.ops]


def _plan_of(stream: af.Stream):
    stream.write_to(CollectingSink())
    return stream.flow.plan()


# ---------------------------------------------------------------- fusion and exchanges


def test_stateless_chain_is_fused_into_one_operator() -> None:
    flow = af.Flow("fuse")
    out = (
        flow.from_polars(DATA)
        .filter(pl.col("kind") == "buy")
        .with_columns(eur=pl.col("amount") * 0.9)
        .select("user", "eur")
    )
    plan = _plan_of(out)
    assert _kinds(plan) == [("source", "from_polars"), ("chain", "filter"), ("sink", "collecting")]
    chain = plan.op("filter")
    assert chain.steps == ["filter", "with_columns", "select"]
    assert [step["kind"] for step in chain.params["steps"]] == ["filter", "with_columns", "select"]
    assert chain.inputs == [Edge("from_polars", MAIN)]
    assert chain.schema == pl.Schema({"user": pl.Int64, "eur": pl.Float64})


def test_map_batches_is_fused_with_its_neighbours() -> None:
    out = (
        af.Flow("fuse")
        .from_polars(DATA)
        .filter(pl.col("amount") > 1)
        .map_batches(lambda b: b.with_columns(x=pl.lit(1)))
        .select("user", "x")
    )
    assert _plan_of(out).op("filter").steps == ["filter", "map_batches", "select"]


def test_a_branch_point_is_not_fused_across() -> None:
    flow = af.Flow("branch")
    shared = (
        flow.from_polars(DATA).filter(pl.col("amount") > 1).with_columns(x=pl.col("amount") * 2)
    )
    left = shared.filter(pl.col("x") > 10, name="left")
    right = shared.select("user", "x", name="right")
    plan = build_plan(flow, [left.node, right.node])
    chains = {op.id: op for op in plan.ops if op.kind == "chain"}
    assert chains["filter"].steps == ["filter", "with_columns"]
    assert chains["left"].steps == ["left"]
    assert chains["right"].steps == ["right"]
    assert chains["left"].inputs == chains["right"].inputs == [Edge("filter")]


def test_a_source_read_twice_is_one_source_operator() -> None:
    flow = af.Flow("twice")
    src = flow.from_polars(DATA)
    cheap, dear = src.filter(pl.col("amount") < 6), src.filter(pl.col("amount") >= 6)
    plan = build_plan(flow, [cheap.node, dear.node])
    assert [op.id for op in plan.ops if op.kind == "source"] == ["from_polars"]
    got_cheap, got_dear = collect_all(cheap, dear)
    assert_frame_equal_unordered(got_cheap, DATA.filter(pl.col("amount") < 6))
    assert_frame_equal_unordered(got_dear, DATA.filter(pl.col("amount") >= 6))


def test_exchange_is_inserted_before_every_aggregation() -> None:
    flow = af.Flow("exchange")
    totals = flow.from_polars(DATA).filter(pl.col("amount") > 0).key_by("user").agg(n=pl.len())
    per_n = totals.key_by("n").agg(users=pl.len(), name="per_n")
    plan = _plan_of(per_n)
    assert _kinds(plan) == [
        ("source", "from_polars"),
        ("chain", "filter"),
        ("exchange", "agg.exchange"),
        ("agg", "agg"),
        ("exchange", "per_n.exchange"),
        ("agg", "per_n"),
        ("sink", "collecting"),
    ]
    assert plan.op("agg.exchange").params["keys"] == ["user"]
    assert plan.op("agg.exchange").inputs == [Edge("filter")]
    assert plan.op("agg").inputs == [Edge("agg.exchange")]
    assert plan.op("per_n.exchange").params["keys"] == ["n"]
    assert plan.op("agg").stateful and not plan.op("filter").stateful


def test_union_is_its_own_operator_with_every_input() -> None:
    flow = af.Flow("union")
    a = flow.from_polars(DATA)
    b = flow.from_polars(DATA).filter(pl.col("amount") > 5)
    plan = _plan_of(a.union(b).select("user"))
    union = plan.op("union")
    assert union.kind == "union"
    assert union.inputs == [Edge("from_polars"), Edge("filter")]


def test_plan_keeps_only_what_the_outputs_need() -> None:
    flow = af.Flow("needed")
    src = flow.from_polars(DATA)
    wanted = src.filter(pl.col("amount") > 1)
    src.key_by("user").agg(n=pl.len())  # not requested
    plan = build_plan(flow, [wanted.node])
    assert [op.id for op in plan.ops] == ["from_polars", "filter"]


def test_plan_ops_are_in_topological_order() -> None:
    flow = af.Flow("topo")
    a = flow.from_polars(DATA)
    b = flow.from_polars(DATA, name="second")
    out = a.union(b).key_by("user").agg(n=pl.len()).filter(pl.col("n") > 1)
    plan = _plan_of(out)
    seen: set[str] = set()
    for op in plan.ops:
        assert all(edge.op in seen for edge in op.inputs), op.id
        seen.add(op.id)


# ---------------------------------------------------------------- projection push-down


def _read_columns(plan, source_id: str = "from_polars") -> list[str] | None:
    return plan.op(source_id).params["columns"]


def test_projection_reads_only_the_needed_columns() -> None:
    out = af.Flow("proj").from_polars(DATA).filter(pl.col("kind") == "buy").select("user", "amount")
    plan = _plan_of(out)
    assert _read_columns(plan) == ["user", "kind", "amount"]
    assert plan.op("from_polars").params["source"].columns == ["user", "kind", "amount"]
    assert "reads columns ['user', 'kind', 'amount']" in plan.explain()


def test_projection_through_with_columns_and_aggregation() -> None:
    out = (
        af.Flow("proj")
        .from_polars(DATA)
        .with_columns(eur=pl.col("amount") * 0.9, note=pl.lit("replaced"))
        .key_by("user")
        .agg(total=pl.col("eur").sum(), last_note=pl.col("note").last())
    )
    # "note" is replaced before it is read, "ts" and "kind" are never read.
    assert _read_columns(_plan_of(out)) == ["user", "amount"]


def test_projection_of_a_branch_is_the_union_of_both_needs() -> None:
    flow = af.Flow("proj")
    src = flow.from_polars(DATA)
    left = src.select("user")
    right = src.key_by("kind").agg(total=pl.col("amount").sum())
    plan = build_plan(flow, [left.node, right.node])
    assert _read_columns(plan) == ["user", "kind", "amount"]


def test_projection_with_union_reads_the_needed_columns_of_each_input(workers: int) -> None:
    flow = af.Flow("proj")
    a = flow.from_polars(DATA)
    b = flow.from_polars(DATA.with_columns(pl.col("amount") * 10), name="b")
    out = a.union(b).key_by("user").agg(total=pl.col("amount").sum())
    plan = build_plan(flow, [out.node])
    assert _read_columns(plan) == ["user", "amount"]
    assert _read_columns(plan, "b") == ["user", "amount"]
    both = pl.concat([DATA, DATA.with_columns(pl.col("amount") * 10)])
    assert_frame_equal_unordered(
        out.collect(workers=workers), both.group_by("user").agg(total=pl.col("amount").sum())
    )


@pytest.mark.parametrize(
    "build",
    [
        lambda s: s.map_batches(lambda b: b.select("user")),
        lambda s: s.filter(pl.col("amount") > 0),  # collected whole: the sink needs every column
        lambda s: s.select(pl.all().exclude("note")).select("user"),
        lambda s: s.select(pl.col("^(us|ki).*$")).select("user"),
        lambda s: s.with_columns(pl.col(pl.Float64) * 2).select("user"),
    ],
    ids=["map_batches", "sink", "exclude", "regex", "dtype-selector"],
)
def test_projection_is_disabled_where_columns_cannot_be_known(build) -> None:
    out = build(af.Flow("proj").from_polars(DATA))
    columns = _read_columns(_plan_of(out))
    assert columns is None or set(columns) >= {"user", "kind", "amount"} - {"kind"}


def test_projection_with_wildcards_still_gives_polars_results() -> None:
    src = af.Flow("proj").from_polars(DATA)
    cases = [
        (src.select(pl.all().exclude("note")).select("user", "kind"), DATA.select("user", "kind")),
        (src.select(pl.col("^(us|ki).*$")).select("user"), DATA.select("user")),
        (
            src.with_columns(pl.col(pl.Float64) * 2).select("amount"),
            DATA.select(pl.col("amount") * 2),
        ),
        (
            src.select(pl.struct(pl.all()).alias("s")).select(pl.col("s").struct.field("kind")),
            DATA.select("kind"),
        ),
        # Positional and dtype selections must see the columns of the full frame, not a pruned one.
        (src.with_columns(pl.nth(0).alias("z")).select("z"), DATA.select(pl.col("ts").alias("z"))),
        (
            src.with_columns(pl.last().alias("z")).select("z"),
            DATA.select(pl.col("note").alias("z")),
        ),
        (src.select(cs.by_index(2)), DATA.select("kind")),
        (
            src.with_columns(z=pl.sum_horizontal(cs.numeric())).select("z"),
            DATA.select(z=pl.sum_horizontal(cs.numeric())),
        ),
        (
            src.filter(pl.any_horizontal(cs.string() == "c")).select("ts"),
            DATA.filter(pl.col("note") == "c").select("ts"),
        ),
    ]
    for (_, expected), got in zip(cases, collect_all(*(s for s, _ in cases)), strict=True):
        assert_frame_equal_unordered(got, expected)


def test_a_stream_that_names_no_column_reads_one_column_and_counts_rows() -> None:
    out = (
        af.Flow("proj")
        .from_polars(DATA)
        .with_columns(one=pl.lit(1))
        .select("one", two=pl.col("one") + 1)
    )
    plan = build_plan(out.flow, [out.node])
    assert _read_columns(plan) == ["ts"]
    assert out.collect(batch_size=3).to_dicts() == [{"one": 1, "two": 2}] * 4
    counted = (
        af.Flow("proj").from_polars(DATA).with_columns(k=pl.lit("all")).key_by("k").agg(n=pl.len())
    )
    assert counted.collect(batch_size=3).to_dicts() == [{"k": "all", "n": 4}]


def test_malformed_side_output_does_not_widen_the_projection() -> None:
    flow = af.Flow("proj")
    src = flow.from_polars(DATA)
    users = src.select("user")
    bad = src.side_output("malformed")
    plan = build_plan(flow, [users.node, bad.node])
    assert _read_columns(plan) == ["user"]
    assert [op.id for op in plan.ops] == ["from_polars", "select"]


# ---------------------------------------------------------------- schemas


def test_output_schemas_are_known_before_running() -> None:
    flow = af.Flow("schemas")
    src = flow.from_polars(DATA)
    chain = src.filter(pl.col("amount") > 1).with_columns(
        big=pl.col("amount") > 6, ts=pl.col("ts").cast(pl.Float32)
    )
    agg = chain.key_by("kind").agg(
        n=pl.len(), avg=pl.col("amount").mean(), first_ts=pl.col("ts").first()
    )
    expected_chain = (
        DATA.lazy()
        .filter(pl.col("amount") > 1)
        .with_columns(big=pl.col("amount") > 6, ts=pl.col("ts").cast(pl.Float32))
    )
    assert chain.schema == expected_chain.collect_schema()
    assert (
        agg.schema
        == expected_chain.group_by("kind")
        .agg(n=pl.len(), avg=pl.col("amount").mean(), first_ts=pl.col("ts").first())
        .collect_schema()
    )
    plan = _plan_of(agg)
    assert plan.op("agg").schema == agg.schema
    # The exchange before a running aggregation carries its partials (the combiner): the key,
    # the state columns and the input rows each stands for.
    exchange = plan.op("agg.exchange")
    combiner = exchange.params["combiner"]
    assert exchange.schema == pl.Schema(
        {**combiner.key_schema, **combiner.state_schema, "__af_combined_rows": pl.Int64}
    )
    assert set(combiner.key_schema) <= set(chain.schema)
    assert plan.op("collecting").schema == agg.schema


def test_schema_of_a_new_operator_is_never_a_stale_cached_one() -> None:
    """Schemas were cached by id(node); collect()'s temporary sink node died and a later
    operator that reused its id got its schema."""
    src = af.Flow("stale").from_polars(pl.DataFrame({"a": [1], "b": ["x"]}))
    for _ in range(50):
        src.collect()
        doubled = src.select(c=pl.col("a") * 2)
        assert doubled.schema == pl.Schema({"c": pl.Int64})


# ---------------------------------------------------------------- fingerprints


def _fingerprint(
    agg: pl.Expr | None = None,
    *,
    predicate: pl.Expr | None = None,
    keys: tuple[str, ...] = ("user",),
    agg_name: str | None = None,
    sink: str = "a",
    max_parallelism: int = 128,
) -> str:
    agg = pl.col("amount").sum() if agg is None else agg
    predicate = pl.col("amount") > 0 if predicate is None else predicate
    flow = af.Flow("fp")
    out = flow.from_polars(DATA).filter(predicate).key_by(*keys).agg(total=agg, name=agg_name)
    out.write_to(CollectingSink(), name=sink)
    return flow.plan(max_parallelism=max_parallelism).fingerprint


def test_fingerprint_is_stable_across_identical_builds() -> None:
    first = _fingerprint()
    assert first == _fingerprint()
    assert len(first) == 16 and int(first, 16) >= 0


def test_fingerprint_is_the_same_in_another_process() -> None:
    import subprocess
    import sys

    code = (
        "import polars as pl, arrowflow as af\n"
        "from arrowflow.testing import CollectingSink\n"
        "flow = af.Flow('fp')\n"
        "out = flow.from_polars(pl.DataFrame({'ts': [1, 2, 3, 4], 'user': [1, 2, 1, 3], "
        "'kind': ['buy', 'view', 'buy', 'cart'], 'amount': [10.0, 1.0, 5.0, 7.0], 'note': ['a', 'b', 'c', 'd']}))"
        ".filter(pl.col('amount') > 0).key_by('user').agg(total=pl.col('amount').sum())\n"
        "out.write_to(CollectingSink(), name='a')\n"
        "print(flow.plan().fingerprint)\n"
    )
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert child.stdout.strip() == _fingerprint()


@pytest.mark.parametrize(
    "changed",
    [
        {"agg": pl.col("amount").max()},  # same output type, different state
        {"agg": pl.col("amount").filter(pl.col("kind") == "buy").sum()},
        {"keys": ("kind",)},
        {"keys": ("user", "kind")},
        {"agg_name": "totals"},
        {"sink": "b"},
        {"max_parallelism": 64},
    ],
    ids=[
        "sum-to-max",
        "agg-input",
        "key",
        "more-keys",
        "agg-renamed",
        "sink-renamed",
        "max-parallelism",
    ],
)
def test_fingerprint_changes_when_a_stateful_operator_changes(changed: dict) -> None:
    assert _fingerprint(**changed) != _fingerprint()


def test_fingerprint_ignores_stateless_operator_changes() -> None:
    """Like Flink: state stays compatible when a filter changes; only stateful operators count."""
    assert _fingerprint(predicate=pl.col("amount") > 5) == _fingerprint()


# ---------------------------------------------------------------- explain


def test_explain_shows_every_operator_its_inputs_and_schema() -> None:
    flow = af.Flow("clicks")
    totals = (
        flow.from_polars(DATA)
        .filter(pl.col("kind") == "buy")
        .with_columns(eur=pl.col("amount") * 0.92)
        .key_by("user")
        .agg(n=pl.len(), total=pl.col("eur").sum())
    )
    totals.write_to(CollectingSink(), name="out")
    text = flow.explain()
    lines = text.splitlines()
    assert lines[0].startswith("plan of flow 'clicks' (fingerprint ")
    assert "5 operators" in lines[0]
    for expected in [
        "source   from_polars",
        "reads columns ['user', 'kind', 'amount']",
        "chain    filter  <- from_polars",
        'filter: filter([(col("kind")) == ("buy")]) | with_columns: with_columns(',
        "exchange agg.exchange  <- filter",
        "hash partition by ['user'] into 128 key groups",
        "agg      agg  <- agg.exchange",
        "keyed running aggregation by ['user']: n=len(), total=col(\"eur\").sum()",
        "sink     out  <- agg",
        "schema {user: Int64, n: UInt32, total: Float64}",
    ]:
        assert expected in text, f"{expected!r} not in:\n{text}"
    assert flow.plan().fingerprint in lines[0]


def test_stream_explain_covers_only_that_stream() -> None:
    flow = af.Flow("part")
    src = flow.from_polars(DATA)
    wanted = src.select("user")
    src.key_by("kind").agg(n=pl.len()).write_to(CollectingSink())
    text = wanted.explain()
    assert "select" in text and "agg" not in text


def test_explain_does_no_io_and_runs_nothing() -> None:
    calls: list[int] = []

    def fn(batch: pl.DataFrame) -> pl.DataFrame:
        calls.append(batch.height)
        return batch

    out = af.Flow("quiet").from_polars(DATA).map_batches(fn, schema=dict(DATA.schema))
    out.write_to(CollectingSink())
    out.flow.explain()
    assert calls == []  # a declared schema means the function is never called to plan


# ---------------------------------------------------------------- operator ids


def test_operator_ids_are_derived_and_numbered() -> None:
    flow = af.Flow("ids")
    src = flow.from_polars(DATA)
    a = src.filter(pl.col("amount") > 1)
    b = a.filter(pl.col("amount") < 9)
    c = src.filter(pl.col("user") > 1)
    d = b.select("user").with_columns(x=pl.lit(1))
    e = d.key_by("user").agg(n=pl.len())
    f = flow.from_polars(DATA)
    assert [s.id for s in (src, a, b, c, d, e, f)] == [
        "from_polars",
        "filter",
        "filter-2",
        "filter-3",
        "with_columns",
        "agg",
        "from_polars-2",
    ]
    assert d.node.inputs[0].id == "select"
    assert [n.id for n in flow.nodes] == [
        "from_polars",
        "filter",
        "filter-2",
        "filter-3",
        "select",
        "with_columns",
        "agg",
        "from_polars-2",
    ]


def test_name_overrides_the_id_and_numbering_skips_taken_names() -> None:
    flow = af.Flow("ids")
    src = flow.from_polars(DATA, name="events")
    mine = src.filter(pl.col("amount") > 1, name="filter-2")
    auto = src.filter(pl.col("amount") > 2)
    auto2 = src.filter(pl.col("amount") > 3)
    assert (src.id, mine.id, auto.id, auto2.id) == ("events", "filter-2", "filter", "filter-3")
    totals = src.key_by("user").agg(n=pl.len(), name="totals")
    assert totals.id == "totals"
    assert [op.id for op in _plan_of(totals).ops][-3:] == [
        "totals.exchange",
        "totals",
        "collecting",
    ]


def test_ids_are_the_same_in_identical_builds() -> None:
    def build() -> list[str]:
        flow = af.Flow("ids")
        src = flow.from_polars(DATA)
        src.filter(pl.col("amount") > 1).union(src.filter(pl.col("amount") < 1)).key_by("user").agg(
            n=pl.len()
        )
        src.side_output("malformed")
        return [n.id for n in flow.nodes]

    assert build() == build()
    assert build()[-1] == "from_polars.malformed"


# ---------------------------------------------------------------- running the plan


def test_flow_run_with_several_sinks(workers: int) -> None:
    flow = af.Flow("sinks")
    src = flow.from_polars(DATA, splits=2)
    everything, totals = CollectingSink(), CollectingSink()
    src.write_to(everything, name="everything")
    src.key_by("kind").agg(total=pl.col("amount").sum()).write_to(totals, name="totals")
    result = flow.run(workers=workers)
    assert_frame_equal_unordered(everything.to_polars(), DATA)
    assert_frame_equal_unordered(
        totals.to_polars(), DATA.group_by("kind").agg(total=pl.col("amount").sum())
    )
    assert result.rows_in == DATA.height
    assert result.rows_out == DATA.height + DATA["kind"].n_unique()


def test_max_parallelism_must_be_positive() -> None:
    with pytest.raises(af.PlanError, match="max_parallelism"):
        af.Flow("mp").from_polars(DATA).key_by("user").agg(n=pl.len()).collect(max_parallelism=0)


def test_results_do_not_depend_on_max_parallelism(workers: int) -> None:
    out = af.Flow("mp").from_polars(DATA, splits=2).key_by("user").agg(total=pl.col("amount").sum())
    expected = DATA.group_by("user").agg(total=pl.col("amount").sum())
    assert_frame_equal_unordered(out.collect(workers=workers, max_parallelism=7), expected)
    if workers == 0:
        assert_frame_equal_unordered(out.collect(max_parallelism=1), expected)


def test_rows_reach_the_worker_that_owns_their_key_group_for_any_max_parallelism(
    workers: int, request: pytest.FixtureRequest
) -> None:
    if workers != 2:
        pytest.skip("a two-worker property")
    df = pl.DataFrame({"k": list(range(200)), "v": [1] * 200})
    flow = af.Flow("mp")
    sink = CollectingSink()
    flow.from_polars(df, splits=2).key_by("k").agg(n=pl.len()).write_to(sink)
    result = flow.run(workers=2, max_parallelism=64)
    per_worker = {m["worker"]: m["rows_in"] for m in result.operator_metrics if m["kind"] == "agg"}
    assert sorted(per_worker) == [0, 1]
    assert min(per_worker.values()) > 50, per_worker  # 200 keys over two halves of the key groups
    assert_frame_equal_unordered(sink.to_polars(), df.group_by("k").agg(n=pl.len()))


def test_derived_operator_ids_never_collide_with_user_names() -> None:
    """An aggregation's exchange is called '<agg>.exchange' in the plan: that name stays free."""
    flow = af.Flow("ids")
    src = flow.from_polars(DATA)
    taken = src.filter(pl.col("amount") > 0, name="agg.exchange")
    totals = taken.key_by("user").agg(n=pl.len())
    assert totals.id == "agg-2"
    plan = _plan_of(totals)
    assert len({op.id for op in plan.ops}) == len(plan.ops)
    assert_frame_equal_unordered(totals.collect(), DATA.group_by("user").agg(n=pl.len()))
    with pytest.raises(af.PlanError, match=r"two operators are named 'agg-2\.exchange'"):
        src.filter(pl.col("amount") > 0, name="agg-2.exchange")
    with pytest.raises(af.PlanError, match=r"'agg' is not free.*'agg.exchange'"):
        src.key_by("user").agg(n=pl.len(), name="agg")


def test_a_failed_aggregation_frees_its_names() -> None:
    src = af.Flow("ids").from_polars(DATA)
    with pytest.raises(af.SchemaError):
        src.key_by("user").agg(total=pl.col("nope").sum(), name="totals")
    assert src.key_by("user").agg(total=pl.col("amount").sum(), name="totals").id == "totals"


def test_collecting_sinks_pick_free_names() -> None:
    src = af.Flow("ids").from_polars(DATA)
    child = src.filter(pl.col("amount") > 0, name="from_polars.collect-0")
    got_src, got_child = collect_all(src, child)
    assert_frame_equal_unordered(got_src, DATA)
    assert_frame_equal_unordered(got_child, DATA.filter(pl.col("amount") > 0))


def test_collect_runs_only_what_the_stream_needs() -> None:
    flow = af.Flow("part")
    src = flow.from_polars(DATA)
    other = CollectingSink()
    src.filter(pl.col("amount") > 5).write_to(other)
    calls: list[int] = []

    def count(batch: pl.DataFrame) -> pl.DataFrame:
        calls.append(batch.height)
        return batch

    src.map_batches(count, schema=dict(DATA.schema)).write_to(CollectingSink())
    assert_frame_equal_unordered(src.select("user").collect(), DATA.select("user"))
    assert other.frames == [] and calls == []


def test_flow_explain_before_any_sink_shows_the_streams_nothing_reads() -> None:
    """The README suggests flow.explain() while exploring, before any sink (new-user trial)."""
    flow = af.Flow("exploring")
    rows = flow.from_polars(pl.DataFrame({"user": [1, 2, 1], "amount": [1.0, 2.0, 3.0]}))
    rows.filter(pl.col("amount") > 1)
    rows.key_by("user").agg(total=pl.col("amount").sum())
    text = flow.explain()
    assert "filter" in text and "keyed running aggregation by ['user']" in text
    assert "no sink yet" in text
    with pytest.raises(af.PlanError, match="the flow is empty"):
        af.Flow("empty").explain()
