"""Shared-memory channels: single-producer single-consumer rings carrying Arrow IPC messages.

Layout of one ring (a ``multiprocessing.shared_memory`` segment)::

    [0:8)     write position  (bytes ever written; only the producer stores it)
    [64:72)   read position   (bytes ever consumed; only the consumer stores it)
    [96:104)  capacity        (set by the creator: the mapping may be larger, page-rounded)
    [128:...) data region of ``capacity`` bytes

Positions only grow; ``position % capacity`` is the offset in the data region. A message is
a 16-byte header ``(total length, kind, tag)`` then its payload, padded to 8 bytes, and is
always contiguous: when it does not fit before the end of the region, the producer writes a
``WRAP`` header (or leaves fewer than 16 bytes, which the consumer skips) and starts again at
offset 0. The producer writes the payload first and publishes it by storing the new write
position; on x86-64 (total store order) the consumer that sees the position sees the payload.

Payloads are Arrow IPC streams written straight into the ring (sized first with a mock
stream, so there is no intermediate buffer). The consumer copies a payload out of the ring
(one ``memcpy``, about 4 ms per 16 MiB here), releases its space at once and reads the batch
zero-copy from that private copy. It must never hand on a batch that references ring memory:
operators keep what they receive (a window's late rows, a sink writer's buffer until its
flush), polars frames derived from a batch (``filter``, ``slice``, ``with_columns``) keep
pointing into its string buffers, and the producer reuses released space for the next
messages. A frame over released ring space reads whatever was written there next: wrong
values, or a crash when the bytes no longer parse (the cause of the SIGSEGVs and NDJSON
writer panics seen with two workers; ``tests/arrowflow/runtime/test_channels.py`` holds
received frames across many wrap-arounds and checks them against the sender's checksums).

A full ring is backpressure: ``try_write`` returns False and the sender does other work
(drains its own inputs) before trying again. A batch larger than half a ring is split into
row slices that fit.

:class:`ShmTransport` is a worker's end of its rings: the pool runner's
:class:`arrowflow.runners.Transport`.
"""

from __future__ import annotations

import gc
import os
import struct
import time
from collections.abc import Callable
from multiprocessing import shared_memory
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from arrowflow.runners import Receiver, Transport

HEADER = 128
MSG_HEADER = 16
DATA, END, WRAP, BARRIER, WATERMARK = 1, 2, 3, 4, 5  # message kinds
_ID = struct.Struct("q")
# Message headers are written before they are published, so struct is fine for them. The two
# positions are read while the other process stores them, so they go through a numpy view:
# one aligned 8-byte load or store. (struct.pack_into first zeroes its target, which a
# concurrent reader can observe: a torn position.)
_HDR = struct.Struct("QII")
_WRITE, _READ, _CAPACITY = 0, 8, 12  # uint64 indexes of the header fields
#: Bytes per ring; ARROWFLOW_RING_BYTES overrides it (tests use small rings to force wrapping,
#: backpressure and batch splitting).
DEFAULT_CAPACITY = int(os.environ.get("ARROWFLOW_RING_BYTES", 32 << 20))


def _align(n: int) -> int:
    return (n + 7) & ~7


class Ring:
    """One SPSC ring in shared memory; the creator owns (and unlinks) the segment."""

    def __init__(
        self, name: str, capacity: int = DEFAULT_CAPACITY, *, create: bool = False
    ) -> None:
        if create:
            capacity -= capacity % 8
            self.shm = shared_memory.SharedMemory(name=name, create=True, size=HEADER + capacity)
        else:
            self.shm = shared_memory.SharedMemory(name=name)
        self.name = name
        buf = self.shm.buf
        assert buf is not None  # None only once the segment is closed
        self.buf: memoryview = buf
        if create:
            self.buf[:HEADER] = bytes(HEADER)
        self.fields = np.ndarray((HEADER // 8,), dtype=np.uint64, buffer=self.buf)
        if create:
            self.fields[_CAPACITY] = capacity
        self.capacity = int(self.fields[_CAPACITY])
        self.pending_release = 0

    # ------------------------------------------------------------------ positions
    def _write_pos(self) -> int:
        return int(self.fields[_WRITE])

    def _read_pos(self) -> int:
        return int(self.fields[_READ])

    def used(self) -> int:
        return self._write_pos() - self._read_pos()

    # ------------------------------------------------------------------ producer
    def try_write(
        self, kind: int, tag: int, size: int, fill: Callable[[memoryview], None] | None
    ) -> bool:
        """Write one message of ``size`` payload bytes (``fill`` writes them) if it fits now."""
        total = _align(MSG_HEADER + size)
        if total > self.capacity:
            msg = f"message of {total} bytes does not fit a ring of {self.capacity} bytes"
            raise ValueError(msg)
        write, read = self._write_pos(), self._read_pos()
        free = self.capacity - (write - read)
        offset = write % self.capacity
        tail = self.capacity - offset
        if tail < total:
            if free < tail + total:
                return False
            if tail >= MSG_HEADER:
                _HDR.pack_into(self.buf, HEADER + offset, tail, WRAP, 0)
            write += tail
            offset = 0
        elif free < total:
            return False
        start = HEADER + offset
        if fill is not None and size:
            fill(self.buf[start + MSG_HEADER : start + MSG_HEADER + size])
        _HDR.pack_into(self.buf, start, total, kind, tag)
        self.fields[_WRITE] = write + total  # publish
        return True

    # ------------------------------------------------------------------ consumer
    def read(self) -> tuple[int, int, memoryview] | None:
        """The next message (kind, tag, payload view) or None. Call ``release`` after use."""
        if self.pending_release:
            msg = "release() the previous message before reading the next"
            raise RuntimeError(msg)
        while True:
            read, write = self._read_pos(), self._write_pos()
            if read == write:
                return None
            offset = read % self.capacity
            tail = self.capacity - offset
            if tail < MSG_HEADER:
                self.fields[_READ] = read + tail
                continue
            total, kind, tag = _HDR.unpack_from(self.buf, HEADER + offset)
            if kind == WRAP:
                self.fields[_READ] = read + tail
                continue
            self.pending_release = total
            start = HEADER + offset + MSG_HEADER
            return kind, tag, self.buf[start : HEADER + offset + total]

    def release(self) -> None:
        """Free the space of the message returned by the last ``read``."""
        if self.pending_release:
            self.fields[_READ] = self._read_pos() + self.pending_release
            self.pending_release = 0

    def close(self) -> None:
        self.fields = None
        self.buf = None  # type: ignore[assignment]
        try:
            self.shm.close()
        except BufferError:
            gc.collect()  # Arrow buffers over the ring may sit in unreachable cycles
            try:
                self.shm.close()
            except BufferError:
                # A batch still references the ring; the mapping goes away with the process.
                self.shm.close = lambda: None  # type: ignore[method-assign]

    def unlink(self) -> None:
        try:
            self.shm.unlink()
        except FileNotFoundError:
            pass


def ipc_size(table: pa.Table) -> int:
    sink = pa.MockOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.size()


def ipc_fill(table: pa.Table) -> Callable[[memoryview], None]:
    def fill(view: memoryview) -> None:
        out = pa.FixedSizeBufferWriter(pa.py_buffer(view))
        with pa.ipc.new_stream(out, table.schema) as writer:
            writer.write_table(table)

    return fill


def ipc_read(payload: bytes | memoryview) -> pa.Table:
    """Zero-copy: the table's buffers point into ``payload`` (so never pass a ring's view)."""
    return pa.ipc.open_stream(pa.py_buffer(payload)).read_all()


def _without_views(table: pa.Table) -> pa.Table:
    """Cast string/binary views to offset-based types, whose IPC slices carry only their rows."""
    fields = []
    changed = False
    for field in table.schema:
        if pa.types.is_string_view(field.type):
            fields.append(field.with_type(pa.large_string()))
            changed = True
        elif pa.types.is_binary_view(field.type):
            fields.append(field.with_type(pa.large_binary()))
            changed = True
        else:
            fields.append(field)
    return table.cast(pa.schema(fields)) if changed else table


def write_barrier(ring: Ring, tag: int, checkpoint_id: int, wait: Callable[[], Any]) -> None:
    def fill(view: memoryview) -> None:
        _ID.pack_into(view, 0, checkpoint_id)

    while not ring.try_write(BARRIER, tag, _ID.size, fill):
        wait()


def write_watermark(ring: Ring, tag: int, value: int, wait: Callable[[], Any]) -> None:
    def fill(view: memoryview) -> None:
        _ID.pack_into(view, 0, value)

    while not ring.try_write(WATERMARK, tag, _ID.size, fill):
        wait()


def read_id(view: memoryview) -> int:
    return _ID.unpack_from(view, 0)[0]


def write_table(ring: Ring, tag: int, table: pa.Table, wait: Callable[[], Any]) -> None:
    """Send ``table`` on ``ring``, splitting it when it is larger than half the ring."""
    size = ipc_size(table)
    limit = ring.capacity // 2
    if size > limit and table.num_rows > 1:
        table = _without_views(table)  # slices of view arrays would still carry every data buffer
        size = ipc_size(table)
        pieces = -(-size // (limit // 2))
        step = max(1, -(-table.num_rows // pieces))
        for start in range(0, table.num_rows, step):
            write_table(ring, tag, table.slice(start, step), wait)
        return
    fill = ipc_fill(table)
    while not ring.try_write(DATA, tag, size, fill):
        wait()


class ShmTransport(Transport):
    """A worker's end of the rings (:class:`arrowflow.runners.Transport`): sends to every other
    worker, polls what they sent. One ring per ordered pair of workers carries every exchange
    (a message's tag names its exchange), so batches, ENDs, barriers and watermarks from one
    sender stay in order."""

    def __init__(
        self,
        worker: int,
        parallelism: int,
        ring_names: dict[tuple[int, int], str],
        exchanges: list[str],
    ) -> None:
        self.worker = worker
        self.out = {t: Ring(name) for (s, t), name in ring_names.items() if s == worker}
        self.inbound = {s: Ring(name) for (s, t), name in ring_names.items() if t == worker}
        self.tags = {exchange: index for index, exchange in enumerate(exchanges)}
        self.exchanges = exchanges
        self.owner: Receiver | None = None
        self.depth = 0
        self.backoff = 0.0
        self.paused: set[int] = set()
        self.delivering: set[int] = set()  # senders whose message is being delivered
        self.parent = os.getppid()

    # ------------------------------------------------------------------ sending
    def send(self, target: int, exchange_id: str, batch: pl.DataFrame) -> None:
        table = batch.to_arrow(compat_level=pl.CompatLevel.newest())
        write_table(self.out[target], self.tags[exchange_id], table, self._blocked)

    def send_barrier(self, target: int, exchange_id: str, checkpoint_id: int) -> None:
        write_barrier(self.out[target], self.tags[exchange_id], checkpoint_id, self._blocked)

    def send_watermark(self, target: int, exchange_id: str, value: int) -> None:
        write_watermark(self.out[target], self.tags[exchange_id], value, self._blocked)

    def pause(self, sender: int) -> None:
        """Stop reading ``sender``'s ring: it delivered a barrier its exchange is aligning."""
        self.paused.add(sender)

    def resume_all(self) -> None:
        self.paused.clear()

    def send_end(self, target: int, exchange_id: str) -> None:
        while not self.out[target].try_write(END, self.tags[exchange_id], 0, None):
            self._blocked()

    def _blocked(self) -> None:
        """The target's ring is full: deliver our own inputs meanwhile (no deadlock), then back off."""
        if self.owner is not None and self.depth < 8 and self.poll(self.owner):
            return
        if os.getppid() != self.parent:
            # The coordinator is gone (killed): nobody will ever drain this ring.
            os._exit(3)
        time.sleep(0.0002)

    # ------------------------------------------------------------------ receiving
    def poll(self, worker: Receiver, limit: int = 8) -> bool:
        self.owner = worker
        progressed = False
        self.depth += 1
        try:
            for sender, ring in self.inbound.items():
                for _ in range(limit):
                    if sender in self.paused:
                        break
                    if sender in self.delivering:
                        break  # a nested poll is inside this ring's current message: keep its order
                    message = ring.read()
                    if message is None:
                        break
                    kind, tag, view = message
                    # Nothing that is delivered points into the ring: operators keep what they
                    # receive (late rows, a window's buffer, a sink writer's rows until its flush),
                    # and polars frames derived from a batch share its buffers. So a batch is
                    # copied out of the ring, once, and its space released before delivery.
                    try:
                        payload = bytes(view) if kind not in (END, BARRIER, WATERMARK) else None
                        value = read_id(view) if kind in (BARRIER, WATERMARK) else 0
                    finally:
                        del view
                        ring.release()
                    self.delivering.add(sender)
                    try:
                        if kind == END:
                            worker.deliver(self.exchanges[tag], None, sender)
                        elif kind == BARRIER:
                            worker.deliver_barrier(self.exchanges[tag], sender, value)
                        elif kind == WATERMARK:
                            worker.deliver_watermark(self.exchanges[tag], sender, value)
                        else:
                            assert payload is not None
                            batch = pl.DataFrame(pl.from_arrow(ipc_read(payload)))
                            del payload
                            worker.deliver(self.exchanges[tag], batch, sender)
                            del batch
                    finally:
                        self.delivering.discard(sender)
                    progressed = True
        finally:
            self.depth -= 1
        if progressed:
            self.backoff = 0.0
        return progressed

    def wait(self, timeout: float) -> None:
        self.backoff = min(max(self.backoff * 2, 0.00005), 0.002, timeout)
        time.sleep(self.backoff)

    def close(self) -> None:
        for ring in [*self.out.values(), *self.inbound.values()]:
            ring.close()
