"""State backend throughput: batch get/put (keys/s) and keyed aggregation (events/s).

    python benchmarks/bench_state.py [--backends memory arrow lmdb lmdb-py sql] [--postgres]
                                     [--events 10M] [--keys 100K 10M] [--batch 1M]
                                     [--state-keys 100K 1M] [--store-batch 100K] [--repeat 3]

Two parts, each against the ``memory`` backend measured in the same invocation (the machines
are shared: compare ratios, not absolute numbers across runs):

1. **Store throughput.** A store holding ``--state-keys`` keys (Int64 key, Int64 and Float64
   values, like ``count`` and ``sum`` partials) serves batches of ``--store-batch`` distinct
   existing keys: ``get``, ``put`` (replacing values) and ``update`` = get + put, the
   read-modify-write a keyed aggregation does per batch; ``insert`` is the initial load.
   keys/s = keys in the batch / seconds, median over the batches of all repeats. The issue's
   targets are on ``update``: lmdb >= 2M keys/s per worker, sql on SQLite >= 300k keys/s.
   ``lmdb`` runs on its C extension, ``lmdb-py`` on the Python binding (the fallback when the
   extension was not built). For both a breakdown shows where an update's time goes (encoding, the driver's calls,
   decoding).
2. **Keyed aggregation.** ``key_by("user_id").agg(n=pl.len(), total=pl.col("amount").sum())``
   over ``--events`` generated events with each ``--keys`` count of distinct users, in
   batches of ``--batch`` rows (like Parquet row groups), run in this process (workers=0:
   per-worker cost, no exchange). events/s = events / median wall seconds; polars' own
   ``group_by`` on the same frame is printed for reference. The issue's target: ``arrow``
   within 1.3x of ``memory``.

Every run's output is checked against polars; a wrong answer prints WRONG and exits 1.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import polars as pl

import arrowflow as af
from arrowflow.state import (
    FOUND,
    KeyedStore,
    StateBackend,
    StoreContext,
    StoreSpec,
    resolve_backend,
)

UNITS = {"K": 1_000, "M": 1_000_000}
SPEC = StoreSpec(
    "bench", pl.Schema({"user_id": pl.Int64}), pl.Schema({"n": pl.Int64, "total": pl.Float64})
)


def count(text: str) -> int:
    return (
        int(float(text[:-1]) * UNITS[text[-1].upper()]) if text[-1].upper() in UNITS else int(text)
    )


def human(value: float) -> str:
    for unit, size in (("M", 1e6), ("k", 1e3)):
        if value >= size:
            return f"{value / size:.2f}{unit}"
    return f"{value:.0f}"


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


@contextlib.contextmanager
def opened(backend: StateBackend) -> Iterator[KeyedStore]:
    with tempfile.TemporaryDirectory(prefix="bench-state-") as local:
        store = backend.open_store(SPEC, range(0, 128), StoreContext(local, 0, 1))
        try:
            yield store
        finally:
            store.close()


def values_for(ids: np.ndarray, bump: int) -> pl.DataFrame:
    return pl.DataFrame({"n": ids + bump, "total": ids * 0.25 + bump})


# ------------------------------------------------------------------------ store throughput


def store_round(
    backend: StateBackend, state_keys: int, batch: int, rounds: int, timings: dict[str, list[float]]
) -> None:
    rng = np.random.default_rng(len(timings.get("get", [])))
    ids = rng.permutation(state_keys * 4)[:state_keys].astype(np.int64)
    with opened(backend) as store:
        for start in range(0, state_keys, batch):
            chunk = ids[start : start + batch]
            began = time.perf_counter()
            store.put(pl.DataFrame({"user_id": chunk}), values_for(chunk, 0))
            timings["insert"].append(len(chunk) / (time.perf_counter() - began))
        for number in range(rounds):
            chunk = rng.choice(ids, size=min(batch, state_keys), replace=False)
            keys = pl.DataFrame({"user_id": chunk})
            began = time.perf_counter()
            got = store.get(keys)
            middle = time.perf_counter()
            store.put(keys, got.drop(FOUND).with_columns(pl.col("n") + 1))
            ended = time.perf_counter()
            timings["get"].append(len(chunk) / (middle - began))
            timings["put"].append(len(chunk) / (ended - middle))
            timings["update"].append(len(chunk) / (ended - began))
            if number == 0 and not got.get_column(FOUND).all():
                timings["wrong"].append(1.0)


def lmdb_breakdown(
    backend: StateBackend, state_keys: int, batch: int, rounds: int
) -> dict[str, float]:
    """Seconds per key of an lmdb update of fixed-width values, split by the stages of
    ``LmdbStore.get``/``put`` (its own methods, and the driver calls ``_lookup`` makes)."""
    from arrowflow.backends.lmdb import LmdbStore

    parts = {
        "encode keys (numpy) + sort": 0.0,
        "lmdb lookups (driver)": 0.0,
        "decode values (numpy)": 0.0,
        "encode values (numpy)": 0.0,
        "lmdb puts (driver)": 0.0,
    }
    rng = np.random.default_rng(3)
    ids = rng.permutation(state_keys * 4)[:state_keys].astype(np.int64)
    total = 0
    with opened(backend) as store:
        assert isinstance(store, LmdbStore)
        for start in range(0, state_keys, batch):
            chunk = ids[start : start + batch]
            store.put(pl.DataFrame({"user_id": chunk}), values_for(chunk, 0))
        width = store.value_codec.row_width
        assert width is not None
        for _ in range(rounds):
            keys = pl.DataFrame(
                {"user_id": rng.choice(ids, size=min(batch, state_keys), replace=False)}
            )
            t0 = time.perf_counter()
            key_batch = store._batch(keys)
            in_order = key_batch.in_order
            t1 = time.perf_counter()
            raw = store.env.get_fixed(store.entries, in_order.data, in_order.offsets, width, 0xFF)
            t2 = time.perf_counter()
            matrix = np.empty((keys.height, width), dtype=np.uint8)
            matrix[key_batch.order] = np.frombuffer(raw, dtype=np.uint8).reshape(-1, width)
            values = store.value_codec.decode_fixed(matrix, matrix[:, 0] != 0xFF).with_columns(
                pl.col("n") + 1
            )
            t3 = time.perf_counter()
            encoded = store._encode_values(key_batch, values)
            t4 = time.perf_counter()
            store.env.put(
                store.entries, in_order.data, in_order.offsets, encoded.data, encoded.offsets
            )
            t5 = time.perf_counter()
            for name, seconds in zip(
                parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True
            ):
                parts[name] += seconds
            total += keys.height
    return {name: seconds / total for name, seconds in parts.items()}


# ------------------------------------------------------------------------ aggregation


def events(n: int, keys: int, seed: int = 42) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    user = rng.integers(0, keys, n) if keys < n else rng.permutation(n) % keys
    return pl.DataFrame({"user_id": user, "amount": np.round(rng.exponential(30, n), 2)})


AGGS = {"n": pl.len(), "total": pl.col("amount").sum()}


def run_aggregation(frame: pl.DataFrame, state: Any, batch: int) -> tuple[float, pl.DataFrame]:
    began = time.perf_counter()
    out = (
        af.Flow("bench-state")
        .from_polars(frame)
        .key_by("user_id")
        .agg(**AGGS)
        .collect(state=state, workers=0, batch_size=batch)
    )
    return time.perf_counter() - began, out


def same_totals(got: pl.DataFrame, expected: pl.DataFrame) -> bool:
    """One row per key, equal counts, sums equal up to the order floats were added in."""
    if got.height != expected.height or got.get_column("user_id").n_unique() != got.height:
        return False
    both = expected.join(got, on="user_id", how="left", suffix="_got")
    close = (pl.col("total") - pl.col("total_got")).abs() <= 1e-9 * pl.col("total").abs() + 1e-6
    return bool(both.select(((pl.col("n") == pl.col("n_got")) & close).all()).item())


# ------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--backends",
        nargs="+",
        default=["memory", "arrow", "lmdb", "lmdb-py", "sql"],
        help="'lmdb-py' is lmdb on the Python binding, the fallback without the C extension",
    )
    parser.add_argument(
        "--postgres", action="store_true", help="also run sql on a throwaway PostgreSQL"
    )
    parser.add_argument("--events", type=count, default=count("10M"))
    parser.add_argument("--keys", type=count, nargs="+", default=[count("100K"), count("10M")])
    parser.add_argument("--batch", type=count, default=count("1M"), help="rows per source batch")
    parser.add_argument("--state-keys", type=count, nargs="+", default=[count("100K"), count("1M")])
    parser.add_argument("--store-batch", type=count, default=count("100K"))
    parser.add_argument("--rounds", type=int, default=5, help="update batches per store repeat")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip", nargs="*", default=[], choices=["store", "aggregation"])
    args = parser.parse_args(argv)

    from arrowflow.backends.lmdb import LmdbBackend

    drivers = {
        "lmdb": "c",
        "lmdb-py": "py",
    }  # named, so a missing extension is an error, not a mislabel
    states: dict[str, Any] = {
        name: LmdbBackend(driver=drivers[name]) if name in drivers else name
        for name in args.backends
    }
    with contextlib.ExitStack() as stack:
        if args.postgres:
            from arrowflow.testing.state_conformance import temporary_postgres

            states["postgresql"] = stack.enter_context(temporary_postgres())
        print(
            f"load average before: {load()}   python {sys.version.split()[0]}, polars {pl.__version__}"
        )
        wrong = False
        if "store" not in args.skip:
            wrong |= store_part(states, args)
        if "aggregation" not in args.skip:
            wrong |= aggregation_part(states, args)
        print(f"load average after: {load()}")
    return 1 if wrong else 0


def store_part(states: dict[str, Any], args: argparse.Namespace) -> bool:
    wrong = False
    for state_keys in args.state_keys:
        batch = min(args.store_batch, state_keys)
        print(
            f"\n## store throughput: {human(state_keys)} keys held, batches of {human(batch)} distinct keys, "
            f"keys/s, median over {args.repeat} x {args.rounds} batches\n"
        )
        print("| backend | insert | get | put | update (get+put) | update vs memory |")
        print("|---|---|---|---|---|---|")
        results: dict[str, dict[str, list[float]]] = {
            name: {k: [] for k in ("insert", "get", "put", "update", "wrong")} for name in states
        }
        for _ in range(args.repeat):  # interleaved, so that load changes hit every backend alike
            for name, state in states.items():
                store_round(resolve_backend(state), state_keys, batch, args.rounds, results[name])
        base = statistics.median(results["memory"]["update"]) if "memory" in results else None
        for name, timings in results.items():
            update = statistics.median(timings["update"])
            ratio = f"{update / base:.2f}x" if base else "-"
            flag = " WRONG" if timings["wrong"] else ""
            wrong |= bool(timings["wrong"])
            cells = " | ".join(
                human(statistics.median(timings[k])) for k in ("insert", "get", "put", "update")
            )
            print(f"| {name} | {cells} | {ratio}{flag} |")
        for name in ("lmdb", "lmdb-py"):
            if name not in states:
                continue
            parts = lmdb_breakdown(resolve_backend(states[name]), state_keys, batch, args.rounds)
            whole = sum(parts.values())
            print(
                f"\n{name} update, where {whole * 1e9:.0f} ns per key go "
                f"(= {human(1 / whole)} updates/s without the store's bookkeeping):"
            )
            for part, seconds in parts.items():
                print(f"  {part:34s} {seconds * 1e9:6.0f} ns  {seconds / whole:5.1%}")
    return wrong


def aggregation_part(states: dict[str, Any], args: argparse.Namespace) -> bool:
    wrong = False
    for keys in args.keys:
        frame = events(args.events, keys)
        expected = frame.group_by("user_id").agg(**AGGS)
        print(
            f"\n## keyed aggregation: {human(args.events)} events, {human(keys)} distinct keys "
            f"({human(expected.height)} seen), batches of {human(args.batch)} rows, workers=0, "
            f"median of {args.repeat}\n"
        )
        print("| backend | wall s (min-max) | events/s | time vs memory | output |")
        print("|---|---|---|---|---|")
        seconds: dict[str, list[float]] = {name: [] for name in ["polars", *states]}
        checked: dict[str, str] = {}
        for _ in range(args.repeat):
            began = time.perf_counter()
            frame.group_by("user_id").agg(**AGGS)
            seconds["polars"].append(time.perf_counter() - began)
            for name, state in states.items():
                elapsed, out = run_aggregation(frame, state, args.batch)
                seconds[name].append(elapsed)
                if name not in checked:
                    checked[name] = "ok" if same_totals(out, expected) else "WRONG"
                    wrong |= checked[name] == "WRONG"
        base = statistics.median(seconds["memory"]) if "memory" in seconds else None
        for name, runs in seconds.items():
            median = statistics.median(runs)
            ratio = f"{median / base:.2f}x" if base else "-"
            print(
                f"| {name} | {median:.2f} ({min(runs):.2f}-{max(runs):.2f}) | {human(args.events / median)} "
                f"| {ratio} | {checked.get(name, 'reference')} |"
            )
    return wrong


if __name__ == "__main__":
    raise SystemExit(main())
