"""The user's facade over the graph model: what a user builds. Building it does no I/O.

A :class:`Flow` is a :class:`arrowflow._graph.nodes.Graph` with the methods that add
sources; :class:`Stream` and :class:`KeyedStream` are thin handles on a node that add
operators. Nothing runs until ``flow.run()`` or ``stream.collect()``; then
:mod:`arrowflow._plan` turns the nodes into a physical plan and a runtime executes it.
Ids, schemas and validation are the graph model's (:mod:`arrowflow._graph.nodes`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import polars as pl

from arrowflow._api.display import flow_html, stream_html
from arrowflow._api.job import Job, run_plan
from arrowflow._api.live import DEFAULT_RESULTS_LIMIT, LimitSink, LiveResults, TapSink
from arrowflow._api.windowed import WindowedStream
from arrowflow._foundation.keygroups import DEFAULT_MAX_PARALLELISM
from arrowflow._foundation.util import duration_ms
from arrowflow._foundation.watermarks import duration_arg
from arrowflow._graph.aggregates import IncrementalAgg, named_aggregations
from arrowflow._graph.graph import Graph
from arrowflow._graph.kinds import check_side_output
from arrowflow._graph.nodes import (
    _ID,
    Node,
    _check_batch_independent,
    _check_exprs,
    _is_scalar,
    describe_expr,
)
from arrowflow._plan import Plan, build_plan
from arrowflow._process.context import ProcessFunction
from arrowflow.errors import PlanError, SchemaError
from arrowflow.options import COLLECT_DEFAULTS, DEFAULTS, START_DEFAULTS, RunOptions, options_from
from arrowflow.sinks import Sink
from arrowflow.sources import Source

if TYPE_CHECKING:
    from arrowflow._runtime.result import RunResult


def _check_splits(splits: Any, method: str) -> None:
    if splits is not None and (
        isinstance(splits, bool) or not isinstance(splits, int) or splits < 1
    ):
        msg = f"{method}(splits=...) expects a positive number of pieces (or None), got {splits!r}"
        raise PlanError(msg)


class Flow(Graph):
    """A named dataflow graph.

    >>> import arrowflow as af, polars as pl
    >>> flow = af.Flow("example")
    >>> nums = flow.from_polars(pl.DataFrame({"k": [1, 2, 1], "v": [1.0, 2.0, 3.0]}))
    >>> totals = nums.key_by("k").agg(total=pl.col("v").sum())
    >>> totals.collect().sort("k")["total"].to_list()
    [4.0, 2.0]
    """

    # ------------------------------------------------------------------ sources
    def source(self, source: Source, *, name: str | None = None) -> Stream:
        """A stream from any :class:`arrowflow.sources.Source` object."""
        if not isinstance(source, Source):
            msg = f"flow.source() expects an arrowflow Source, got {type(source).__name__}"
            raise PlanError(msg)
        return Stream(self, self._add("source", [], name, source=source, id_kind=source.kind))

    def read_parquet(
        self,
        path: str | Sequence[str],
        *,
        schema: Any = None,
        name: str | None = None,
        storage_options: dict[str, Any] | None = None,
        on_error: str = "side_output",
        on_corrupt_file: str = "fail",
    ) -> Stream:
        """Parquet files: a path, a glob (``data/*.parquet``), a directory or an fsspec URL.

        A file that cannot be read (truncated, not Parquet) fails the job, naming it; with
        ``on_corrupt_file="skip"`` it is reported as one row of the ``malformed`` side output
        (its file and the reader's reason) and the other files are read."""
        from arrowflow.io.files import FileSource

        return self.source(
            FileSource(
                "parquet",
                path,
                schema=schema,
                storage_options=storage_options,
                on_error=on_error,
                on_corrupt_file=on_corrupt_file,
            ),
            name=name,
        )

    def read_csv(
        self,
        path: str | Sequence[str],
        *,
        schema: Any = None,
        has_header: bool = True,
        separator: str = ",",
        name: str | None = None,
        storage_options: dict[str, Any] | None = None,
        on_error: str = "side_output",
        on_corrupt_file: str = "fail",
    ) -> Stream:
        """CSV files. Rows that cannot be parsed go to the ``malformed`` side output: a row is
        malformed when any column of ``schema`` fails to parse, whichever columns the flow uses.
        ``on_corrupt_file="skip"``: a file that cannot be read at all (a broken ``.gz``) is
        reported in ``malformed`` instead of failing the job."""
        from arrowflow.io.files import FileSource

        return self.source(
            FileSource(
                "csv",
                path,
                schema=schema,
                storage_options=storage_options,
                on_error=on_error,
                options={"has_header": has_header, "separator": separator},
                on_corrupt_file=on_corrupt_file,
            ),
            name=name,
        )

    def read_ndjson(
        self,
        path: str | Sequence[str],
        *,
        schema: Any = None,
        name: str | None = None,
        storage_options: dict[str, Any] | None = None,
        on_error: str = "side_output",
        on_corrupt_file: str = "fail",
    ) -> Stream:
        """Newline-delimited JSON files. Lines that cannot be parsed go to ``malformed``;
        ``on_corrupt_file`` as for :meth:`read_csv`."""
        from arrowflow.io.files import FileSource

        return self.source(
            FileSource(
                "ndjson",
                path,
                schema=schema,
                storage_options=storage_options,
                on_error=on_error,
                on_corrupt_file=on_corrupt_file,
            ),
            name=name,
        )

    def read_ipc(
        self,
        path: str | Sequence[str],
        *,
        schema: Any = None,
        name: str | None = None,
        storage_options: dict[str, Any] | None = None,
        on_error: str = "side_output",
        on_corrupt_file: str = "fail",
    ) -> Stream:
        """Arrow IPC (Feather v2) files; ``on_corrupt_file`` as for :meth:`read_parquet`."""
        from arrowflow.io.files import FileSource

        return self.source(
            FileSource(
                "ipc",
                path,
                schema=schema,
                storage_options=storage_options,
                on_error=on_error,
                on_corrupt_file=on_corrupt_file,
            ),
            name=name,
        )

    def tail(
        self,
        path: str,
        *,
        format: str = "ndjson",  # noqa: A002
        schema: Any = None,
        has_header: bool = True,
        separator: str = ",",
        poll_interval: str = "100ms",
        name: str | None = None,
        on_error: str = "side_output",
    ) -> Stream:
        """Follow a growing local file (unbounded): every complete line appended to it, once.

        Its offset is kept in checkpoints; truncation and rotation are detected and reading
        goes on with the new file. ``schema`` is required (the file may start empty).
        """
        from arrowflow.io.stream import TailSource

        return self.source(
            TailSource(
                path,
                format=format,
                schema=schema,
                has_header=has_header,
                separator=separator,
                poll_interval=poll_interval,
                on_error=on_error,
            ),
            name=name,
        )

    def watch(
        self,
        pattern: str,
        *,
        format: str = "parquet",  # noqa: A002
        schema: Any = None,
        poll_interval: str = "1s",
        storage_options: dict[str, Any] | None = None,
        name: str | None = None,
        on_error: str = "side_output",
        max_file_age: Any = "7d",
    ) -> Stream:
        """Files that land under a glob or folder (unbounded), each processed exactly once, also
        across restarts. Files must appear complete (write elsewhere, then rename into place).
        Files modified more than ``max_file_age`` before the newest one are skipped and
        forgotten, which keeps the remembered set (and checkpoints) bounded; None: never."""
        from arrowflow.io.stream import WatchSource

        return self.source(
            WatchSource(
                pattern,
                format=format,
                schema=schema,
                storage_options=storage_options,
                poll_interval=poll_interval,
                on_error=on_error,
                max_file_age=max_file_age,
            ),
            name=name,
        )

    def from_polars(
        self, df: pl.DataFrame | pl.LazyFrame, *, name: str | None = None, splits: int | None = None
    ) -> Stream:
        """An in-memory DataFrame as a bounded source (split into ``splits`` pieces)."""
        from arrowflow.io.memory import MemorySource

        _check_splits(splits, "from_polars")
        return self.source(MemorySource.from_polars(df, splits=splits), name=name)

    def from_arrow(
        self, data: Any, *, name: str | None = None, splits: int | None = None
    ) -> Stream:
        """A pyarrow Table, RecordBatch or list of RecordBatches as a bounded source."""
        from arrowflow.io.memory import MemorySource

        _check_splits(splits, "from_arrow")
        return self.source(MemorySource.from_arrow(data, splits=splits), name=name)

    # ------------------------------------------------------------------ running
    def plan(
        self, *, outputs: list[Node] | None = None, max_parallelism: int | None = None
    ) -> Plan:
        """The physical plan of the flow (or of the part that ``outputs`` need)."""
        return build_plan(
            self,
            outputs if outputs is not None else self.sinks(),
            max_parallelism=DEFAULT_MAX_PARALLELISM if max_parallelism is None else max_parallelism,
        )

    def explain(self) -> str:
        """A plain-text description of the physical plan."""
        return self.plan().explain()

    def run(
        self,
        *,
        workers: int | None = DEFAULTS.workers,
        state: Any = DEFAULTS.state,
        checkpoint_dir: str | None = DEFAULTS.checkpoint_dir,
        checkpoint_every: Any = DEFAULTS.checkpoint_every,
        restore: str | int | None = DEFAULTS.restore,
        batch_size: int | None = DEFAULTS.batch_size,
        max_parallelism: int | None = None,
        progress: bool | None = DEFAULTS.progress,
        storage_options: dict[str, Any] | None = DEFAULTS.storage_options,
        keep_checkpoints: int = DEFAULTS.keep_checkpoints,
        max_restarts: int = DEFAULTS.max_restarts,
        control: Any = None,
        runner: str | None = DEFAULTS.runner,
        options: RunOptions | None = None,
    ) -> RunResult:
        """Run every sink of the flow to the end of its (bounded) input.

        With ``checkpoint_dir`` the run checkpoints on ``checkpoint_every`` and at its end,
        resumes from the newest complete checkpoint there, restarts failed workers from it up
        to ``max_restarts`` times, and keeps the newest ``keep_checkpoints``. File and
        database outputs then hold every row exactly once.

        Parameters
        ----------
        workers
            Worker processes (default: one per core); ``0`` runs in this process (the
            in-process runner: same results, easier debugging).
        state
            The state backend: ``"memory"`` (default), ``"arrow"``, ``"lmdb"``, ``"sql"``, a
            ``postgresql://`` or ``sqlite://`` URL, or a StateBackend object.
        checkpoint_dir
            Where checkpoints go (any fsspec URL); None: no checkpoints.
        checkpoint_every
            ``"10s"``, ``af.every_rows(n)`` or a trigger object; needs ``checkpoint_dir``.
        restore
            ``"latest"`` (default: the newest complete checkpoint, if any), a checkpoint id,
            or None for a fresh start.
        batch_size
            Rows per batch read from sources (default: the source's in one process, 262,144
            in a pool).
        max_parallelism
            Key groups of keyed state (None: the default, 128), fixed for a checkpoint
            directory.
        progress
            A progress bar; None (default): when a terminal or a notebook shows it.
        storage_options
            fsspec options for ``checkpoint_dir``.
        keep_checkpoints
            Complete checkpoints kept (default 3).
        max_restarts
            Restarts from checkpoints before the run fails (default 3).
        control
            Internal: the control of a background job (``flow.start``).
        runner
            A runner registered in :mod:`arrowflow.registry` (``"inprocess"``, ``"pool"``, or
            a plug-in's); default: decided by ``workers``.
        options
            All of the above as one :class:`arrowflow.RunOptions`, instead of the keywords.

        Returns
        -------
        RunResult
            Counts per operator, checkpoints taken, restarts and their reasons.

        Raises
        ------
        PlanError
            The flow has no sinks, or an option is invalid (see :class:`arrowflow.RunOptions`).
        WorkerError
            A worker failed and the run was not (or no longer) restarted.
        """
        sinks = self.sinks_or_error()
        chosen = options_from(
            "flow.run()",
            {
                "workers": workers,
                "state": state,
                "checkpoint_dir": checkpoint_dir,
                "checkpoint_every": checkpoint_every,
                "restore": restore,
                "batch_size": batch_size,
                "max_parallelism": max_parallelism,
                "progress": progress,
                "storage_options": storage_options,
                "keep_checkpoints": keep_checkpoints,
                "max_restarts": max_restarts,
                "runner": runner,
            },
            options=options,
        )
        plan = self.plan(outputs=sinks, max_parallelism=chosen.max_parallelism)
        return run_plan(plan, chosen, control)

    def start(
        self,
        *,
        results: Sequence[Stream] | bool | None = None,
        results_limit: int | None = None,
        **run_options: Any,
    ) -> Any:
        """Run the flow in the background; returns a :class:`arrowflow.Job` at once.

        ``job.status``, ``job.progress``, ``job.metrics()``, ``job.checkpoint()``,
        ``job.stop(savepoint=True)`` and ``job.wait()`` work from any thread; in Jupyter,
        ``job`` shows a live view.

        Parameters
        ----------
        results
            Streams whose rows ``job.results(stream)`` returns as they are produced, besides
            those the sinks write (a side output, a stream before an aggregation);
            ``False`` keeps none (a service that nobody watches).
        results_limit
            Rows kept per stream in ``job.results``, the newest (default 100,000).
        **run_options
            The options of :meth:`run` (``workers``, ``checkpoint_dir``, ... or
            ``options=RunOptions(...)``); ``progress`` defaults to False.

        Returns
        -------
        Job
            The running job.

        Raises
        ------
        PlanError
            The flow has no sinks, an unknown option, or an invalid one.
        """
        sinks = self.sinks_or_error()
        limit = DEFAULT_RESULTS_LIMIT if results_limit is None else results_limit
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            msg = f"results_limit must be a positive number of rows, got {results_limit!r}"
            raise PlanError(msg)
        given = run_options.pop("options", None)
        chosen = options_from("flow.start()", run_options, base=START_DEFAULTS, options=given)
        watched: list[Node] = []
        for sink in sinks if results is not False else ():
            if sink.inputs[0] not in watched:
                watched.append(sink.inputs[0])
        for stream in () if isinstance(results, bool) or results is None else results:
            if not isinstance(stream, Stream) or stream.flow is not self:
                msg = f"results= expects streams of flow {self.name!r}, got {stream!r}"
                raise PlanError(msg)
            if stream.node not in watched:
                watched.append(stream.node)
        taps: dict[str, tuple[str, pl.Schema]] = {}
        tap_nodes = []
        for node in watched:
            tap = Node(
                self.unused_id(f"{node.id}.results"),
                "sink",
                [node],
                {"sink": TapSink(node.id, limit)},
            )
            tap_nodes.append(tap)
            taps[node.id] = (tap.id, self.schema_of(node))
        plan = build_plan(self, [*sinks, *tap_nodes], max_parallelism=chosen.max_parallelism)

        def run(control: Any) -> Any:
            return run_plan(plan, chosen, control)

        return Job(self.name, run, chosen, results=LiveResults(limit), taps=taps)

    def sinks_or_error(self) -> list[Node]:
        sinks = self.sinks()
        if not sinks:
            msg = (
                f"flow {self.name!r} has no sinks, so running it would compute nothing; add one with "
                f"stream.write_parquet(...) (or write_csv/ndjson/ipc/database), or use stream.collect()"
            )
            raise PlanError(msg)
        return sinks

    def _repr_html_(self) -> str:
        return flow_html(self)

    def __repr__(self) -> str:
        return f"Flow({self.name!r}, {len(self.nodes)} operators)"


class Stream:
    """A stream of record batches: the output of one operator."""

    def __init__(self, flow: Flow, node: Node) -> None:
        self.flow = flow
        self.node = node

    @property
    def id(self) -> str:
        return self.node.id

    @property
    def schema(self) -> pl.Schema:
        """Output schema (column names and polars types)."""
        return self.flow.schema_of(self.node)

    def _then(self, kind: str, name: str | None, **params: Any) -> Stream:
        node = self.flow._add(kind, [self.node], name, **params)
        return Stream(self.flow, self.flow._validate(node))

    # ---------------------------------------------------------------- stateless operators
    def filter(self, *predicates: pl.Expr, name: str | None = None) -> Stream:
        """Keep rows where every predicate is true (nulls count as false)."""
        if not predicates:
            msg = "filter() needs at least one predicate, e.g. .filter(pl.col('amount') > 0)"
            raise PlanError(msg)
        op_id = self.flow._new_id("filter", name)
        checked = _check_exprs(predicates, op_id, "filter()")
        _check_batch_independent(checked, op_id, "filter()")
        return self._then("filter", name, predicates=checked)

    def select(self, *exprs: pl.Expr | str, name: str | None = None, **named: pl.Expr) -> Stream:
        """Compute exactly these columns (polars ``select`` semantics, per row)."""
        op_id = self.flow._new_id("select", name)
        checked = _check_exprs(exprs, op_id, "select()")
        checked += [
            e.alias(k)
            for k, e in zip(
                named, _check_exprs(list(named.values()), op_id, "select()"), strict=True
            )
        ]
        if not checked:
            msg = "select() needs at least one column or expression"
            raise PlanError(msg)
        _check_batch_independent(checked, op_id, "select()")
        if all(_is_scalar(expr) for expr in checked):
            msg = (
                f"operator {op_id!r}: select() of constants only ({', '.join(describe_expr(e) for e in checked)}) "
                f"would give one row per batch; add them to every row with .with_columns(...) instead"
            )
            raise PlanError(msg)
        return self._then("select", name, exprs=checked)

    def with_columns(self, *exprs: pl.Expr, name: str | None = None, **named: pl.Expr) -> Stream:
        """Add or replace columns (polars ``with_columns`` semantics, per row)."""
        op_id = self.flow._new_id("with_columns", name)
        checked = _check_exprs(exprs, op_id, "with_columns()")
        checked += [
            e.alias(k)
            for k, e in zip(
                named, _check_exprs(list(named.values()), op_id, "with_columns()"), strict=True
            )
        ]
        if not checked:
            msg = "with_columns() needs at least one expression"
            raise PlanError(msg)
        _check_batch_independent(checked, op_id, "with_columns()")
        return self._then("with_columns", name, exprs=checked)

    def map_batches(
        self,
        fn: Callable[[pl.DataFrame], pl.DataFrame],
        *,
        schema: Any = None,
        name: str | None = None,
    ) -> Stream:
        """Apply ``fn`` to every batch. It must return a DataFrame with the same columns every time.

        ``fn`` runs once per batch in whichever worker holds the batch, so it must not rely on
        seeing all rows (use key_by(...).agg(...) for that). It is serialized once per worker.
        """
        if not callable(fn):
            msg = (
                f"map_batches() expects a function DataFrame -> DataFrame, got {type(fn).__name__}"
            )
            raise PlanError(msg)
        from arrowflow.io._schema import to_polars_schema

        declared = to_polars_schema(schema) if schema is not None else None
        return self._then("map_batches", name, fn=fn, schema=declared)

    def union(self, *others: Stream, name: str | None = None) -> Stream:
        """All rows of this stream and ``others`` (same columns and types), in no set order."""
        if not others:
            msg = "union() needs at least one other stream"
            raise PlanError(msg)
        for other in others:
            if not isinstance(other, Stream) or other.flow is not self.flow:
                msg = "union() takes streams of the same Flow"
                raise PlanError(msg)
        node = self.flow._add("union", [self.node, *(o.node for o in others)], name)
        return Stream(self.flow, self.flow._validate(node))

    def key_by(self, *keys: str) -> KeyedStream:
        """Partition by key columns; rows with equal keys meet in the same worker."""
        flat: list[str] = []
        for key in keys:
            flat.extend(key if isinstance(key, list | tuple) else [key])
        if not flat or not all(isinstance(k, str) for k in flat):
            msg = (
                f"key_by() expects column names, got {keys!r}; to key by an expression, add it "
                f"first: .with_columns(bucket=pl.col('user_id') % 1000).key_by('bucket')"
            )
            raise PlanError(msg)
        twice = sorted({k for k in flat if flat.count(k) > 1})
        if twice:
            msg = f"key_by() names the column {twice[0]!r} more than once: {flat}"
            raise PlanError(msg)
        if self.flow.schema_is_static(self.node):
            missing = [k for k in flat if k not in self.schema]
            if missing:
                msg = (
                    f"key_by(): no column {missing[0]!r} in the output of {self.node.id!r}; "
                    f"its columns are {self.schema.names()}"
                )
                raise SchemaError(msg)
        return KeyedStream(self, flat)

    def with_watermark(
        self, column: str, *, delay: Any = "0s", idle_timeout: Any = None, name: str | None = None
    ) -> Stream:
        """Event time on ``column`` (a pl.Datetime) with bounded out-of-orderness ``delay``.

        Watermarks are kept per split (a file, a Parquet row-group range): an event is late
        only when its window is ``delay`` or more behind the newest event *of its own split*
        before it, so results do not depend on the number of workers, the batch size or the
        order the files are read in. Windows fire when every unfinished split, also those not
        started yet, has passed them. With ``idle_timeout`` (``"30s"``), a split of a tailed or
        watched source that produces nothing for that long stops holding event time back until
        it does again. See :mod:`arrowflow._foundation.watermarks`.
        """
        if not isinstance(column, str):
            msg = f"with_watermark() expects the name of the event-time column, got {type(column).__name__} {column!r}"
            raise PlanError(msg)
        delay_ms = duration_arg(delay, "with_watermark(delay=...)")
        idle_ms = duration_arg(idle_timeout, "with_watermark(idle_timeout=...)", allow_zero=False)
        return self._then(
            "watermark", name, column=column, delay_ms=delay_ms, idle_timeout_ms=idle_ms
        )

    def side_output(self, name: str) -> Stream:
        """The rows an operator set aside instead of dropping them: ``"malformed"`` on sources,
        ``"late"`` on windows."""
        if not isinstance(name, str) or not _ID.match(name):
            msg = f"side_output() expects a side output name such as 'malformed' or 'late', got {name!r}"
            raise PlanError(msg)
        # Checked here, not only with the schema: a file source's schema is known at plan time only.
        check_side_output(self.node, name)
        node = self.flow._add("side_output", [self.node], None, id_kind=f"{self.node.id}.{name}")
        node.side = name
        return Stream(self.flow, self.flow._validate(node))

    # ---------------------------------------------------------------- sinks
    def _sink(self, sink: Sink, name: str | None) -> None:
        node = self.flow._add("sink", [self.node], name, sink=sink, id_kind=sink.kind)
        self.flow._validate(node)

    def write_parquet(
        self,
        path: str,
        *,
        mode: str = "overwrite",
        name: str | None = None,
        storage_options: dict[str, Any] | None = None,
        rows_per_file: int | None = None,
        compression: str = "zstd",
        compression_level: int | None = None,
    ) -> None:
        """Write Parquet part files into directory ``path`` (exactly once; see README).

        ``compression``: ``"zstd"`` (polars' default), ``"lz4"``, ``"snappy"`` (Spark's and
        Flink's default), ``"gzip"``, ``"brotli"`` or ``"uncompressed"``; ``compression_level``
        as polars' ``write_parquet``.
        """
        from arrowflow.io.filesinks import FileSink

        self._sink(
            FileSink(
                "parquet",
                path,
                mode=mode,
                storage_options=storage_options,
                rows_per_file=rows_per_file,
                compression=compression,
                compression_level=compression_level,
            ),
            name,
        )

    def write_csv(
        self,
        path: str,
        *,
        mode: str = "overwrite",
        name: str | None = None,
        storage_options: dict[str, Any] | None = None,
        rows_per_file: int | None = None,
    ) -> None:
        from arrowflow.io.filesinks import FileSink

        self._sink(
            FileSink(
                "csv", path, mode=mode, storage_options=storage_options, rows_per_file=rows_per_file
            ),
            name,
        )

    def write_ndjson(
        self,
        path: str,
        *,
        mode: str = "overwrite",
        name: str | None = None,
        storage_options: dict[str, Any] | None = None,
        rows_per_file: int | None = None,
    ) -> None:
        from arrowflow.io.filesinks import FileSink

        self._sink(
            FileSink(
                "ndjson",
                path,
                mode=mode,
                storage_options=storage_options,
                rows_per_file=rows_per_file,
            ),
            name,
        )

    def write_ipc(
        self,
        path: str,
        *,
        mode: str = "overwrite",
        name: str | None = None,
        storage_options: dict[str, Any] | None = None,
        rows_per_file: int | None = None,
        compression: str = "uncompressed",
    ) -> None:
        """Write Arrow IPC part files; ``compression``: ``"uncompressed"`` (mapped without
        decoding by any Arrow reader), ``"lz4"`` or ``"zstd"``."""
        from arrowflow.io.filesinks import FileSink

        self._sink(
            FileSink(
                "ipc",
                path,
                mode=mode,
                storage_options=storage_options,
                rows_per_file=rows_per_file,
                compression=compression,
            ),
            name,
        )

    def write_database(
        self,
        url: str,
        *,
        table: str,
        mode: str = "append",
        key: str | Sequence[str] | None = None,
        name: str | None = None,
    ) -> None:
        """Write rows into ``table`` of SQLite (``"sqlite:///out/app.db"``) or PostgreSQL
        (``"postgresql://user@host/db"``), exactly once: each checkpoint's rows commit in one
        transaction with the checkpoint id. ``mode``: ``"append"``, ``"upsert"`` (with ``key``:
        the newest row of a key wins) or ``"overwrite"`` (recreate the table on a fresh run)."""
        from arrowflow.io.database import DatabaseSink

        keys = [key] if isinstance(key, str) else list(key) if key is not None else None
        self._sink(DatabaseSink(url, table=table, mode=mode, key=keys, name=name), name)

    def write_to(self, sink: Sink, *, name: str | None = None) -> None:
        """Write to any :class:`arrowflow.sinks.Sink` object."""
        if not isinstance(sink, Sink):
            msg = f"write_to() expects an arrowflow Sink, got {type(sink).__name__}"
            raise PlanError(msg)
        self._sink(sink, name)

    # ---------------------------------------------------------------- running
    def collect(
        self,
        *,
        workers: int | None = COLLECT_DEFAULTS.workers,
        state: Any = COLLECT_DEFAULTS.state,
        batch_size: int | None = COLLECT_DEFAULTS.batch_size,
        max_parallelism: int | None = None,
        limit: int | None = None,
        progress: bool | None = COLLECT_DEFAULTS.progress,
        timeout: Any = None,
        runner: str | None = COLLECT_DEFAULTS.runner,
        options: RunOptions | None = None,
    ) -> pl.DataFrame:
        """Run the part of the flow this stream needs and return its rows as a DataFrame.

        Over an unbounded source (``tail``, ``watch``) a stream without ``limit`` never
        ends: use ``flow.start`` for it. Collecting keeps no checkpoints.

        Parameters
        ----------
        workers
            Worker processes; ``0`` (default) runs in this process.
        state
            The state backend (default ``"memory"``), as in :meth:`Flow.run`.
        batch_size
            Rows per batch read from sources (default: the source's; with ``limit``, about
            ``limit`` rows, between 4,096 and 65,536).
        max_parallelism
            Key groups of keyed state (None: the default, 128).
        limit
            Stop as soon as this many rows arrived (in this process, reading small batches),
            so a look at a large folder costs the few files it takes; see :meth:`head`.
        progress
            A progress bar (default False; None: when a terminal or a notebook shows it).
        timeout
            With ``limit`` over an unbounded source: stop after this long (default ``"5s"``)
            with the rows there are.
        runner
            A registered runner (default: decided by ``workers``).
        options
            The run options as one :class:`arrowflow.RunOptions`, instead of the keywords;
            it must name no checkpoint directory.

        Returns
        -------
        polars.DataFrame
            The stream's rows (in no set order when several workers ran).

        Raises
        ------
        PlanError
            An invalid option or ``limit``, ``limit`` with workers, checkpoint options, or an
            unbounded stream without ``limit``.
        """
        from arrowflow.io.memory import CollectSink

        chosen = options_from(
            "stream.collect()",
            {
                "workers": workers,
                "state": state,
                "batch_size": batch_size,
                "max_parallelism": max_parallelism,
                "progress": progress,
                "runner": runner,
            },
            base=COLLECT_DEFAULTS,
            options=options,
        )
        if chosen.checkpoint_dir is not None or chosen.restore is not None:
            msg = (
                "collect() keeps no checkpoints (its rows come back in this process); pass "
                "options with checkpoint_dir=None and restore=None, or write the stream to a sink "
                "and use flow.run()"
            )
            raise PlanError(msg)
        if limit is not None:
            if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
                msg = f"limit must be a number of rows, got {limit!r}"
                raise PlanError(msg)
            if chosen.workers not in (0, None):
                msg = f"collect(limit=...) runs in this process, to stop early; drop workers={chosen.workers}"
                raise PlanError(msg)
            if limit == 0:
                return pl.DataFrame(schema=self.schema)
            chosen = chosen.replace(
                workers=0, batch_size=chosen.batch_size or min(max(limit, 4096), 65_536)
            )
        sink: Sink = CollectSink() if limit is None else LimitSink(limit)
        node = Node(
            self.flow.unused_id(f"{self.node.id}.collect"), "sink", [self.node], {"sink": sink}
        )
        plan = build_plan(self.flow, [node], max_parallelism=chosen.max_parallelism)
        if not plan.bounded:
            if not isinstance(sink, LimitSink):
                msg = (
                    f"stream {self.id!r} reads an unbounded source, so collect() would never end; "
                    f"take a sample with .head(n) (or collect(limit=n)), or run it with flow.start()"
                )
                raise PlanError(msg)
            sink.deadline_s = (
                duration_ms("5s" if timeout is None else timeout, what="timeout") / 1000
            )
        result = run_plan(plan, chosen)
        if isinstance(sink, LimitSink):
            return sink.to_polars(self.schema)
        return result.collected(node.id, self.schema)

    def head(self, n: int = 10, **options: Any) -> pl.DataFrame:
        """The first ``n`` rows of this stream, reading only as much input as they take.

        Runs in this process and stops when ``n`` rows arrived (over a ``tail``/``watch``
        source, also after ``timeout=``, default 5 s). Stateless chains and windows
        stop early; a keyed ``agg`` emits its rows when its input ends, so above one the
        whole input is read. Order: that of the input, split by split.

        Parameters
        ----------
        n
            Rows wanted.
        **options
            The options of :meth:`collect` but ``limit`` (``state``, ``timeout``, ...).
        """
        return self.collect(limit=n, **options)

    def explain(self) -> str:
        return build_plan(self.flow, [self.node]).explain()

    def _repr_html_(self) -> str:
        return stream_html(self)

    def __repr__(self) -> str:
        return f"Stream({self.node.id!r}, {self.node.kind})"


class KeyedStream:
    """A stream partitioned by key columns: the input of keyed, stateful operators."""

    def __init__(self, stream: Stream, keys: list[str]) -> None:
        self.stream = stream
        self.keys = keys

    def agg(self, *exprs: pl.Expr, name: str | None = None, **named: pl.Expr) -> Stream:
        """Keyed running aggregation: one row per key with its aggregates so far.

        Emits, at every checkpoint and at the end of a bounded input, the current value of each
        key updated since its last emission.
        """
        flow = self.stream.flow
        op_id = flow._new_id("agg", name)
        aggs = named_aggregations(exprs, named, op_id)
        keys = list(self.keys)

        def make(
            schema: pl.Schema,
            _aggs: dict[str, pl.Expr] = aggs,
            _keys: list[str] = keys,
            _id: str = op_id,
        ) -> IncrementalAgg:
            return IncrementalAgg(_aggs, _keys, schema, operator_id=_id)

        node = flow._add("agg", [self.stream.node], name, keys=keys, aggs=aggs, agg=make)
        make.__defaults__ = (aggs, keys, node.id)  # name errors after the real operator id
        return Stream(flow, flow._validate(node))

    def process(
        self,
        fn: Callable[[pl.DataFrame, Any], pl.DataFrame],
        *,
        states: Sequence[Any] = (),
        schema: Any = None,
        side_outputs: dict[str, Any] | None = None,
        event_time: str | None = None,
        name: str | None = None,
    ) -> Stream:
        """Keyed process function: ``fn(batch, ctx)`` per batch, with vectorized keyed state.

        ``batch`` holds the rows of the keys this worker owns; ``ctx.state(name)`` reads and
        writes the declared ``states`` (:class:`arrowflow.ValueState`, ``ListState``,
        ``MapState``) a column of keys at a time; ``ctx.emit(side, frame)`` sends rows to a
        declared side output (``side_outputs={"invalid": schema}``, None: the input's schema),
        read with ``.side_output("invalid")``. ``fn`` returns a DataFrame of the same columns
        every time: ``schema=``, or learned by calling ``fn`` once on an empty batch.
        ``event_time="ts"`` measures state TTLs in event time instead of processing time.
        See :mod:`arrowflow._process.context` for the state methods and a worked example.
        """
        flow = self.stream.flow
        op_id = flow._new_id("process", name)
        function = ProcessFunction.build(
            fn,
            keys=list(self.keys),
            states=states,
            schema=schema,
            side_outputs=side_outputs,
            event_time=event_time,
            operator_id=op_id,
        )
        upstream = self.stream.node

        def side_schema(
            _schema: pl.Schema, _side: str, _flow: Flow = flow, _up: Node = upstream
        ) -> pl.Schema:
            return function.side_output_schema(_side, _flow.schema_of(_up))

        sides = {
            side: (lambda s, _side=side: side_schema(s, _side)) for side in function.side_outputs
        }
        node = flow._add(
            "process", [upstream], name, keys=list(self.keys), process=function, side_outputs=sides
        )
        function.operator_id = node.id
        return Stream(flow, flow._validate(node))

    def window(self, window: Any, *, allowed_lateness: Any = None) -> WindowedStream:
        """Event-time windows per key: ``af.tumbling("60s")``, ``af.sliding("60s", every="10s")``,
        ``af.session(gap="30s")``; then ``.agg(...)``. Needs ``with_watermark`` upstream.
        See :mod:`arrowflow.windows` for when windows fire and what is late."""
        return WindowedStream(self, window, allowed_lateness)

    def _repr_html_(self) -> str:
        return stream_html(self.stream, keyed_by=self.keys)

    def __repr__(self) -> str:
        return f"KeyedStream({self.stream.node.id!r}, keys={self.keys})"
