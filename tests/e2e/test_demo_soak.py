"""Soak: the 10M-event demo with two workers, again and again (``-m soak``).

Each run is the installed ``arrowflow demo`` in a fresh process, with restarts disabled
(``ARROWFLOW_RESTARTS=fail``, as in the whole suite), so a worker crash fails the run instead
of being hidden by a restart. Every run's output is checked: the per-user totals against
polars over the same files, and the event-time outputs by conservation (every good event is
counted in exactly one window or written once to ``late``). The short version of this check
in the default run is the channel stress test (``tests/arrowflow/runtime/test_channels.py``)
and the 200k-row demo of ``test_cli.py``.

    ARROWFLOW_SOAK_RUNS=20 ARROWFLOW_SOAK_DEMO_ROWS=10000000 python -m pytest -m soak tests/e2e/test_demo_soak.py -s
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from arrowflow.demo import BROKEN_LINES, SCHEMA
from arrowflow.testing import assert_frame_equal_unordered


def reference(data: Path) -> tuple[pl.DataFrame, int]:
    """Per-user totals by polars, and the number of good events."""
    lines = (data / "mobile" / "uploads.ndjson").read_text().splitlines()
    good = "\n".join(line for line in lines if line not in BROKEN_LINES) + "\n"
    events = pl.concat(
        [pl.read_parquet(data / "web" / "*.parquet"), pl.read_ndjson(good.encode(), schema=SCHEMA)]
    )
    bought = pl.col("event_type") == "purchase"
    totals = (
        events.filter(pl.col("event_type").is_in(["add_to_cart", "purchase"]))
        .group_by("user_id")
        .agg(
            cart_adds=(~bought).sum(),
            purchases=bought.sum(),
            revenue_eur=pl.when(bought).then(pl.col("amount") * 0.92).otherwise(0.0).sum(),
            first_seen=pl.col("ts").min(),
            last_seen=pl.col("ts").max(),
        )
    )
    return totals, events.height


@pytest.mark.soak
@pytest.mark.timeout(7200)
def test_the_demo_with_two_workers_many_times(tmp_path: Path) -> None:
    runs = int(os.environ.get("ARROWFLOW_SOAK_RUNS", "20"))
    rows = int(os.environ.get("ARROWFLOW_SOAK_DEMO_ROWS", "10000000"))
    script = Path(sys.executable).with_name("arrowflow")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "arrowflow.cli"]
    root = tmp_path / "demo"
    expected = None
    crashes, wrong, counts = 0, 0, []
    for number in range(runs):
        done = subprocess.run(
            [*command, "demo", "--rows", str(rows), "--dir", str(root), "--workers", "2"],
            capture_output=True,
            text=True,
            timeout=1800,
            env={**os.environ, "ARROWFLOW_RESTARTS": "fail"},
        )
        if (
            done.returncode != 0
            or done.stdout.strip().splitlines()[-1] != "restarts: none (no worker failed)"
        ):
            crashes += 1
            print(f"run {number}: exit {done.returncode}\n{done.stderr[-2000:]}")
            continue
        if expected is None:
            expected = reference(root / "data")
        totals, good_events = expected
        files = sorted((root / "out" / "per_user").glob("*.parquet"))
        per_user = (
            pl.concat([pl.read_parquet(f) for f in files])
            .with_row_index("_emitted")
            .group_by("user_id")
            .last()
            .drop("_emitted")
        )
        windows = pl.read_parquet(root / "out" / "per_10_minutes" / "*.parquet")
        late_files = sorted((root / "out" / "late").glob("*.ndjson"))
        late = sum(pl.scan_ndjson(f).select(pl.len()).collect().item() for f in late_files)
        counted = int(windows["events"].sum()) + late
        try:
            assert_frame_equal_unordered(per_user, totals, check_dtypes=False)
            assert counted == good_events, (
                f"{counted - good_events:+,} events (windows + late) against the input"
            )
        except AssertionError as exc:
            wrong += 1
            print(f"run {number}: wrong output: {exc}")
        counts.append(late)
    print(
        f"soak: {runs} demo runs of {rows:,} events, 2 workers: {crashes} crashed, {wrong} wrong; "
        f"late events per run: {sorted(set(counts))}"
    )
    assert crashes == 0 and wrong == 0
