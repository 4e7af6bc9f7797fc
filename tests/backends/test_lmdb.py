"""What only the ``lmdb`` backend promises: its own snapshot format, a map that grows, clear
errors on a full map or disk or a bad path, and state larger than the heap.

The shared behaviour (same answers as ``memory``) is in ``test_conformance.py``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import resource
import signal
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
from arrowflow.backends.lmdb import FORMAT, LmdbBackend, _PyEnv, c_driver_available
from arrowflow.backends.memory import MemoryBackend
from arrowflow.errors import StateError
from arrowflow.state import StoreContext, StoreSpec
from arrowflow.testing.state_conformance import assert_same_contents

SCENARIOS = Path(__file__).with_name("_subprocess.py")
SPEC = StoreSpec("agg-1", pl.Schema({"id": pl.Int64}), pl.Schema({"n": pl.Int64, "tag": pl.String}))


def _rows(ids: np.ndarray) -> tuple[pl.DataFrame, pl.DataFrame]:
    return pl.DataFrame({"id": ids}), pl.DataFrame(
        {"n": ids * 2, "tag": pl.Series(ids % 97).cast(pl.String)}
    )


def _open(backend: LmdbBackend | MemoryBackend, tmp_path: Path, name: str = "w") -> object:
    local = tmp_path / name
    local.mkdir(exist_ok=True)
    return backend.open_store(SPEC, range(0, 128), StoreContext(str(local), 0, 1))


def _scenario(
    *arguments: str, timeout: float = 120
) -> tuple[dict[str, object] | None, subprocess.CompletedProcess[str]]:
    done = subprocess.run(
        [sys.executable, str(SCENARIOS), *arguments],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    return (json.loads(lines[-1]) if lines else None), done


@pytest.fixture(autouse=True, params=["c", "py"])
def driver(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs on the C extension and on the Python binding (the fallback without a
    compiler); the scenarios in subprocesses inherit the choice."""
    monkeypatch.setenv("ARROWFLOW_LMDB_DRIVER", request.param)
    return str(request.param)


@pytest.mark.parametrize(
    "driver", ["c"], indirect=True
)  # one run: the test picks its drivers itself
def test_the_c_extension_is_built() -> None:
    """An install with a compiler (this machine's) builds it: the fast path is what is tested."""
    assert c_driver_available()
    from arrowflow.backends import _lmdbc

    assert _lmdbc.lmdb_version.startswith("LMDB 0.9")


def test_a_driver_is_chosen_by_name_and_checked(tmp_path: Path, driver: str) -> None:
    store = _open(LmdbBackend(), tmp_path)
    assert isinstance(store.env, _PyEnv) == (driver == "py")  # type: ignore[attr-defined]
    with pytest.raises(StateError, match=r"driver=\.\.\.\) must be one of \('c', 'py'\)"):
        LmdbBackend(driver="rust")


@pytest.mark.parametrize(
    "driver", ["c"], indirect=True
)  # one run: the test picks its drivers itself
@pytest.mark.parametrize("limit", [1, 3, 64])
def test_the_two_drivers_give_the_same_answers(tmp_path: Path, limit: int) -> None:
    """The C extension and the Python binding, call for call: scans resumed at every chunk
    edge (with and without a stop key), lookups of held, empty and missing values, deletes."""
    from arrowflow.backends import _lmdbc
    from arrowflow.backends.lmdb import _pack, _split

    keys = [
        b"\x00\x01a",
        b"\x00\x01b",
        b"\x00\x02",
        b"\x00\x02\x00",
        b"\x00\x03zz",
        b"\x01",
        b"\xff\xff",
    ]
    values = [b"1", b"", b"22", b"333", b"4", b"55", b"6"]
    answers = []
    for name, env_type in (("c", _lmdbc.Env), ("py", _PyEnv)):
        directory = tmp_path / name
        directory.mkdir()
        env = env_type(str(directory), 1 << 20)
        db = env.open_db(b"entries")
        env.put(db, *_pack(keys[::-1]), *_pack(values[::-1]))
        env.delete(db, *_pack([b"\x01", b"absent"]))
        scans = []
        for start, stop in ((b"", None), (b"\x00\x02", b"\x00\x03"), (b"\x00\x01b", b"\xff\xff")):
            following, seen = start, []
            while following is not None:
                (kdata, koffsets), (vdata, voffsets), following = env.scan(
                    db, following, stop, limit
                )
                seen += list(zip(_split(kdata, koffsets), _split(vdata, voffsets), strict=True))
            scans.append(seen)
        data, offsets, found = env.get_var(db, *_pack([b"\x00\x01b", b"nope", b"\x00\x02\x00"]))
        answers.append((scans, _split(data, offsets), bytes(found), env.count(db)))
        env.close()
    assert answers[0] == answers[1]
    scans, looked_up, found, count = answers[0]
    held = [pair for pair in zip(keys, values, strict=True) if pair[0] != b"\x01"]
    assert scans[0] == held and count == len(held)
    assert scans[1] == held[2:4] and scans[2] == held[1:5]
    assert looked_up == [b"", b"", b"333"] and found == b"\x01\x00\x01"


def test_the_map_grows_by_itself(tmp_path: Path) -> None:
    store = _open(LmdbBackend(map_size=1 << 16), tmp_path)
    memory = _open(MemoryBackend(), tmp_path, "m")
    for start in range(0, 200_000, 50_000):
        for target in (store, memory):
            target.put(*_rows(np.arange(start, start + 50_000)))
    assert store.map_size > 1 << 16  # type: ignore[attr-defined]
    assert_same_contents(store, memory)  # type: ignore[arg-type]


def test_a_batch_put_delete_and_lookup_with_missing_keys_equal_memory(tmp_path: Path) -> None:
    """Variable-width values: a batch's puts, deletes (some of keys not held) and a lookup of
    held, deleted and never-held keys, against the memory backend."""
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
    with pytest.raises(
        StateError, match=r"is full: it reached max_map_size=1048576 bytes.*unchanged"
    ):
        store.put(*_rows(np.arange(500, 100_000)))
    assert_same_contents(store, memory)  # type: ignore[arg-type]
    for target in (store, memory):  # and it still takes batches that fit
        target.put(*_rows(np.arange(2000, 2100)))
    assert_same_contents(store, memory)  # type: ignore[arg-type]


@pytest.mark.parametrize("backend", ["lmdb-small-map", "sql"])
def test_a_full_disk_is_a_state_error_and_the_store_is_unchanged(
    tmp_path: Path, backend: str
) -> None:
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
    with pytest.raises(
        StateError,
        match=r"cannot create its environment in .*a-file/state.*writable local directory",
    ):
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
    assert (
        state_file.format == "lmdb" and state_file.path == "chk-00000003/state/agg-1/000-128.lmdb"
    )
    env = lmdb.open(
        str(tmp_path / "ckpt" / state_file.path), subdir=False, readonly=True, lock=False, max_dbs=2
    )
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
    store = LmdbBackend().open_store(
        SPEC, range(0, 64), StoreContext(tempfile.mkdtemp(dir=tmp_path), 0, 2)
    )
    store.restore(fs, root, files)
    assert_same_contents(store, memory, groups=range(0, 64))  # type: ignore[arg-type]


def test_restore_of_the_top_key_groups_at_the_largest_max_parallelism(tmp_path: Path) -> None:
    """65536 key groups, the most the 2-byte prefix holds: the last group's keys restore too
    (the range's end, 65536, has no 2-byte form; the copy runs to the end of the file)."""
    spec = StoreSpec("agg-1", SPEC.key_schema, SPEC.value_schema, max_parallelism=1 << 16)
    everything = range(0, 1 << 16)
    source = LmdbBackend().open_store(
        spec, everything, StoreContext(tempfile.mkdtemp(dir=tmp_path), 0, 1)
    )
    memory = MemoryBackend().open_store(
        spec, everything, StoreContext(tempfile.mkdtemp(dir=tmp_path), 0, 1)
    )
    for target in (source, memory):
        target.put(*_rows(np.arange(20_000)))
    fs = fsspec.filesystem("file")
    files = source.snapshot(fs, str(tmp_path / "ckpt"), 1)
    for part in (range(0, 1 << 15), range(1 << 15, 1 << 16)):
        restored = LmdbBackend().open_store(
            spec, part, StoreContext(tempfile.mkdtemp(dir=tmp_path), 0, 2)
        )
        restored.restore(fs, str(tmp_path / "ckpt"), files)
        assert 0 < restored.count() < 20_000
        assert_same_contents(restored, memory, groups=part)


def test_restoring_a_snapshot_of_another_schema_is_a_state_error(tmp_path: Path) -> None:
    store = _open(LmdbBackend(), tmp_path)
    store.put(*_rows(np.arange(10)))  # type: ignore[attr-defined]
    fs = fsspec.filesystem("file")
    root = str(tmp_path / "ckpt")
    files = store.snapshot(fs, root, 1)  # type: ignore[attr-defined]
    other = StoreSpec("agg-1", pl.Schema({"id": pl.String}), SPEC.value_schema)
    target = LmdbBackend().open_store(
        other, range(0, 128), StoreContext(tempfile.mkdtemp(dir=tmp_path), 0, 1)
    )
    with pytest.raises(StateError, match=r"holds .* keys \{'id': Int64\}.*but store 'agg-1'"):
        target.restore(fs, root, files)


def test_nested_columns_are_refused_with_the_way_out(tmp_path: Path) -> None:
    spec = StoreSpec("agg-1", pl.Schema({"id": pl.Int64}), pl.Schema({"seen": pl.List(pl.Int64)}))
    with pytest.raises(
        StateError, match=r"column 'seen' has type List\(Int64\).*state='memory' or state='arrow'"
    ):
        LmdbBackend().open_store(spec, range(0, 128), StoreContext(str(tmp_path), 0, 1))


@pytest.mark.parametrize("driver", ["c"], indirect=True)  # slow; the drivers share the storage path
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
    assert small is not None and small["outcome"] == "finished" and small["mismatches"] == 0, (
        done.stderr[-3000:]
    )
    big, done = _scenario(
        "larger_than_heap", "memory", str(tmp_path / "m2"), str(keys), str(budget)
    )
    assert big is None or big["outcome"] != "finished", (
        "the cap does not bind: the test proves nothing"
    )
    result, done = _scenario(
        "larger_than_heap", "lmdb", str(tmp_path / "l"), str(keys), str(budget)
    )
    assert result is not None, done.stderr[-2000:]
    assert result["outcome"] == "finished", result
    assert result["seen"] == keys and result["count"] == keys and result["mismatches"] == 0
    assert int(result["vm_data_end"]) - int(result["vm_data_baseline"]) <= budget << 20
    assert int(result["lmdb_used_bytes"]) > budget << 20  # the state itself is larger than the cap
    print(f"\nlmdb, {keys} keys under a {budget} MiB heap cap: {json.dumps(result)}")


# ------------------------------------------------------------------------ fixed-width values

FIXED_KEYS = pl.Schema(
    {
        "i8": pl.Int8,
        "u64": pl.UInt64,
        "f32": pl.Float32,
        "b": pl.Boolean,
        "d": pl.Date,
        "ts": pl.Datetime("us", "UTC"),
        "s": pl.String,
    }
)
FIXED_VALUES = pl.Schema(
    {
        "n": pl.Int64,
        "u16": pl.UInt16,
        "x": pl.Float64,
        "flag": pl.Boolean,
        "day": pl.Date,
        "t": pl.Time,
        "dur": pl.Duration("ms"),
        "dec": pl.Decimal(12, 3),
    }
)


def _fixed_frames(n: int, seed: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Keys of every kind of column (with nulls, NaN, -0.0) and fixed-width values with nulls."""
    rng = np.random.default_rng(seed)
    ids = np.arange(n)

    def nulls(series: pl.Series, every: int) -> pl.Series:
        return (
            pl.select(pl.when(pl.Series(ids % every == 1)).then(None).otherwise(series))
            .to_series()
            .alias(series.name)
        )

    floats = (ids % 7).astype(np.float32) - 3
    floats[ids % 11 == 5] = np.nan
    floats[ids % 13 == 6] = -0.0
    keys = pl.DataFrame(
        {
            "i8": nulls(pl.Series("i8", (ids % 200 - 100).astype(np.int8)), 17),
            "u64": pl.Series("u64", np.uint64(2**63) + ids.astype(np.uint64) * np.uint64(7919)),
            "f32": nulls(pl.Series("f32", floats), 19),
            "b": nulls(pl.Series("b", ids % 2 == 0), 23),
            "d": pl.Series("d", ids % 1000, dtype=pl.Int32).cast(pl.Date),
            "ts": pl.Series("ts", ids * 1_000_003, dtype=pl.Int64).cast(pl.Datetime("us", "UTC")),
            "s": nulls(pl.Series("s", [f"k{i % 50}" * (i % 4) for i in ids]), 29),
        }
    ).unique(maintain_order=True)
    m = keys.height
    vals = rng.integers(-(10**9), 10**9, m)
    values = pl.DataFrame(
        {
            "n": nulls(pl.Series("n", vals), 5)[:m],
            "u16": pl.Series("u16", (vals % 60000).astype(np.uint16)),
            "x": nulls(pl.Series("x", vals * 0.5), 7)[:m],
            "flag": nulls(pl.Series("flag", vals % 3 == 0), 3)[:m],
            "day": pl.Series("day", vals % 20000, dtype=pl.Int32).cast(pl.Date),
            "t": pl.Series("t", (np.abs(vals) % 86_400) * 10**9, dtype=pl.Int64).cast(pl.Time),
            "dur": pl.Series("dur", vals, dtype=pl.Int64).cast(pl.Duration("ms")),
            "dec": pl.Series("dec", vals % 10**6, dtype=pl.Int64).cast(pl.Decimal(12, 3)),
        }
    )
    values = values.with_columns(
        # a row whose every value is null is still a found row
        *[
            pl.when(pl.int_range(pl.len()) == 4).then(None).otherwise(pl.col(c)).alias(c)
            for c in FIXED_VALUES.names()
        ]
    )
    return keys, values


def test_fixed_width_values_of_every_type_round_trip(tmp_path: Path) -> None:
    """Values of fixed width are looked up as one buffer (a placeholder for a missing key):
    every type, nulls, an all-null row, missing keys, get-then-put of the same keys."""
    spec = StoreSpec("agg-1", FIXED_KEYS, FIXED_VALUES)
    stores = []
    for name, backend in (("l", LmdbBackend()), ("m", MemoryBackend())):
        local = tmp_path / name
        local.mkdir()
        stores.append(backend.open_store(spec, range(0, 128), StoreContext(str(local), 0, 1)))
    store, memory = stores
    keys, values = _fixed_frames(600, 1)
    assert keys.height > 400 and store.value_codec.row_width  # type: ignore[attr-defined]
    for target in stores:
        target.put(keys[:400], values[:400])
    probe = pl.concat([keys[350:], keys[:50]])  # 250 absent keys, 100 present, out of order
    got = store.get(probe)
    assert got.equals(memory.get(probe))
    assert got.get_column("__found").sum() == 100
    # straight from the input frames, not through another store: the values put, in probe order
    present = got.filter(pl.col("__found")).drop("__found")
    assert present.equals(pl.concat([values[350:400], values[:50]]))
    assert got.schema == pl.Schema({**FIXED_VALUES, "__found": pl.Boolean})
    bumped = got.drop("__found").with_columns(pl.col("n").fill_null(0) + 1)
    for target in stores:  # a keyed operator's put of the keys it just got
        target.put(probe, bumped)
    assert store.get(probe).equals(memory.get(probe))
    other = keys[50 : 50 + probe.height]  # same height, other keys: not the keys of the last get
    assert (
        other.height == probe.height
        and other.join(probe, on=list(FIXED_KEYS.names()), nulls_equal=True).is_empty()
    )
    for target in stores:
        target.put(other, values[: other.height])
    assert_same_contents(store, memory)  # type: ignore[arg-type]
    for target in stores:
        target.delete(keys[::3])
    assert store.get(keys).equals(memory.get(keys))
    assert_same_contents(store, memory)  # type: ignore[arg-type]
    fs = fsspec.filesystem("file")
    root = str(tmp_path / "ckpt")
    files = store.snapshot(fs, root, 1)
    restored = LmdbBackend().open_store(
        spec, range(0, 64), StoreContext(tempfile.mkdtemp(dir=tmp_path), 0, 2)
    )
    restored.restore(fs, root, files)
    assert_same_contents(restored, memory, groups=range(0, 64))  # type: ignore[arg-type]
    assert restored.get(keys).filter(pl.col("__found")).height == restored.count()


def test_a_stored_value_of_the_wrong_width_is_a_state_error(tmp_path: Path) -> None:
    spec = StoreSpec("agg-1", pl.Schema({"id": pl.Int64}), pl.Schema({"n": pl.Int64}))
    store = LmdbBackend().open_store(spec, range(0, 128), StoreContext(str(tmp_path), 0, 1))
    store.put(pl.DataFrame({"id": [1, 2]}), pl.DataFrame({"n": [10, 20]}))
    env, entries = store.env, store.entries  # type: ignore[attr-defined]
    (keys, _), _, _ = env.scan(entries, b"", None, 1)
    env.put(entries, keys, np.array([0, len(keys)]), b"\x01short", np.array([0, 6]))
    with pytest.raises(StateError, match="do not decode"):
        store.get(pl.DataFrame({"id": [1, 2, 3]}))


def test_snapshots_and_restores_leave_no_files_or_descriptors_behind(tmp_path: Path) -> None:
    """Twenty checkpoints and restores: the store's local directory holds its environment only,
    and the process has as many open files as before (no temporary copy, lock file or
    descriptor left per checkpoint)."""
    store = _open(LmdbBackend(), tmp_path)
    store.put(*_rows(np.arange(2000)))  # type: ignore[attr-defined]
    fs = fsspec.filesystem("file")
    restored = _open(LmdbBackend(), tmp_path, "r")
    local = [tmp_path / "w" / "lmdb", tmp_path / "r" / "lmdb"]
    before = [sorted(p.name for p in folder.iterdir()) for folder in local]
    descriptors = len(os.listdir("/proc/self/fd"))
    for checkpoint in range(1, 21):
        files = store.snapshot(fs, str(tmp_path / "ckpt"), checkpoint)  # type: ignore[attr-defined]
        restored.restore(fs, str(tmp_path / "ckpt"), files)  # type: ignore[attr-defined]
    assert len(os.listdir("/proc/self/fd")) == descriptors
    assert [sorted(p.name for p in folder.iterdir()) for folder in local] == before
    memory = _open(MemoryBackend(), tmp_path, "m")
    memory.put(*_rows(np.arange(2000)))  # type: ignore[attr-defined]
    assert_same_contents(restored, memory)  # type: ignore[arg-type]


def test_a_snapshot_file_of_an_unknown_format_is_a_state_error(tmp_path: Path) -> None:
    store = _open(LmdbBackend(), tmp_path)
    store.put(*_rows(np.arange(100)))  # type: ignore[attr-defined]
    fs = fsspec.filesystem("file")
    (state_file,) = store.snapshot(fs, str(tmp_path / "ckpt"), 1)  # type: ignore[attr-defined]
    other = dataclasses.replace(state_file, format="parquet")
    with pytest.raises(StateError, match=r"cannot restore .* of format 'parquet'"):
        _open(LmdbBackend(), tmp_path, "r").restore(fs, str(tmp_path / "ckpt"), [other])  # type: ignore[attr-defined]


def test_a_snapshot_that_cannot_be_written_is_a_state_error(tmp_path: Path) -> None:
    """The checkpoint root is a file: the snapshot fails instead of listing a file it never wrote."""
    store = _open(LmdbBackend(), tmp_path)
    store.put(*_rows(np.arange(100)))  # type: ignore[attr-defined]
    (tmp_path / "ckpt").write_text("not a directory")
    fs = fsspec.filesystem("file")
    with pytest.raises(StateError, match="cannot write state snapshot file"):
        store.snapshot(fs, str(tmp_path / "ckpt"), 1)  # type: ignore[attr-defined]


def test_a_copy_that_fails_is_a_state_error_and_leaves_no_file(tmp_path: Path) -> None:
    """The environment copy hits the file size limit (RLIMIT_FSIZE, as on a full disk)."""
    store = _open(LmdbBackend(), tmp_path)
    store.put(*_rows(np.arange(5000)))  # type: ignore[attr-defined]
    fs = fsspec.filesystem("file")
    listed = sorted(p.name for p in (tmp_path / "w" / "lmdb").iterdir())
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 10, hard))
    try:
        with pytest.raises(StateError, match="cannot copy the environment for a snapshot"):
            store.snapshot(fs, str(tmp_path / "ckpt"), 1)  # type: ignore[attr-defined]
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert sorted(p.name for p in (tmp_path / "w" / "lmdb").iterdir()) == listed
    assert not (tmp_path / "ckpt").exists()


def test_a_file_listed_as_lmdb_that_is_not_an_environment_is_a_state_error(
    tmp_path: Path,
) -> None:
    """Its size and checksum are right (an Arrow file of the memory backend, listed as lmdb)."""
    memory = _open(MemoryBackend(), tmp_path, "m")
    memory.put(*_rows(np.arange(100)))  # type: ignore[attr-defined]
    fs = fsspec.filesystem("file")
    files = memory.snapshot(fs, str(tmp_path / "ckpt"), 1)  # type: ignore[attr-defined]
    relabelled = [dataclasses.replace(f, format="lmdb") for f in files]
    store = _open(LmdbBackend(), tmp_path, "r")
    with pytest.raises(StateError, match="is not an LMDB environment"):
        store.restore(fs, str(tmp_path / "ckpt"), relabelled)  # type: ignore[attr-defined]
    assert not [p for p in (tmp_path / "r" / "lmdb").iterdir() if p.name.startswith("restore-")]
