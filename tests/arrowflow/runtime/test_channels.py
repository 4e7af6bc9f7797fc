"""Channel stress: frames received from a ring stay valid however long they are kept.

A sender process writes batches with long strings (longer than the 12 bytes polars keeps
inline in a string view, so the views point into data buffers) through a small ring that
wraps around many times. The receiver goes through the real receive path
(``ShmTransport.poll``) and keeps every frame it gets, a slice of it, a derived frame
(``filter`` + ``with_columns``, which do not copy strings) and hands frames to a buffering
writer of every file sink format. Only after the sender has finished, and the ring's memory
has been overwritten many times, are they all checked against per-row checksums the sender
took before sending. A receive path that lets a frame point into ring space released for
reuse fails this (wrong strings or a crash).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import polars as pl
import pytest

from arrowflow._runtime.shm import Ring, ShmTransport
from arrowflow.io.filesinks import FileSink

SENDER = textwrap.dedent(
    """
    import sys, zlib
    import numpy as np
    import polars as pl
    from arrowflow._runtime.shm import ShmTransport

    ring_name, batches, reference = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    from multiprocessing import resource_tracker
    transport = ShmTransport(0, 2, {(0, 1): ring_name}, ["x"])
    rng = np.random.default_rng(7)
    alphabet = np.array(list("abcdefghijklmnopqrstuvwxyz0123456789"))
    ids, sums = [], []
    next_id = 0
    for number in range(batches):
        rows = int(rng.integers(1, 2_000))
        lengths = rng.integers(0, 60, rows)
        strings = ["".join(rng.choice(alphabet, n)) + f"#{next_id + i}" for i, n in enumerate(lengths)]
        batch = pl.DataFrame({
            "i": np.arange(next_id, next_id + rows, dtype=np.int64),
            "s": strings,
            "v": rng.normal(size=rows),
        })
        ids.extend(range(next_id, next_id + rows))
        sums.extend(zlib.crc32(s.encode()) for s in strings)
        next_id += rows
        transport.send(1, "x", batch)
    transport.send_end(1, "x")
    pl.DataFrame({"i": ids, "crc": sums}, schema={"i": pl.Int64, "crc": pl.Int64}).write_parquet(reference)
    transport.close()
    resource_tracker.unregister("/" + ring_name, "shared_memory")  # the test process owns it
    """
)


class Keeper:
    """Stands for a worker: keeps everything it is delivered, as operators with state do."""

    def __init__(self, writers: list) -> None:
        self.frames: list[pl.DataFrame] = []
        self.slices: list[pl.DataFrame] = []
        self.derived: list[pl.DataFrame] = []
        self.writers = writers
        self.ended = False

    def deliver(self, exchange: str, batch: pl.DataFrame | None, sender: int) -> None:
        if batch is None:
            self.ended = True
            return
        self.frames.append(batch)
        self.slices.append(batch.slice(batch.height // 3, 5))
        self.derived.append(batch.filter(pl.col("i") % 3 != 1).with_columns(w=pl.col("v") * 2))
        for writer in self.writers:
            writer.write(batch.filter(pl.col("i") % 2 == 0))


def check(frame: pl.DataFrame, reference: dict[int, int], what: str) -> None:
    ids = frame["i"].to_list()
    strings = frame["s"].to_list()
    bad = [
        (i, s)
        for i, s in zip(ids, strings, strict=True)
        if zlib.crc32(s.encode()) != reference.get(i) or not s.endswith(f"#{i}")
    ]
    assert not bad, (
        f"{what}: {len(bad)} of {len(ids)} rows changed after they were received, e.g. {bad[:3]}"
    )


@pytest.mark.timeout(300)
def test_received_frames_stay_valid_after_the_ring_wraps(tmp_path: Path) -> None:
    name = f"af-test-{os.getpid()}-{secrets.token_hex(3)}"
    ring = Ring(name, 256 << 10, create=True)  # a batch is up to ~250 KiB: wraps and splits often
    sinks = [FileSink(fmt, str(tmp_path / fmt)) for fmt in ("parquet", "csv", "ndjson", "ipc")]
    for sink in sinks:
        sink.begin()
    writers = [sink.open_writer(0, 1, f"sink-{sink.format}") for sink in sinks]
    for writer in writers:
        writer.sink.rows_per_file = 10_000_000  # buffer everything until prepare_commit
    keeper = Keeper(writers)
    receiver = ShmTransport(1, 2, {(0, 1): name}, ["x"])
    reference_path = tmp_path / "reference.parquet"
    sender = subprocess.Popen([sys.executable, "-c", SENDER, name, "250", str(reference_path)])
    try:
        while not keeper.ended:
            if not receiver.poll(keeper):
                assert sender.poll() in (None, 0), (
                    f"the sender failed with exit code {sender.returncode}"
                )
                receiver.wait(0.002)
        assert sender.wait(60) == 0
    finally:
        if sender.poll() is None:
            sender.kill()
        receiver.close()
        ring.close()
        ring.unlink()

    expected = pl.read_parquet(reference_path)
    reference = dict(zip(expected["i"].to_list(), expected["crc"].to_list(), strict=True))
    received = pl.concat(keeper.frames)
    # every row arrived exactly once
    assert received.height == expected.height
    assert received["i"].sort().to_list() == expected["i"].to_list()
    for number, frame in enumerate(keeper.frames):
        check(frame, reference, f"frame {number}")
    for number, frame in enumerate(keeper.slices):
        check(frame, reference, f"slice of frame {number}")
    for number, frame in enumerate(keeper.derived):
        check(frame, reference, f"derived frame {number}")
        assert frame["i"].to_list() == [
            i for i in keeper.frames[number]["i"].to_list() if i % 3 != 1
        ]

    # the sink writers buffered frames until now: what they write must be what was sent
    even = expected.filter(pl.col("i") % 2 == 0)
    readers = {
        "parquet": pl.read_parquet,
        "csv": pl.read_csv,
        "ndjson": pl.read_ndjson,
        "ipc": pl.read_ipc,
    }
    for sink, writer in zip(sinks, writers, strict=True):
        staged = writer.prepare_commit(1)
        sink.commit(1, [staged])
        files = sorted(
            p for p in (tmp_path / sink.format).iterdir() if not p.name.startswith((".", "_"))
        )
        assert files, f"{sink.format}: nothing written"
        frame = pl.concat([readers[sink.format](f).select("i", "s") for f in files])
        assert sorted(frame["i"].to_list()) == even["i"].to_list(), sink.format
        check(frame, reference, f"{sink.format} sink output")
