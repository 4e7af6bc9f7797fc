"""What only the ``lmdb`` backend promises: its own snapshot format, a map that grows, clear
errors on a full map or disk or a bad path, and state larger than the heap.

The shared behaviour (same answers as ``memory``) is in ``test_conformance.py``.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import fsspec
import lmdb
import numpy as np
import polars as pl
import pytest

import arrowflow as af
from arrowflow.backends.lmdb import FORMAT, LmdbBackend
from arrowflow.backends.memory import MemoryBackend
from arrowflow.errors import StateError
from arrowflow.state import StoreContext, StoreSpec
from arrowflow.testing.state_conformance import assert_same_contents

SCENARIOS = Path(__file__).with_name("_subprocess.py")
SPEC = StoreSpec("agg-1", pl.Schema({"id": pl.Int64}), pl.Schema({"n": pl.Int64, "tag": pl.String}))


def _rows(ids: np.ndarray) -> tuple[pl.DataFrame, pl.DataFrame]:
    return pl.DataFrame({"id": ids}), pl.DataFrame({"n": ids * 2, "tag": pl.Series(ids % 97).cast(pl.String)})


def _open(backend: LmdbBackend | MemoryBackend, tmp_path: Path, name: str = "w") -> object:
    local = tmp_path / name
    local.mkdir(exist_ok=True)
    return backend.open_store(SPEC, range(0, 128), StoreContext(str(local), 0, 1))


def _scenario(*arguments: str, timeout: float = 120) -> tuple[dict[str, object] | None, subprocess.CompletedProcess[str]]:
    done = subprocess.run([sys.executable, str(SCENARIOS), *arguments], capture_output=True, text=True,
                          timeout=timeout, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    return (json.loads(lines[-1]) if lines else None), done


def test_the_map_grows_by_itself(tmp_path: Path) -> None:
    store = _open(LmdbBackend(map_size=1 << 16), tmp_path)
    memory = _open(MemoryBackend(), tmp_path, "m")
    for start in range(0, 200_000, 50_000):
        for target in (store, memory):
            target.put(*_rows(np.arange(start, start + 50_000)))
    assert store.map_size > 1 << 16  # type: ignore[attr-defined]
    assert_same_contents(store, memory)  # type: ignore[arg-type]


def test_batches_larger_than_one_binding_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch goes to the binding in chunks (one transaction still): chunk edges lose nothing."""
    monkeypatch.setattr("arrowflow.backends.lmdb.CHUNK", 7)
    store = _open(LmdbBackend(), tmp_path)
    memory = _open(MemoryBackend(), tmp_path, "m")
    for target in (store, memory):
        target.put(*_rows(np.arange(100)))
        target.delete(pl.DataFrame({"id": np.arange(0, 100, 3)}))
    probe = pl.DataFrame({"id": np.arange(-5, 105)})
    assert store.get(probe).equals(memory.get(probe))  # type: ignore[attr-defined]
    assert_same_contents(store, memory)  # type: ignore[arg-type]


def test_a_full_map_is_a_state_error_and_the_store_is_unchanged(tmp_path: Path) -> None:
    store = _open(LmdbBackend(map_size=1 << 16, max_map_size=1 << 20), tmp_path)
    memory = _open(MemoryBackend(), tmp_path, "m")
    for target in (store, memory):
        target.put(*_rows(np.arange(1000)))
    with pytest.raises(StateError, match=r"is full: it reached max_map_size=1048576 bytes.*unchanged"):
        store.put(*_rows(np.arange(500, 100_000)))
    assert_same_contents(store, memory)  # type: ignore[arg-type]
    for target in (store, memory):  # and it still takes batches that fit
        target.put(*_rows(np.arange(2000, 2100)))
    assert_same_contents(store, memory)  # type: ignore[arg-type]


@pytest.mark.parametrize("backend", ["lmdb-small-map", "sql"])
def test_a_full_disk_is_a_state_error_and_the_store_is_unchanged(tmp_path: Path, backend: str) -> None:
    """The child process caps its file size (RLIMIT_FSIZE) just above what the store holds."""
    result, done = _scenario("disk_full", backend, str(tmp_path))
    assert result is not None, done.stderr
    assert str(result["outcome"]).startswith("StateError"), result
    assert "unchanged" in str(result["outcome"])
    assert result["unchanged"] and result["writable"], result


def test_a_path_that_cannot_be_created_is_a_state_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    backend = LmdbBackend(path=str(blocker / "state"))
    with pytest.raises(StateError, match=r"cannot create its environment in .*a-file/state.*writable local directory"):
        backend.open_store(SPEC, range(0, 128), StoreContext(str(tmp_path), 0, 1))
    flow = af.Flow("bad-path")
    stream = flow.from_polars(pl.DataFrame({"k": [1, 2]})).key_by("k").agg(n=pl.len())
    with pytest.raises(StateError, match="a-file/state"):
        stream.collect(state=backend)


def test_the_snapshot_is_an_lmdb_environment_that_describes_itself(tmp_path: Path) -> None:
    store = _open(LmdbBackend(), tmp_path)
    store.put(*_rows(np.arange(1000)))  # type: ignore[attr-defined]
    fs = fsspec.filesystem("file")
    (state_file,) = store.snapshot(fs, str(tmp_path / "ckpt"), 3)  # type: ignore[attr-defined]
    assert state_file.format == "lmdb" and state_file.path == "chk-00000003/state/agg-1/000-128.lmdb"
    env = lmdb.open(str(tmp_path / "ckpt" / state_file.path), subdir=False, readonly=True, lock=False, max_dbs=2)
    try:
        with env.begin() as txn:
            meta = env.open_db(b"meta", txn=txn, create=False)
            entries = env.open_db(b"entries", txn=txn, create=False)
            assert txn.get(b"format", db=meta) == FORMAT
            assert txn.stat(entries)["entries"] == 1000
    finally:
        env.close()


def test_restore_reads_arrow_snapshots_of_the_memory_backend(tmp_path: Path) -> None:
    memory = _open(MemoryBackend(), tmp_path, "m")
    memory.put(*_rows(np.arange(5000)))  # type: ignore[attr-defined]
    fs = fsspec.filesystem("file")
    root = str(tmp_path / "ckpt")
    files = memory.snapshot(fs, root, 1)  # type: ignore[attr-defined]
    store = LmdbBackend().open_store(SPEC, range(0, 64), StoreContext(tempfile.mkdtemp(dir=tmp_path), 0, 2))
    store.restore(fs, root, files)
    assert_same_contents(store, memory, groups=range(0, 64))  # type: ignore[arg-type]


def test_restoring_a_snapshot_of_another_schema_is_a_state_error(tmp_path: Path) -> None:
    store = _open(LmdbBackend(), tmp_path)
    store.put(*_rows(np.arange(10)))  # type: ignore[attr-defined]
    fs = fsspec.filesystem("file")
    root = str(tmp_path / "ckpt")
    files = store.snapshot(fs, root, 1)  # type: ignore[attr-defined]
    other = StoreSpec("agg-1", pl.Schema({"id": pl.String}), SPEC.value_schema)
    target = LmdbBackend().open_store(other, range(0, 128), StoreContext(tempfile.mkdtemp(dir=tmp_path), 0, 1))
    with pytest.raises(StateError, match=r"holds .* keys \{'id': Int64\}.*but store 'agg-1'"):
        target.restore(fs, root, files)


def test_nested_columns_are_refused_with_the_way_out(tmp_path: Path) -> None:
    spec = StoreSpec("agg-1", pl.Schema({"id": pl.Int64}), pl.Schema({"seen": pl.List(pl.Int64)}))
    with pytest.raises(StateError, match=r"column 'seen' has type List\(Int64\).*state='memory' or state='arrow'"):
        LmdbBackend().open_store(spec, range(0, 128), StoreContext(str(tmp_path), 0, 1))


def test_state_larger_than_the_heap_budget(tmp_path: Path) -> None:
    """1M keys under a 40 MiB heap cap (RLIMIT_DATA, set after imports and warm-up).

    The cap binds anonymous memory — the heap — and not LMDB's file-backed map, which the
    kernel pages in and out like any file cache. The same cap lets the memory backend hold
    20k keys but not 1M, which shows the cap is real; lmdb holds all 1M, reads and
    rewrites a third of them, and a streamed scan finds every value as expected.
    """
    keys, budget = 1_000_000, 40
    spec = importlib.util.spec_from_file_location("_scenarios", SCENARIOS)
    assert spec is not None and spec.loader is not None
    scenarios = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scenarios)
    heap_state = pl.concat(scenarios.rows(np.arange(keys)), how="horizontal").estimated_size()
    assert heap_state > budget << 20, "the state would fit the heap: the test proves nothing"
    small = _scenario("larger_than_heap", "memory", str(tmp_path / "m1"), "20000", str(budget))
    small, done = small
    assert small is not None and small["outcome"] == "finished" and small["mismatches"] == 0, done.stderr[-3000:]
    big, done = _scenario("larger_than_heap", "memory", str(tmp_path / "m2"), str(keys), str(budget))
    assert big is None or big["outcome"] != "finished", "the cap does not bind: the test proves nothing"
    result, done = _scenario("larger_than_heap", "lmdb", str(tmp_path / "l"), str(keys), str(budget))
    assert result is not None, done.stderr[-2000:]
    assert result["outcome"] == "finished", result
    assert result["seen"] == keys and result["count"] == keys and result["mismatches"] == 0
    assert int(result["vm_data_end"]) - int(result["vm_data_baseline"]) <= budget << 20
    assert int(result["lmdb_used_bytes"]) > budget << 20  # the state itself is larger than the cap
    print(f"\nlmdb, {keys} keys under a {budget} MiB heap cap: {json.dumps(result)}")
