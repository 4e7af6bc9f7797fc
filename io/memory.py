"""In-memory sources (``from_polars``, ``from_arrow``) and the collecting sink behind ``collect()``."""

from __future__ import annotations

import io as _stdio
from collections.abc import Iterator
from itertools import pairwise
from typing import Any

import polars as pl
import pyarrow as pa

from arrowflow._foundation.arrowipc import frame_from_ipc, frame_to_ipc
from arrowflow._foundation.watermarks import to_micros
from arrowflow.errors import PlanError
from arrowflow.sinks import Sink, SinkWriter
from arrowflow.sources import Source, SourceBatch, Split, SplitReader


class MemorySource(Source):
    """A DataFrame held in the plan, split into row ranges. Position: rows already read."""

    kind = "from_polars"
    bounded = True
    schema_is_static = True

    def __init__(
        self, frame: pl.DataFrame, *, splits: int | None = None, columns: list[str] | None = None
    ) -> None:
        if splits is not None and (
            isinstance(splits, bool) or not isinstance(splits, int) or splits < 1
        ):
            msg = f"splits must be a positive number of pieces, got {splits!r}"
            raise PlanError(msg)
        self.frame = frame
        self.splits = splits
        self.columns = columns

    @classmethod
    def from_polars(
        cls, df: pl.DataFrame | pl.LazyFrame, *, splits: int | None = None
    ) -> MemorySource:
        if isinstance(df, pl.LazyFrame):
            df = df.collect()
        if not isinstance(df, pl.DataFrame):
            msg = f"from_polars() expects a polars DataFrame or LazyFrame, got {type(df).__name__}"
            raise PlanError(msg)
        return cls(df.rechunk(), splits=splits)

    @classmethod
    def from_arrow(cls, data: Any, *, splits: int | None = None) -> MemorySource:
        if isinstance(data, pa.RecordBatch):
            data = pa.Table.from_batches([data])
        elif isinstance(data, list):
            if not data or not all(isinstance(b, pa.RecordBatch) for b in data):
                msg = "from_arrow() expects a pyarrow Table, a RecordBatch or a non-empty list of RecordBatches"
                raise PlanError(msg)
            data = pa.Table.from_batches(data)
        if not isinstance(data, pa.Table):
            msg = f"from_arrow() expects a pyarrow Table or RecordBatch(es), got {type(data).__name__}"
            raise PlanError(msg)
        source = cls.from_polars(pl.DataFrame(pl.from_arrow(data)), splits=splits)
        source.kind = "from_arrow"
        return source

    def schema(self) -> pl.Schema:
        frame_schema = self.frame.schema
        if self.columns is None:
            return frame_schema
        return pl.Schema({c: frame_schema[c] for c in self.columns})

    def with_columns_pruned(self, columns: list[str]) -> MemorySource:
        pruned = MemorySource(self.frame, splits=self.splits, columns=columns)
        pruned.kind = self.kind
        return pruned

    def discover_splits(self, *, not_before: float | None = None) -> list[Split]:
        height = self.frame.height
        count = self.splits or max(1, min(16, height // 100_000))
        bounds = [height * i // count for i in range(count + 1)]
        return [Split(f"rows-{lo}-{hi}", {"start": lo, "stop": hi}) for lo, hi in pairwise(bounds)]

    def event_time_bounds(self, splits: list[Split], column: str) -> dict[str, int]:
        """The frame is at hand: each row range's minimum of ``column`` (a vectorized pass)."""
        dtype = self.frame.schema.get(column)
        if not isinstance(dtype, pl.Datetime):
            return {}
        values = self.frame.get_column(column)
        bounds: dict[str, int] = {}
        for split in splits:
            rows = values.slice(split.info["start"], split.info["stop"] - split.info["start"])
            low = to_micros(rows, dtype).min()  # nulls never fall below a bound
            if low is not None:
                bounds[split.split_id] = int(low)
        return bounds

    def open_reader(
        self, split: Split, position: Any | None, *, batch_size: int | None
    ) -> SplitReader:
        if self.columns is None:
            frame = self.frame
        elif self.columns:
            frame = self.frame.select(self.columns)
        else:  # no column read: keep the row count (a select of nothing has no rows)
            frame = pl.DataFrame(height=self.frame.height)
        return _SliceReader(
            frame, split.info["start"], split.info["stop"], position or 0, batch_size
        )

    def describe(self) -> str:
        return f"{self.kind}: {self.frame.height:,} rows in memory"

    # Pickled once per worker: ship the frame as Arrow IPC, not as Python objects.
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        sink = _stdio.BytesIO()
        self.frame.write_ipc(sink, compression="uncompressed")
        state["frame"] = sink.getvalue()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state["frame"] = pl.read_ipc(_stdio.BytesIO(state["frame"]))
        self.__dict__.update(state)


class _SliceReader(SplitReader):
    def __init__(
        self, frame: pl.DataFrame, start: int, stop: int, done: int, batch_size: int | None
    ) -> None:
        self.frame, self.start, self.stop, self.done = frame, start, stop, done
        self.batch_size = batch_size or max(1, stop - start)

    def batches(self) -> Iterator[SourceBatch]:
        offset = self.start + self.done
        while offset < self.stop:
            length = min(self.batch_size, self.stop - offset)
            yield SourceBatch(self.frame.slice(offset, length), offset + length - self.start)
            offset += length


class CollectingSink(Sink):
    """A sink that gathers every row it receives in the calling process.

    Attach it with ``stream.write_to(sink)``; after ``flow.run(...)`` returns,
    :meth:`to_polars` holds the rows of the run (in no set order when several workers ran).
    Each worker's rows travel back to the coordinator as the sink's staged output, so it
    suits test-sized data, not production volumes. A fresh run starts empty.
    """

    kind = "collecting"
    durable = False

    def __init__(self) -> None:
        self.frames: list[pl.DataFrame] = []

    def open_writer(self, worker: int, parallelism: int, operator_id: str) -> SinkWriter:
        return _CollectingWriter()

    def begin(self) -> None:
        self.frames.clear()

    def commit(self, checkpoint_id: int, staged: list[Any]) -> None:
        for payload in staged:
            if payload:
                self.frames.append(frame_from_ipc(payload))

    def to_polars(self, schema: pl.Schema | None = None) -> pl.DataFrame:
        """Every collected row as one DataFrame (empty with ``schema`` when none arrived)."""
        if not self.frames:
            return pl.DataFrame(schema=schema)
        return pl.concat(self.frames, how="vertical_relaxed")

    def __getstate__(self) -> dict[str, Any]:
        # Shipped to workers with the plan: rows already collected stay here.
        return {"frames": []}


class _CollectingWriter(SinkWriter):
    def __init__(self) -> None:
        self.frames: list[pl.DataFrame] = []

    def write(self, batch: pl.DataFrame) -> None:
        self.frames.append(batch)

    def prepare_commit(self, checkpoint_id: int) -> Any:
        frames, self.frames = self.frames, []
        # Arrow IPC bytes, not frames: the ack that carries them is pickled into a pipe, and
        # pickling a polars frame that maps a shared-memory ring can deadlock (frame_to_ipc).
        return frame_to_ipc(frames) if frames else None


class CollectSink(CollectingSink):
    """Gathers a stream's rows in the coordinator (``stream.collect()``)."""

    kind = "collect"

    def returned_rows(self) -> list[pl.DataFrame]:
        return self.frames
