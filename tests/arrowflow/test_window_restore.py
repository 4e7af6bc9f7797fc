"""A window operator restored from each checkpoint of a run, in process and onto other
worker counts: every window fires once with polars' values and every event is counted once,
in a window or in the late output.

The checkpoint holds the open windows (the write buffer as it is, plus those spilled to the
store) and the operator's watermark; a restore rebuilds the index of stored windows, the
buffer and the watermark from them (``arrowflow/_runtime/window_op.py``: ``open``,
``snapshot``, ``_restored_buffer``, ``_restored_watermark``). With one reader the watermarks,
and so which events are late, are those of the run without a restore: the restored run's
output must be that run's, row for row. Onto other worker counts the late events may differ
(which window has fired when a row arrives depends on the other readers), so those runs are
checked against polars over the events they did not call late. The crash-and-kill versions
of these runs are in ``test_windows.py``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

import arrowflow as af
from arrowflow.testing import assert_frame_equal_unordered

KEYS = ["user", "window_start"]


def events(seed: int, users: int = 30) -> pl.DataFrame:
    """6,000 events over an hour, out of order by up to 3 s, and 80 events minutes behind
    the others (late), at positions drawn at random."""
    rng = np.random.default_rng(seed)
    n = 6_000
    ts = np.arange(n, dtype=np.int64) * 3_600_000 // n + rng.integers(0, 3_000, n)
    late = rng.choice(np.arange(500, n), 80, replace=False)
    ts[late] -= rng.integers(60_000, 400_000, late.size)
    return pl.DataFrame(
        {
            "ts": pl.Series(ts).cast(pl.Datetime("ms")),
            "user": rng.permutation(np.arange(n) % users),
            "amount": np.round(rng.exponential(30, n), 2),
        }
    )


def build(df: pl.DataFrame, out: Path, splits: int) -> af.Flow:
    flow = af.Flow("window-restore")
    windowed = (
        flow.from_polars(df, splits=splits)
        .with_watermark("ts", delay="2s")
        .key_by("user")
        .window(af.tumbling("60s"), allowed_lateness="20s")
        .agg(n=pl.len(), total=pl.col("amount").sum(), name="per_minute")
    )
    windowed.write_parquet(str(out / "windows"))
    windowed.side_output("late").write_parquet(str(out / "late"))
    return flow


def output(out: Path, df: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    windows = pl.read_parquet(out / "windows" / "*.parquet").select(*KEYS, "n", "total")
    files = sorted((out / "late").glob("*.parquet"))
    late = (
        pl.concat([pl.read_parquet(f).select(df.columns) for f in files]) if files else df.clear()
    )
    return windows, late


def check_against_polars(df: pl.DataFrame, windows: pl.DataFrame, late: pl.DataFrame) -> None:
    assert windows.select(KEYS).is_duplicated().sum() == 0, "a window was committed twice"
    assert late.is_duplicated().sum() == 0, "a late event was committed twice"
    assert int(windows["n"].sum()) + late.height == df.height, "an event lost or counted twice"
    on_time = df.join(late, on=df.columns, how="anti")
    expected = (
        on_time.with_columns(window_start=pl.col("ts").dt.truncate("60s"))
        .group_by(KEYS)
        .agg(n=pl.len().cast(windows["n"].dtype), total=pl.col("amount").sum())
    )
    assert_frame_equal_unordered(windows, expected, check_exact=False)


def restore(flow: af.Flow, checkpoint: int, ck: Path, **run: object) -> af.RunResult:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "rolled back output of later checkpoints"
        return flow.run(checkpoint_dir=str(ck), restore=checkpoint, batch_size=250, **run)


@pytest.mark.parametrize("buffer_rows", [None, 60], ids=["buffered", "spilled-to-the-store"])
def test_a_restore_from_any_checkpoint_gives_the_run_without_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, buffer_rows: int | None
) -> None:
    """One reader, in process: restored from each checkpoint in turn, the run commits
    exactly what the run without a restore committed (the same windows, the same late
    events), which polars confirms. With a write buffer of 60 rows most windows are spilled
    to the store before they fire, so the checkpoints hold windows in both."""
    if buffer_rows is not None:
        import arrowflow._runtime.window_op as window_op

        monkeypatch.setattr(window_op, "BUFFER_ROWS", buffer_rows)
    df = events(seed=41)

    def first_run(folder: Path) -> af.RunResult:
        return build(df, folder / "out", splits=1).run(
            workers=0,
            checkpoint_dir=str(folder / "ck"),
            checkpoint_every=af.every_rows(700),
            batch_size=250,
            keep_checkpoints=20,
        )

    first = first_run(tmp_path / "first")
    assert len(first.checkpoints) >= 7
    windows, late = output(tmp_path / "first" / "out", df)
    assert late.height > 0, "the data has late events"
    check_against_polars(df, windows, late)
    for checkpoint in first.checkpoints[:-1]:
        # each in a run of its own (a restore supersedes the checkpoints after the one it
        # restores; and a copied checkpoint directory would be another job's)
        folder = tmp_path / f"from-{checkpoint}"
        assert first_run(folder).checkpoints == first.checkpoints
        flow = build(df, folder / "out", splits=1)
        again = restore(flow, checkpoint, folder / "ck", workers=0, keep_checkpoints=20)
        assert again.restored_from == checkpoint
        got_windows, got_late = output(folder / "out", df)
        assert_frame_equal_unordered(got_windows, windows, check_exact=False)
        assert_frame_equal_unordered(got_late, late)


@pytest.mark.parametrize(("first", "second"), [(0, 2), (2, 0), (2, 1), (2, 2), (2, 3)])
def test_windows_restored_onto_another_worker_count_fire_once(
    tmp_path: Path, first: int, second: int
) -> None:
    """Each worker's checkpoint holds its own windows and watermark with their key groups;
    restored onto the same, more or fewer workers, each takes exactly the windows of its key
    groups (every one of the 128 has open windows here, so one group too many or too few
    shows) from every file that holds some, and the output is polars' over the events it did
    not call late."""
    from arrowflow._foundation.keygroups import DEFAULT_MAX_PARALLELISM, key_groups

    df = events(seed=43, users=3_000)
    groups = set(key_groups(df.select("user")).tolist())
    assert groups == set(range(DEFAULT_MAX_PARALLELISM)), "a key group without events"
    out, ck = tmp_path / "out", tmp_path / "ck"
    ran = build(df, out, splits=4).run(
        workers=first,
        checkpoint_dir=str(ck),
        checkpoint_every=af.every_rows(1_500),
        batch_size=250,
        keep_checkpoints=20,
    )
    # A pool counts rows from its workers' reports (every 50 ms): a 0.2 s run of 6,000 rows
    # may hold one row-count checkpoint before the final one, not three (it did, 1 run in 6).
    assert len(ran.checkpoints) >= 2
    middle = ran.checkpoints[len(ran.checkpoints) // 2 - 1]
    again = restore(build(df, out, splits=4), middle, ck, workers=second, keep_checkpoints=20)
    assert again.restored_from == middle
    check_against_polars(df, *output(out, df))


def _window_op(tmp_path: Path, key_range: range, files: list[tuple[range, object]]) -> Any:
    """The window operator of a one-window flow, opened on ``key_range`` as a restore from a
    checkpoint whose watermark files (``files``: the key groups of each and the JSON it
    holds) were written to real storage, with their sizes and checksums."""
    from arrowflow._plan import build_plan
    from arrowflow._runtime.checkpoints import CheckpointStorage
    from arrowflow._runtime.operators import RuntimeContext
    from arrowflow._runtime.window_op import make_window_op
    from arrowflow.backends.memory import MemoryBackend
    from arrowflow.state import StateFile, StoreContext

    flow = af.Flow("one-window")
    windowed = (
        flow.from_polars(events(seed=1), splits=1)
        .with_watermark("ts", delay="2s")
        .key_by("user")
        .window(af.tumbling("60s"))
        .agg(n=pl.len(), name="per_minute")
    )
    plan = build_plan(flow, [windowed.node])
    [spec] = [op for op in plan.ops if op.id == "per_minute"]
    storage = CheckpointStorage(str(tmp_path / "ck"))
    storage.ensure()
    restore_files = []
    for number, (groups, payload) in enumerate(files):
        relative = f"chk-00000001/state/per_minute/watermark-{number}.json"
        entry = storage.write_file(relative, json.dumps(payload).encode())
        restore_files.append(
            StateFile(
                relative,
                entry["size"],
                entry["sha256"],
                "per_minute/watermark",
                (groups.start, groups.stop),
                "json",
            )
        )
    op = make_window_op(
        spec, MemoryBackend(), key_range, StoreContext(str(tmp_path / "local"), 0, 1)
    )
    op.context = RuntimeContext(
        storage=storage, restore_root=storage.root, restore_files=restore_files
    )
    op.open()
    return op


@pytest.mark.parametrize(
    ("key_range", "files", "watermark"),
    [
        # onto one worker: the lowest of every worker's watermark, never a later one
        (range(0, 128), [(range(0, 64), 500), (range(64, 128), 300)], 300),
        (range(0, 128), [(range(64, 128), 300), (range(0, 64), 500)], 300),
        # onto two: each the lowest of the files whose key groups overlap its own
        (range(0, 64), [(range(64, 128), 100), (range(0, 64), 500)], 500),
        (range(64, 128), [(range(0, 64), 100), (range(64, 128), 300)], 300),
        (range(32, 96), [(range(0, 64), 400), (range(64, 128), 300), (range(96, 128), 7)], 300),
        # no file for its key groups: no watermark yet
        (range(0, 64), [(range(64, 128), 300)], None),
    ],
)
def test_a_restored_window_takes_the_lowest_watermark_of_its_key_groups(
    tmp_path: Path, key_range: range, files: list[tuple[range, int]], watermark: int | None
) -> None:
    """A window that took the highest watermark (or another worker's) would fire windows
    before the events the other workers still hold back arrive, and call them late."""
    from arrowflow._foundation.watermarks import NO_WATERMARK

    op = _window_op(
        tmp_path,
        key_range,
        [(groups, {"watermark": value, "operator": "per_minute"}) for groups, value in files],
    )
    try:
        assert op.watermark == (NO_WATERMARK if watermark is None else watermark)
    finally:
        op.close()


@pytest.mark.parametrize("buffer_rows", [None, 40], ids=["buffered", "spilled-to-the-store"])
def test_sessions_restored_from_any_checkpoint_are_polars_sessions(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    buffer_rows: int | None,
    polars_sessions: Any,
) -> None:
    """Session windows keep their end (the last event plus the gap) in the store; a restore
    rebuilds the index of open sessions from it. Restored from each checkpoint, one reader,
    events out of order by less than the watermark's delay (none late): the sessions are
    polars'."""
    if buffer_rows is not None:
        import arrowflow._runtime.window_op as window_op

        monkeypatch.setattr(window_op, "BUFFER_ROWS", buffer_rows)
    rng = np.random.default_rng(47)
    n = 3_000
    ts = np.cumsum(rng.integers(0, 4_000, n)) + rng.integers(0, 1_500, n)
    df = pl.DataFrame(
        {
            "ts": pl.Series(ts).cast(pl.Datetime("ms")),
            "user": rng.integers(0, 12, n),
            "amount": np.round(rng.exponential(30, n), 2),
        }
    )
    expected = polars_sessions(df, 20)

    def run(folder: Path, **options: object) -> tuple[af.RunResult, pl.DataFrame]:
        flow = af.Flow("sessions-restore")
        (
            flow.from_polars(df, splits=1)
            .with_watermark("ts", delay="2s")
            .key_by("user")
            .window(af.session("20s"))
            .agg(n=pl.len(), total=pl.col("amount").sum(), name="sessions")
            .write_parquet(str(folder / "out"))
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            result = flow.run(
                workers=0,
                checkpoint_dir=str(folder / "ck"),
                checkpoint_every=af.every_rows(400),
                batch_size=100,
                keep_checkpoints=20,
                **options,
            )
        got = pl.read_parquet(folder / "out" / "*.parquet").select(expected.columns)
        return result, got

    first, got = run(tmp_path / "first")
    assert len(first.checkpoints) >= 5
    assert_frame_equal_unordered(got, expected.cast(got.schema), check_exact=False)
    for checkpoint in first.checkpoints[:-1]:
        folder = tmp_path / f"from-{checkpoint}"
        run(folder)
        again, got = run(folder, restore=checkpoint)
        assert again.restored_from == checkpoint
        assert_frame_equal_unordered(got, expected.cast(got.schema), check_exact=False)


@pytest.mark.parametrize("value", [2**63 - 1, -(2**63) + 1])
def test_a_restored_watermark_may_be_any_int64(tmp_path: Path, value: int) -> None:
    files = [(range(0, 128), {"watermark": value, "operator": "per_minute"})]
    op = _window_op(tmp_path, range(0, 128), files)
    try:
        assert op.watermark == value
    finally:
        op.close()


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, 3.5, True, "7"])
def test_a_restored_watermark_must_be_an_int64(tmp_path: Path, value: object) -> None:
    """A watermark file read back from a checkpoint may be damaged or crafted: only an int64
    (not a bool, a float or a string) is taken; anything else fails the restore clearly."""
    from arrowflow.errors import StateError

    files = [(range(0, 128), {"watermark": value, "operator": "per_minute"})]
    with pytest.raises(
        StateError, match=r'holds no watermark \(expected \{"watermark": <int64>\}\)'
    ):
        _window_op(tmp_path, range(0, 128), files)
