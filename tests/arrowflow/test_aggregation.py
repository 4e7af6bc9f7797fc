"""Keyed running aggregation (``key_by(...).agg(...)``) against polars' ``group_by().agg()``.

With no checkpoints over a bounded input the engine emits exactly one row per key, so the
output must equal polars' group_by on the same rows, whatever the batch size, the number
of splits and the executor. ``first``/``last`` are compared only where arrival order is
defined: one split (read in order by one worker).
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import arrowflow as af
from arrowflow._graph.aggregates import IncrementalAgg
from arrowflow.io.memory import CollectSink
from arrowflow.testing import assert_frame_equal_unordered, collect_all

NAN = float("nan")


def _events(n: int = 60, seed: int = 7) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    users = rng.integers(0, 6, n).astype(object)
    users[rng.random(n) < 0.1] = None
    amount = rng.normal(10, 5, n).round(2).astype(object)
    amount[rng.random(n) < 0.15] = None
    base = dt.datetime(2024, 3, 1)
    return pl.DataFrame(
        {
            "user": pl.Series(list(users), dtype=pl.Int64),
            "country": pl.Series(rng.choice(["de", "fr", "ünï", ""], n).tolist()),
            "day": pl.Series(
                [dt.date(2024, 1, 1) + dt.timedelta(days=int(d)) for d in rng.integers(0, 4, n)]
            ),
            "ts": pl.Series(
                [base + dt.timedelta(seconds=int(s)) for s in rng.integers(0, 10_000, n)],
                dtype=pl.Datetime("ms"),
            ),
            "vip": pl.Series(rng.random(n) < 0.3),
            "amount": pl.Series(list(amount), dtype=pl.Float64),
            "qty": pl.Series(rng.integers(-3, 50, n), dtype=pl.Int32),
            "small": pl.Series(rng.integers(0, 100, n), dtype=pl.Int8),
            "label": pl.Series(
                [None if r < 0.2 else f"l{int(r * 100)}" for r in rng.random(n)], dtype=pl.String
            ),
        }
    )


EVENTS = _events()

# Aggregations whose result does not depend on row order.
ORDER_FREE = {
    "len": pl.len(),
    "count": pl.col("amount").count(),
    "size": pl.col("amount").len(),
    "sum": pl.col("amount").sum(),
    "sum_int": pl.col("qty").sum(),
    "sum_int8": pl.col("small").sum(),
    "sum_bool": pl.col("vip").sum(),
    "min": pl.col("amount").min(),
    "max": pl.col("qty").max(),
    "min_str": pl.col("label").min(),
    "max_str": pl.col("label").max(),
    "max_ts": pl.col("ts").max(),
    "min_day": pl.col("day").min(),
    "mean": pl.col("amount").mean(),
    "mean_int": pl.col("qty").mean(),
    "mean_bool": pl.col("vip").mean(),
    "mean_ts": pl.col("ts").mean(),
    "mean_day": pl.col("day").mean(),
    "sum_expr": (pl.col("qty") * 2 + 1).sum(),
    "sum_filtered": pl.col("amount").filter(pl.col("vip")).sum(),
    "count_when": pl.when(pl.col("qty") > 10).then(pl.col("label")).count(),
    "max_of_cast": pl.col("small").cast(pl.Int64).max(),
}
# Aggregations that depend on arrival order: compared on one split only.
ORDERED = {
    "first": pl.col("amount").first(),
    "last": pl.col("label").last(),
    "first_day": pl.col("day").first(),
    "first_filtered": pl.col("qty").filter(pl.col("vip")).first(),
    "last_filtered": pl.col("label").filter(pl.col("qty") > 40).last(),
    "first_non_null": pl.col("label").first(ignore_nulls=True),
    "last_non_null": pl.col("amount").last(ignore_nulls=True),
    "last_drop_nulls": pl.col("amount").drop_nulls().last(),
}


def _flow_agg(
    df: pl.DataFrame,
    keys: list[str],
    aggs: dict[str, pl.Expr],
    *,
    splits: int | None = None,
    workers: int = 0,
    batch_size: int | None = None,
) -> pl.DataFrame:
    stream = af.Flow("agg").from_polars(df, splits=splits).key_by(*keys).agg(**aggs)
    return stream.collect(workers=workers, batch_size=batch_size)


def _check(df: pl.DataFrame, keys: list[str], aggs: dict[str, pl.Expr], **run: int | None) -> None:
    got = _flow_agg(df, keys, aggs, **run)
    assert_frame_equal_unordered(got, df.group_by(keys).agg(**aggs), rel_tol=1e-9, abs_tol=1e-6)


@pytest.mark.parametrize("name", sorted(ORDER_FREE))
@pytest.mark.parametrize(
    ("batch_size", "splits"), [(1, 3), (7, 1), (None, 4)], ids=["b1-s3", "b7-s1", "ball-s4"]
)
def test_order_free_aggregation_matches_polars(
    name: str, batch_size: int | None, splits: int
) -> None:
    _check(EVENTS, ["user"], {name: ORDER_FREE[name]}, batch_size=batch_size, splits=splits)


@pytest.mark.parametrize("name", sorted(ORDERED))
@pytest.mark.parametrize("batch_size", [1, 5, None])
def test_ordered_aggregation_on_one_split_matches_polars(name: str, batch_size: int | None) -> None:
    _check(EVENTS, ["user"], {name: ORDERED[name]}, batch_size=batch_size, splits=1)


def test_every_aggregation_at_once_on_every_executor(workers: int) -> None:
    flow = af.Flow("all")
    many_splits = flow.from_polars(EVENTS, splits=5)
    one_split = flow.from_polars(EVENTS, splits=1, name="one_split")
    unordered, ordered = collect_all(
        many_splits.key_by("user").agg(**ORDER_FREE),
        one_split.key_by("country").agg(**ORDERED, n=pl.len()),
        workers=workers,
        batch_size=6,
    )
    assert_frame_equal_unordered(unordered, EVENTS.group_by("user").agg(**ORDER_FREE), abs_tol=1e-6)
    assert_frame_equal_unordered(
        ordered, EVENTS.group_by("country").agg(**ORDERED, n=pl.len()), abs_tol=1e-6
    )


KEY_SETS = [
    ["user"],
    ["country"],
    ["day"],
    ["ts"],
    ["vip"],
    ["label"],
    ["small"],
    ["user", "country"],
    ["country", "day", "vip"],
]


def test_key_types_and_multi_column_keys(workers: int) -> None:
    stream = af.Flow("keys").from_polars(EVENTS, splits=3)
    aggs = {"n": pl.len(), "total": pl.col("qty").sum(), "top": pl.col("amount").max()}
    frames = collect_all(
        *(stream.key_by(*keys).agg(**aggs) for keys in KEY_SETS), workers=workers, batch_size=8
    )
    for keys, got in zip(KEY_SETS, frames, strict=True):
        expected = EVENTS.group_by(keys).agg(**aggs)
        try:
            assert_frame_equal_unordered(got, expected)
        except AssertionError as exc:
            raise AssertionError(f"key_by{tuple(keys)}: {exc}") from None


def test_key_by_takes_a_list_of_columns() -> None:
    stream = af.Flow("keys").from_polars(EVENTS)
    got = stream.key_by(["user", "country"]).agg(n=pl.len()).collect()
    assert_frame_equal_unordered(got, EVENTS.group_by("user", "country").agg(n=pl.len()))


def test_null_keys_form_one_group_and_null_values_are_skipped() -> None:
    df = pl.DataFrame(
        {"k": [None, "a", None, "a", None, "b"], "v": [None, None, 2.0, None, 3.0, None]},
        schema={"k": pl.String, "v": pl.Float64},
    )
    aggs = {
        "n": pl.len(),
        "c": pl.col("v").count(),
        "s": pl.col("v").sum(),
        "m": pl.col("v").mean(),
        "lo": pl.col("v").min(),
        "hi": pl.col("v").max(),
    }
    for batch_size in (1, 2, None):
        got = _flow_agg(df, ["k"], aggs, batch_size=batch_size)
        assert_frame_equal_unordered(got, df.group_by("k").agg(**aggs))
    # Spelled out: the all-null group "b" has count 0, sum 0, mean/min/max null.
    row = _flow_agg(df, ["k"], aggs, batch_size=1).filter(pl.col("k") == "b").row(0, named=True)
    assert row == {"k": "b", "n": 1, "c": 0, "s": 0.0, "m": None, "lo": None, "hi": None}


def test_multi_column_keys_with_nulls_in_some_columns() -> None:
    df = pl.DataFrame(
        {"a": [1, 1, None, None, 1, None], "b": ["x", None, "x", None, None, None], "v": range(6)}
    )
    for batch_size in (1, 4):
        _check(df, ["a", "b"], {"n": pl.len(), "s": pl.col("v").sum()}, batch_size=batch_size)


def test_float_keys_zero_and_nan_in_one_batch() -> None:
    """polars groups -0.0 with 0.0 and every NaN together; so must the engine."""
    df = pl.DataFrame({"k": [0.0, -0.0, NAN, NAN, None, 1.5, NAN], "v": [1, 2, 3, 4, 5, 6, 7]})
    _check(df, ["k"], {"n": pl.len(), "s": pl.col("v").sum()}, batch_size=None)
    _check(df, ["k"], {"n": pl.len(), "s": pl.col("v").sum()}, batch_size=3)


_NAN_CASES = {
    # polars' hash join does not reliably match NaN with NaN (a 1-row probe misses it)
    "nan-key": (
        pl.DataFrame({"k": [NAN, NAN, 1.0, NAN], "v": [1, 2, 3, 4]}),
        {"n": pl.len(), "s": pl.col("v").sum()},
    ),
    # SQLite keeps a NaN REAL as NULL: the sql backend read a NaN sum back as null and the
    # next merge summed past it; a NaN key and a null key are two keys
    "nan-sum-and-null-key": (
        pl.DataFrame(
            {"k": [NAN, None, 1.0, NAN, None, 1.0], "v": [1.0, NAN, 2.0, 3.0, 4.0, 0.5]},
            schema={"k": pl.Float64, "v": pl.Float64},
        ),
        {"n": pl.len(), "s": pl.col("v").sum(), "top": pl.col("v").max()},
    ),
}


@pytest.mark.parametrize("case", sorted(_NAN_CASES))
@pytest.mark.parametrize("state", ["memory", "arrow", "lmdb", "sql"])
def test_float_nan_key_across_one_row_batches(
    monkeypatch: pytest.MonkeyPatch, state: str, case: str
) -> None:
    """Every backend's store treats a NaN key as one key, apart from the null key, and keeps a
    NaN value, when each batch reaches the store on its own."""
    import arrowflow._runtime.operators as operators

    monkeypatch.setattr(operators, "PARTIAL_ROWS", 1)  # each one-row batch is its own store get+put
    df, aggs = _NAN_CASES[case]
    got = (
        af.Flow("agg")
        .from_polars(df)
        .key_by("k")
        .agg(**aggs)
        .collect(workers=0, batch_size=1, state=state)
    )
    assert_frame_equal_unordered(got, df.group_by("k").agg(**aggs))


@pytest.mark.parametrize("store_class", ["memory", "arrow"])
def test_heap_stores_find_a_nan_key_in_a_one_row_store(store_class: str) -> None:
    from arrowflow.backends.arrow_ipc import ArrowStore
    from arrowflow.backends.memory import MemoryStore
    from arrowflow.state import StoreSpec

    spec = StoreSpec("s", pl.Schema({"k": pl.Float64}), pl.Schema({"n": pl.Int64}))
    store = (MemoryStore if store_class == "memory" else ArrowStore)(spec, range(0, 128))
    store.put(pl.DataFrame({"k": [NAN]}), pl.DataFrame({"n": [1]}))
    assert store.get(pl.DataFrame({"k": [NAN]})).rows() == [(1, True)]
    store.put(pl.DataFrame({"k": [NAN]}), pl.DataFrame({"n": [2]}))
    assert store.count() == 1
    assert store.get(pl.DataFrame({"k": [NAN, 1.0]})).rows() == [(2, True), (None, False)]
    store.delete(pl.DataFrame({"k": [NAN]}))
    assert store.count() == 0


def test_nan_values_in_min_max_sum_and_nan_max() -> None:
    df = pl.DataFrame({"k": [1, 1, 1, 2, 2, 3], "v": [1.0, NAN, 2.0, NAN, NAN, 4.0]})
    aggs = {
        "lo": pl.col("v").min(),
        "hi": pl.col("v").max(),
        "s": pl.col("v").sum(),
        "nan_hi": pl.col("v").nan_max(),
        "nan_lo": pl.col("v").nan_min(),
    }
    for batch_size in (1, 2, None):
        _check(df, ["k"], aggs, batch_size=batch_size)


def test_integer_sums_keep_polars_types_and_wrap_like_polars() -> None:
    df = pl.DataFrame(
        {
            "k": [1, 1, 1, 2],
            "i8": pl.Series([100, 100, 100, -5], dtype=pl.Int8),  # polars sums Int8 as Int64
            "u8": pl.Series([200, 200, 3, 1], dtype=pl.UInt8),
            "i32": pl.Series([2**31 - 1, 2**31 - 1, 1, 0], dtype=pl.Int32),
            "u64": pl.Series([2**63, 2**62, 1, 0], dtype=pl.UInt64),
            "f32": pl.Series([1.5, 2.25, 3.0, 0.5], dtype=pl.Float32),
            "dec": pl.Series(
                [Decimal("1.10"), Decimal("2.20"), Decimal("3.30"), None], dtype=pl.Decimal(10, 2)
            ),
            "dur": pl.Series([1, 2, 3, 4], dtype=pl.Int64).cast(pl.Duration("ms")),
        }
    )
    aggs = {f"{c}_sum": pl.col(c).sum() for c in df.columns[1:]}
    aggs |= {
        "f32_mean": pl.col("f32").mean(),
        "dur_mean": pl.col("dur").mean(),
        "dec_min": pl.col("dec").min(),
        "u64_max": pl.col("u64").max(),
        "i8_mean": pl.col("i8").mean(),
    }
    for batch_size in (1, None):
        _check(df, ["k"], aggs, batch_size=batch_size)


def test_categorical_and_decimal_keys() -> None:
    df = pl.DataFrame(
        {
            "cat": pl.Series(["x", "y", "x", None, "y"], dtype=pl.Categorical),
            "dec": pl.Series(
                [Decimal("1.5"), Decimal("1.5"), None, Decimal("2.0"), Decimal("1.5")],
                dtype=pl.Decimal(5, 1),
            ),
            "v": [1, 2, 3, 4, 5],
        }
    )
    _check(df, ["cat"], {"n": pl.len(), "s": pl.col("v").sum()}, batch_size=2)
    _check(df, ["dec"], {"n": pl.len(), "s": pl.col("v").sum()}, batch_size=2)


def test_positional_aggregations_are_named_by_their_output_name() -> None:
    stream = (
        af.Flow("pos")
        .from_polars(EVENTS)
        .key_by("user")
        .agg(
            pl.col("amount").sum(),
            pl.len(),
            pl.col("qty").max().alias("top_qty"),
            avg=pl.col("qty").mean(),
        )
    )
    expected = EVENTS.group_by("user").agg(
        pl.col("amount").sum(),
        pl.len(),
        pl.col("qty").max().alias("top_qty"),
        avg=pl.col("qty").mean(),
    )
    assert stream.schema == expected.schema
    assert_frame_equal_unordered(stream.collect(batch_size=9), expected)


def test_output_schema_is_known_before_running_and_matches_polars() -> None:
    aggs = {**ORDER_FREE, **ORDERED}
    stream = af.Flow("schema").from_polars(EVENTS).key_by("user", "day").agg(**aggs)
    assert stream.schema == EVENTS.group_by("user", "day").agg(**aggs).schema


def test_empty_input_gives_no_rows_and_the_schema() -> None:
    got = _flow_agg(EVENTS.head(0), ["user"], ORDER_FREE)
    assert got.height == 0
    assert got.schema == EVENTS.head(0).group_by("user").agg(**ORDER_FREE).schema


def test_one_row_per_key_without_checkpoints(workers: int) -> None:
    df = pl.DataFrame({"k": np.arange(2000) % 97, "v": np.arange(2000)})
    got = _flow_agg(
        df, ["k"], {"n": pl.len(), "s": pl.col("v").sum()}, splits=7, workers=workers, batch_size=50
    )
    assert got.height == 97
    assert got["k"].n_unique() == 97
    assert_frame_equal_unordered(got, df.group_by("k").agg(n=pl.len(), s=pl.col("v").sum()))


def test_stateless_operators_after_an_aggregation_and_a_second_aggregation(workers: int) -> None:
    totals = (
        af.Flow("two-stage")
        .from_polars(EVENTS, splits=4)
        .filter(pl.col("amount").is_not_null())
        .key_by("user", "country")
        .agg(n=pl.len(), total=pl.col("amount").sum())
    )
    per_country = (
        totals.filter(pl.col("n") > 1)
        .key_by("country")
        .agg(users=pl.len(), total=pl.col("total").sum())
    )
    ratio = totals.with_columns(avg=pl.col("total") / pl.col("n")).select("user", "country", "avg")
    got_country, got_ratio = collect_all(per_country, ratio, workers=workers, batch_size=7)

    base = (
        EVENTS.filter(pl.col("amount").is_not_null())
        .group_by("user", "country")
        .agg(n=pl.len(), total=pl.col("amount").sum())
    )
    assert_frame_equal_unordered(
        got_country,
        base.filter(pl.col("n") > 1)
        .group_by("country")
        .agg(users=pl.len(), total=pl.col("total").sum()),
    )
    assert_frame_equal_unordered(
        got_ratio,
        base.with_columns(avg=pl.col("total") / pl.col("n")).select("user", "country", "avg"),
    )


# ---------------------------------------------------------------- property tests

_value = st.one_of(st.none(), st.integers(-1000, 1000))


@st.composite
def _frames(draw: st.DrawFn) -> pl.DataFrame:
    n = draw(st.integers(0, 80))
    keys = draw(st.lists(st.one_of(st.none(), st.integers(0, 8)), min_size=n, max_size=n))
    tags = draw(st.lists(st.sampled_from(["a", "b", "ç", ""]), min_size=n, max_size=n))
    values = draw(st.lists(_value, min_size=n, max_size=n))
    return pl.DataFrame(
        {"k": keys, "tag": tags, "v": values},
        schema={"k": pl.Int64, "tag": pl.String, "v": pl.Int64},
    )


PROPERTY_AGGS = {
    "n": pl.len(),
    "c": pl.col("v").count(),
    "s": pl.col("v").sum(),
    "lo": pl.col("v").min(),
    "hi": pl.col("v").max(),
    "avg": pl.col("v").mean(),
    "pos": pl.col("v").filter(pl.col("v") > 0).sum(),
}


def _examples(workers: int) -> settings:
    # Process pools cost about a second to start: few examples there, more in-process.
    return settings(
        max_examples=40 if workers == 0 else 2,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )


def test_property_any_batch_size_and_split_count_equals_polars(workers: int) -> None:
    @_examples(workers)
    @given(
        df=_frames(),
        batch_size=st.integers(1, 30),
        splits=st.integers(1, 6),
        keys=st.sampled_from([["k"], ["tag"], ["k", "tag"]]),
    )
    def check(df: pl.DataFrame, batch_size: int, splits: int, keys: list[str]) -> None:
        got = _flow_agg(
            df, keys, PROPERTY_AGGS, splits=splits, batch_size=batch_size, workers=workers
        )
        assert_frame_equal_unordered(got, df.group_by(keys).agg(**PROPERTY_AGGS))

    check()


@settings(max_examples=40, deadline=None, derandomize=True)
@given(df=_frames(), batch_size=st.integers(1, 30))
def test_property_first_and_last_on_one_split_equal_polars(
    df: pl.DataFrame, batch_size: int
) -> None:
    aggs = {
        "f": pl.col("v").first(),
        "l": pl.col("v").last(),
        "fp": pl.col("v").filter(pl.col("v") > 0).first(),
        "lnn": pl.col("v").last(ignore_nulls=True),
    }
    got = _flow_agg(df, ["tag"], aggs, splits=1, batch_size=batch_size)
    assert_frame_equal_unordered(got, df.group_by("tag").agg(**aggs))


@settings(max_examples=30, deadline=None, derandomize=True)
@given(df=_frames(), cuts=st.lists(st.integers(0, 80), max_size=5))
def test_property_partial_merge_finalize_equals_polars(df: pl.DataFrame, cuts: list[int]) -> None:
    """The state algebra alone: partials of arbitrary slices, merged in order, then finalized."""
    aggs = {
        **PROPERTY_AGGS,
        "f": pl.col("v").first(),
        "l": pl.col("v").filter(pl.col("v") < 0).last(),
    }
    agg = IncrementalAgg(aggs, ["k"], df.schema, operator_id="agg")
    bounds = sorted({0, df.height, *(min(c, df.height) for c in cuts)})
    partials = [agg.partial(df.slice(lo, hi - lo)) for lo, hi in itertools.pairwise(bounds)]
    combined = agg.combine(pl.concat(partials)) if partials else agg.partial(df)
    assert_frame_equal_unordered(agg.finalize(combined), df.group_by("k").agg(**aggs))


@pytest.mark.parametrize("state", ["memory", "arrow", "lmdb", "sql"])
def test_emission_reads_the_store_once_more_keys_changed_than_it_keeps(
    monkeypatch: pytest.MonkeyPatch, state: str
) -> None:
    """An AggOp emits the values its merges put while few keys changed; beyond EMIT_CACHE_ROWS
    a run whose store opened empty emits its store's scan, in slices of EMIT_ROWS. Both give
    polars' answer, every key once."""
    import arrowflow._runtime.operators as operators

    monkeypatch.setattr(operators, "PARTIAL_ROWS", 5)  # a merge every few batches
    monkeypatch.setattr(operators, "EMIT_ROWS", 3)  # several slices, one a remainder
    for cache_rows in (10**9, 7):
        monkeypatch.setattr(operators, "EMIT_CACHE_ROWS", cache_rows)
        flow = af.Flow("emit")
        totals = (
            flow.from_polars(EVENTS, splits=3)
            .key_by("user")
            .agg(n=pl.len(), s=pl.col("amount").sum(), hi=pl.col("amount").max())
        )
        got = totals.collect(workers=0, batch_size=4, state=state)
        assert got.select("user").is_duplicated().sum() == 0
        assert_frame_equal_unordered(
            got,
            EVENTS.group_by("user").agg(
                n=pl.len(), s=pl.col("amount").sum(), hi=pl.col("amount").max()
            ),
            rel_tol=1e-9,
            abs_tol=1e-6,
        )


@pytest.mark.parametrize("state", ["memory", "arrow", "lmdb", "sql"])
def test_an_emission_holds_only_the_keys_updated_since_the_last_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, state: str
) -> None:
    """Past EMIT_CACHE_ROWS the first emission of a store that opened empty scans it (every key
    in it was updated); from then on, and after a restore onto a store that holds keys, an
    emission holds only the keys updated since the one before. The second file touches 10 of
    the first file's 40 users: its checkpoint's part file must hold those 10 and no other,
    in a fresh run and in one restored from the first checkpoint."""
    import arrowflow._runtime.operators as operators

    monkeypatch.setattr(operators, "PARTIAL_ROWS", 5)
    monkeypatch.setattr(operators, "EMIT_CACHE_ROWS", 7)
    rng = np.random.default_rng(41)
    inbox, out = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    first = pl.DataFrame({"user": rng.permutation(4_000) % 40, "amount": rng.random(4_000)})
    second = pl.DataFrame(
        {
            "user": rng.choice([3, 38, 7, 21, 0, 15, 29, 11, 33, 26], 4_000),
            "amount": rng.random(4_000),
        }
    )
    first.write_parquet(inbox / "a.parquet")
    second.write_parquet(inbox / "b.parquet")
    aggs = {"n": pl.len(), "total": pl.col("amount").sum()}
    expected = pl.concat([first, second]).group_by("user").agg(**aggs)

    def run(**options: Any) -> af.RunResult:
        flow = af.Flow("updated-keys")
        totals = flow.read_parquet(str(inbox / "*.parquet")).key_by("user").agg(**aggs)
        totals.write_parquet(str(out))
        # a checkpoint at each file's end: 4,000 rows in batches of 500
        return flow.run(
            workers=0,
            state=state,
            checkpoint_dir=str(tmp_path / "ck"),
            checkpoint_every=af.every_rows(4_000),
            batch_size=500,
            **options,
        )

    def check() -> None:
        parts = [pl.read_parquet(p) for p in sorted(out.glob("part-*.parquet"))]
        assert [sorted(p["user"]) for p in parts] == [
            sorted(first["user"].unique()),
            sorted(second["user"].unique()),
        ]
        newest = pl.concat(parts[::-1]).unique("user", keep="first")
        assert_frame_equal_unordered(newest, expected, rel_tol=1e-9, abs_tol=1e-9)

    result = run(keep_checkpoints=5)
    assert len(result.checkpoints) >= 2
    check()
    with pytest.warns(UserWarning, match="rolled back output of later checkpoints"):
        again = run(restore=result.checkpoints[0])
    assert again.restored_from == result.checkpoints[0]
    check()


def _user_totals(df: pl.DataFrame) -> pl.DataFrame:
    """polars' answer to the keyed aggregation of the store-call tests below."""
    return df.group_by("user").agg(total=pl.col("amount").sum())


class _CountingStore:
    """Wraps a memory store and logs the calls an aggregation makes on it (workers=0: the
    backend object is the one the run uses, in this process)."""

    def __init__(self, store: Any, log: list[tuple[str, int]]) -> None:
        self.store, self.log = store, log

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def get(self, keys: pl.DataFrame) -> pl.DataFrame:
        self.log.append(("get", keys.height))
        return self.store.get(keys)

    def put(self, keys: pl.DataFrame, values: pl.DataFrame) -> None:
        self.log.append(("put", keys.height))
        self.store.put(keys, values)

    def scan(self) -> Any:
        self.log.append(("scan", self.store.count()))
        return self.store.scan()


def _counting_backend(log: list[tuple[str, int]]) -> Any:
    from arrowflow.backends.memory import MemoryBackend

    class Counting(MemoryBackend):
        def open_store(self, spec: Any, key_groups: range, context: Any) -> Any:
            return _CountingStore(super().open_store(spec, key_groups, context), log)

    return Counting()


@pytest.mark.parametrize(("partial_rows", "merged"), [(8, 8), (9, 12)])
def test_partials_are_merged_into_the_store_every_partial_rows_keys(
    monkeypatch: pytest.MonkeyPatch, partial_rows: int, merged: int
) -> None:
    """The aggregation pre-aggregates each batch and merges the partials into its store once
    they hold PARTIAL_ROWS rows (one store read and write per merge), so the heap never holds
    more than that: batches of 4 new keys merge 8 keys at a time against a threshold of 8,
    12 against 9. The totals are polars'."""
    import arrowflow._runtime.operators as operators

    monkeypatch.setattr(operators, "PARTIAL_ROWS", partial_rows)
    df = pl.DataFrame({"user": np.random.default_rng(5).permutation(96), "amount": np.arange(96)})
    log: list[tuple[str, int]] = []
    flow = af.Flow("merges")
    totals = flow.from_polars(df, splits=1).key_by("user").agg(total=pl.col("amount").sum())
    got = totals.collect(workers=0, batch_size=4, state=_counting_backend(log))
    assert_frame_equal_unordered(got, _user_totals(df))
    puts = [n for call, n in log if call == "put"]
    assert puts == [merged] * (96 // merged), log
    assert [n for call, n in log if call == "get"] == puts


def test_the_first_emission_of_a_store_that_opened_empty_scans_it_past_the_cache(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past EMIT_CACHE_ROWS updated keys, a run whose store opened empty emits by scanning the
    store (every key in it changed) instead of keeping the keys and reading them back: one
    scan, no get beyond the merges'. Below it, the merged values are emitted as they are: no
    read at all. Totals: polars'."""
    import arrowflow._runtime.operators as operators

    monkeypatch.setattr(operators, "PARTIAL_ROWS", 8)
    df = pl.DataFrame(
        {"user": np.random.default_rng(6).permutation(96) % 48, "amount": np.arange(96)}
    )
    expected = _user_totals(df)
    for cache_rows, reads in ((10**9, []), (20, [("scan", 48)])):
        monkeypatch.setattr(operators, "EMIT_CACHE_ROWS", cache_rows)
        log: list[tuple[str, int]] = []
        flow = af.Flow("scan-emission")
        totals = flow.from_polars(df, splits=1).key_by("user").agg(total=pl.col("amount").sum())
        got = totals.collect(workers=0, batch_size=4, state=_counting_backend(log))
        assert_frame_equal_unordered(got, expected)
        merges = sum(1 for call, _ in log if call == "put")
        assert [entry for entry in log if entry[0] == "scan"] == reads
        assert sum(1 for call, _ in log if call == "get") == merges  # only the merges read


@pytest.mark.parametrize("cache_rows", [10**9, 20], ids=["values-kept", "store-scan"])
def test_an_emission_comes_out_in_slices_of_emit_rows(
    monkeypatch: pytest.MonkeyPatch, cache_rows: int
) -> None:
    """An emission of many keys is sent on in batches of EMIT_ROWS keys (the last one the
    rest), whether it emits the values its merges kept or scans the store, so a store larger
    than memory never reaches the sink whole. 48 keys, EMIT_ROWS 5: nine of 5, one of 3."""
    import arrowflow._runtime.operators as operators

    monkeypatch.setattr(operators, "PARTIAL_ROWS", 8)
    monkeypatch.setattr(operators, "EMIT_ROWS", 5)
    monkeypatch.setattr(operators, "EMIT_CACHE_ROWS", cache_rows)
    df = pl.DataFrame(
        {"user": np.random.default_rng(9).permutation(96) % 48, "amount": np.arange(96)}
    )
    heights: list[int] = []

    def tap(batch: pl.DataFrame) -> pl.DataFrame:
        if batch.height:  # (map_batches is also called with an empty batch, for the schema)
            heights.append(batch.height)
        return batch

    flow = af.Flow("slices")
    (
        flow.from_polars(df, splits=1)
        .key_by("user")
        .agg(total=pl.col("amount").sum())
        .map_batches(tap)
        .write_to(CollectSink(), name="out")
    )
    result = flow.run(workers=0, batch_size=4)
    assert heights == [5] * 9 + [3]
    assert_frame_equal_unordered(pl.concat(result.outputs["out"]), _user_totals(df))


def test_every_emission_emits_the_values_its_merges_kept(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Below the cache, each checkpoint's emission (not only the first) sends the values its
    merges put without reading them back: the store is read once per merge, never more. Each
    checkpoint's part file holds the keys updated since the previous one, at polars' totals."""
    import arrowflow._runtime.operators as operators

    monkeypatch.setattr(operators, "PARTIAL_ROWS", 8)
    df = pl.DataFrame(
        {"user": np.random.default_rng(12).permutation(96) % 30, "amount": np.arange(96)}
    )
    log: list[tuple[str, int]] = []
    flow = af.Flow("kept-values")
    (
        flow.from_polars(df, splits=1)
        .key_by("user")
        .agg(total=pl.col("amount").sum())
        .write_parquet(str(tmp_path / "out"))
    )
    result = flow.run(
        workers=0,
        batch_size=4,
        state=_counting_backend(log),
        checkpoint_dir=str(tmp_path / "ck"),
        checkpoint_every=af.every_rows(32),
    )
    assert len(result.checkpoints) >= 3
    merges = sum(1 for call, _ in log if call == "put")
    assert sum(1 for call, _ in log if call == "get") == merges
    parts = [pl.read_parquet(p) for p in sorted((tmp_path / "out").glob("part-*.parquet"))]
    newest = pl.concat(parts[::-1]).unique("user", keep="first")
    assert_frame_equal_unordered(newest, _user_totals(df))


def test_a_key_merged_twice_before_an_emission_is_emitted_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two merges touch the same keys before the one emission: each key comes out once, with
    its total over both (polars)."""
    import arrowflow._runtime.operators as operators

    monkeypatch.setattr(operators, "PARTIAL_ROWS", 8)
    df = pl.DataFrame(
        {"user": [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3], "amount": range(16)}
    )
    log: list[tuple[str, int]] = []
    flow = af.Flow("twice")
    totals = flow.from_polars(df, splits=1).key_by("user").agg(total=pl.col("amount").sum())
    got = totals.collect(workers=0, batch_size=4, state=_counting_backend(log))
    assert [call for call, _ in log if call == "put"] == ["put", "put"]  # two merges
    assert got.height == df["user"].n_unique()
    assert_frame_equal_unordered(got, _user_totals(df))


@pytest.mark.parametrize(("floor", "threshold"), [(4, 24), (8, 32)])
def test_the_updated_key_list_is_deduplicated_past_four_times_the_store(
    monkeypatch: pytest.MonkeyPatch, floor: int, threshold: int
) -> None:
    """Between two emissions an aggregation keeps the keys each merge updated; a key merged
    again and again (a long emit_every) would grow that list without bound, so once it holds
    more than 4 x max(COMPACT_DIRTY_ROWS, keys in the store) rows it is deduplicated, keeping
    each key's newest value. Six keys, one merge of all six per batch: against a floor of 4
    the bound is 4 x 6 = 24, against a floor of 8 it is 4 x 8 = 32. The rows kept after each
    merge follow that rule written out here, and the totals are polars'."""
    import arrowflow._runtime.operators as operators

    monkeypatch.setattr(operators, "PARTIAL_ROWS", 6)  # each batch of 6 keys is one merge
    monkeypatch.setattr(operators, "COMPACT_DIRTY_ROWS", floor)
    rng = np.random.default_rng(31)
    merges = 20
    df = pl.DataFrame(
        {
            "user": np.concatenate([rng.permutation(6) for _ in range(merges)]),
            "amount": rng.integers(-50, 50, 6 * merges),
        }
    )
    kept: list[tuple[int, int]] = []
    merge = operators.AggOp.merge_partials

    def recorded(self: Any) -> None:
        had = bool(self.partials)
        merge(self)
        if had:
            kept.append((self.dirty_rows, sum(frame.height for frame in self.dirty)))

    monkeypatch.setattr(operators.AggOp, "merge_partials", recorded)
    flow = af.Flow("compaction")
    totals = flow.from_polars(df, splits=1).key_by("user").agg(total=pl.col("amount").sum())
    got = totals.collect(workers=0, batch_size=6)
    assert_frame_equal_unordered(got, _user_totals(df))
    expected, rows = [], 0
    for _ in range(merges):
        rows += 6
        if rows > threshold:
            rows = 6  # deduplicated: each of the six keys once
        expected.append((rows, rows))
    assert kept == expected


class _ClosingStore(_CountingStore):
    def close(self) -> None:
        self.log.append(("close", self.store.count()))
        self.store.close()


def _closing_backend(log: list[tuple[str, int]]) -> Any:
    from arrowflow.backends.memory import MemoryBackend

    class Closing(MemoryBackend):
        def open_store(self, spec: Any, key_groups: range, context: Any) -> Any:
            return _ClosingStore(super().open_store(spec, key_groups, context), log)

    return Closing()


class _ClosingSink(CollectSink):
    def __init__(self, log: list[tuple[str, int]]) -> None:
        super().__init__()
        self.log = log

    def open_writer(self, worker: int, parallelism: int, operator_id: str) -> Any:
        """The collecting writer, its close logged (workers=0: this sink object is the run's)."""
        writer = super().open_writer(worker, parallelism, operator_id)
        close = writer.close

        def logged() -> None:
            self.log.append(("writer-close", 0))
            close()

        writer.close = logged  # type: ignore[method-assign]
        return writer


def test_a_run_closes_each_store_and_sink_writer_once(tmp_path: Path) -> None:
    """At the end of a run the aggregation closes its store and the sink its writer, once
    each (an lmdb environment or a database connection left open holds its files and
    descriptors): also when the run checkpoints. The rows are polars'."""
    df = pl.DataFrame(
        {"user": np.random.default_rng(3).permutation(200) % 23, "amount": np.arange(200)}
    )
    for checkpoints in (None, str(tmp_path / "ck")):
        log: list[tuple[str, int]] = []
        flow = af.Flow("closing")
        sink = _ClosingSink(log)
        (
            flow.from_polars(df, splits=2)
            .key_by("user")
            .agg(total=pl.col("amount").sum())
            .write_to(sink, name="out")
        )
        result = flow.run(
            workers=0, batch_size=16, state=_closing_backend(log), checkpoint_dir=checkpoints
        )
        assert_frame_equal_unordered(pl.concat(result.outputs["out"]), _user_totals(df))
        closes = [entry for entry in log if "close" in entry[0]]
        assert closes == [("close", 23), ("writer-close", 0)], log


def test_a_bounded_run_commits_everything_whatever_the_sinks_own_emit_every(
    tmp_path: Path,
) -> None:
    """A sink's own emit_every (an upsert table every hour) holds its rows back between the
    commits of a run without checkpoints, but never past the end of a bounded run: its final
    commit takes every total (polars'), at once, not an hour later."""
    import adbc_driver_sqlite.dbapi as sqlite

    df = pl.DataFrame(
        {"user": np.random.default_rng(4).permutation(300) % 41, "amount": np.arange(300)}
    )
    db = tmp_path / "totals.db"
    flow = af.Flow("hourly")
    (
        flow.from_polars(df, splits=3)
        .key_by("user")
        .agg(total=pl.col("amount").sum())
        .write_database(
            f"sqlite:///{db}", table="totals", mode="upsert", key="user", emit_every="1h"
        )
    )
    flow.run(workers=0, batch_size=25)
    with sqlite.connect(str(db)) as con, con.cursor() as cursor:
        cursor.execute('SELECT "user", total FROM totals')
        got = pl.from_arrow(cursor.fetch_arrow_table())
    assert isinstance(got, pl.DataFrame)
    assert_frame_equal_unordered(got, _user_totals(df))


@pytest.mark.parametrize("workers", [0, 2])
def test_an_aggregation_counts_the_rows_it_was_given_not_the_partials(workers: int) -> None:
    """Behind its exchange an aggregation receives one partial row per key and batch (the
    combiner); its rows_in is still the input rows the partials stand for (polars' count
    after the filter), on any worker count, and the exchange's as well."""
    df = pl.DataFrame(
        {"user": np.random.default_rng(8).permutation(5_000) % 37, "amount": np.arange(5_000)}
    )
    flow = af.Flow("rows-in")
    (
        flow.from_polars(df, splits=4)
        .filter(pl.col("amount") % 3 != 0)
        .key_by("user")
        .agg(total=pl.col("amount").sum())
        .write_to(CollectSink(), name="out")
    )
    result = flow.run(workers=workers, batch_size=100)
    kept = df.filter(pl.col("amount") % 3 != 0)
    metrics = {row["kind"]: row for row in result.metrics().iter_rows(named=True)}
    assert metrics["agg"]["rows_in"] == kept.height
    assert metrics["exchange"]["rows_in"] == kept.height
    assert metrics["agg"]["rows_out"] == kept["user"].n_unique() == result.rows_out


# ---------------------------------------------------------------- first/last and the worker count
def _shop_files(folder) -> pl.DataFrame:
    """Five files whose rows are not ordered by store or id (the new-user trial's case)."""
    rng = np.random.default_rng(23)
    folder.mkdir()
    frames = []
    for i in range(5):
        ids = rng.permutation(4_000) + i * 4_000
        frame = pl.DataFrame({"store": rng.choice(list("abcdefg"), 4_000), "id": ids})
        frame.write_parquet(folder / f"part-{i}.parquet", row_group_size=700)
        frames.append(frame)
    return pl.concat(frames)


def test_first_and_last_do_not_depend_on_the_worker_count(tmp_path) -> None:
    """first()/last() take the first/last row to arrive; several workers reading splits side
    by side would change that order from run to run. The default runs such a flow with one
    worker (its splits in file order, as polars reads them); workers=2 is refused."""
    data = _shop_files(tmp_path / "in")
    expected = data.group_by("store").agg(f=pl.col("id").first(), l=pl.col("id").last())

    def run(out: str, **options) -> af.RunResult:
        flow = af.Flow("shops")
        stream = flow.read_parquet(str(tmp_path / "in" / "*.parquet"))
        stream.key_by("store").agg(f=pl.col("id").first(), l=pl.col("id").last()).write_parquet(
            str(tmp_path / out)
        )
        return flow.run(**options)

    for attempt in range(2):
        result = run(f"out{attempt}", batch_size=300)
        if (os.cpu_count() or 1) <= 2:
            assert result.workers == 0  # the default for expressions on this machine anyway
        else:
            assert result.workers == 1
            assert any("ran with one worker" in note for note in result.notes)
        assert_frame_equal_unordered(pl.read_parquet(tmp_path / f"out{attempt}"), expected)
    with pytest.raises(af.PlanError, match=r"shops|first or last row to arrive.*workers=1"):
        run("refused", workers=2)
    assert not (tmp_path / "refused").exists()
    # With a Python step the default is the pool: one worker then, with the note.
    flow = af.Flow("shops-py")
    stream = flow.read_parquet(str(tmp_path / "in" / "*.parquet")).map_batches(lambda b: b)
    stream.key_by("store").agg(f=pl.col("id").first(), l=pl.col("id").last()).write_parquet(
        str(tmp_path / "out-py")
    )
    result = flow.run(batch_size=300)
    assert result.workers == 1 and any("ran with one worker" in n for n in result.notes)
    assert_frame_equal_unordered(pl.read_parquet(tmp_path / "out-py"), expected)
