"""Stateless operators (filter, select, with_columns, map_batches, union) against polars.

Every test builds the same computation twice: as an arrowflow flow and as polars over the
same DataFrame, then compares the rows in any order. Each runs on every executor.
"""

from __future__ import annotations

import datetime as dt

import polars as pl
import polars.selectors as cs
import pytest

import arrowflow as af
from arrowflow.testing import assert_frame_equal_unordered, collect_all

EVENTS = pl.DataFrame(
    {
        "user": [1, 2, 3, 1, None, 2, 4, 5, 1, 3, 2, None],
        "kind": ["buy", "view", None, "view", "buy", "buy", "cart", "view", "cart", "buy", None, "view"],
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
    frames = collect_all(*(stream.filter(*preds) for preds in FILTERS.values()), workers=workers, batch_size=4)
    for (label, preds), got in zip(FILTERS.items(), frames, strict=True):
        try:
            assert_frame_equal_unordered(got, EVENTS.filter(*preds))
        except AssertionError as exc:
            raise AssertionError(f"filter {label}: {exc}") from None


def test_select_with_names_renames_and_expressions(workers: int) -> None:
    exprs = [
        "user",
        pl.col("amount").alias("eur"),
        (pl.col("qty") * 2).alias("double"),
        pl.col("kind").str.to_uppercase().alias("kind"),
        pl.when(pl.col("ok")).then(pl.lit("y")).otherwise(pl.lit("n")).alias("flag"),
    ]
    named = {"total": pl.col("amount") * pl.col("qty"), "weekday": pl.col("day").dt.weekday()}
    got = source().select(*exprs, **named).collect(workers=workers, batch_size=5)
    assert_frame_equal_unordered(got, EVENTS.select(*exprs, **named))


def test_select_with_selectors_and_wildcards(workers: int) -> None:
    stream = source()
    cases = [
        (stream.select(cs.numeric()), EVENTS.select(cs.numeric())),
        (stream.select(pl.all().exclude("day")), EVENTS.select(pl.all().exclude("day"))),
        (stream.select(pl.col(pl.String, pl.Boolean)), EVENTS.select(pl.col(pl.String, pl.Boolean))),
    ]
    frames = collect_all(*(s for s, _ in cases), workers=workers)
    for got, (_, expected) in zip(frames, cases, strict=True):
        assert_frame_equal_unordered(got, expected)


def test_with_columns_adds_and_replaces(workers: int) -> None:
    exprs = [(pl.col("amount") * 0.92).alias("amount_eur"), pl.col("qty").cast(pl.Int64) + 1]
    named = {"kind": pl.col("kind").fill_null("unknown"), "big": pl.col("amount") > 5}
    got = source().with_columns(*exprs, **named).collect(workers=workers, batch_size=3)
    assert_frame_equal_unordered(got, EVENTS.with_columns(*exprs, **named))


def test_literal_column_after_projection_keeps_every_row(workers: int) -> None:
    """A select that reads no source column must still see one row per input row."""
    stream = source().with_columns(one=pl.lit(1)).select("one")
    assert_frame_equal_unordered(stream.collect(workers=workers, batch_size=5),
                                 EVENTS.with_columns(one=pl.lit(1)).select("one"))


def test_chain_of_stateless_operators(workers: int) -> None:
    stream = (
        source()
        .filter(pl.col("kind").is_not_null())
        .with_columns(value=pl.col("amount").fill_null(0) * pl.col("qty").fill_null(1))
        .filter(pl.col("value") != 0)
        .select("user", "kind", "value", late=pl.col("day") > dt.date(2024, 1, 2))
        .with_columns(pl.col("value").round(1))
    )
    expected = (
        EVENTS.filter(pl.col("kind").is_not_null())
        .with_columns(value=pl.col("amount").fill_null(0) * pl.col("qty").fill_null(1))
        .filter(pl.col("value") != 0)
        .select("user", "kind", "value", late=pl.col("day") > dt.date(2024, 1, 2))
        .with_columns(pl.col("value").round(1))
    )
    assert stream.schema == expected.schema
    assert_frame_equal_unordered(stream.collect(workers=workers, batch_size=2), expected)


def _add_ratio(batch: pl.DataFrame) -> pl.DataFrame:
    return batch.with_columns(ratio=pl.col("amount") / pl.col("qty"))


def test_map_batches_with_learned_schema(workers: int) -> None:
    stream = source().map_batches(_add_ratio)
    assert stream.schema == _add_ratio(EVENTS).schema
    assert_frame_equal_unordered(stream.collect(workers=workers, batch_size=4), _add_ratio(EVENTS))


def _summarise(batch: pl.DataFrame) -> pl.DataFrame:
    # Fails on an empty frame, so the schema must be declared.
    if batch.height == 0:
        raise ValueError("needs rows")
    return batch.select("user", label=pl.format("{}-{}", "kind", "qty"))


def test_map_batches_with_declared_schema(workers: int) -> None:
    stream = source().map_batches(_summarise, schema={"user": pl.Int64, "label": pl.String})
    assert stream.schema == pl.Schema({"user": pl.Int64, "label": pl.String})
    got = stream.collect(workers=workers, batch_size=5)
    assert_frame_equal_unordered(got, EVENTS.select("user", label=pl.format("{}-{}", "kind", "qty")))


def test_map_batches_accepts_a_pyarrow_schema() -> None:
    import pyarrow as pa

    stream = source().map_batches(_summarise, schema=pa.schema([("user", pa.int64()), ("label", pa.string())]))
    assert stream.schema == pl.Schema({"user": pl.Int64, "label": pl.String})


def test_map_batches_that_needs_a_declared_schema_says_so() -> None:
    with pytest.raises(af.SchemaError, match=r"pass schema=") as info:
        source().map_batches(_summarise)
    assert "map_batches" in str(info.value)


def test_map_batches_returning_a_non_frame_is_refused_at_build_time() -> None:
    with pytest.raises(af.PlanError, match="must return a polars DataFrame"):
        source().map_batches(lambda batch: batch.height)


def _drop_user(batch: pl.DataFrame) -> pl.DataFrame:
    return batch.drop("user")


def test_map_batches_missing_a_declared_column_fails_the_run(workers: int) -> None:
    stream = source().map_batches(_drop_user, schema=dict(EVENTS.schema))
    with pytest.raises(af.ArrowflowError, match=r"map_batches|output schema"):
        stream.collect(workers=workers)


def _extra_column(batch: pl.DataFrame) -> pl.DataFrame:
    return batch.with_columns(extra=pl.lit(1))


def _user_as_text(batch: pl.DataFrame) -> pl.DataFrame:
    return batch.with_columns(pl.col("user").cast(pl.String))


@pytest.mark.xfail(strict=True, reason="runtime/operators.py _checked_function drops undeclared columns "
                   "and casts mismatched types instead of failing (polars' map_batches validates the schema)")
@pytest.mark.parametrize("fn", [_extra_column, _user_as_text], ids=["extra-column", "wrong-dtype"])
def test_map_batches_output_that_contradicts_the_declared_schema_fails(fn) -> None:
    stream = source().map_batches(fn, schema=dict(EVENTS.schema))
    with pytest.raises(af.ArrowflowError, match="output schema"):
        stream.collect(workers=0)


def test_union_of_two_and_three_streams(workers: int) -> None:
    flow = af.Flow("union")
    parts = [EVENTS.slice(i * 4, 4) for i in range(3)]
    streams = [flow.from_polars(p, splits=2) for p in parts]
    two, three = collect_all(streams[0].union(streams[1]), streams[0].union(streams[1], streams[2]),
                             workers=workers, batch_size=3)
    assert_frame_equal_unordered(two, pl.concat(parts[:2]))
    assert_frame_equal_unordered(three, pl.concat(parts))


def test_union_of_branches_of_one_stream(workers: int) -> None:
    """Both branches of one source meet again: every row arrives once per branch it passed."""
    stream = source()
    cheap = stream.filter(pl.col("amount") < 5)
    dear = stream.filter(pl.col("amount") >= 5).with_columns(pl.col("amount") * 2)
    got = cheap.union(dear).select("user", "amount").collect(workers=workers, batch_size=4)
    expected = pl.concat(
        [EVENTS.filter(pl.col("amount") < 5), EVENTS.filter(pl.col("amount") >= 5).with_columns(pl.col("amount") * 2)]
    ).select("user", "amount")
    assert_frame_equal_unordered(got, expected)


def test_a_stream_consumed_twice_in_one_run(workers: int) -> None:
    stream = source().with_columns(double=pl.col("amount") * 2)
    left = stream.filter(pl.col("double") > 5)
    right = stream.select("user", "double")
    got_left, got_right, got_all = collect_all(left, right, stream, workers=workers, batch_size=3)
    base = EVENTS.with_columns(double=pl.col("amount") * 2)
    assert_frame_equal_unordered(got_left, base.filter(pl.col("double") > 5))
    assert_frame_equal_unordered(got_right, base.select("user", "double"))
    assert_frame_equal_unordered(got_all, base)


def test_empty_source_gives_an_empty_frame_with_the_schema(workers: int) -> None:
    stream = source(EVENTS.head(0), splits=None).filter(pl.col("amount") > 0).with_columns(x=pl.col("qty") + 1)
    got = stream.collect(workers=workers)
    assert got.height == 0
    assert got.schema == EVENTS.head(0).with_columns(x=pl.col("qty") + 1).schema


@pytest.mark.parametrize("batch_size", [1, 7, None])
@pytest.mark.parametrize("splits", [1, 5, 40])
def test_results_do_not_depend_on_batches_or_splits(batch_size: int | None, splits: int) -> None:
    stream = source(splits=splits).filter(pl.col("qty").is_not_null()).with_columns(x=pl.col("qty") * 3)
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
