"""The event-time column is checked before a run: a missing or non-Datetime column is a
SchemaError that names the operator and the column and says how to convert it."""

from __future__ import annotations

import polars as pl
import pytest

import arrowflow as af


@pytest.mark.parametrize(("ts", "hint"), [
    (pl.Series([1, 2, 3]), r"pl\.from_epoch\(pl\.col\('ts'\), time_unit='ms'\)"),
    (pl.Series(["2024-01-01 00:00:00"] * 3), r"pl\.col\('ts'\)\.str\.to_datetime\(\)"),
    (pl.Series([1.5, 2.5, 3.5]), r"pl\.col\('ts'\)\.cast\(pl\.Datetime\('ms'\)\)"),
], ids=["int", "string", "float"])
def test_a_non_datetime_event_time_column_says_how_to_convert_it(ts: pl.Series, hint: str) -> None:
    df = pl.DataFrame({"ts": ts, "k": [1, 2, 1]})
    with pytest.raises(af.SchemaError, match=rf"the event-time column 'ts' must be a pl\.Datetime.*{hint}"):
        stream = af.Flow("watermark-errors").from_polars(df).with_watermark("ts", delay="1s")
        stream.key_by("k").window(af.tumbling("10s")).agg(n=pl.len()).collect(workers=0)


def test_a_missing_event_time_column_names_the_columns() -> None:
    df = pl.DataFrame({"ts": pl.Series([0, 1]).cast(pl.Datetime("ms")), "k": [1, 2]})
    with pytest.raises(af.SchemaError, match=r"no event-time column 'time'; the columns are \['ts', 'k'\]"):
        stream = af.Flow("watermark-errors").from_polars(df).with_watermark("time", delay="1s")
        stream.key_by("k").window(af.tumbling("10s")).agg(n=pl.len()).collect(workers=0)
