"""The control link over a message channel: the worker's end of a ``multiprocessing`` pipe."""

from __future__ import annotations

from multiprocessing.connection import Connection
from typing import Any

from arrowflow.sources import Split


class _PipeLink:
    """The worker's side of the control pipe. Commands that arrive while the worker waits for
    a split are kept, in order, for ``poll_command``."""

    def __init__(self, conn: Connection) -> None:
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
