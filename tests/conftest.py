"""Shared fixtures. ``workers`` runs a test on every executor: in-process, 1 and 2 processes.

Set ARROWFLOW_TEST_WORKERS (e.g. "0" or "0,2") to narrow the executors while developing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

EXECUTORS = [
    int(w) for w in os.environ.get("ARROWFLOW_TEST_WORKERS", "0,1,2").split(",") if w.strip()
]


@pytest.fixture(params=EXECUTORS, ids=lambda w: f"workers{w}")
def workers(request: pytest.FixtureRequest) -> int:
    """0: the in-process executor; N > 0: a pool of N worker processes."""
    return request.param


@pytest.fixture(autouse=True)
def _restarts_are_failures(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A restart hides a crash: in the suite no run may restart (ARROWFLOW_RESTARTS=fail), and
    a test marked ``injects_faults`` (it kills workers with SIGKILL on purpose) may restart
    only a worker killed by SIGKILL: a segfault, a panic or an exception still fails it.
    Subprocesses that the tests start inherit the setting."""
    injected = request.node.get_closest_marker("injects_faults") is not None
    monkeypatch.setenv("ARROWFLOW_RESTARTS", "injected" if injected else "fail")


def _worker_pids() -> list[int]:
    """Live worker processes this process started: spawned children, or children of its
    forkserver (not the server itself, not the resource tracker, no zombies)."""
    from pathlib import Path

    server = _forkserver_pid()
    parents = {os.getpid()} | ({server} if server is not None else set())
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if (
            int(fields[1]) in parents
            and int(entry.name) != server
            and fields[0] != "Z"
            and b"multiprocessing" in cmdline
            and b"resource_tracker" not in cmdline
        ):
            found.append(int(entry.name))
    return found


def _forkserver_pid() -> int | None:
    """The pid of this process's multiprocessing forkserver, if one runs: pool workers are
    its children, not ours (arrowflow/_runtime/pool.py: start_context)."""
    import multiprocessing.forkserver as forkserver

    return getattr(forkserver._forkserver, "_forkserver_pid", None)


def _polars_sessions(df: Any, gap_s: int, key: str = "user") -> Any:
    """polars' session windows of ``df`` (columns ts, ``key``, amount): a key's events less
    than ``gap_s`` apart are one session, from its first event to its last plus the gap."""
    import polars as pl

    gap = pl.duration(seconds=gap_s)
    opens = (pl.col("ts") - pl.col("ts").shift(1).over(key) >= gap).fill_null(True)
    return (
        df.sort(key, "ts")
        .with_columns(session=opens.cast(pl.Int64).cum_sum().over(key))
        .group_by(key, "session")
        .agg(
            window_start=pl.col("ts").min(),
            window_end=pl.col("ts").max() + gap,
            n=pl.len(),
            total=pl.col("amount").sum(),
        )
        .drop("session")
    )


@pytest.fixture
def polars_sessions() -> Callable[..., Any]:
    """The independent reference of session windows, as a function to call."""
    return _polars_sessions


def _run_job_script(
    script: Path, config: dict[str, Any], faults: str = "", timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    """Run a job script in a fresh interpreter, its config as JSON in its one argument and
    ``faults`` as ARROWFLOW_FAULTS (arrowflow/_runtime/faults.py): the crash is a real one."""
    return subprocess.run(
        [sys.executable, str(script), json.dumps(config)],
        env={**os.environ, "ARROWFLOW_FAULTS": faults},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def run_job_script() -> Callable[..., subprocess.CompletedProcess[str]]:
    """Runs a job script with a fault spec, as a function to call (:func:`_run_job_script`)."""
    return _run_job_script


def _restores_from_each_checkpoint(
    run: Callable[..., Any], root: Path, *, at_least: int
) -> Iterator[tuple[Path, Any]]:
    """``run(folder, **options)`` (a flow's run with checkpoints in ``folder``) once in
    ``root / "first"``, which must keep ``at_least`` checkpoints; then, for each checkpoint
    but the last, in a folder of its own (a restore supersedes the checkpoints after the one
    it restores, and a copied checkpoint directory would be another job's): the same run,
    then ``run(folder, restore=checkpoint)``. Yields (folder, the restored run's result)."""
    import warnings

    first = run(root / "first")
    assert len(first.checkpoints) >= at_least, first.checkpoints
    for checkpoint in first.checkpoints[:-1]:
        folder = root / f"from-{checkpoint}"
        assert run(folder).checkpoints == first.checkpoints
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "rolled back output of later ..."
            again = run(folder, restore=checkpoint)
        assert again.restored_from == checkpoint
        yield folder, again


@pytest.fixture
def restores_from_each_checkpoint() -> Callable[..., Iterator[tuple[Path, Any]]]:
    """Restores a run from each of its checkpoints, as a function to call
    (:func:`_restores_from_each_checkpoint`)."""
    return _restores_from_each_checkpoint


@pytest.fixture
def worker_pids() -> Callable[[], list[int]]:
    """The pids of the pool workers this test process spawned, as a function to call."""
    return _worker_pids


@pytest.fixture
def this_kernel(tmp_path: Path) -> Any:
    """A Jupyter kernel manager (kernel name ``arrowflow-test``) of this very interpreter,
    the one arrowflow is installed in, whatever PATH says: for nbclient runs of notebooks."""
    import json
    import sys

    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    spec_dir = tmp_path / "kernels" / "arrowflow-test"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "arrowflow tests",
                "language": "python",
            }
        )
    )
    specs = KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")])
    return KernelManager(kernel_name="arrowflow-test", kernel_spec_manager=specs)
