"""The sink interface: what an output connector in ``arrowflow.io`` implements.

Sinks write exactly once with a two-phase commit driven by checkpoints:

1. In every worker, :meth:`Sink.open_writer` returns a :class:`SinkWriter`; the runtime
   calls :meth:`SinkWriter.write` with each batch, in order.
2. At a checkpoint (and at the end of a bounded run) the runtime calls
   :meth:`SinkWriter.prepare_commit`: the writer flushes and *stages* what it wrote since
   the last call (hidden files, an open transaction's rows) and returns a JSON-able
   description of the staged output. Nothing staged is visible to readers.
3. The coordinator records every writer's staged output in the checkpoint manifest, and only
   after the manifest is durable calls :meth:`Sink.commit` with it. ``commit`` must be
   idempotent: after a crash it is re-run from the manifest on restore.

At the start of a fresh run (not a restore) the coordinator calls :meth:`Sink.begin` once;
on restore it calls :meth:`Sink.recover` with the restored checkpoint id so that output
staged after that checkpoint is discarded.

Rollback. A restore from checkpoint ``k`` may find newer checkpoints that were committed and
then damaged (or a ``restore=<k>`` that goes back on purpose): their output is already
visible. Before such a run goes on, the coordinator calls :meth:`Sink.rollback` with ``k``
and the sink removes what it committed for later checkpoints (file sinks by the checkpoint
in their part names, ``write_database`` by the epoch column of its rows), so the replay
writes it once. A durable sink that cannot roll back keeps the default, which returns
``None``: the restore is then refused when there is something to roll back.

Every call gets the job's identity first (:meth:`Sink.attach`): which output is this job's
(another job may append to the same folder or table), and which checkpoint comes next.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any

import polars as pl


@dataclass(frozen=True)
class JobIdentity:
    """Who writes: given to each sink by :meth:`Sink.attach` before every run attempt.

    ``tag``: a short hex name of the job's checkpoint directory (the same for every run on
    it), or random per run without one; output marked with it is this job's to roll back.
    ``first_checkpoint``: no checkpoint of this attempt has a smaller id (ids are never
    reused), so output named after ``first_checkpoint`` or later cannot be older output.
    ``checkpointed``: whether checkpoints are kept, so that a rollback can happen at all;
    ``keep``: how many complete checkpoints retention keeps (a restore goes back no further).
    """

    tag: str
    first_checkpoint: int
    checkpointed: bool
    keep: int = 3


@dataclass
class RolledBack:
    """What one sink removed in a rollback to ``checkpoint``.

    ``count`` items (``what``: "part files", "rows") committed by the checkpoints ``epochs``.
    """

    sink: str
    checkpoint: int
    what: str
    count: int
    epochs: list[int]

    def __str__(self) -> str:
        """One line for the run's warnings and summary."""
        epochs = ", ".join(str(e) for e in self.epochs)
        return (
            f"{self.sink}: removed {self.count:,} {self.what} committed by checkpoint(s) {epochs}, "
            f"after checkpoint {self.checkpoint}"
        )


class SinkWriter(abc.ABC):
    """Writes one worker's share of a sink's output. Used by one thread only."""

    @abc.abstractmethod
    def write(self, batch: pl.DataFrame) -> None:
        """Buffer or stage ``batch``. Never makes anything visible to readers."""

    @abc.abstractmethod
    def prepare_commit(self, checkpoint_id: int) -> Any:
        """Flush and stage everything written since the last call.

        Returns its JSON-able description (``None`` when nothing was written). Called once per
        checkpoint.
        """

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources. Called once, also after an error; staged output is kept."""


class Sink(abc.ABC):
    """A description of where a stream's rows go. Picklable; holds no open resources."""

    kind: str = "sink"
    #: False for sinks that keep rows in this process (collect, results): their staged
    #: output is not written into checkpoint manifests (a restore cannot bring it back).
    durable: bool = True
    #: True for sinks the runtime adds that are not part of the flow (live-results taps): left
    #: out of operator fingerprints and of the run's metrics.
    transient: bool = False
    #: Set by :meth:`attach`; None until the runtime gives the sink a job.
    job: JobIdentity | None = None

    def validate(self, schema: pl.Schema, operator_id: str) -> None:  # noqa: B027 - optional hook
        """Called at plan time with the incoming schema; raise a SchemaError to refuse it."""

    def begin(self) -> None:  # noqa: B027 - optional hook
        """Called once in the coordinator before a fresh (not restored) run starts."""

    def recover(self, checkpoint_id: int) -> None:  # noqa: B027 - optional hook
        """Called once in the coordinator before a run restored from ``checkpoint_id``."""

    def discard_staged(self) -> None:  # noqa: B027 - optional hook
        """Called once in the coordinator when a run failed for good (no restart follows).

        It comes after the newest complete checkpoint's ``commit`` was re-run: what is still
        staged belongs to no complete checkpoint, so a sink that stages outside its visible
        output removes it here. Not called after a crash of the coordinator (``recover``
        cleans up then).
        """

    def attach(self, job: JobIdentity) -> None:
        """Called in the coordinator before ``begin``/``recover``/``rollback`` of every attempt.

        Every run attempt calls it, and so before the sink is shipped to the workers.
        """
        self.job = job

    def rollback(self, checkpoint_id: int) -> RolledBack | None:
        """Remove the output this job committed for checkpoints after ``checkpoint_id``.

        Called in the coordinator after ``recover``, when the run restores ``checkpoint_id``
        (and after ``begin`` with the checkpoint before the run's first when a restart starts
        over). Must be idempotent and must never touch output of other jobs. Returns what
        was removed. A sink that cannot roll back does not override this method: a restore
        that needs a rollback (later checkpoints have manifests) is then refused before any
        sink changes anything. May raise a SinkError saying why a rollback is impossible.
        """
        return None

    def returned_rows(self) -> list[pl.DataFrame] | None:
        """Return the rows the run hands back for this sink in ``RunResult.outputs``.

        What ``stream.collect()`` returns. None (the default): the output stays where the
        sink wrote it. Called once in the coordinator after each attempt that ran to its end;
        must not write or commit anything.
        """
        return None

    def leases(self) -> list[tuple[str, dict[str, Any] | None]]:
        """Locations (fsspec URL, storage options) only one job at a time may write to.

        The runtime holds a lease on each for the whole run, and refuses a second job.
        """
        return []

    @abc.abstractmethod
    def open_writer(self, worker: int, parallelism: int, operator_id: str) -> SinkWriter:
        """Called in each worker when the run starts."""

    @abc.abstractmethod
    def commit(self, checkpoint_id: int, staged: list[Any]) -> None:
        """Make the staged output of every writer visible. Idempotent. Coordinator only."""

    def describe(self) -> str:
        """A short description of the sink for messages (its ``kind`` by default)."""
        return self.kind
