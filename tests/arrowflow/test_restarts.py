"""A restart never hides a crash: the policy (ARROWFLOW_RESTARTS), the reasons a run records,
and the summaries' last lines.

The worker crash here is real: a user function sends SIGSEGV to its own process the first
time any worker runs it (an O_EXCL marker file makes it once per test), as a crash inside
polars would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import arrowflow as af
from arrowflow.errors import WorkerError
from arrowflow.testing import assert_frame_equal_unordered


def frame(n: int = 20_000) -> pl.DataFrame:
    rng = np.random.default_rng(5)
    return pl.DataFrame(
        {
            "event_id": rng.permutation(n),
            "user_id": rng.integers(0, 300, n),
            "amount": np.round(rng.exponential(30, n), 2),
        }
    )


def crashing_flow(tmp_path: Path, df: pl.DataFrame) -> af.Flow:
    marker = str(tmp_path / "crashed-once")

    def crash_once(batch: pl.DataFrame) -> pl.DataFrame:
        if not batch.height:  # the flow's schema is found by calling it on an empty frame
            return batch
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return batch
        os.kill(os.getpid(), signal.SIGSEGV)
        return batch

    flow = af.Flow("crashy")
    flow.from_polars(df, splits=8).map_batches(crash_once).write_parquet(str(tmp_path / "out"))
    return flow


def run(flow: af.Flow, tmp_path: Path) -> af.RunResult:
    return flow.run(
        workers=2,
        checkpoint_dir=str(tmp_path / "ckpt"),
        checkpoint_every=af.every_rows(5_000),
        batch_size=1_000,
        progress=False,
    )


@pytest.mark.filterwarnings("ignore:.*restarting from the newest checkpoint")
def test_allowed_restart_is_recorded_with_its_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ARROWFLOW_RESTARTS", "allow")
    df = frame()
    with pytest.warns(UserWarning, match="SIGSEGV"):
        result = run(crashing_flow(tmp_path, df), tmp_path)
    assert result.restarts == 1
    assert len(result.restart_reasons) == 1 and "SIGSEGV" in result.restart_reasons[0]
    # the restart lost and repeated nothing
    assert_frame_equal_unordered(pl.read_parquet(tmp_path / "out" / "*.parquet"), df)
    from arrowflow.cli import restarts_line

    assert restarts_line(result).startswith("restarts: 1 ") and "SIGSEGV" in restarts_line(result)


@pytest.mark.parametrize("policy", ["injected", "fail"])
def test_a_crash_fails_the_run_under_the_strict_policies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, policy: str
) -> None:
    monkeypatch.setenv("ARROWFLOW_RESTARTS", policy)
    with pytest.raises(WorkerError, match=r"(?s)signal 11 \(SIGSEGV\).*not restarted"):
        run(crashing_flow(tmp_path, frame()), tmp_path)


def test_the_suite_runs_with_restarts_as_failures() -> None:
    """The conftest fixture is on for every test: a run that restarts without an injected fault
    fails its test."""
    assert os.environ["ARROWFLOW_RESTARTS"] == "fail"


def test_an_unknown_policy_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARROWFLOW_RESTARTS", "sometimes")
    flow = af.Flow("plain")
    flow.from_polars(frame(100)).write_parquet(str(tmp_path / "out"))
    with pytest.raises(af.ArrowflowError, match="ARROWFLOW_RESTARTS must be one of"):
        flow.run(workers=0)


JOB = textwrap.dedent("""
    import os, signal
    import numpy as np
    import polars as pl
    import arrowflow as af

    MARKER = os.environ["CRASH_MARKER"]

    def crash_once(batch):
        if not batch.height:
            return batch
        try:
            os.close(os.open(MARKER, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return batch
        os.kill(os.getpid(), signal.SIGSEGV)
        return batch

    rng = np.random.default_rng(1)
    flow = af.Flow("crashy")
    (flow.from_polars(pl.DataFrame({"x": rng.permutation(10_000)}), splits=8)
         .map_batches(crash_once).write_parquet(os.environ["OUT"]))
""")


@pytest.mark.parametrize(("policy", "code"), [("allow", 0), ("fail", 1)])
def test_cli_summary_ends_with_the_restarts_and_why(tmp_path: Path, policy: str, code: int) -> None:
    job = tmp_path / "job.py"
    job.write_text(JOB)
    script = Path(sys.executable).with_name("arrowflow")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "arrowflow.cli"]
    done = subprocess.run(
        [
            *command,
            "run",
            str(job),
            "--workers",
            "2",
            "--checkpoint-dir",
            str(tmp_path / "ckpt"),
            "--batch-size",
            "500",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
        env={
            **os.environ,
            "ARROWFLOW_RESTARTS": policy,
            "CRASH_MARKER": str(tmp_path / "m"),
            "OUT": str(tmp_path / "out"),
        },
    )
    assert done.returncode == code, done.stderr
    if code == 0:
        last = done.stdout.strip().splitlines()[-1]
        assert last.startswith("restarts: 1 ") and "SIGSEGV" in last, done.stdout
        assert pl.read_parquet(tmp_path / "out" / "*.parquet")["x"].sort().to_list() == list(
            range(10_000)
        )
    else:
        assert "SIGSEGV" in done.stderr and "not restarted" in done.stderr, done.stderr
