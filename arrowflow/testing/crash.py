"""A crash marker for fast recovery tests: a source that fails once, after a number of rows.

The real crash suite kills processes with ``kill -9`` (:mod:`arrowflow._foundation.faults`,
``tests/recovery``); that is the truth, and it is slow (a job script per run). Most recovery
questions — does a restore from the newest checkpoint lose or repeat a row, whatever the
crash point? — can be asked in this process, in a few milliseconds per crash point, with
:class:`CrashAfter`: it wraps any source and raises :class:`InjectedFault` instead of yielding
the batch that would take the rows its readers delivered past ``rows``. It fires **once**: a
marker file records that it fired, so running the same flow again (``restore="latest"``)
reads on, also in worker processes that were started after the crash.

How the fault travels:

- ``workers=0``: the run raises :class:`InjectedFault` itself. In-process runs never restart,
  so the fault never goes through the restart policy.
- a pool: the worker's exception fails the run as a :class:`~arrowflow.errors.WorkerError`
  whose message names ``InjectedFault``. Under ``ARROWFLOW_RESTARTS=fail`` and ``injected``
  (the test suite's settings) a worker exception is never restarted: the fault ends the run
  and the test restores it. Only under ``allow`` does the runtime restart the run from its
  newest checkpoint, which then reads on, because the marker has fired.

Worked example: crash after 3 of 10 rows, then resume from the checkpoint taken after 2.

>>> import tempfile
>>> import polars as pl
>>> import arrowflow as af
>>> from arrowflow.io.memory import MemorySource
>>> from arrowflow.testing import CollectingSink, CrashAfter, InjectedFault
>>> rows = pl.DataFrame({"n": range(10)})
>>> crashing = CrashAfter(MemorySource.from_polars(rows), rows=3)
>>> folder = tempfile.mkdtemp()
>>> flow = af.Flow("crash-once")
>>> flow.source(crashing, name="numbers").write_parquet(f"{folder}/out")
>>> options = dict(workers=0, batch_size=2, checkpoint_dir=f"{folder}/chk",
...                checkpoint_every=af.every_rows(2), restore="latest", progress=False)
>>> try:
...     flow.run(**options)
... except InjectedFault as fault:
...     print(fault)
injected fault after 2 rows (CrashAfter(rows=3))
>>> crashing.fired
True
>>> result = flow.run(**options)
>>> result.restored_from is not None
True
>>> sorted(pl.read_parquet(f"{folder}/out/*.parquet")["n"]) == list(range(10))
True
"""

from __future__ import annotations

import os
import tempfile
import uuid
import weakref
from collections.abc import Iterator
from typing import Any

import polars as pl

from arrowflow.sources import Source, SourceBatch, Split, SplitReader

__all__ = ["CrashAfter", "InjectedFault"]


class InjectedFault(Exception):
    """The failure a crash marker injects on purpose (never raised by arrowflow itself)."""


class _Fuse:
    """What the clones of one :class:`CrashAfter` share: the marker file and, per process, the
    rows delivered so far. Pickled to a worker without the count (each worker counts its own)."""

    def __init__(self, rows: int, marker: str | None) -> None:
        self.rows = rows
        self.delivered = 0
        if marker is None:
            marker = os.path.join(tempfile.gettempdir(), f"arrowflow-crash-{uuid.uuid4().hex}")
            # The marker of a path chosen here goes when the last clone in this process does.
            weakref.finalize(self, _remove, marker)
        self.marker = marker

    def __getstate__(self) -> dict[str, Any]:
        return {"rows": self.rows, "delivered": 0, "marker": self.marker}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    @property
    def fired(self) -> bool:
        return os.path.exists(self.marker)

    def blow(self) -> bool:
        """Record the crash in the marker file; False when it was recorded before."""
        try:
            os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return False
        return True


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class CrashAfter(Source):
    """``source``, whose readers raise :class:`InjectedFault` once, after ``rows`` rows.

    The readers of one process (the calling process with ``workers=0``, each pool worker on
    its own) count the data rows they deliver; the batch that would take the count past
    ``rows`` is not delivered: :class:`InjectedFault` is raised in its place, and the marker
    file records that the fault fired. While the marker exists, the source reads like
    ``source``. Everything else (schema, splits, positions, ``kind``) is ``source``'s, so a
    checkpoint taken with the marker restores onto a flow without it and the other way round.

    Parameters
    ----------
    source : Source
        The source to wrap.
    rows : int
        Data rows the readers of one process deliver before the fault (0: before the first
        non-empty batch). A count at or above what the process reads never fires.
    marker : str or os.PathLike or None
        The file that records the fault (it must not exist yet). None: a fresh path in the
        temporary directory, removed when this object (and its clones) are gone.
    """

    def __init__(
        self, source: Source, *, rows: int, marker: str | os.PathLike[str] | None = None
    ) -> None:
        if not isinstance(source, Source):
            msg = f"CrashAfter() wraps an arrowflow Source, got {type(source).__name__}"
            raise TypeError(msg)
        if isinstance(rows, bool) or not isinstance(rows, int) or rows < 0:
            msg = f"CrashAfter(rows=...) must be a number of rows >= 0, got {rows!r}"
            raise ValueError(msg)
        self.source = source
        self.fuse = _Fuse(rows, None if marker is None else os.fspath(marker))
        self._copy_hooks()

    def _copy_hooks(self) -> None:
        self.kind = self.source.kind
        self.bounded = self.source.bounded
        self.poll_interval_s = self.source.poll_interval_s
        self.max_split_age_s = self.source.max_split_age_s

    @property
    def fired(self) -> bool:
        """Whether the fault fired (in any process): the marker file exists."""
        return self.fuse.fired

    @property
    def schema_is_static(self) -> bool:
        return self.source.schema_is_static

    def prepare_schema(self) -> None:
        self.source.prepare_schema()

    def check_schema(self) -> None:
        self.source.check_schema()

    def schema(self) -> pl.Schema:
        return self.source.schema()

    def with_columns_pruned(self, columns: list[str]) -> CrashAfter:
        clone = CrashAfter.__new__(CrashAfter)
        clone.source = self.source.with_columns_pruned(columns)
        clone.fuse = self.fuse  # one count and one marker for the flow's source and the plan's
        clone._copy_hooks()
        return clone

    def discover_splits(self, *, not_before: float | None = None) -> list[Split]:
        if self.max_split_age_s is None:
            return self.source.discover_splits()
        return self.source.discover_splits(not_before=not_before)

    def event_time_bounds(self, splits: list[Split], column: str) -> dict[str, int]:
        return self.source.event_time_bounds(splits, column)

    def open_reader(
        self, split: Split, position: Any | None, *, batch_size: int | None
    ) -> SplitReader:
        return _CrashingReader(
            self.source.open_reader(split, position, batch_size=batch_size), self.fuse
        )

    def describe(self) -> str:
        return f"{self.source.describe()} (crashes once after {self.fuse.rows:,} rows)"


class _CrashingReader(SplitReader):
    def __init__(self, reader: SplitReader, fuse: _Fuse) -> None:
        self.reader = reader
        self.fuse = fuse

    def batches(self) -> Iterator[SourceBatch]:
        fuse = self.fuse
        for batch in self.reader.batches():
            height = batch.data.height if batch.data is not None else 0
            if height and fuse.delivered + height > fuse.rows and not fuse.fired and fuse.blow():
                msg = (
                    f"injected fault after {fuse.delivered:,} rows (CrashAfter(rows={fuse.rows:,}))"
                )
                raise InjectedFault(msg)
            fuse.delivered += height
            yield batch

    def close(self) -> None:
        self.reader.close()
