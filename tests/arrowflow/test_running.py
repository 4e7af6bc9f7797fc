"""Background jobs: flow.start(), job.checkpoint(), job.stop() with and without a savepoint.

A stopped job's committed output is exactly what its last checkpoint covered, and a later
run restored from there finishes with every row exactly once (checked against polars).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import arrowflow as af


def slow(batch: pl.DataFrame) -> pl.DataFrame:
    time.sleep(0.03)
    return batch


def build(tmp: Path) -> tuple[af.Flow, pl.DataFrame]:
    rng = np.random.default_rng(11)
    df = pl.DataFrame(
        {
            "event_id": np.arange(30_000),
            "user": rng.integers(0, 200, 30_000),
            "amount": rng.random(30_000),
        }
    )
    flow = af.Flow("background")
    events = flow.from_polars(df, splits=20).map_batches(slow)
    events.write_parquet(str(tmp / "rows"))
    return flow, df


def committed(folder: Path) -> pl.DataFrame:
    files = sorted(folder.glob("part-*.parquet"))
    return pl.concat([pl.read_parquet(f) for f in files]) if files else pl.DataFrame()


@pytest.mark.parametrize("workers", [0, 2])
def test_checkpoint_and_stop_with_a_savepoint_then_resume_exactly(
    tmp_path: Path, workers: int
) -> None:
    flow, df = build(tmp_path)
    job = flow.start(
        workers=workers, checkpoint_dir=str(tmp_path / "ck"), batch_size=500, restore=None
    )
    deadline = time.monotonic() + 60
    while job.progress["rows_in"] < 2_000 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert job.status == "running"
    first = job.checkpoint()
    assert first >= 1
    result = job.stop(savepoint=True)
    assert job.status == "stopped" and result.status == "stopped"
    assert result.checkpoints[-1] > first
    partial = committed(tmp_path / "rows")
    assert 0 < partial.height < df.height  # stopped part-way, with the savepoint's rows committed
    assert partial["event_id"].is_duplicated().sum() == 0
    resumed = flow.run(workers=workers, checkpoint_dir=str(tmp_path / "ck"), batch_size=500)
    assert resumed.restored_from == result.checkpoints[-1]
    got = committed(tmp_path / "rows").sort("event_id")
    assert got.equals(df.sort("event_id"))


def test_stop_without_savepoint_keeps_only_completed_checkpoints(tmp_path: Path) -> None:
    flow, df = build(tmp_path)
    job = flow.start(
        workers=0,
        checkpoint_dir=str(tmp_path / "ck"),
        checkpoint_every="200ms",
        batch_size=500,
        restore=None,
    )
    deadline = time.monotonic() + 60
    while len(job.progress["checkpoints"]) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    result = job.stop()
    assert result.status == "stopped"
    resumed = flow.run(workers=0, checkpoint_dir=str(tmp_path / "ck"), batch_size=500)
    assert resumed.restored_from == result.checkpoints[-1]
    assert committed(tmp_path / "rows").sort("event_id").equals(df.sort("event_id"))


def test_a_job_that_fails_reports_it(tmp_path: Path) -> None:
    flow = af.Flow("broken")

    def boom(batch: pl.DataFrame) -> pl.DataFrame:
        raise ValueError("broken on purpose")

    flow.from_polars(pl.DataFrame({"a": [1, 2]})).map_batches(
        boom, schema={"a": pl.Int64}
    ).write_parquet(str(tmp_path / "out"))
    job = flow.start(workers=0)
    with pytest.raises(ValueError, match="broken on purpose"):
        job.wait(30)
    assert job.status == "failed"


def test_start_needs_a_sink() -> None:
    flow = af.Flow("nothing")
    flow.from_polars(pl.DataFrame({"a": [1]}))
    with pytest.raises(af.PlanError, match="no sinks"):
        flow.start()
