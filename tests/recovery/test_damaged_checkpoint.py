"""A damaged newest checkpoint after a kill -9: the restore skips it, rolls the sinks back to
the checkpoint it restores, and the output holds every row exactly once.

The job (tests/recovery/conftest.py) is killed with SIGKILL just before the manifest of its
4th checkpoint, so checkpoints 1-3 are complete and their part files committed. Checkpoint 3
is then damaged (its manifest truncated, replaced by garbage, one byte flipped, or one of its
state files deleted); the second run restores checkpoint 2, must remove checkpoint 3's
committed part files (their names carry the checkpoint), and replays from 2. Before the
rollback existed it wrote checkpoint 3's rows twice. Checked against polars, for every state
backend; ``-m soak`` runs every damage on every backend.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from arrowflow._runtime.checkpoints import MANIFEST, SOURCES, CheckpointStorage, chk_dir
from arrowflow.io.filesinks import part_checkpoint

DAMAGES = ("truncated", "garbage", "flipped", "missing_state")


def damage(checkpoints: Path, checkpoint_id: int, how: str, rng: random.Random) -> str:
    folder = checkpoints / chk_dir(checkpoint_id)
    manifest = folder / MANIFEST
    payload = manifest.read_bytes()
    if how == "truncated":
        manifest.write_bytes(payload[: rng.randrange(1, len(payload) - 1)])
    elif how == "garbage":
        manifest.write_bytes(rng.randbytes(len(payload)))
    elif how == "flipped":
        data = bytearray(payload)
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        manifest.write_bytes(bytes(data))
    else:
        files = [f["path"] for f in json.loads(payload)["files"]]
        own = [
            p
            for p in files
            if p.startswith(chk_dir(checkpoint_id) + "/") and not p.endswith(SOURCES)
        ]
        victim = rng.choice(own or [p for p in files if p.endswith(SOURCES)])
        (checkpoints / victim).unlink()
        return victim
    return MANIFEST


def parts_by_checkpoint(folder: Path) -> dict[int, int]:
    counts: dict[int, int] = {}
    for path in folder.glob("part-*"):
        epoch = part_checkpoint(path.name)
        assert epoch is not None, path.name
        counts[epoch] = counts.get(epoch, 0) + 1
    return counts


def check_exactly_once(h, tmp: Path, input_dir: Path) -> None:
    rows, agg = h.expected_outputs(input_dir)
    got = h.committed(tmp / "rows")
    assert got.height == rows.height, f"{got.height} rows committed, expected {rows.height}"
    assert got["event_id"].is_duplicated().sum() == 0, "an event was committed twice"
    assert got.sort("event_id").equals(rows.sort("event_id")), "committed rows differ from polars"
    got_agg = h.latest_per_key(h.committed(tmp / "agg")).sort("user_id")
    expected = agg.sort("user_id")
    assert got_agg.select("user_id", "n").equals(expected.select("user_id", "n")), (
        "per-user counts differ"
    )
    assert (got_agg["total"] - expected["total"]).abs().max() < 1e-6
    assert got_agg["biggest"].equals(expected["biggest"])


def kill_damage_restore(
    tmp: Path, input_dir: Path, h, *, state: str, workers: int, how: str
) -> None:
    rng = random.Random(f"{state}-{workers}-{how}")
    # Slow enough batches that each of the first checkpoints commits rows (the in-process
    # executor can otherwise take two checkpoints with no batch between them).
    code, out, err = h.run_job(
        tmp,
        input_dir,
        workers=workers,
        state=state,
        faults="before_manifest@4",
        sleep=0.04,
        every="150ms",
    )
    assert "RESULT" not in out and code != 0, (
        f"the job was not killed before checkpoint 4: {err[-2000:]}"
    )
    storage = CheckpointStorage(str(tmp / "checkpoints"))
    newest = storage.latest(report=False)
    assert newest is not None and newest.id == 3, "checkpoints 1-3 should be complete"
    committed_by_3 = parts_by_checkpoint(tmp / "rows").get(3, 0)
    assert committed_by_3, "checkpoint 3 committed no rows: the case would test nothing"
    damaged = damage(tmp / "checkpoints", 3, how, rng)

    with pytest.warns(UserWarning, match="skipping checkpoint 3"):
        restored = storage.latest()
    assert restored is not None and restored.id == 2, f"after damaging {damaged}"
    code, out, err = h.run_job(tmp, input_dir, workers=workers, state=state, every="150ms")
    assert code == 0, err[-3000:]
    summary = json.loads(
        [x for x in out.splitlines() if x.startswith("RESULT ")][-1][len("RESULT ") :]
    )
    assert summary["restored_from"] == 2
    assert "rolled back output of later checkpoints" in err, err[-2000:]
    rows_sink = [item for item in summary["rolled_back"] if str(tmp / "rows") in item["sink"]]
    assert rows_sink and rows_sink[0]["epochs"] == [3] and rows_sink[0]["count"] == committed_by_3
    assert all(
        item["checkpoint"] == 2 and item["what"] == "part files" for item in summary["rolled_back"]
    )
    check_exactly_once(h, tmp, input_dir)


@pytest.mark.parametrize(
    ("state", "workers", "how"),
    [
        # Every backend, every damage and every worker count once; ``-m soak`` runs them all.
        ("memory", 2, "truncated"),
        ("arrow", 0, "garbage"),
        ("lmdb", 1, "flipped"),
        ("sql", 2, "missing_state"),
        ("memory", 0, "missing_state"),
    ],
)
def test_a_damaged_newest_checkpoint_is_rolled_back(
    tmp_path: Path, recovery_input: Path, recovery, state: str, workers: int, how: str
) -> None:
    kill_damage_restore(tmp_path, recovery_input, recovery, state=state, workers=workers, how=how)


@pytest.mark.soak
@pytest.mark.parametrize("how", DAMAGES)
@pytest.mark.parametrize("state", ["memory", "arrow", "lmdb", "sql"])
@pytest.mark.parametrize("workers", [0, 2])
def test_soak_every_damage_on_every_backend(
    tmp_path: Path, recovery_input: Path, recovery, state: str, workers: int, how: str
) -> None:
    kill_damage_restore(tmp_path, recovery_input, recovery, state=state, workers=workers, how=how)


def test_an_explicit_restore_of_an_older_checkpoint_rolls_back(
    tmp_path: Path, recovery_input: Path, recovery
) -> None:
    """restore=<id> of an older checkpoint, with nothing damaged: the later output goes too."""
    import subprocess
    import sys

    # sleep=0.02 a batch: the run lasts well past its 5th checkpoint (workers start in ms).
    code, out, _ = recovery.run_job(
        tmp_path, recovery_input, workers=2, state="memory", faults="before_manifest@5", sleep=0.02
    )
    assert code != 0 and "RESULT" not in out
    assert parts_by_checkpoint(tmp_path / "rows").get(3, 0) and parts_by_checkpoint(
        tmp_path / "rows"
    ).get(4, 0)
    script = (tmp_path / "job.py").read_text().replace('restore="latest"', "restore=3")
    (tmp_path / "job.py").write_text(script)
    config = {
        "input": str(recovery_input),
        "out_rows": str(tmp_path / "rows"),
        "out_agg": str(tmp_path / "agg"),
        "checkpoints": str(tmp_path / "checkpoints"),
        "workers": 2,
        "state": "memory",
        "every": "100ms",
        "sleep": 0.01,
        "batch_size": 1_500,
    }
    done = subprocess.run(
        [sys.executable, str(tmp_path / "job.py"), json.dumps(config)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(
        [x for x in done.stdout.splitlines() if x.startswith("RESULT ")][-1][len("RESULT ") :]
    )
    assert summary["restored_from"] == 3
    assert {e for item in summary["rolled_back"] for e in item["epochs"]} == {4}
    check_exactly_once(recovery, tmp_path, recovery_input)
