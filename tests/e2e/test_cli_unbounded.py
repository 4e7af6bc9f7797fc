"""`arrowflow run` on an unbounded flow: runs until SIGTERM/SIGINT, stops after a final
checkpoint, and a second run with --restore latest goes on exactly where it stopped."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import polars as pl

from arrowflow._runtime.checkpoints import CheckpointStorage


def append(log: Path, ids: range) -> None:
    with open(log, "a") as out:
        for i in ids:
            out.write(json.dumps({"id": i}) + "\n")


def read_until_done(tmp: Path, lines: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        storage = CheckpointStorage(str(tmp / "ck"))
        manifest = storage.latest(report=False)
        if manifest is not None:
            positions = manifest.sources["tail"]["positions"]
            if max((p["line"] for p in positions.values()), default=0) >= lines:
                return
        time.sleep(0.1)
    raise AssertionError("the job did not catch up")


def run_and_stop(
    tmp: Path, job: Path, lines: int, sig: int, restore: bool
) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "arrowflow.cli",
        "run",
        str(job),
        "--workers",
        "0",
        "--checkpoint-dir",
        str(tmp / "ck"),
        "--checkpoint-every",
        "200ms",
    ]
    if restore:
        cmd += ["--restore", "latest"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    read_until_done(tmp, lines)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def test_run_follows_a_file_until_signalled_and_resumes(tmp_path: Path) -> None:
    log = tmp_path / "app.jsonl"
    job = tmp_path / "job.py"
    job.write_text(
        textwrap.dedent(f"""
        import polars as pl, arrowflow as af
        flow = af.Flow("follow")
        flow.tail({str(log)!r}, format="ndjson", schema={{"id": pl.Int64}}, poll_interval="50ms").write_parquet(
            {str(tmp_path / "out")!r})
    """)
    )
    append(log, range(0, 300))
    first = run_and_stop(tmp_path, job, 300, signal.SIGTERM, restore=False)
    assert first.returncode == 0, first.stderr
    assert "SIGINT or SIGTERM stops it after a final checkpoint" in first.stderr
    append(log, range(300, 450))
    second = run_and_stop(tmp_path, job, 450, signal.SIGINT, restore=True)
    assert second.returncode == 0, second.stderr
    files = sorted((tmp_path / "out").glob("part-*.parquet"))
    ids = pl.concat([pl.read_parquet(f) for f in files])["id"].sort().to_list()
    assert ids == list(range(450))  # every line once, across the stop and the restart
