"""Wrong API use fails when the flow is built (or planned), by error type and message.

Every message must name the operator (or the method) and the column, say what was expected
and what arrived. Flows over in-memory data are checked as each operator is added; flows
over sources whose schema needs I/O are checked at plan time, before any data moves.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import polars as pl
import polars.selectors as cs
import pytest

import arrowflow as af
from arrowflow._foundation.durations import duration_ms
from arrowflow.sources import Source, Split, SplitReader

DATA = pl.DataFrame({"user": [1, 2], "kind": ["buy", "view"], "amount": [1.0, 2.0]})


def stream(name: str = "v") -> af.Stream:
    return af.Flow(name).from_polars(DATA)


class LazySchemaSource(Source):
    """A source whose schema needs I/O: counts how often it is asked. Never read."""

    kind = "lazy"
    bounded = True
    schema_is_static = False

    def __init__(self) -> None:
        self.schema_calls = 0

    def schema(self) -> pl.Schema:
        self.schema_calls += 1
        return DATA.schema

    def discover_splits(self) -> list[Split]:
        raise AssertionError("planning must not discover splits")

    def open_reader(self, split: Split, position: Any, *, batch_size: int | None) -> SplitReader:
        raise AssertionError("planning must not read")


# ---------------------------------------------------------------- unknown columns


@pytest.mark.parametrize(
    ("build", "operator"),
    [
        (lambda s: s.filter(pl.col("nope") > 1), "filter"),
        (lambda s: s.select("user", pl.col("nope")), "select"),
        (lambda s: s.with_columns(x=pl.col("nope") + 1), "with_columns"),
        (lambda s: s.key_by("user").agg(total=pl.col("nope").sum()), "agg"),
        (lambda s: s.filter(pl.col("amount") > 0).select(pl.col("nope")), "select"),
    ],
    ids=["filter", "select", "with_columns", "agg", "after-chain"],
)
def test_unknown_column_names_operator_and_column(build, operator: str) -> None:
    with pytest.raises(af.SchemaError) as info:
        build(stream())
    text = str(info.value)
    assert f"'{operator}'" in text
    assert "nope" in text
    assert "user" in text  # the columns that do exist


def test_unknown_key_column_lists_the_columns() -> None:
    with pytest.raises(
        af.SchemaError, match=r"key_by\(\): no column 'nope'.*\['user', 'kind', 'amount'\]"
    ):
        stream().key_by("user", "nope")


def test_errors_name_the_real_operator_id() -> None:
    s = stream()
    s.filter(pl.col("amount") > 0)
    with pytest.raises(af.SchemaError, match="'filter-2'"):
        s.filter(pl.col("nope") > 0)
    with pytest.raises(af.PlanError, match="'filter-2'"):
        s.filter(42)
    with pytest.raises(af.SchemaError, match="'mine'"):
        s.with_columns(x=pl.col("nope"), name="mine")


@pytest.mark.parametrize("name", [".", "..", "a/b", "..\\x"])
def test_an_operator_name_is_never_a_path(name: str) -> None:
    # Operator ids become components of state file paths in checkpoints.
    with pytest.raises(af.PlanError, match="operator name must be"):
        stream().filter(pl.col("amount") > 0, name=name)
    assert stream().filter(pl.col("amount") > 0, name="..a").id == "..a"


def test_a_failed_operator_is_not_left_in_the_flow() -> None:
    s = stream()
    with pytest.raises(af.SchemaError):
        s.filter(pl.col("nope") > 1)
    assert [n.id for n in s.flow.nodes] == ["from_polars"]
    assert s.filter(pl.col("amount") > 1).id == "filter"  # the id was not used up


def test_unknown_column_with_a_lazy_schema_fails_at_plan_time_not_before() -> None:
    flow = af.Flow("lazy")
    source = LazySchemaSource()
    bad = flow.source(source).filter(pl.col("amount") > 0).select(pl.col("nope"))
    bad.key_by("user")  # no schema needed yet: key_by is checked at plan time
    assert source.schema_calls == 0  # building did no I/O
    with pytest.raises(af.SchemaError, match=r"'select'.*nope"):
        bad.explain()
    assert source.schema_calls == 1


def test_unknown_key_with_a_lazy_schema_fails_at_plan_time() -> None:
    stream_ = af.Flow("lazy").source(LazySchemaSource()).key_by("nope").agg(n=pl.len())
    with pytest.raises(af.SchemaError, match=r"'agg'.*nope"):
        stream_.explain()


# ---------------------------------------------------------------- wrong kinds of arguments


def test_a_string_predicate_is_a_column_name_as_in_polars() -> None:
    with pytest.raises(af.SchemaError, match=r"'filter'.*amount > 1"):
        stream().filter("amount > 1")


def test_non_boolean_filter() -> None:
    with pytest.raises(af.SchemaError, match=r"'filter'.*Boolean.*Float64"):
        stream().filter(pl.col("amount") * 2)


@pytest.mark.parametrize("bad", [1, True, None, [pl.col("amount") > 1]])
def test_filter_takes_expressions_only(bad: object) -> None:
    with pytest.raises(af.PlanError, match=r"filter\(\) expects polars expressions"):
        stream().filter(bad)


def test_non_expressions_in_select_with_columns_and_agg() -> None:
    with pytest.raises(af.PlanError, match=r"'select'.*expects polars expressions.*int"):
        stream().select(3)
    with pytest.raises(af.PlanError, match=r"'with_columns'.*got float"):
        stream().with_columns(x=1.5)
    with pytest.raises(af.PlanError, match=r"'agg'.*'total'.*polars expression.*int"):
        stream().key_by("user").agg(total=5)


def test_empty_operator_calls() -> None:
    with pytest.raises(af.PlanError, match="at least one predicate"):
        stream().filter()
    with pytest.raises(af.PlanError, match="at least one"):
        stream().select()
    with pytest.raises(af.PlanError, match="at least one"):
        stream().with_columns()
    with pytest.raises(af.PlanError, match=r"at least one aggregation.*pl\.len\(\)"):
        stream().key_by("user").agg()
    with pytest.raises(af.PlanError, match="at least one other stream"):
        stream().union()


@pytest.mark.parametrize("keys", [(), (pl.col("user"),), (1,)], ids=["none", "expr", "int"])
def test_key_by_expects_column_names(keys: tuple) -> None:
    with pytest.raises(af.PlanError, match=r"key_by\(\) expects column names.*with_columns"):
        stream().key_by(*keys)


def test_map_batches_expects_a_function() -> None:
    with pytest.raises(af.PlanError, match="expects a function"):
        stream().map_batches("not callable")


def test_aggregation_names_must_be_unique_and_not_keys() -> None:
    with pytest.raises(af.PlanError, match="two aggregations are named 'amount'"):
        stream().key_by("user").agg(pl.col("amount").sum(), amount=pl.col("amount").max())
    with pytest.raises(af.PlanError, match=r"clash with key columns.*user"):
        stream().key_by("user").agg(user=pl.col("user").count())


@pytest.mark.parametrize("splits", [0, -1, 1.5, "2", True])
def test_from_polars_splits_must_be_positive(splits: object) -> None:
    with pytest.raises(
        af.PlanError, match=r"from_polars\(splits=\.\.\.\) expects a positive number"
    ):
        af.Flow("s").from_polars(DATA, splits=splits)


def test_union_of_streams_from_another_flow() -> None:
    with pytest.raises(af.PlanError, match="same Flow"):
        stream("a").union(stream("b"))


# ---------------------------------------------------------------- non-incremental aggregations

NOT_INCREMENTAL = {
    "n_unique": pl.col("amount").n_unique(),
    "median": pl.col("amount").median(),
    "quantile": pl.col("amount").quantile(0.9),
    "std": pl.col("amount").std(),
    "ratio": pl.col("amount").sum() / pl.len(),
    "sum_plus_one": pl.col("amount").sum() + 1,
    "implode": pl.col("amount").implode(),
    "plain_column": pl.col("amount"),
}

ORDER_DEPENDENT_INPUT = {
    "shift": pl.col("amount").shift().sum(),
    "cum_sum": pl.col("amount").cum_sum().last(),
    "sort_by_first": pl.col("amount").sort_by("kind").first(),
    "sort_first": pl.col("amount").sort().first(),
    "unique_count": pl.col("amount").unique().count(),
    "head": pl.col("amount").head(1).sum(),
    "rank": pl.col("amount").rank().max(),
    "forward_fill": pl.col("amount").fill_null(strategy="forward").sum(),
    "nested_mean": (pl.col("amount") - pl.col("amount").mean()).sum(),
    "filter_by_mean": pl.col("amount").filter(pl.col("amount") > pl.col("amount").mean()).sum(),
    "window": pl.col("amount").sum().over("kind").max(),
    "literal": pl.lit(1).sum(),
    # Nested under a row-wise node, which polars' own check looks at alone (new-user trial).
    "diff_plus_zero": (pl.col("amount").diff() + 0).sum(),
    "rank_cast": pl.col("amount").rank().cast(pl.Int64).sum(),
    "shift_compared": (pl.col("amount").shift(1) > pl.col("amount")).sum(),
    "batch_function": pl.col("amount").map_batches(lambda s: s - s.mean()).sum(),
}


@pytest.mark.parametrize("name", sorted(NOT_INCREMENTAL))
def test_non_incremental_aggregation_lists_the_supported_ones(name: str) -> None:
    with pytest.raises(af.PlanError) as info:
        stream().key_by("user").agg(x=NOT_INCREMENTAL[name])
    text = str(info.value)
    assert "'agg'" in text
    assert "'x'" in text
    assert "cannot be computed incrementally" in text
    for supported in ("pl.len()", "count", "sum", "min", "max", "mean", "first", "last"):
        assert supported in text


@pytest.mark.parametrize("name", sorted(ORDER_DEPENDENT_INPUT))
def test_aggregating_an_input_that_depends_on_other_rows_is_refused(name: str) -> None:
    """Batches split a key's rows arbitrarily; such an input would give batch-dependent results."""
    with pytest.raises(af.PlanError, match=r"'agg'.*'x'.*cannot be computed incrementally") as info:
        stream().key_by("user").agg(x=ORDER_DEPENDENT_INPUT[name])
    assert "with_columns" in str(info.value)


@pytest.mark.filterwarnings("ignore::polars.exceptions.PolarsInefficientMapWarning")
def test_row_wise_inputs_are_accepted() -> None:
    stream().key_by("user").agg(
        g=pl.col("amount")
        .map_elements(lambda v: v + 1, return_dtype=pl.Float64)
        .sum(),  # polars can't analyse it
        h=pl.concat_list("amount", "amount").list.eval(pl.element().max()).list.first().max(),
    )
    stream().key_by("user").agg(
        a=(pl.col("amount") * 2).sum(),
        b=pl.col("amount").filter(pl.col("kind") == "buy").max(),
        c=pl.when(pl.col("amount") > 1).then(pl.col("kind")).count(),
        d=pl.col("amount").drop_nulls().first(),
        e=pl.col("kind").str.len_chars().mean(),
        f=pl.col("amount").cast(pl.Int64).fill_null(0).sum(),
    )


# ---------------------------------------------------------------- union schemas


def test_union_type_mismatch_names_the_column_and_both_types() -> None:
    flow = af.Flow("u")
    left = flow.from_polars(DATA)
    right = flow.from_polars(DATA.with_columns(pl.col("amount").cast(pl.Int64)))
    with pytest.raises(af.SchemaError, match=r"'union'.*amount: Float64 vs Int64.*cast"):
        left.union(right)


def test_union_missing_column_names_it() -> None:
    flow = af.Flow("u")
    with pytest.raises(af.SchemaError, match=r"kind: String vs None"):
        flow.from_polars(DATA).union(flow.from_polars(DATA.drop("kind")))


def test_union_column_order_mismatch_says_so() -> None:
    flow = af.Flow("u")
    with pytest.raises(af.SchemaError, match="column order"):
        flow.from_polars(DATA).union(flow.from_polars(DATA.select("amount", "user", "kind")))


def test_union_names_the_differing_input_among_three() -> None:
    flow = af.Flow("u")
    a, b = flow.from_polars(DATA), flow.from_polars(DATA, name="b")
    c = flow.from_polars(DATA.with_columns(pl.col("user").cast(pl.String)), name="odd")
    with pytest.raises(af.SchemaError, match=r"'odd'.*user: Int64 vs String"):
        a.union(b, c)


# ---------------------------------------------------------------- operator names


def test_duplicate_operator_name() -> None:
    s = stream()
    s.filter(pl.col("amount") > 0, name="positive")
    with pytest.raises(af.PlanError, match="two operators are named 'positive'"):
        s.select("user", name="positive")


@pytest.mark.parametrize("bad", ["has space", "", "a/b", 7])
def test_invalid_operator_and_flow_names(bad: object) -> None:
    with pytest.raises(af.PlanError, match="letters, digits"):
        stream().filter(pl.col("amount") > 0, name=bad)
    with pytest.raises(af.PlanError, match="letters, digits"):
        af.Flow(bad)


# ---------------------------------------------------------------- side outputs


def test_malformed_side_output_on_a_non_source() -> None:
    with pytest.raises(
        af.PlanError, match=r"'malformed' exists on sources only; 'filter' is a filter"
    ):
        stream().filter(pl.col("amount") > 0).side_output("malformed")


def test_malformed_side_output_on_a_non_source_with_a_lazy_schema_fails_when_built() -> None:
    source = LazySchemaSource()
    filtered = af.Flow("lazy").source(source).filter(pl.col("amount") > 0)
    with pytest.raises(af.PlanError, match="exists on sources only"):
        filtered.side_output("malformed")
    assert source.schema_calls == 0


def test_unknown_side_output_lists_the_ones_that_exist() -> None:
    with pytest.raises(
        af.PlanError, match=r"'from_polars' \(source\) has no side output 'late'.*malformed"
    ):
        stream().side_output("late")
    with pytest.raises(af.PlanError, match=r"has no side output 'late'; it has: none"):
        stream().key_by("user").agg(n=pl.len()).side_output("late")
    with pytest.raises(af.PlanError, match="side output name"):
        stream().side_output(3)


def test_malformed_side_output_of_an_in_memory_source_is_empty() -> None:
    bad = stream().side_output("malformed")
    assert bad.schema.names() == ["source", "file", "offset", "line", "reason", "raw"]
    assert bad.collect().height == 0


# ---------------------------------------------------------------- running


def test_run_without_sinks() -> None:
    s = stream()
    s.filter(pl.col("amount") > 0)
    with pytest.raises(af.PlanError, match=r"flow 'v' has no sinks.*write_parquet.*collect\(\)"):
        s.flow.run()


def test_unknown_state_backend_lists_the_known_ones() -> None:
    with pytest.raises(af.StateError, match=r"unknown state backend 'rocksdb'.*memory"):
        stream().key_by("user").agg(n=pl.len()).collect(state="rocksdb")
    with pytest.raises(af.StateError, match="state= expects a backend name"):
        stream().collect(state=42)


@pytest.mark.parametrize(
    "kwargs",
    [{"batch_size": 0}, {"batch_size": -3}, {"batch_size": 2.5}, {"workers": -1}, {"workers": "2"}],
)
def test_bad_run_options(kwargs: dict) -> None:
    with pytest.raises(af.PlanError, match=r"batch_size|workers"):
        stream().collect(**kwargs)


# ---------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("200ms", 200),
        ("10s", 10_000),
        ("5m", 300_000),
        ("1h", 3_600_000),
        ("1d", 86_400_000),
        ("1.5s", 1500),
        (" 2 s ", 2000),
        ("0s", 0),
        ("1500us", 2),
        (dt.timedelta(minutes=1, milliseconds=5), 60_005),
    ],
)
def test_duration_ms(text: object, ms: int) -> None:
    assert duration_ms(text) == ms


@pytest.mark.parametrize("bad", ["10", "ten seconds", "10 sec", "-5s", "1e3s", "", "s", "5 m s"])
def test_bad_duration_strings(bad: str) -> None:
    with pytest.raises(af.PlanError, match=r"cannot read .* as a duration.*'200ms', '10s', '5m'"):
        duration_ms(bad, what="checkpoint_every")


@pytest.mark.parametrize("bad", [10, 2.5])
def test_bare_numbers_are_ambiguous_durations(bad: float) -> None:
    with pytest.raises(
        af.PlanError, match=r"delay: a bare number .* is ambiguous.*'10s' or '10ms'|ambiguous"
    ):
        duration_ms(bad, what="delay")


def test_booleans_and_other_objects_are_not_durations() -> None:
    with pytest.raises(af.PlanError, match="expected a string like '10s'"):
        duration_ms(True)
    with pytest.raises(af.PlanError, match="cannot read"):
        duration_ms(None)  # type: ignore[arg-type]


def test_negative_timedelta_is_refused() -> None:
    with pytest.raises(af.PlanError, match="negative"):
        duration_ms(dt.timedelta(seconds=-1))


# ---------------------------------------------------------------- batch-dependent stateless expressions

BATCH_DEPENDENT = {
    "sum-broadcast": ("with_columns", pl.col("amount").sum().alias("total")),
    "len": ("with_columns", pl.len().alias("n")),
    "minus-mean": ("with_columns", (pl.col("amount") - pl.col("amount").mean()).alias("centred")),
    "shift": ("with_columns", pl.col("amount").shift().alias("previous")),
    "cum_sum": ("select", pl.col("amount").cum_sum()),
    "rank": ("select", pl.col("amount").rank()),
    "sort": ("select", pl.col("amount").sort()),
    "unique": ("select", pl.col("kind").unique()),
    "head": ("select", pl.col("kind").head(1)),
    "row-index": ("with_columns", pl.int_range(pl.len()).alias("i")),
    "over": ("with_columns", pl.col("amount").sum().over("kind").alias("per_kind")),
    "forward-fill": ("with_columns", pl.col("amount").fill_null(strategy="forward")),
    "above-mean": ("filter", pl.col("amount") > pl.col("amount").mean()),
    "dedupe": ("filter", pl.col("user").is_first_distinct()),
    "sample": ("select", pl.col("user").sample(1)),
    # Batch-dependent below a row-wise top node (<, +, cast), which polars' check looks at alone.
    "rank-below": ("filter", pl.col("amount").rank() < 10),
    "shift-compared": ("filter", pl.col("amount").shift(1) > pl.col("amount")),
    "diff-positive": ("filter", pl.col("amount").diff() > 0),
    "cum-sum-below": ("filter", pl.col("amount").cum_sum() < 3),
    "rank-plus-one": ("with_columns", (pl.col("amount").rank() + 1).alias("r")),
    "rank-cast": ("with_columns", pl.col("amount").rank().cast(pl.Int64).alias("r")),
    "rank-over": ("filter", pl.col("amount").rank().over("kind") < 5),
    "quantile-bins": ("with_columns", pl.col("amount").qcut(2).cast(pl.String).alias("bin")),
    "selector-rank": ("with_columns", cs.numeric().rank().name.suffix("_rank")),
    "bin-quantiles": ("with_columns", pl.col("amount").bin_quantiles(2, labels=False).alias("b")),
    "cumulative-eval": ("with_columns", pl.col("amount").cumulative_eval(pl.element().first())),
    "batch-function": ("with_columns", pl.col("amount").map_batches(lambda s: s - s.mean())),
}


@pytest.mark.parametrize("case", sorted(BATCH_DEPENDENT))
def test_stateless_expressions_that_depend_on_the_batch_are_refused(case: str) -> None:
    """polars computes these over all rows; a stream only ever has one batch at hand."""
    method, expr = BATCH_DEPENDENT[case]
    s = stream()
    with pytest.raises(af.PlanError) as info:
        getattr(s, method)(expr)
    text = str(info.value)
    assert f"operator '{method}'" in text
    assert "batch" in text and "key_by(...).agg(...)" in text and "map_batches" in text
    assert [n.id for n in s.flow.nodes] == ["from_polars"]


def test_select_of_constants_only_is_refused_but_broadcast_constants_are_fine() -> None:
    with pytest.raises(af.PlanError, match=r"'select'.*constants only.*with_columns"):
        stream().select(one=pl.lit(1))
    got = stream().select("user", one=pl.lit(1)).with_columns(tag=pl.lit("x")).collect(batch_size=1)
    assert got.to_dicts() == [{"user": 1, "one": 1, "tag": "x"}, {"user": 2, "one": 1, "tag": "x"}]


@pytest.mark.filterwarnings("ignore::polars.exceptions.PolarsInefficientMapWarning")
def test_row_wise_stateless_expressions_are_accepted() -> None:
    s = stream()
    s.with_columns(
        pl.col("amount").round(1),
        pl.col("kind").str.to_uppercase().alias("upper"),
        pl.when(pl.col("amount") > 1).then(pl.lit("big")).otherwise(pl.lit("small")).alias("size"),
        pl.col("kind").is_in(["buy"]).alias("is_buy"),
        pl.col("amount").map_elements(lambda v: v * 2, return_dtype=pl.Float64).alias("x2"),
        pl.lit(3).alias("three"),
        pl.concat_list("amount", "amount").list.eval(pl.element().sum()).alias("ev"),
        pl.col("amount").map_batches(lambda v: v * 2, is_elementwise=True).alias("mb"),
        (pl.col("amount").cast(pl.Int64) + 1 < 3).alias("small"),
        (cs.numeric() * 2).name.suffix("_x2"),
    )
    s.filter(pl.col("kind").str.contains("u"), pl.col("amount").is_between(0, 10))
    s.select(pl.col("amount").filter(pl.col("amount") > 1))  # a filter is row-wise too


def test_key_columns_must_be_hashable_on_every_executor() -> None:
    """The in-process executor never hashes keys; the check must not depend on that."""
    nested = af.Flow("keys").from_polars(
        DATA.with_columns(tags=pl.concat_list("kind"), pair=pl.struct("user", "kind"))
    )
    with pytest.raises(
        af.SchemaError,
        match=r"'agg'.*cannot key by column 'tags' of type List\(String\).*list\.join",
    ):
        nested.key_by("tags").agg(n=pl.len())
    with pytest.raises(af.SchemaError, match=r"cannot key by column 'pair' of type Struct"):
        nested.key_by("user", "pair").agg(n=pl.len())


def test_key_by_the_same_column_twice() -> None:
    with pytest.raises(af.PlanError, match=r"key_by\(\) names the column 'user' more than once"):
        stream().key_by("user", "kind", "user")


def test_an_aggregation_of_several_columns_at_once_asks_for_one_name_each() -> None:
    for expr in (pl.col("amount", "user").sum(), pl.all().max()):
        with pytest.raises(af.PlanError, match=r"several columns at once.*its own name"):
            stream().key_by("kind").agg(expr)
