"""The source interface: what a connector in ``arrowflow.io`` implements.

A :class:`Source` is a *description* that lives in the plan: it is pickled once per worker
and must not hold open files or connections. It is used in three places:

- at plan time, in the calling process: :meth:`Source.schema` (may read file metadata; no
  data moves);
- in the coordinator: :meth:`Source.discover_splits`, called once per run (bounded
  sources) or repeatedly (unbounded sources, see :attr:`Source.bounded`), hands out
  :class:`Split` objects through the split enumerator; :meth:`Source.event_time_bounds`
  tells it what it knows of their event times, so it can hand them out in that order;
- in a worker: :meth:`Source.open_reader` turns one split into a :class:`SplitReader`
  that yields batches together with the position *after* each batch.

A source's checkpoint state is exactly the positions of its splits: a reader opened with
the position recorded after batch *k* must yield batch *k+1* next. Positions are small
JSON-able values (a row count, a byte offset).

Rows a reader cannot parse are yielded as a ``malformed`` batch (see
:data:`MALFORMED_SCHEMA`) instead of failing the job, unless the source was built with
``on_error="raise"``.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import polars as pl

#: Schema of the ``malformed`` side output every source can produce.
MALFORMED_SCHEMA = pl.Schema(
    {
        "source": pl.String,  # operator id of the source
        "file": pl.String,  # file (or stream) the row came from
        "offset": pl.Int64,  # byte offset of the row in the file, or -1 when unknown
        "line": pl.Int64,  # 1-based line number in the file, or -1 when unknown
        "reason": pl.String,  # why it could not be read
        "raw": pl.String,  # the raw text of the row (truncated to 4 KiB)
    }
)


@dataclass(frozen=True)
class Split:
    """One independently readable piece of a source: a file, a row-group range, a tailed file.

    ``split_id`` is stable across runs (it keys the split's offset in checkpoints);
    ``info`` holds what the reader needs (path, row groups, sizes) and must be JSON-able.
    """

    split_id: str
    info: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


@dataclass
class SourceBatch:
    """What a reader yields: data rows, malformed rows, and the position after them."""

    data: pl.DataFrame | None
    position: Any
    malformed: pl.DataFrame | None = None


class SplitReader(abc.ABC):
    """Reads one split in a worker. Guaranteed to be used by a single thread."""

    @abc.abstractmethod
    def batches(self) -> Iterator[SourceBatch]:
        """Yield batches in order. For a bounded split, the iterator ends at the split's end.

        An unbounded split (a tailed file) yields ``SourceBatch(None, position)`` when no
        new data is available yet, so that the worker can do other work and come back.
        """

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release files. Called once, also after an error; never followed by ``batches``."""


class Source(abc.ABC):
    """A description of where rows come from. Picklable; holds no open resources."""

    #: operator-id prefix, e.g. ``"read_parquet"``
    kind: str = "source"
    #: True when every split ends (files); False for tailing and watching.
    bounded: bool = True

    @abc.abstractmethod
    def schema(self) -> pl.Schema:
        """The schema of the data rows. Called at plan time; may read metadata, not data."""

    def with_columns_pruned(self, columns: list[str]) -> Source:
        """A copy of this source that reads only ``columns`` (projection push-down).

        The default ignores the hint; file formats with columnar layouts override it.
        """
        return self

    @abc.abstractmethod
    def discover_splits(self) -> list[Split]:
        """Called in the coordinator. Bounded sources return all splits on the first call.

        Unbounded sources are called again every poll interval and return only splits they
        have not returned before (the enumerator also de-duplicates by ``split_id``).
        """

    def event_time_bounds(self, splits: list[Split], column: str) -> dict[str, int]:
        """Lower bounds of ``column`` (int64 microseconds since the epoch) per split id.

        Called in the coordinator, once for the splits each discovery found, when a per-split
        watermark reads ``column`` from this source (see :mod:`arrowflow._foundation.watermarks`). Answer
        only from what is known without reading data (file statistics); a bound must never be
        above a value the split holds. Splits left out hold the watermark back until they
        start. The default knows no bounds.
        """
        return {}

    @abc.abstractmethod
    def open_reader(
        self, split: Split, position: Any | None, *, batch_size: int | None
    ) -> SplitReader:
        """Called in a worker. ``position`` is None to start the split from its beginning."""

    def describe(self) -> str:
        """One line for plan display."""
        return self.kind
