"""A restore from an older checkpoint rolls the sinks back first (in-process runs, fast).

Every check compares the committed output with polars over the same input.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

import arrowflow as af
from arrowflow.cli import format_summary
from arrowflow.errors import CheckpointError
from arrowflow.io.filesinks import part_checkpoint
from arrowflow.sinks import Sink, SinkWriter

RNG = np.random.default_rng(41)
EVENTS = pl.DataFrame({"event_id": RNG.permutation(12_000), "amount": RNG.random(12_000).round(3)})


def build(out: Path) -> af.Flow:
    flow = af.Flow("rollback")
    flow.from_polars(EVENTS, splits=12).filter(pl.col("amount") > 0.2).write_parquet(
        str(out), rows_per_file=700
    )
    return flow


def committed(out: Path) -> pl.DataFrame:
    return pl.concat([pl.read_parquet(p) for p in sorted(out.glob("part-*.parquet"))])


def test_restore_of_an_older_checkpoint_removes_later_parts_and_reports_them(
    tmp_path: Path,
) -> None:
    out, ck = tmp_path / "out", str(tmp_path / "ck")
    first = build(out).run(
        workers=0,
        checkpoint_dir=ck,
        checkpoint_every=af.every_rows(2_000),
        batch_size=1_000,
        keep_checkpoints=20,
    )
    assert len(first.checkpoints) >= 4 and first.rolled_back == []
    later = {p.name for p in out.glob("part-*") if part_checkpoint(p.name) > 2}
    assert later
    with pytest.warns(
        UserWarning, match=r"restoring checkpoint 2, rolled back output of later checkpoints"
    ):
        again = build(out).run(
            workers=0,
            checkpoint_dir=ck,
            checkpoint_every=af.every_rows(2_000),
            batch_size=1_000,
            restore=2,
        )
    assert again.restored_from == 2
    [item] = again.rolled_back
    assert (item.checkpoint, item.what, item.count) == (2, "part files", len(later))
    assert item.epochs == sorted({part_checkpoint(n) for n in later})
    assert not later & {p.name for p in out.glob("part-*")}, (
        "a part file of a later checkpoint survived"
    )
    expected = EVENTS.filter(pl.col("amount") > 0.2)
    got = committed(out)
    assert got.height == expected.height and got["event_id"].is_duplicated().sum() == 0
    assert got.sort("event_id").equals(expected.sort("event_id"))
    assert "rolled_back=" in repr(again) and f"removed {len(later)} part files" in repr(again)
    assert f"rolled back write_parquet {str(out)!r}" in format_summary(af.Flow("rollback"), again)


def test_a_moved_checkpoint_directory_still_rolls_back_its_jobs_parts(tmp_path: Path) -> None:
    """The job's tag, which names its part files, is kept in the checkpoint directory: moved
    (with its output) to another path, or reached through a symlink, the directory still
    rolls back the parts of its later checkpoints, and every row is committed once. It was
    derived from the directory's path: after a move the rollback left those parts in place
    and the replay wrote their rows a second time."""
    before, after = tmp_path / "before", tmp_path / "after"
    options: dict[str, Any] = {
        "workers": 0,
        "checkpoint_every": af.every_rows(2_000),
        "batch_size": 1_000,
        "keep_checkpoints": 20,
    }
    first = build(before / "out").run(checkpoint_dir=str(before / "ck"), **options)
    assert len(first.checkpoints) >= 4
    before.rename(after)
    link = tmp_path / "link"
    link.symlink_to(after, target_is_directory=True)
    for root, restore in ((after, 3), (link, 2)):
        with pytest.warns(UserWarning, match="rolled back output of later checkpoints"):
            again = build(root / "out").run(
                checkpoint_dir=str(root / "ck"), restore=restore, **options
            )
        assert again.restored_from == restore
        expected = EVENTS.filter(pl.col("amount") > 0.2)
        got = committed(after / "out")
        assert got["event_id"].is_duplicated().sum() == 0, "rows committed twice"
        assert got.sort("event_id").equals(expected.sort("event_id"))


def test_a_damaged_job_file_is_refused_before_anything_changes(tmp_path: Path) -> None:
    out, ck = tmp_path / "out", tmp_path / "ck"
    options = {"workers": 0, "checkpoint_dir": str(ck), "checkpoint_every": af.every_rows(2_000)}
    build(out).run(**options, batch_size=1_000)
    files = {p: p.read_bytes() for p in [*out.rglob("*"), *ck.rglob("*")] if p.is_file()}
    for damage in (b"", b'{"tag": "../../x"}', b'{"tag": 7}', b"\xff" * 10):
        (ck / "_JOB.json").write_bytes(damage)
        with pytest.raises(CheckpointError, match=r"_JOB.json.*is damaged"):
            build(out).run(**options, batch_size=1_000, restore=1)
        changed = {
            p for p, data in files.items() if p.name != "_JOB.json" and p.read_bytes() != data
        }
        assert not changed


def test_another_jobs_parts_in_the_same_folder_are_not_rolled_back(tmp_path: Path) -> None:
    out = tmp_path / "out"
    other = af.Flow("other")
    other.from_polars(EVENTS.head(3_000), splits=6).write_parquet(
        str(out), mode="append", rows_per_file=400
    )
    other.run(
        workers=0,
        checkpoint_dir=str(tmp_path / "other-ck"),
        checkpoint_every=af.every_rows(500),
        batch_size=250,
    )
    theirs = {p.name for p in out.glob("part-*")}
    assert max(part_checkpoint(n) for n in theirs) > 2
    flow = af.Flow("mine")
    flow.from_polars(EVENTS.tail(5_000), splits=10).write_parquet(
        str(out), mode="append", rows_per_file=400
    )
    ck = str(tmp_path / "ck")
    flow.run(
        workers=0,
        checkpoint_dir=ck,
        checkpoint_every=af.every_rows(1_000),
        batch_size=500,
        keep_checkpoints=9,
    )
    again = af.Flow("mine")
    again.from_polars(EVENTS.tail(5_000), splits=10).write_parquet(
        str(out), mode="append", rows_per_file=400
    )
    with pytest.warns(UserWarning, match="rolled back"):
        again.run(
            workers=0,
            checkpoint_dir=ck,
            checkpoint_every=af.every_rows(1_000),
            batch_size=500,
            restore=1,
        )
    assert theirs <= {p.name for p in out.glob("part-*")}
    got = committed(out)
    expected = pl.concat([EVENTS.head(3_000), EVENTS.tail(5_000)])
    assert got.height == expected.height
    assert got.sort("event_id").equals(expected.sort("event_id"))


class ListSink(Sink):
    """A durable sink without a rollback: it appends committed rows to a JSON file."""

    kind = "list"

    def __init__(self, path: Path) -> None:
        self.path = path

    def open_writer(self, worker: int, parallelism: int, operator_id: str) -> SinkWriter:
        return _ListWriter()

    def commit(self, checkpoint_id: int, staged: list[Any]) -> None:
        rows = json.loads(self.path.read_text()) if self.path.exists() else []
        rows.extend(r for item in staged if item for r in item)
        self.path.write_text(json.dumps(rows))


class _ListWriter(SinkWriter):
    def __init__(self) -> None:
        self.rows: list[int] = []

    def write(self, batch: pl.DataFrame) -> None:
        self.rows.extend(batch["event_id"].to_list())

    def prepare_commit(self, checkpoint_id: int) -> Any:
        rows, self.rows = self.rows, []
        return rows or None


def test_a_sink_that_cannot_roll_back_makes_the_restore_refuse(tmp_path: Path) -> None:
    def flow() -> af.Flow:
        built = af.Flow("no-rollback")
        built.from_polars(EVENTS, splits=6).write_to(ListSink(tmp_path / "rows.json"))
        return built

    ck = str(tmp_path / "ck")
    flow().run(
        workers=0,
        checkpoint_dir=ck,
        checkpoint_every=af.every_rows(3_000),
        batch_size=1_000,
        keep_checkpoints=10,
    )
    before = (tmp_path / "rows.json").read_text()
    with pytest.raises(
        CheckpointError,
        match=r"cannot restore checkpoint 2 .* the later checkpoint\(s\) \[3, .*"
        r"cannot remove output of later checkpoints.*To go on: remove that "
        r"output yourself and delete chk-00000003",
    ):
        flow().run(workers=0, checkpoint_dir=ck, restore=2)
    assert (tmp_path / "rows.json").read_text() == before, "the refused restore wrote output"


@pytest.mark.filterwarnings("ignore:.*restarting from the newest checkpoint")
@pytest.mark.filterwarnings("ignore:skipping checkpoint")
@pytest.mark.injects_faults
def test_a_restart_that_starts_over_removes_what_the_runs_own_checkpoints_committed(
    tmp_path: Path, worker_pids
) -> None:
    """mode="append", restore=None: the run commits two checkpoints, both get damaged, then a
    worker is killed. The restart finds none of the run's checkpoints and starts over; the
    rows those checkpoints committed go first, or the replay would append them again."""
    import os
    import signal
    import time

    from arrowflow._runtime.checkpoints import MANIFEST, chk_dir

    def slow(batch: pl.DataFrame) -> pl.DataFrame:
        time.sleep(0.03)
        return batch

    out, ck = tmp_path / "out", tmp_path / "ck"
    earlier = EVENTS.head(500)  # a user's earlier output in the folder, appended to
    flow = af.Flow("earlier")
    flow.from_polars(earlier).write_parquet(str(out), mode="append")
    flow.run(workers=0)
    flow = af.Flow("starting-over")
    flow.from_polars(EVENTS, splits=24).map_batches(slow).write_parquet(str(out), mode="append")
    job = flow.start(workers=2, checkpoint_dir=str(ck), batch_size=250, restore=None)
    ids = []
    for _ in range(2):  # each checkpoint commits rows: wait for more to reach the sink first
        before = job.progress["rows_in"]
        deadline = time.monotonic() + 60
        while job.progress["rows_in"] < before + 500 and time.monotonic() < deadline:
            time.sleep(0.02)
        ids.append(job.checkpoint())
    assert len(list(out.glob("part-*"))) > 1, "the run's checkpoints committed nothing"
    for checkpoint_id in ids:
        (ck / chk_dir(checkpoint_id) / MANIFEST).write_bytes(b"{ garbage")
    pids = [p for p in worker_pids() if p != os.getpid()]
    assert len(pids) == 2, pids
    os.kill(pids[0], signal.SIGKILL)
    with pytest.warns(UserWarning, match="rolled back output of later checkpoints"):
        result = job.wait(180)
    assert result.restarts == 1 and result.restored_from is None
    assert {e for item in result.rolled_back for e in item.epochs} == set(ids)
    got = committed(out)
    expected = pl.concat([earlier, EVENTS])
    assert got.height == expected.height, f"{got.height} rows, expected {expected.height}"
    assert got.sort("event_id").equals(expected.sort("event_id"))


@pytest.mark.filterwarnings("ignore:skipping checkpoint")
def test_resuming_when_every_checkpoint_is_damaged_starts_over_without_duplicates(
    tmp_path: Path,
) -> None:
    from arrowflow._runtime.checkpoints import MANIFEST

    out, ck = tmp_path / "out", tmp_path / "ck"

    def run(**options: Any) -> Any:
        flow = af.Flow("all-damaged")
        flow.from_polars(EVENTS, splits=12).write_parquet(
            str(out), mode="append", rows_per_file=700
        )
        return flow.run(
            workers=0,
            checkpoint_dir=str(ck),
            checkpoint_every=af.every_rows(2_000),
            batch_size=1_000,
            **options,
        )

    run()
    for manifest in ck.glob(f"chk-*/{MANIFEST}"):
        manifest.write_bytes(manifest.read_bytes()[:40])
    with pytest.warns(UserWarning, match="rolled back output of later checkpoints"):
        again = run(restore="latest")
    assert again.restored_from is None and again.rolled_back[0].checkpoint == 0
    got = committed(out)
    assert got.height == EVENTS.height and got.sort("event_id").equals(EVENTS.sort("event_id"))
