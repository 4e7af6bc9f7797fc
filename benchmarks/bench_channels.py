"""Channel throughput: arrowflow's shared-memory rings against multiprocessing.Queue.

A producer process sends the same polars batch M times; the consumer (this process) turns
every message back into a polars DataFrame and reads one value of it, so both sides do the
work a real exchange does. The queue pickles each DataFrame (polars pickles as Arrow IPC);
the ring writes Arrow IPC straight into shared memory and the consumer copies each payload
out of the ring before reading it (as ``ShmTransport.poll`` does: frames must never point
into released ring space). ``in place`` reads the payload where it lies instead — unsafe
for a real exchange, measured to show what the copy costs.

    python benchmarks/bench_channels.py [--sizes 64K 1M 8M 64M] [--megabytes 1024] [--repeat 3]

Prints, per batch size: GB/s for each channel (median of --repeat runs, with min-max) and
the ring/queue ratio. Targets (issue 3): ratio >= 5 for 1 MiB+ batches, ring above 1 GB/s.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import time

import numpy as np
import polars as pl

from arrowflow._runtime.shm import END, Ring, ipc_read, write_table

UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_size(text: str) -> int:
    return (
        int(float(text[:-1]) * UNITS[text[-1].upper()]) if text[-1].upper() in UNITS else int(text)
    )


def make_batch(nbytes: int) -> pl.DataFrame:
    rows = max(1, nbytes // 24)  # three 8-byte columns
    rng = np.random.default_rng(7)
    return pl.DataFrame(
        {
            "user_id": rng.integers(0, 100_000, rows),
            "ts": np.arange(rows, dtype=np.int64),
            "amount": rng.random(rows),
        }
    )


def _ring_producer(name: str, nbytes: int, count: int) -> None:
    batch = make_batch(nbytes)
    table = batch.to_arrow(compat_level=pl.CompatLevel.newest())
    ring = Ring(name)
    for _ in range(count):
        write_table(ring, 0, table, lambda: time.sleep(0.00005))
    while not ring.try_write(END, 0, 0, None):
        time.sleep(0.0001)
    ring.close()


def _queue_producer(queue: mp.Queue, nbytes: int, count: int) -> None:
    batch = make_batch(nbytes)
    for _ in range(count):
        queue.put(batch)
    queue.put(None)


def run_ring(nbytes: int, count: int, copy: bool = True) -> float:
    context = mp.get_context("spawn")
    ring = Ring(f"af-bench-{os.getpid()}", create=True)
    try:
        producer = context.Process(target=_ring_producer, args=(ring.name, nbytes, count))
        producer.start()
        first = None
        received = 0
        while True:
            message = ring.read()
            if message is None:
                time.sleep(0.00002)
                continue
            kind, _, view = message
            if first is None:
                first = time.perf_counter()
            if kind == END:
                ring.release()
                break
            if copy:
                payload = bytes(view)
                del view
                ring.release()
                frame = pl.DataFrame(pl.from_arrow(ipc_read(payload)))
                received += frame.height
                _ = frame["amount"][0]
                del frame, payload
            else:
                frame = pl.DataFrame(pl.from_arrow(ipc_read(view)))
                received += frame.height
                _ = frame["amount"][0]
                del frame, view
                ring.release()
        elapsed = time.perf_counter() - (first or time.perf_counter())
        producer.join()
    finally:
        ring.close()
        ring.unlink()
    assert received == make_batch(nbytes).height * count
    return nbytes * count / elapsed / 1e9


def run_queue(nbytes: int, count: int) -> float:
    context = mp.get_context("spawn")
    queue = context.Queue(maxsize=4)
    producer = context.Process(target=_queue_producer, args=(queue, nbytes, count))
    producer.start()
    first = None
    received = 0
    while True:
        frame = queue.get()
        if first is None:
            first = time.perf_counter()
        if frame is None:
            break
        received += frame.height
        _ = frame["amount"][0]
    elapsed = time.perf_counter() - (first or time.perf_counter())
    producer.join()
    assert received == make_batch(nbytes).height * count
    return nbytes * count / elapsed / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", nargs="+", default=["64K", "1M", "8M", "64M"])
    parser.add_argument("--megabytes", type=int, default=1024, help="data sent per measurement")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(
        f"{'batch':>8} {'ring GB/s':>22} {'in place GB/s':>22} {'mp.Queue GB/s':>22} {'ratio':>7}"
    )
    for text in args.sizes:
        nbytes = parse_size(text)
        count = max(8, (args.megabytes << 20) // nbytes)
        rings, in_place, queues = [], [], []
        for _ in range(args.repeat):  # interleaved, so noise hits every channel alike
            rings.append(run_ring(nbytes, count))
            in_place.append(run_ring(nbytes, count, copy=False))
            queues.append(run_queue(nbytes, count))
        ring, place, queue = (
            statistics.median(rings),
            statistics.median(in_place),
            statistics.median(queues),
        )
        print(
            f"{text:>8} {ring:>8.2f} ({min(rings):.2f}-{max(rings):.2f}) "
            f"{place:>10.2f} ({min(in_place):.2f}-{max(in_place):.2f}) "
            f"{queue:>10.2f} ({min(queues):.2f}-{max(queues):.2f}) {ring / queue:>6.1f}x",
            flush=True,
        )


if __name__ == "__main__":
    main()
