"""Background jobs: ``flow.start()`` runs a flow in a thread and returns a :class:`Job`.

The job's coordinator runs in that thread (its workers are processes, or the thread itself
with ``workers=0``), so the calling thread — a notebook, a service — stays free to watch
it, ask for a checkpoint, or stop it:

>>> import arrowflow as af, polars as pl
>>> from arrowflow.testing import CollectingSink
>>> flow = af.Flow("bg")
>>> flow.from_polars(pl.DataFrame({"k": [1, 2, 1]})).key_by("k").agg(n=pl.len()).write_to(CollectingSink())
>>> job = flow.start(workers=0)
>>> job.wait().status
'finished'

Watching it: ``job.metrics()`` (per operator: rows in and out, watermark, lag),
``job.results(stream)`` (what a stream produced so far), ``job.history()`` (throughput and
lag over time), ``job.checkpoints()`` and ``job.state(operator)``. In Jupyter, a cell that
ends with ``job`` shows a live view that refreshes itself until the job ends.

``job.stop()`` ends the run at once: output of checkpoints already completed stays
committed, nothing after them is. ``job.stop(savepoint=True)`` first takes one more
checkpoint and commits it, so a later ``flow.run(restore="latest")`` goes on exactly
from there.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import polars as pl

from arrowflow._api.inspect import checkpoint_arg, list_checkpoints, query_state, read_state
from arrowflow._api.jobview import display_live, in_notebook, job_html, job_text, watch_terminal
from arrowflow._api.progress import ProgressBar, wanted
from arrowflow._foundation.watermarks import IDLE, NO_WATERMARK
from arrowflow._plan import Plan
from arrowflow._runtime import execute
from arrowflow._runtime.result import RunResult
from arrowflow.errors import ArrowflowError
from arrowflow.options import RunOptions

#: Seconds between two samples of :meth:`Job.history`.
SAMPLE_INTERVAL_S = 0.5
#: Samples kept (the newest); at one per half second, the last hour.
MAX_SAMPLES = 7200


class JobControl:
    """Requests from the user's thread, applied to the coordinator of the current attempt;
    and what the user's thread sees of the run across attempts (restarts, live results)."""

    def __init__(self, results: Any = None) -> None:
        self.coordinator: Any = None
        self.stop_mode: str | None = None
        self.lock = threading.Lock()
        self.attempts = 0
        self.results = results  # arrowflow._api.live.LiveResults, when the run has taps

    def attach(self, coordinator: Any) -> None:
        with self.lock:
            self.attempts += 1
            if self.results is not None:
                self.results.rewind(coordinator.restored_id)
                coordinator.on_publish = self.results.add
                coordinator.on_restorable = self.results.settle
            self.coordinator = coordinator
            if self.stop_mode is not None:
                coordinator.request_stop(savepoint=self.stop_mode == "savepoint")

    @property
    def restarts(self) -> int:
        return max(0, self.attempts - 1)


def run_plan(plan: Plan, options: RunOptions, control: JobControl | None = None) -> RunResult:
    """Run ``plan`` with ``options`` in this thread, with a progress bar when
    ``options.progress`` asks for one (:func:`arrowflow._api.progress.wanted`).

    Parameters
    ----------
    plan
        The physical plan, built with ``options.max_parallelism`` key groups.
    options
        The run's options.
    control
        The job's control (``flow.start``); a progress bar gets one of its own otherwise.
    """
    bar = None
    if wanted(options.progress):
        if control is None:
            control = JobControl()
        bar = ProgressBar(control, plan.flow_name)
    try:
        return execute(plan, options, control=control)
    finally:
        if bar is not None:
            bar.close()


def operator_frame(rows: list[dict[str, Any]], now: float | None = None) -> pl.DataFrame:
    """Per-operator counters summed over workers; watermark: the lowest of the workers'."""
    columns = {
        "operator": pl.String,
        "kind": pl.String,
        "rows_in": pl.Int64,
        "rows_out": pl.Int64,
        "batches_in": pl.Int64,
    }
    if not rows:
        return pl.DataFrame(
            schema={**columns, "watermark": pl.Datetime("us", "UTC"), "lag_s": pl.Float64}
        )
    frame = pl.from_dicts(rows, infer_schema_length=None)
    extra = [
        c
        for c, t in frame.schema.items()
        if c not in columns and c not in ("worker", "watermark_us") and t.is_numeric()
    ]
    if "watermark_us" not in frame.columns:
        frame = frame.with_columns(pl.lit(None, dtype=pl.Int64).alias("watermark_us"))
    watermark = pl.col("watermark_us")
    frame = frame.with_columns(
        pl.when((watermark == NO_WATERMARK) | (watermark == IDLE))
        .then(None)
        .otherwise(watermark)
        .alias("watermark_us")
    )
    now_us = int((time.time() if now is None else now) * 1_000_000)
    grouped = (
        frame.group_by("operator", "kind", maintain_order=True)
        .agg(
            [pl.col(c).sum() for c in ("rows_in", "rows_out", "batches_in", *extra)]
            + [pl.col("watermark_us").min()]
        )
        .with_columns(
            pl.col("watermark_us").cast(pl.Datetime("us", "UTC")).alias("watermark"),
            ((now_us - pl.col("watermark_us")) / 1e6).alias("lag_s"),
        )
        .drop("watermark_us")
    )
    # What a user looks at first comes first (a notebook shows the first 8 columns): counts
    # in and out, rows set aside, how far behind event time is; then the rest.
    first = ["operator", "kind", "rows_in", "rows_out"]
    set_aside = [c for c in ("malformed", "late") if c in extra]
    rest = [c for c in extra if c not in set_aside]
    return grouped.select(*first, *set_aside, "lag_s", "watermark", "batches_in", *rest)


class Job:
    """A flow running in the background."""

    def __init__(
        self,
        name: str,
        run: Callable[[JobControl], RunResult],
        options: RunOptions,
        *,
        results: Any = None,
        taps: dict[str, tuple[str, pl.Schema]] | None = None,
    ) -> None:
        self.name = name
        self.control = JobControl(results)
        self.taps = taps or {}  # stream id -> (tap sink id, schema)
        #: The options the job runs with.
        self.options = options
        self.result: RunResult | None = None
        self.error: BaseException | None = None
        self.started = time.monotonic()
        self.ended: float | None = None
        self.samples: list[dict[str, Any]] = []
        self._thread = threading.Thread(
            target=self._main, args=(run,), name=f"arrowflow-job-{name}", daemon=True
        )
        self._thread.start()
        self._sampler = threading.Thread(
            target=self._sample_loop, name=f"arrowflow-job-{name}-sampler", daemon=True
        )
        self._sampler.start()

    def _main(self, run: Callable[[JobControl], RunResult]) -> None:
        try:
            self.result = run(self.control)
        except BaseException as exc:
            self.error = exc
        finally:
            self.ended = time.monotonic()

    # ------------------------------------------------------------------ watching
    @property
    def status(self) -> str:
        """``running``, ``finished`` (input ended), ``stopped`` (job.stop()) or ``failed``."""
        if self._thread.is_alive():
            return "running"
        if self.error is not None:
            return "failed"
        return self.result.status if self.result is not None else "failed"

    @property
    def elapsed_s(self) -> float:
        return (self.ended or time.monotonic()) - self.started

    @property
    def progress(self) -> dict[str, Any]:
        """Rows read so far, splits done of those known (``unbounded``: more may come),
        checkpoints completed in this attempt, restarts."""
        coordinator = self.control.coordinator
        if coordinator is None:
            return {
                "rows_in": 0,
                "splits_done": 0,
                "splits_total": 0,
                "unbounded": False,
                "checkpoints": [],
                "restarts": 0,
                "elapsed_s": self.elapsed_s,
            }
        done, total = coordinator.enumerator.progress()
        return {
            "rows_in": coordinator.rows_total,
            "splits_done": done,
            "splits_total": total,
            "unbounded": coordinator.enumerator.unbounded,
            "checkpoints": list(coordinator.completed),
            "restarts": self.control.restarts,
            "elapsed_s": self.elapsed_s,
        }

    def _operator_rows(self) -> list[dict[str, Any]]:
        """Every worker's operator counters, without the live-results taps (not the user's)."""
        if self.result is not None and self.result.operator_metrics:
            rows = list(self.result.operator_metrics)
        else:
            coordinator = self.control.coordinator
            if coordinator is None:
                return []
            live = dict(coordinator.live_metrics)
            rows = [row for worker in sorted(live) for row in live[worker]]
        taps = {sink for sink, _schema in self.taps.values()}
        return [row for row in rows if row["operator"] not in taps]

    def metrics(self, *, by_worker: bool = False) -> pl.DataFrame:
        """Per operator (of the current attempt): rows in and out, batches, what is particular
        to it (malformed, late, windows fired/open), its watermark and the lag behind it
        (seconds from the watermark to now). Counters come from the workers twice a second.
        ``by_worker=True``: one row per operator and worker, as reported."""
        rows = self._operator_rows()
        if by_worker:
            return pl.from_dicts(rows, infer_schema_length=None) if rows else pl.DataFrame()
        return operator_frame(rows)

    def results(self, stream: Any) -> pl.DataFrame:
        """What ``stream`` produced so far (its newest ``results_limit`` rows).

        Rows show up within about half a second of being produced, before any checkpoint
        commits them; after a restart from a checkpoint, those produced after it are dropped
        (the restarted job produces them again), so no row shows twice.
        """
        stream_id = stream if isinstance(stream, str) else stream.id
        if stream_id not in self.taps:
            known = sorted(self.taps)
            msg = (
                f"job {self.name!r} keeps no results of stream {stream_id!r}; it keeps those of the "
                f"streams its sinks write ({known}); ask for others with flow.start(results=[stream, ...])"
            )
            raise ArrowflowError(msg)
        sink_id, schema = self.taps[stream_id]
        return self.control.results.get(sink_id, schema)

    def _sample(self) -> None:
        now = time.time()
        frame = operator_frame(self._operator_rows(), now)
        sources = frame.filter(pl.col("kind") == "source")
        sinks = frame.filter(pl.col("kind") == "sink")
        watermarks = frame.get_column("watermark").drop_nulls()
        coordinator = self.control.coordinator
        sample = {
            "time": datetime.fromtimestamp(now, tz=timezone.utc),
            "elapsed_s": self.elapsed_s,
            "rows_in": int(sources.get_column("rows_in").sum()) if sources.height else 0,
            "rows_out": int(sinks.get_column("rows_in").sum()) if sinks.height else 0,
            "watermark": watermarks.min() if len(watermarks) else None,
            # polars types max() as any Python literal; lag_s is a Float64 column
            "lag_s": float(frame.get_column("lag_s").drop_nulls().max())  # type: ignore[arg-type]
            if len(watermarks)
            else None,
            "checkpoints": len(coordinator.completed) if coordinator is not None else 0,
            "restarts": self.control.restarts,
        }
        previous = self.samples[-1] if self.samples else None
        if previous is not None and sample["elapsed_s"] > previous["elapsed_s"]:
            gained = max(0, sample["rows_in"] - previous["rows_in"])
            sample["rows_per_s"] = gained / (sample["elapsed_s"] - previous["elapsed_s"])
        else:
            sample["rows_per_s"] = 0.0
        self.samples.append(sample)
        if len(self.samples) > MAX_SAMPLES:
            del self.samples[: len(self.samples) - MAX_SAMPLES]

    def _sample_loop(self) -> None:
        while self._thread.is_alive():
            self._sample()
            self._thread.join(SAMPLE_INTERVAL_S)
        self._sample()

    def history(self) -> pl.DataFrame:
        """One row per half second: rows in and out so far, rows/s, watermark, lag, checkpoints."""
        schema = {
            "time": pl.Datetime("us", "UTC"),
            "elapsed_s": pl.Float64(),
            "rows_in": pl.Int64(),
            "rows_out": pl.Int64(),
            "rows_per_s": pl.Float64(),
            "watermark": pl.Datetime("us", "UTC"),
            "lag_s": pl.Float64(),
            "checkpoints": pl.Int64(),
            "restarts": pl.Int64(),
        }
        return pl.DataFrame(list(self.samples), schema=schema)

    def last_checkpoint(self) -> dict[str, Any] | None:
        """Id, seconds since it completed and how long it took, of the newest checkpoint."""
        coordinator = self.control.coordinator
        if coordinator is None or not coordinator.completed:
            return None
        checkpoint_id = coordinator.completed[-1]
        return {
            "id": checkpoint_id,
            "took_s": coordinator.durations.get(checkpoint_id),
            "ago_s": time.monotonic()
            - coordinator.completed_at.get(checkpoint_id, time.monotonic()),
        }

    # ------------------------------------------------------------------ checkpoints and state
    def _checkpoint_dir(self) -> str:
        directory = self.options.checkpoint_dir
        if directory is None:
            msg = f"job {self.name!r} was started without a checkpoint_dir: it has no checkpoints"
            raise ArrowflowError(msg)
        return directory

    def checkpoints(self) -> pl.DataFrame:
        """The job's complete checkpoints: id, time, size, state files, final, source offsets."""
        return list_checkpoints(
            self._checkpoint_dir(), storage_options=self.options.storage_options
        )

    def state(
        self, operator: str, *, checkpoint: int | None = None, checkpoint_id: int | None = None
    ) -> pl.DataFrame:
        """An operator's state in the newest (or the given) checkpoint, as a DataFrame
        (``checkpoint_id`` is the deprecated name of ``checkpoint``)."""
        return read_state(
            self._checkpoint_dir(),
            operator,
            checkpoint=checkpoint_arg(checkpoint, checkpoint_id),
            storage_options=self.options.storage_options,
        )

    def query_state(
        self, sql: str, *, checkpoint: int | None = None, checkpoint_id: int | None = None
    ) -> pl.DataFrame:
        """SQL over the state in a checkpoint: every operator with state is a table named after
        its id (quote ids with a dash: ``SELECT * FROM "agg-2"``); ``checkpoint_id`` is the
        deprecated name of ``checkpoint``."""
        return query_state(
            self._checkpoint_dir(),
            sql,
            checkpoint=checkpoint_arg(checkpoint, checkpoint_id),
            storage_options=self.options.storage_options,
        )

    def wait(self, timeout: float | None = None) -> RunResult:
        """Block until the run ends; its result, or the error that ended it."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            msg = f"job {self.name!r} is still running after {timeout} s"
            raise TimeoutError(msg)
        self._sampler.join(5.0)
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result

    # ------------------------------------------------------------------ controlling
    def checkpoint(self, *, timeout: float = 60.0) -> int:
        """Take a checkpoint now; returns its id once it is complete (and its output committed)."""
        deadline = time.monotonic() + timeout
        while (
            self.control.coordinator is None
            and self._thread.is_alive()
            and time.monotonic() < deadline
        ):
            time.sleep(0.01)
        coordinator = self.control.coordinator
        if coordinator is None or coordinator.storage is None:
            msg = f"job {self.name!r} has no checkpoint_dir, so it cannot take a checkpoint"
            raise ArrowflowError(msg)
        before = len(coordinator.completed)
        coordinator.request_checkpoint()
        while time.monotonic() < deadline:
            if len(coordinator.completed) > before:
                return coordinator.completed[-1]
            if not self._thread.is_alive():
                break
            time.sleep(0.01)
        msg = (
            f"job {self.name!r}: no checkpoint completed within {timeout} s (status: {self.status})"
        )
        raise ArrowflowError(msg)

    def stop(self, *, savepoint: bool = False, timeout: float = 120.0) -> RunResult:
        """End the run (with ``savepoint``: after one more committed checkpoint); its result."""
        with self.control.lock:
            self.control.stop_mode = "savepoint" if savepoint else "stop"
            if self.control.coordinator is not None:
                self.control.coordinator.request_stop(savepoint=savepoint)
        return self.wait(timeout)

    # ------------------------------------------------------------------ display
    def _repr_html_(self) -> str:
        return job_html(self)

    def _ipython_display_(self) -> None:
        """In Jupyter: a view of the job that refreshes itself until the job ends."""
        display_live(self)

    def watch(self, *, interval: float = 1.0, file: Any = None) -> RunResult | None:
        """In a terminal: print a status line every ``interval`` seconds until the job ends
        (Ctrl-C stops watching, not the job). In Jupyter, show the live view instead."""
        if in_notebook():
            self._ipython_display_()
            return None
        return watch_terminal(self, interval=interval, file=file)

    def __str__(self) -> str:
        """The job's view as text: status, progress, last checkpoint, one line per operator."""
        return job_text(self)

    def __repr__(self) -> str:
        progress = self.progress
        return (
            f"Job({self.name!r}, {self.status}, rows_in={progress['rows_in']:,}, "
            f"splits {progress['splits_done']}/{progress['splits_total']}, "
            f"checkpoints={progress['checkpoints'][-3:]}, restarts={progress['restarts']})"
        )
