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
from typing import Any

import numpy as np
import polars as pl
import pytest

import arrowflow as af
from arrowflow.sources import MALFORMED_SCHEMA
from arrowflow.testing import assert_frame_equal_unordered, collect_all

KINDS = ["view", "click", "purchase", "add_to_cart"]


def write_events(
    folder: Path, files: int = 4, rows: int = 5_000, seed: int = 3, row_group_size: int = 1_200
) -> pl.DataFrame:
    """``files`` Parquet files of unordered events (keys permuted, amounts with nulls), row
    groups of ``row_group_size`` rows; returns all of them."""
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
        frame.write_parquet(folder / f"events-{index}.parquet", row_group_size=row_group_size)
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


def two_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seeds: tuple[int, int]
) -> tuple[pl.DataFrame, pl.DataFrame, list[str]]:
    """Events in folder ``a`` (2 files) and ``b`` (3 files), and the list that gets, for each
    split whose Parquet reader runs a pushed-down query, the name of its folder."""
    from arrowflow.io import files

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = write_events(tmp_path / "a", files=2, seed=seeds[0])
    second = write_events(tmp_path / "b", files=3, seed=seeds[1])
    seen: list[str] = []
    queried = files._FileReader._queried

    def recorded(self, wanted, query):
        seen.append(Path(self.url).parent.name)
        yield from queried(self, wanted, query)

    monkeypatch.setattr(files._FileReader, "_queried", recorded)
    return first, second, seen


def test_a_source_straight_into_an_aggregation_and_a_second_source_are_fused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No chain between a source and its aggregation: the partial alone runs in the scan. A
    second source is fused too when the first one cannot be (it feeds two consumers)."""
    first, second, seen = two_folders(tmp_path, monkeypatch, seeds=(4, 5))
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


@pytest.mark.parametrize(
    ("fmt", "batch_size", "batches"),
    [("parquet", None, 1), ("parquet", 100_000, 6), ("csv", None, 3)],
)
def test_a_pool_reads_a_fused_split_as_one_batch(
    tmp_path: Path, fmt: str, batch_size: int | None, batches: int
) -> None:
    """A split of 600,000 rows: a pool worker cuts an unfused split into batches of 262,144
    rows (3 here); fused, a Parquet split is one query and one batch, unless the run gives a
    batch size, which is kept. A CSV reader does not run the query in its scan, so its split
    keeps the usual batches (the worker runs the query on each)."""
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
    if fmt == "parquet":
        events.write_parquet(tmp_path / "big.parquet", row_group_size=rows)
        flow = af.Flow("one-batch")
        source = flow.read_parquet(str(tmp_path / "big.parquet"))
    else:
        events.write_csv(tmp_path / "big.csv")
        flow = af.Flow("csv-batches")
        source = flow.read_csv(str(tmp_path / "big.csv"), schema=events.schema)
    fused_flow(source).write_parquet(str(tmp_path / "out"))
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
    (tmp_path / "in").mkdir()
    events = write_events(tmp_path / "in", files=3)
    damaged = tmp_path / "in" / "events-1.parquet"
    damage(damaged)
    good = pl.concat([events.slice(0, 5_000), events.slice(10_000, 5_000)])
    flow = af.Flow("damaged")
    source = flow.read_parquet(str(tmp_path / "in" / "*.parquet"), on_corrupt_file="skip")
    fused_flow(source).write_parquet(str(tmp_path / "out"))
    source.side_output("malformed").write_parquet(str(tmp_path / "bad"))
    result = flow.run(workers=workers)
    got = pl.read_parquet(tmp_path / "out" / "*.parquet")
    bad = pl.read_parquet(tmp_path / "bad" / "*.parquet")
    assert_frame_equal_unordered(got, totals(good).collect())
    # the skipped file counts no row: the source read the good files' rows
    by_kind = {row["kind"]: row for row in result.metrics().to_dicts()}
    assert by_kind["source"]["rows_in"] == by_kind["chain"]["rows_in"] == good.height
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


def damage(path: Path) -> None:
    """Garbage over the first page of a Parquet file: its footer still reads."""
    raw = bytearray(path.read_bytes())
    raw[10:60] = b"\xff" * 50
    path.write_bytes(bytes(raw))


def test_a_damaged_file_fails_a_fused_scan_by_default_naming_the_file(
    tmp_path: Path, workers: int
) -> None:
    """Without ``on_corrupt_file="skip"`` the fused read of a damaged file fails the run as
    the unfused read does: the file named, the option to skip it said."""
    write_events(tmp_path, files=2)
    damage(tmp_path / "events-1.parquet")
    flow = af.Flow("damaged-fails")
    with pytest.raises(
        (af.SourceError, af.WorkerError), match=r"cannot read '.*events-1\.parquet'"
    ) as caught:
        fused_flow(flow.read_parquet(str(tmp_path / "*.parquet"))).collect(workers=workers)
    assert "on_corrupt_file='skip'" in str(caught.value)


def test_a_fused_scan_runs_on_the_declared_types(tmp_path: Path, workers: int) -> None:
    """A file's Int32 column read under a declared Int64: the query runs on the cast values,
    so per-key sums that overflow Int32 (values near 2e9) are polars' Int64 sums."""
    rng = np.random.default_rng(12)
    rows = 4_000
    frame = pl.DataFrame(
        {
            "user": rng.permutation(rows) % 13,
            "qty": rng.integers(1_900_000_000, 2_140_000_000, rows).astype(np.int32),
        }
    )
    frame.write_parquet(tmp_path / "wide.parquet", row_group_size=1_000)
    schema = {"user": pl.Int64, "qty": pl.Int64}
    flow = af.Flow("declared")
    got = (
        flow.read_parquet(str(tmp_path / "wide.parquet"), schema=schema)
        .filter(pl.col("qty") > 1_950_000_000)
        .key_by("user")
        .agg(total=pl.col("qty").sum(), n=pl.len())
        .collect(workers=workers)
    )
    expected = (
        frame.cast(schema)  # type: ignore[arg-type]
        .filter(pl.col("qty") > 1_950_000_000)
        .group_by("user")
        .agg(total=pl.col("qty").sum(), n=pl.len())
    )
    assert got.schema["total"] == pl.Int64
    assert expected["total"].max() > 2**31  # type: ignore[operator]
    assert_frame_equal_unordered(got, expected)


def test_a_fused_scan_reads_a_file_whose_name_looks_like_a_glob(tmp_path: Path) -> None:
    """A file the source's pattern listed is opened by its name, brackets and all."""
    events = write_events(tmp_path, files=2)
    (tmp_path / "events-1.parquet").rename(tmp_path / "events[1].parquet")
    flow = af.Flow("brackets")
    got = fused_flow(flow.read_parquet(str(tmp_path / "*.parquet"))).collect(workers=0)
    assert_frame_equal_unordered(got, totals(events).collect())


def test_a_fused_scan_sees_only_the_schemas_columns(tmp_path: Path, workers: int) -> None:
    """A later file with a column the source's schema (the first file's) does not have: the
    query, here a filter over every column, sees the schema's columns only, as unfused."""
    rng = np.random.default_rng(21)
    rows = 3_000
    first = pl.DataFrame(
        {
            "user": rng.permutation(rows) % 17,
            "amount": pl.Series(rng.exponential(30, rows)).set(
                pl.Series(rng.random(rows) < 0.1), None
            ),
        }
    )
    second = first.sample(fraction=1.0, shuffle=True, seed=5).with_columns(
        note=pl.Series(["a"] * rows).set(pl.Series(rng.random(rows) < 0.5), None)
    )
    first.write_parquet(tmp_path / "a.parquet")
    second.write_parquet(tmp_path / "b.parquet")
    job = {"n": pl.len(), "total": pl.col("amount").sum()}
    flow = af.Flow("extra-column")
    got = (
        flow.read_parquet(str(tmp_path / "*.parquet"))
        .filter(pl.all_horizontal(pl.all().is_not_null()))
        .key_by("user")
        .agg(**job)
        .collect(workers=workers)
    )
    both = pl.concat([first, second.select(first.columns)])
    expected = both.filter(pl.col("amount").is_not_null()).group_by("user").agg(**job)
    assert_frame_equal_unordered(got, expected, check_exact=False)


def test_a_pruned_copy_without_columns_counts_rows_with_or_without_a_query(
    tmp_path: Path,
) -> None:
    """The Source contract: a copy pruned to no column still reads every row (zero-column
    frames of the right height), and a query pushed down to its reader runs over those rows."""
    from arrowflow.io.files import FileSource

    events = write_events(tmp_path, files=2)
    source = FileSource("parquet", str(tmp_path / "*.parquet")).with_columns_pruned([])
    splits = source.discover_splits()
    plain, queried = [], []
    for split in splits:
        for batch in source.open_reader(split, None, batch_size=None).batches():
            assert batch.data is not None and batch.data.width == 0
            plain.append(batch.data.height)
        reader = source.open_reader(split, None, batch_size=None)
        assert reader.push_down(lambda rows: rows.select(n=pl.len()))
        for batch in reader.batches():
            assert batch.data is not None and batch.rows_read is not None
            queried.append((batch.rows_read, batch.data["n"].item()))
    assert sum(plain) == events.height
    assert queried == [(5_000, 5_000), (5_000, 5_000)]


@pytest.mark.parametrize("agg_first", [True, False], ids=["agg-first", "select-first"])
def test_a_chain_with_two_consumers_is_left_unfused_and_the_next_source_is_fused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, agg_first: bool
) -> None:
    """A chain whose rows go to an aggregation and to a second consumer cannot run inside the
    scan (the second consumer needs its rows): both get polars' rows. The source after it in
    the flow, straight into an aggregation, is still fused."""
    first, second, seen = two_folders(tmp_path, monkeypatch, seeds=(6, 7))
    flow = af.Flow("two-consumers")
    a = flow.read_parquet(str(tmp_path / "a" / "*.parquet"))
    kept = a.filter(*KEPT).with_columns(**VALUE)
    per_user = kept.key_by("user").agg(**TOTALS)
    values = kept.select("user", "value")
    b = flow.read_parquet(str(tmp_path / "b" / "*.parquet"))
    counts = b.key_by("user").agg(n=pl.len())
    streams = [per_user, values, counts] if agg_first else [values, per_user, counts]
    got = collect_all(*streams, workers=0)
    got_totals, got_values = (got[0], got[1]) if agg_first else (got[1], got[0])
    assert_frame_equal_unordered(got_totals, totals(first).collect())
    assert_frame_equal_unordered(
        got_values, first.filter(*KEPT).with_columns(**VALUE).select("user", "value")
    )
    assert_frame_equal_unordered(got[2], second.group_by("user").agg(n=pl.len()))
    assert seen == ["b"] * 3


def _restore_flow(folder: Path) -> af.Flow:
    flow = af.Flow("fused-restore")
    (
        flow.read_parquet(str(folder / "input" / "*.parquet"))
        .with_columns(value=pl.col("qty") * 2)
        .key_by("user")
        .agg(n=pl.len(), total=pl.col("value").sum())
        .write_parquet(str(folder / "out"))
    )
    return flow


@pytest.mark.parametrize("restored_batch_size", [None, 700], ids=["fused", "unfused"])
def test_a_restore_from_any_checkpoint_mid_split_reads_the_rest_once(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    restored_batch_size: int | None,
    restores_from_each_checkpoint: Any,
) -> None:
    """A file in splits of two row groups (2,200 rows), read in batches of 733 with a
    checkpoint after each: checkpoints fall inside a split, one row before its end
    (3 x 733 = 2,199) and at its end. Restored from each in turn with no batch size (the
    reader runs the query over the rest of its split, from the restored row on) or with one
    (unfused), every key's last emission holds polars' totals: no row of the split, or of
    the next split of the same file, is read twice or skipped."""
    from arrowflow.io import files

    monkeypatch.setattr(files, "ROWS_PER_SPLIT", 2_200)
    skips: list[tuple[int, int]] = []
    init = files._FileReader.__init__

    def recorded(self, source, split, skip, batch_size, **kwargs):
        init(self, source, split, skip, batch_size, **kwargs)
        if "row_groups" in split.info:
            skips.append((skip, split.info["rows"]))

    monkeypatch.setattr(files._FileReader, "__init__", recorded)
    expected: list[pl.DataFrame] = []

    def run(folder: Path, restore: int | None = None) -> af.RunResult:
        if restore is not None:
            skips.clear()
            return _restore_flow(folder).run(
                workers=0,
                checkpoint_dir=str(folder / "ck"),
                restore=restore,
                batch_size=restored_batch_size,
                keep_checkpoints=30,
            )
        (folder / "input").mkdir(parents=True)
        events = write_events(folder / "input", files=1, seed=9, row_group_size=1_100)
        expected[:] = [events.group_by("user").agg(n=pl.len(), total=(pl.col("qty") * 2).sum())]
        return _restore_flow(folder).run(
            workers=0,
            checkpoint_dir=str(folder / "ck"),
            checkpoint_every=af.every_rows(1),
            batch_size=733,
            keep_checkpoints=30,
        )

    restored_skips: set[tuple[int, int]] = set()
    for folder, again in restores_from_each_checkpoint(run, tmp_path, at_least=8):
        restored_skips.update(skips)
        # the source counts the rows after each restored position, in one batch per split
        # with rows left (fused) or in batches of 700 (unfused)
        source = again.metrics().filter(pl.col("kind") == "source").row(0, named=True)
        assert source["rows_in"] == sum(rows - skip for skip, rows in skips)
        step = restored_batch_size or 2_200
        assert source["batches_in"] == sum(-(-(rows - skip) // step) for skip, rows in skips)
        parts = sorted((folder / "out").glob("part-*.parquet"))
        updates = pl.concat([pl.read_parquet(p) for p in parts])
        latest = updates.with_row_index("_i").group_by("user").last().drop("_i")
        assert_frame_equal_unordered(latest, expected[0])
    # the restores began mid-split, one row before a split's end and at its end
    assert {(733, 2_200), (1_466, 2_200), (2_199, 2_200), (2_200, 2_200)} <= restored_skips
