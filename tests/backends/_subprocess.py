"""Scenarios the backend tests run in a child process, under resource limits the test sets.

Each function prints one JSON line on stdout with what it observed; the test asserts on it.
Limits (file size, heap) are set inside the child, after the imports, so that they bind the
work being measured and never the test runner.

    python -m tests.backends._subprocess disk_full lmdb /tmp/dir
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
import time

import numpy as np
import polars as pl

from arrowflow.errors import StateError
from arrowflow.state import StateBackend, StoreContext, StoreSpec, resolve_backend

SPEC = StoreSpec(
    "agg-1",
    pl.Schema({"id": pl.Int64}),
    pl.Schema({"n": pl.Int64, "total": pl.Float64, "tag": pl.String, "page": pl.String}),
)


def _backend(name: str) -> StateBackend:
    if name == "lmdb-small-map":  # a map that must grow while the disk is full
        from arrowflow.backends.lmdb import LmdbBackend

        return LmdbBackend(map_size=1 << 20)
    return resolve_backend(name)


def rows(ids: np.ndarray, bump: int = 0) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The keys and values the scenarios write (``n`` is ``3 * id``, plus ``bump``)."""
    keys = pl.DataFrame({"id": ids})
    tag = pl.Series(ids % 1000).cast(pl.String)
    values = pl.DataFrame(
        {
            "n": ids * 3 + bump,
            "total": ids * 0.5,
            "tag": tag,
            "page": "/products/item-" + tag + "/reviews?page=" + tag,
        }
    )
    return keys, values


def _contents(store: object) -> pl.DataFrame:
    frames = list(store.scan())  # type: ignore[attr-defined]
    return pl.concat(frames).sort("id") if frames else pl.DataFrame()


def _dir_size(path: str) -> int:
    return max(
        (os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files),
        default=0,
    )


def disk_full(backend_name: str, local_dir: str) -> dict[str, object]:
    """Fill the store, cap the file size just above it, write more: a StateError, no damage."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the cap fails with EFBIG instead
    store = _backend(backend_name).open_store(SPEC, range(0, 128), StoreContext(local_dir, 0, 1))
    store.put(*rows(np.arange(20_000)))
    before = _contents(store)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (_dir_size(local_dir) + (256 << 10), hard))
    try:
        store.put(*rows(np.arange(10_000, 110_000), bump=1))
        outcome = "no error"
    except StateError as exc:
        outcome = f"StateError: {exc}"
    except Exception as exc:  # anything else is a failure of the test
        outcome = f"{type(exc).__name__}: {exc}"
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    after = _contents(store)
    unchanged = after.equals(before) and store.count() == before.height
    store.put(*rows(np.arange(20_000, 20_010)))  # still writable once there is room again
    writable = store.count() == before.height + 10
    store.close()
    return {"outcome": outcome, "unchanged": unchanged, "writable": writable}


def _vm_data() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024
    return 0


def larger_than_heap(
    backend_name: str, local_dir: str, keys: str, budget_mib: str
) -> dict[str, object]:
    """Hold more keyed state than the heap may: RLIMIT_DATA caps anonymous memory at budget."""
    n, budget = int(keys), int(budget_mib) << 20
    store = _backend(backend_name).open_store(SPEC, range(0, 128), StoreContext(local_dir, 0, 1))
    batch = 20_000
    # Warm every code path once so that its allocator arenas and thread pools exist before the cap.
    warm_keys, warm_values = rows(np.arange(batch, dtype=np.int64) + 10**12)
    store.put(warm_keys, warm_values)
    store.get(warm_keys)
    store.delete(warm_keys)
    _ = [frame.height for frame in store.scan()]
    baseline = _vm_data()
    resource.setrlimit(resource.RLIMIT_DATA, (baseline + budget, resource.RLIM_INFINITY))
    started = time.perf_counter()
    try:
        order = np.random.default_rng(1).permutation(n)
        for start in range(0, n, batch):  # every key once
            store.put(*rows(order[start : start + batch]))
        for start in range(0, n, 3 * batch):  # a read-modify-write pass over a third of the keys
            ids = order[start : start + batch]
            old = store.get(pl.DataFrame({"id": ids}))
            store.put(pl.DataFrame({"id": ids}), old.drop("__found").with_columns(pl.col("n") + 1))
        mismatches, seen = 0, 0
        bumped = np.zeros(n, dtype=bool)
        for start in range(0, n, 3 * batch):
            bumped[order[start : start + batch]] = True
        for frame in store.scan():  # streamed: each batch checked and dropped
            ids = frame.get_column("id").to_numpy()
            expected_n = ids * 3 + bumped[ids]
            mismatches += int((frame.get_column("n").to_numpy() != expected_n).sum())
            mismatches += int(
                (frame.get_column("tag") != pl.Series(ids % 1000).cast(pl.String)).sum()
            )
            seen += frame.height
        outcome = "finished"
    except MemoryError as exc:
        outcome, mismatches, seen = f"MemoryError: {exc}", -1, -1
    usage = resource.getrusage(resource.RUSAGE_SELF)
    environment = getattr(store, "env", None)
    info = environment.info() if environment else None
    used = (info["last_pgno"] + 1) * info["psize"] if info else None
    return {
        "outcome": outcome,
        "keys": n,
        "seen": seen,
        "count": store.count() if seen >= 0 else -1,
        "mismatches": mismatches,
        "heap_budget": budget,
        "vm_data_baseline": baseline,
        "vm_data_end": _vm_data(),
        "max_rss": usage.ru_maxrss * 1024,
        "seconds": round(time.perf_counter() - started, 2),
        "lmdb_used_bytes": used,
        "store_bytes": sum(
            os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(local_dir) for f in fs
        ),
    }


if __name__ == "__main__":
    scenario, *arguments = sys.argv[1:]
    result = {"disk_full": disk_full, "larger_than_heap": larger_than_heap}[scenario](*arguments)
    print(json.dumps(result))
