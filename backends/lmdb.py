"""The ``lmdb`` state backend: keyed state on local disk, so it can be larger than memory.

Like Flink's RocksDB backend, each store keeps its entries in an embedded key-value store on
the worker's local disk — here an LMDB environment under the store context's ``local_dir``
(or ``LmdbBackend(path=...)``), opened in the worker process only, never before a fork.

State it keeps, per store (one LMDB environment, two named databases):

- ``entries``: one entry per key. Key = 2-byte big-endian key group + the key columns in the
  row encoding of :mod:`arrowflow.backends._rowcodec`; value = the value columns in the same
  encoding. The key-group prefix makes "the keys of groups [a, b)" one contiguous range, which
  is what restore onto another split reads. Nothing depends on the order of keys otherwise.
- ``meta``: the format tag, the Arrow schema of keys and values, the key-group range, so that
  a snapshot file describes itself.

Protocol per batch: ``get`` is one read transaction that looks up every key of the batch;
``put`` and ``delete`` are one write transaction each, so a batch is applied entirely or not
at all. Keys are encoded and values decoded with numpy over whole columns, and the batch
reaches LMDB as two buffers (the encoded rows and their offsets): the C extension
``arrowflow.backends._lmdbc`` (``_lmdbc.c``, built with a vendored LMDB) loops over them with
one cursor, the GIL released, with no Python object per key. A batch is visited in the order
the B-tree keeps its keys (a radix sort on their first bytes), which halves the cost on a
large store; nothing else depends on key order. The ``put`` that follows a ``get`` of the
same keys (a keyed operator's read-modify-write) reuses the get's encoded keys and order.
When every value column has a fixed width, a lookup of a missing key returns a placeholder
row of the same width (tag bytes 0xff, which no stored row has), so a batch's values are one
buffer that decodes as one numpy matrix; a stored value of another width is reported as
damage, never decoded misaligned.

Drivers: ``LmdbBackend(driver=...)`` is ``"c"`` (the extension) or ``"py"`` (the same calls
on the ``lmdb`` Python binding, about half as fast, for an install that had no C compiler);
the default is the extension when it is built, or ``$ARROWFLOW_LMDB_DRIVER``. Both keep the
same files, so either reads the other's snapshots.

Memory: the environment is opened with ``writemap``, so a write transaction's dirty pages
live in the file-backed map, not on the heap (without it, a batch that touches 100k pages
holds 400 MB of page copies in malloc'd memory until it commits), and the state may be far
larger than the worker's memory. The data file's disk blocks are reserved
(``posix_fallocate``) before the map may use them, so a full disk is a :class:`StateError`
before a page is written, never a SIGBUS; the price is that the file takes the map's size
on disk (at most twice the data). The map starts at ``map_size`` and doubles whenever LMDB
reports it full: the failed transaction was aborted, so the batch is simply retried.

A snapshot is LMDB's consistent copy (``mdb_env_copy2`` with compaction) of the environment,
streamed to ``chk-<n>/state/<store>/<start>-<stop>.lmdb``. Restore downloads each file that
overlaps the store's key groups (checking its sha256), opens it read-only and copies the
entries of the owned groups, so a restore onto a different number of workers reads only
what it needs. Snapshots of the ``arrow`` format family (``memory``, ``arrow``) restore too.

Worked example::

    >>> import polars as pl, tempfile
    >>> from arrowflow.state import StoreContext, StoreSpec
    >>> spec = StoreSpec("agg-1", pl.Schema({"user": pl.Int64}), pl.Schema({"n": pl.Int64}))
    >>> local = tempfile.TemporaryDirectory()
    >>> store = LmdbBackend().open_store(spec, range(0, 128), StoreContext(local.name, 0, 1))
    >>> store.put(pl.DataFrame({"user": [1, 2]}), pl.DataFrame({"n": [10, 20]}))
    >>> store.get(pl.DataFrame({"user": [2, 3]})).rows()
    [(20, True), (None, False)]
    >>> store.close(); local.cleanup()
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from itertools import islice, repeat
from typing import Any

import fsspec
import numpy as np
import polars as pl
import pyarrow as pa

from arrowflow._foundation.deps import import_optional
from arrowflow.errors import StateError
from arrowflow.state import (
    FOUND,
    KEY_GROUP,
    KeyedStore,
    StateBackend,
    StateFile,
    StoreContext,
    StoreSpec,
    read_ipc_bytes,
    read_verified,
)

from ._files import (
    download_verified,
    overlapping,
    range_name,
    safe_component,
    snapshot_path,
    upload_file,
)
from ._rowcodec import Encoded, RowCodec

FORMAT = b"arrowflow.lmdb/1"
SCAN_BATCH = 16_384
DRIVERS = ("c", "py")
_MiB = 1 << 20


def _schema_bytes(schema: pl.Schema) -> bytes:
    return pl.DataFrame(schema=schema).to_arrow().schema.serialize().to_pybytes()


def _schema_from_bytes(payload: bytes) -> pl.Schema:
    arrow_schema = pa.ipc.read_schema(pa.py_buffer(payload))
    return pl.from_arrow(arrow_schema.empty_table()).schema  # type: ignore[union-attr]


def _prefix(groups: np.ndarray) -> np.ndarray:
    """(n, 2) uint8: the big-endian key group of each key."""
    return groups.astype(">u2").view(np.uint8).reshape(-1, 2)


def _pack(items: list[bytes]) -> tuple[bytes, bytes]:
    """``bytes`` values as the (data, offsets) rows the drivers take and give."""
    offsets = np.zeros(len(items) + 1, dtype=np.int64)
    np.cumsum([len(item) for item in items], out=offsets[1:])
    return b"".join(items), offsets.tobytes()


def _rows(offsets: Any) -> int:
    """How many rows int64 ``offsets`` (any buffer) delimit."""
    return memoryview(offsets).nbytes // 8 - 1


def _split(data: Any, offsets: Any) -> list[bytes]:
    """(data, offsets) rows as one ``bytes`` each."""
    return Encoded.from_buffers(data, offsets).to_list()


class ValueWidthError(ValueError):
    """A stored value of another width than every value of the store has (the ``py`` driver's
    ``_lmdbc.ValueWidthError``)."""


class _PyEnv:
    """The batch operations of ``_lmdbc.Env``, on the ``lmdb`` Python binding.

    Used where the C extension was not built (no compiler at install time). Same contract:
    every call is one transaction. Per key it pays a ``bytes`` object for the key and the
    value and the binding's call; ``benchmarks/bench_state.py`` measures both drivers.
    """

    def __init__(
        self,
        path: str,
        map_size: int = 0,
        readonly: bool = False,
        subdir: bool = True,
        lock: bool = True,
        max_dbs: int = 2,
    ) -> None:
        import lmdb

        if readonly:
            self.env = lmdb.open(
                path, subdir=subdir, readonly=True, lock=lock, max_dbs=max_dbs, readahead=False
            )
        else:
            self.env = lmdb.open(
                path,
                map_size=map_size,
                subdir=subdir,
                lock=lock,
                max_dbs=max_dbs,
                sync=False,
                metasync=False,
                readahead=False,
                writemap=True,
                meminit=False,
                max_spare_txns=2,
            )
        self.readonly = readonly

    def open_db(self, name: bytes, create: bool = True) -> Any:
        return self.env.open_db(name, create=create and not self.readonly)

    def info(self) -> dict[str, int]:
        info, stat = self.env.info(), self.env.stat()
        return {
            "map_size": info["map_size"],
            "last_pgno": info["last_pgno"],
            "psize": stat["psize"],
        }

    def set_mapsize(self, size: int) -> None:
        self.env.set_mapsize(size)

    def copyfd(self, fd: int) -> None:
        self.env.copyfd(fd, compact=True)

    def count(self, db: Any) -> int:
        with self.env.begin() as txn:
            return int(txn.stat(db)["entries"])

    def clear(self, db: Any) -> None:
        with self.env.begin(write=True) as txn:
            txn.drop(db, delete=False)

    def get_fixed(self, db: Any, data: Any, offsets: Any, width: int, missing: int) -> bytes:
        placeholder = bytes([missing]) * width  # ValueError outside 0..255, as the C driver
        keys = _split(data, offsets)
        with self.env.begin(db=db) as txn:
            lookup = txn.cursor().get
            found = list(map(lookup, keys, repeat(placeholder)))
        if any(len(value) != width for value in found):
            msg = f"a stored value is not {width} bytes wide"
            raise ValueWidthError(msg)
        return b"".join(found)

    def get_var(self, db: Any, data: Any, offsets: Any) -> tuple[bytes, bytes, np.ndarray]:
        keys = _split(data, offsets)
        with self.env.begin(db=db) as txn:
            found = list(map(txn.cursor().get, keys))
        valid = np.array([value is not None for value in found], dtype=np.uint8)
        return (*_pack([value or b"" for value in found]), valid)

    def put(self, db: Any, keys: Any, key_offsets: Any, values: Any, value_offsets: Any) -> None:
        pairs = zip(_split(keys, key_offsets), _split(values, value_offsets), strict=True)
        with self.env.begin(write=True, db=db) as txn:
            txn.cursor().putmulti(pairs)

    def delete(self, db: Any, data: Any, offsets: Any) -> None:
        with self.env.begin(write=True, db=db) as txn:
            list(map(txn.delete, _split(data, offsets)))

    def scan(
        self, db: Any, start: bytes, stop: bytes | None, limit: int
    ) -> tuple[Any, Any, bytes | None]:
        with self.env.begin(db=db) as txn:
            cursor = txn.cursor()
            positioned = cursor.set_range(start) if start else cursor.first()
            entries = list(islice(cursor, limit + 1)) if positioned else []
        if stop is not None:
            entries = [entry for entry in entries if entry[0] < stop]
        following = entries[limit][0] if len(entries) > limit else None
        entries = entries[:limit]
        keys = _pack([key for key, _ in entries])
        values = _pack([value for _, value in entries])
        return keys, values, following

    def close(self) -> None:
        self.env.close()


class _PyDriver:
    Env = _PyEnv
    ValueWidthError = ValueWidthError

    def __init__(self) -> None:
        lmdb = import_optional("lmdb", purpose="the 'lmdb' state backend without its C extension")
        self.Error = lmdb.Error
        self.MapFullError = lmdb.MapFullError


def c_driver_available() -> bool:
    try:
        from arrowflow.backends import _lmdbc  # noqa: F401
    except ImportError:
        return False
    return True


def _driver(name: str | None) -> Any:
    """The module-like driver: ``Env``, ``Error`` and ``MapFullError``."""
    name = (
        name or os.environ.get("ARROWFLOW_LMDB_DRIVER") or ("c" if c_driver_available() else "py")
    )
    if name == "py":
        return _PyDriver()
    if name != "c":
        msg = f"lmdb driver must be one of {DRIVERS}, got {name!r}"
        raise StateError(msg)
    try:
        from arrowflow.backends import _lmdbc
    except ImportError as exc:
        msg = (
            "the lmdb backend's C extension (arrowflow.backends._lmdbc) is not built: this install had "
            "no C compiler. Reinstall with one (gcc, and the Python headers), or use LmdbBackend(driver='py')."
        )
        raise StateError(msg) from exc
    return _lmdbc


class _KeyBatch:
    """A batch's encoded keys in the order LMDB keeps them, and that permutation."""

    __slots__ = ("in_order", "keys", "order", "source")

    def __init__(self, source: pl.DataFrame, keys: pl.DataFrame, encoded: Encoded) -> None:
        self.source = source  # the caller's frame: a put of the same object is a hit at once
        self.keys = keys
        self.order = encoded.locality_order()
        self.in_order = encoded.take(self.order)


class LmdbStore(KeyedStore):
    def __init__(
        self, spec: StoreSpec, key_groups_owned: range, directory: str, backend: LmdbBackend
    ) -> None:
        super().__init__(spec, key_groups_owned)
        self.driver = _driver(backend.driver)
        self.directory = directory
        self.backend = backend
        what = f"lmdb store {spec.name!r}"
        self.key_codec = RowCodec(
            spec.key_schema, what=f"{what} keys", canonical=True, prefix_width=2
        )
        self.value_codec = RowCodec(spec.value_schema, what=f"{what} values", canonical=False)
        if spec.max_parallelism > 1 << 16:
            msg = f"{what}: max_parallelism {spec.max_parallelism} exceeds the 65536 key groups the lmdb key prefix holds"
            raise StateError(msg)
        self.map_size = backend.map_size
        self._last_keys: _KeyBatch | None = None
        self.env = self._open(directory, self.map_size)
        self.entries = self.env.open_db(b"entries")
        self.meta = self.env.open_db(b"meta")
        self._write(self._write_meta)

    # ------------------------------------------------------------------------ environment

    def _open(self, directory: str, map_size: int) -> Any:
        try:
            if os.path.exists(directory):
                shutil.rmtree(directory)  # a fresh store starts empty; leftovers are a dead run's
            os.makedirs(directory)
            env = self.driver.Env(directory, map_size)
        except (OSError, self.driver.Error) as exc:
            msg = (
                f"lmdb store {self.spec.name!r}: cannot create its environment in {directory!r}: {exc}. "
                f"Give LmdbBackend(path=...) a writable local directory."
            )
            raise StateError(msg) from exc
        try:
            self._reserve(map_size)
        except StateError:
            env.close()
            raise
        return env

    def _reserve(self, size: int) -> None:
        """Allocate the data file's disk blocks up to ``size`` before the map may use them.

        With ``writemap`` LMDB writes dirty pages straight into the shared map (so a write
        transaction costs no heap, whatever its size), and a page of a sparse file that the
        disk has no room for would kill the process with SIGBUS. Reserving the blocks first
        turns a full disk into an error here, before any page is written.
        """
        path = os.path.join(self.directory, "data.mdb")
        try:
            fd = os.open(path, os.O_RDWR)
            try:
                os.posix_fallocate(fd, 0, size)
            finally:
                os.close(fd)
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.ENOSYS):  # e.g. some network file systems
                return
            msg = (
                f"lmdb store {self.spec.name!r}: cannot reserve {size} bytes of disk for its map in "
                f"{self.directory!r}: {exc}. The last batch was not applied and the store is unchanged; "
                f"free disk space or give LmdbBackend(path=...) a larger disk."
            )
            raise StateError(msg) from exc

    def _write_meta(self) -> None:
        entries = {
            b"format": FORMAT,
            b"key_schema": _schema_bytes(self.spec.key_schema),
            b"value_schema": _schema_bytes(self.spec.value_schema),
            b"key_groups": f"{self.key_groups.start},{self.key_groups.stop}".encode(),
            b"max_parallelism": str(self.spec.max_parallelism).encode(),
        }
        self.env.put(self.meta, *_pack(list(entries)), *_pack(list(entries.values())))

    def _grow(self) -> None:
        limit = self.backend.max_map_size
        if limit is not None and self.map_size >= limit:
            msg = (
                f"lmdb store {self.spec.name!r} is full: it reached max_map_size={limit} bytes; "
                f"the batch was not applied and the store is unchanged. Raise LmdbBackend(max_map_size=...)."
            )
            raise StateError(msg)
        new_size = self.map_size * 2 if limit is None else min(self.map_size * 2, limit)
        self._reserve(new_size)
        try:
            self.env.set_mapsize(new_size)
        except self.driver.Error as exc:
            msg = f"lmdb store {self.spec.name!r}: cannot grow its map to {new_size} bytes: {exc}"
            raise StateError(msg) from exc
        self.map_size = new_size

    def _write(self, apply: Callable[[], None]) -> None:
        """Run ``apply`` (one write transaction of the driver); grow the map and retry while it is full."""
        while True:
            try:
                apply()
                return
            except self.driver.MapFullError:
                self._grow()
            except self.driver.Error as exc:
                msg = (
                    f"lmdb store {self.spec.name!r} in {self.directory!r}: the write failed and was "
                    f"rolled back, the store is unchanged: {exc}"
                )
                raise StateError(msg) from exc

    # ------------------------------------------------------------------------ encoding

    def _batch(self, source: pl.DataFrame) -> _KeyBatch:
        """The batch's encoded keys, in the order LMDB stores them.

        A keyed operator puts exactly the keys it just got; the batch is kept from the ``get``
        (an encoding depends on the keys only, never on the store's contents).
        """
        last = self._last_keys
        if last is not None and last.source is source:
            return last
        keys = source.select(self.spec.key_columns)
        if last is not None and last.keys.height == keys.height and last.keys.equals(keys):
            return last
        groups = self.spec.key_groups_of(keys)
        batch = _KeyBatch(source, keys, self.key_codec.encode(keys, _prefix(groups)))
        self._last_keys = batch
        return batch

    def _lookup(self, batch: _KeyBatch) -> pl.DataFrame:
        """The values (and FOUND) of the batch's keys, in the batch's original order.

        Fixed-width values come back as one buffer, a missing key as a placeholder row of tag
        bytes 0xff (a stored row's tags are 0 or 1), and decode as one numpy matrix.
        """
        order, keys = batch.order, batch.in_order
        n = len(order)
        width = self.value_codec.row_width
        try:
            if width:
                raw = self.env.get_fixed(self.entries, keys.data, keys.offsets, width, 0xFF)
                matrix = np.empty((n, width), dtype=np.uint8)
                matrix[order] = np.frombuffer(raw, dtype=np.uint8).reshape(n, width)
                found = matrix[:, 0] != 0xFF
                return self.value_codec.decode_fixed(matrix, found).with_columns(
                    pl.Series(FOUND, found)
                )
            data, offsets, valid = self.env.get_var(self.entries, keys.data, keys.offsets)
        except self.driver.ValueWidthError as exc:
            raise self.value_codec._corrupt(str(exc)) from exc
        except self.driver.Error as exc:
            msg = f"lmdb store {self.spec.name!r} in {self.directory!r}: a lookup failed: {exc}"
            raise StateError(msg) from exc
        back = np.empty_like(order)
        back[order] = np.arange(n)
        found_values = Encoded.from_buffers(data, offsets).to_arrow(valid).take(pa.array(back))
        values = self.value_codec.decode(found_values)
        return values.with_columns(pl.Series(FOUND, found_values.is_valid()))

    def _encode_values(self, batch: _KeyBatch, values: pl.DataFrame) -> Encoded:
        """The encoded values in the batch's LMDB order."""
        return self.value_codec.encode(values.select(self.spec.value_columns)).take(batch.order)

    # ------------------------------------------------------------------------ KeyedStore

    def get(self, keys: pl.DataFrame) -> pl.DataFrame:
        if keys.height == 0:
            return self.spec.empty_values(0)
        return self._lookup(self._batch(keys))

    def put(self, keys: pl.DataFrame, values: pl.DataFrame) -> None:
        if keys.height == 0:
            return
        batch = self._batch(keys)
        encoded = self._encode_values(batch, values)
        self._write(
            lambda: self.env.put(
                self.entries,
                batch.in_order.data,
                batch.in_order.offsets,
                encoded.data,
                encoded.offsets,
            )
        )
        self._last_keys = None  # the get-then-put of this batch is done: its buffers go now

    def delete(self, keys: pl.DataFrame) -> None:
        if keys.height == 0:
            return
        batch = self._batch(keys)
        self._write(
            lambda: self.env.delete(self.entries, batch.in_order.data, batch.in_order.offsets)
        )
        self._last_keys = None

    def scan(self) -> Iterator[pl.DataFrame]:
        """Every entry, in key order, ``SCAN_BATCH`` at a time.

        Each batch is read in a transaction of its own, resuming after the last key given, so a
        scan never holds a reader open between batches: each key comes at most once, and a
        write made while the scan is suspended shows in the batches still to come.
        """
        for keys, values in self._scan(self.env, self.entries, b"", None):
            yield self._decode_entries(keys, values)

    @staticmethod
    def _scan(
        env: Any, db: Any, start: bytes, stop: bytes | None, limit: int = SCAN_BATCH
    ) -> Iterator[tuple[tuple[Any, Any], tuple[Any, Any]]]:
        following: bytes | None = start
        while following is not None:
            keys, values, following = env.scan(db, following, stop, limit)
            if _rows(keys[1]):
                yield keys, values

    def _decode_entries(self, keys: tuple[Any, Any], values: tuple[Any, Any]) -> pl.DataFrame:
        return pl.concat(
            [
                self.key_codec.decode(Encoded.from_buffers(*keys).to_arrow()),
                self.value_codec.decode(Encoded.from_buffers(*values).to_arrow()),
            ],
            how="horizontal",
        )

    def count(self) -> int:
        return int(self.env.count(self.entries))

    def snapshot(
        self, fs: fsspec.AbstractFileSystem, root: str, checkpoint_id: int
    ) -> list[StateFile]:
        relative = snapshot_path(checkpoint_id, self.spec.name, self.key_groups, "lmdb")
        fd, local = tempfile.mkstemp(
            prefix="snapshot-", suffix=".mdb", dir=os.path.dirname(self.directory)
        )
        try:
            try:
                self.env.copyfd(fd)
            except self.driver.Error as exc:
                msg = f"lmdb store {self.spec.name!r}: cannot copy the environment for a snapshot: {exc}"
                raise StateError(msg) from exc
            finally:
                os.close(fd)
            size, digest = upload_file(fs, local, f"{root}/{relative}")
        finally:
            os.unlink(local)
        return [
            StateFile(
                relative,
                size,
                digest,
                self.spec.name,
                (self.key_groups.start, self.key_groups.stop),
                "lmdb",
                {"entries": self.count()},
            )
        ]

    def restore(self, fs: fsspec.AbstractFileSystem, root: str, files: list[StateFile]) -> None:
        self._write(lambda: self.env.clear(self.entries))
        for state_file in overlapping(files, self.key_groups):
            if state_file.format == "lmdb":
                self._restore_lmdb(fs, root, state_file)
            elif state_file.format == "arrow":
                self._restore_arrow(fs, root, state_file)
            else:
                msg = (
                    f"lmdb store {self.spec.name!r} cannot restore {state_file.path!r} of format "
                    f"{state_file.format!r}; it reads 'lmdb' and 'arrow' snapshots"
                )
                raise StateError(msg)

    def _restore_lmdb(
        self, fs: fsspec.AbstractFileSystem, root: str, state_file: StateFile
    ) -> None:
        fd, local = tempfile.mkstemp(
            prefix="restore-", suffix=".mdb", dir=os.path.dirname(self.directory)
        )
        os.close(fd)
        try:
            download_verified(fs, root, state_file, local)
            try:
                source = self.driver.Env(local, readonly=True, subdir=False, lock=False)
            except self.driver.Error as exc:
                msg = f"state file {state_file.path!r} is not an LMDB environment: {exc}"
                raise StateError(msg) from exc
            try:
                self._copy_owned(source, state_file)
            finally:
                source.close()
        finally:
            if os.path.exists(local):
                os.unlink(local)

    def _copy_owned(self, source: Any, state_file: StateFile) -> None:
        try:
            meta = source.open_db(b"meta", create=False)
            entries = source.open_db(b"entries", create=False)
            names = [b"format", b"key_schema", b"value_schema"]
            data, offsets, valid = source.get_var(meta, *_pack(names))
        except self.driver.Error as exc:
            msg = f"state file {state_file.path!r} is not an arrowflow LMDB snapshot: {exc}"
            raise StateError(msg) from exc
        found_format, key_bytes, value_bytes = (
            value if ok else b""
            for value, ok in zip(_split(data, offsets), bytes(valid), strict=True)
        )
        key_schema = _schema_from_bytes(key_bytes)
        value_schema = _schema_from_bytes(value_bytes)
        if (
            found_format != FORMAT
            or key_schema != self.spec.key_schema
            or value_schema != self.spec.value_schema
        ):
            msg = (
                f"state file {state_file.path!r} holds {found_format!r} keys {dict(key_schema)} values "
                f"{dict(value_schema)}, but store {self.spec.name!r} is {FORMAT!r} keys "
                f"{dict(self.spec.key_schema)} values {dict(self.spec.value_schema)}"
            )
            raise StateError(msg)
        # The key-group prefix makes the owned groups one contiguous range of keys.
        start = int(self.key_groups.start).to_bytes(2, "big")
        stop = (
            int(self.key_groups.stop).to_bytes(2, "big") if self.key_groups.stop < 1 << 16 else None
        )
        for keys, values in self._scan(source, entries, start, stop, SCAN_BATCH * 4):

            def put(k: tuple[Any, Any] = keys, v: tuple[Any, Any] = values) -> None:
                self.env.put(self.entries, *k, *v)

            self._write(put)

    def _restore_arrow(
        self, fs: fsspec.AbstractFileSystem, root: str, state_file: StateFile
    ) -> None:
        frame = read_ipc_bytes(
            read_verified(fs, root, state_file), f"state file {state_file.path!r}"
        )
        frame = frame.filter(
            pl.col(KEY_GROUP).is_between(self.key_groups.start, self.key_groups.stop - 1)
        )
        frame = frame.select([*self.spec.key_columns, *self.spec.value_columns]).cast(
            pl.Schema(dict(self.spec.key_schema) | dict(self.spec.value_schema))
        )
        for part in frame.iter_slices(SCAN_BATCH * 4):
            self.put(part.select(self.spec.key_columns), part.select(self.spec.value_columns))

    def close(self) -> None:
        env, self.env = self.env, None
        if env is not None:
            env.close()
            shutil.rmtree(self.directory, ignore_errors=True)


class LmdbBackend(StateBackend):
    """State in LMDB environments on local disk; larger than memory.

    ``path``: the local directory for the environments (default: the worker's private local
    directory). ``map_size``: the initial memory-map size in bytes; it doubles whenever full,
    up to ``max_map_size`` (None: no limit but the disk). ``driver``: ``"c"`` or ``"py"``
    (see the module's docstring); None picks the C extension when it is built.
    """

    name = "lmdb"
    restores = ("lmdb", "arrow")

    def __init__(
        self,
        path: str | None = None,
        *,
        map_size: int = 64 * _MiB,
        max_map_size: int | None = None,
        driver: str | None = None,
    ) -> None:
        if driver is not None and driver not in DRIVERS:
            msg = f"LmdbBackend(driver=...) must be one of {DRIVERS} or None (the C extension when built), got {driver!r}"
            raise StateError(msg)
        if map_size < 1 << 16:
            msg = f"LmdbBackend(map_size=...) must be at least 65536 bytes, got {map_size}"
            raise StateError(msg)
        self.path = path
        self.map_size = map_size
        self.max_map_size = max_map_size
        self.driver = driver

    def open_store(self, spec: StoreSpec, key_groups: range, context: StoreContext) -> KeyedStore:
        base = self.path if self.path is not None else context.local_dir
        directory = os.path.join(
            base, "lmdb", f"w{context.worker}-{safe_component(spec.name)}-{range_name(key_groups)}"
        )
        return LmdbStore(spec, key_groups, directory, self)

    def __repr__(self) -> str:
        driver = f", driver={self.driver!r}" if self.driver else ""
        return f"LmdbBackend(path={self.path!r}, map_size={self.map_size}, max_map_size={self.max_map_size}{driver})"
