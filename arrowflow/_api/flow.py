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

import arrowflow.registry as registry
from arrowflow._api.display import flow_html, stream_html
from arrowflow._api.job import Job, run_plan
from arrowflow._api.live import DEFAULT_RESULTS_LIMIT, LimitSink, LiveResults, TapSink
from arrowflow._api.windowed import WindowedStream
from arrowflow._foundation.durations import duration_ms
from arrowflow._foundation.keygroups import DEFAULT_MAX_PARALLELISM
from arrowflow._foundation.schema import to_polars_schema
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
from arrowflow._runtime.pool import prestart
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


def _registered_source(name: str, args: tuple[Any, ...], options: dict[str, Any]) -> Source:
    """The source that the factory registered as ``name`` builds from ``args`` and ``options``."""
    source = registry.load("source", name)(*args, **options)
    if not isinstance(source, Source):
        target = registry.entry("source", name).target
        msg = (
            f"the source format {name!r} ({target}) built a {type(source).__name__}, "
            f"not an arrowflow.sources.Source"
        )
        raise PlanError(msg)
    return source


def emit_interval(value: Any, what: str) -> float | None:
    """An ``emit_every`` argument in seconds (None stays None); refuses zero and negatives."""
    if value is None:
        return None
    ms = duration_ms(value, what=what)
    if ms <= 0:
        msg = f"{what} must be a positive duration such as '1s', got {value!r}"
        raise PlanError(msg)
    return ms / 1000


def _registered_sink(name: str, args: tuple[Any, ...], options: dict[str, Any]) -> Sink:
    """The sink that the factory registered as ``name`` builds from ``args`` and ``options``."""
    sink = registry.load("sink", name)(*args, **options)
    if not isinstance(sink, Sink):
        target = registry.entry("sink", name).target
        msg = (
            f"the sink format {name!r} ({target}) built a {type(sink).__name__}, "
            f"not an arrowflow.sinks.Sink"
        )
        raise PlanError(msg)
    return sink


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
        if not self.nodes:
            prestart()  # the pool's forkserver imports the engine while the flow is built
        source.prepare_schema()  # a file's footer or header: later steps are checked as added
        return Stream(self, self._add("source", [], name, source=source, id_kind=source.kind))

    def read(
        self,
        format: str,  # noqa: A002
        /,
        *args: Any,
        name: str | None = None,
        **options: Any,
    ) -> Stream:
        """A stream from the source format registered as ``format`` in :mod:`arrowflow.registry`.

        The built-in formats are ``"parquet"``, ``"csv"``, ``"ndjson"`` and ``"ipc"`` (what
        the ``read_<format>`` methods build), ``"tail"``, ``"watch"``, ``"polars"`` and
        ``"arrow"`` (:meth:`tail`, :meth:`watch`, :meth:`from_polars`, :meth:`from_arrow`).
        A plug-in adds its own with :func:`arrowflow.registry.register` or an entry point in
        the group ``arrowflow.source`` (see ``docs/plugins.md``). The format's module is
        imported on first use; adding the source reads at most its schema
        (:meth:`arrowflow.sources.Source.prepare_schema`: a file footer or header), no data.

        Parameters
        ----------
        format
            A name that ``arrowflow.registry.available("source")`` lists. Positional, so that
            a factory may take a ``format=`` option of its own (as ``"tail"`` does).
        *args
            Passed to the format's factory, which builds the :class:`arrowflow.sources.Source`;
            for a built-in format, the positional arguments of its method (a path, a frame).
        name
            The operator id; default: the source's ``kind``, numbered when already taken.
        **options
            Passed to the factory; for a built-in format, the keywords of its method.

        Returns
        -------
        Stream
            The source's rows.

        Raises
        ------
        PlanError
            No source format is registered as ``format`` (the message lists those that are),
            or its factory built something that is not a Source.
        ImportError
            The format's module cannot be imported; the message says what to install.
        """
        return self.source(_registered_source(format, args, options), name=name)

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

        The first file's footer is read now, so that each step added downstream is checked
        against its columns (a misspelled column fails that line), unless the path names no
        file yet. Every file's footer is read at plan time: each file must hold the schema's
        columns in types that read as the schema's without loss, or a
        :class:`arrowflow.SchemaError` names the file, the column and both types. Splits are
        ranges of row groups.

        Parameters
        ----------
        path
            A path, glob, directory or fsspec URL (``s3://bucket/events/``), or a list of them.
        schema
            The columns to read and their types (``{"user": pl.Int64}``, a ``pl.Schema`` or a
            ``pa.Schema``); default: the first file's.
        name
            The operator id; default ``read_parquet``, numbered when already taken.
        storage_options
            fsspec options for a remote file system (credentials, endpoint).
        on_error
            ``"side_output"`` or ``"raise"``, as for :meth:`read_csv`; Parquet's columns are
            typed, so no row of a readable file is malformed.
        on_corrupt_file
            ``"fail"`` (default): a file that cannot be read (truncated, not Parquet) fails
            the job, naming it. ``"skip"``: it becomes one row of the ``malformed`` side
            output (its file and the reader's reason) and the other files are read.

        Returns
        -------
        Stream
            The files' rows.
        """
        return self.read(
            "parquet",
            path,
            schema=schema,
            storage_options=storage_options,
            on_error=on_error,
            on_corrupt_file=on_corrupt_file,
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
        """CSV files: a path, a glob, a directory or an fsspec URL; one split per file.

        Rows that cannot be parsed go to the ``malformed`` side output (file, byte offset,
        line, reason), in order with the data: a row is malformed when any column of
        ``schema`` fails to parse, whichever columns the flow uses.

        Parameters
        ----------
        path
            A path, glob, directory or fsspec URL, or a list of them.
        schema
            The columns and their types; default: inferred from the first MiB of the first
            non-empty file, now (as the flow is built, so that each step downstream is
            checked against it) when the path names a file already, else at plan time.
        has_header
            The first line of each file names the columns.
        separator
            The one-character field separator.
        name
            The operator id; default ``read_csv``, numbered when already taken.
        storage_options
            fsspec options for a remote file system.
        on_error
            ``"side_output"`` (default): malformed rows go to the ``malformed`` side output.
            ``"raise"``: the first one fails the job.
        on_corrupt_file
            ``"fail"`` (default) or ``"skip"``: a file that cannot be read at all (a broken
            ``.gz``) fails the job, or is reported in ``malformed`` and the rest is read.

        Returns
        -------
        Stream
            The files' rows.
        """
        return self.read(
            "csv",
            path,
            schema=schema,
            has_header=has_header,
            separator=separator,
            storage_options=storage_options,
            on_error=on_error,
            on_corrupt_file=on_corrupt_file,
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
        """Newline-delimited JSON files, one object per line; one split per file.

        Lines that are not a JSON object, not UTF-8, or hold a value that does not parse as
        its column's type go to the ``malformed`` side output.

        Parameters
        ----------
        path
            A path, glob, directory or fsspec URL, or a list of them.
        schema
            The columns and their types; default: inferred from the first MiB of the first
            non-empty file, now (as the flow is built, so that each step downstream is
            checked against it) when the path names a file already, else at plan time.
        name
            The operator id; default ``read_ndjson``, numbered when already taken.
        storage_options
            fsspec options for a remote file system.
        on_error
            ``"side_output"`` (default) or ``"raise"``, as for :meth:`read_csv`.
        on_corrupt_file
            ``"fail"`` (default) or ``"skip"``, as for :meth:`read_csv`.

        Returns
        -------
        Stream
            The files' rows.
        """
        return self.read(
            "ndjson",
            path,
            schema=schema,
            storage_options=storage_options,
            on_error=on_error,
            on_corrupt_file=on_corrupt_file,
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
        """Arrow IPC (Feather v2) files; one split per file.

        As :meth:`read_parquet`, each file's schema is read at plan time and must convert to
        ``schema`` without loss.

        Parameters
        ----------
        path
            A path, glob, directory or fsspec URL, or a list of them.
        schema
            The columns to read and their types; default: the first file's.
        name
            The operator id; default ``read_ipc``, numbered when already taken.
        storage_options
            fsspec options for a remote file system.
        on_error
            ``"side_output"`` or ``"raise"``; as in Parquet, no row of a readable file is
            malformed.
        on_corrupt_file
            ``"fail"`` (default) or ``"skip"``, as for :meth:`read_parquet`.

        Returns
        -------
        Stream
            The files' rows.
        """
        return self.read(
            "ipc",
            path,
            schema=schema,
            storage_options=storage_options,
            on_error=on_error,
            on_corrupt_file=on_corrupt_file,
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
        goes on with the new file.

        Parameters
        ----------
        path
            A local file (``file://`` URLs too); it need not exist yet.
        format
            ``"ndjson"`` (default) or ``"csv"``.
        schema
            The columns and their types; required, since the file may start empty.
        has_header
            For ``format="csv"``: the file's first line names the columns.
        separator
            For ``format="csv"``: the one-character field separator.
        poll_interval
            How often to look for new lines when there are none, e.g. ``"100ms"``.
        name
            The operator id; default ``tail``, numbered when already taken.
        on_error
            ``"side_output"`` (default): lines that cannot be parsed go to ``malformed``.
            ``"raise"``: the first one fails the job.

        Returns
        -------
        Stream
            An unbounded stream of the appended lines' rows.
        """
        return self.read(
            "tail",
            path,
            format=format,
            schema=schema,
            has_header=has_header,
            separator=separator,
            poll_interval=poll_interval,
            on_error=on_error,
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
        """Files that land under a glob or folder (unbounded), each processed exactly once.

        Also across restarts: the files already processed are kept in checkpoints. A file
        written in place is not read half-written: a parquet or IPC file is taken once its
        footer opens, a CSV or NDJSON file once two listings a ``poll_interval`` apart see the
        same size and modification time; writing elsewhere and renaming into place is still
        the safe way for writers that pause. Each file is read as ``read_<format>`` reads it.

        Parameters
        ----------
        pattern
            A folder, glob or fsspec URL to watch.
        format
            ``"parquet"`` (default), ``"csv"``, ``"ndjson"`` or ``"ipc"``.
        schema
            The columns and their types; required, since the folder may start empty.
        poll_interval
            How often to list the folder, e.g. ``"1s"``.
        storage_options
            fsspec options for a remote file system.
        name
            The operator id; default ``watch``, numbered when already taken.
        on_error
            ``"side_output"`` (default) or ``"raise"``, as for the ``read_<format>`` method.
        max_file_age
            Files modified more than this before the newest one are skipped and forgotten,
            which keeps the remembered set (and checkpoints) bounded; ``None``: never.

        Returns
        -------
        Stream
            An unbounded stream of the new files' rows.
        """
        return self.read(
            "watch",
            pattern,
            format=format,
            schema=schema,
            storage_options=storage_options,
            poll_interval=poll_interval,
            on_error=on_error,
            max_file_age=max_file_age,
            name=name,
        )

    def from_polars(
        self, df: pl.DataFrame | pl.LazyFrame, *, name: str | None = None, splits: int | None = None
    ) -> Stream:
        """An in-memory DataFrame as a bounded source.

        Parameters
        ----------
        df
            The rows; a LazyFrame is collected here, once.
        name
            The operator id; default ``from_polars``, numbered when already taken.
        splits
            Cut the frame into this many row ranges, read in parallel; default: one per
            100,000 rows, 16 at most.

        Returns
        -------
        Stream
            The frame's rows.
        """
        _check_splits(splits, "from_polars")
        return self.read("polars", df, splits=splits, name=name)

    def from_arrow(
        self, data: Any, *, name: str | None = None, splits: int | None = None
    ) -> Stream:
        """A pyarrow Table, RecordBatch or list of RecordBatches as a bounded source.

        Parameters
        ----------
        data
            A ``pa.Table``, a ``pa.RecordBatch`` or a non-empty list of them.
        name
            The operator id; default ``from_arrow``, numbered when already taken.
        splits
            Cut the rows into this many ranges, as for :meth:`from_polars`.

        Returns
        -------
        Stream
            The data's rows.
        """
        _check_splits(splits, "from_arrow")
        return self.read("arrow", data, splits=splits, name=name)

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
        """A plain-text description of the physical plan.

        Of the sinks, or, before the flow has any, of every stream nothing reads yet (what
        running it would plan, less the sinks).
        """
        if self.sinks():
            return self.plan().explain()
        consumed = {id(i) for node in self.nodes for i in node.inputs}
        ends = [node for node in self.nodes if id(node) not in consumed]
        if not ends:
            msg = (
                "the flow is empty: read something first, e.g. flow.read_parquet('data/*.parquet')"
            )
            raise PlanError(msg)
        text = build_plan(self, ends).explain()
        return (
            f"{text}\n(no sink yet: write a stream, e.g. .write_parquet('out/'), to run the flow)"
        )

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
            Worker processes; ``0`` runs in this process (the in-process runner: same
            results, easier debugging). Default: in this process for a flow of polars
            expressions on up to two cores, else one per core (see
            :class:`arrowflow.options.RunOptions`).
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

        Without ``schema``, ``fn`` is also called once when the step is added, on an empty
        batch of the input's columns, to learn the columns it returns (so the next steps can
        be checked as they are added): a function that needs rows (``batch["a"][0]``) should
        return early on an empty batch, or be given ``schema={...}``, which skips that call.
        """
        if not callable(fn):
            msg = (
                f"map_batches() expects a function DataFrame -> DataFrame, got {type(fn).__name__}"
            )
            raise PlanError(msg)
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
        """The rows an operator set aside instead of dropping them.

        Parameters
        ----------
        name
            ``"malformed"`` on sources (rows that do not parse or fit the schema), ``"late"``
            on windows (rows behind the watermark by more than the allowed lateness).
        """
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

    def write(
        self,
        format: str,  # noqa: A002
        /,
        *args: Any,
        name: str | None = None,
        **options: Any,
    ) -> None:
        """Write to the sink format registered as ``format`` in :mod:`arrowflow.registry`.

        The built-in formats are ``"parquet"``, ``"csv"``, ``"ndjson"`` and ``"ipc"`` (what
        the ``write_<format>`` methods build) and ``"database"`` (:meth:`write_database`). A
        plug-in adds its own with :func:`arrowflow.registry.register` or an entry point in
        the group ``arrowflow.sink`` (see ``docs/plugins.md``). The format's module is
        imported on first use; building the sink does no I/O.

        Parameters
        ----------
        format
            A name that ``arrowflow.registry.available("sink")`` lists. Positional, so that
            a factory may take a ``format=`` option of its own.
        *args
            Passed to the format's factory, which builds the :class:`arrowflow.sinks.Sink`;
            for a built-in format, the positional arguments of its method (a path, a URL).
        name
            The operator id; default: the sink's ``kind``, numbered when already taken.
        **options
            Passed to the factory; for a built-in format, the keywords of its method.

        Raises
        ------
        PlanError
            No sink format is registered as ``format`` (the message lists those that are),
            or its factory built something that is not a Sink.
        ImportError
            The format's module cannot be imported; the message says what to install.
        """
        self._sink(_registered_sink(format, args, options), name)

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
        """Write Parquet part files into directory ``path``, exactly once (see README).

        Each checkpoint's files are staged in a hidden folder and moved into ``path`` when
        the checkpoint completes, so a reader sees whole files of complete checkpoints only.

        Parameters
        ----------
        path
            A directory, local or an fsspec URL.
        mode
            ``"overwrite"`` (default): a fresh run deletes the part files already there (and
            refuses to run if the folder holds other visible files); ``"append"``: keep them;
            ``"error"``: refuse to run if there are any.
        name
            The operator id; default ``write_parquet``, numbered when already taken.
        storage_options
            fsspec options for a remote file system.
        rows_per_file
            Start a new part file after this many rows; default 2,000,000.
        compression
            ``"zstd"`` (polars' default), ``"lz4"``, ``"snappy"`` (Spark's and Flink's
            default), ``"gzip"``, ``"brotli"`` or ``"uncompressed"``.
        compression_level
            As polars' ``write_parquet``: for zstd 1-22, gzip 0-9, brotli 0-11.
        """
        self.write(
            "parquet",
            path,
            mode=mode,
            storage_options=storage_options,
            rows_per_file=rows_per_file,
            compression=compression,
            compression_level=compression_level,
            name=name,
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
        """Write CSV part files into directory ``path``, exactly once.

        Columns CSV cannot hold (nested, binary, durations) fail the plan, naming the column.

        Parameters
        ----------
        path
            A directory, local or an fsspec URL.
        mode
            ``"overwrite"`` (default), ``"append"`` or ``"error"``, as for
            :meth:`write_parquet`.
        name
            The operator id; default ``write_csv``, numbered when already taken.
        storage_options
            fsspec options for a remote file system.
        rows_per_file
            Start a new part file after this many rows; default 2,000,000.
        """
        self.write(
            "csv",
            path,
            mode=mode,
            storage_options=storage_options,
            rows_per_file=rows_per_file,
            name=name,
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
        """Write newline-delimited JSON part files into directory ``path``, exactly once.

        Binary columns fail the plan (JSON has no bytes), naming the column.

        Parameters
        ----------
        path
            A directory, local or an fsspec URL.
        mode
            ``"overwrite"`` (default), ``"append"`` or ``"error"``, as for
            :meth:`write_parquet`.
        name
            The operator id; default ``write_ndjson``, numbered when already taken.
        storage_options
            fsspec options for a remote file system.
        rows_per_file
            Start a new part file after this many rows; default 2,000,000.
        """
        self.write(
            "ndjson",
            path,
            mode=mode,
            storage_options=storage_options,
            rows_per_file=rows_per_file,
            name=name,
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
        """Write Arrow IPC (Feather v2) part files into directory ``path``, exactly once.

        Parameters
        ----------
        path
            A directory, local or an fsspec URL.
        mode
            ``"overwrite"`` (default), ``"append"`` or ``"error"``, as for
            :meth:`write_parquet`.
        name
            The operator id; default ``write_ipc``, numbered when already taken.
        storage_options
            fsspec options for a remote file system.
        rows_per_file
            Start a new part file after this many rows; default 2,000,000.
        compression
            ``"uncompressed"`` (default: any Arrow reader maps it without decoding),
            ``"lz4"`` or ``"zstd"``.
        """
        self.write(
            "ipc",
            path,
            mode=mode,
            storage_options=storage_options,
            rows_per_file=rows_per_file,
            compression=compression,
            name=name,
        )

    def write_database(
        self,
        url: str,
        *,
        table: str,
        mode: str = "append",
        key: str | Sequence[str] | None = None,
        name: str | None = None,
        emit_every: Any = None,
    ) -> None:
        """Write rows into ``table`` of a SQLite or PostgreSQL database, exactly once.

        Each checkpoint's rows commit in one transaction with the checkpoint id, so a
        restore never commits them twice. Needs ``pip install 'arrowflow[sql]'``.

        Parameters
        ----------
        url
            ``"sqlite:///out/app.db"`` (relative), ``"sqlite:////tmp/app.db"`` (absolute) or
            ``"postgresql://user@host:5432/db"``.
        table
            The target table; created from the stream's schema when it does not exist.
        mode
            ``"append"`` (default): add rows; ``"upsert"`` (with ``key``): insert or replace,
            the newest row of a key wins; ``"overwrite"``: recreate the table on a fresh run.
        key
            For ``mode="upsert"``: the column or columns that identify a row.
        name
            The operator id; default ``write_database``, numbered when already taken. It
            also names the sink's staging table and commit markers, so keep it stable
            across restores.
        emit_every
            How often the table gets the rows (``"1s"``, ``"10s"``): a run without checkpoints
            commits them at this interval (and at the end); with a ``checkpoint_dir`` every
            emission is a checkpoint. ``None`` (default): at every commit the run makes.
            See :meth:`KeyedStream.agg` and docs/checkpoints.md, "Emission".

        To read a SQLite table while the job writes it from the same process (a notebook),
        connect with ``adbc_driver_sqlite`` or from another process: Python's ``sqlite3`` is
        a second copy of SQLite, and two copies in one process break each other's file locks
        (SQLite's "multiple copies of SQLite linked into the same application").
        """
        keys = [key] if isinstance(key, str) else list(key) if key is not None else None
        options = {"table": table, "mode": mode, "key": keys, "name": name}
        every = emit_interval(emit_every, f"write_database({table!r}): emit_every")
        sink = _registered_sink("database", (url,), options)
        sink.emit_every_s = every
        self._sink(sink, name)

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
        sink: Sink = registry.load("sink", "collect")() if limit is None else LimitSink(limit)
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

    def agg(
        self,
        *exprs: pl.Expr,
        name: str | None = None,
        emit_every: Any = None,
        **named: pl.Expr,
    ) -> Stream:
        """Keyed running aggregation: one row per key with its aggregates so far.

        Emits the current value of each key updated since its last emission: at every
        commit of the run (every checkpoint; without checkpoints every ``emit_every``, by
        default every second over an unbounded source) and at the end of a bounded input.
        Between two emissions a reader of the sink sees the values of the last one
        (docs/checkpoints.md, "Emission").

        Parameters
        ----------
        emit_every
            How often to emit (``"1s"``, ``"500ms"``, a timedelta). It sets how often a run
            without checkpoints commits (the shortest of the flow's intervals; without any,
            every second over an unbounded source, only at the end over a bounded one); with
            a ``checkpoint_dir`` every emission is a checkpoint, so the output stays exactly
            once. ``None`` (default): at every commit the run makes.
        """
        flow = self.stream.flow
        op_id = flow._new_id("agg", name)
        emit_every_s = emit_interval(emit_every, f"{op_id}: emit_every")
        aggs = named_aggregations(exprs, named, op_id)
        keys = list(self.keys)

        def make(
            schema: pl.Schema,
            _aggs: dict[str, pl.Expr] = aggs,
            _keys: list[str] = keys,
            _id: str = op_id,
        ) -> IncrementalAgg:
            return IncrementalAgg(_aggs, _keys, schema, operator_id=_id)

        node = flow._add(
            "agg",
            [self.stream.node],
            name,
            keys=keys,
            aggs=aggs,
            agg=make,
            emit_every_s=emit_every_s,
        )
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
        """Event-time windows per key; then ``.agg(...)``.

        Needs ``with_watermark`` upstream. See :mod:`arrowflow.windows` for when windows fire
        and what is late.

        Parameters
        ----------
        window
            ``af.tumbling("60s")``, ``af.sliding("60s", every="10s")`` or
            ``af.session(gap="30s")``.
        allowed_lateness
            How far behind the watermark a row may still update its window (a duration such
            as ``"5s"``); later rows go to the ``"late"`` side output. Default: none.
        """
        return WindowedStream(self, window, allowed_lateness)

    def _repr_html_(self) -> str:
        return stream_html(self.stream, keyed_by=self.keys)

    def __repr__(self) -> str:
        return f"KeyedStream({self.stream.node.id!r}, keys={self.keys})"
