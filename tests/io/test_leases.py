"""One job at a time per checkpoint directory and per output folder (arrowflow._runtime.lease).

Real processes started side by side: the second job is refused at once, naming the holder,
before it writes anything, and the output is exactly the single run's (checked against
polars over the input). A kill -9'd job's lease does not block a restart: locally at once
(the kernel drops the flock), on an object store (S3 through moto) once its expiry passed.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from arrowflow._runtime.checkpoints import CheckpointStorage
from arrowflow._runtime.lease import LEASE_NAME, Lease, LeaseError

JOB = textwrap.dedent("""
    import json, sys, time
    import arrowflow as af

    config = json.loads(sys.argv[1])

    def slow(batch):
        time.sleep(config["sleep"])
        return batch

    flow = af.Flow("leased")
    flow.read_parquet(config["input"]).map_batches(slow).write_parquet(
        config["out"], storage_options=config["options"])
    try:
        result = flow.run(workers=1, checkpoint_dir=config["checkpoints"], storage_options=config["options"],
                          checkpoint_every="200ms", restore="latest", batch_size=500)
    except af.ArrowflowError as exc:
        print("REFUSED", type(exc).__name__, str(exc), flush=True)
        sys.exit(3)
    print("RESULT", json.dumps({"rows_in": result.rows_in, "restored_from": result.restored_from}), flush=True)
""")


@pytest.fixture(scope="module")
def lease_input(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 Parquet files of 2,500 events, row groups of 500 rows (40 splits), ids shuffled."""
    folder = tmp_path_factory.mktemp("lease-input")
    rng = np.random.default_rng(13)
    ids = rng.permutation(20_000)
    for part in range(8):
        chunk = ids[part * 2_500 : (part + 1) * 2_500]
        pl.DataFrame({"event_id": chunk, "amount": rng.random(chunk.size).round(4)}).write_parquet(
            folder / f"events-{part}.parquet", row_group_size=500
        )
    return folder


def start(
    tmp: Path,
    input_dir: Path,
    *,
    name: str,
    checkpoints: str,
    out: str,
    sleep: float = 0.0,
    options: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.Popen:
    script = tmp / "job.py"
    script.write_text(JOB)
    config = {
        "input": str(input_dir),
        "out": out,
        "checkpoints": checkpoints,
        "sleep": sleep,
        "options": options,
    }
    return subprocess.Popen(
        [sys.executable, str(script), json.dumps(config)],
        env={**os.environ, **(env or {})},
        stdout=open(tmp / f"{name}.out", "w"),
        stderr=open(tmp / f"{name}.err", "w"),
        text=True,
    )


def output(tmp: Path, name: str) -> str:
    return (tmp / f"{name}.out").read_text() + (tmp / f"{name}.err").read_text()[-3000:]


def wait_for(condition: Any, timeout: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def committed_local(folder: Path) -> pl.DataFrame:
    return pl.concat([pl.read_parquet(p) for p in sorted(folder.glob("part-*.parquet"))])


def exactly_the_input(got: pl.DataFrame, input_dir: Path) -> None:
    expected = pl.read_parquet(input_dir / "*.parquet")
    assert got.height == expected.height, f"{got.height} rows committed, expected {expected.height}"
    assert got["event_id"].is_duplicated().sum() == 0, "a row was committed twice"
    assert got.sort("event_id").equals(expected.sort("event_id"))


def holds_local_lease(folder: Path, pid: int) -> bool:
    try:
        return json.loads((folder / LEASE_NAME).read_text()).get("pid") == pid
    except (OSError, ValueError):
        return False


def refused_quickly(proc: subprocess.Popen, holder: subprocess.Popen, tmp: Path, name: str) -> str:
    started = time.monotonic()
    code = proc.wait(timeout=60)
    text = output(tmp, name)
    # At once: the time to start Python and import arrowflow, not a run.
    assert time.monotonic() - started < 20, f"refused only after {time.monotonic() - started:.1f} s"
    assert code == 3 and "REFUSED LeaseError" in text, text
    assert holder.poll() is None, (
        "the first job ended before the second was refused: no overlap was tested"
    )
    assert (
        f"pid {holder.pid}" in text and repr(socket.gethostname()) in text and "since 20" in text
    ), text
    return text


@pytest.mark.parametrize("same_checkpoint_dir", [True, False])
def test_a_second_job_on_one_checkpoint_dir_or_output_folder_is_refused(
    tmp_path: Path, lease_input: Path, same_checkpoint_dir: bool
) -> None:
    first = start(
        tmp_path,
        lease_input,
        name="first",
        checkpoints=str(tmp_path / "ck1"),
        out=str(tmp_path / "out"),
        sleep=0.08,
    )
    storage = CheckpointStorage(str(tmp_path / "ck1"))
    wait_for(
        lambda: storage.latest(report=False) is not None, what="the first job's first checkpoint"
    )
    assert holds_local_lease(tmp_path / "out", first.pid) and holds_local_lease(
        tmp_path / "ck1", first.pid
    )
    second = start(
        tmp_path,
        lease_input,
        name="second",
        checkpoints=str(tmp_path / ("ck1" if same_checkpoint_dir else "ck2")),
        out=str(tmp_path / "out"),
    )
    text = refused_quickly(second, first, tmp_path, "second")
    assert (
        "the checkpoint_dir" if same_checkpoint_dir else "the output folder of write_parquet"
    ) in text
    if not same_checkpoint_dir:
        assert CheckpointStorage(str(tmp_path / "ck2")).checkpoint_ids() == [], (
            "the refused job checkpointed"
        )
    assert first.wait(timeout=120) == 0, output(tmp_path, "first")
    exactly_the_input(committed_local(tmp_path / "out"), lease_input)
    # The run removed its lock files at the end; nothing but part files is left in the output.
    assert (
        not (tmp_path / "out" / LEASE_NAME).exists()
        and not (tmp_path / "ck1" / LEASE_NAME).exists()
    )


def test_a_killed_jobs_local_lease_does_not_block_the_restart(
    tmp_path: Path, lease_input: Path
) -> None:
    first = start(
        tmp_path,
        lease_input,
        name="first",
        checkpoints=str(tmp_path / "ck"),
        out=str(tmp_path / "out"),
        sleep=0.08,
    )
    storage = CheckpointStorage(str(tmp_path / "ck"))
    wait_for(lambda: storage.latest(report=False) is not None, what="a first checkpoint")
    first.kill()  # SIGKILL: the lock file stays behind, its flock dies with the process
    first.wait()
    assert holds_local_lease(tmp_path / "ck", first.pid)
    again = start(
        tmp_path,
        lease_input,
        name="again",
        checkpoints=str(tmp_path / "ck"),
        out=str(tmp_path / "out"),
    )
    assert again.wait(timeout=120) == 0, output(tmp_path, "again")
    summary = json.loads(output(tmp_path, "again").split("RESULT ", 1)[1].splitlines()[0])
    assert summary["restored_from"] is not None
    exactly_the_input(committed_local(tmp_path / "out"), lease_input)


def test_two_jobs_on_one_s3_checkpoint_dir_and_a_crashed_holder_after_its_expiry(
    tmp_path: Path, lease_input: Path, s3: tuple[Any, str, dict[str, Any]]
) -> None:
    fs, url, options = s3
    env = {"ARROWFLOW_LEASE_EXPIRY": "3"}
    lease_object = f"{url}/ck/{LEASE_NAME}".removeprefix("s3://")

    def holder() -> dict[str, Any] | None:
        fs.invalidate_cache()
        try:
            return json.loads(fs.cat(lease_object))
        except FileNotFoundError:
            return None

    first = start(
        tmp_path,
        lease_input,
        name="first",
        checkpoints=f"{url}/ck",
        out=f"{url}/out",
        sleep=0.1,
        options=options,
        env=env,
    )
    wait_for(lambda: (holder() or {}).get("pid") == first.pid, what="the first job's lease object")
    second = start(
        tmp_path,
        lease_input,
        name="second",
        checkpoints=f"{url}/ck",
        out=f"{url}/out",
        options=options,
        env=env,
    )
    text = refused_quickly(second, first, tmp_path, "second")
    assert "valid until" in text
    # The first job renews its lease past its 3 s expiry.
    renewed = (holder() or {}).get("expires", 0)
    wait_for(lambda: (holder() or {}).get("expires", 0) > renewed, timeout=10, what="a renewal")
    first.kill()  # kill -9: its lease stays until it expires
    first.wait()
    lapsed_at = holder()["expires"]
    assert lapsed_at > time.time()
    third = start(
        tmp_path,
        lease_input,
        name="third",
        checkpoints=f"{url}/ck",
        out=f"{url}/out",
        options=options,
        env=env,
    )
    third.wait(timeout=60)
    if time.time() < lapsed_at:  # refused while the crashed job's lease was still valid
        assert third.returncode == 3 and f"pid {first.pid}" in output(tmp_path, "third")
    time.sleep(max(0.0, lapsed_at - time.time()) + 0.2)
    fourth = start(
        tmp_path,
        lease_input,
        name="fourth",
        checkpoints=f"{url}/ck",
        out=f"{url}/out",
        options=options,
        env=env,
    )
    assert fourth.wait(timeout=120) == 0, output(tmp_path, "fourth")
    files = sorted(
        p
        for p in fs.find(f"{url}/out".removeprefix("s3://"))
        if p.rsplit("/", 1)[-1].startswith("part-")
    )
    exactly_the_input(
        pl.concat([pl.read_parquet(fs.open(p, "rb").read()) for p in files]), lease_input
    )
    assert holder() is None, "the finished job left its lease object behind"


# ---------------------------------------------------------------------------- in one process


def test_local_lease_is_exclusive_and_released(tmp_path: Path) -> None:
    first = Lease(str(tmp_path / "ck"), None, what="checkpoint_dir", flow="a")
    first.acquire()
    second = Lease(str(tmp_path / "ck"), None, what="checkpoint_dir", flow="b")
    with pytest.raises(
        LeaseError,
        match=rf"checkpoint_dir .* in use by another job: flow 'a', host .*, "
        rf"pid {os.getpid()}, since 20",
    ):
        second.acquire()
    first.release()
    second.acquire()
    second.release()
    assert not (tmp_path / "ck" / LEASE_NAME).exists()


def test_object_store_lease_expires_renews_and_is_taken_over(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import fsspec

    monkeypatch.setenv("ARROWFLOW_LEASE_EXPIRY", "0.6")
    url = f"memory://af-lease-{time.time_ns()}/ck"
    first = Lease(url, None, what="checkpoint_dir", flow="a")
    first.acquire()
    time.sleep(1.5)  # well past one expiry: the renewals keep it
    with pytest.raises(LeaseError, match=r"flow 'a'.*valid until"):
        Lease(url, None, what="checkpoint_dir", flow="b").acquire()
    # A holder that stops renewing (as a crashed one does) loses its lease once it expires.
    first.stopping.set()
    first.renewer.join()
    time.sleep(0.8)
    taker = Lease(url, None, what="checkpoint_dir", flow="c")
    taker.acquire()
    stored = json.loads(
        fsspec.filesystem("memory").cat(f"{url.removeprefix('memory://')}/{LEASE_NAME}")
    )
    assert stored["token"] == taker.holder["token"]
    taker.release()
    assert not fsspec.filesystem("memory").exists(f"{url.removeprefix('memory://')}/{LEASE_NAME}")
