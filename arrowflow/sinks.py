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
from collections.abc import Callable
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


#: What :meth:`SinkWriter.bind` is given: ``publish(epoch, payload, produced)`` sends Arrow IPC
#: ``payload`` (the rows, ``produced`` of them since the last call) to the coordinator, marked
#: with the checkpoint ``epoch`` they follow (None before the first).
Publish = Callable[[int | None, bytes, int], None]


class SinkWriter(abc.ABC):
    """Writes one worker's share of a sink's output.

    Built by :meth:`Sink.open_writer` in a worker process when the run attempt starts, and
    used by that worker's single thread only, until :meth:`close`. The exactly-once rule
    (checked for every built-in sink by :mod:`arrowflow.testing.sink_conformance`): nothing a
    writer does makes rows visible; only :meth:`Sink.commit`, in the coordinator, does.
    """

    @abc.abstractmethod
    def write(self, batch: pl.DataFrame) -> None:
        """Buffer or stage ``batch``.

        Called in the worker once per batch that reaches the sink, in order. Never makes
        anything visible to readers. ``batch`` may be a view of a shared-memory ring that is
        reused once this returns: copy what must outlive the call (``pl.concat``, writing it
        out), never keep the frame itself past the next checkpoint.
        """

    @abc.abstractmethod
    def prepare_commit(self, checkpoint_id: int) -> Any:
        """Flush and stage everything written since the last call.

        Called in the worker once per checkpoint (and at the end of a bounded run), when
        checkpoint ``checkpoint_id``'s barrier has reached the sink. Stages outside the
        visible output only (hidden files, a staging table); must be durable when it
        returns, because the coordinator may commit it after this worker is gone.

        Returns
        -------
        Any
            A JSON-able description of the staged output, recorded in the checkpoint's
            manifest and given to :meth:`Sink.commit` (``None`` when nothing was written).
        """

    def bind(self, publish: Publish) -> None:  # noqa: B027 - optional hook
        """Receive the function that sends rows to the coordinator while the run goes on.

        Called once, in the worker, right after :meth:`Sink.open_writer`, before the first
        batch. Only writers whose rows the user watches live (``flow.start(results=...)``)
        use it; the default ignores it. Must not call ``publish`` from here.
        """

    @property
    def satisfied(self) -> bool:
        """Whether the writer has everything it needs, so that the run may end now.

        Read by the worker loop once per turn, in the worker process (only for writers that
        override it), so it must be cheap and must never block. ``collect(limit=n)`` answers
        True once it holds ``n`` rows. The default is False: the run ends with its input.
        """
        return False

    def flush(self) -> None:  # noqa: B027 - optional hook
        """Send what :meth:`write` buffered for the coordinator through ``publish``.

        Called in the worker about twice a second (with the operators' metrics), on the
        worker's thread. Must not stage or commit anything (that is
        :meth:`prepare_commit`), must not block, and must never hold rows back across a
        checkpoint for the coordinator. The default does nothing.
        """

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release files and connections.

        Called once, in the worker, at the end of the run attempt, also after an error.
        Staged output is kept (a later commit or recovery decides about it).
        """


class Sink(abc.ABC):
    """A description of where a stream's rows go. Picklable; holds no open resources.

    Every method below except :meth:`open_writer` runs in the coordinator (the calling
    process); the sink is pickled to the workers after :meth:`attach`, so what the
    coordinator-side methods set on ``self`` before that travels with it.

    Attributes
    ----------
    kind : str
        Operator-id prefix and plan display name, e.g. ``"write_parquet"``.
    durable : bool
        False for sinks that keep rows in this process (collect, results): their staged
        output is not written into checkpoint manifests (a restore cannot bring it back).
    transient : bool
        True for sinks the runtime adds that are not part of the flow (live-results taps):
        left out of operator fingerprints and of the run's metrics.
    job : JobIdentity or None
        Set by :meth:`attach`; None until the runtime gives the sink a job.
    emit_every_s : float or None
        The sink's own emission interval in seconds (``write_database(emit_every=...)``):
        in a run without checkpoints it stages its rows for a commit only when this much
        time has passed since its last one (and at the end). None (default): at every
        commit the run makes (docs/checkpoints.md, "Emission").
    """

    kind: str = "sink"
    durable: bool = True
    transient: bool = False
    emit_every_s: float | None = None
    job: JobIdentity | None = None

    def validate(self, schema: pl.Schema, operator_id: str) -> None:  # noqa: B027 - optional hook
        """Check the incoming schema; raise a SchemaError to refuse it.

        Called at plan time, in the calling process, once per plan. No I/O: a flow is
        described, not run, until ``run``. May keep what it learns (the schema, the operator
        id) on ``self``.
        """

    def begin(self) -> None:  # noqa: B027 - optional hook
        """Prepare a fresh (not restored) run: apply the mode, clear staging left by older runs.

        Called once per run attempt, in the coordinator, after :meth:`attach`, before any
        worker starts.
        """

    def recover(self, checkpoint_id: int) -> None:  # noqa: B027 - optional hook
        """Prepare a run restored from ``checkpoint_id``.

        Called once per run attempt, in the coordinator, after :meth:`commit` of
        ``checkpoint_id`` was re-run from its manifest and before any worker starts: what is
        still staged belongs to no complete checkpoint and must be discarded, never committed.
        """

    def discard_staged(self) -> None:  # noqa: B027 - optional hook
        """Remove output that is staged and belongs to no complete checkpoint.

        Called once in the coordinator when a run failed for good (no restart follows), after
        the newest complete checkpoint's :meth:`commit` was re-run. Not called after a crash of
        the coordinator (:meth:`recover` cleans up then). Must never touch committed output.
        """

    def attach(self, job: JobIdentity) -> None:
        """Receive the job's identity.

        Called in the coordinator before ``begin``/``recover``/``rollback`` of every run
        attempt (and so before the sink is shipped to the workers). An override must call
        ``super().attach(job)`` or set ``self.job``.
        """
        self.job = job

    def rollback(self, checkpoint_id: int) -> RolledBack | None:
        """Remove the output this job committed for checkpoints after ``checkpoint_id``.

        Called in the coordinator after ``recover``, when the run restores ``checkpoint_id``
        (and after ``begin`` with the checkpoint before the run's first when a restart starts
        over). Must be idempotent and must never touch output of other jobs. A sink that
        cannot roll back does not override this method: a restore that needs a rollback
        (later checkpoints have manifests) is then refused before any sink changes anything.
        May raise a SinkError saying why a rollback is impossible.

        Returns
        -------
        RolledBack or None
            What was removed.
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

        Called once per run, in the coordinator, before anything else: the runtime holds a
        lease on each for the whole run, and refuses a second job. The default is none.
        """
        return []

    @abc.abstractmethod
    def open_writer(self, worker: int, parallelism: int, operator_id: str) -> SinkWriter:
        """A writer for worker ``worker`` of ``parallelism``.

        Called in each worker process, once per run attempt, when its operators are built.
        Should not connect or open files yet where that can wait for the first batch.
        """

    @abc.abstractmethod
    def commit(self, checkpoint_id: int, staged: list[Any]) -> None:
        """Make the staged output of every writer visible, atomically where the store allows.

        Called in the coordinator once checkpoint ``checkpoint_id``'s manifest is durable,
        and again from the manifest on a restore, so it must be idempotent: a second call
        with the same arguments leaves one copy. Must never make visible anything not listed
        in ``staged``.

        Parameters
        ----------
        checkpoint_id : int
            The checkpoint whose output this is.
        staged : list
            What every writer's :meth:`SinkWriter.prepare_commit` returned for it (``None``
            entries included), as read back from the manifest's JSON.
        """

    def describe(self) -> str:
        """One line for plan display and run summaries. No I/O."""
        return self.kind

    def process_local(self) -> str | None:
        """Why only this process can reach the sink's data, or None (the default).

        A sink over ``memory://`` files, say, lives in this process's memory: worker
        processes would see an empty file system. A run picks ``workers=0`` for a flow with
        such a sink when its ``workers`` were left to the default, and refuses an explicit
        worker count before anything starts. Called at run time, in the calling process;
        no I/O.
        """
        return None
