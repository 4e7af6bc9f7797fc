"""Restoring an older checkpoint abandons the later ones: none of them is restored again.

A restore to checkpoint k rolls back the output of the checkpoints after it. A later run that
resumed one of those (``restore="latest"`` after the restored run was killed before its
first checkpoint) found the output of the checkpoints between k and it gone and said nothing:
it committed the totals of a third of the events. The later checkpoints are now marked
superseded before any output is rolled back (docs/checkpoints.md, "superseded checkpoints").
Checked with real ``kill -9`` of a real process and against polars.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import arrowflow as af
from arrowflow.errors import CheckpointError
from arrowflow.testing import assert_frame_equal_unordered

JOB = textwrap.dedent(
    """
    import json, sys, warnings
    import polars as pl
    import arrowflow as af

    config = json.loads(sys.argv[1])
    warnings.simplefilter("ignore")  # the rollback's warning
    frame = pl.read_parquet(config["input"])
    flow = af.Flow("superseded")
    (flow.from_polars(frame, splits=1).key_by("user")
         .agg(n=pl.len(), total=pl.col("amount").sum()).write_parquet(config["out"]))
    result = flow.run(workers=0, checkpoint_dir=config["ck"], checkpoint_every=af.every_rows(1_000),
                      batch_size=250, keep_checkpoints=20, restore=config["restore"], max_restarts=0)
    print("RESULT " + json.dumps({"restored_from": result.restored_from,
                                  "checkpoints": result.checkpoints}))
    """
)


def events() -> pl.DataFrame:
    rng = np.random.default_rng(71)
    return pl.DataFrame(
        {"user": rng.permutation(np.arange(6_000) % 17), "amount": rng.integers(0, 100, 6_000)}
    )


def run(tmp_path: Path, restore: object, fault: str | None = None) -> dict[str, object] | None:
    config = {
        "input": str(tmp_path / "events.parquet"),
        "out": str(tmp_path / "out"),
        "ck": str(tmp_path / "ck"),
        "restore": restore,
    }
    env = {k: v for k, v in os.environ.items() if k != "ARROWFLOW_FAULTS"}
    if fault:
        env["ARROWFLOW_FAULTS"] = fault
    done = subprocess.run(
        [sys.executable, "-c", JOB, json.dumps(config)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    if fault:
        assert done.returncode == -9 and "RESULT" not in done.stdout, done.stderr[-2000:]
        return None
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def newest_totals(out: Path) -> pl.DataFrame:
    """Each key's row from the newest part file (a running aggregation emits at every
    checkpoint; part files are named by checkpoint)."""
    parts = sorted(out.glob("part-*.parquet"))
    frame = pl.concat(
        [pl.read_parquet(p).with_columns(part=pl.lit(i)) for i, p in enumerate(parts)]
    )
    return frame.sort("part").group_by("user").last().drop("part")


def expected(df: pl.DataFrame) -> pl.DataFrame:
    return df.group_by("user").agg(n=pl.len().cast(pl.UInt32), total=pl.col("amount").sum())


def test_a_killed_restore_of_an_older_checkpoint_is_resumed_from_that_checkpoint(
    tmp_path: Path,
) -> None:
    df = events()
    df.write_parquet(tmp_path / "events.parquet")
    first = run(tmp_path, None)
    assert first is not None
    checkpoints = first["checkpoints"]
    assert isinstance(checkpoints, list) and len(checkpoints) >= 5
    older = checkpoints[1]
    # restore the older one; the run is killed at its first checkpoint, after the rollback
    run(tmp_path, older, fault="before_manifest@1")
    marked = sorted(
        int(p.parent.name[4:]) for p in (tmp_path / "ck").glob("chk-*/_SUPERSEDED.json")
    )
    assert marked == [i for i in checkpoints if i > older]
    for i in marked:
        marker = json.loads((tmp_path / "ck" / f"chk-{i:08d}" / "_SUPERSEDED.json").read_text())
        assert marker["by"] == older
    # the default run resumes what the user restored, not an abandoned later checkpoint
    resumed = run(tmp_path, "latest")
    assert resumed is not None and resumed["restored_from"] == older
    got = newest_totals(tmp_path / "out")
    assert_frame_equal_unordered(got.select(expected(df).columns), expected(df))
    # retention removed the superseded checkpoints once the resumed run completed one
    left = sorted(int(p.name[4:]) for p in (tmp_path / "ck").glob("chk-*"))
    assert not set(left) & set(marked)
    assert set(resumed["checkpoints"]) <= set(left)  # type: ignore[arg-type]


def flow(df: pl.DataFrame, out: Path) -> af.Flow:
    f = af.Flow("superseded-in-process")
    f.from_polars(df, splits=1).key_by("user").agg(
        n=pl.len(), total=pl.col("amount").sum()
    ).write_parquet(str(out))
    return f


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_superseded_checkpoint_is_refused_listed_nowhere_and_pruned(tmp_path: Path) -> None:
    df = events()
    out, ck = tmp_path / "out", tmp_path / "ck"
    options = {
        "workers": 0,
        "checkpoint_dir": str(ck),
        "checkpoint_every": af.every_rows(1_000),
        "batch_size": 250,
        "keep_checkpoints": 20,
    }
    first = flow(df, out).run(**options)
    older, later = first.checkpoints[0], first.checkpoints[3]
    storage_ids = list(af.list_checkpoints(str(ck))["id"])
    assert storage_ids == first.checkpoints[::-1] or sorted(storage_ids) == first.checkpoints
    # mark as a restore of `older` does, without running it (the marking alone)
    from arrowflow._runtime.checkpoints import CheckpointStorage

    storage = CheckpointStorage(str(ck), keep=20)
    assert storage.supersede_after(older) == first.checkpoints[1:]
    assert storage.latest().id == older  # type: ignore[union-attr]
    assert sorted(af.list_checkpoints(str(ck))["id"]) == [older]
    outputs, checkpoint_files = snapshot(out), snapshot(ck)
    with pytest.raises(
        CheckpointError,
        match=rf"checkpoint {later} .* was superseded: checkpoint {older} was restored",
    ):
        flow(df, out).run(**options, restore=later)
    assert snapshot(out) == outputs and snapshot(ck) == checkpoint_files  # nothing changed
    # a marker that is not JSON still marks its checkpoint
    (ck / f"chk-{later:08d}" / "_SUPERSEDED.json").write_bytes(b"\x00garbage")
    assert storage.superseded_by(later) == "an older checkpoint"
    with pytest.raises(CheckpointError, match="superseded: checkpoint an older checkpoint"):
        storage.find(later)
    # the run from `older` removes them at its first checkpoint, and its totals are polars'
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        again = flow(df, out).run(**options, restore="latest")
    assert again.restored_from == older
    assert not any(i in again.checkpoints for i in first.checkpoints)
    left = {int(p.name[4:]) for p in ck.glob("chk-*")}
    assert left == {older, *again.checkpoints}
    got = newest_totals(out)
    assert_frame_equal_unordered(got.select(expected(df).columns), expected(df))


def test_refusing_a_superseded_checkpoint_names_what_can_be_restored(tmp_path: Path) -> None:
    """Checkpoints 1-5, then 3 restored (4 and 5 superseded) and its run's 6 and 7 taken:
    restoring 4 names 3 and the run that followed (6, 7); 3, 6 and 7 restore; an id that was
    never taken names the complete ones; retention keeps the newest 3 restorable ones."""
    import dataclasses

    from arrowflow._runtime.checkpoints import CheckpointStorage

    ck = tmp_path / "ck"
    first = flow(events(), tmp_path / "out").run(
        workers=0,
        checkpoint_dir=str(ck),
        checkpoint_every=af.every_rows(1_000),
        batch_size=250,
        keep_checkpoints=20,
    )
    assert first.checkpoints[:5] == [1, 2, 3, 4, 5]
    for extra in first.checkpoints[5:]:
        shutil.rmtree(ck / f"chk-{extra:08d}")
    storage = CheckpointStorage(str(ck), keep=3)
    assert storage.supersede_after(3) == [4, 5]
    assert storage.supersede_after(3) == [4, 5]  # again: nothing changes
    assert [storage.superseded_by(i) for i in range(1, 6)] == [None, None, None, 3, 3]
    assert storage.latest().id == 3  # type: ignore[union-attr]
    third = storage.find(3)
    for checkpoint_id in (6, 7):  # as the run restored from 3 would take them
        storage.write_manifest(
            dataclasses.replace(third, id=checkpoint_id, state=[], files=[], sinks={})
        )
    assert storage.latest().id == 7  # type: ignore[union-attr]
    with pytest.raises(
        CheckpointError,
        match=r"checkpoint 4 .* superseded: checkpoint 3 was restored .* Restore 3 or a "
        r"checkpoint of the run that followed \(6, 7\), or restore=None",
    ):
        storage.find(4)
    assert [storage.find(i).id for i in (3, 6, 7)] == [3, 6, 7]
    with pytest.raises(CheckpointError, match=r"no checkpoint 9 in .*; it has 1, 2, 3, 4, 5, 6, 7"):
        storage.find(9)
    assert sorted(storage.prune()) == [1, 2, 4, 5]
    assert storage.checkpoint_ids() == [7, 6, 3]
