"""Checkpoint storage on its own, in process: which directories are checkpoints, which one is
the newest usable one, what a file entry records, what retention deletes and what it keeps.

Expected values come from the files the tests write (hashlib over the payloads, the names
and sizes on disk), not from the storage class itself.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import polars as pl
import pytest

from arrowflow._runtime.checkpoints import CheckpointStorage, Manifest
from arrowflow.errors import CheckpointError


def manifest(checkpoint_id: int, files: list[dict] | None = None) -> Manifest:
    return Manifest(
        id=checkpoint_id,
        time=1_700_000_000.5 + checkpoint_id,
        flow="f",
        fingerprint="x",
        operators={"agg": "a"},
        parallelism=2,
        max_parallelism=128,
        sources={"read_parquet": {"finished": [], "positions": {"a#rg0-0": checkpoint_id}}},
        state=[],
        sinks={},
        files=files or [],
    )


def storage_at(tmp_path: Path, **options) -> CheckpointStorage:
    storage = CheckpointStorage(str(tmp_path / "ck"), **options)
    storage.ensure()
    return storage


def damage_manifest(tmp_path: Path, checkpoint_id: int) -> None:
    path = tmp_path / "ck" / f"chk-{checkpoint_id:08d}" / "_MANIFEST.json"
    path.write_bytes(path.read_bytes()[:40])


def test_keep_must_be_at_least_one(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="keep must be at least 1 checkpoint, got 0"):
        CheckpointStorage(str(tmp_path / "ck"), keep=0)
    storage = storage_at(tmp_path, keep=1)
    for checkpoint_id in (1, 2, 3):
        storage.write_manifest(manifest(checkpoint_id))
    assert storage.prune() == [2, 1]
    assert storage.checkpoint_ids() == [3] and storage.oldest_kept == 3


def test_by_default_the_newest_three_are_kept(tmp_path: Path) -> None:
    storage = storage_at(tmp_path)
    for checkpoint_id in range(1, 7):
        storage.write_manifest(manifest(checkpoint_id))
    assert storage.prune() == [3, 2, 1]
    assert storage.checkpoint_ids() == [6, 5, 4]


def test_an_unknown_protocol_is_a_checkpoint_error() -> None:
    with pytest.raises(
        CheckpointError, match=r"cannot open checkpoint storage 'nosuchfs://bucket/ck'"
    ):
        CheckpointStorage("nosuchfs://bucket/ck")


def test_a_trailing_slash_names_the_same_storage(tmp_path: Path) -> None:
    storage = storage_at(tmp_path)
    storage.write_manifest(manifest(4))
    other = CheckpointStorage(str(tmp_path / "ck") + "/")
    assert other.url == storage.url and other.checkpoint_ids() == [4]
    assert other.latest() == manifest(4)


def test_ensure_is_idempotent(tmp_path: Path) -> None:
    """A restarted job ensures its existing checkpoint directory again."""
    storage = storage_at(tmp_path)
    storage.write_manifest(manifest(1))
    storage.ensure()
    CheckpointStorage(str(tmp_path / "ck")).ensure()
    assert storage.checkpoint_ids() == [1]


def test_a_checkpoint_directory_that_cannot_be_created_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(CheckpointError, match="cannot create the checkpoint directory"):
        CheckpointStorage(str(tmp_path / "a-file" / "ck")).ensure()


def test_checkpoint_ids_are_chk_directories_newest_first(tmp_path: Path) -> None:
    assert CheckpointStorage(str(tmp_path / "nothing-here")).checkpoint_ids() == []
    root = tmp_path / "ck"
    for name in (
        "chk-00000002",
        "chk-00000010",
        "chk-00000001",
        "chk-x",
        "chk-x0000003",
        "chk-",
        "other",
        "shared",
    ):
        (root / name).mkdir(parents=True)
    (root / "chk-00000005.json").write_text("{}")
    assert CheckpointStorage(str(root)).checkpoint_ids() == [10, 2, 1]
    assert CheckpointStorage(str(root)).latest(report=False) is None  # none has a manifest


def test_checkpoint_ids_past_eight_digits(tmp_path: Path) -> None:
    """Ids are zero-padded to 8 digits and may grow past them (every 100 ms, 10**8 is ~4 months)."""
    storage = storage_at(tmp_path)
    for checkpoint_id in (7, 12_345_678, 123_456_789):
        storage.write_manifest(manifest(checkpoint_id))
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == [
        "chk-00000007",
        "chk-12345678",
        "chk-123456789",
    ]
    assert storage.checkpoint_ids() == [123_456_789, 12_345_678, 7]
    assert storage.latest().id == 123_456_789


def test_latest_skips_damaged_and_incomplete_ones_and_stops_at_min_id(tmp_path: Path) -> None:
    storage = storage_at(tmp_path)
    for checkpoint_id in (1, 2, 3, 4):
        storage.write_manifest(manifest(checkpoint_id))
    (tmp_path / "ck" / "chk-00000005").mkdir()  # incomplete: no manifest, not reported
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert storage.latest().id == 4
        assert storage.latest(min_id=4).id == 4
    damage_manifest(tmp_path, 4)
    with pytest.warns(UserWarning, match="skipping checkpoint 4"):
        assert storage.latest(min_id=3).id == 3
    damage_manifest(tmp_path, 3)
    with pytest.warns(UserWarning) as skipped:
        assert storage.latest(min_id=3) is None  # not 2: older than this run's own
    assert [str(w.message).split(" in ")[0] for w in skipped] == [
        "skipping checkpoint 4",
        "skipping checkpoint 3",
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert storage.latest(report=False).id == 2
    with pytest.raises(CheckpointError, match="checkpoint 5 has no manifest"):
        storage.find(5)
    with pytest.raises(CheckpointError, match="checkpoint 4: the manifest is damaged"):
        storage.find(4)


def test_a_file_entry_records_size_and_sha256_and_is_verified(tmp_path: Path) -> None:
    storage = storage_at(tmp_path)
    payloads = {
        "chk-00000001/state/agg/000-064.arrow": b"\x00state" * 50,
        "shared/x.sst": b"shared bytes",
    }
    entries = [storage.write_file(relative, payload) for relative, payload in payloads.items()]
    for entry, (relative, payload) in zip(entries, payloads.items(), strict=True):
        assert entry == {
            "path": relative,
            "size": len(payload),
            "sha256": hashlib.sha256(payload).hexdigest(),
        }
        assert (tmp_path / "ck" / relative).read_bytes() == payload
    storage.write_manifest(manifest(1, files=entries))
    assert storage.find(1).files == entries
    assert storage.find(1).size() == sum(len(p) for p in payloads.values())

    state = tmp_path / "ck" / "chk-00000001/state/agg/000-064.arrow"
    same_size = bytearray(state.read_bytes())
    same_size[7] ^= 0x01
    state.write_bytes(bytes(same_size))
    with pytest.raises(
        CheckpointError,
        match=r"file 'chk-00000001/state/agg/000-064.arrow' is damaged \(300 bytes, "
        r"expected 300; checksum mismatch\)",
    ):
        storage.find(1)
    assert storage.read_manifest(1, verify_files=False).id == 1  # listing does not read the files
    state.write_bytes(payloads["chk-00000001/state/agg/000-064.arrow"] + b"!")
    with pytest.raises(CheckpointError, match=r"\(301 bytes, expected 300"):
        storage.find(1)
    state.unlink()
    with pytest.raises(
        CheckpointError, match=r"file 'chk-00000001/state/agg/000-064.arrow' is missing"
    ):
        storage.find(1)


def test_retention_deletes_old_damaged_and_incomplete_ones_and_unreferenced_shared_files(
    tmp_path: Path,
) -> None:
    """Newest first: 9 incomplete and 8 damaged (newer than the newest complete one: kept, a
    run may still be writing them), 7 and 6 complete (kept, keep=2), then 5 complete, 4
    incomplete, 3 complete, 2 damaged (all deleted). Shared files stay while a kept manifest
    lists them."""
    storage = storage_at(tmp_path, keep=2)
    shared = {
        name: storage.write_file(f"shared/{name}", name.encode() * 10)
        for name in ("a", "b", "c", "d")
    }
    lists = {7: ["a"], 6: ["a", "d"], 5: ["b"], 3: ["b", "c"], 2: ["c"]}
    for checkpoint_id in (2, 3, 5, 6, 7, 8):
        storage.write_manifest(
            manifest(checkpoint_id, files=[shared[n] for n in lists.get(checkpoint_id, [])])
        )
    damage_manifest(tmp_path, 8)
    damage_manifest(tmp_path, 2)
    for checkpoint_id in (4, 9):
        (tmp_path / "ck" / f"chk-{checkpoint_id:08d}").mkdir()
    removed = storage.prune()
    assert removed == [5, 4, 3, 2]
    on_disk = sorted(p.name for p in (tmp_path / "ck").iterdir() if p.name.startswith("chk-"))
    assert on_disk == ["chk-00000006", "chk-00000007", "chk-00000008", "chk-00000009"]
    assert sorted(p.name for p in (tmp_path / "ck" / "shared").iterdir()) == ["a", "d"]
    assert storage.oldest_kept == 6
    assert storage.prune() == []  # nothing more to delete
    with pytest.warns(UserWarning, match="skipping checkpoint 8"):
        assert storage.latest().id == 7


def test_retention_deletes_a_damaged_one_between_kept_ones(tmp_path: Path) -> None:
    storage = storage_at(tmp_path, keep=3)
    for checkpoint_id in (3, 4, 5):
        storage.write_manifest(manifest(checkpoint_id))
    damage_manifest(tmp_path, 4)
    assert storage.prune() == [4]
    assert storage.checkpoint_ids() == [5, 3]


def test_retention_without_a_complete_checkpoint_deletes_nothing(tmp_path: Path) -> None:
    storage = storage_at(tmp_path, keep=1)
    storage.write_manifest(manifest(3))
    damage_manifest(tmp_path, 3)
    (tmp_path / "ck" / "chk-00000001").mkdir()
    assert storage.prune() == []
    assert storage.checkpoint_ids() == [3, 1] and storage.oldest_kept is None


def test_list_has_one_row_per_complete_checkpoint(tmp_path: Path) -> None:
    storage = storage_at(tmp_path)
    entry = storage.write_file("chk-00000002/state/x", b"12345")
    storage.write_manifest(manifest(1))
    storage.write_manifest(manifest(2, files=[entry]))
    (tmp_path / "ck" / "chk-00000003").mkdir()
    listed = storage.list()
    assert listed["id"].to_list() == [2, 1]
    assert listed["size_bytes"].to_list() == [5, 0]
    assert listed["parallelism"].to_list() == [2, 2]
    assert [
        json.loads(o)["read_parquet"]["positions"]["a#rg0-0"] for o in listed["sources_json"]
    ] == [
        2,
        1,
    ]
    # The offsets as columns, no json.loads needed: one struct per split of every source.
    assert listed.schema["offsets"] == pl.List(
        pl.Struct(
            {
                "source": pl.String,
                "split": pl.String,
                "done": pl.Boolean,
                "offset": pl.Int64,
                "position": pl.String,
            }
        )
    )
    splits = listed.select("id", "offsets").explode("offsets").unnest("offsets")
    assert splits.filter(pl.col("split") == "a#rg0-0").select(
        "id", "source", "done", "offset"
    ).rows() == [
        (2, "read_parquet", False, 2),
        (1, "read_parquet", False, 1),
    ]
    assert [t.timestamp() for t in listed["time"]] == [1_700_000_002.5, 1_700_000_001.5]
