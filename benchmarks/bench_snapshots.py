"""Checkpoint cost against state size: snapshot duration and size, and time to restore.

    python benchmarks/bench_snapshots.py [--backends memory arrow lmdb sql] [--keys 100K 1M 10M]
                                         [--repeat 3]

What a checkpoint does per keyed store, through the state interface the runtime calls
(``snapshot`` at a barrier, ``restore`` when a job starts from a checkpoint), on a store that
holds ``--keys`` keys (Int64 key; Int64 and Float64 values, like a keyed aggregation's
``count`` and ``sum``), to a local checkpoint folder:

- **snapshot s**: ``store.snapshot(...)``, the whole store written and checksummed; then
  **size** (bytes of the snapshot's files, and per key);
- **after 1% changed**: the next snapshot after 1% of the keys changed, its duration and the
  bytes it wrote (the ``arrow`` backend writes only the key groups that changed and refers to
  the earlier files for the others; with random keys most groups change);
- **restore s**: a fresh store of the same worker restored from that checkpoint (what a
  restart loads), and **restore 1/2 s**: a store owning half the key groups (a rescale from
  1 to 2 workers reads only what it needs).

Medians of ``--repeat`` runs. Every restore is checked: the restored store holds exactly the
keys of its key groups (count), and a sample of keys has the values put for that key.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import fsspec
import numpy as np
import polars as pl

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_state import SPEC, count, human, load  # noqa: E402

from arrowflow._foundation.keygroups import key_groups  # noqa: E402
from arrowflow.state import FOUND, StateBackend, StoreContext, resolve_backend  # noqa: E402

LOAD_BATCH = 1_000_000


def one_run(backend: StateBackend, keys: int, seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    ids = rng.permutation(keys * 4)[:keys].astype(np.int64)
    fs = fsspec.filesystem("file")
    with tempfile.TemporaryDirectory(prefix="bench-snap-") as scratch:
        root = Path(scratch) / "checkpoints"
        store = backend.open_store(SPEC, range(0, 128), StoreContext(f"{scratch}/w0", 0, 1))
        try:
            for start in range(0, keys, LOAD_BATCH):
                chunk = ids[start : start + LOAD_BATCH]
                store.put(
                    pl.DataFrame({"user_id": chunk}),
                    pl.DataFrame({"n": chunk, "total": chunk * 0.5}),
                )
            began = time.perf_counter()
            files = store.snapshot(fs, str(root), 1)
            snapshot_s = time.perf_counter() - began
            size = sum(f.size for f in files)
            changed = rng.choice(ids, size=max(1, keys // 100), replace=False)
            store.put(
                pl.DataFrame({"user_id": changed}),
                pl.DataFrame({"n": changed + 1, "total": changed * 0.5}),
            )
            began = time.perf_counter()
            second = store.snapshot(fs, str(root), 2)
            incremental_s = time.perf_counter() - began
            earlier = {f.path for f in files}
            written = sum(f.size for f in second if f.path not in earlier)
        finally:
            store.close()
        timings = {
            "snapshot_s": snapshot_s,
            "size": size,
            "incremental_s": incremental_s,
            "written": written,
        }
        sample = pl.DataFrame({"user_id": rng.choice(ids, size=min(keys, 10_000), replace=False)})
        groups = key_groups(pl.DataFrame({"user_id": ids}), SPEC.max_parallelism)
        for label, owned in (("restore_s", range(0, 128)), ("restore_half_s", range(0, 64))):
            restored = backend.open_store(SPEC, owned, StoreContext(f"{scratch}/{label}", 0, 1))
            try:
                began = time.perf_counter()
                restored.restore(fs, str(root), files)
                timings[label] = time.perf_counter() - began
                expected = int(((groups >= owned.start) & (groups < owned.stop)).sum())
                got = restored.get(sample)
                mine = pl.concat([sample, got], how="horizontal").filter(pl.col(FOUND))
                right = (mine.get_column("n") == mine.get_column("user_id")) & (
                    mine.get_column("total") == mine.get_column("user_id") * 0.5
                )
                if restored.count() != expected or not right.all() or mine.height == 0:
                    timings["wrong"] = 1.0
            finally:
                restored.close()
    return timings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["memory", "arrow", "lmdb", "sql"])
    parser.add_argument(
        "--keys", type=count, nargs="+", default=[count("100K"), count("1M"), count("10M")]
    )
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    print(
        f"load average before: {load()}   python {sys.version.split()[0]}, polars {pl.__version__}\n"
    )
    print(
        "| backend | keys | snapshot s | size | bytes/key | after 1% changed: s, written | restore s | restore 1/2 s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    wrong = False
    for keys in args.keys:
        for name in args.backends:
            runs = [one_run(resolve_backend(name), keys, seed) for seed in range(args.repeat)]
            med = {k: statistics.median(r[k] for r in runs) for k in runs[0] if k != "wrong"}
            flag = " WRONG" if any("wrong" in r for r in runs) else ""
            wrong |= bool(flag)
            print(
                f"| {name} | {human(keys)} | {med['snapshot_s']:.3f} | {med['size'] / 2**20:.1f} MiB "
                f"| {med['size'] / keys:.0f} | {med['incremental_s']:.3f}, {med['written'] / 2**20:.1f} MiB "
                f"| {med['restore_s']:.3f} "
                f"| {med['restore_half_s']:.3f}{flag} |",
                flush=True,
            )
    print(f"\nload average after: {load()}")
    return 1 if wrong else 0


if __name__ == "__main__":
    raise SystemExit(main())
