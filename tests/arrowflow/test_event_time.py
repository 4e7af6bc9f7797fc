"""Event time does not depend on scheduling: per-split watermarks (arrowflow._foundation.watermarks).

Every input file here covers the *whole* time span, its rows shuffled within a bounded
out-of-orderness, with some rows pushed minutes back. Windows, late rows and their counts must
be the same for the in-process executor and 1, 2 or 3 workers, for any batch size and any
file order, and equal to an independent polars reference:

- late rows: for each split (a Parquet row-group range, a text file) in its own row order, a
  row is late when its window's end plus the allowed lateness is at or behind the running
  maximum of the event times *before it in that split* minus the delay;
- windows: the other rows, grouped by key and ``ts.dt.truncate(size)``.

On the code before per-split watermarks, a worker that read one file and then the next made
most of the second file late (``test_a_second_file_over_the_same_hours_is_not_late``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

import arrowflow as af
import arrowflow.io.files as files_module
from arrowflow.io.memory import CollectSink

START_MS = 1_700_000_000_000
SPAN_MS = 2 * 3_600_000
ROW_GROUP = 2000
ROWS_PER_SPLIT = 4000  # two row groups per split
DELAY_MS = 5000
SIZE_MS = 60_000
COLUMNS = ["ts", "user", "amount", "id"]


def part(n: int, seed: int, *, jitter_ms: int = 3000, pushed_back: int = 40) -> pl.DataFrame:
    """``n`` events over the whole span, out of order by under ``jitter_ms`` (less than the
    delay), and ``pushed_back`` of them one to ten minutes behind their neighbours."""
    rng = np.random.default_rng(seed)
    ms = np.sort(rng.integers(0, SPAN_MS, n)) + rng.integers(0, jitter_ms, n)
    rows = rng.choice(np.arange(n // 10, n), pushed_back, replace=False)
    ms[rows] -= rng.integers(60_000, 600_000, pushed_back)
    return pl.DataFrame(
        {
            "ts": pl.Series(START_MS + ms).cast(pl.Datetime("ms")),
            "user": rng.integers(0, 30, n),
            "amount": np.round(rng.exponential(30, n), 2),
            "id": np.arange(n, dtype=np.int64) + seed * 1_000_000,
        }
    )


def write_parts(
    folder: Path, parts: dict[str, pl.DataFrame], *, statistics: bool = True
) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, frame in parts.items():
        path = folder / f"{name}.parquet"
        pq.write_table(
            frame.to_arrow(), path, row_group_size=ROW_GROUP, write_statistics=statistics
        )
        paths.append(str(path))
    return paths


def with_splits(parts: dict[str, pl.DataFrame], rows_per_split: int | None) -> pl.DataFrame:
    """All rows, in each file's order, with the split they belong to (a file, or its
    ``rows_per_split``-row pieces: Parquet row-group ranges)."""
    frames = []
    for name, frame in parts.items():
        split = (
            pl.lit(name)
            if rows_per_split is None
            else (pl.lit(name + "#") + (pl.int_range(pl.len()) // rows_per_split).cast(pl.String))
        )
        frames.append(frame.with_columns(split=split))
    return pl.concat(frames)


def reference_late(
    rows: pl.DataFrame, *, delay_ms: int, end: pl.Expr, lateness_ms: int = 0
) -> pl.Series:
    """Per row: is it late within its own split (``rows`` from :func:`with_splits`, in each
    split's order; ``end``: the window end in epoch milliseconds)?"""
    rows = rows.with_columns(
        _split_watermark=pl.col("ts").dt.epoch("ms").cum_max().shift(1).over("split") - delay_ms
    )
    return rows.select(
        (end + lateness_ms <= pl.col("_split_watermark")).fill_null(False)
    ).to_series()


def tumbling_end(size_ms: int) -> pl.Expr:
    return (pl.col("ts").dt.epoch("ms") // size_ms) * size_ms + size_ms


def reference_windows(on_time: pl.DataFrame, size: str) -> pl.DataFrame:
    return (
        on_time.with_columns(window_start=pl.col("ts").dt.truncate(size))
        .group_by("user", "window_start")
        .agg(n=pl.len(), total=pl.col("amount").sum())
        .with_columns(window_end=pl.col("window_start").dt.offset_by(size))
    )


def run(
    paths: str | list[str],
    *,
    workers: int,
    batch_size: int | None,
    fmt: str = "parquet",
    between: bool = True,
    window: af.WindowSpec | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame, af.RunResult]:
    """Windows, late rows and the result of the test flow."""
    flow = af.Flow("event-time")
    if fmt == "parquet":
        events = flow.read_parquet(paths)
    else:
        events = flow.read_ndjson(
            paths,
            schema={
                "ts": pl.Datetime("ms"),
                "user": pl.Int64,
                "amount": pl.Float64,
                "id": pl.Int64,
            },
        )
    stream = events.with_watermark("ts", delay=f"{DELAY_MS}ms")
    if between:  # the per-row split watermark travels through a filter and a select
        stream = stream.filter(pl.col("amount") >= 1.0).select(*COLUMNS)
    windowed = (
        stream.key_by("user")
        .window(window or af.tumbling("60s"))
        .agg(n=pl.len(), total=pl.col("amount").sum(), name="per_minute")
    )
    out, late = CollectSink(), CollectSink()
    windowed.write_to(out, name="windows")
    windowed.side_output("late").write_to(late, name="late")
    result = flow.run(workers=workers, batch_size=batch_size)
    got = pl.concat(result.outputs["windows"]) if result.outputs["windows"] else pl.DataFrame()
    late_rows = (
        pl.concat(result.outputs["late"])
        if result.outputs["late"]
        else pl.DataFrame(
            schema={**dict.fromkeys(COLUMNS), "window_start": None, "window_end": None}
        )
    )
    return got, late_rows, result


def assert_windows_equal(got: pl.DataFrame, expected: pl.DataFrame) -> None:
    keys = ["user", "window_start"]
    assert got.select(keys).is_duplicated().sum() == 0, "a window fired twice"
    joined = got.join(expected, on=keys, how="full", coalesce=True)
    assert got.height == expected.height == joined.height, (
        f"{got.height} windows, polars: {expected.height}"
    )
    assert (joined["n"] == joined["n_right"]).all(), "counts differ"
    assert (joined["window_end"] == joined["window_end_right"]).all()
    assert (joined["total"] - joined["total_right"]).abs().max() < 1e-6, "sums differ"


def check(
    parts: dict[str, pl.DataFrame],
    got: pl.DataFrame,
    late: pl.DataFrame,
    result: af.RunResult,
    *,
    rows_per_split: int | None,
    between: bool = True,
) -> int:
    """Compare a run with the references; returns the number of late rows."""
    rows = with_splits(parts, rows_per_split)
    rows = rows.with_columns(
        late=reference_late(rows, delay_ms=DELAY_MS, end=tumbling_end(SIZE_MS))
    )
    if between:
        rows = rows.filter(
            pl.col("amount") >= 1.0
        )  # judged before the filter, on the split's order
    expected_late = rows.filter("late")
    assert expected_late.height >= 10, "the data must have rows late within their split"
    assert expected_late.height < rows.height // 10, "only the rows pushed back may be late"
    assert sorted(late["id"].to_list()) == sorted(expected_late["id"].to_list()), (
        "not the late rows of the reference"
    )
    assert late.select("window_start", "window_end").dtypes == [pl.Datetime("ms")] * 2
    missed = late.join(
        expected_late.with_columns(window_start=pl.col("ts").dt.truncate("60s")), on="id"
    )
    assert (missed["window_start"] == missed["window_start_right"]).all(), (
        "a late row names the wrong window"
    )
    assert_windows_equal(got, reference_windows(rows.filter(~pl.col("late")), "60s"))
    metrics = result.metrics().filter(pl.col("kind") == "window")
    assert int(metrics["late"].sum()) == late.height, "the late counter"
    assert int(got["n"].sum()) + late.height == rows.height, "every event counted once"
    return late.height


@pytest.fixture
def small_splits(monkeypatch: pytest.MonkeyPatch) -> int:
    """Several Parquet splits per file (row-group ranges), as large files have."""
    monkeypatch.setattr(files_module, "ROWS_PER_SPLIT", ROWS_PER_SPLIT)
    return ROWS_PER_SPLIT


def test_a_second_file_over_the_same_hours_is_not_late(tmp_path: Path) -> None:
    """One worker reads both files one after the other: the second must not be judged against
    the first (on the code before per-split watermarks almost all of it went to ``late``)."""
    parts = {"a": part(6000, 1, pushed_back=20), "b": part(6000, 2, pushed_back=20)}
    paths = write_parts(tmp_path / "in", parts)
    got, late, result = run(paths, workers=0, batch_size=None, between=False)
    assert late.height <= 40, (
        f"{late.height} of 12,000 rows late: the second file was judged by the first"
    )
    check(parts, got, late, result, rows_per_split=None, between=False)


CASES = [  # (workers, batch_size, file order)
    (0, None, "glob"),
    (0, 1000, "reversed"),
    (1, 7777, "glob"),
    (2, 1000, "reversed"),
    (3, 7777, "glob"),
]


@pytest.mark.parametrize(("workers", "batch_size", "order"), CASES)
def test_windows_and_late_rows_do_not_depend_on_scheduling(
    tmp_path: Path, small_splits: int, workers: int, batch_size: int | None, order: str
) -> None:
    parts = {f"part-{i}": part(12_000, 10 + i) for i in range(3)}
    paths = write_parts(tmp_path / "in", parts)
    source = str(tmp_path / "in" / "*.parquet") if order == "glob" else list(reversed(paths))
    got, late, result = run(source, workers=workers, batch_size=batch_size)
    check(parts, got, late, result, rows_per_split=small_splits)


@pytest.mark.soak
@pytest.mark.parametrize("order", ["glob", "reversed"])
@pytest.mark.parametrize("batch_size", [1000, 7777, None])
@pytest.mark.parametrize("workers", [0, 1, 2, 3])
def test_windows_and_late_rows_do_not_depend_on_scheduling_sweep(
    tmp_path: Path, small_splits: int, workers: int, batch_size: int | None, order: str
) -> None:
    parts = {f"part-{i}": part(40_000, 20 + i, pushed_back=200) for i in range(4)}
    paths = write_parts(tmp_path / "in", parts)
    source = str(tmp_path / "in" / "*.parquet") if order == "glob" else list(reversed(paths))
    got, late, result = run(source, workers=workers, batch_size=batch_size)
    check(parts, got, late, result, rows_per_split=small_splits)


@pytest.mark.parametrize(("workers", "batch_size"), [(0, 1000), (2, None)])
def test_files_without_statistics_hold_the_watermark_until_they_start(
    tmp_path: Path, small_splits: int, workers: int, batch_size: int | None
) -> None:
    """No Parquet statistics: no bound is known, so each split holds event time back until it
    starts; the results are the same as with them."""
    parts = {f"part-{i}": part(8000, 30 + i) for i in range(3)}
    paths = write_parts(tmp_path / "in", parts, statistics=False)
    assert pq.read_metadata(paths[0]).row_group(0).column(0).statistics is None
    got, late, result = run(list(reversed(paths)), workers=workers, batch_size=batch_size)
    check(parts, got, late, result, rows_per_split=small_splits)


@pytest.mark.parametrize(("workers", "batch_size"), [(0, 777), (2, None)])
def test_ndjson_files_are_each_one_split(
    tmp_path: Path, workers: int, batch_size: int | None
) -> None:
    parts = {f"part-{i}": part(6000, 40 + i) for i in range(3)}
    folder = tmp_path / "in"
    folder.mkdir()
    for name, frame in parts.items():
        frame.with_columns(pl.col("ts").dt.strftime("%Y-%m-%dT%H:%M:%S%.3f")).write_ndjson(
            folder / f"{name}.ndjson"
        )
    got, late, result = run(
        str(folder / "*.ndjson"), workers=workers, batch_size=batch_size, fmt="ndjson"
    )
    check(parts, got, late, result, rows_per_split=None)


@pytest.mark.parametrize("workers", [0, 2])
def test_sliding_and_session_windows_do_not_depend_on_scheduling(
    tmp_path: Path, small_splits: int, workers: int, polars_sessions: Callable[..., pl.DataFrame]
) -> None:
    parts = {f"part-{i}": part(8000, 50 + i, pushed_back=30) for i in range(3)}
    paths = write_parts(tmp_path / "in", parts)
    rows = with_splits(parts, small_splits)

    # Sliding 60 s every 20 s: one row per (event, window); late per window it misses.
    got, late, _ = run(
        list(reversed(paths)),
        workers=workers,
        batch_size=1500,
        between=False,
        window=af.sliding("60s", every="20s"),
    )
    # The split watermark of each row comes from its split's order; then each row is in 3 windows.
    marked = rows.with_columns(
        _wm=pl.col("ts").dt.epoch("ms").cum_max().shift(1).over("split") - DELAY_MS
    )
    assigned = pl.concat(
        [
            marked.with_columns(
                window_start=pl.col("ts").dt.truncate("20s") - pl.duration(seconds=20 * j)
            ).filter(pl.col("ts") < pl.col("window_start") + pl.duration(seconds=60))
            for j in range(3)
        ]
    )
    end = (pl.col("window_start") + pl.duration(seconds=60)).dt.epoch("ms")
    assigned = assigned.with_columns(late=(end <= pl.col("_wm")).fill_null(False))
    assert assigned.filter("late").height > 10
    assert sorted(zip(late["id"], late["window_start"], strict=True)) == sorted(
        zip(*assigned.filter("late").select("id", "window_start"), strict=True)
    )
    expected = (
        assigned.filter(~pl.col("late"))
        .group_by("user", "window_start")
        .agg(n=pl.len(), total=pl.col("amount").sum())
        .with_columns(window_end=pl.col("window_start") + pl.duration(seconds=60))
    )
    assert_windows_equal(got, expected)

    # Sessions with a 90 s gap: a row is late when ts + gap is at or behind its split watermark.
    got, late, _ = run(
        paths, workers=workers, batch_size=2500, between=False, window=af.session(gap="90s")
    )
    rows = rows.with_columns(
        late=reference_late(rows, delay_ms=DELAY_MS, end=pl.col("ts").dt.epoch("ms") + 90_000)
    )
    assert sorted(late["id"].to_list()) == sorted(rows.filter("late")["id"].to_list())
    sessions = polars_sessions(rows.filter(~pl.col("late")), 90)
    assert_windows_equal(got, sessions)


def test_the_enumerator_hands_out_splits_in_event_time_order(
    tmp_path: Path, small_splits: int
) -> None:
    """Bounds from the Parquet statistics; splits without a bound first (they hold the
    watermark until they start); each hand-out carries the floor of what is still pending."""
    from arrowflow._foundation.watermarks import IDLE, NO_WATERMARK
    from arrowflow._runtime.coordinator import JobCoordinator

    late_file = part(8000, 60).with_columns(pl.col("ts") + pl.duration(hours=5))
    early_file = part(8000, 61)
    write_parts(tmp_path / "in", {"late": late_file, "early": early_file})
    write_parts(tmp_path / "in", {"nostats": part(4000, 62)}, statistics=False)
    flow = af.Flow("order")
    flow.read_parquet(str(tmp_path / "in" / "*.parquet")).with_watermark("ts").key_by(
        "user"
    ).window(af.tumbling("60s")).agg(n=pl.len()).write_to(CollectSink())
    plan = flow.plan()
    source = plan.sources[0].id
    coordinator = JobCoordinator(
        plan, 1, storage=None, trigger=None, restored=None, max_parallelism=128
    )
    handed = []
    while (item := coordinator.hand_out(source, 0)) is not None:
        split, _, event_time = item
        handed.append((split.split_id.rsplit("/", 1)[1], event_time["lower"], event_time["floor"]))
    names = [name for name, _, _ in handed]
    assert names == [
        "nostats.parquet#rg0-1",
        "early.parquet#rg0-1",
        "early.parquet#rg2-3",
        "late.parquet#rg0-1",
        "late.parquet#rg2-3",
    ]
    assert handed[0][1] is None, "no statistics: no bound"
    us = pl.col("ts").dt.epoch("us")
    for frame, first in ((early_file, 1), (late_file, 3)):
        for piece in range(2):
            low = frame.slice(piece * ROWS_PER_SPLIT, ROWS_PER_SPLIT).select(us.min()).item()
            assert handed[first + piece][1] == low, "the bound is the split's minimum"
    floors = [floor for _, _, floor in handed]
    assert floors[:-1] == [lower for _, lower, _ in handed[1:]], (
        "the floor is the next pending bound"
    )
    assert floors[-1] == IDLE
    assert NO_WATERMARK not in floors


_RESTORE_JOB = textwrap.dedent("""
    import json, sys
    import polars as pl
    import arrowflow as af
    import arrowflow.io.files as files

    config = json.loads(sys.argv[1])
    files.ROWS_PER_SPLIT = config["rows_per_split"]
    flow = af.Flow("event-time-restore")
    windowed = (flow.read_parquet(config["input"] + "/*.parquet")
                .with_watermark("ts", delay="5s")
                .key_by("user").window(af.tumbling("60s"))
                .agg(n=pl.len(), total=pl.col("amount").sum(), name="per_minute"))
    windowed.write_parquet(config["out"])
    windowed.side_output("late").write_parquet(config["late"])
    result = flow.run(workers=config["workers"], checkpoint_dir=config["ckpt"],
                      checkpoint_every=af.every_rows(5_000), batch_size=config["batch_size"], max_restarts=0)
    print("RESULT " + json.dumps({"restored_from": result.restored_from}))
""")


@pytest.mark.parametrize(
    ("first", "second", "fault"), [(0, 2, "after_manifest@3"), (2, 0, "after_manifest@2")]
)
def test_kill_9_and_restore_give_the_late_rows_of_an_uninterrupted_run(
    tmp_path: Path, first: int, second: int, fault: str
) -> None:
    """A split in progress at the checkpoint keeps its running maximum (in sources.json, handed
    back with the split): after a kill -9 and a restore onto another number of workers, the
    windows and the late rows are exactly the reference's."""
    # A row pushed 3 minutes back at the start of every batch (positions are batch ends): the
    # first row a restored split reads is late only against the running maximum restored.
    boundary = (pl.int_range(pl.len()) % 1000 == 0) & (pl.int_range(pl.len()) % ROWS_PER_SPLIT != 0)
    parts = {
        f"part-{i}": part(9000, 70 + i, pushed_back=20).with_columns(
            ts=pl.when(boundary).then(pl.col("ts") - pl.duration(minutes=3)).otherwise(pl.col("ts"))
        )
        for i in range(3)
    }
    write_parts(tmp_path / "in", parts)
    script = tmp_path / "job.py"
    script.write_text(_RESTORE_JOB)
    config = {
        "input": str(tmp_path / "in"),
        "out": str(tmp_path / "out"),
        "late": str(tmp_path / "late"),
        "ckpt": str(tmp_path / "ckpt"),
        "rows_per_split": ROWS_PER_SPLIT,
        "batch_size": 1000,
    }

    def launch(workers: int, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(script), json.dumps({**config, "workers": workers})],
            capture_output=True,
            text=True,
            timeout=180,
            env={**os.environ, **env},
        )

    crashed = launch(first, {"ARROWFLOW_FAULTS": fault})
    assert crashed.returncode != 0 and "RESULT" not in crashed.stdout, (
        "the fault point was never reached"
    )
    manifests = [
        json.loads(p.read_text()) for p in sorted((tmp_path / "ckpt").glob("chk-*/_MANIFEST.json"))
    ]
    in_progress = [m for m in manifests if m["sources"]["read_parquet"].get("split_tops")]
    assert in_progress, "no checkpoint recorded a split in progress with its running maximum"
    resumed = launch(second, {})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert '"restored_from": null' not in resumed.stdout, "the second run did not restore"

    got = pl.read_parquet(tmp_path / "out" / "*.parquet")
    late_files = sorted((tmp_path / "late").glob("*.parquet"))
    late = (
        pl.concat([pl.read_parquet(f) for f in late_files])
        if late_files
        else pl.DataFrame(schema={"id": pl.Int64})
    )
    rows = with_splits(parts, ROWS_PER_SPLIT)
    rows = rows.with_columns(
        late=reference_late(rows, delay_ms=DELAY_MS, end=tumbling_end(SIZE_MS))
    )
    assert rows.filter("late").height >= 10
    assert late["id"].is_duplicated().sum() == 0, "a late row was committed twice"
    assert sorted(late["id"].to_list()) == sorted(rows.filter("late")["id"].to_list())
    assert_windows_equal(got, reference_windows(rows.filter(~pl.col("late")), "60s"))


@pytest.mark.parametrize("idle_timeout", [None, "300ms"])
def test_a_tailed_split_without_rows_holds_event_time_until_it_idles(
    tmp_path: Path, idle_timeout: str | None
) -> None:
    """Unbounded sources keep per-split watermarks: of two tailed files, the one that has no
    rows yet holds the windows of the other back, unless ``idle_timeout`` lets it go idle."""
    import time

    busy, quiet = tmp_path / "busy.jsonl", tmp_path / "quiet.jsonl"
    frame = part(3000, 80, pushed_back=0)
    frame.with_columns(pl.col("ts").dt.strftime("%Y-%m-%dT%H:%M:%S%.3f")).write_ndjson(busy)
    quiet.write_text("")
    schema = {"ts": pl.Datetime("ms"), "user": pl.Int64, "amount": pl.Float64, "id": pl.Int64}
    flow = af.Flow("tailed")
    tailed = flow.tail(str(busy), schema=schema, poll_interval="50ms").union(
        flow.tail(str(quiet), schema=schema, poll_interval="50ms", name="quiet_tail")
    )
    (
        tailed.with_watermark("ts", delay="5s", idle_timeout=idle_timeout)
        .key_by("user")
        .window(af.tumbling("60s"))
        .agg(n=pl.len())
        .write_parquet(str(tmp_path / "windows"))
    )
    job = flow.start(
        workers=0, checkpoint_dir=str(tmp_path / "ck"), checkpoint_every="200ms", restore=None
    )
    try:
        deadline = time.monotonic() + 20
        committed = 0
        while time.monotonic() < deadline:
            time.sleep(0.3)
            committed = len(list((tmp_path / "windows").glob("*.parquet")))
            if committed and idle_timeout is not None:
                break
            if idle_timeout is None and time.monotonic() > deadline - 17:
                break  # 3 s with every row read: long enough for windows to have fired
    finally:
        job.stop()
    fired = pl.read_parquet(tmp_path / "windows" / "*.parquet") if committed else pl.DataFrame()
    if idle_timeout is None:
        assert fired.height == 0, "an empty tailed split must hold event time back"
    else:
        assert fired.height > 0, "the quiet split went idle: the busy split's windows fire"
        newest = frame.select(pl.col("ts").max() - pl.duration(seconds=5)).item()
        assert fired["window_end"].max() <= newest, (
            "only windows the busy split's watermark passed fired"
        )
        on_time = frame.filter(pl.col("ts").dt.truncate("60s") + pl.duration(seconds=60) <= newest)
        assert int(fired["n"].sum()) == on_time.height, "every row of a fired window is in it"


def test_the_split_watermark_stays_internal(tmp_path: Path) -> None:
    """The per-row split watermark reaches the windows only: a sink of the watermarked stream,
    a keyed aggregation and a map_batches function never see it. After map_batches (which may
    reorder rows) each row is judged by its batch's first row: the split watermark before the
    batch, so late rows are those of the batch-by-batch rule, still the same on any executor."""
    parts = {f"part-{i}": part(6000, 90 + i) for i in range(2)}
    paths = write_parts(tmp_path / "in", parts)
    seen: list[list[str]] = []

    def identity(frame: pl.DataFrame) -> pl.DataFrame:
        seen.append(frame.columns)
        return frame

    results = []
    for workers in (0, 2):
        flow = af.Flow("internal")
        stream = flow.read_parquet(paths).with_watermark("ts", delay=f"{DELAY_MS}ms")
        raw, totals, windows, late = CollectSink(), CollectSink(), CollectSink(), CollectSink()
        stream.write_to(raw, name="raw")
        stream.key_by("user").agg(n=pl.len(), name="totals").write_to(totals, name="totals_out")
        windowed = (
            stream.map_batches(identity)
            .key_by("user")
            .window(af.tumbling("60s"))
            .agg(n=pl.len(), name="w")
        )
        windowed.write_to(windows, name="windows")
        windowed.side_output("late").write_to(late, name="late")
        result = flow.run(workers=workers, batch_size=1000)
        raw_rows = pl.concat(result.outputs["raw"])
        assert raw_rows.columns == COLUMNS, "the internal column reached a sink"
        assert int(pl.concat(result.outputs["totals_out"])["n"].sum()) == 12_000
        results.append((pl.concat(result.outputs["late"]), pl.concat(result.outputs["windows"])))
    assert all(columns == COLUMNS for columns in seen), (
        "a map_batches function saw the internal column"
    )
    rows = with_splits(parts, None).with_columns(batch=pl.int_range(pl.len()).over("split") // 1000)
    batch_top = rows.group_by("split", "batch", maintain_order=True).agg(
        top=pl.col("ts").dt.epoch("ms").max()
    )
    batch_top = batch_top.with_columns(
        before=pl.col("top").cum_max().shift(1).over("split") - DELAY_MS
    )
    rows = rows.join(batch_top, on=["split", "batch"], how="left")
    expected = rows.filter((tumbling_end(SIZE_MS) <= pl.col("before")).fill_null(False))
    assert expected.height >= 10
    for late, windows in results:
        assert sorted(late["id"].to_list()) == sorted(expected["id"].to_list())
        assert int(windows["n"].sum()) + late.height == 12_000


def test_a_restore_refuses_running_maxima_that_are_not_numbers(tmp_path: Path) -> None:
    """split_tops read back from a checkpoint are checked before use."""
    from arrowflow._runtime.checkpoints import Manifest
    from arrowflow.errors import CheckpointError

    paths = write_parts(tmp_path / "in", {"a": part(3000, 95)})

    def build() -> af.Flow:
        flow = af.Flow("tops")
        flow.read_parquet(paths).with_watermark("ts").key_by("user").window(af.tumbling("60s")).agg(
            n=pl.len()
        ).write_parquet(str(tmp_path / "out"))
        return flow

    build().run(workers=0, checkpoint_dir=str(tmp_path / "ck"), restore=None)
    manifest_path = sorted((tmp_path / "ck").glob("chk-*/_MANIFEST.json"))[-1]
    body = json.loads(manifest_path.read_text())
    body.pop("checksum")
    body.pop("format", None)
    body["final"] = False
    body["sources"]["read_parquet"]["split_tops"] = {"a.parquet#rg0-0": {"watermark": "12:00"}}
    manifest_path.write_bytes(Manifest(**body).to_bytes())
    with pytest.raises(
        CheckpointError, match=r"split_tops of source 'read_parquet'.*'12:00'.*restore=None"
    ):
        build().run(workers=0, checkpoint_dir=str(tmp_path / "ck"), restore="latest")


@pytest.mark.parametrize("workers", [0, 2])
def test_late_rows_nobody_reads_are_counted_not_a_crash(workers: int) -> None:
    """A window whose ``late`` output has no consumer reads only the columns its aggregates
    need (projection push-down); a late row is then counted as unconsumed. On the code before
    this fix the first late row failed the job (``unable to find column 'amount'``)."""
    frame = part(6000, 97)
    rows = with_splits({"only": frame}, None)
    expected = int(reference_late(rows, delay_ms=DELAY_MS, end=tumbling_end(SIZE_MS)).sum())
    assert expected >= 10
    flow = af.Flow("unread-late")
    out = CollectSink()
    flow.from_polars(frame, splits=1).with_watermark("ts", delay=f"{DELAY_MS}ms").key_by(
        "user"
    ).window(af.tumbling("60s")).agg(n=pl.len(), name="w").write_to(out, name="out")
    result = flow.run(workers=workers, batch_size=500)
    window = result.metrics().filter(pl.col("kind") == "window")
    assert int(window["late"].sum()) == expected
    assert int(window["unconsumed"].sum()) == expected, (
        "late rows nobody reads are counted, never silently dropped"
    )
    assert int(pl.concat(result.outputs["out"])["n"].sum()) == frame.height - expected
