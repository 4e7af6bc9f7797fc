"""The benchmark data set of ``docs/benchmarks.md``, generated once and cached.

``events-<rows>/events.parquet`` (row groups of 1M rows, snappy), and ``events.csv`` /
``events.ndjson`` when a job asks for them, under a cache folder (default
``benchmarks/data/``, ignored by git). The rows come from :func:`arrowflow.demo.clickstream`
with seed 42, so every machine benchmarks the same bytes. A file that exists is reused;
files are written under a hidden name and renamed, so an interrupted run leaves no half file.

    python benchmarks/data.py --rows 10000000 --formats parquet csv
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from arrowflow.demo import clickstream

DEFAULT_DIR = Path(__file__).resolve().parent / "data"
FORMATS = ("parquet", "csv", "ndjson")
ROW_GROUP = 1_000_000
SEED = 42


def dataset_dir(rows: int, cache: Path = DEFAULT_DIR) -> Path:
    return Path(cache) / f"events-{rows}"


def events_path(rows: int, fmt: str = "parquet", cache: Path = DEFAULT_DIR) -> Path:
    return dataset_dir(rows, cache) / f"events.{fmt}"


def _write(frame: pl.DataFrame, fmt: str, path: Path) -> None:
    hidden = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if fmt == "parquet":
        pq.write_table(frame.to_arrow(), hidden, row_group_size=ROW_GROUP, compression="snappy")
    elif fmt == "csv":
        frame.write_csv(hidden, datetime_format="%Y-%m-%dT%H:%M:%S%.3f")
    elif fmt == "ndjson":
        frame.with_columns(pl.col("ts").dt.strftime("%Y-%m-%dT%H:%M:%S%.3f")).write_ndjson(hidden)
    else:
        msg = f"unknown format {fmt!r}; expected one of {FORMATS}"
        raise ValueError(msg)
    os.replace(hidden, path)


def ensure(
    rows: int, formats: Iterable[str] = ("parquet",), cache: Path = DEFAULT_DIR, log: bool = True
) -> dict[str, Path]:
    """The paths of the data set in ``formats``, generating the missing files."""
    wanted = {fmt: events_path(rows, fmt, cache) for fmt in formats}
    missing = [fmt for fmt, path in wanted.items() if not path.exists()]
    if missing:
        started = time.perf_counter()
        dataset_dir(rows, cache).mkdir(parents=True, exist_ok=True)
        frame = clickstream(rows, seed=SEED)
        for fmt in missing:
            _write(frame, fmt, wanted[fmt])
        if log:
            print(
                f"generated {rows:,} events as {', '.join(missing)} in {dataset_dir(rows, cache)} "
                f"({time.perf_counter() - started:.1f} s)",
                flush=True,
            )
    return wanted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate the docs/benchmarks.md events data set.")
    parser.add_argument("--rows", type=lambda s: int(s.replace("_", "")), default=10_000_000)
    parser.add_argument("--formats", nargs="+", choices=FORMATS, default=["parquet"])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="cache folder")
    args = parser.parse_args(argv)
    for path in ensure(args.rows, args.formats, args.dir).values():
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
