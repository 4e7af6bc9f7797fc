"""The shared-memory ring and the transport over it (``arrowflow/_runtime/shm.py``), in one
process, in seconds.

The expected bytes and positions come from the layout the module's docstring documents
(positions at bytes 0 and 64, the capacity at 96, the data region from 128; a message is a
16-byte header ``(total length, kind, tag)`` then its payload padded to 8 bytes, always
contiguous, a ``WRAP`` header or fewer than 16 skipped bytes at the end of the region), read
back here with ``struct`` from the segment's raw memory, not through the ring's own code.
The batches received are compared with the frames sent. The cross-process cases (a sender in
another process, frames kept across many wrap-arounds) are in ``test_channels.py``.
"""

from __future__ import annotations

import gc
import os
import secrets
import struct
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import polars as pl
import pyarrow as pa
import pytest
from polars.testing import assert_frame_equal

from arrowflow._runtime.shm import (
    BARRIER,
    DATA,
    END,
    WATERMARK,
    WRAP,
    Ring,
    ShmTransport,
    write_barrier,
    write_table,
    write_watermark,
)

HEADER_FMT = struct.Struct("<QII")  # total length, kind, tag
DATA_START = 128


def _name() -> str:
    return f"af-ring-{os.getpid()}-{secrets.token_hex(4)}"


@pytest.fixture
def make_ring() -> Iterator[Callable[..., Ring]]:
    made: list[Ring] = []

    def make(capacity: int, name: str | None = None) -> Ring:
        ring = Ring(name or _name(), capacity, create=True)
        made.append(ring)
        return ring

    yield make
    for ring in made:
        if ring.buf is not None:
            ring.close()
        ring.unlink()


def raw(ring: Ring) -> memoryview:
    return ring.shm.buf  # type: ignore[return-value]


def positions(ring: Ring) -> tuple[int, int]:
    """(write, read) as stored in the segment."""
    buf = raw(ring)
    return struct.unpack_from("<Q", buf, 0)[0], struct.unpack_from("<Q", buf, 64)[0]


def header_at(ring: Ring, offset: int) -> tuple[int, int, int]:
    return HEADER_FMT.unpack_from(raw(ring), DATA_START + offset)


def put(ring: Ring, payload: bytes, kind: int = DATA, tag: int = 0) -> bool:
    def fill(view: memoryview) -> None:
        view[:] = payload

    return ring.try_write(kind, tag, len(payload), fill)


def take(ring: Ring) -> tuple[int, int, bytes] | None:
    message = ring.read()
    if message is None:
        return None
    kind, tag, view = message
    data = bytes(view)
    del view
    ring.release()
    return kind, tag, data


def pad(n: int) -> int:
    return (n + 7) // 8 * 8


# ------------------------------------------------------------------------------ the ring


def test_a_message_is_laid_out_in_the_segment_as_documented(make_ring: Any) -> None:
    ring = make_ring(1001)  # rounded down to a multiple of 8
    assert ring.capacity == 1000
    assert struct.unpack_from("<Q", raw(ring), 96)[0] == 1000
    assert ring.shm.size >= DATA_START + 1000
    assert positions(ring) == (0, 0) and ring.used() == 0

    assert put(ring, b"abcdefghij", DATA, 7)
    assert positions(ring) == (32, 0)  # 16 + 10 bytes, padded to 32
    assert header_at(ring, 0) == (32, DATA, 7)
    assert bytes(raw(ring)[DATA_START + 16 : DATA_START + 26]) == b"abcdefghij"
    assert ring.used() == 32

    assert put(ring, b"xyz", END, 3)
    assert positions(ring) == (56, 0)  # 16 + 3 -> 24
    assert header_at(ring, 32) == (24, END, 3)

    attached = Ring(ring.name)  # the consumer's end: the capacity is read from the segment
    try:
        assert attached.capacity == 1000
        message = attached.read()
        assert message is not None
        kind, tag, view = message
        assert (kind, tag, len(view)) == (DATA, 7, 16)  # the payload with its padding
        assert bytes(view[:10]) == b"abcdefghij"
        del view
        assert positions(ring) == (56, 0)  # nothing is freed before release()
        attached.release()
        assert positions(ring) == (56, 32) and ring.used() == 24
        assert take(attached) == (END, 3, b"xyz" + bytes(5))
        assert positions(ring) == (56, 56) and ring.used() == 0
        assert attached.read() is None
    finally:
        attached.close()


def test_a_message_that_fills_the_free_space_exactly_fits(make_ring: Any) -> None:
    ring = make_ring(256)
    assert put(ring, bytes(240))  # 16 + 240 = the whole ring
    assert positions(ring) == (256, 0)
    assert not put(ring, b"")  # full: a header alone does not fit
    assert take(ring) == (DATA, 0, bytes(240))
    assert positions(ring) == (256, 256)

    for _ in range(3):
        assert put(ring, bytes(48))  # 64 bytes each
    assert ring.used() == 192
    assert not put(ring, bytes(49))  # 72 > the 64 bytes free
    assert put(ring, bytes(48))  # exactly the 64 bytes free
    assert ring.used() == 256
    assert not put(ring, b"")


def test_a_message_larger_than_the_ring_is_refused_with_an_error(make_ring: Any) -> None:
    ring = make_ring(256)
    with pytest.raises(ValueError, match="does not fit a ring of 256 bytes"):
        put(ring, bytes(241))  # 16 + 241 -> 264
    assert positions(ring) == (0, 0)
    assert put(ring, bytes(240))


def test_a_message_that_does_not_fit_before_the_end_wraps_after_a_wrap_header(
    make_ring: Any,
) -> None:
    ring = make_ring(256)
    assert put(ring, bytes(range(80)), DATA, 1)  # 96
    assert put(ring, bytes(range(80, 160)), DATA, 2)  # 96: ends at 192, 64 left before the end
    assert take(ring) == (DATA, 1, bytes(range(80)))  # frees 96: 160 free in all
    # 96 bytes do not fit the 64 at the end: a WRAP header there, the message at offset 0,
    # which needs the tail and the message free: 64 + 96 = 160, exactly what is free
    assert put(ring, b"C" * 80, DATA, 3)
    assert header_at(ring, 192) == (64, WRAP, 0)
    assert header_at(ring, 0) == (96, DATA, 3)
    assert positions(ring) == (192 + 64 + 96, 96)
    assert take(ring) == (DATA, 2, bytes(range(80, 160)))
    assert take(ring) == (DATA, 3, b"C" * 80)  # the WRAP header is skipped
    assert positions(ring) == (352, 352) and take(ring) is None


def test_a_wrap_needs_the_skipped_tail_free_as_well(make_ring: Any) -> None:
    ring = make_ring(256)
    assert put(ring, bytes(48))  # 64
    assert put(ring, bytes(112))  # 128: ends at 192
    take(ring)  # 128 free, 64 of them at the end
    # 96 bytes: more than the tail, and 64 + 96 = 160 > 128 free, though 96 alone would fit
    assert not put(ring, bytes(80))
    assert positions(ring) == (192, 64)
    take(ring)
    assert put(ring, bytes(80))
    assert positions(ring) == (352, 192)


@pytest.mark.parametrize(("first", "tail"), [(232, 8), (224, 16)])
def test_the_end_of_the_region_is_skipped_with_or_without_room_for_a_header(
    make_ring: Any, first: int, tail: int
) -> None:
    """A tail of fewer than 16 bytes holds no header (nothing is written there: the reader
    skips it by arithmetic); a tail of exactly 16 gets a WRAP header."""
    ring = make_ring(256)
    assert put(ring, bytes(first))
    end = DATA_START + 256 - tail
    assert bytes(raw(ring)[end : DATA_START + 256]) == bytes(tail)
    assert take(ring) == (DATA, 0, bytes(first))
    assert put(ring, b"next message", DATA, 9)
    if tail < 16:
        assert bytes(raw(ring)[end : DATA_START + 256]) == bytes(tail)
    else:
        assert header_at(ring, 256 - tail) == (tail, WRAP, 0)
    assert header_at(ring, 0) == (32, DATA, 9)
    assert positions(ring) == (256 + 32, 256 - tail)  # the reader skips the tail when it reads on
    assert take(ring) == (DATA, 9, b"next message" + bytes(4))
    assert take(ring) is None


def test_reading_needs_each_message_released_once(make_ring: Any) -> None:
    ring = make_ring(256)
    assert ring.read() is None
    ring.release()  # nothing read: nothing freed
    assert positions(ring) == (0, 0)
    put(ring, b"one")
    put(ring, b"two")
    first = ring.read()
    assert first is not None and bytes(first[2][:3]) == b"one"
    with pytest.raises(RuntimeError, match="release"):
        ring.read()
    del first
    ring.release()
    ring.release()  # a second release frees nothing more
    assert positions(ring) == (48, 24)
    assert take(ring) == (DATA, 0, b"two" + bytes(5))


def test_many_messages_of_random_sizes_arrive_in_order_through_every_wrap(
    make_ring: Any,
) -> None:
    """Writes refused only when the ring is full, over hundreds of wrap-arounds: every
    message arrives once, in order, with its bytes."""
    import numpy as np

    rng = np.random.default_rng(17)
    ring = make_ring(1024)
    sent: list[bytes] = []
    got: list[bytes] = []
    for number in range(3_000):
        payload = rng.integers(0, 256, int(rng.integers(0, 200)), dtype=np.uint8).tobytes()
        while not put(ring, payload, DATA, number % 7):
            message = take(ring)
            assert message is not None, "a write was refused by an empty ring"
            got.append(message[2])
        sent.append(payload)
    while (message := take(ring)) is not None:
        got.append(message[2])
    assert [g[: len(s)] for g, s in zip(got, sent, strict=True)] == sent
    assert all(len(g) == pad(len(s) + 16) - 16 for g, s in zip(got, sent, strict=True))
    write, read = positions(ring)
    assert write == read > 100 * 1024


def _mapped(name: str) -> int:
    """How many times this process maps the segment ``name``."""
    with open("/proc/self/maps") as maps:
        return sum(line.rstrip().endswith(f"/dev/shm/{name}") for line in maps)


def test_close_unmaps_the_segment_and_unlink_removes_it(make_ring: Any) -> None:
    ring = make_ring(256)
    assert _mapped(ring.name) == 1 and os.path.exists(f"/dev/shm/{ring.name}")
    ring.close()
    assert not _mapped(ring.name)
    ring.unlink()
    assert not os.path.exists(f"/dev/shm/{ring.name}")
    ring.unlink()  # a second unlink (a crashed worker's coordinator) is no error


def test_close_unmaps_a_segment_whose_buffers_only_a_garbage_cycle_still_holds(
    make_ring: Any,
) -> None:
    class Holder:
        pass

    ring = make_ring(256)
    holder = Holder()
    holder.me = holder  # type: ignore[attr-defined]
    holder.buffer = pa.py_buffer(ring.buf[DATA_START:])  # type: ignore[attr-defined]
    del holder
    gc.disable()
    try:
        ring.close()
    finally:
        gc.enable()
    assert not _mapped(ring.name)


def test_close_with_a_batch_still_over_the_ring_leaves_the_mapping_to_the_process(
    make_ring: Any,
) -> None:
    ring = make_ring(256)
    kept = pa.py_buffer(ring.buf[DATA_START:])
    ring.close()  # no error: the mapping goes with the process
    assert _mapped(ring.name) == 1
    ring.shm.close()  # and later closes (the segment's finalizer) do not raise either
    del kept


# ------------------------------------------------------------------------------ batches


class Recorder:
    """A worker's receiving side: logs every delivery in order."""

    def __init__(self) -> None:
        self.log: list[tuple[Any, ...]] = []
        self.frames: list[pl.DataFrame] = []

    def deliver(self, exchange_id: str, batch: pl.DataFrame | None, sender: int) -> None:
        if batch is None:
            self.log.append(("end", exchange_id, sender))
        else:
            self.log.append(("batch", exchange_id, sender, batch.height))
            self.frames.append(batch)

    def deliver_barrier(self, exchange_id: str, sender: int, checkpoint_id: int) -> None:
        self.log.append(("barrier", exchange_id, sender, checkpoint_id))

    def deliver_watermark(self, exchange_id: str, sender: int, value: int) -> None:
        self.log.append(("watermark", exchange_id, sender, value))


@pytest.fixture
def pair(make_ring: Any) -> Iterator[Callable[..., tuple[ShmTransport, ShmTransport]]]:
    """Two workers' transports over one ring each way."""
    transports: list[ShmTransport] = []

    def make(capacity: int = 1 << 20) -> tuple[ShmTransport, ShmTransport]:
        names = {(0, 1): make_ring(capacity).name, (1, 0): make_ring(capacity).name}
        exchanges = ["left", "right"]
        a = ShmTransport(0, 2, names, exchanges)
        b = ShmTransport(1, 2, names, exchanges)
        transports.extend((a, b))
        return a, b

    yield make
    for transport in transports:
        transport.close()


def frames(seed: int, rows: int) -> pl.DataFrame:
    import numpy as np

    rng = np.random.default_rng(seed)
    return pl.DataFrame(
        {
            "k": rng.integers(-(2**62), 2**62, rows),
            "s": [None if i % 11 == 0 else f"row {i} " + "x" * (i % 40) for i in range(rows)],
            "b": [bytes([i % 256]) * (i % 20) for i in range(rows)],
            "f": rng.normal(size=rows),
        },
        schema={"k": pl.Int64, "s": pl.String, "b": pl.Binary, "f": pl.Float64},
    )


def test_every_kind_of_message_arrives_as_itself_in_order(pair: Any) -> None:
    a, b = pair()
    sent = [frames(1, 50), frames(2, 1), frames(3, 0)]
    a.send(1, "left", sent[0])
    a.send_barrier(1, "left", 2**40 + 3)
    a.send_watermark(1, "right", -(2**62))
    a.send(1, "right", sent[1])
    a.send_watermark(1, "left", 1_700_000_000_000_000)
    a.send(1, "left", sent[2])
    a.send_end(1, "right")
    a.send_end(1, "left")
    b.send(0, "right", sent[1])  # the other direction is its own ring
    into_b, into_a = Recorder(), Recorder()
    while b.poll(into_b):
        pass
    assert into_b.log == [
        ("batch", "left", 0, 50),
        ("barrier", "left", 0, 2**40 + 3),
        ("watermark", "right", 0, -(2**62)),
        ("batch", "right", 0, 1),
        ("watermark", "left", 0, 1_700_000_000_000_000),
        ("batch", "left", 0, 0),
        ("end", "right", 0),
        ("end", "left", 0),
    ]
    for got, frame in zip(into_b.frames, sent, strict=True):
        assert_frame_equal(got, frame)
    assert a.poll(into_a) and into_a.log == [("batch", "right", 1, 1)]
    assert_frame_equal(into_a.frames[0], sent[1])
    assert not a.poll(into_a)


def _ipc_size(table: pa.Table) -> int:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().size


class Drain:
    """The reading end of one ring: ``drain`` (also the writer's ``wait``) takes what is
    there, noting each message's total length from its header in the segment."""

    def __init__(self, ring: Ring) -> None:
        self.ring = ring
        self.frames: list[pl.DataFrame] = []
        self.totals: list[int] = []
        self.tags: list[int] = []
        self.waits = 0

    def wait(self) -> None:
        self.waits += 1
        self.drain()

    def drain(self) -> None:
        while True:
            _, read = positions(self.ring)
            offset = read % self.ring.capacity
            message = take(self.ring)
            if message is None:
                return
            kind, tag, payload = message
            assert kind == DATA
            if self.ring.capacity - offset < 16 or header_at(self.ring, offset)[1] == WRAP:
                offset = 0
            self.totals.append(header_at(self.ring, offset)[0])
            self.tags.append(tag)
            self.frames.append(pl.DataFrame(pl.from_arrow(pa.ipc.open_stream(payload).read_all())))


def long_rows(rows: int) -> pa.Table:
    return pa.table(
        {
            "x": pa.array(range(rows), pa.int64()),
            "s": pa.array([f"{i:08d}" * 50 for i in range(rows)], pa.large_string()),
        }
    )


def test_a_batch_up_to_half_a_ring_is_one_message(make_ring: Any) -> None:
    table = long_rows(40)
    size = _ipc_size(table)
    ring = make_ring(2 * size)  # exactly half a ring
    drain = Drain(ring)
    write_table(ring, 5, table, drain.wait)
    drain.drain()
    assert drain.tags == [5] and drain.totals == [pad(16 + size)]
    assert drain.frames[0].to_arrow().equals(table)


@pytest.mark.parametrize("rows", [2, 3, 97, 1_000])
def test_a_batch_over_half_a_ring_is_cut_into_row_slices_of_a_quarter_ring(
    make_ring: Any, rows: int
) -> None:
    """The documented rule: a table of IPC size S over half a ring of capacity C is sent as
    slices of ceil(rows / ceil(S / (C // 4))) rows, in order, each within half the ring."""
    table = long_rows(rows)
    size = _ipc_size(table)
    capacity = pad(int(size * 1.9))  # S > C // 2
    ring = make_ring(capacity)
    drain = Drain(ring)
    write_table(ring, 1, table, drain.wait)
    drain.drain()
    step = -(-rows // -(-size // (capacity // 4)))
    assert [frame.height for frame in drain.frames] == [
        min(step, rows - start) for start in range(0, rows, step)
    ]
    assert all(total - 16 <= capacity // 2 for total in drain.totals)
    assert set(drain.tags) == {1}
    assert pl.concat(drain.frames).to_arrow().equals(table)


def test_a_single_row_over_half_a_ring_is_sent_whole(make_ring: Any) -> None:
    table = long_rows(1)
    size = _ipc_size(table)
    ring = make_ring(pad(int(size * 1.5)))
    drain = Drain(ring)
    write_table(ring, 0, table, drain.wait)
    drain.drain()
    assert drain.totals == [pad(16 + size)]
    assert drain.frames[0].to_arrow().equals(table)


def test_view_columns_are_cut_into_slices_that_carry_only_their_rows(make_ring: Any) -> None:
    """A slice of a string or binary view array still references every data buffer of the
    whole array, so its IPC message would be as large as the whole: such columns are cast
    to offset-based types before cutting (the other columns travel as they are)."""
    rows = 400
    frame = pl.DataFrame(
        {
            "s": [f"a long string value number {i:06d} " * 3 for i in range(rows)],
            "b": [f"bytes {i:06d} ".encode() * 4 for i in range(rows)],
            "n": list(range(rows)),
        },
        schema={"s": pl.String, "b": pl.Binary, "n": pl.Int32},
    )
    table = frame.to_arrow(compat_level=pl.CompatLevel.newest())
    assert pa.types.is_string_view(table.schema.field("s").type)
    assert pa.types.is_binary_view(table.schema.field("b").type)
    capacity = pad(_ipc_size(table))  # the whole table is over half of it
    ring = make_ring(capacity)
    drain = Drain(ring)
    write_table(ring, 0, table, drain.wait)
    drain.drain()
    assert len(drain.frames) > 2
    assert all(total - 16 <= capacity // 2 for total in drain.totals)
    assert_frame_equal(pl.concat(drain.frames), frame)


def test_a_full_ring_waits_for_the_reader_then_sends_the_rest(make_ring: Any) -> None:
    """Backpressure: a send that does not fit calls ``wait`` until the reader has made room,
    and then every slice arrives once, in order."""
    frame = frames(4, 3_000)
    ring = make_ring(64 << 10)
    drain = Drain(ring)
    write_table(ring, 0, frame.to_arrow(compat_level=pl.CompatLevel.newest()), drain.wait)
    drain.drain()
    assert drain.waits > 0
    assert_frame_equal(pl.concat(drain.frames), frame)


@pytest.mark.parametrize("kind", ["barrier", "watermark", "end"])
def test_a_control_message_into_a_full_ring_waits_for_the_reader(make_ring: Any, kind: str) -> None:
    """A barrier, a watermark or an END that does not fit calls ``wait`` (where a worker
    delivers its own inputs: two workers blocked on each other's full rings must not spin
    forever) until the reader has made room, then arrives once, after what filled the ring."""
    ring = make_ring(256)
    while put(ring, bytes(40)):
        pass
    while put(ring, b""):  # headers alone, until not one more byte is free
        pass
    assert ring.used() == 256
    waits = []
    got: list[tuple[int, int, bytes]] = []

    def wait() -> None:
        waits.append(1)
        if len(waits) == 3:  # the reader comes back after a while
            while (message := take(ring)) is not None:
                got.append(message)

    def send() -> None:
        if kind == "barrier":
            write_barrier(ring, 4, 2**40 + 1, wait)
        elif kind == "watermark":
            write_watermark(ring, 4, -(2**50), wait)
        else:
            transport = ShmTransport(0, 2, {(0, 1): ring.name}, ["a", "b", "c", "d", "x"])
            transport._blocked = wait  # type: ignore[method-assign]
            try:
                transport.send_end(1, "x")
            finally:
                transport.close()

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    sender.join(20)
    assert not sender.is_alive(), "the sender spun on a full ring without waiting"
    assert len(waits) >= 3
    while (message := take(ring)) is not None:
        got.append(message)
    assert [m[0] for m in got[:-1]] == [DATA] * (len(got) - 1)
    last = got[-1]
    if kind == "end":
        assert last == (END, 4, b"")
    else:
        value = 2**40 + 1 if kind == "barrier" else -(2**50)
        assert last[:2] == (BARRIER if kind == "barrier" else WATERMARK, 4)
        assert struct.unpack("<q", last[2]) == (value,)


# ------------------------------------------------------------------------------ the transport


@pytest.fixture
def two_senders(make_ring: Any) -> Iterator[tuple[list[ShmTransport], ShmTransport]]:
    """Workers 0 and 1 sending to worker 2, one ring each."""
    names = {(s, 2): make_ring(1 << 20).name for s in (0, 1)}
    senders = [ShmTransport(s, 3, names, ["x"]) for s in (0, 1)]
    receiver = ShmTransport(2, 3, names, ["x"])
    yield senders, receiver
    for transport in (*senders, receiver):
        transport.close()


def test_a_poll_takes_at_most_limit_messages_from_each_sender(two_senders: Any) -> None:
    senders, receiver = two_senders
    for number in range(20):
        senders[0].send_watermark(2, "x", number)
    for number in range(3):
        senders[1].send_watermark(2, "x", 100 + number)
    into = Recorder()
    assert receiver.poll(into)  # the default limit: 8 from each
    assert into.log == [("watermark", "x", 0, v) for v in range(8)] + [
        ("watermark", "x", 1, 100 + v) for v in range(3)
    ]
    assert receiver.poll(into, limit=5)
    assert [entry[3] for entry in into.log[11:]] == [8, 9, 10, 11, 12]
    while receiver.poll(into):
        pass
    assert [entry[3] for entry in into.log if entry[2] == 0] == list(range(20))
    assert not receiver.poll(into)


def test_a_paused_sender_is_not_read_until_resumed(two_senders: Any) -> None:
    senders, receiver = two_senders
    for number in range(3):
        senders[0].send_watermark(2, "x", number)
        senders[1].send_watermark(2, "x", 10 + number)
    into = Recorder()
    receiver.pause(0)
    while receiver.poll(into):
        pass
    assert into.log == [("watermark", "x", 1, 10 + v) for v in range(3)]
    receiver.resume_all()
    assert receiver.poll(into)
    assert into.log[3:] == [("watermark", "x", 0, v) for v in range(3)]


def test_a_nested_poll_keeps_each_senders_order_and_stops_eight_deep(make_ring: Any) -> None:
    """A delivery may block on a full ring and poll again (``_blocked``): that nested poll
    must not deliver the next message of a sender whose message is being delivered (its
    order), may deliver other senders', and nests at most 8 deep."""
    senders = range(10)
    names = {(s, 10): make_ring(1 << 16).name for s in senders}
    transports = [ShmTransport(s, 11, names, ["x"]) for s in senders]
    receiver = ShmTransport(10, 11, names, ["x"])
    log: list[tuple[int, int, int]] = []

    class Nesting(Recorder):
        def deliver_watermark(self, exchange_id: str, sender: int, value: int) -> None:
            log.append((sender, value, receiver.depth))
            receiver._blocked()  # as a send to a full ring does

    try:
        for sender in senders:
            for value in range(2):
                transports[sender].send_watermark(10, "x", value)
        receiver.poll(Nesting())
        depths = [depth for _, _, depth in log]
        assert max(depths) == 8
        assert receiver.depth == 0
        # each sender's two messages arrive in order, the first before the second
        for sender in senders:
            assert [value for s, value, _ in log if s == sender] == [0, 1]
        # the first nested chain goes one sender deeper per level, never back to one in delivery
        assert log[:8] == [(sender, 0, sender + 1) for sender in range(8)]
    finally:
        for transport in (*transports, receiver):
            transport.close()


def test_a_blocked_sender_keeps_delivering_its_own_inputs(pair: Any) -> None:
    """Two workers sending to each other through full rings do not deadlock: while worker 0
    waits for room towards worker 1, it delivers what worker 1 sent it."""
    a, b = pair(capacity=16 << 10)
    into_a, into_b = Recorder(), Recorder()
    a.poll(into_a)  # a transport learns its receiver at its first poll
    big = frames(5, 2_000)
    for _ in range(3):
        b.send(0, "left", frames(6, 20))  # waiting in a's inbound ring

    def drain_later() -> None:
        time.sleep(0.3)
        while not into_b.log or into_b.log[-1][0] != "end":
            if not b.poll(into_b):
                time.sleep(0.001)

    drainer = threading.Thread(target=drain_later)
    drainer.start()
    a.send(1, "right", big)  # fills the ring long before the drainer starts
    a.send_end(1, "right")
    drainer.join(30)
    assert not drainer.is_alive()
    assert [entry[:3] for entry in into_a.log] == [("batch", "left", 1)] * 3
    assert_frame_equal(pl.concat(into_b.frames), big)


def test_a_blocked_sender_whose_coordinator_is_gone_exits(tmp_path: Any) -> None:
    """A worker blocked on a full ring whose parent is no longer the coordinator it started
    under (the coordinator was killed) exits with code 3 instead of waiting forever."""
    script = textwrap.dedent(
        """
        import os, secrets
        from arrowflow._runtime.shm import Ring, ShmTransport
        name = f"af-orphan-{os.getpid()}-{secrets.token_hex(3)}"
        ring = Ring(name, 256, create=True)
        try:
            transport = ShmTransport(0, 2, {(0, 1): name}, ["x"])
            transport.parent = -1  # as if the coordinator had died and the worker been re-parented
            for value in range(100):
                transport.send_watermark(1, "x", value)  # the 9th does not fit
        finally:
            ring.unlink()
        """
    )
    done = subprocess.run([sys.executable, "-c", script], timeout=120, capture_output=True)
    assert done.returncode == 3, done.stderr.decode()[-2000:]


def test_waiting_backs_off_from_50us_to_2ms_and_restarts_after_progress(pair: Any) -> None:
    a, b = pair()
    started = time.monotonic()
    seen = []
    for _ in range(8):
        b.wait(1.0)
        seen.append(b.backoff)
    elapsed = time.monotonic() - started
    assert seen == pytest.approx([5e-5, 1e-4, 2e-4, 4e-4, 8e-4, 1.6e-3, 2e-3, 2e-3])
    assert elapsed >= sum(seen)  # it does sleep
    b.wait(1e-4)
    assert b.backoff == pytest.approx(1e-4)  # never past the caller's timeout
    a.send_watermark(1, "left", 1)
    assert b.poll(Recorder())
    b.wait(1.0)
    assert b.backoff == pytest.approx(5e-5)
    assert not b.poll(Recorder())
    b.wait(1.0)
    assert b.backoff == pytest.approx(1e-4)  # a poll that found nothing does not reset it


def test_closing_a_transport_unmaps_all_its_rings(make_ring: Any) -> None:
    names = {(0, 1): make_ring(256).name, (1, 0): make_ring(256).name}
    transport = ShmTransport(0, 2, names, ["x"])
    assert set(transport.out) == {1} and set(transport.inbound) == {1}
    assert transport.out[1].name == names[(0, 1)] and transport.inbound[1].name == names[(1, 0)]
    rings = [transport.out[1], transport.inbound[1]]
    assert [_mapped(name) for name in names.values()] == [2, 2]
    transport.close()
    assert all(ring.buf is None for ring in rings)
    assert [_mapped(name) for name in names.values()] == [1, 1]  # the test's own ends only
