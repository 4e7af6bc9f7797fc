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
"""

from __future__ import annotations

import abc
from typing import Any

import polars as pl


class SinkWriter(abc.ABC):
    """Writes one worker's share of a sink's output. Used by one thread only."""

    @abc.abstractmethod
    def write(self, batch: pl.DataFrame) -> None:
        """Buffer or stage ``batch``. Never makes anything visible to readers."""

    @abc.abstractmethod
    def prepare_commit(self, checkpoint_id: int) -> Any:
        """Flush and stage everything written since the last call; return its JSON-able
        description (``None`` when nothing was written). Called once per checkpoint."""

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

    def validate(self, schema: pl.Schema, operator_id: str) -> None:  # noqa: B027 - optional hook
        """Called at plan time with the incoming schema; raise a SchemaError to refuse it."""

    def begin(self) -> None:  # noqa: B027 - optional hook
        """Called once in the coordinator before a fresh (not restored) run starts."""

    def recover(self, checkpoint_id: int) -> None:  # noqa: B027 - optional hook
        """Called once in the coordinator before a run restored from ``checkpoint_id``."""

    def discard_staged(self) -> None:  # noqa: B027 - optional hook
        """Called once in the coordinator when a run failed for good (no restart follows), after
        the newest complete checkpoint's ``commit`` was re-run: what is still staged belongs to
        no complete checkpoint, so a sink that stages outside its visible output removes it here.
        Not called after a crash of the coordinator (``recover`` cleans up then)."""

    @abc.abstractmethod
    def open_writer(self, worker: int, parallelism: int, operator_id: str) -> SinkWriter:
        """Called in each worker when the run starts."""

    @abc.abstractmethod
    def commit(self, checkpoint_id: int, staged: list[Any]) -> None:
        """Make the staged output of every writer visible. Idempotent. Coordinator only."""

    def describe(self) -> str:
        return self.kind
