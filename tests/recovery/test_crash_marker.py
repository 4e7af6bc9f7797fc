"""Fast recovery tests with the in-process crash marker (:class:`arrowflow.testing.CrashAfter`),
next to the real kill -9 suite: a run fails at several points, is restored from its newest
checkpoint, and its committed output equals polars on the input, every row exactly once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

import arrowflow as af
from arrowflow.errors import WorkerError
from arrowflow.io.memory import MemorySource
from arrowflow.sources import Source
from arrowflow.testing import CrashAfter, InjectedFault, assert_frame_equal_unordered

EVENTS = pl.DataFrame(
    {
        "event_id": np.arange(2_000),
        "user_id": np.random.default_rng(7).integers(0, 50, 2_000),
        "amount": np.round(np.random.default_rng(8).exponential(20, 2_000), 2),
    }
)


def build(source: Source, out: Path) -> af.Flow:
    flow = af.Flow("crash-marker")
    events = flow.source(source, name="events")
    kept = events.filter(pl.col("amount") > 5).with_columns(double=pl.col("amount") * 2)
    kept.write_parquet(str(out / "rows"))
    kept.key_by("user_id").agg(n=pl.len(), total=pl.col("amount").sum()).write_parquet(
        str(out / "agg")
    )
    return flow


def options(tmp_path: Path, workers: int = 0) -> dict[str, Any]:
    return {
        "workers": workers,
        "batch_size": 100,
        "checkpoint_dir": str(tmp_path / "chk"),
        "checkpoint_every": af.every_rows(300),
        "restore": "latest",
        "progress": False,
    }


def check_exactly_once(out: Path) -> None:
    kept = EVENTS.filter(pl.col("amount") > 5).with_columns(double=pl.col("amount") * 2)
    files = sorted((out / "rows").glob("part-*.parquet"))
    rows = pl.concat([pl.read_parquet(f) for f in files])
    assert rows["event_id"].is_duplicated().sum() == 0, "a row was committed twice"
    assert_frame_equal_unordered(rows, kept, check_exact=True)
    # A running aggregation commits a key's new value at each checkpoint: the last one wins
    # (part files are named by checkpoint, so name order is commit order).
    updates = pl.concat([pl.read_parquet(f) for f in sorted((out / "agg").glob("part-*.parquet"))])
    latest = (
        updates.with_row_index("order").group_by("user_id").agg(pl.all().sort_by("order").last())
    )
    expected = kept.group_by("user_id").agg(n=pl.len(), total=pl.col("amount").sum())
    assert_frame_equal_unordered(latest.drop("order"), expected, rel_tol=1e-12)


@pytest.mark.parametrize("rows", [0, 250, 777, 1_300, 1_999])
def test_crash_at_any_point_then_restore_commits_each_row_once(tmp_path: Path, rows: int) -> None:
    crashing = CrashAfter(MemorySource.from_polars(EVENTS, splits=4), rows=rows)
    flow = build(crashing, tmp_path)
    with pytest.raises(InjectedFault, match=f"after {max(rows - rows % 100, 0):,} rows"):
        flow.run(**options(tmp_path))
    assert crashing.fired
    result = flow.run(**options(tmp_path))  # the same flow: the marker fired, it reads on
    if rows >= 300:  # a checkpoint completed before the crash: the run resumed from it
        assert result.restored_from is not None
    check_exactly_once(tmp_path)


def test_the_checkpoint_of_a_crash_marker_restores_onto_the_plain_source(tmp_path: Path) -> None:
    """The marker keeps the wrapped source's kind and positions: a flow without it restores."""
    with pytest.raises(InjectedFault):
        build(CrashAfter(MemorySource.from_polars(EVENTS, splits=3), rows=900), tmp_path).run(
            **options(tmp_path)
        )
    result = build(MemorySource.from_polars(EVENTS, splits=3), tmp_path).run(**options(tmp_path))
    assert result.restored_from is not None
    check_exactly_once(tmp_path)


def test_a_marker_past_the_input_never_fires(tmp_path: Path) -> None:
    crashing = CrashAfter(MemorySource.from_polars(EVENTS), rows=EVENTS.height)
    build(crashing, tmp_path).run(**options(tmp_path))
    assert not crashing.fired
    check_exactly_once(tmp_path)


def test_in_a_pool_the_fault_fails_the_run_and_is_not_restarted(tmp_path: Path) -> None:
    """ARROWFLOW_RESTARTS=fail (the suite's policy): a worker's injected fault ends the run;
    the restore that follows commits every row once."""
    crashing = CrashAfter(MemorySource.from_polars(EVENTS, splits=4), rows=500)
    flow = build(crashing, tmp_path)
    with pytest.raises(WorkerError, match=r"(?s)InjectedFault.*not restarted"):
        flow.run(**options(tmp_path, workers=2))
    assert crashing.fired
    result = flow.run(**options(tmp_path, workers=2))
    assert result.restarts == 0
    check_exactly_once(tmp_path)


@pytest.mark.filterwarnings("ignore:.*restarting from the newest checkpoint")
def test_under_allow_a_pool_restarts_once_and_reads_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ARROWFLOW_RESTARTS", "allow")
    flow = build(CrashAfter(MemorySource.from_polars(EVENTS, splits=4), rows=500), tmp_path)
    result = flow.run(**options(tmp_path, workers=2))
    assert result.restarts == 1 and "InjectedFault" in result.restart_reasons[0]
    check_exactly_once(tmp_path)


def test_crash_after_checks_its_arguments() -> None:
    with pytest.raises(TypeError, match="wraps an arrowflow Source"):
        CrashAfter(EVENTS, rows=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="number of rows >= 0"):
        CrashAfter(MemorySource.from_polars(EVENTS), rows=-1)


@pytest.mark.soak
@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("rows", range(0, 2_000, 137))
def test_soak_every_crash_point(tmp_path: Path, rows: int, workers: int) -> None:
    """The sweep: a crash every 137 rows, in this process and in a pool of two (where each
    worker counts the rows it reads itself: the busier one reads at least half of them)."""
    crashing = CrashAfter(MemorySource.from_polars(EVENTS, splits=5), rows=rows // max(workers, 1))
    flow = build(crashing, tmp_path)
    with pytest.raises((InjectedFault, WorkerError), match=r"InjectedFault|injected fault"):
        flow.run(**options(tmp_path, workers=workers))
    flow.run(**options(tmp_path, workers=workers))
    check_exactly_once(tmp_path)
