"""In-memory sources (from_polars, from_arrow) and the collecting sink behind collect()."""

from __future__ import annotations

import pickle

import polars as pl
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import arrowflow as af
from arrowflow.errors import PlanError
from arrowflow.io.memory import MemorySource
from arrowflow.testing import collect_all

FRAME = pl.DataFrame(
    {"k": [3, 1, None, 2, 5], "s": ["a", None, "", "d", "é"], "f": [0.5, 1.5, None, 2.5, 3.5]}
)


@settings(max_examples=30, deadline=None)
@given(
    height=st.integers(0, 30),
    splits=st.none() | st.integers(1, 8),
    batch_size=st.none() | st.integers(1, 7),
    columns=st.sampled_from([None, ["s"], ["f", "k"], []]),
)
def test_reader_returns_every_row_once(
    height, splits, batch_size, columns, read_all, same_rows
) -> None:
    frame = pl.DataFrame(
        {
            "k": list(range(height)),
            "s": [str(i) for i in range(height)],
            "f": [i / 2 for i in range(height)],
        }
    )
    source = MemorySource.from_polars(frame, splits=splits)
    if columns is not None:
        source = source.with_columns_pruned(columns)
    data, bad = read_all(source, batch_size=batch_size)
    expected = (
        frame
        if columns is None
        else (frame.select(columns) if columns else pl.DataFrame(height=height))
    )
    assert data.shape == expected.shape
    same_rows(data, expected)
    assert bad is None


def test_from_polars_and_arrow_on_every_executor(workers: int, same_rows) -> None:
    flow = af.Flow("memory")
    table = FRAME.to_arrow()
    streams = [
        flow.from_polars(FRAME, splits=3),
        flow.from_polars(FRAME.lazy()).filter(pl.col("k") > 1),
        flow.from_arrow(table, splits=2),
        flow.from_arrow(table.to_batches(max_chunksize=2)),
    ]
    got = collect_all(*streams, workers=workers)
    for frame, expected in zip(
        got, [FRAME, FRAME.filter(pl.col("k") > 1), FRAME, FRAME], strict=True
    ):
        same_rows(frame, expected)


def test_pickles_as_arrow_ipc(same_rows) -> None:
    source = MemorySource.from_polars(FRAME, splits=2)
    state = source.__getstate__()
    assert isinstance(state["frame"], bytes)
    same_rows(pickle.loads(pickle.dumps(source)).frame, FRAME)


def test_wrong_inputs() -> None:
    with pytest.raises(PlanError, match="expects a polars DataFrame"):
        MemorySource.from_polars({"a": [1]})  # type: ignore[arg-type]
    with pytest.raises(PlanError, match="pyarrow Table"):
        MemorySource.from_arrow([1, 2])
    with pytest.raises(PlanError, match="splits must be a positive number"):
        MemorySource.from_polars(FRAME, splits=0)
    assert MemorySource.from_arrow(pa.record_batch({"a": [1, 2]})).frame.height == 2
