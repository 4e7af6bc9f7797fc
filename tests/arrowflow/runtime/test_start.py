"""Pool workers start from a forkserver that preloaded the engine (issue 15): the server has
one thread (safe to fork), a worker gets the coordinator's environment of the moment (not
the server's), its thread pools are sized for its share of the cores, and ``spawn`` stays
the fallback with the same results."""

from __future__ import annotations

import multiprocessing.forkserver as forkserver
import os
from pathlib import Path

import polars as pl
import pytest

import arrowflow as af
from arrowflow.errors import PlanError
from arrowflow.testing import assert_frame_equal_unordered


def data() -> pl.DataFrame:
    n = 4_000
    return pl.DataFrame({"k": [(i * 7919) % 13 for i in range(n)], "v": list(range(n))})


def probe(frame: pl.DataFrame) -> pl.DataFrame:
    """Tag each row with what the worker process sees."""
    return frame.with_columns(
        pid=pl.lit(os.getpid()),
        probe=pl.lit(os.environ.get("ARROWFLOW_TEST_PROBE", "")),
        threads=pl.lit(pl.thread_pool_size()),
    )


def probed_run(workers: int = 2) -> pl.DataFrame:
    flow = af.Flow("probe")
    return flow.from_polars(data(), splits=4).map_batches(probe).collect(workers=workers)


def test_the_forkserver_runs_no_thread_pool_so_forking_it_is_safe() -> None:
    probed_run()
    pid = forkserver._forkserver._forkserver_pid
    assert pid is not None, "the pool did not start a forkserver"
    others = sorted(
        Path(f"/proc/{pid}/task/{task}/comm").read_text().strip()
        for task in os.listdir(f"/proc/{pid}/task")
        if task != str(pid)
    )
    # No compute pool (polars-N, tokio-rt-worker, Arrow's pool threads) and no jemalloc
    # purging thread: besides the main thread only polars' idle spill-folder cleaner.
    assert others == ["polars-ooc-clea"], others
    maps = Path(f"/proc/{pid}/maps").read_text()
    assert "polars" in maps and "arrow" in maps, "the server did not preload polars and pyarrow"


def test_workers_see_the_coordinators_environment_of_each_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    probed_run()  # the server exists now, started with the environment of that moment
    monkeypatch.setenv("ARROWFLOW_TEST_PROBE", "set-after-the-server-started")
    got = probed_run()
    assert got.height == 4_000
    assert os.getpid() not in got["pid"].to_list()
    assert got["probe"].unique().to_list() == ["set-after-the-server-started"]
    assert got["threads"].unique().to_list() == [max(1, (os.cpu_count() or 1) // 2)]
    assert_frame_equal_unordered(got.select("k", "v"), data())


def test_every_run_gets_fresh_worker_processes() -> None:
    first = set(probed_run()["pid"].to_list())
    second = set(probed_run()["pid"].to_list())
    assert first and second and not first & second


def test_a_run_with_more_threads_per_worker_spawns_with_its_limit() -> None:
    """workers=1 on a machine of 2+ cores gives its worker every core: polars fixes its pool
    size on import, so that worker is spawned (not forked from the 1-thread server)."""
    got = probed_run(workers=1)
    assert got["threads"].unique().to_list() == [os.cpu_count() or 1]
    assert_frame_equal_unordered(got.select("k", "v"), data())


def test_spawn_stays_the_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARROWFLOW_START_METHOD", "spawn")
    monkeypatch.setenv("ARROWFLOW_TEST_PROBE", "spawned")
    got = probed_run()
    assert got["probe"].unique().to_list() == ["spawned"]
    assert_frame_equal_unordered(got.select("k", "v"), data())
    monkeypatch.setenv("ARROWFLOW_START_METHOD", "fork")
    with pytest.raises(PlanError, match="must be forkserver or spawn"):
        probed_run()


@pytest.mark.parametrize("prestart", ["1", "0"])
def test_the_forkserver_starts_when_a_flow_gets_its_first_source(prestart: str) -> None:
    """So it has imported the engine by the time the first run needs it (a notebook builds a
    flow, then runs it a cell later); ARROWFLOW_PRESTART=0 leaves the start to the run."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        """
        import multiprocessing.forkserver as forkserver, os
        import polars as pl
        import arrowflow as af
        assert forkserver._forkserver._forkserver_pid is None
        flow = af.Flow("early")
        flow.from_polars(pl.DataFrame({"a": [1]}))
        pid = forkserver._forkserver._forkserver_pid
        print("started" if pid is not None and os.waitpid(pid, os.WNOHANG) == (0, 0) else "not started")
        """
    )
    env = {**os.environ, "ARROWFLOW_PRESTART": prestart}
    env.pop("ARROWFLOW_START_METHOD", None)
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ("started" if prestart == "1" else "not started")
