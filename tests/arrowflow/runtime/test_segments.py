"""Shared-memory segments left by a killed coordinator are reclaimed by the next pool.

Real processes: a job killed with ``kill -9`` of its whole process group (coordinator,
workers and Python's resource tracker, as the OOM killer or a stopped container does; a
coordinator killed alone is cleaned up after by its resource tracker) leaves its rings in
``/dev/shm``; the next run with workers removes them and leaves those of live processes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import arrowflow as af
from arrowflow._runtime.shm_segments import SHM_DIR, segment_name, start_time
from arrowflow.testing import assert_frame_equal_unordered

pytestmark = pytest.mark.skipif(
    not os.path.isdir("/proc/self") or not os.path.isdir(SHM_DIR),
    reason="needs Linux /proc and /dev/shm",
)

JOB = textwrap.dedent("""
    import sys, time
    import numpy as np, polars as pl, arrowflow as af

    def slow(batch):
        time.sleep(0.2)  # the run lasts seconds: killed while it runs, not after it ended
        return batch

    flow = af.Flow("killed")
    (flow.read_parquet(sys.argv[1]).map_batches(slow).key_by("k").agg(s=pl.col("v").sum())
     .write_parquet(sys.argv[2]))
    flow.run(workers=2, batch_size=500)
""")


def segments_of(pid: int) -> list[str]:
    return sorted(name for name in os.listdir(SHM_DIR) if name.startswith(f"af-{pid}-"))


def plant(name: str) -> Path:
    """A segment file as shm_open would make it (a file in /dev/shm)."""
    path = Path(SHM_DIR) / name
    path.write_bytes(bytes(4096))
    return path


@pytest.fixture
def data(tmp_path: Path) -> Path:
    rng = np.random.default_rng(88)
    n = 100_000
    path = tmp_path / "in.parquet"
    pl.DataFrame({"k": rng.integers(0, 500, n), "v": rng.integers(-1000, 1000, n)}).write_parquet(
        path, row_group_size=2_000
    )
    return path


def test_segment_names_carry_pid_and_start_time() -> None:
    name = segment_name("0a1b2c3d", 1, 0)
    pid, started, token, sender, receiver = name.split("-")[1:]
    assert (int(pid), token, sender, receiver) == (os.getpid(), "0a1b2c3d", "1", "0")
    ticks = int(Path(f"/proc/{os.getpid()}/stat").read_text().rsplit(")", 1)[1].split()[19])
    assert int(started, 36) == ticks


def test_segments_of_a_killed_coordinator_are_reclaimed_by_the_next_run(
    tmp_path: Path, data: Path, kill_delay: float = 0.0
) -> None:
    script = tmp_path / "job.py"
    script.write_text(JOB)
    job = subprocess.Popen(
        [sys.executable, str(script), str(data), str(tmp_path / "killed-out")],
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    other = subprocess.Popen(["sleep", "60"])
    planted: list[Path] = []
    try:
        deadline = time.monotonic() + 60
        # The rings are created one after the other: wait for both, not for the first.
        while len(segments_of(job.pid)) < 2 and time.monotonic() < deadline and job.poll() is None:
            time.sleep(0.1)
        left = segments_of(job.pid)
        assert len(left) == 2, f"the job should be running with its two rings: {job.communicate()}"
        time.sleep(kill_delay)
        os.killpg(job.pid, signal.SIGKILL)  # the coordinator, its workers and its resource tracker
        job.wait(10)
        time.sleep(1.0)
        assert segments_of(job.pid) == left, "kill -9 of the group leaves the rings behind"

        # A live process's rings stay; a reused pid (same pid, other start time) and an older
        # name whose pid is gone are reclaimed.
        started = start_time(other.pid)
        assert started is not None
        live = plant(f"af-{other.pid}-{started}-feedf00d-0-1")
        live_old_style = plant(f"af-{other.pid}-feedf00d-1-0")
        reused = plant(f"af-{other.pid}-{'1' + started}-deadbeef-0-1")
        dead_old_style = plant(f"af-{job.pid}-deadbeef-0-1")
        not_a_ring = plant(f"af-notapid-{started}-deadbeef-0-1")
        planted = [live, live_old_style, reused, dead_old_style, not_a_ring]

        flow = af.Flow("next")
        sums = flow.read_parquet(str(data)).key_by("k").agg(s=pl.col("v").sum())
        with pytest.warns(
            UserWarning,
            match=r"removed \d+ shared-memory segments left in /dev/shm .*"
            rf"\b{job.pid}\b",
        ):
            result = af.testing.collect_all(sums, workers=2)
        assert segments_of(job.pid) == []
        assert not reused.exists() and not dead_old_style.exists()
        assert live.exists() and live_old_style.exists() and not_a_ring.exists()
        expected = pl.read_parquet(data).group_by("k").agg(s=pl.col("v").sum())
        assert_frame_equal_unordered(result[0], expected)
        assert segments_of(os.getpid()) == [], "the run's own rings are unlinked at its end"
    finally:
        other.kill()
        other.wait()
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
        for path in planted:
            path.unlink(missing_ok=True)
        for name in segments_of(job.pid):
            (Path(SHM_DIR) / name).unlink(missing_ok=True)


@pytest.mark.soak
@pytest.mark.parametrize("round_", range(12))
def test_soak_kill_and_reclaim(tmp_path: Path, data: Path, round_: int) -> None:
    test_segments_of_a_killed_coordinator_are_reclaimed_by_the_next_run(
        tmp_path, data, kill_delay=0.25 * round_
    )
