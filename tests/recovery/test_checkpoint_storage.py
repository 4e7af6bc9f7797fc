"""Checkpoint storage: damaged checkpoints are skipped, changed flows refused, manifests atomic."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import polars as pl
import pytest

import arrowflow as af
from arrowflow._runtime.checkpoints import CheckpointStorage, Manifest
from arrowflow.errors import CheckpointError


def crashed_run(tmp: Path, recovery_input: Path, recovery) -> None:
    """A 1-worker run killed right after its 3rd manifest: checkpoints 1-3 complete."""
    code, out, _ = recovery.run_job(
        tmp, recovery_input, workers=1, state="arrow", every="50ms", faults="after_manifest@3"
    )
    assert code != 0 and "RESULT" not in out
    assert [m for m in CheckpointStorage(str(tmp / "checkpoints")).checkpoint_ids()][:1] == [3]


def newest_state_file(tmp: Path) -> Path:
    manifest = json.loads((tmp / "checkpoints" / "chk-00000003" / "_MANIFEST.json").read_text())
    return tmp / "checkpoints" / manifest["state"][0]["path"]


def edit_manifest_sources(path: Path) -> None:
    """Rewrite a manifest as other valid JSON: a split position moved back by one row (or a
    finished split forgotten), the checksum field left as it was."""
    body = json.loads(path.read_text())
    offsets = body["sources"]["read_parquet"]
    if offsets["positions"]:
        split = sorted(offsets["positions"])[0]
        offsets["positions"][split] = int(offsets["positions"][split]) + 1
    else:
        assert offsets["finished"], "checkpoint 3 has no source offsets to edit"
        offsets["finished"] = offsets["finished"][:-1]
    path.write_text(json.dumps(body, sort_keys=True, indent=1))


@pytest.mark.parametrize(
    "damage",
    [
        "truncated manifest",
        "manifest edited into other valid JSON",
        "state file removed",
        "flipped byte",
    ],
)
def test_a_damaged_checkpoint_is_skipped_and_the_previous_one_used(
    tmp_path: Path, recovery_input: Path, recovery, damage: str
) -> None:
    crashed_run(tmp_path, recovery_input, recovery)
    if damage == "truncated manifest":
        path = tmp_path / "checkpoints" / "chk-00000003" / "_MANIFEST.json"
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "manifest edited into other valid JSON":
        edit_manifest_sources(tmp_path / "checkpoints" / "chk-00000003" / "_MANIFEST.json")
        flow = af.Flow("recovery")
        flow.read_parquet(str(recovery_input)).write_parquet(str(tmp_path / "unused"))
        with pytest.raises(CheckpointError, match="checkpoint 3: manifest checksum does not match"):
            flow.run(workers=0, checkpoint_dir=str(tmp_path / "checkpoints"), restore=3)
    elif damage == "state file removed":
        newest_state_file(tmp_path).unlink()
    else:
        path = newest_state_file(tmp_path)
        payload = bytearray(path.read_bytes())
        payload[len(payload) // 2] ^= 0x40
        path.write_bytes(bytes(payload))
    storage = CheckpointStorage(str(tmp_path / "checkpoints"))
    with pytest.warns(UserWarning, match="skipping checkpoint 3"):
        latest = storage.latest()
    assert latest is not None and latest.id == 2
    code, out, err = recovery.run_job(tmp_path, recovery_input, workers=1, state="arrow")
    assert code == 0, err[-2000:]
    assert '"restored_from": 2' in out
    assert "skipping checkpoint 3" in err
    rows, agg = recovery.expected_outputs(recovery_input)
    got = recovery.committed(tmp_path / "rows")
    assert got.sort("event_id").equals(rows.sort("event_id"))
    got_agg = recovery.latest_per_key(recovery.committed(tmp_path / "agg")).sort("user_id")
    assert got_agg.select("user_id", "n").equals(agg.sort("user_id").select("user_id", "n"))


def test_restoring_onto_a_changed_flow_names_the_operator(
    tmp_path: Path, recovery_input: Path, recovery
) -> None:
    crashed_run(tmp_path, recovery_input, recovery)
    flow = af.Flow("recovery")
    events = flow.read_parquet(str(recovery_input))
    (
        events.key_by("user_id")
        .agg(n=pl.len(), total=pl.col("amount").max(), biggest=pl.col("amount").max())
        .write_parquet(str(tmp_path / "agg2"))
    )
    with pytest.raises(CheckpointError, match=r"'agg' changed"):
        flow.run(workers=0, checkpoint_dir=str(tmp_path / "checkpoints"))


def _manifest(checkpoint_id: int) -> Manifest:
    return Manifest(
        id=checkpoint_id,
        time=0.0,
        flow="f",
        fingerprint="x",
        operators={},
        parallelism=1,
        max_parallelism=128,
        sources={},
        state=[],
        sinks={},
        files=[],
    )


def test_manifest_commit_is_create_if_absent_on_memory_and_local(tmp_path: Path) -> None:
    for url in (str(tmp_path / "ck"), "memory://arrowflow-test/ck"):
        storage = CheckpointStorage(url)
        storage.ensure()
        storage.write_manifest(_manifest(1))
        with pytest.raises(CheckpointError, match="already exists"):
            storage.write_manifest(_manifest(1))
        assert storage.latest().id == 1


def _busy_manifest(checkpoint_id: int) -> Manifest:
    return Manifest(
        id=checkpoint_id,
        time=1.5,
        flow="f",
        fingerprint="x",
        operators={"agg": "a1"},
        parallelism=2,
        max_parallelism=128,
        sources={
            "read_parquet": {"finished": ["a.parquet#rg0-0"], "positions": {"b.parquet#rg1-1": 700}}
        },
        state=[],
        sinks={"write_parquet": [{"part": f"part-{checkpoint_id}.parquet", "rows": 90}]},
        files=[],
    )


def _rewrite(path: Path, edit) -> None:
    body = json.loads(path.read_text())
    edit(body)
    path.write_text(json.dumps(body, sort_keys=True, indent=1))


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(
            lambda b: b["sources"]["read_parquet"]["positions"].update({"b.parquet#rg1-1": 699}),
            id="source offset",
        ),
        pytest.param(lambda b: b["sinks"]["write_parquet"][0].update(rows=91), id="sink entry"),
        pytest.param(lambda b: b["sinks"].update(write_parquet=[]), id="sink entry removed"),
        pytest.param(lambda b: b.update(parallelism=3), id="parallelism"),
        pytest.param(lambda b: b.pop("checksum"), id="checksum removed"),
        pytest.param(lambda b: b.update(checksum=b["checksum"].upper()), id="checksum changed"),
    ],
)
def test_a_manifest_edited_into_other_valid_json_is_skipped_and_refused(
    tmp_path: Path, edit
) -> None:
    """Valid JSON, wrong checksum: 'latest' warns and falls back to the previous checkpoint,
    and asking for that checkpoint by id is an error naming it (a truncated manifest is
    rejected by the JSON parser before its checksum is read; this one is not)."""
    storage = CheckpointStorage(str(tmp_path / "ck"))
    storage.ensure()
    for checkpoint_id in (1, 2):
        storage.write_manifest(_busy_manifest(checkpoint_id))
    path = tmp_path / "ck" / "chk-00000002" / "_MANIFEST.json"
    original = json.loads(path.read_text())
    _rewrite(path, edit)
    assert json.loads(path.read_text()) != original
    with pytest.warns(UserWarning, match="skipping checkpoint 2 .*checksum does not match"):
        latest = storage.latest()
    assert latest is not None and latest.id == 1
    assert latest.sources == _busy_manifest(1).sources and latest.sinks == _busy_manifest(1).sinks
    with pytest.raises(
        CheckpointError, match="checkpoint 2: manifest checksum does not match its content"
    ):
        storage.find(2)


def test_an_untouched_manifest_reads_back_equal(tmp_path: Path) -> None:
    """The other side of the check above: a manifest as written verifies, field for field,
    also after re-indenting the JSON (the checksum covers content, not layout)."""
    storage = CheckpointStorage(str(tmp_path / "ck"))
    storage.ensure()
    storage.write_manifest(_busy_manifest(4))
    path = tmp_path / "ck" / "chk-00000004" / "_MANIFEST.json"
    _rewrite(path, lambda body: None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert storage.latest() == _busy_manifest(4)
    assert storage.find(4) == _busy_manifest(4)


def test_retention_keeps_the_newest_complete_checkpoints(tmp_path: Path) -> None:
    storage = CheckpointStorage(str(tmp_path / "ck"), keep=2)
    storage.ensure()
    for checkpoint_id in range(1, 6):
        storage.write_manifest(_manifest(checkpoint_id))
    (tmp_path / "ck" / "chk-00000006").mkdir()  # an incomplete, newer checkpoint stays
    storage.prune()
    assert storage.checkpoint_ids() == [6, 5, 4]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert storage.latest().id == 5


def test_checkpoints_list_and_state_query_cli(
    tmp_path: Path, recovery_input: Path, recovery
) -> None:
    import subprocess
    import sys

    crashed_run(tmp_path, recovery_input, recovery)
    listing = subprocess.run(
        [
            sys.executable,
            "-m",
            "arrowflow.cli",
            "checkpoints",
            "list",
            str(tmp_path / "checkpoints"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listing.returncode == 0, listing.stderr
    assert "chk-00000003" in listing.stdout
    state = af.read_state(str(tmp_path / "checkpoints"), "agg")
    # The state at checkpoint 3 counts exactly the events the sources had read by then: the
    # finished splits whole, the others up to their offset (rows into the split).
    manifest = CheckpointStorage(str(tmp_path / "checkpoints")).latest()
    assert manifest is not None
    offsets = manifest.sources["read_parquet"]
    read = []
    for split in [*offsets["finished"], *offsets["positions"]]:
        path, groups = split.split("#rg")
        first, last = (int(g) for g in groups.split("-"))
        rows = pl.read_parquet(path).slice(first * 3_000, (last - first + 1) * 3_000)
        read.append(
            rows if split in offsets["finished"] else rows.head(int(offsets["positions"][split]))
        )
    events = pl.concat(read).filter(
        pl.col("event_type").is_in(["purchase", "add_to_cart", "click"])
    )
    assert 0 < events.height < 36_000, "checkpoint 3 should be mid-way through the input"
    expected = events.group_by("user_id").agg(
        n=pl.len(), total=pl.col("amount").sum(), biggest=pl.col("amount").max()
    )
    got = state.sort("user_id")
    assert got.select("user_id", "n").equals(
        expected.sort("user_id").select("user_id", "n").cast(got.select("user_id", "n").schema)
    )
    assert (got["total"] - expected.sort("user_id")["total"]).abs().max() < 1e-6
    assert (
        af.query_state(str(tmp_path / "checkpoints"), "SELECT sum(n) AS n FROM agg").item()
        == events.height
    )


def test_a_job_file_write_cut_short_leaves_no_job_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first run writes the job's tag into its checkpoint directory. A write stopped
    half-way (here a full disk after 5 bytes; a kill -9 is the same on disk) fails that run
    clearly and leaves no job file at all, so the next run on the directory derives the
    same tag and runs, where a file cut short would be refused as damaged forever."""
    import errno

    from fsspec.implementations.local import LocalFileOpener

    ck = tmp_path / "ck"
    storage = CheckpointStorage(str(ck))
    storage.ensure()
    write = LocalFileOpener.write

    def full_disk(self, data):  # type: ignore[no-untyped-def]
        write(self, data[:5])
        self.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(LocalFileOpener, "write", full_disk)
    with pytest.raises(CheckpointError, match=r"cannot write '.*_JOB\.json'.*No space left"):
        storage.job_tag()
    monkeypatch.undo()
    assert sorted(p.name for p in ck.iterdir()) == []
    tag = CheckpointStorage(str(ck)).job_tag()
    assert json.loads((ck / "_JOB.json").read_text()) == {"tag": tag}
    assert CheckpointStorage(str(ck)).job_tag() == tag
    flow = af.Flow("after-a-full-disk")
    flow.from_polars(pl.DataFrame({"x": [1, 2, 3]})).write_parquet(str(tmp_path / "out"))
    flow.run(workers=0, checkpoint_dir=str(ck))
    assert pl.read_parquet(tmp_path / "out" / "*.parquet")["x"].sort().to_list() == [1, 2, 3]
