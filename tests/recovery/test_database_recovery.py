"""write_database under kill -9: the table holds every row once, and the upserted totals equal polars.

The job runs as a real process with checkpoints every ~100 ms, is killed before the manifest,
between the manifest and the commit, or at a random moment, and is then run again with
``restore="latest"``. On SQLite and on a real PostgreSQL, for workers = 0 and 2.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

from arrowflow.io import DatabaseSink

JOB = textwrap.dedent("""
    import sys, time, json
    import polars as pl
    import arrowflow as af

    config = json.loads(sys.argv[1])

    def slow(batch):
        time.sleep(config["sleep"])
        return batch

    flow = af.Flow("db-recovery")
    events = flow.read_parquet(config["input"])
    kept = (events.filter(pl.col("event_type").is_in(["purchase", "add_to_cart", "click"]))
                  .map_batches(slow))
    kept.write_database(config["url"], table=config["rows"], name="rows_sink")
    (kept.key_by("user_id")
         .agg(n=pl.len(), total=pl.col("amount").sum())
         .write_database(config["url"], table=config["agg"], mode="upsert", key=["user_id"], name="agg_sink"))
    result = flow.run(workers=config["workers"], state="memory", checkpoint_dir=config["checkpoints"],
                      checkpoint_every="100ms", batch_size=1_500, restore="latest")
    print("RESULT", json.dumps({"restored_from": result.restored_from}), flush=True)
""")


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    from arrowflow.testing.state_conformance import temporary_postgres

    with temporary_postgres() as url:
        yield url


def database(kind: str, tmp: Path, request: pytest.FixtureRequest) -> str:
    return f"sqlite:///{tmp}/out.db" if kind == "sqlite" else request.getfixturevalue("postgres")


def run_job(
    tmp: Path,
    input_dir: Path,
    url: str,
    *,
    workers: int,
    faults: str = "",
    kill_after: float | None = None,
    sleep: float = 0.01,
) -> tuple[int, str, str]:
    script = tmp / "job.py"
    script.write_text(JOB)
    config = {
        "input": str(input_dir),
        "url": url,
        "rows": f"rows_{tmp.name}",
        "agg": f"agg_{tmp.name}",
        "checkpoints": str(tmp / "checkpoints"),
        "workers": workers,
        "sleep": sleep,
    }
    proc = subprocess.Popen(
        [sys.executable, str(script), json.dumps(config)],
        env={**os.environ, "ARROWFLOW_FAULTS": faults},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    if kill_after is not None:
        try:
            proc.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            proc.kill()  # SIGKILL of the coordinator
    out, err = proc.communicate(timeout=180)
    return proc.returncode, out, err


def read_table(url: str, table: str) -> pl.DataFrame:
    if url.startswith("sqlite"):
        import adbc_driver_sqlite.dbapi as driver

        target = url[len("sqlite:///") :]
    else:
        import adbc_driver_postgresql.dbapi as driver

        target = url
    with driver.connect(target) as connection, connection.cursor() as cursor:
        cursor.execute(f'SELECT * FROM "{table}"')
        frame = pl.from_arrow(cursor.fetch_arrow_table())
    # write_database's bookkeeping columns (which sink and checkpoint committed a row) are not data.
    return frame.drop([c for c in frame.columns if c in ("_af_sink", "_af_epoch")])


def check_exactly_once(tmp: Path, input_dir: Path, url: str) -> None:
    events = pl.read_parquet(input_dir / "*.parquet")
    rows = events.filter(pl.col("event_type").is_in(["purchase", "add_to_cart", "click"]))
    got = read_table(url, f"rows_{tmp.name}")
    assert got.height == rows.height, f"{got.height} rows in the table, expected {rows.height}"
    assert got["event_id"].is_duplicated().sum() == 0, "an event was inserted twice"
    assert got.sort("event_id").equals(rows.sort("event_id")), "the table's rows differ from polars"
    expected = (
        rows.group_by("user_id").agg(n=pl.len(), total=pl.col("amount").sum()).sort("user_id")
    )
    agg = read_table(url, f"agg_{tmp.name}").sort("user_id")
    assert agg.select("user_id", "n").equals(expected.select("user_id", "n")), (
        "per-user counts differ"
    )
    assert (agg["total"] - expected["total"]).abs().max() < 1e-6
    for table, sink_id in ((f"rows_{tmp.name}", "rows_sink"), (f"agg_{tmp.name}", "agg_sink")):
        sink = DatabaseSink(url, table=table)
        sink.validate(pl.Schema({"x": pl.Int64}), sink_id)  # only to learn its staging table's name
        assert read_table(url, sink.staging).height == 0, "staged rows left behind"


def finish(tmp: Path, input_dir: Path, url: str, workers: int) -> dict:
    code, out, err = run_job(tmp, input_dir, url, workers=workers)
    assert code == 0, err[-3000:]
    return json.loads(
        [x for x in out.splitlines() if x.startswith("RESULT ")][-1][len("RESULT ") :]
    )


@pytest.mark.injects_faults
@pytest.mark.parametrize(
    ("kind", "workers", "fault"),
    [
        ("sqlite", 2, "before_manifest@2"),
        ("sqlite", 0, "after_manifest@2"),
        ("postgresql", 2, "after_manifest@3"),
        ("postgresql", 0, "before_manifest@3"),
    ],
)
def test_kill_at_a_named_point_then_restore(
    tmp_path: Path,
    recovery_input: Path,
    kind: str,
    workers: int,
    fault: str,
    request: pytest.FixtureRequest,
) -> None:
    url = database(kind, tmp_path, request)
    code, out, err = run_job(tmp_path, recovery_input, url, workers=workers, faults=fault)
    assert code == -9 and "RESULT" not in out, (
        f"the fault {fault} did not kill the job: {err[-3000:]}"
    )
    summary = finish(tmp_path, recovery_input, url, workers)
    assert summary["restored_from"] is not None, "the second run did not restore a checkpoint"
    check_exactly_once(tmp_path, recovery_input, url)


@pytest.mark.parametrize(("kind", "workers"), [("sqlite", 2), ("postgresql", 0)])
def test_kill_9_at_a_random_moment(
    tmp_path: Path, recovery_input: Path, kind: str, workers: int, request: pytest.FixtureRequest
) -> None:
    url = database(kind, tmp_path, request)
    rng = random.Random(f"{kind}-{workers}")
    run_job(tmp_path, recovery_input, url, workers=workers, kill_after=rng.uniform(1.0, 2.5))
    finish(tmp_path, recovery_input, url, workers)
    check_exactly_once(tmp_path, recovery_input, url)


@pytest.mark.injects_faults
@pytest.mark.soak
def test_soak_random_kills(
    tmp_path: Path, recovery_input: Path, request: pytest.FixtureRequest
) -> None:
    runs = int(os.environ.get("ARROWFLOW_SOAK_RUNS", "60"))
    rng = random.Random(11)
    passed = 0
    for run in range(runs):
        case = tmp_path / f"run{run}"
        case.mkdir()
        kind, workers = rng.choice(["sqlite", "postgresql"]), rng.choice([0, 1, 2])
        url = database(kind, case, request)
        if rng.random() < 0.5:
            fault = f"{rng.choice(['before_manifest', 'after_manifest', 'after_ack'])}@{rng.randint(1, 6)}"
            run_job(case, recovery_input, url, workers=workers, faults=fault)
        else:
            run_job(case, recovery_input, url, workers=workers, kill_after=rng.uniform(0.5, 4.0))
        finish(case, recovery_input, url, workers)
        check_exactly_once(case, recovery_input, url)
        passed += 1
    print(f"soak: {passed} of {runs} write_database runs exactly-once")
    assert passed == runs


@pytest.mark.parametrize(("kind", "workers"), [("sqlite", 2), ("postgresql", 0)])
def test_a_damaged_newest_checkpoint_rolls_the_tables_back(
    tmp_path: Path, recovery_input: Path, kind: str, workers: int, request: pytest.FixtureRequest
) -> None:
    """Killed before checkpoint 4's manifest, checkpoint 3's manifest then garbled: the restore
    from 2 deletes checkpoint 3's committed rows (append) and puts back what it overwrote
    (upsert) in one transaction before the replay, so every row is in the table once."""
    from arrowflow._runtime.checkpoints import MANIFEST, CheckpointStorage, chk_dir

    url = database(kind, tmp_path, request)
    # Batches slow enough that each of the first checkpoints commits rows.
    code, out, err = run_job(
        tmp_path, recovery_input, url, workers=workers, faults="before_manifest@4", sleep=0.04
    )
    assert code == -9 and "RESULT" not in out, err[-3000:]
    assert CheckpointStorage(str(tmp_path / "checkpoints")).latest(report=False).id == 3
    rows = read_table_raw(url, f"rows_{tmp_path.name}")
    assert rows.filter(pl.col("_af_epoch") == 3).height, (
        "checkpoint 3 committed no rows: nothing to test"
    )
    manifest = tmp_path / "checkpoints" / chk_dir(3) / MANIFEST
    manifest.write_bytes(random.Random(3).randbytes(manifest.stat().st_size))
    summary = finish(tmp_path, recovery_input, url, workers)
    assert summary["restored_from"] == 2
    check_exactly_once(tmp_path, recovery_input, url)


def read_table_raw(url: str, table: str) -> pl.DataFrame:
    if url.startswith("sqlite"):
        import adbc_driver_sqlite.dbapi as driver

        target = url[len("sqlite:///") :]
    else:
        import adbc_driver_postgresql.dbapi as driver

        target = url
    with driver.connect(target) as connection, connection.cursor() as cursor:
        cursor.execute(f'SELECT * FROM "{table}"')
        return pl.from_arrow(cursor.fetch_arrow_table())
