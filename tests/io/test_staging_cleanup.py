"""A run that fails on a full disk leaves no staged part files behind.

The disk is real: a 2 MiB tmpfs mounted for the test (root only; skipped otherwise), so the
writers fail with ENOSPC part-way through a file, after other part files were staged.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import warnings
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import arrowflow as af
from arrowflow.errors import SinkError, WorkerError


@pytest.fixture
def small_disk(tmp_path: Path) -> Path:
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("a real full disk needs a small tmpfs, and mounting one needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def events(tmp_path: Path) -> Path:
    """About 6 MB of random floats in Parquet (they do not compress): three times the disk."""
    rng = np.random.default_rng(808)
    folder = tmp_path / "in"
    folder.mkdir()
    for part in range(4):
        n = 100_000
        pl.DataFrame(
            {"id": rng.permutation(n) + part * n, "x": rng.random(n), "y": rng.normal(size=n)}
        ).write_parquet(folder / f"part-{part}.parquet", row_group_size=25_000)
    return folder


def used_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def pause(batch: pl.DataFrame) -> pl.DataFrame:
    time.sleep(0.03)  # lets checkpoints complete (and commit) before the disk is full
    return batch


def flow_to(events: Path, out: Path, fmt: str, *, slow: bool = False) -> af.Flow:
    flow = af.Flow("full-disk")
    stream = flow.read_parquet(str(events))
    if slow:
        stream = stream.map_batches(pause)
    getattr(stream, f"write_{fmt}")(str(out), rows_per_file=40_000)
    return flow


@pytest.mark.parametrize(("fmt", "workers"), [("parquet", 0), ("parquet", 2), ("csv", 0)])
def test_a_full_disk_leaves_no_staged_files(
    small_disk: Path, events: Path, workers: int, fmt: str
) -> None:
    out = small_disk / "out"
    with pytest.raises((SinkError, WorkerError), match="No space left on device"):
        flow_to(events, out, fmt).run(workers=workers, batch_size=10_000)
    assert sorted(p.name for p in (out / ".staging").iterdir()) == []
    assert used_bytes(small_disk) == 0  # nothing was committed: no checkpoint completed


def test_a_full_disk_with_checkpoints_keeps_what_they_committed_only(
    small_disk: Path, events: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The full disk is the fault this test injects, and the restarts after it are what it
    # checks: allow them (the suite's policy fails any restart).
    monkeypatch.setenv("ARROWFLOW_RESTARTS", "allow")
    out = small_disk / "out"
    checkpoints = tmp_path / "checkpoints"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the restarts' warnings
        with pytest.raises(WorkerError, match="No space left on device") as caught:
            flow_to(events, out, "parquet", slow=True).run(
                workers=2,
                batch_size=5_000,
                checkpoint_dir=str(checkpoints),
                checkpoint_every="50ms",
                keep_checkpoints=1_000,
            )
    assert "gave up after 3 restarts" in str(caught.value)
    assert sorted(p.name for p in (out / ".staging").iterdir()) == []
    listed = set()
    for manifest in checkpoints.glob("chk-*/_MANIFEST.json"):
        for names in json.loads(manifest.read_text())["sinks"].get("write_parquet", []):
            listed.update(names or ())
    visible = {p.name for p in out.iterdir() if not p.name.startswith(".")}
    assert visible and visible == listed  # what the complete checkpoints committed, nothing else
    rows = pl.read_parquet(sorted(out / name for name in visible))
    source = pl.read_parquet(events / "*.parquet")
    assert rows.join(source, on=["id", "x", "y"], how="anti").height == 0
    assert rows["id"].n_unique() == rows.height


def test_a_run_that_fits_is_unchanged(small_disk: Path, events: Path) -> None:
    """The control: the same flow over a quarter of the data fits the disk and commits it all."""
    small = events.parent / "small"
    small.mkdir()
    frame = pl.read_parquet(events / "part-0.parquet").head(30_000)
    frame.write_parquet(small / "part.parquet")
    out = small_disk / "out"
    flow_to(small, out, "parquet").run(workers=2, batch_size=10_000)
    assert sorted(p.name for p in (out / ".staging").iterdir()) == []
    got = pl.read_parquet(out / "*.parquet")
    assert got.sort("id").equals(frame.sort("id"))


@pytest.mark.soak
@pytest.mark.parametrize("round_", range(10))
@pytest.mark.parametrize("fmt", ["parquet", "csv", "ndjson", "ipc"])
def test_soak_full_disk(small_disk: Path, events: Path, fmt: str, round_: int) -> None:
    test_a_full_disk_leaves_no_staged_files(small_disk, events, workers=round_ % 3, fmt=fmt)


def test_a_read_only_disk_fails_each_step_of_the_protocol_clearly_and_changes_nothing(
    small_disk: Path,
) -> None:
    """Each step of the file sink's protocol that moves or removes files (commit, rollback,
    a restore's cleanup of the staging folder, a fresh run's preparation) fails with a
    SinkError saying which step and which folder when the disk refuses it (the tmpfs
    remounted read-only: EROFS), and leaves the committed and the staged files as they were."""
    from arrowflow.io.filesinks import FileSink
    from arrowflow.sinks import JobIdentity

    out = small_disk / "out"
    sink = FileSink("parquet", str(out))
    sink.attach(JobIdentity("0badcafe", 1, True, 3))
    sink.begin()
    writer = sink.open_writer(0, 1, "sink")
    first = pl.DataFrame({"i": [3, 1, 2]})
    writer.write(first)
    sink.commit(1, [writer.prepare_commit(1)])
    writer.write(pl.DataFrame({"i": [9, 7]}))
    staged = writer.prepare_commit(2)
    writer.close()
    before = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert len(before) == 2  # one committed, one staged part file
    remount = ["mount", "-o", "remount,ro", str(small_disk)]
    assert subprocess.run(remount, capture_output=True).returncode == 0
    try:
        steps = [
            ("cannot commit", lambda: sink.commit(2, [staged])),
            (
                "cannot remove the part files .* committed after checkpoint 0",
                lambda: sink.rollback(0),
            ),
            ("cannot clean the staging folder", lambda: sink.recover(1)),
            ("cannot prepare the output directory", sink.begin),
        ]
        for message, step in steps:
            with pytest.raises(SinkError, match=rf"{message}.*Read-only file system"):
                step()
            after = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
            assert after == before, message
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=False)
    [committed] = [name for name in before if not name.startswith(".")]
    assert pl.read_parquet(out / committed).equals(first)
