"""The worker pool: same results as polars with any worker count, and clean failure.

Fault tests use real processes: a raising user function, a real ``kill -9`` of a worker,
and a real SIGINT to a coordinator process. After each: no worker left running, nothing of
ours left in /dev/shm, and an error that says what happened.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

import arrowflow as af


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                found.append(int(entry.name))
    return found


def running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (an exited process not yet reaped, which
    a sandbox's PID 1 may never reap once its parent is gone)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return False
        if state in ("Z", "X"):
            return False
        time.sleep(0.05)
    return True


def our_segments(pid: int) -> list[str]:
    return [name for name in os.listdir("/dev/shm") if name.startswith(f"af-{pid}-")]


def workers_of(pid: int) -> list[int]:
    """The worker processes process ``pid`` started: its spawned children, or the children of
    its forkserver (arrowflow/_runtime/pool.py: start_context); not the server, not the
    resource tracker."""
    found = []
    for child in children_of(pid):
        try:
            cmd = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"resource_tracker" in cmd or b"multiprocessing" not in cmd:
            continue
        if b"forkserver" in cmd and b"main(" in cmd:
            found.extend(children_of(child))
        else:
            found.append(child)
    return found


def live_workers() -> list[int]:
    """Worker processes of this test process that still run (no zombies)."""
    pids = []
    for pid in workers_of(os.getpid()):
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            pids.append(pid)
    return pids


def events(n: int, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    return pl.DataFrame(
        {
            "user_id": rng.integers(0, 5_000, n),
            "event_type": rng.choice(["view", "click", "purchase", "add_to_cart"], n),
            "amount": np.round(rng.exponential(30, n), 2),
        }
    )


def w1(df: pl.DataFrame, flow: af.Flow, splits: int) -> af.Stream:
    return (
        flow.from_polars(df, splits=splits)
        .filter(pl.col("event_type").is_in(["purchase", "add_to_cart"]))
        .key_by("user_id")
        .agg(n=pl.len(), total=pl.col("amount").sum())
    )


def w1_polars(df: pl.DataFrame) -> pl.DataFrame:
    return (
        df.filter(pl.col("event_type").is_in(["purchase", "add_to_cart"]))
        .group_by("user_id")
        .agg(n=pl.len(), total=pl.col("amount").sum())
        .sort("user_id")
    )


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_batch_job_matches_polars_for_any_worker_count(workers: int) -> None:
    df = events(200_000)
    out = w1(df, af.Flow("w1"), splits=7).collect(workers=workers, batch_size=9_999).sort("user_id")
    assert_frame_equal(out, w1_polars(df), check_exact=False)
    assert not our_segments(os.getpid())


def test_batches_larger_than_a_ring_are_split_and_delivered(tmp_path: Path) -> None:
    # A 64 KiB ring and ~1 MB batches: every batch must be cut to fit, the ring wraps
    # constantly and senders hit backpressure.
    script = tmp_path / "job.py"
    script.write_text(
        textwrap.dedent("""
        import numpy as np, polars as pl, arrowflow as af
        rng = np.random.default_rng(3)
        n = 120_000
        df = pl.DataFrame({"k": rng.integers(0, 50_000, n), "s": rng.choice(["x" * 30, "y", ""], n),
                           "v": rng.random(n)})
        flow = af.Flow("big")
        out = flow.from_polars(df, splits=2).key_by("k").agg(n=pl.len(), v=pl.col("v").sum(),
                                                              s=pl.col("s").max())
        got = out.collect(workers=2).sort("k")
        ref = df.group_by("k").agg(n=pl.len(), v=pl.col("v").sum(), s=pl.col("s").max()).sort("k")
        from polars.testing import assert_frame_equal
        assert_frame_equal(got, ref, check_exact=False)
        print("OK", got.height)
    """)
    )
    env = {**os.environ, "ARROWFLOW_RING_BYTES": str(64 << 10)}
    done = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("OK")


def test_a_raising_user_function_fails_the_run_with_its_traceback() -> None:
    df = events(50_000)

    def explode(batch: pl.DataFrame) -> pl.DataFrame:
        if batch["amount"].max() > 0:
            raise ZeroDivisionError("the user function broke on purpose")
        return batch

    flow = af.Flow("boom")
    stream = flow.from_polars(df, splits=4).map_batches(explode, schema=df.schema)
    started = time.monotonic()
    with pytest.raises(af.WorkerError) as caught:
        stream.collect(workers=2)
    assert time.monotonic() - started < 30
    text = str(caught.value)
    assert "ZeroDivisionError: the user function broke on purpose" in text
    assert "explode" in caught.value.traceback_text  # the worker's own traceback, as text
    time.sleep(0.2)
    assert live_workers() == []
    assert not our_segments(os.getpid())


def test_kill_9_of_a_worker_is_noticed_within_a_second() -> None:
    df = events(40_000)

    def slow(batch: pl.DataFrame) -> pl.DataFrame:
        import time as _t

        _t.sleep(0.05)
        return batch

    flow = af.Flow("victim")
    stream = (
        flow.from_polars(df, splits=40)
        .map_batches(slow, schema=df.schema)
        .key_by("user_id")
        .agg(n=pl.len())
    )
    killed: dict[str, float] = {}

    def assassin() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            workers = live_workers()
            if len(workers) == 2:
                time.sleep(1.5)  # let it get going
                os.kill(workers[1], signal.SIGKILL)
                killed["at"] = time.monotonic()
                return
            time.sleep(0.05)

    thread = threading.Thread(target=assassin)
    thread.start()
    with pytest.raises(af.WorkerError) as caught:
        stream.collect(workers=2, batch_size=500)
    noticed = time.monotonic()
    thread.join()
    assert "at" in killed, "the test never saw two workers to kill"
    assert (
        noticed - killed["at"] < 1.0 + 2.5
    )  # noticed within a second; stopping the other takes <2.5 s
    assert "killed by signal 9 (SIGKILL)" in str(caught.value)
    time.sleep(0.2)
    assert live_workers() == []
    assert not our_segments(os.getpid())


def test_ctrl_c_stops_every_worker_and_frees_shared_memory(tmp_path: Path) -> None:
    script = tmp_path / "job.py"
    script.write_text(
        textwrap.dedent("""
        import time, polars as pl, numpy as np, arrowflow as af
        df = pl.DataFrame({"k": np.arange(100_000) % 977, "v": np.ones(100_000)})
        def slow(batch):
            time.sleep(0.2)
            return batch
        flow = af.Flow("ctrlc")
        flow.from_polars(df, splits=50).map_batches(slow, schema=df.schema).key_by("k").agg(
            n=pl.len()).write_parquet(OUT)
        print("STARTED", flush=True)
        flow.run(workers=2)
        print("FINISHED", flush=True)
    """).replace("OUT", repr(str(tmp_path / "out")))
    )
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "STARTED"
    deadline = time.monotonic() + 60
    while len(workers_of(proc.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)
    workers = workers_of(proc.pid)
    assert len(workers) == 2
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode != 0
    assert "FINISHED" not in out
    assert "JobCancelled" in err and "interrupted (Ctrl-C)" in err
    for pid in workers:  # gone: the coordinator stopped them before it exited
        assert not running(pid)
    assert not our_segments(proc.pid)
    assert (
        not [p for p in (tmp_path / "out").glob("part-*")] if (tmp_path / "out").exists() else True
    )
