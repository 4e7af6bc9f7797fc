"""What only the ``arrow`` backend promises: incremental snapshots, one Arrow IPC file per key
group, and a manifest that names every file a checkpoint needs.

The shared behaviour (same answers as ``memory``) is in ``test_conformance.py``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import fsspec
import numpy as np
import polars as pl
import pyarrow.ipc
import pytest
from polars.testing import assert_frame_equal

from arrowflow._foundation.keygroups import key_groups
from arrowflow.backends.arrow_ipc import ArrowBackend
from arrowflow.backends.lmdb import LmdbBackend
from arrowflow.backends.memory import MemoryBackend
from arrowflow.errors import StateError
from arrowflow.state import KEY_GROUP, StoreContext, StoreSpec
from arrowflow.testing.state_conformance import assert_same_contents

SPEC = StoreSpec("agg-1", pl.Schema({"id": pl.Int64}), pl.Schema({"n": pl.Int64}))
FS = fsspec.filesystem("file")
IDS = np.arange(20_000)
GROUPS = key_groups(pl.DataFrame({"id": IDS}), 128)


def _rows(ids: np.ndarray, n: int = 0) -> tuple[pl.DataFrame, pl.DataFrame]:
    return pl.DataFrame({"id": ids}), pl.DataFrame({"n": ids + n})


def _stores(tmp_path: Path) -> tuple[object, object]:
    context = StoreContext(str(tmp_path), 0, 1)
    return (
        ArrowBackend().open_store(SPEC, range(0, 128), context),
        MemoryBackend().open_store(SPEC, range(0, 128), context),
    )


def _written(tmp_path: Path) -> set[str]:
    return {
        str(path.relative_to(tmp_path / "ckpt")) for path in (tmp_path / "ckpt").rglob("*.arrow")
    }


def test_a_snapshot_writes_only_the_key_groups_that_changed(tmp_path: Path) -> None:
    store, memory = _stores(tmp_path)
    root = str(tmp_path / "ckpt")
    for target in (store, memory):
        target.put(*_rows(IDS))
    first = store.snapshot(FS, root, 1)
    assert len(first) == 128 and {f.key_groups for f in first} == {(g, g + 1) for g in range(128)}
    assert all(f.path.startswith("shared/agg-1/") for f in first)

    changed = IDS[np.isin(GROUPS, [3, 70])][:50]
    for target in (store, memory):
        target.put(*_rows(changed, n=1))
    before = _written(tmp_path)
    second = store.snapshot(FS, root, 2)
    new_files = _written(tmp_path) - before
    assert len(new_files) == 2
    assert {f.path for f in second if f.extra["written_by"] == 2} == new_files
    assert {f.key_groups[0] for f in second if f.extra["written_by"] == 2} == {3, 70}
    assert len(second) == 128

    third = store.snapshot(FS, root, 3)  # nothing changed: nothing written, same references
    assert _written(tmp_path) - before == new_files
    assert [f.path for f in third] == [f.path for f in second]

    restored = ArrowBackend().open_store(SPEC, range(0, 128), StoreContext(str(tmp_path), 0, 1))
    restored.restore(FS, root, third)
    assert_same_contents(restored, memory)


def test_the_listed_files_are_all_a_checkpoint_needs(tmp_path: Path) -> None:
    """Copy only the files a checkpoint lists to a new root: it restores from there alone."""
    store, memory = _stores(tmp_path)
    root = str(tmp_path / "ckpt")
    for number, chunk in enumerate(np.array_split(IDS, 4), start=1):
        for target in (store, memory):
            target.put(*_rows(chunk, n=number))
            target.delete(_rows(chunk[:10])[0])
        files = store.snapshot(FS, root, number)
    elsewhere = tmp_path / "pruned"
    for state_file in files:
        (elsewhere / state_file.path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(root) / state_file.path, elsewhere / state_file.path)
    restored = ArrowBackend().open_store(SPEC, range(0, 128), StoreContext(str(tmp_path), 0, 1))
    restored.restore(FS, str(elsewhere), files)
    assert_same_contents(restored, memory)


def test_a_group_whose_keys_are_all_deleted_has_no_file(tmp_path: Path) -> None:
    store, memory = _stores(tmp_path)
    root = str(tmp_path / "ckpt")
    for target in (store, memory):
        target.put(*_rows(IDS))
    store.snapshot(FS, root, 1)
    for target in (store, memory):
        target.delete(_rows(IDS[GROUPS == 5])[0])
    files = store.snapshot(FS, root, 2)
    assert 5 not in {f.key_groups[0] for f in files} and len(files) == 127
    restored = ArrowBackend().open_store(SPEC, range(0, 128), StoreContext(str(tmp_path), 0, 1))
    restored.restore(FS, root, files)
    assert_same_contents(restored, memory)


def test_after_a_restore_only_changes_are_written_and_a_new_root_gets_everything(
    tmp_path: Path,
) -> None:
    store, _ = _stores(tmp_path)
    root = str(tmp_path / "ckpt")
    store.put(*_rows(IDS))
    files = store.snapshot(FS, root, 1)
    restored = ArrowBackend().open_store(SPEC, range(0, 64), StoreContext(str(tmp_path), 0, 2))
    restored.restore(FS, root, files)
    restored.put(*_rows(IDS[GROUPS == 9], n=5))
    again = restored.snapshot(FS, root, 2)
    assert len(again) == 64 and [f.key_groups[0] for f in again if f.extra["written_by"] == 2] == [
        9
    ]
    moved = restored.snapshot(FS, str(tmp_path / "other-root"), 3)
    assert all(f.extra["written_by"] == 3 for f in moved) and len(moved) == 64


def test_files_are_plain_arrow_ipc_with_the_key_group(tmp_path: Path) -> None:
    store, _ = _stores(tmp_path)
    store.put(*_rows(IDS))
    files = store.snapshot(FS, str(tmp_path / "ckpt"), 1)
    table = pyarrow.ipc.open_file(str(tmp_path / "ckpt" / files[0].path)).read_all()
    assert table.column_names == ["id", "n", KEY_GROUP]
    assert set(table.column(KEY_GROUP).to_pylist()) == {files[0].key_groups[0]}


@pytest.mark.parametrize("source", ["memory", "arrow"])
def test_halves_restored_from_one_store_list_only_their_own_groups(
    tmp_path: Path, source: str
) -> None:
    """One store of all 128 groups (memory: one file of them all; arrow: one file a group) is
    restored onto two workers; each holds only its groups, and their next checkpoint, taken
    without any change, restores to exactly the input again: no group listed twice or lost."""
    backend = MemoryBackend() if source == "memory" else ArrowBackend()
    whole = backend.open_store(SPEC, range(0, 128), StoreContext(str(tmp_path), 0, 1))
    keys, values = _rows(IDS)
    whole.put(keys, values)
    root = str(tmp_path / "ckpt")
    files = whole.snapshot(FS, root, 1)
    listed = []
    for worker, half in enumerate((range(0, 64), range(64, 128))):
        store = ArrowBackend().open_store(SPEC, half, StoreContext(str(tmp_path), worker, 2))
        store.restore(FS, root, files)
        mine = (GROUPS >= half.start) & (GROUPS < half.stop)
        assert_frame_equal(
            pl.concat(list(store.scan())).sort("id"),
            pl.DataFrame({"id": IDS[mine], "n": IDS[mine]}),
        )
        again = store.snapshot(FS, root, 2)
        assert sorted(f.key_groups for f in again) == [(g, g + 1) for g in half]
        listed += again
    restored = ArrowBackend().open_store(SPEC, range(0, 128), StoreContext(str(tmp_path), 0, 1))
    restored.restore(FS, root, listed)
    assert_frame_equal(
        pl.concat(list(restored.scan())).sort("id"), pl.DataFrame({"id": IDS, "n": IDS})
    )


def test_a_snapshot_of_another_format_is_a_state_error(tmp_path: Path) -> None:
    lmdb = LmdbBackend().open_store(SPEC, range(0, 128), StoreContext(str(tmp_path), 0, 1))
    lmdb.put(*_rows(IDS[:100]))
    root = str(tmp_path / "ckpt")
    files = lmdb.snapshot(FS, root, 1)
    store, _ = _stores(tmp_path)
    with pytest.raises(StateError, match=r"cannot restore .* of format 'lmdb'"):
        store.restore(FS, root, files)
