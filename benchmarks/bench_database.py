"""write_database throughput: rows/s committed through the exactly-once sink.

    python benchmarks/bench_database.py [--rows 1M] [--workers 0 2] [--repeat 3] [--no-postgres]

Generated rows (event_id, user_id over 100k keys, event_type, amount) go from
``flow.from_polars`` into ``write_database`` on SQLite (a file in a temporary directory) and on
a throwaway PostgreSQL (``arrowflow.testing.state_conformance.temporary_postgres``), with one
final checkpoint (no checkpoint directory): staging by bulk ingest, then one transaction
that moves the rows into the table. For reference, the same frame written with one plain
``adbc_ingest`` (no staging, no exactly-once) is timed on the same database. rows/s = rows /
median wall seconds of ``flow.run``. Every run's table is checked: row count and sum of
``event_id``; a wrong answer prints WRONG and exits 1.
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

import numpy as np
import polars as pl

import arrowflow as af


def count(text: str) -> int:
    text = text.strip().upper()
    scale = {"K": 1_000, "M": 1_000_000}.get(text[-1], 1)
    return int(float(text.rstrip("KM")) * scale)


def events(n: int, seed: int = 42) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    return pl.DataFrame(
        {
            "event_id": np.arange(n, dtype=np.int64),
            "user_id": rng.integers(0, 100_000, n),
            "event_type": rng.choice(["view", "click", "purchase", "add_to_cart"], n),
            "amount": np.round(rng.exponential(30, n), 2),
        }
    )


def connect(url: str):
    if url.startswith("sqlite"):
        import adbc_driver_sqlite.dbapi as driver

        return driver.connect(url[len("sqlite:///") :], autocommit=True)
    import adbc_driver_postgresql.dbapi as driver

    return driver.connect(url, autocommit=True)


def query(url: str, statement: str) -> tuple:
    with connect(url) as connection, connection.cursor() as cursor:
        cursor.execute(statement)
        return cursor.fetchone()


def through_sink(frame: pl.DataFrame, url: str, table: str, workers: int) -> float:
    flow = af.Flow("bench-db")
    flow.from_polars(frame, splits=max(workers, 1) * 4).write_database(
        url, table=table, mode="overwrite"
    )
    started = time.perf_counter()
    flow.run(workers=workers, progress=False)
    return time.perf_counter() - started


def plain_ingest(frame: pl.DataFrame, url: str, table: str) -> float:
    started = time.perf_counter()
    with connect(url) as connection, connection.cursor() as cursor:
        cursor.adbc_ingest(table, frame.to_arrow(), mode="replace")
    return time.perf_counter() - started


@contextlib.contextmanager
def databases(postgres: bool) -> Iterator[dict[str, str]]:
    with tempfile.TemporaryDirectory(prefix="bench-db-") as folder:
        urls = {"SQLite": f"sqlite:///{folder}/bench.db"}
        if not postgres:
            yield urls
            return
        from arrowflow.testing.state_conformance import temporary_postgres

        with temporary_postgres() as url:
            yield {**urls, "PostgreSQL": url}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1M")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args(argv)
    rows = count(args.rows)
    frame = events(rows)
    expected_sum = int(frame["event_id"].sum())
    print(
        f"load average before: {os.getloadavg()[0]:.2f}   {rows:,} rows, python {sys.version.split()[0]}, "
        f"polars {pl.__version__}"
    )
    print("| database | how | wall s (min-max) | rows/s | vs plain ingest |")
    print("|---|---|---|---|---|")
    wrong = False
    with databases(not args.no_postgres) as urls:
        for name, url in urls.items():
            plain = statistics.median(
                plain_ingest(frame, url, "bench_plain") for _ in range(args.repeat)
            )
            print(
                f"| {name} | plain adbc_ingest (not exactly-once) | {plain:.2f} | {rows / plain:,.0f} | 1.00x |"
            )
            for workers in args.workers:
                runs = []
                for _ in range(args.repeat):
                    runs.append(through_sink(frame, url, "bench_sink", workers))
                    n, total = query(url, 'SELECT COUNT(*), SUM(event_id) FROM "bench_sink"')
                    if int(n) != rows or int(total) != expected_sum:
                        print(f"WRONG: {name} workers={workers}: {n} rows, sum {total}")
                        wrong = True
                median = statistics.median(runs)
                print(
                    f"| {name} | write_database workers={workers} | {median:.2f} ({min(runs):.2f}-{max(runs):.2f}) "
                    f"| {rows / median:,.0f} | {median / plain:.2f}x |"
                )
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
