"""State at scale (issue 15): a keyed aggregation over ``--keys`` distinct keys with LMDB
state, its memory held under ``--budget`` well below the state's size.

    python benchmarks/bench_state_budget.py [--keys 10M] [--budget 1GiB] [--limit cgroup]
                                            [--data-dir DIR]

The job, ``read_parquet(events).key_by("k").agg(n=pl.len(), total=pl.col("v").sum())``
written as Parquet, runs in a child process under one of two limits:

- ``--limit cgroup`` (default where it can): a memory cgroup of its own (v1
  ``memory.limit_in_bytes`` or v2 ``memory.max``, created under this process's cgroup), the
  limit a container or a systemd unit sets. It charges everything the child touches: heap,
  page cache of the input, LMDB's pages; the kernel reclaims clean cache pages and the
  process is killed if its heap does not fit. Reported too: the cgroup's own peak and how
  often it hit the limit (``failcnt``, v1).
- ``--limit rlimit``: ``RLIMIT_DATA``, which counts private writable *address space*
  (VmData), not memory: polars' and jemalloc's reserved arenas count in full, so a run that
  needs 0.5 GiB of heap can fail under a 2 GiB RLIMIT_DATA (docs/benchmarks.md).

Each key appears twice, in two halves of the input in a different order, so every key is
read back from the store and merged once. Reported: wall seconds, keys/s (distinct keys /
wall), input events/s, the child's peak anonymous memory (``RssAnon`` sampled every 0.2 s:
its heap), its peak RSS (``ru_maxrss``, which counts LMDB pages in the page cache) and the
LMDB files' size. The output is checked against polars in this process (no limit): one row
per key, the same count and sum; a wrong answer prints WRONG and exits 1.
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
budget, data, out, state_dir, cgroup = int(sys.argv[1]), *sys.argv[2:6]
if cgroup:  # join it before importing anything: the limit covers the whole run
    with open(os.path.join(cgroup, "cgroup.procs"), "w") as procs:
        procs.write(str(os.getpid()))
else:
    resource.setrlimit(resource.RLIMIT_DATA, (budget, budget))
import polars as pl
import arrowflow as af
from arrowflow.backends.lmdb import LmdbBackend
flow = af.Flow("state-budget")
totals = flow.read_parquet(data).key_by("k").agg(n=pl.len(), total=pl.col("v").sum())
totals.write_parquet(out)
import threading
largest = [0]
anon = [0]
def rss_anon():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0
def watch():  # the environments live in state_dir while the run lasts (removed at its end)
    while not done.is_set():
        anon[0] = max(anon[0], rss_anon())
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
    resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "state_bytes": largest[0], "anon_peak": anon[0]}))
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


class Cgroup:
    """A memory cgroup of its own under this process's (v1 or v2), removed on exit."""

    def __init__(self, budget: int) -> None:
        parent = self._parent()
        if parent is None:
            msg = "--limit cgroup: no writable memory cgroup here; use --limit rlimit"
            raise SystemExit(msg)
        self.v2 = os.path.exists(os.path.join(parent, "cgroup.controllers"))
        self.path = os.path.join(parent, f"af-state-budget-{os.getpid()}")
        os.mkdir(self.path)
        self._write("memory.max" if self.v2 else "memory.limit_in_bytes", str(budget))

    @staticmethod
    def _parent() -> str | None:
        with open("/proc/self/cgroup") as lines:
            for line in lines:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                if "memory" in controllers.split(","):
                    base = os.path.join("/sys/fs/cgroup/memory", path.lstrip("/"))
                elif controllers == "" and os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
                    base = os.path.join("/sys/fs/cgroup", path.lstrip("/"))
                else:
                    continue
                if os.access(base, os.W_OK):
                    return base
        return None

    def _write(self, name: str, value: str) -> None:
        with open(os.path.join(self.path, name), "w") as f:
            f.write(value)

    def read(self, name: str) -> int | None:
        try:
            with open(os.path.join(self.path, name)) as f:
                return int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def peak(self) -> int | None:
        return self.read("memory.peak" if self.v2 else "memory.max_usage_in_bytes")

    def failcnt(self) -> int | None:
        return None if self.v2 else self.read("memory.failcnt")

    def remove(self) -> None:
        try:
            os.rmdir(self.path)
        except OSError:
            pass


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
    parser.add_argument("--limit", choices=["cgroup", "rlimit"], default=None)
    parser.add_argument("--data-dir", default=tempfile.gettempdir())
    args = parser.parse_args()
    keys, budget = amount(args.keys), size(args.budget)
    limit = args.limit or ("cgroup" if Cgroup._parent() else "rlimit")
    data = events(keys, args.data_dir)
    cgroup = Cgroup(budget) if limit == "cgroup" else None
    try:
        with tempfile.TemporaryDirectory(prefix="af-state-budget-") as work:
            out, state = os.path.join(work, "out"), os.path.join(work, "lmdb")
            started = time.perf_counter()
            where = cgroup.path if cgroup else ""
            done = subprocess.run(
                [sys.executable, "-c", CHILD, str(budget), data, out, state, where],
                capture_output=True,
                text=True,
            )
            peak = cgroup.peak() if cgroup else None
            failcnt = cgroup.failcnt() if cgroup else None
            if done.returncode != 0:
                how = f"exit {done.returncode}" + (
                    " (killed: out of memory?)" if done.returncode < 0 else ""
                )
                print(
                    f"FAILED under a {args.budget} {limit} limit, {how}: {done.stderr.strip()[-1500:]}"
                )
                sys.exit(1)
            report = json.loads(done.stdout.strip().splitlines()[-1])
            report["process_wall"] = time.perf_counter() - started
            got = pl.read_parquet(out).sort("k")
            expected = (
                pl.read_parquet(data)
                .group_by("k")
                .agg(n=pl.len(), total=pl.col("v").sum())
                .sort("k")
            )
            same = got.height == expected.height == keys and got.select(
                "k", pl.col("n").cast(pl.Int64), "total"
            ).equals(expected.select("k", pl.col("n").cast(pl.Int64), "total"))
    finally:
        if cgroup:
            cgroup.remove()
    what = "memory cgroup" if limit == "cgroup" else "RLIMIT_DATA"
    print(f"{keys:,} keys ({2 * keys:,} events), LMDB state, limit {args.budget} ({what})")
    print(
        f"  wall {report['wall']:.1f} s in the run ({report['process_wall']:.1f} s with start-up)"
    )
    print(
        f"  {keys / report['wall']:,.0f} keys/s, {report['rows_in'] / report['wall']:,.0f} events/s"
    )
    print(f"  peak RssAnon {report['anon_peak'] / 2**20:,.0f} MiB (the heap, sampled)")
    print(
        f"  peak RSS {report['maxrss_kib'] / 2**10:,.0f} MiB (LMDB pages in the page cache count)"
    )
    if peak is not None:
        hits = "" if failcnt is None else f", limit reached {failcnt:,} times (reclaim)"
        print(f"  cgroup peak {peak / 2**20:,.0f} MiB (heap + page cache){hits}")
    print(f"  LMDB state {report['state_bytes'] / 2**20:,.0f} MiB on disk at most (sampled)")
    print(f"  output: {'same as polars' if same else 'WRONG'} ({got.height:,} rows)")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
