"""Emission: an unbounded aggregation shows its output without checkpoints (issue 16).

A running aggregation and an upsert sink commit their output every ``emit_every`` (by
default every second over an unbounded source when the run has no checkpoint interval). A
reader sees the values of the last emission; each key's newest emitted row must equal what
polars computes over the files that landed. Checked while the job runs, through the public
API, from the sink's committed output (parquet part files, a SQLite table).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

import arrowflow as af
from arrowflow.errors import PlanError
from arrowflow.testing import assert_frame_equal_unordered

SCHEMA = {"user": pl.Int64, "amount": pl.Float64}


def landed(n: int, seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    return pl.DataFrame({"user": rng.integers(0, 30, n), "amount": rng.random(n).round(3)})


def reference(frames: list[pl.DataFrame]) -> pl.DataFrame:
    return (
        pl.concat(frames)
        .group_by("user")
        .agg(n=pl.len(), total=pl.col("amount").sum())
        .with_columns(pl.col("n").cast(pl.Int64))
    )


def newest_per_key(out: Path) -> pl.DataFrame | None:
    """The committed rows, each key's row of the newest emission (part files sort by epoch)."""
    parts = sorted(out.glob("part-*.parquet"))
    if not parts:
        return None
    frames = [pl.read_parquet(p).with_columns(epoch=pl.lit(i)) for i, p in enumerate(parts)]
    rows = pl.concat(frames).sort("epoch").unique("user", keep="last").drop("epoch")
    return rows.with_columns(pl.col("n").cast(pl.Int64))


def matches(got: pl.DataFrame | None, expected: pl.DataFrame) -> bool:
    if got is None or got.height != expected.height:
        return False
    joined = expected.join(got, on="user", how="left", suffix="_got")
    return bool(
        (joined["n"] == joined["n_got"]).all()
        and ((joined["total"] - joined["total_got"]).abs() < 1e-9).all()
    )


def wait_until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def watched_totals(inbox: Path, name: str = "emission", **agg: Any) -> af.Flow:
    flow = af.Flow(name)
    stream = flow.watch(str(inbox / "*.parquet"), schema=SCHEMA, poll_interval="0.1s")
    totals = stream.key_by("user").agg(n=pl.len(), total=pl.col("amount").sum(), **agg)
    totals.write_parquet(str(inbox.parent / "out"))
    return flow


@pytest.mark.parametrize("workers", [0, 2])
def test_an_unbounded_aggregation_without_checkpoints_emits_every_second(
    tmp_path: Path, workers: int
) -> None:
    inbox = tmp_path / "inbox"  # does not exist yet: watch waits for it
    flow = watched_totals(inbox)
    job = flow.start(workers=workers)
    try:
        time.sleep(0.5)
        inbox.mkdir()
        first = landed(5_000, seed=1)
        first.write_parquet(inbox / "a.parquet")
        wait_until(
            lambda: matches(newest_per_key(tmp_path / "out"), reference([first])),
            timeout=20,
            what="the first file's totals in the output",
        )
        second = landed(7_000, seed=2)
        second.write_parquet(inbox / "b.parquet")
        wait_until(
            lambda: matches(newest_per_key(tmp_path / "out"), reference([first, second])),
            timeout=20,
            what="both files' totals in the output",
        )
        assert job.status == "running"  # seen while the job runs, not at its end
    finally:
        result = job.stop()
    assert result.restarts == 0
    assert result.rows_in == 12_000


def test_with_a_checkpoint_dir_every_emission_is_a_checkpoint(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    frames = [landed(3_000, seed=s) for s in range(3)]
    flow = watched_totals(inbox)
    job = flow.start(workers=2, checkpoint_dir=str(tmp_path / "ck"))
    try:
        for i, frame in enumerate(frames):
            frame.write_parquet(inbox / f"{i}.parquet")
            time.sleep(0.3)
        wait_until(
            lambda: matches(newest_per_key(tmp_path / "out"), reference(frames)),
            timeout=20,
            what="the totals of three files",
        )
    finally:
        job.stop()
    listed = af.list_checkpoints(str(tmp_path / "ck"))
    assert listed.height >= 1
    # Resuming reads nothing twice: the totals stay those of the three files.
    more = landed(2_000, seed=9)
    more.write_parquet(inbox / "3.parquet")
    job = watched_totals(inbox).start(workers=2, checkpoint_dir=str(tmp_path / "ck"))
    try:
        wait_until(
            lambda: matches(newest_per_key(tmp_path / "out"), reference([*frames, more])),
            timeout=20,
            what="the totals after resuming",
        )
    finally:
        result = job.stop()
    assert result.resumed_from is not None


def test_an_operator_with_a_longer_interval_holds_its_updates(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    flow = af.Flow("two-intervals")
    stream = flow.watch(str(inbox / "*.parquet"), schema=SCHEMA, poll_interval="0.1s")
    by_user = stream.key_by("user")
    by_user.agg(n=pl.len(), total=pl.col("amount").sum(), emit_every="200ms").write_parquet(
        str(tmp_path / "fast")
    )
    by_user.agg(
        n=pl.len(), total=pl.col("amount").sum(), emit_every="1h", name="slow"
    ).write_parquet(str(tmp_path / "slow"))
    frame = landed(4_000, seed=4)
    job = flow.start(workers=2)
    try:
        frame.write_parquet(inbox / "a.parquet")
        wait_until(
            lambda: matches(newest_per_key(tmp_path / "fast"), reference([frame])),
            timeout=20,
            what="the fast aggregation's output",
        )
        time.sleep(1.0)  # five more commits of the run
        assert newest_per_key(tmp_path / "slow") is None
    finally:
        job.stop()


def test_an_upsert_table_gets_the_totals_every_emit_every(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    db = tmp_path / "app.db"
    flow = af.Flow("upsert-emission")
    stream = flow.watch(str(inbox / "*.parquet"), schema=SCHEMA, poll_interval="0.1s")
    totals = stream.key_by("user").agg(n=pl.len(), total=pl.col("amount").sum())
    totals.write_database(
        f"sqlite:///{db}", table="totals", mode="upsert", key="user", emit_every="300ms"
    )

    def table() -> pl.DataFrame | None:
        # Read as a user reads the live table from the same process: through the same SQLite
        # library as the sink (Python's sqlite3 module is a second copy of SQLite, and two
        # copies in one process break each other's file locks).
        import adbc_driver_sqlite.dbapi as sqlite

        if not db.exists():
            return None
        with sqlite.connect(str(db)) as con, con.cursor() as cursor:
            try:
                cursor.execute("SELECT user, n, total FROM totals")
            except sqlite.Error:
                return None
            return pl.from_arrow(cursor.fetch_arrow_table())  # type: ignore[return-value]

    frames = [landed(3_000, seed=5), landed(3_000, seed=6)]
    job = flow.start(workers=2)
    try:
        frames[0].write_parquet(inbox / "a.parquet")
        wait_until(lambda: matches(table(), reference(frames[:1])), 20, "the first totals")
        frames[1].write_parquet(inbox / "b.parquet")
        wait_until(lambda: matches(table(), reference(frames)), 20, "the totals of both files")
    finally:
        job.stop()


def test_a_bounded_run_commits_once_at_the_end(tmp_path: Path) -> None:
    frame = landed(20_000, seed=7)
    flow = af.Flow("bounded")
    totals = (
        flow.from_polars(frame, splits=4)
        .key_by("user")
        .agg(n=pl.len(), total=pl.col("amount").sum())
    )
    totals.write_parquet(str(tmp_path / "out"))
    result = flow.run(workers=2)
    assert len(result.checkpoints) == 1  # only the end: no emission over bounded input
    got = pl.read_parquet(tmp_path / "out").with_columns(pl.col("n").cast(pl.Int64))
    assert_frame_equal_unordered(got, reference([frame]))


@pytest.mark.parametrize(
    ("value", "message"),
    [("0s", "positive duration"), (5, "ambiguous"), ("soon", "cannot read")],
)
def test_a_wrong_emit_every_is_refused_when_the_flow_is_built(value: Any, message: str) -> None:
    flow = af.Flow("bad")
    keyed = flow.from_polars(landed(10, seed=0)).key_by("user")
    with pytest.raises(PlanError, match=message):
        keyed.agg(n=pl.len(), emit_every=value)
    with pytest.raises(PlanError, match=message):
        keyed.agg(n=pl.len()).write_database(
            "sqlite:///x.db", table="t", mode="upsert", key="user", emit_every=value
        )
