"""Stateless operators (filter, select, with_columns, map_batches, union) against polars.

Every test builds the same computation twice: as an arrowflow flow and as polars over the
same DataFrame, then compares the rows in any order. Each runs on every executor.
"""

from __future__ import annotations

import datetime as dt

import polars as pl
import polars.selectors as cs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import arrowflow as af
from arrowflow.testing import assert_frame_equal_unordered, collect_all

EVENTS = pl.DataFrame(
    {
        "user": [1, 2, 3, 1, None, 2, 4, 5, 1, 3, 2, None],
        "kind": [
            "buy",
            "view",
            None,
            "view",
            "buy",
            "buy",
            "cart",
            "view",
            "cart",
            "buy",
            None,
            "view",
        ],
        "amount": [10.0, None, 3.5, 0.0, 7.25, -1.0, 2.0, None, 99.9, 4.0, 5.5, 1.0],
        "qty": pl.Series([1, 2, 3, None, 5, 6, 7, 8, 9, None, 11, 12], dtype=pl.Int32),
        "ok": [True, False, None, True, True, False, None, True, False, True, True, None],
        "day": [dt.date(2024, 1, 1 + i % 5) for i in range(12)],
    }
)


def source(df: pl.DataFrame = EVENTS, *, splits: int | None = 3) -> af.Stream:
    return af.Flow("stateless").from_polars(df, splits=splits)


FILTERS = {
    "gt": [pl.col("amount") > 1],
    "eq-str": [pl.col("kind") == "buy"],
    "bool-col": [pl.col("ok")],  # a Boolean column with nulls: null rows are dropped
    "two-preds": [pl.col("kind").is_in(["buy", "cart"]), pl.col("amount") >= 0],
    "is-null": [pl.col("user").is_null()],
    "and": [pl.col("amount").is_not_null() & (pl.col("qty") % 2 == 1)],
    "or": [(pl.col("kind") == "view") | pl.col("amount").is_null()],
    "date": [pl.col("day") >= dt.date(2024, 1, 3)],
    "none-pass": [pl.lit(False)],
    "all-pass": [pl.lit(True)],
}


def test_filter_matches_polars(workers: int) -> None:
    stream = source()
    # One run for every predicate: each filter is a branch of the same source.
    frames = collect_all(
        *(stream.filter(*preds) for preds in FILTERS.values()), workers=workers, batch_size=4
    )
    for (label, preds), got in zip(FILTERS.items(), frames, strict=True):
        try:
            assert_frame_equal_unordered(got, EVENTS.filter(*preds))
        except AssertionError as exc:
            raise AssertionError(f"filter {label}: {exc}") from None


SELECT_EXPRS = [
    "user",
    pl.col("amount").alias("eur"),
    (pl.col("qty") * 2).alias("double"),
    pl.col("kind").str.to_uppercase().alias("kind"),
    pl.when(pl.col("ok")).then(pl.lit("y")).otherwise(pl.lit("n")).alias("flag"),
]
SELECT_NAMED = {"total": pl.col("amount") * pl.col("qty"), "weekday": pl.col("day").dt.weekday()}
WITH_EXPRS = [(pl.col("amount") * 0.92).alias("amount_eur"), pl.col("qty").cast(pl.Int64) + 1]
WITH_NAMED = {"kind": pl.col("kind").fill_null("unknown"), "big": pl.col("amount") > 5}


def _chain(frame):  # works on an arrowflow Stream and on a polars DataFrame alike
    return (
        frame.filter(pl.col("kind").is_not_null())
        .with_columns(value=pl.col("amount").fill_null(0) * pl.col("qty").fill_null(1))
        .filter(pl.col("value") != 0)
        .select("user", "kind", "value", late=pl.col("day") > dt.date(2024, 1, 2))
        .with_columns(pl.col("value").round(1))
    )


# name -> a computation that reads the same on a Stream and a DataFrame.
OPERATORS = {
    "select-names-renames-expressions": lambda f: f.select(*SELECT_EXPRS, **SELECT_NAMED),
    "select-selector": lambda f: f.select(cs.numeric()),
    "select-exclude": lambda f: f.select(pl.all().exclude("day")),
    "select-dtypes": lambda f: f.select(pl.col(pl.String, pl.Boolean)),
    "with_columns-adds-and-replaces": lambda f: f.with_columns(*WITH_EXPRS, **WITH_NAMED),
    # Reads no source column: every input row must still give one output row.
    "literal-only": lambda f: f.with_columns(one=pl.lit(1)).select("one"),
    "chain": _chain,
    "map_batches-lambda": lambda f: (
        f.map_batches(lambda b: b.with_columns(half=pl.col("amount") / 2))
        if isinstance(f, af.Stream)
        else f.with_columns(half=pl.col("amount") / 2)
    ),
}


def _add_ratio(batch: pl.DataFrame) -> pl.DataFrame:
    return batch.with_columns(ratio=pl.col("amount") / pl.col("qty"))


def test_stateless_operators_match_polars(workers: int) -> None:
    stream = source()
    streams = {name: build(stream) for name, build in OPERATORS.items()}
    for name, built in streams.items():
        assert built.schema == OPERATORS[name](EVENTS).schema, name  # known before running
    frames = collect_all(*streams.values(), workers=workers, batch_size=5)
    for name, got in zip(OPERATORS, frames, strict=True):
        try:
            assert_frame_equal_unordered(got, OPERATORS[name](EVENTS))
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from None


def test_map_batches_with_learned_schema(workers: int, request: pytest.FixtureRequest) -> None:
    _functions_by_reference_need_importable_modules(workers, request)
    stream = source().map_batches(_add_ratio)
    assert stream.schema == _add_ratio(EVENTS).schema
    assert_frame_equal_unordered(stream.collect(workers=workers, batch_size=4), _add_ratio(EVENTS))


def _functions_by_reference_need_importable_modules(
    workers: int, request: pytest.FixtureRequest
) -> None:
    """Workers import nothing of this test module (pytest imports it by path): the pool must
    ship its module-level functions by value."""


def _summarise(batch: pl.DataFrame) -> pl.DataFrame:
    # Fails on an empty frame, so the schema must be declared.
    if batch.height == 0:
        raise ValueError("needs rows")
    return batch.select("user", label=pl.format("{}-{}", "kind", "qty"))


def test_map_batches_with_declared_schema(workers: int, request: pytest.FixtureRequest) -> None:
    _functions_by_reference_need_importable_modules(workers, request)
    stream = source().map_batches(_summarise, schema={"user": pl.Int64, "label": pl.String})
    assert stream.schema == pl.Schema({"user": pl.Int64, "label": pl.String})
    got = stream.collect(workers=workers, batch_size=5)
    assert_frame_equal_unordered(
        got, EVENTS.select("user", label=pl.format("{}-{}", "kind", "qty"))
    )


def test_map_batches_accepts_a_pyarrow_schema() -> None:
    import pyarrow as pa

    stream = source().map_batches(
        _summarise, schema=pa.schema([("user", pa.int64()), ("label", pa.string())])
    )
    assert stream.schema == pl.Schema({"user": pl.Int64, "label": pl.String})


def test_map_batches_that_needs_a_declared_schema_says_so() -> None:
    with pytest.raises(af.SchemaError, match=r"pass schema=") as info:
        source().map_batches(_summarise)
    assert "map_batches" in str(info.value)


def test_map_batches_returning_a_non_frame_is_refused_at_build_time() -> None:
    with pytest.raises(af.PlanError, match="must return a polars DataFrame"):
        source().map_batches(lambda batch: batch.height)


def test_map_batches_missing_a_declared_column_fails_the_run(workers: int) -> None:
    stream = source().map_batches(lambda batch: batch.drop("user"), schema=dict(EVENTS.schema))
    with pytest.raises(af.ArrowflowError, match=r"map_batches|output schema"):
        stream.collect(workers=workers)


def _extra_column(batch: pl.DataFrame) -> pl.DataFrame:
    return batch.with_columns(extra=pl.lit(1))


def _user_as_text(batch: pl.DataFrame) -> pl.DataFrame:
    return batch.with_columns(pl.col("user").cast(pl.String))


@pytest.mark.parametrize("fn", [_extra_column, _user_as_text], ids=["extra-column", "wrong-dtype"])
def test_map_batches_output_that_contradicts_the_declared_schema_fails(fn) -> None:
    stream = source().map_batches(fn, schema=dict(EVENTS.schema))
    with pytest.raises(af.ArrowflowError, match="output schema"):
        stream.collect(workers=0)


def test_unions_and_branches(workers: int) -> None:
    flow = af.Flow("union")
    parts = [EVENTS.slice(i * 4, 4) for i in range(3)]
    a, b, c = (flow.from_polars(p, splits=2) for p in parts)
    # Both branches of one stream meet again: a row arrives once per branch it passed.
    shared = a.union(b, c).with_columns(double=pl.col("amount") * 2)
    cheap = shared.filter(pl.col("amount") < 5)
    dear = shared.filter(pl.col("amount") >= 5).with_columns(pl.col("amount") * 2)
    streams = [
        a.union(b),
        a.union(b, c),
        a.union(a),
        cheap.union(dear).select("user", "amount"),
        shared,
        shared.select("user", "double"),
    ]
    got = collect_all(*streams, workers=workers, batch_size=3)

    everything = pl.concat(parts).with_columns(double=pl.col("amount") * 2)
    expected = [
        pl.concat(parts[:2]),
        pl.concat(parts),
        pl.concat([parts[0], parts[0]]),
        pl.concat(
            [
                everything.filter(pl.col("amount") < 5),
                everything.filter(pl.col("amount") >= 5).with_columns(pl.col("amount") * 2),
            ]
        ).select("user", "amount"),
        everything,
        everything.select("user", "double"),
    ]
    for index, (frame, wanted) in enumerate(zip(got, expected, strict=True)):
        try:
            assert_frame_equal_unordered(frame, wanted)
        except AssertionError as exc:
            raise AssertionError(f"stream {index}: {exc}") from None


def test_empty_source_gives_empty_frames_with_the_schema(workers: int) -> None:
    empty = source(EVENTS.head(0), splits=None)
    chained = empty.filter(pl.col("amount") > 0).with_columns(x=pl.col("qty") + 1)
    totals = empty.key_by("user").agg(n=pl.len(), s=pl.col("amount").sum())
    got_chained, got_totals = collect_all(chained, totals, workers=workers)
    assert got_chained.height == 0
    assert got_chained.schema == EVENTS.head(0).with_columns(x=pl.col("qty") + 1).schema
    assert got_totals.height == 0
    assert (
        got_totals.schema
        == EVENTS.group_by("user").agg(n=pl.len(), s=pl.col("amount").sum()).schema
    )


@pytest.mark.parametrize("batch_size", [1, 7, None])
@pytest.mark.parametrize("splits", [1, 5, 40])
def test_results_do_not_depend_on_batches_or_splits(batch_size: int | None, splits: int) -> None:
    stream = (
        source(splits=splits).filter(pl.col("qty").is_not_null()).with_columns(x=pl.col("qty") * 3)
    )
    expected = EVENTS.filter(pl.col("qty").is_not_null()).with_columns(x=pl.col("qty") * 3)
    assert_frame_equal_unordered(stream.collect(batch_size=batch_size), expected)


def test_single_split_in_process_keeps_row_order() -> None:
    stream = source(splits=1).filter(pl.col("amount").is_not_null()).select("user", "amount")
    got = stream.collect(workers=0, batch_size=3)
    expected = EVENTS.filter(pl.col("amount").is_not_null()).select("user", "amount")
    assert got.equals(expected)


def test_collect_does_not_change_the_flow() -> None:
    stream = source().filter(pl.col("amount") > 0)
    before = [node.id for node in stream.flow.nodes]
    stream.collect()
    stream.collect()
    assert [node.id for node in stream.flow.nodes] == before
    assert stream.flow.sinks() == []


@st.composite
def _event_frames(draw: st.DrawFn) -> pl.DataFrame:
    n = draw(st.integers(0, 60))
    ints = st.one_of(st.none(), st.integers(-50, 50))
    return pl.DataFrame(
        {
            "a": draw(st.lists(ints, min_size=n, max_size=n)),
            "b": draw(
                st.lists(
                    st.one_of(st.none(), st.floats(-1e6, 1e6, allow_nan=False)),
                    min_size=n,
                    max_size=n,
                )
            ),
            "s": draw(
                st.lists(
                    st.one_of(st.none(), st.sampled_from(["x", "y", "zz", ""])),
                    min_size=n,
                    max_size=n,
                )
            ),
        },
        schema={"a": pl.Int64, "b": pl.Float64, "s": pl.String},
    )


def _property_chain(frame):  # a Stream or a DataFrame
    return (
        frame.filter(pl.col("a").is_null() | (pl.col("a") % 3 != 0))
        .with_columns(c=pl.col("a") * pl.col("b"), s=pl.col("s").str.to_uppercase())
        .filter(pl.col("s") != "X")
        .select("a", "s", total=pl.col("c").fill_null(0) + 1)
    )


@settings(max_examples=40, deadline=None, derandomize=True)
@given(df=_event_frames(), batch_size=st.integers(1, 20), splits=st.integers(1, 5))
def test_property_stateless_chain_equals_polars_for_any_batches_and_splits(
    df: pl.DataFrame, batch_size: int, splits: int
) -> None:
    got = _property_chain(af.Flow("p").from_polars(df, splits=splits)).collect(
        batch_size=batch_size
    )
    assert_frame_equal_unordered(got, _property_chain(df))
