"""Event-time windows against polars: tumbling, sliding and session windows, late events,
every executor, several batch sizes and state backends, and a kill -9 with restore.

References are plain polars over the whole input: truncate-and-group for tumbling and
sliding windows, sort-and-split for sessions. Late events are computed per split, row by
row: a row is late when its window is behind the running maximum of the event times of the
rows before it in its split, minus the delay.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import arrowflow as af
from arrowflow._runtime.checkpoints import CheckpointStorage
from arrowflow.errors import PlanError, SchemaError
from arrowflow.io.memory import CollectSink
from arrowflow.testing import assert_frame_equal_unordered

KEY = "user"


def events(
    n: int, users: int = 40, *, seed: int = 7, span_ms: int = 3_600_000, jitter_ms: int = 4000
) -> pl.DataFrame:
    """Mostly increasing event times over ``span_ms``, out of order by less than ``jitter_ms``."""
    rng = np.random.default_rng(seed)
    ts = np.arange(n, dtype=np.int64) * span_ms // n + rng.integers(0, jitter_ms, n)
    return pl.DataFrame(
        {
            "ts": pl.Series(ts).cast(pl.Datetime("ms")),
            KEY: rng.integers(0, users, n),
            "amount": np.round(rng.exponential(30, n), 2),
        }
    )


AGGS = {
    "n": pl.len(),
    "total": pl.col("amount").sum(),
    "top": pl.col("amount").max(),
    "avg": pl.col("amount").mean(),
}


def reference_tumbling(df: pl.DataFrame, size: str) -> pl.DataFrame:
    return (
        df.with_columns(window_start=pl.col("ts").dt.truncate(size))
        .group_by(KEY, "window_start")
        .agg(**AGGS)
        .with_columns(window_end=pl.col("window_start").dt.offset_by(size))
    )


def reference_sliding(df: pl.DataFrame, size_s: int, every_s: int) -> pl.DataFrame:
    parts = []
    for j in range(-(-size_s // every_s)):
        start = pl.col("ts").dt.truncate(f"{every_s}s") - pl.duration(seconds=j * every_s)
        parts.append(
            df.with_columns(window_start=start).filter(
                pl.col("ts") < pl.col("window_start") + pl.duration(seconds=size_s)
            )
        )
    return (
        pl.concat(parts)
        .group_by(KEY, "window_start")
        .agg(**AGGS)
        .with_columns(window_end=pl.col("window_start") + pl.duration(seconds=size_s))
    )


def reference_session(df: pl.DataFrame, gap_s: int) -> pl.DataFrame:
    gap = pl.duration(seconds=gap_s)
    ordered = df.sort(KEY, "ts")
    session = (
        ((pl.col("ts").diff() >= gap) | pl.col(KEY).ne(pl.col(KEY).shift(1)))
        .fill_null(True)
        .cum_sum()
    )
    return (
        ordered.with_columns(session=session)
        .group_by(KEY, "session")
        .agg(window_start=pl.col("ts").min(), window_end=pl.col("ts").max() + gap, **AGGS)
        .drop("session")
    )


def assert_windows_equal(got: pl.DataFrame, expected: pl.DataFrame, what: str) -> None:
    keys = [KEY, "window_start"]
    assert got.columns[:3] == [KEY, "window_start", "window_end"], got.columns
    assert got.select(keys).is_duplicated().sum() == 0, f"{what}: a window was emitted twice"
    expected = expected.select(got.columns).sort(keys)
    got = got.sort(keys)
    assert got.height == expected.height, (
        f"{what}: {got.height} windows, polars says {expected.height}"
    )
    assert got.select(*keys, "window_end", "n", "top").equals(
        expected.select(*keys, "window_end", "n", "top").cast(
            got.select(*keys, "window_end", "n", "top").schema
        )
    ), what
    for column in ("total", "avg"):
        assert (got[column] - expected[column]).abs().max() < 1e-6, f"{what}: {column} differs"


def run_windows(
    df: pl.DataFrame,
    windows: dict[str, af.WindowSpec],
    *,
    workers: int,
    state: str = "memory",
    batch_size: int | None = None,
    splits: int | None = 3,
    delay: str = "5s",
    lateness: str | None = None,
) -> tuple[dict[str, pl.DataFrame], af.RunResult]:
    flow = af.Flow("windows")
    stream = flow.from_polars(df, splits=splits).with_watermark("ts", delay=delay)
    sinks: dict[str, CollectSink] = {}
    for name, spec in windows.items():
        windowed = stream.key_by(KEY).window(spec, allowed_lateness=lateness).agg(**AGGS, name=name)
        sinks[name] = CollectSink()
        windowed.write_to(sinks[name], name=f"{name}-out")
        sinks[f"{name}.late"] = CollectSink()
        windowed.side_output("late").write_to(sinks[f"{name}.late"], name=f"{name}-late")
    result = flow.run(workers=workers, state=state, batch_size=batch_size)
    frames = {}
    for name in sinks:
        parts = (
            result.outputs.get(f"{name}-out" if not name.endswith(".late") else f"{name[:-5]}-late")
            or []
        )
        frames[name] = pl.concat(parts) if parts else pl.DataFrame()
    return frames, result


def test_windows_equal_polars_for_every_executor(workers: int) -> None:
    df = events(12_000)
    batch = {0: 997, 1: 1500, 2: 613}.get(workers, 800)
    windows = {
        "tumbling": af.tumbling("60s"),
        "sliding": af.sliding("60s", every="20s"),
        "session": af.session(gap="20s"),
    }
    frames, result = run_windows(df, windows, workers=workers, batch_size=batch)
    assert_windows_equal(frames["tumbling"], reference_tumbling(df, "60s"), "tumbling")
    assert_windows_equal(frames["sliding"], reference_sliding(df, 60, 20), "sliding")
    assert_windows_equal(frames["session"], reference_session(df, 20), "session")
    for name in windows:
        assert frames[f"{name}.late"].height == 0, f"{name}: no event is later than the delay"
    fired = result.metrics().filter(pl.col("kind") == "window")
    assert fired["late"].sum() == 0
    assert fired["windows_open"].sum() == 0, "every window fires at the end of a bounded input"


@pytest.mark.parametrize("state", ["arrow", "lmdb", "sql"])
def test_windows_equal_polars_on_every_state_backend(state: str) -> None:
    df = events(6000, users=25, seed=3)
    windows = {"tumbling": af.tumbling("60s"), "session": af.session(gap="15s")}
    frames, _ = run_windows(df, windows, workers=0, state=state, batch_size=701)
    assert_windows_equal(frames["tumbling"], reference_tumbling(df, "60s"), f"tumbling on {state}")
    assert_windows_equal(frames["session"], reference_session(df, 15), f"session on {state}")


@pytest.mark.parametrize("state", ["memory", "lmdb"])
def test_a_nan_key_is_one_key_of_its_windows(state: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A float key NaN is one key, as in polars' group_by, also for windows spilled to the
    store and met again in later batches (the window index is matched by joins). Coverage:
    it passed before the index joins became NaN-safe too (polars' plain join matched here)."""
    import arrowflow._runtime.window_op as window_op

    monkeypatch.setattr(
        window_op, "BUFFER_ROWS", 1
    )  # in-process: every window goes through the store
    n = 2000
    rng = np.random.default_rng(1)
    key = rng.integers(0, 5, n).astype(float)
    key[key == 0] = np.nan
    ts = pl.datetime_range(
        pl.datetime(2024, 1, 1),
        pl.datetime(2024, 1, 1) + pl.duration(seconds=n - 1),
        "1s",
        eager=True,
        time_unit="ms",
    )
    df = pl.DataFrame({"ts": ts, "k": key, "x": rng.integers(0, 9, n)}).sample(
        fraction=1.0, shuffle=True, seed=2
    )
    got = (
        af.Flow("nan-windows")
        .from_polars(df)
        .with_watermark("ts", delay="1h")
        .key_by("k")
        .window(af.tumbling("60s"))
        .agg(n=pl.len(), total=pl.col("x").sum())
        .collect(state=state, workers=0, batch_size=7)
    )
    expected = df.group_by("k", pl.col("ts").dt.truncate("60s").alias("window_start")).agg(
        n=pl.len(), total=pl.col("x").sum()
    )
    assert (
        got.filter(pl.col("k").is_nan()).height == expected.filter(pl.col("k").is_nan()).height > 30
    )
    assert_frame_equal_unordered(got.select(expected.columns), expected)


@pytest.mark.parametrize("batch_size", [1, 64, None])
def test_any_batch_size_gives_the_same_windows(batch_size: int | None) -> None:
    df = events(600 if batch_size == 1 else 5000, users=10, seed=11)
    frames, _ = run_windows(
        df,
        {"tumbling": af.tumbling("30s"), "sliding": af.sliding("30s", every="10s")},
        workers=0,
        batch_size=batch_size,
    )
    assert_windows_equal(frames["tumbling"], reference_tumbling(df, "30s"), "tumbling")
    assert_windows_equal(frames["sliding"], reference_sliding(df, 30, 10), "sliding")


def with_late_events(seed: int = 5) -> pl.DataFrame:
    """In-order events plus some far behind (minutes late), at known row positions."""
    df = events(4000, users=8, seed=seed, jitter_ms=1000)
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(np.arange(1000, 4000), 60, replace=False))
    back = pl.Series(rng.integers(90_000, 300_000, len(rows))).cast(pl.Duration("ms"))
    ts = df["ts"].to_numpy().copy()
    ts[rows] = ts[rows] - back.to_numpy()
    return df.with_columns(pl.Series("ts", ts).cast(pl.Datetime("ms")))


def reference_late(
    df: pl.DataFrame, *, delay_ms: int, size_ms: int, lateness_ms: int
) -> pl.DataFrame:
    """Rows the engine must call late (``df`` is one split): a row's split watermark is the
    running maximum of the event times of the rows before it minus the delay; the row is late
    when its window's end plus the allowed lateness is at or behind that."""
    ms = pl.col("ts").dt.epoch("ms")
    before = ms.cum_max().shift(1) - delay_ms
    end = (ms // size_ms) * size_ms + size_ms
    return df.filter((end + lateness_ms <= before).fill_null(False)).with_columns(
        window_start=pl.col("ts").dt.truncate(f"{size_ms}ms"),
        window_end=pl.col("ts").dt.truncate(f"{size_ms}ms").dt.offset_by(f"{size_ms}ms"),
    )


def test_late_events_go_to_the_late_side_output(workers: int) -> None:
    df = with_late_events()
    frames, result = run_windows(
        df,
        {"tumbling": af.tumbling("60s")},
        workers=workers,
        splits=1,
        batch_size=250,
        delay="2s",
        lateness="30s",
    )
    late = frames["tumbling.late"]
    expected_late = reference_late(df, delay_ms=2000, size_ms=60_000, lateness_ms=30_000)
    assert expected_late.height > 20, "the data must have late events"
    metrics = result.metrics().filter(pl.col("kind") == "window")
    assert int(metrics["late"].sum()) == late.height, "every late row is counted"
    # Lateness is judged within the split, row by row: the same late rows on every executor
    # (a second worker that reads nothing holds nothing back: it has no split).
    assert late.columns == [*df.columns, "window_start", "window_end"]
    assert late.sort("ts", KEY).equals(expected_late.sort("ts", KEY))
    on_time = df.join(late.select(df.columns), on=df.columns, how="anti")
    assert_windows_equal(
        frames["tumbling"], reference_tumbling(on_time, "60s"), "windows without the late rows"
    )
    assert int(frames["tumbling"]["n"].sum()) + late.height == df.height, (
        "every event is counted once"
    )


def test_window_api_errors_say_what_to_do() -> None:
    flow = af.Flow("errors")
    df = events(10)
    stream = flow.from_polars(df)
    with pytest.raises(PlanError, match="with_watermark"):
        stream.key_by(KEY).window(af.tumbling("60s"))
    with pytest.raises(SchemaError, match=r"must be a pl\.Datetime"):
        flow.from_polars(df.with_columns(pl.col("ts").dt.epoch("ms"))).with_watermark("ts")
    with pytest.raises(PlanError, match="every is longer"):
        af.sliding("10s", every="20s")
    with pytest.raises(PlanError, match="longer than zero"):
        af.tumbling("0s")
    with pytest.raises(PlanError, match="tumbling"):
        stream.with_watermark("ts").key_by(KEY).window("60s")
    with pytest.raises(PlanError, match="window_start"):
        stream.with_watermark("ts").key_by(KEY).window(af.tumbling("1m")).agg(window_start=pl.len())


def test_explain_shows_the_watermark_and_the_window() -> None:
    flow = af.Flow("explained")
    out = (
        flow.from_polars(events(10))
        .with_watermark("ts", delay="5s")
        .key_by(KEY)
        .window(af.tumbling("60s"))
        .agg(n=pl.len())
    )
    text = out.explain()
    assert "watermark = max seen - 5000ms" in text
    assert "tumbling(60000ms) windows by ['user']" in text


_JOB = textwrap.dedent("""
    import json, sys
    import polars as pl
    import arrowflow as af

    input_dir, output_dir, ckpt, workers, state = sys.argv[1:6]
    flow = af.Flow("windows-recovery")
    (flow.read_parquet(input_dir + "/*.parquet")
        .with_watermark("ts", delay="5s")
        .key_by("user").window(af.tumbling("60s")).agg(n=pl.len(), total=pl.col("amount").sum())
        .write_parquet(output_dir))
    result = flow.run(workers=int(workers), state=state, checkpoint_dir=ckpt,
                      checkpoint_every=af.every_rows(15_000), batch_size=2_000, max_restarts=0)
    print("RESULT " + json.dumps({"restored_from": result.restored_from}))
""")


def write_parts(df: pl.DataFrame, folder: Path, parts: int) -> Path:
    """``df`` in ``parts`` Parquet files of equal height, in row order, in a new ``folder``."""
    folder.mkdir()
    size = -(-df.height // parts)
    for part in range(parts):
        df.slice(part * size, size).write_parquet(folder / f"part-{part}.parquet")
    return folder


@pytest.mark.parametrize(
    ("workers", "state", "fault"),
    [(2, "memory", "after_manifest@3"), (0, "lmdb", "during_snapshot@3")],
)
def test_kill_9_then_restore_fires_every_window_exactly_once(
    tmp_path: Path, workers: int, state: str, fault: str
) -> None:
    df = events(120_000, users=300, seed=13, span_ms=4 * 3_600_000)
    input_dir = write_parts(df, tmp_path / "in", 4)
    script = tmp_path / "job.py"
    script.write_text(_JOB)
    args = [
        sys.executable,
        str(script),
        str(input_dir),
        str(tmp_path / "out"),
        str(tmp_path / "ckpt"),
        str(workers),
        state,
    ]
    first = subprocess.run(
        args,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "ARROWFLOW_FAULTS": fault},
    )
    assert first.returncode != 0 and "RESULT" not in first.stdout, (
        "the fault point was never reached"
    )
    second = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr[-3000:]
    assert '"restored_from": null' not in second.stdout, "the second run did not restore"
    got = pl.read_parquet(tmp_path / "out" / "*.parquet")
    expected = reference_tumbling(df, "60s")
    keys = [KEY, "window_start"]
    assert got.select(keys).is_duplicated().sum() == 0, "a window was committed twice"
    joined = got.join(expected, on=keys, how="full", coalesce=True)
    assert got.height == expected.height == joined.height, (
        f"{got.height} windows committed, polars: {expected.height}"
    )
    assert (joined["n"] == joined["n_right"]).all()
    assert (joined["total"] - joined["total_right"]).abs().max() < 1e-6


_RESTORE_JOB = textwrap.dedent("""
    import json, sys
    import polars as pl
    import arrowflow as af
    import arrowflow._runtime.window_op as window_op

    config = json.loads(sys.argv[1])
    if config["buffer_rows"]:
        window_op.BUFFER_ROWS = config["buffer_rows"]  # in-process only: spill windows to the store
    flow = af.Flow("windows-rescale")
    windowed = (flow.read_parquet(config["input"] + "/*.parquet")
                .with_watermark("ts", delay="2s")
                .key_by("user").window(af.tumbling("60s"), allowed_lateness="30s")
                .agg(n=pl.len(), total=pl.col("amount").sum(), name="per_minute"))
    windowed.write_parquet(config["out"])
    windowed.side_output("late").write_parquet(config["late"])
    result = flow.run(workers=config["workers"], state=config["state"], checkpoint_dir=config["ckpt"],
                      checkpoint_every=af.every_rows(9_000), batch_size=1_500, max_restarts=0)
    print("RESULT " + json.dumps({"restored_from": result.restored_from}))
""")


@pytest.mark.parametrize(
    ("first", "second", "state", "fault", "buffer_rows"),
    [
        (
            2,
            1,
            "memory",
            "after_manifest@3",
            0,
        ),  # rescale down: each worker's buffer file split by key group
        (1, 2, "arrow", "after_manifest@2", 0),  # rescale up
        (
            0,
            0,
            "memory",
            "after_manifest@3",
            700,
        ),  # windows spilled to the store and buffered at once
    ],
)
def test_crash_then_restore_with_open_windows_and_late_events_exactly_once(
    tmp_path: Path, first: int, second: int, state: str, fault: str, buffer_rows: int
) -> None:
    """Checkpoints hold the open windows (the write buffer, snapshotted as it is, plus any
    spilled to the store); a restore, onto the same or another number of workers, fires each
    window exactly once and counts every event once, in a window or in the late output."""
    import json

    df = with_late_events(seed=21)
    df = pl.concat(
        [
            df,
            events(60_000, users=150, seed=22, span_ms=3_600_000, jitter_ms=1000).with_columns(
                pl.col("ts") + pl.duration(hours=2)
            ),
        ]
    )
    input_dir = write_parts(df, tmp_path / "in", 4)
    script = tmp_path / "job.py"
    script.write_text(_RESTORE_JOB)
    config = {
        "input": str(input_dir),
        "out": str(tmp_path / "out"),
        "late": str(tmp_path / "late"),
        "ckpt": str(tmp_path / "ckpt"),
        "state": state,
        "buffer_rows": buffer_rows,
    }

    def run(workers: int, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(script), json.dumps({**config, "workers": workers})],
            capture_output=True,
            text=True,
            timeout=180,
            env={**os.environ, **env},
        )

    crashed = run(first, {"ARROWFLOW_FAULTS": fault})
    assert crashed.returncode != 0 and "RESULT" not in crashed.stdout, (
        "the fault point was never reached"
    )
    manifests = sorted((tmp_path / "ckpt").glob("chk-*/_MANIFEST.json"))
    assert manifests, "no checkpoint completed before the crash"
    # The newest checkpoint taken before the input was all read (on a fast run the one the
    # fault hits may come after the end of input, when every window has fired).
    mid_run = [
        m
        for m in map(lambda p: json.loads(p.read_text()), manifests)
        if len(m["sources"]["read_parquet"]["finished"]) < 4
    ]
    assert mid_run, "no checkpoint completed while the input was being read"
    manifest = mid_run[-1]
    buffered = [f for f in manifest["state"] if f["store"] == "per_minute/buffer"]
    assert len(buffered) == max(first, 1), "one buffer file per worker"
    open_windows = af.read_state(
        str(tmp_path / "ckpt"), "per_minute", raw=True, checkpoint=manifest["id"]
    )
    assert open_windows.height > 0, "the checkpoint holds the open windows"
    # Read as values, a window in both the store and the buffer is one row, its partials merged.
    windows = af.read_state(str(tmp_path / "ckpt"), "per_minute", checkpoint=manifest["id"])
    assert windows.columns == [KEY, "window_start", "n", "total"]
    assert windows.select(KEY, "window_start").is_duplicated().sum() == 0, "a window read twice"
    assert int(windows["n"].sum()) == int(open_windows["n__count"].sum())
    raw_sums = open_windows.group_by(KEY, "window_start").agg(pl.col("n__count").sum())
    assert (
        windows.join(raw_sums, on=[KEY, "window_start"])
        .filter(pl.col("n") != pl.col("n__count"))
        .is_empty()
    )
    resumed = run(second, {})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert '"restored_from": null' not in resumed.stdout, "the second run did not restore"

    got = pl.read_parquet(tmp_path / "out" / "*.parquet")
    late_files = list((tmp_path / "late").glob("*.parquet"))
    late = (
        pl.concat([pl.read_parquet(f) for f in late_files])
        if late_files
        else pl.DataFrame(schema=df.schema)
    )
    assert got.select(KEY, "window_start").is_duplicated().sum() == 0, (
        "a window was committed twice"
    )
    assert late.select(df.columns).is_duplicated().sum() == 0, "a late event was committed twice"
    if first == second == 0:  # one reader: the watermarks are those of a run without a crash
        assert late.height > 0, "the data has late events"
    assert int(got["n"].sum()) + late.height == df.height, "every event is counted exactly once"
    on_time = df.join(late.select(df.columns), on=df.columns, how="anti")
    expected = (
        on_time.with_columns(window_start=pl.col("ts").dt.truncate("60s"))
        .group_by(KEY, "window_start")
        .agg(n=pl.len(), total=pl.col("amount").sum())
    )
    joined = got.join(expected, on=[KEY, "window_start"], how="full", coalesce=True)
    assert got.height == expected.height == joined.height
    assert (joined["n"] == joined["n_right"]).all()
    assert (joined["total"] - joined["total_right"]).abs().max() < 1e-6


def test_order_dependent_aggregates_keep_arrival_order(workers: int) -> None:
    """first/last depend on row order: the window groups them with polars' in-memory engine
    (order-free aggregates use the streaming one); with one reader the order is the input's."""
    df = events(8000, users=30, seed=17)
    flow = af.Flow("first-last")
    sink = CollectSink()
    (
        flow.from_polars(df, splits=1)
        .with_watermark("ts", delay="5s")
        .key_by(KEY)
        .window(af.tumbling("60s"))
        .agg(first=pl.col("amount").first(), last=pl.col("amount").last(), n=pl.len(), name="fl")
        .write_to(sink, name="fl-out")
    )
    result = flow.run(workers=workers, batch_size=700)
    got = pl.concat(result.outputs["fl-out"]).sort(KEY, "window_start")
    expected = (
        df.with_columns(window_start=pl.col("ts").dt.truncate("60s"))
        .group_by(KEY, "window_start", maintain_order=True)
        .agg(first=pl.col("amount").first(), last=pl.col("amount").last(), n=pl.len())
        .sort(KEY, "window_start")
    )
    assert got.select(KEY, "window_start", "first", "last", "n").equals(
        expected.cast(got.select(KEY, "window_start", "first", "last", "n").schema)
    )


def test_windows_partly_spilled_to_the_store_fire_whole_and_once(monkeypatch) -> None:
    """A small write buffer (in process): when windows fire, some are in the store and updated
    since in the buffer, some only in the store, some only in the buffer; every one comes out
    once, with polars' aggregates over the input."""
    import arrowflow._runtime.window_op as window_op

    monkeypatch.setattr(window_op, "BUFFER_ROWS", 40)
    df = events(4000, users=200, seed=11, span_ms=600_000, jitter_ms=1).sort("ts")
    flow = af.Flow("spilled-windows")
    (
        flow.from_polars(df, splits=1)
        .with_watermark("ts", delay="0s")
        .key_by(KEY)
        .window(af.tumbling("60s"))
        .agg(**AGGS, name="w")
        .write_to(CollectSink(), name="out")
    )
    result = flow.run(workers=0, batch_size=10)
    got = pl.concat(result.outputs["out"])
    assert not got.select(KEY, "window_start").is_duplicated().any()
    assert_frame_equal_unordered(
        got, reference_tumbling(df, "60s"), check_dtypes=False, check_column_order=False
    )


def test_a_checkpoint_holds_only_the_windows_that_have_not_fired(
    tmp_path: Path, monkeypatch
) -> None:
    """Windows spilled to the store and fired since are removed from it: a checkpoint's window
    state is the windows of the rows read so far that end after the watermark (polars over
    those rows), not every window seen."""
    import arrowflow._runtime.window_op as window_op

    monkeypatch.setattr(window_op, "BUFFER_ROWS", 1)  # in-process: every window via the store
    df = events(6000, users=8, seed=5, span_ms=1_800_000, jitter_ms=1).sort("ts")
    flow = af.Flow("fired-state")
    (
        flow.from_polars(df, splits=1)
        .with_watermark("ts", delay="0s")
        .key_by(KEY)
        .window(af.tumbling("60s"))
        .agg(n=pl.len(), name="w")
        .write_to(CollectSink())
    )
    flow.run(
        workers=0,
        checkpoint_dir=str(tmp_path / "ck"),
        checkpoint_every=af.every_rows(2_000),
        batch_size=250,
        keep_checkpoints=10,
    )
    checked = 0
    for checkpoint in af.list_checkpoints(str(tmp_path / "ck"))["id"].to_list():
        positions = list(
            CheckpointStorage(str(tmp_path / "ck"))
            .find(checkpoint)
            .sources["from_polars"]["positions"]
            .values()
        )
        if len(positions) != 1 or not 0 < positions[0] < df.height:
            continue  # the final checkpoint: the input is done
        offset = positions[0]
        read = df.head(offset)
        expected = (
            read.with_columns(window_start=pl.col("ts").dt.truncate("60s"))
            .group_by(KEY, "window_start")
            .agg(n=pl.len())
            .filter(pl.col("window_start") + pl.duration(seconds=60) > read["ts"].max())
        )
        got = af.read_state(str(tmp_path / "ck"), "w", checkpoint=checkpoint)
        assert_frame_equal_unordered(got, expected, check_dtypes=False)
        checked += 1
    assert checked >= 2


def test_read_state_merges_a_window_held_in_the_store_and_the_buffer(
    tmp_path: Path, monkeypatch
) -> None:
    """A window spilled to the store and updated since in the write buffer is one row of
    read_state, its partial aggregates merged (counts added, max of maxes, last of lasts)."""
    import arrowflow._runtime.window_op as window_op

    monkeypatch.setattr(window_op, "BUFFER_ROWS", 40)  # in-process: spill to the store early
    df = events(6000, users=8, seed=5, span_ms=1_800_000, jitter_ms=1).sort("ts")
    flow = af.Flow("merged-state")
    (
        flow.from_polars(df, splits=1)
        .with_watermark("ts", delay="1h")  # nothing fires: all windows stay open
        .key_by(KEY)
        .window(af.tumbling("60s"))
        .agg(n=pl.len(), top=pl.col("amount").max(), last=pl.col("amount").last(), name="w")
        .write_to(CollectSink())
    )
    flow.run(
        workers=0,
        checkpoint_dir=str(tmp_path / "ck"),
        checkpoint_every=af.every_rows(2_000),
        batch_size=250,
    )
    first = int(af.list_checkpoints(str(tmp_path / "ck"))["id"].min())
    raw = af.read_state(str(tmp_path / "ck"), "w", raw=True, checkpoint=first)
    assert set(raw["__store"]) == {"w", "buffer"}
    assert raw.select(KEY, "window_start").is_duplicated().any(), (
        "no window is in both the store and the buffer"
    )
    got = af.read_state(str(tmp_path / "ck"), "w", checkpoint=first)
    (offset,) = (
        CheckpointStorage(str(tmp_path / "ck"))
        .find(first)
        .sources["from_polars"]["positions"]
        .values()
    )
    assert 0 < offset < df.height
    expected = (
        df.head(offset)
        .with_columns(window_start=pl.col("ts").dt.truncate("60s"))
        .group_by(KEY, "window_start")
        .agg(n=pl.len(), top=pl.col("amount").max(), last=pl.col("amount").last())
    )
    assert_frame_equal_unordered(got, expected, check_dtypes=False)


@pytest.mark.parametrize(
    ("dtype", "low", "high"),
    [
        (pl.UInt64, 2**64 - 40, 2**64 - 1),  # above the Int64 range: the general path
        (pl.UInt64, 2**63 - 20, 2**63 + 20),  # across the Int64 range's end
        (pl.Int64, -(2**40), 2**40),  # too wide to pack
        (pl.Int64, -(2**63), -(2**63) + 30),
        (pl.Int8, -128, 127),
        (pl.UInt32, 2**32 - 30, 2**32 - 1),
    ],
)
def test_integer_keys_at_the_ends_of_their_range(dtype: pl.DataType, low: int, high: int) -> None:
    """A tumbling window over one integer key packs key and window start into one int64 for
    batches above 1,024 rows when the keys' range allows; keys at the ends of their type's
    range (a UInt64 above Int64's, the full Int64 range) must give polars' windows, packed or
    not. Before, a UInt64 key above 2**63 failed the run with a cast error."""
    rng = np.random.default_rng(23)
    n = 6_000
    ends = pl.Series([low, high], dtype=dtype)
    middle = rng.integers(0, 2**62, n) % (high - low + 1)
    keys = pl.Series([low + int(m) for m in middle], dtype=dtype).scatter([0, 1], ends)
    df = pl.DataFrame(
        {
            "ts": pl.Series(np.sort(rng.integers(0, 3_600_000, n))).cast(pl.Datetime("ms")),
            KEY: keys.sample(fraction=1.0, shuffle=True, seed=2),
            "amount": rng.integers(0, 9, n),
        }
    )
    got = (
        af.Flow("integer-keys")
        .from_polars(df)
        .with_watermark("ts", delay="1s")
        .key_by(KEY)
        .window(af.tumbling("60s"))
        .agg(n=pl.len(), total=pl.col("amount").sum())
        .collect(workers=0, batch_size=2_000)
    )
    expected = df.group_by(KEY, pl.col("ts").dt.truncate("60s").alias("window_start")).agg(
        window_end=pl.col("ts").dt.truncate("60s").first() + pl.duration(seconds=60),
        n=pl.len(),
        total=pl.col("amount").sum(),
    )
    assert got.schema[KEY] == dtype
    assert_frame_equal_unordered(got, expected.select(got.columns).cast(got.schema))
