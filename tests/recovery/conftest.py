"""Fixtures for the fault-injection suite: input data and a job script run as a real process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import polars as pl
import pytest

JOB = textwrap.dedent("""
    import sys, time, json
    import polars as pl
    import arrowflow as af

    config = json.loads(sys.argv[1])

    def slow(batch):
        time.sleep(config["sleep"])
        return batch

    flow = af.Flow("recovery")
    events = flow.read_parquet(config["input"])
    kept = (events.filter(pl.col("event_type").is_in(["purchase", "add_to_cart", "click"]))
                  .map_batches(slow)
                  .with_columns(amount_eur=pl.col("amount") * 0.92))
    kept.write_parquet(config["out_rows"])
    (kept.key_by("user_id")
         .agg(n=pl.len(), total=pl.col("amount").sum(), biggest=pl.col("amount").max())
         .write_parquet(config["out_agg"]))
    result = flow.run(workers=config["workers"], state=config["state"],
                      checkpoint_dir=config["checkpoints"], checkpoint_every=config["every"],
                      batch_size=config["batch_size"], restore="latest")
    print("RESULT", json.dumps({"restored_from": result.restored_from, "checkpoints": result.checkpoints,
                                "restarts": result.restarts, "rows_in": result.rows_in,
                                "rolled_back": [vars(item) for item in result.rolled_back]}), flush=True)
""")


@pytest.fixture(scope="session")
def recovery_input(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four Parquet files of 12k events each, row groups of 3k rows: 16 splits."""
    folder = tmp_path_factory.mktemp("recovery-input")
    rng = np.random.default_rng(20261121)
    for part in range(4):
        n = 12_000
        frame = pl.DataFrame(
            {
                "event_id": np.arange(part * n, (part + 1) * n),
                "user_id": rng.integers(0, 700, n),
                "event_type": rng.choice(
                    ["view", "click", "purchase", "add_to_cart"], n, p=[0.4, 0.3, 0.15, 0.15]
                ),
                "amount": np.round(rng.exponential(30, n), 2),
            }
        )
        frame.write_parquet(folder / f"events-{part}.parquet", row_group_size=3_000)
    return folder


def expected_outputs(input_dir: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """What polars says the job must commit, computed independently of arrowflow."""
    events = pl.read_parquet(input_dir / "*.parquet")
    rows = events.filter(
        pl.col("event_type").is_in(["purchase", "add_to_cart", "click"])
    ).with_columns(amount_eur=pl.col("amount") * 0.92)
    agg = rows.group_by("user_id").agg(
        n=pl.len(), total=pl.col("amount").sum(), biggest=pl.col("amount").max()
    )
    return rows, agg


def committed(folder: Path) -> pl.DataFrame:
    """Every committed file (names not starting with '_' or '.'), in name order."""
    files = sorted(p for p in folder.glob("*.parquet") if not p.name.startswith(("_", ".")))
    if not files:
        return pl.DataFrame()
    return pl.concat([pl.read_parquet(f) for f in files])


def latest_per_key(updates: pl.DataFrame) -> pl.DataFrame:
    """The running aggregation emits a key's new value at each checkpoint; the last one wins.
    Part files are named by checkpoint, so name order is emission order."""
    return updates.with_row_index("_order").sort("_order").group_by("user_id").last().drop("_order")


def run_job(
    tmp: Path,
    input_dir: Path,
    *,
    workers: int,
    state: str,
    every: str = "100ms",
    faults: str = "",
    kill_after: float | None = None,
    sleep: float = 0.01,
    batch_size: int = 1_500,
) -> tuple[int, str, str]:
    """Run the job script in a fresh process; optionally kill -9 it after ``kill_after`` s."""
    import json

    script = tmp / "job.py"
    script.write_text(JOB)
    config = {
        "input": str(input_dir),
        "out_rows": str(tmp / "rows"),
        "out_agg": str(tmp / "agg"),
        "checkpoints": str(tmp / "checkpoints"),
        "workers": workers,
        "state": state,
        "every": every,
        "sleep": sleep,
        "batch_size": batch_size,
    }
    # The marker finds this run's processes (the workers too) in /proc after a kill -9.
    env = {**os.environ, "ARROWFLOW_FAULTS": faults, "ARROWFLOW_TEST_RUN": str(tmp)}
    proc = subprocess.Popen(
        [sys.executable, str(script), json.dumps(config)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    if kill_after is not None:
        try:
            proc.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            proc.kill()  # SIGKILL: kill -9 of the coordinator
    out, err = proc.communicate(timeout=180)
    return proc.returncode, out, err


def processes_of_run(tmp: Path) -> list[int]:
    """Live processes (a job, its workers) started by run_job for ``tmp``."""
    marker = f"ARROWFLOW_TEST_RUN={tmp}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                environ = (entry / "environ").read_bytes()
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if marker in environ.split(b"\0") and state != "Z":
                found.append(int(entry.name))
    return found


@pytest.fixture(scope="session")
def recovery() -> object:
    """The helpers above, for the tests (conftest modules are not importable by name)."""
    from types import SimpleNamespace

    return SimpleNamespace(
        committed=committed,
        expected_outputs=expected_outputs,
        latest_per_key=latest_per_key,
        run_job=run_job,
        processes_of_run=processes_of_run,
    )
