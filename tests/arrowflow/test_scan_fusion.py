"""A source fused with the chain and the partial aggregate after it (docs/runtime.md, "scan
fusion"): polars runs the filters, columns and per-key partial inside its Parquet scan.

The fused run must be indistinguishable from the unfused one except in speed: the same
totals as polars over the same files, whatever the worker count, batch size and file order;
the same counters per operator; a damaged file still skipped and reported; a user's
expression error still the user's error (never taken for a damaged file and skipped); a
kill -9 and restore still exactly once.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import arrowflow as af
from arrowflow.sources import MALFORMED_SCHEMA
from arrowflow.testing import assert_frame_equal_unordered, collect_all

KINDS = ["view", "click", "purchase", "add_to_cart"]


def write_events(folder: Path, files: int = 4, rows: int = 5_000, seed: int = 3) -> pl.DataFrame:
    """``files`` Parquet files of unordered events (keys permuted, amounts with nulls), row
    groups of 1,200 rows; returns all of them."""
    rng = np.random.default_rng(seed)
    frames = []
    for index in range(files):
        amount = np.round(rng.exponential(30, rows), 2)
        frame = pl.DataFrame(
            {
                "user": rng.permutation(rows) % 211,
                "kind": rng.choice(KINDS, rows, p=[0.4, 0.3, 0.15, 0.15]),
                "amount": pl.Series(amount).set(pl.Series(rng.random(rows) < 0.05), None),
                "qty": rng.integers(-3, 9, rows).astype(np.int32),
            }
        )
        frame.write_parquet(folder / f"events-{index}.parquet", row_group_size=1_200)
        frames.append(frame)
    return pl.concat(frames)


# The job, one spelling for polars and for the flows below.
KEPT = [pl.col("kind").is_in(["purchase", "add_to_cart"]), pl.col("qty") != 0]
VALUE = {"value": pl.col("amount") * pl.col("qty")}
TOTALS = {
    "n": pl.len(),
    "total": pl.col("value").sum(),
    "mean": pl.col("amount").mean(),
    "low": pl.col("qty").min(),
    "high": pl.col("amount").max(),
    "amounts": pl.col("amount").count(),
}


def totals(frame: pl.LazyFrame | pl.DataFrame) -> pl.LazyFrame:
    """The job, as polars runs it."""
    return frame.lazy().filter(*KEPT).with_columns(**VALUE).group_by("user").agg(**TOTALS)


def fused_flow(source: af.Stream) -> af.Stream:
    return source.filter(*KEPT).with_columns(**VALUE).key_by("user").agg(**TOTALS)


@pytest.mark.parametrize("batch_size", [None, 700])
def test_a_fused_scan_gives_polars_totals(tmp_path: Path, workers: int, batch_size) -> None:
    events = write_events(tmp_path)
    flow = af.Flow("fused")
    got = fused_flow(flow.read_parquet(str(tmp_path / "*.parquet"))).collect(
        workers=workers, batch_size=batch_size
    )
    assert_frame_equal_unordered(got, totals(events).collect())


def test_the_fused_operators_count_what_they_would_unfused(tmp_path: Path, workers: int) -> None:
    """Each operator's counters are the rows that pass it, from polars: the source read every
    event, the chain kept the filtered ones, the exchange and the aggregation took those."""
    events = write_events(tmp_path)
    # and a file of views only, whose split the filters empty
    views = events.head(900).with_columns(kind=pl.lit("view"))
    views.write_parquet(tmp_path / "views.parquet")
    events = pl.concat([events, views])
    kept = events.filter(
        pl.col("kind").is_in(["purchase", "add_to_cart"]), pl.col("qty") != 0
    ).height
    flow = af.Flow("counted")
    fused_flow(flow.read_parquet(str(tmp_path / "*.parquet"))).write_parquet(str(tmp_path / "out"))
    result = flow.run(workers=workers)
    by_kind = {row["kind"]: row for row in result.metrics().to_dicts()}
    source, chain = by_kind["source"], by_kind["chain"]
    assert source["rows_in"] == source["rows_out"] == events.height
    # 5 small files, one split each, each read as one batch when the run leaves the batch
    # size to the engine; the exchange saw the 4 splits the filters did not empty.
    assert source["batches_in"] == chain["batches_in"] == 5
    assert by_kind["exchange"]["batches_in"] == 4
    assert (chain["rows_in"], chain["rows_out"]) == (events.height, kept)
    assert by_kind["exchange"]["rows_in"] == by_kind["agg"]["rows_in"] == kept
    assert by_kind["agg"]["rows_out"] == totals(events).collect().height


def test_the_parquet_reader_runs_the_query_in_its_scan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In process, each split is read by the reader's fused path (the query inside the scan),
    once per split, and what it yields stands for every row of the split."""
    from arrowflow.io import files

    events = write_events(tmp_path)
    seen: list[int | None] = []
    queried = files._FileReader._queried

    def recorded(self, wanted, query):
        for batch in queried(self, wanted, query):
            seen.append(batch.rows_read)
            yield batch

    monkeypatch.setattr(files._FileReader, "_queried", recorded)
    flow = af.Flow("pushed")
    got = fused_flow(flow.read_parquet(str(tmp_path / "*.parquet"))).collect(workers=0)
    assert_frame_equal_unordered(got, totals(events).collect())
    assert seen == [5_000] * 4


def test_a_source_straight_into_an_aggregation_and_a_second_source_are_fused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No chain between a source and its aggregation: the partial alone runs in the scan. A
    second source is fused too when the first one cannot be (it feeds two consumers)."""
    from arrowflow.io import files

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = write_events(tmp_path / "a", files=2, seed=4)
    second = write_events(tmp_path / "b", files=3, seed=5)
    seen: list[str] = []
    queried = files._FileReader._queried

    def recorded(self, wanted, query):
        seen.append(Path(self.url).parent.name)
        yield from queried(self, wanted, query)

    monkeypatch.setattr(files._FileReader, "_queried", recorded)
    flow = af.Flow("two-sources")
    a = flow.read_parquet(str(tmp_path / "a" / "*.parquet"))
    b = flow.read_parquet(str(tmp_path / "b" / "*.parquet"))
    streams = [
        a.select("user"),
        a.key_by("user").agg(n=pl.len()),
        b.key_by("user").agg(n=pl.len(), total=pl.col("amount").sum()),
    ]
    users, counts, totals_b = collect_all(*streams, workers=0)
    assert_frame_equal_unordered(users, first.select("user"))
    assert_frame_equal_unordered(counts, first.group_by("user").agg(n=pl.len()))
    assert_frame_equal_unordered(
        totals_b, second.group_by("user").agg(n=pl.len(), total=pl.col("amount").sum())
    )
    assert seen == ["b"] * 3


@pytest.mark.parametrize(("batch_size", "batches"), [(None, 1), (100_000, 6)])
def test_a_pool_reads_a_fused_split_as_one_batch(
    tmp_path: Path, batch_size: int | None, batches: int
) -> None:
    """A split of 600,000 rows: a pool worker cuts an unfused split into batches of 262,144
    rows (3 here); fused, the split is one query and one batch, unless the run gives a
    batch size, which is kept."""
    rng = np.random.default_rng(8)
    rows = 600_000
    events = pl.DataFrame(
        {
            "user": rng.permutation(rows) % 5_003,
            "kind": rng.choice(KINDS, rows),
            "amount": np.round(rng.exponential(30, rows), 2),
            "qty": rng.integers(-3, 9, rows).astype(np.int32),
        }
    )
    events.write_parquet(tmp_path / "big.parquet", row_group_size=rows)
    flow = af.Flow("one-batch")
    fused_flow(flow.read_parquet(str(tmp_path / "big.parquet"))).write_parquet(
        str(tmp_path / "out")
    )
    result = flow.run(workers=2, batch_size=batch_size)
    by_kind = {row["kind"]: row for row in result.metrics().to_dicts()}
    assert by_kind["source"]["batches_in"] == batches
    assert by_kind["source"]["rows_in"] == rows
    got = pl.read_parquet(tmp_path / "out" / "part-*.parquet")
    assert_frame_equal_unordered(got, totals(events).collect())


def test_a_users_expression_error_in_a_fused_scan_is_raised_not_skipped(tmp_path: Path) -> None:
    """A strict cast that fails on one value fails the run with polars' own error, even with
    on_corrupt_file='skip': a wrong expression is not a damaged file (skipping it as one
    would drop every row of the file)."""
    pl.DataFrame({"user": [1, 2, 3], "raw": ["4", "x", "6"]}).write_parquet(tmp_path / "a.parquet")
    flow = af.Flow("bad-cast")
    (
        flow.read_parquet(str(tmp_path / "a.parquet"), on_corrupt_file="skip")
        .with_columns(v=pl.col("raw").cast(pl.Int64))
        .key_by("user")
        .agg(total=pl.col("v").sum())
        .write_parquet(str(tmp_path / "out"))
    )
    with pytest.raises(pl.exceptions.InvalidOperationError, match="conversion from `str` to `i64`"):
        flow.run(workers=0)
    assert not list((tmp_path / "out").glob("part-*"))


def test_a_damaged_file_in_a_fused_scan_is_skipped_and_reported(
    tmp_path: Path, workers: int
) -> None:
    """A file whose footer reads but whose first page is garbage fails inside the fused scan:
    it is one ``malformed`` row, and the totals are polars' over the other files."""
    events = write_events(tmp_path, files=3)
    damaged = tmp_path / "events-1.parquet"
    raw = bytearray(damaged.read_bytes())
    raw[10:60] = b"\xff" * 50
    damaged.write_bytes(bytes(raw))
    good = pl.concat([events.slice(0, 5_000), events.slice(10_000, 5_000)])
    flow = af.Flow("damaged")
    source = flow.read_parquet(str(tmp_path / "*.parquet"), on_corrupt_file="skip")
    got, bad = collect_all(fused_flow(source), source.side_output("malformed"), workers=workers)
    assert_frame_equal_unordered(got, totals(good).collect())
    assert bad.schema == MALFORMED_SCHEMA
    assert bad["file"].to_list() == [str(damaged)]
    assert bad["reason"][0].startswith("corrupt file skipped (row groups 0-4, rows 0-4999): ")


JOB = textwrap.dedent(
    """
    import json, sys
    import polars as pl
    import arrowflow as af

    config = json.loads(sys.argv[1])
    flow = af.Flow("fused-crash")
    (flow.read_parquet(config["input"])
         .with_columns(value=pl.col("qty") * 2)
         .key_by("user").agg(n=pl.len(), total=pl.col("value").sum())
         .write_parquet(config["out"]))
    result = flow.run(workers=config["workers"], checkpoint_dir=config["ck"],
                      checkpoint_every=af.every_rows(2_400), batch_size=config["batch_size"],
                      restore="latest", max_restarts=0)
    print("RESULT " + json.dumps({"restored_from": result.restored_from}), flush=True)
    """
)


@pytest.mark.injects_faults
@pytest.mark.parametrize(
    ("workers", "batch_size", "fault"),
    # In-process, whole row groups are batches and the reader runs the query in its scan; in
    # the pool, 200-row cuts of them are batches the worker runs the query on, and partials
    # cross the exchange. (A pool reading whole row groups reads these 40,000 rows faster
    # than its 50 ms row reports, so its checkpoints by row count would be left to timing.)
    [(0, None, "after_manifest@3"), (0, 500, "before_manifest@4"), (2, 200, "after_ack@2")],
)
def test_kill_9_and_restore_of_a_fused_scan_is_exactly_once(
    tmp_path: Path, workers: int, batch_size, fault: str, run_job_script
) -> None:
    """Whole row groups as batches (or cuts of them), killed at a checkpoint, then
    restored: the totals a key's last emission holds are polars' totals."""
    (tmp_path / "input").mkdir()
    events = write_events(tmp_path / "input", files=8)
    config = {
        "input": str(tmp_path / "input" / "*.parquet"),
        "out": str(tmp_path / "out"),
        "ck": str(tmp_path / "ck"),
        "workers": workers,
        "batch_size": batch_size,
    }
    script = tmp_path / "job.py"
    script.write_text(JOB)

    def run(faults: str) -> subprocess.CompletedProcess[str]:
        return run_job_script(script, config, faults)

    first = run(fault)
    assert first.returncode != 0 and "RESULT" not in first.stdout, first.stderr[-2000:]
    second = run("")
    assert second.returncode == 0, second.stderr[-3000:]
    summary = json.loads(second.stdout.split("RESULT ", 1)[1])
    assert summary["restored_from"] is not None
    parts = sorted((tmp_path / "out").glob("part-*.parquet"))
    updates = pl.concat([pl.read_parquet(p) for p in parts])
    latest = updates.with_row_index("_i").group_by("user").last().drop("_i")
    # Every row counts (no filter): a row read twice or skipped changes its key's totals.
    expected = events.group_by("user").agg(n=pl.len(), total=(pl.col("qty") * 2).sum())
    assert_frame_equal_unordered(latest, expected)
