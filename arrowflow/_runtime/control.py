"""The control link as messages over a channel, both ends: what the pool's pipes carry, and
what any runner whose workers live elsewhere (a Ray runner's queues) can carry the same way.

A channel is anything with ``send(message)``, ``recv()`` and ``poll(timeout)`` that keeps
order (a ``multiprocessing`` pipe end). Messages are tuples, their first item the kind.

Worker → coordinator (:class:`ChannelLink` sends them, :class:`ControlServer` serves them):

=================================================  ==========================================
``("next_split", source_id)``                      answered ``("split", handed)``
``("split_done", source_id, split_id)``            a split read to its end
``("rows", count)``                                rows read since the last report
``("finished",)``                                  every operator reached its input's end
``("metrics", rows)``                              the operators' counters (live views)
``("publish", sink_id, epoch, payload, produced)``  rows a live-results tap saw
``("ack", checkpoint_id, payload)``                checkpoint taken: positions, files, staged
``("report", report)``                             the last message of a worker that ended
``("error", traceback_text, summary)``             the last message of a worker that raised
=================================================  ==========================================

Coordinator → worker: ``("checkpoint", id)``, ``("exit",)``, and the ``("split", ...)``
answers. A worker that dies sends nothing: the runner must watch for it otherwise (the
pool waits on each process's sentinel).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from arrowflow.errors import WorkerError
from arrowflow.runners import Coordinator
from arrowflow.sources import Split


class Channel(Protocol):
    """One end of an ordered, two-way message channel."""

    def send(self, obj: Any) -> None: ...

    def recv(self) -> Any: ...

    def poll(self, timeout: float | None = 0.0) -> bool: ...


class ChannelLink:
    """The worker's end of the control link over a channel (:class:`arrowflow.runners.ControlLink`).
    Commands that arrive while the worker waits for a split are kept, in order, for
    ``poll_command``."""

    def __init__(self, conn: Channel) -> None:
        self.conn = conn
        self.commands: list[tuple[Any, ...]] = []

    def next_split(self, source_id: str) -> tuple[Split, Any, dict[str, Any]] | str | None:
        self.conn.send(("next_split", source_id))
        while True:
            message = self.conn.recv()
            if message[0] == "split":
                return message[1]
            self.commands.append(message)

    def split_done(self, source_id: str, split_id: str) -> None:
        self.conn.send(("split_done", source_id, split_id))

    def rows(self, count: int) -> None:
        self.conn.send(("rows", count))

    def finished(self) -> None:
        self.conn.send(("finished",))

    def metrics(self, rows: list[dict[str, Any]]) -> None:
        self.conn.send(("metrics", rows))

    def publish(self, sink_id: str, epoch: int | None, payload: bytes, produced: int) -> None:
        self.conn.send(("publish", sink_id, epoch, payload, produced))

    def ack(self, checkpoint_id: int, payload: dict[str, Any]) -> None:
        self.conn.send(("ack", checkpoint_id, payload))

    def poll_command(self, timeout: float) -> tuple[Any, ...] | None:
        if self.commands:
            return self.commands.pop(0)
        if self.conn.poll(timeout):
            return self.conn.recv()
        return None


class ControlServer:
    """The coordinator's end of every worker's control link: serves one message at a time.

    Parameters
    ----------
    coordinator
        The attempt's coordinator; each message becomes one call of it.
    """

    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator
        #: Worker index -> its final report, once it sent it.
        self.reports: dict[int, Any] = {}

    def serve(self, worker: int, message: tuple[Any, ...], reply: Callable[[Any], None]) -> bool:
        """Handle ``message`` from ``worker``; ``reply`` sends the answer back to it. True when
        the message completed the final checkpoint. Raises WorkerError on an ``error``."""
        job = self.coordinator
        kind = message[0]
        if kind == "next_split":
            reply(("split", job.hand_out(message[1], worker)))
        elif kind == "split_done":
            job.split_done(message[1], message[2], worker)
        elif kind == "rows":
            job.rows(message[1])
        elif kind == "finished":
            job.finished(worker)
        elif kind == "metrics":
            job.worker_metrics(worker, message[1])
        elif kind == "publish":
            job.publish(message[1], worker, message[2], message[3], message[4])
        elif kind == "ack":
            return job.ack(worker, message[1], message[2])
        elif kind == "report":
            self.reports[worker] = message[1]
        elif kind == "error":
            text, summary = message[1], message[2]
            msg = f"worker {worker} failed: {summary}\n\n--- worker {worker} traceback ---\n{text}"
            raise WorkerError(msg, worker=worker, traceback_text=text)
        return False
