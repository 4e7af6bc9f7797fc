"""The public helpers in ``arrowflow.testing`` behave as documented."""

from __future__ import annotations

import math

import polars as pl
import pytest

import arrowflow as af
from arrowflow.testing import CollectingSink, assert_frame_equal_unordered, collect_all


def test_equal_rows_in_another_order_pass() -> None:
    left = pl.DataFrame(
        {"k": [1, 2, None, 2], "s": ["a", None, "c", "b"], "f": [0.1 + 0.2, 1.0, math.nan, None]}
    )
    assert_frame_equal_unordered(left, left.reverse())
    assert_frame_equal_unordered(
        left,
        left.with_columns(pl.col("f").fill_nan(math.nan)).sample(
            fraction=1.0, shuffle=True, seed=1
        ),
    )


def test_floats_compare_with_tolerance_unless_exact() -> None:
    left = pl.DataFrame({"k": [1, 2], "f": [0.1 + 0.2, 1.0]})
    right = pl.DataFrame({"k": [2, 1], "f": [1.0, 0.3]})
    assert_frame_equal_unordered(left, right)
    with pytest.raises(AssertionError):
        assert_frame_equal_unordered(left, right, check_exact=True)


def test_a_missing_or_extra_row_is_shown_with_its_counts() -> None:
    left = pl.DataFrame({"k": [1, 2, 2], "s": ["a", "b", "b"]})
    right = pl.DataFrame({"k": [1, 2, 3], "s": ["a", "b", "c"]})
    with pytest.raises(AssertionError) as info:
        assert_frame_equal_unordered(left, right)
    text = str(info.value)
    assert "more often in left" in text and "more often in right" in text
    assert "#left" in text and "#right" in text
    with pytest.raises(AssertionError, match=r"row counts differ: left has 2 rows, right has 3"):
        assert_frame_equal_unordered(left.head(2), right)


def test_columns_and_types_must_match() -> None:
    with pytest.raises(AssertionError, match="columns differ"):
        assert_frame_equal_unordered(pl.DataFrame({"a": [1]}), pl.DataFrame({"b": [1]}))
    with pytest.raises(AssertionError, match=r"a: Int64 vs Float64"):
        assert_frame_equal_unordered(pl.DataFrame({"a": [1]}), pl.DataFrame({"a": [1.0]}))
    assert_frame_equal_unordered(
        pl.DataFrame({"a": [1]}), pl.DataFrame({"a": [1.0]}), check_dtypes=False
    )
    with pytest.raises(AssertionError, match="columns differ"):
        assert_frame_equal_unordered(
            pl.DataFrame({"a": [1], "b": [2]}), pl.DataFrame({"b": [2], "a": [1]})
        )
    assert_frame_equal_unordered(
        pl.DataFrame({"a": [1], "b": [2]}),
        pl.DataFrame({"b": [2], "a": [1]}),
        check_column_order=False,
    )


def test_nested_columns_are_compared_too() -> None:
    left = pl.DataFrame({"k": [1, 2], "l": [[1, 2], [3]]})
    assert_frame_equal_unordered(left, left.reverse())
    with pytest.raises(AssertionError):
        assert_frame_equal_unordered(left, pl.DataFrame({"k": [2, 1], "l": [[1, 2], [3]]}))


def test_only_dataframes_are_accepted() -> None:
    with pytest.raises(TypeError, match="two polars DataFrames"):
        assert_frame_equal_unordered(pl.DataFrame({"a": [1]}).lazy(), pl.DataFrame({"a": [1]}))  # type: ignore[arg-type]


def test_collecting_sink_next_to_other_sinks() -> None:
    df = pl.DataFrame({"k": [1, 2, 1], "v": [1, 2, 3]})
    flow = af.Flow("collecting")
    src = flow.from_polars(df, splits=2)
    rows, sums = CollectingSink(), CollectingSink()
    src.write_to(rows)
    src.key_by("k").agg(s=pl.col("v").sum()).write_to(sums)
    flow.run(workers=0, batch_size=1)
    assert_frame_equal_unordered(rows.to_polars(), df)
    assert_frame_equal_unordered(sums.to_polars(), df.group_by("k").agg(s=pl.col("v").sum()))
    flow.run(workers=0)  # a fresh run starts empty
    assert rows.to_polars().height == 3


def test_collecting_sink_without_rows_gives_the_schema() -> None:
    assert CollectingSink().to_polars(pl.Schema({"a": pl.Int8})).schema == pl.Schema({"a": pl.Int8})


def test_collect_all_validates_its_arguments() -> None:
    with pytest.raises(TypeError, match="at least one stream"):
        collect_all()
    a = af.Flow("a").from_polars(pl.DataFrame({"x": [1]}))
    b = af.Flow("b").from_polars(pl.DataFrame({"x": [1]}))
    with pytest.raises(TypeError, match="one Flow"):
        collect_all(a, b)
    assert a.flow.sinks() == []
