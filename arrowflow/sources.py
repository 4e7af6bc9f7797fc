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
from collections.abc import Callable, Iterator
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
    #: Set by a reader that applies a pushed-down query (:meth:`SplitReader.push_down`): the
    #: source rows ``data`` (the query's result) stands for. None: ``data`` is the rows read.
    rows_read: int | None = None


class SplitReader(abc.ABC):
    """Reads one split in a worker.

    Built by :meth:`Source.open_reader` in the worker process that was handed the split, used
    by that worker's single thread, and closed before the worker asks for its next split.
    The position rule (checked for every built-in source by
    :mod:`arrowflow.testing.source_conformance`): a reader opened at the position of the
    batch *k* it yielded yields exactly the batches after *k*, with the same positions; a
    reader opened at the split's last position yields nothing more.
    """

    @abc.abstractmethod
    def batches(self) -> Iterator[SourceBatch]:
        """Yield the split's batches in order, each with the position after it.

        Called once per reader, in the worker, by its loop: the worker takes one batch per
        turn and pushes it downstream before asking for the next, so the iterator must not
        read ahead more than one batch. For a bounded split, the iterator ends at the
        split's end. An unbounded split (a tailed file) yields ``SourceBatch(None,
        position)`` when no new data is available yet, so that the worker can do other work
        and come back.

        Every data batch has exactly the source's :meth:`Source.schema`. Must never block
        waiting for data (yield an empty batch instead) and must never keep a reference to a
        batch it yielded for later use.

        Yields
        ------
        SourceBatch
            Data rows, malformed rows, and the JSON-able position after them.
        """

    def push_down(self, query: Callable[[pl.LazyFrame], pl.LazyFrame]) -> bool:
        """Offer the reader the query that the operators after the source run on each batch.

        The query is the filters and columns of a chain, then a keyed aggregation's partial
        aggregate. Called by the worker once, before :meth:`batches`, when such operators follow the
        source. A reader that can run ``query`` inside its own scan (Parquet: polars reads
        only the rows and columns the query keeps) returns True and then yields, for each
        batch, the query's result with :attr:`SourceBatch.rows_read` set to the source rows
        it stands for; positions stay counted in source rows. The query is row-wise up to
        its final aggregate, so a reader may apply it to any cut of the split. The default
        returns False: the worker applies the query to each batch the reader yields. A
        reader that accepts must raise the query's own errors as they are (a wrong user
        expression is not a damaged file).
        """
        return False

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release files and connections.

        Called once, in the worker, when the split is finished and also after an error;
        never followed by ``batches``. The default does nothing.
        """


class Source(abc.ABC):
    """A description of where rows come from. Picklable; holds no open resources.

    Attributes
    ----------
    kind : str
        Operator-id prefix and plan display name, e.g. ``"read_parquet"``.
    bounded : bool
        True when every split ends (files); False for tailing and watching. Read at plan time
        and by the coordinator: an unbounded source is asked for new splits again every
        ``poll_interval_s`` and a worker without a split waits instead of finishing.
    poll_interval_s : float
        Seconds between two calls of :meth:`discover_splits` of an unbounded source (the
        coordinator polls at the shortest interval of its unbounded sources). Read once per
        run attempt, in the coordinator; ignored for bounded sources. Default 1 s.
    max_split_age_s : float or None
        For an unbounded source whose splits carry ``info["mtime"]`` (epoch seconds, as
        :meth:`discover_splits` sets it): splits older than the newest seen minus this age
        are never read and leave the finished set the checkpoints keep (see
        :mod:`arrowflow._runtime.splits`), and :meth:`discover_splits` is told ``not_before``.
        Read once per run attempt, in the coordinator. None (the default): every split is
        remembered for the whole job.
    """

    kind: str = "source"
    bounded: bool = True
    poll_interval_s: float = 1.0
    max_split_age_s: float | None = None

    @property
    def schema_is_static(self) -> bool:
        """Whether :meth:`schema` answers without any I/O (a schema the user gave, data in memory).

        Called at plan time, in the calling process, each time an operator is added
        downstream of the source: when True, the flow checks every operator (its columns,
        its expressions) as it is added, and a mistake fails the line that made it; when
        False, checks wait until the flow is planned. Must never do I/O itself (I/O that
        learns the schema belongs in :meth:`prepare_schema`). The default is False.
        """
        return False

    def prepare_schema(self) -> None:
        """Learn the schema when the flow is built, if that is cheap.

        Called once, as ``flow.source()`` (or a ``read_<format>`` method) adds the source, in
        the calling process, before any operator is added downstream. May read metadata (a
        file footer, the head of the first file), never all the data; must not raise for a
        schema it cannot learn yet (a glob that matches nothing so far): it then leaves
        :attr:`schema_is_static` False, and the checks wait until the flow is planned. When
        it learns the schema, :attr:`schema_is_static` is True afterwards and :meth:`schema`
        answers it without I/O, so a misspelled column fails the line that wrote it. The
        default does nothing.
        """
        return None

    def check_schema(self) -> None:
        """Check that the data still has the schema learnt without reading it.

        Called at plan time, in the calling process, once per plan, before any worker starts
        or any data moves, for a source whose schema was known as the flow was built
        (:attr:`schema_is_static`; :meth:`schema` was not asked again). May read metadata (every
        file's footer), never data. Raises :class:`arrowflow.SchemaError` or
        :class:`arrowflow.SourceError` naming what does not match. The default does nothing.
        """
        return None

    @abc.abstractmethod
    def schema(self) -> pl.Schema:
        """The schema of the data rows.

        Called at plan time, in the calling process, once per flow (cached by the flow). May
        read metadata (footers, the head of a file), never data; must not change later: every
        batch every reader yields has exactly this schema.
        """

    def with_columns_pruned(self, columns: list[str]) -> Source:
        """A copy of this source that reads only ``columns`` (projection push-down).

        Called at plan time, in the calling process, once per plan. Must not change
        positions: a position of the full source is valid for the copy, and the other way
        round. The default ignores the hint; file formats with columnar layouts override it.

        Parameters
        ----------
        columns : list of str
            The columns the flow reads, in the source's schema order.
        """
        return self

    @abc.abstractmethod
    def discover_splits(self, *, not_before: float | None = None) -> list[Split]:
        """The splits to read.

        Called in the coordinator: for a bounded source when a run attempt starts (and again
        while no split is pending, which finds nothing new), returning all its splits every
        time; for an unbounded source again every ``poll_interval_s``. A source may return
        splits it returned before: the enumerator keeps the ids of the splits it handed out
        and ignores repeats. Must not block for long:
        the coordinator answers checkpoints and workers between two calls. Splits must be
        disjoint and together hold every row of the input.

        Parameters
        ----------
        not_before : float or None
            Given only to a source with ``max_split_age_s``: epoch seconds below which the
            enumerator forgets splits by their ``info["mtime"]`` (None: remember every one).
            The source may leave such splits out without working them out (no footer read)
            and drop what it cached for them. Sources without an age bound are called
            without it.

        Returns
        -------
        list of Split
            Splits with ids stable across runs (they key positions in checkpoints).
        """

    def event_time_bounds(self, splits: list[Split], column: str) -> dict[str, int]:
        """Lower bounds of ``column`` (int64 microseconds since the epoch) per split id.

        Called in the coordinator, once for the splits each discovery found, when a per-split
        watermark reads ``column`` from this source (see :mod:`arrowflow._foundation.watermarks`).
        Answer only from what is known without reading data (file statistics); a bound must
        never be above a value the split holds. Splits left out hold the watermark back until
        they start. The default knows no bounds.
        """
        return {}

    @abc.abstractmethod
    def open_reader(
        self, split: Split, position: Any | None, *, batch_size: int | None
    ) -> SplitReader:
        """A reader of ``split`` from ``position``.

        Called in a worker, once per split handed to it (and again after a restart, with the
        position a checkpoint recorded). Must not read data yet (``batches`` does).

        Parameters
        ----------
        split : Split
            One of the splits :meth:`discover_splits` returned, as the coordinator sent it.
        position : Any or None
            None to start the split from its beginning; otherwise a position a reader of this
            split yielded (restored from a checkpoint's JSON).
        batch_size : int or None
            Rows per batch the run asks for (None: as the source sees fit).
        """

    def describe(self) -> str:
        """One line for plan display. Called at plan time; no I/O."""
        return self.kind

    def process_local(self) -> str | None:
        """Why only this process can reach the source's data, or None (the default).

        A source over ``memory://`` files, say, lives in this process's memory: worker
        processes would see an empty file system. A run picks ``workers=0`` for a flow with
        such a source when its ``workers`` were left to the default, and refuses an explicit
        worker count before anything starts. Called at run time, in the calling process;
        no I/O.
        """
        return None
