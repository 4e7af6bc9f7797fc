"""Keyed process function throughput: the de-duplication example of ``arrowflow._process.context``.

    python benchmarks/bench_process.py [--backends memory arrow lmdb sql] [--events 1M]
                                       [--ids 700K] [--batch 100K] [--workers 0 2] [--repeat 3]

``--events`` clickstream events (``arrowflow.demo.clickstream``) get an ``event_id`` drawn
uniformly from ``--ids`` values (1M events over 700k ids: ~534k distinct, ~47% duplicates),
split into ``--batch``-row pieces, and go through::

    events.key_by("event_id").process(dedupe, states=[af.ValueState("seen", pl.Boolean)])

where ``dedupe`` keeps each batch's first row per id, looks the ids up in ``seen`` (one
vectorized get), and writes the fresh ones (one put). events/s = events / median wall seconds
of ``collect`` (a pool run includes starting its processes: ~1 s here). Polars' own
``unique("event_id", keep="first")`` on the whole frame is printed for reference. Every run's
row count is checked against polars; a wrong answer prints WRONG and exits 1.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import polars as pl

import arrowflow as af
from arrowflow.demo import clickstream


def dedupe(batch: pl.DataFrame, ctx: af.ProcessContext) -> pl.DataFrame:
    first = batch.unique("event_id", keep="first", maintain_order=True)
    fresh = first.filter(ctx.state("seen").get(first).is_null())
    ctx.state("seen").put(fresh, True)
    return fresh


def _count(text: str) -> int:
    text = text.strip().upper()
    scale = {"K": 1_000, "M": 1_000_000}.get(text[-1], 1)
    return int(float(text.rstrip("KM")) * scale)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["memory", "arrow", "lmdb", "sql"])
    parser.add_argument("--events", default="1M")
    parser.add_argument("--ids", default="700K")
    parser.add_argument("--batch", default="100K")
    parser.add_argument("--workers", nargs="+", type=int, default=[0, 2])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    n, batch = _count(args.events), _count(args.batch)
    events = clickstream(n).with_columns(
        event_id=pl.Series(np.random.default_rng(7).integers(0, _count(args.ids), n))
    )
    started = time.perf_counter()
    expected = events.unique("event_id", keep="first", maintain_order=True).height
    polars_s = time.perf_counter() - started
    print(
        f"{n:,} events, {expected:,} distinct ids; polars unique: {polars_s:.3f} s ({n / polars_s:,.0f} events/s)"
    )
    print(f"{'backend':<8} {'workers':>7} {'median s':>9} {'events/s':>12}  check")
    wrong = False
    for backend in args.backends:
        for workers in args.workers:
            times = []
            for _ in range(args.repeat):
                flow = af.Flow("bench-dedupe")
                stream = (
                    flow.from_polars(events, splits=max(1, n // batch))
                    .key_by("event_id")
                    .process(
                        dedupe, states=[af.ValueState("seen", pl.Boolean)], schema=events.schema
                    )
                )
                started = time.perf_counter()
                got = stream.collect(workers=workers, state=backend, batch_size=batch)
                times.append(time.perf_counter() - started)
                wrong |= got.height != expected
            median = statistics.median(times)
            check = "ok" if got.height == expected else f"WRONG ({got.height:,} rows)"
            print(
                f"{backend:<8} {workers:>7} {median:>9.3f} {n / median:>12,.0f}  {check}",
                flush=True,
            )
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
