"""State at scale (issue 15): a keyed aggregation over ``--keys`` distinct keys with LMDB
state, its heap held under ``--budget`` well below the state's size.

    python benchmarks/bench_state_budget.py [--keys 10M] [--budget 1GiB] [--data-dir DIR]

The job, ``read_parquet(events).key_by("k").agg(n=pl.len(), total=pl.col("v").sum())``
written as Parquet, runs in a child process whose data segment is limited with
``RLIMIT_DATA`` (the kernel counts private writable mappings there: the heap, jemalloc's
arenas; not LMDB's shared file mapping, so the state itself lives on disk and in the page
cache). Each key appears twice, in two halves of the input in a different order, so every
key is read back from the store and merged once. Reported: wall seconds, keys/s (distinct
keys / wall), input events/s, the child's peak RSS (``ru_maxrss``) and the LMDB file's size.
The output is checked against polars in this process (no limit): one row per key, the
same count and sum; a wrong answer prints WRONG and exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import polars as pl

CHILD = r"""
import json, os, resource, sys, time
budget, data, out, state_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
resource.setrlimit(resource.RLIMIT_DATA, (budget, budget))
import polars as pl
import arrowflow as af
from arrowflow.backends.lmdb import LmdbBackend
flow = af.Flow("state-budget")
totals = flow.read_parquet(data).key_by("k").agg(n=pl.len(), total=pl.col("v").sum())
totals.write_parquet(out)
import threading
largest = [0]
def watch():  # the environments live in state_dir while the run lasts (removed at its end)
    while not done.is_set():
        found = 0
        for d, _, fs in os.walk(state_dir):
            for f in fs:
                try:
                    found += os.stat(os.path.join(d, f)).st_blocks * 512
                except FileNotFoundError:
                    pass
        largest[0] = max(largest[0], found)
        done.wait(0.2)
done = threading.Event()
watcher = threading.Thread(target=watch, daemon=True)
watcher.start()
started = time.perf_counter()
result = flow.run(workers=0, state=LmdbBackend(path=state_dir), restore=None, progress=False)
wall = time.perf_counter() - started
done.set()
watcher.join()
print(json.dumps({"wall": wall, "rows_in": result.rows_in, "maxrss_kib":
    resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "state_bytes": largest[0]}))
"""


def amount(text: str) -> int:
    units = {"K": 10**3, "M": 10**6, "G": 10**9}
    return (
        int(float(text[:-1]) * units[text[-1].upper()]) if text[-1].upper() in units else int(text)
    )


def size(text: str) -> int:
    units = {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
    for unit, factor in units.items():
        if text.upper().endswith(unit):
            return int(float(text[: -len(unit)]) * factor)
    return int(text)


def events(keys: int, folder: str) -> str:
    path = os.path.join(folder, f"keys-{keys}.parquet")
    if not os.path.exists(path):
        rng = np.random.default_rng(15)
        k = np.concatenate([rng.permutation(keys), rng.permutation(keys)]).astype(np.int64)
        v = rng.integers(0, 1000, 2 * keys).astype(np.float64)
        pl.DataFrame({"k": k, "v": v}).write_parquet(path, row_group_size=262_144)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", default="10M")
    parser.add_argument("--budget", default="1GiB")
    parser.add_argument("--data-dir", default=tempfile.gettempdir())
    args = parser.parse_args()
    keys, budget = amount(args.keys), size(args.budget)
    data = events(keys, args.data_dir)
    with tempfile.TemporaryDirectory(prefix="af-state-budget-") as work:
        out, state = os.path.join(work, "out"), os.path.join(work, "lmdb")
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", CHILD, str(budget), data, out, state],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            print(f"FAILED under a {args.budget} budget: {done.stderr.strip()[-1500:]}")
            sys.exit(1)
        report = json.loads(done.stdout.strip().splitlines()[-1])
        report["process_wall"] = time.perf_counter() - started
        got = pl.read_parquet(out).sort("k")
        expected = (
            pl.read_parquet(data).group_by("k").agg(n=pl.len(), total=pl.col("v").sum()).sort("k")
        )
        same = got.height == expected.height == keys and got.select(
            "k", pl.col("n").cast(pl.Int64), "total"
        ).equals(expected.select("k", pl.col("n").cast(pl.Int64), "total"))
    print(
        f"{keys:,} keys ({2 * keys:,} events), LMDB state, heap limit {args.budget} (RLIMIT_DATA)"
    )
    print(
        f"  wall {report['wall']:.1f} s in the run ({report['process_wall']:.1f} s with start-up)"
    )
    print(
        f"  {keys / report['wall']:,.0f} keys/s, {report['rows_in'] / report['wall']:,.0f} events/s"
    )
    print(
        f"  peak RSS {report['maxrss_kib'] / 2**10:,.0f} MiB (LMDB pages in the page cache count)"
    )
    print(f"  LMDB state {report['state_bytes'] / 2**20:,.0f} MiB on disk at most (sampled)")
    print(f"  output: {'same as polars' if same else 'WRONG'} ({got.height:,} rows)")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
