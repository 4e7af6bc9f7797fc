"""Rows of a running job, seen from the calling process: live-results taps and ``limit``.

A *tap* is a sink that the runtime adds (it is not in the user's flow) on a stream whose rows
a live job should show (``job.results(stream)``). Its writer, in each worker, sends what it
saw to the coordinator about twice a second, tagged with the *epoch*: the id of the last
checkpoint the writer took part in. Those rows came after that checkpoint's barrier, so
when a job restarts from checkpoint *R*, the rows tagged *R* or later will be produced again
and :meth:`LiveResults.rewind` drops them: what ``job.results`` shows holds every row once,
across restarts, like the job's real outputs — only sooner (before the checkpoint commits)
and bounded (the newest ``limit`` rows of each stream).

:class:`LimitSink` is the sink of ``stream.head(n)`` / ``collect(limit=n)``: in-process, it
keeps the rows itself and tells the worker to stop as soon as it has ``n`` of them.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

import polars as pl

from arrowflow._foundation.arrowipc import frame_from_ipc, frame_to_ipc
from arrowflow.sinks import Sink, SinkWriter

#: Rows of each stream that ``job.results()`` keeps by default (the newest ones).
DEFAULT_RESULTS_LIMIT = 100_000


class TapSink(Sink):
    """A stream's rows, sent live to the coordinator (``flow.start(results=...)``)."""

    kind = "results"
    transient = True  # not in the flow: a checkpoint neither records it nor needs it
    durable = False

    def __init__(self, stream_id: str, limit: int) -> None:
        self.stream_id = stream_id
        self.limit = limit

    def open_writer(self, worker: int, parallelism: int, operator_id: str) -> SinkWriter:
        return _TapWriter(self.limit)

    def commit(self, checkpoint_id: int, staged: list[Any]) -> None:
        """Nothing to commit: the rows travelled as they came (see :meth:`LiveResults.rewind`)."""

    def describe(self) -> str:
        return f"live results of {self.stream_id!r} (newest {self.limit:,} rows)"


class _TapWriter(SinkWriter):
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.frames: deque[pl.DataFrame] = deque()
        self.rows = 0
        self.produced = 0  # rows since the last flush, also those dropped for the limit
        self.epoch: int | None = None
        self.publish: Any = None

    def bind(self, publish: Any) -> None:
        self.publish = publish

    def write(self, batch: pl.DataFrame) -> None:
        self.frames.append(batch)
        self.rows += batch.height
        self.produced += batch.height
        # Only the newest ``limit`` rows can be shown: don't hold (or send) more.
        while self.rows - self.frames[0].height >= self.limit:
            self.rows -= self.frames.popleft().height

    def flush(self) -> None:
        if not self.frames or self.publish is None:
            return
        payload = frame_to_ipc(list(self.frames), last=self.limit)
        produced = self.produced
        self.frames.clear()
        self.rows = self.produced = 0
        self.publish(self.epoch, payload, produced)

    def prepare_commit(self, checkpoint_id: int) -> Any:
        self.flush()  # what came before the barrier keeps the old epoch
        self.epoch = checkpoint_id
        return None


#: The per-epoch entry that holds the rows of every epoch no restart can go back before.
SETTLED = -1


class LiveResults:
    """The coordinator's side of the taps: per stream, the newest rows with their epochs."""

    def __init__(self, limit: int = DEFAULT_RESULTS_LIMIT) -> None:
        self.limit = limit
        self.lock = threading.Lock()
        self.frames: dict[str, deque[tuple[int, pl.DataFrame]]] = {}
        self.kept: dict[str, int] = {}
        # Rows produced per epoch (also those no longer kept), so that a rewind can count; the
        # epochs no restart can go back before are folded into the entry SETTLED.
        self.produced: dict[str, dict[int, int]] = {}
        self.settled_before = 0  # epochs below this are counted under SETTLED

    def add(self, sink_id: str, worker: int, epoch: int, payload: bytes, produced: int) -> None:
        frame = frame_from_ipc(payload)
        with self.lock:
            frames = self.frames.setdefault(sink_id, deque())
            frames.append((epoch, frame))
            self.kept[sink_id] = self.kept.get(sink_id, 0) + frame.height
            if epoch < self.settled_before:  # a tap's flush that arrived after the checkpoint
                epoch = SETTLED
            by_epoch = self.produced.setdefault(sink_id, {})
            by_epoch[epoch] = by_epoch.get(epoch, 0) + produced
            while self.kept[sink_id] - frames[0][1].height >= self.limit:
                self.kept[sink_id] -= frames.popleft()[1].height

    def rewind(self, restored_id: int) -> None:
        """A new attempt starts from checkpoint ``restored_id`` (0: from the beginning): drop
        the rows produced after it, which the new attempt produces again."""
        with self.lock:
            if restored_id < self.settled_before:
                # Only a start from scratch or from the checkpoint the job started from goes
                # back before the oldest kept checkpoint: every row counted is produced again.
                for by_epoch in self.produced.values():
                    by_epoch.pop(SETTLED, None)
                self.settled_before = 0
            for sink_id, frames in self.frames.items():
                dropped = [f.height for epoch, f in frames if epoch >= restored_id]
                if dropped:
                    kept = deque((epoch, f) for epoch, f in frames if epoch < restored_id)
                    self.frames[sink_id] = kept
                    self.kept[sink_id] -= sum(dropped)
            for by_epoch in self.produced.values():
                for epoch in [e for e in by_epoch if e >= restored_id]:
                    del by_epoch[epoch]

    def settle(self, checkpoint_id: int) -> None:
        """No restart of this job restores a checkpoint of its own older than ``checkpoint_id``
        (the oldest the retention keeps), so the counts of the epochs before it are folded into
        one number: the per-epoch record stays as short as the checkpoints kept."""
        with self.lock:
            self.settled_before = max(self.settled_before, checkpoint_id)
            for by_epoch in self.produced.values():
                old = [epoch for epoch in by_epoch if SETTLED < epoch < checkpoint_id]
                if old:
                    by_epoch[SETTLED] = by_epoch.get(SETTLED, 0) + sum(by_epoch.pop(e) for e in old)

    def get(self, sink_id: str, schema: pl.Schema | None = None) -> pl.DataFrame:
        with self.lock:
            frames = [f for _, f in self.frames.get(sink_id, ())]
        if not frames:
            return pl.DataFrame(schema=schema)
        frame = pl.concat(frames, how="vertical_relaxed")
        return frame.tail(self.limit) if frame.height > self.limit else frame

    def count(self, sink_id: str) -> int:
        """Rows the stream produced so far (also those no longer kept)."""
        with self.lock:
            return sum(self.produced.get(sink_id, {}).values())


class LimitSink(Sink):
    """Keeps the first ``n`` rows and then ends the run (in-process runs only)."""

    kind = "limit"
    durable = False

    def __init__(self, n: int) -> None:
        self.n = n
        self.writers: list[_LimitWriter] = []
        self.deadline_s: float | None = None  # unbounded input: stop after this long anyway

    def open_writer(self, worker: int, parallelism: int, operator_id: str) -> SinkWriter:
        deadline = None if self.deadline_s is None else time.monotonic() + self.deadline_s
        writer = _LimitWriter(self.n, deadline)
        self.writers.append(writer)
        return writer

    def commit(self, checkpoint_id: int, staged: list[Any]) -> None:
        """Nothing to commit: the rows stay with the writer, in this process."""

    def to_polars(self, schema: pl.Schema) -> pl.DataFrame:
        frames = [f for writer in self.writers for f in writer.frames]
        if not frames:
            return pl.DataFrame(schema=schema)
        return pl.concat(frames, how="vertical_relaxed").head(self.n)

    def describe(self) -> str:
        return f"first {self.n:,} rows"


class _LimitWriter(SinkWriter):
    def __init__(self, n: int, deadline: float | None) -> None:
        self.n = n
        self.deadline = deadline
        self.rows = 0
        self.frames: list[pl.DataFrame] = []

    @property
    def satisfied(self) -> bool:
        return self.rows >= self.n or (
            self.deadline is not None and time.monotonic() > self.deadline
        )

    def bind(self, publish: Any) -> None:
        """In-process: the rows stay here, nothing to publish."""

    def flush(self) -> None:
        """Nothing buffered for anyone else."""

    def write(self, batch: pl.DataFrame) -> None:
        if self.rows < self.n:
            self.frames.append(batch.head(self.n - self.rows))
            self.rows += self.frames[-1].height

    def prepare_commit(self, checkpoint_id: int) -> Any:
        return None
