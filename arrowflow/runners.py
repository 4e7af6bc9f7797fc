"""The runner interface: where a job's workers run, and how they talk.

A run is one coordinator, in the calling process (it hands out splits, triggers checkpoints,
writes manifests and commits), and ``parallelism`` workers, each one instance of every
operator of the plan (:mod:`arrowflow._runtime.worker`). A :class:`Runner` puts the workers
somewhere and carries their traffic; the runtime picks it by name from the plug-in registry
(group ``runner``: ``inprocess``, ``pool``, or one a package registers) with
``RunOptions.runner``. Three kinds of traffic, each with its own interface here:

- **The control link**, coordinator ↔ each worker. The worker holds a :class:`ControlLink`;
  each call becomes a call of the :class:`Coordinator` (split requests, finished splits,
  progress, checkpoint acks, metrics, live rows). The coordinator's commands go the other way
  (``("checkpoint", id)``, ``("exit",)``) and the worker polls them. Over a channel the calls
  are the messages of :mod:`arrowflow._runtime.control`, which any runner can reuse.
- **The transport**, worker ↔ worker: batches of an exchange (hash-partitioned rows) and the
  in-band markers that must stay in order with them — the end of a sender's stream,
  checkpoint barriers and watermarks. A :class:`Transport` is one worker's end of it. The
  pool's is the shared-memory rings (:class:`arrowflow._runtime.shm.ShmTransport`);
  in-process there is only one worker and no transport.
- **Failure detection**: :meth:`Runner.coordinate` must notice a worker that raised or died
  (its traceback, its exit signal) and raise :class:`arrowflow.errors.WorkerError`; the
  runtime then restarts the run from its newest checkpoint or fails it
  (:mod:`arrowflow._runtime.restarts`).

Lifecycle, called by the runtime in the calling thread::

    runner = load("runner", options.runner_name)(options)   # once per run
    runner.parallelism                                       # once, before the first attempt
    reports = runner.run(spec, coordinator)                  # once per attempt (restarts too)
        # = launch(spec, coordinator); coordinate(coordinator); shutdown(graceful=True),
        #   and shutdown() whatever happened

A Ray runner is a third implementation, not a fork of the pool: ``launch`` starts
``parallelism`` actors, each running ``spec.build(...).run()`` with a :class:`ControlLink`
over a Ray queue (the same messages as the pool's pipe) and a second :class:`Transport` that
puts batches in the object store; ``coordinate`` serves the control messages as the pool's
does and watches the actors for death. See ``docs/runtime.md``.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar, Protocol

import polars as pl

from arrowflow.options import RunOptions
from arrowflow.sources import Split

__all__ = [
    "ControlLink",
    "Coordinator",
    "Receiver",
    "Runner",
    "Transport",
    "WorkerLoop",
    "WorkerSpec",
]


class ControlLink(Protocol):
    """A worker's end of the control link to the coordinator.

    Used by the worker's thread only. Each method but ``poll_command`` may block until its
    message is sent, never longer; ``next_split`` also waits for the answer.
    """

    def next_split(self, source_id: str) -> tuple[Split, Any, dict[str, Any]] | str | None:
        """Ask for the next split of ``source_id``; blocks until the coordinator answers.

        Returns the split, the position to resume it from and what a per-split watermark
        needs; ``"wait"`` when an unbounded source has nothing yet; ``None`` when the source
        has no more.
        """
        ...

    def split_done(self, source_id: str, split_id: str) -> None:
        """Say the worker read split ``split_id`` to its end. Once per split."""
        ...

    def rows(self, count: int) -> None:
        """Report ``count`` more rows read by the worker's sources (row triggers, progress)."""
        ...

    def poll_command(self, timeout: float) -> tuple[Any, ...] | None:
        """Return the coordinator's next command, waiting up to ``timeout`` seconds.

        ``("checkpoint", id)``, ``("exit",)`` or ``None``; commands keep their order.
        """
        ...

    def ack(self, checkpoint_id: int, payload: dict[str, Any]) -> None:
        """Say the worker took checkpoint ``checkpoint_id``.

        ``payload`` (JSON-able) holds its source positions, state files and the sinks' staged
        output.
        """
        ...

    def finished(self) -> None:
        """Say every operator of the worker reached the end of its input. Once."""
        ...

    def metrics(self, rows: list[dict[str, Any]]) -> None:
        """Send the operators' counters, about twice a second (live views)."""
        ...

    def publish(self, sink_id: str, epoch: int | None, payload: bytes, produced: int) -> None:
        """Send rows a live-results tap saw (Arrow IPC bytes), for ``job.results()``."""
        ...


class Coordinator(Protocol):
    """What a runner calls on the coordinator for each control message.

    Called from the thread that called :meth:`Runner.run`; ``worker`` is the index of the
    worker the message came from.
    """

    #: The run must end now (``job.stop()``, the final checkpoint completed): the runner tells
    #: every worker ``("exit",)``.
    exit_now: bool
    #: Ids of the checkpoints completed in this attempt, in order.
    completed: list[int]

    def hand_out(
        self, source_id: str, worker: int
    ) -> tuple[Split, Any, dict[str, Any]] | str | None:
        """Answer a worker's ``next_split``."""
        ...

    def split_done(self, source_id: str, split_id: str, worker: int) -> None:
        """Serve a worker's ``split_done``."""
        ...

    def rows(self, count: int) -> None:
        """Serve a worker's ``rows``."""
        ...

    def finished(self, worker: int) -> None:
        """Serve a worker's ``finished``."""
        ...

    def worker_metrics(self, worker: int, rows: list[dict[str, Any]]) -> None:
        """Serve a worker's ``metrics``."""
        ...

    def publish(
        self, sink_id: str, worker: int, epoch: int | None, payload: bytes, produced: int
    ) -> None:
        """Serve a worker's ``publish``."""
        ...

    def ack(self, worker: int, checkpoint_id: int, payload: dict[str, Any]) -> bool:
        """Record a worker's ack; True when it completed the final checkpoint (the run ends)."""
        ...

    def poll(self) -> int | None:
        """Return the id of a checkpoint to start now, or None.

        Called in every turn of the runner's loop; the runner sends ``("checkpoint", id)``
        to every worker.
        """
        ...


class Receiver(Protocol):
    """What a :class:`Transport` delivers arrived messages to: the worker."""

    def deliver(self, exchange_id: str, batch: pl.DataFrame | None, sender: int) -> None:
        """Take a batch of ``exchange_id`` from worker ``sender``; ``None``: it ended."""
        ...

    def deliver_barrier(self, exchange_id: str, sender: int, checkpoint_id: int) -> None:
        """Take barrier ``checkpoint_id`` of ``exchange_id`` from worker ``sender``."""
        ...

    def deliver_watermark(self, exchange_id: str, sender: int, value: int) -> None:
        """Take a watermark of ``exchange_id`` from worker ``sender``."""
        ...


class Transport(abc.ABC):
    """One worker's end of the channels to every other worker.

    Messages from one sender arrive in the order they were sent, per pair of workers, for
    every exchange together (barrier alignment and watermarks rely on that). A send may
    block while the target is full (backpressure), but must keep delivering this worker's
    own inputs meanwhile (``poll``), so two workers sending to each other never deadlock.
    A batch delivered must not reference the transport's memory once ``deliver`` returns
    to the transport: operators keep what they receive.
    """

    @abc.abstractmethod
    def send(self, target: int, exchange_id: str, batch: pl.DataFrame) -> None:
        """Send a batch of ``exchange_id`` to worker ``target``."""

    @abc.abstractmethod
    def send_end(self, target: int, exchange_id: str) -> None:
        """Say this worker sends nothing more on ``exchange_id`` to ``target``. Once per pair."""

    @abc.abstractmethod
    def send_barrier(self, target: int, exchange_id: str, checkpoint_id: int) -> None:
        """Send checkpoint barrier ``checkpoint_id``, after every batch sent before it."""

    @abc.abstractmethod
    def send_watermark(self, target: int, exchange_id: str, value: int) -> None:
        """Send this worker's watermark on ``exchange_id`` (microseconds, or a marker)."""

    @abc.abstractmethod
    def pause(self, sender: int) -> None:
        """Deliver nothing more from ``sender`` until :meth:`resume_all`.

        Called when ``sender`` delivered a barrier that its exchange is aligning.
        """

    @abc.abstractmethod
    def resume_all(self) -> None:
        """Deliver from every sender again (the barrier is aligned)."""

    @abc.abstractmethod
    def poll(self, worker: Receiver, limit: int = 8) -> bool:
        """Deliver what arrived, up to ``limit`` messages per sender; True when anything was.

        Called in every turn of the worker's loop, and from inside a blocked send.
        """

    @abc.abstractmethod
    def wait(self, timeout: float) -> None:
        """Wait a little (at most ``timeout`` seconds) for messages: nothing else to do."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release this end. Called once, when the worker ends, also after an error."""


class WorkerLoop(Receiver, Protocol):
    """A worker as a runner sees it: built by :meth:`WorkerSpec.build`, run once, closed."""

    def run(self) -> Any:
        """Drive the operators until the coordinator says ``exit``; return the report.

        The report's ``metrics`` is a list of per-operator counter rows.
        """
        ...

    def close(self) -> None:
        """Close the operators (stores, readers, writers). Called once, also after an error."""
        ...


class WorkerSpec(Protocol):
    """Everything a worker is built from, picklable.

    A runner ships it once to each worker, never per batch; ``cloudpickle.dumps(spec)``
    carries the user's functions by value when a fresh process could not import their
    module.
    """

    @property
    def flow_name(self) -> str:
        """The flow's name, for process names and temporary folders."""
        ...

    @property
    def parallelism(self) -> int:
        """Workers in the run; worker ``index`` owns its share of the key groups."""
        ...

    @property
    def exchanges(self) -> list[str]:
        """Ids of the plan's exchanges: the streams a :class:`Transport` carries (tags)."""
        ...

    def build(
        self, index: int, link: ControlLink, transport: Transport | None, local_dir: str
    ) -> WorkerLoop:
        """Build worker ``index``, talking through ``link`` and ``transport``.

        ``transport`` is None with one worker or no exchange; local files (state stores)
        go under ``local_dir``. Called once per worker, where the worker runs.
        """
        ...


class Runner(abc.ABC):
    """Runs the workers of a job: launch, control link, transport, failure detection, shutdown.

    Built once per run with its :class:`~arrowflow.options.RunOptions`, in the calling
    process; :meth:`run` is called once per attempt (a restart is a new attempt, with a
    new coordinator). Subclasses implement :meth:`launch`, :meth:`coordinate` and
    :meth:`shutdown`, and say how many workers they run (:attr:`parallelism`). Register one
    with ``arrowflow.registry.register("runner", "name", MyRunner)`` (or an entry point in
    the group ``arrowflow.runner``) and pick it with ``flow.run(runner="name")``.

    Parameters
    ----------
    options
        The run's options; ``workers`` says how many workers a runner that runs several
        should start.
    """

    #: The registry name, for messages.
    name: ClassVar[str] = "runner"

    def __init__(self, options: RunOptions) -> None:
        self.options = options

    @property
    @abc.abstractmethod
    def parallelism(self) -> int:
        """Workers of every attempt (key groups are split among them). Read once per run."""

    @property
    def processes(self) -> int:
        """Worker processes, as ``RunResult.workers`` reports them (0: the calling process)."""
        return self.parallelism

    @abc.abstractmethod
    def launch(self, spec: WorkerSpec, coordinator: Coordinator) -> None:
        """Start ``spec.parallelism`` workers of one attempt, and their links.

        Called once per attempt; may return before the workers run, and must not wait for
        them to finish.
        """

    @abc.abstractmethod
    def coordinate(self, coordinator: Coordinator) -> list[Any]:
        """Serve the control link until every worker sent its report; the reports, in order.

        Sends ``("checkpoint", id)`` to every worker when ``coordinator.poll()`` says so, and
        ``("exit",)`` when ``coordinator.exit_now``. Raises
        :class:`~arrowflow.errors.WorkerError` as soon as a worker raised (with its traceback
        text) or died (with its exit signal): failure detection never waits for the others.
        """

    @abc.abstractmethod
    def shutdown(self, *, graceful: bool = False) -> None:
        """Stop every worker still running and free what the attempt held.

        Processes, shared memory, temporary folders. Called at least once after
        :meth:`launch` — also when it failed, or raised half-way — and must be idempotent.
        ``graceful``: the workers reported and are closing their stores; give them a moment
        before stopping them.
        """

    def interrupted(self, coordinator: Coordinator) -> BaseException | None:
        """Return the error Ctrl-C during an attempt becomes, after :meth:`shutdown`.

        None (the default): the ``KeyboardInterrupt`` itself.
        """
        return None

    def run(self, spec: WorkerSpec, coordinator: Coordinator) -> list[Any]:
        """One attempt: launch, coordinate, shut down (whatever happens); the reports."""
        try:
            self.launch(spec, coordinator)
            reports = self.coordinate(coordinator)
            self.shutdown(graceful=True)
        except KeyboardInterrupt:
            self.shutdown()
            cancelled = self.interrupted(coordinator)
            if cancelled is None:
                raise
            raise cancelled from None
        finally:
            self.shutdown()
        return reports
