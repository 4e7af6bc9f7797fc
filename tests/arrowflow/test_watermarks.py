"""Watermark helpers: the event-time column is checked before a run (a missing or
non-Datetime column is a SchemaError that names the operator and the column and says how to
convert it), the two reserved values, and how a watermark is shown."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest

import arrowflow as af
from arrowflow._foundation.watermarks import IDLE, NO_WATERMARK, describe_watermark, to_micros


@pytest.mark.parametrize(
    ("ts", "hint"),
    [
        (pl.Series([1, 2, 3]), r"pl\.from_epoch\(pl\.col\('ts'\), time_unit='ms'\)"),
        (pl.Series(["2024-01-01 00:00:00"] * 3), r"pl\.col\('ts'\)\.str\.to_datetime\(\)"),
        (pl.Series([1.5, 2.5, 3.5]), r"pl\.col\('ts'\)\.cast\(pl\.Datetime\('ms'\)\)"),
    ],
    ids=["int", "string", "float"],
)
def test_a_non_datetime_event_time_column_says_how_to_convert_it(ts: pl.Series, hint: str) -> None:
    df = pl.DataFrame({"ts": ts, "k": [1, 2, 1]})
    with pytest.raises(
        af.SchemaError, match=rf"the event-time column 'ts' must be a pl\.Datetime.*{hint}"
    ):
        stream = af.Flow("watermark-errors").from_polars(df).with_watermark("ts", delay="1s")
        stream.key_by("k").window(af.tumbling("10s")).agg(n=pl.len()).collect(workers=0)


def test_a_missing_event_time_column_names_the_columns() -> None:
    df = pl.DataFrame({"ts": pl.Series([0, 1]).cast(pl.Datetime("ms")), "k": [1, 2]})
    with pytest.raises(
        af.SchemaError, match=r"no event-time column 'time'; the columns are \['ts', 'k'\]"
    ):
        stream = af.Flow("watermark-errors").from_polars(df).with_watermark("time", delay="1s")
        stream.key_by("k").window(af.tumbling("10s")).agg(n=pl.len()).collect(workers=0)


def test_reserved_values_are_the_ends_of_int64() -> None:
    """Watermarks travel as int64 microseconds: 'nothing seen yet' must be below every event
    time (1969 ones too) and 'idle' above every one, and both must fit the int64 messages."""
    assert NO_WATERMARK == np.iinfo(np.int64).min
    assert IDLE == np.iinfo(np.int64).max
    assert pl.Series([NO_WATERMARK, IDLE], dtype=pl.Int64).to_list() == [NO_WATERMARK, IDLE]


def test_describe_watermark() -> None:
    assert describe_watermark(NO_WATERMARK) == "none yet"
    assert describe_watermark(IDLE) == "idle"
    moment = dt.datetime(2024, 2, 29, 23, 59, 59, 123456, tzinfo=dt.timezone.utc)
    micros = pl.Series([moment]).dt.epoch("us")[0]
    assert describe_watermark(micros) == moment.isoformat()
    assert describe_watermark(-1) == "1969-12-31T23:59:59.999999+00:00"


@pytest.mark.parametrize("unit", ["ms", "us", "ns"])
def test_to_micros_floors_every_unit(unit: str) -> None:
    """Event times in microseconds, floored (also for negative times), from a Series or an
    expression alike; the reference is polars' own epoch conversion."""
    ts = pl.Series("ts", [-1_500_001, -1, 0, 1, 999, 1_700_000_000_123_456]).cast(pl.Datetime("us"))
    if unit == "ns":
        ts = pl.Series("ts", [-1_500_001_001, -1, 0, 999, 1_001, 7]).cast(pl.Datetime("ns"))
    ts = ts.cast(pl.Datetime(unit))
    expected = ts.dt.epoch("us") if unit != "ns" else ts.to_physical() // 1000
    assert to_micros(ts, ts.dtype).to_list() == expected.to_list()
    frame = ts.to_frame()
    assert (
        frame.select(to_micros(pl.col("ts"), ts.dtype)).to_series().to_list() == expected.to_list()
    )
