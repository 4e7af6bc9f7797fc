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
``put`` and ``delete`` are one write transaction each (``putmulti`` through a cursor), so a
batch is applied entirely or not at all. Keys are encoded and values decoded with numpy over
whole columns; the only per-row work is the ``bytes`` object per key and value that the
binding needs and its own C loop over them (``benchmarks/bench_state.py`` measures the
split). A batch is visited in the order the B-tree keeps its keys (a radix sort on their
first bytes), which halves the cost on a large store; nothing else depends on key order.
The ``put`` that follows a ``get`` of the same keys (a keyed operator's read-modify-write)
reuses the get's encoded keys, order and ``bytes`` objects. When every value column has a
fixed width, a lookup of a missing key returns a placeholder row of the same width (tag
bytes 0xff, which no stored row has), so a batch's values are one ``b"".join`` and decode
as one numpy matrix, with no Arrow array built row by row.

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
from operator import itemgetter
from typing import Any

import fsspec
import numpy as np
import polars as pl
import pyarrow as pa

from arrowflow._util import import_optional
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
CHUNK = 262_144  # keys per binding call within one transaction
_MiB = 1 << 20


def _lmdb() -> Any:
    return import_optional("lmdb", purpose="the 'lmdb' state backend")


def _schema_bytes(schema: pl.Schema) -> bytes:
    return pl.DataFrame(schema=schema).to_arrow().schema.serialize().to_pybytes()


def _schema_from_bytes(payload: bytes) -> pl.Schema:
    arrow_schema = pa.ipc.read_schema(pa.py_buffer(payload))
    return pl.from_arrow(arrow_schema.empty_table()).schema  # type: ignore[union-attr]


def _prefix(groups: np.ndarray) -> np.ndarray:
    """(n, 2) uint8: the big-endian key group of each key."""
    return groups.astype(">u2").view(np.uint8).reshape(-1, 2)


class _KeyBatch:
    """A batch's encoded keys and the permutation that visits them in LMDB's key order."""

    __slots__ = ("_lists", "encoded", "keys", "order")

    def __init__(self, keys: pl.DataFrame, encoded: Encoded, order: np.ndarray) -> None:
        self.keys = keys
        self.encoded = encoded
        self.order = order
        self._lists: list[list[bytes]] | None = None

    def key_lists(self) -> Iterator[list[bytes]]:
        """The keys in LMDB order as ``bytes``, one list per binding call (``CHUNK`` keys).

        The lists of a batch of at most one chunk are kept for the ``put`` after the ``get``;
        a larger batch makes them again, so that at most a chunk's objects live at once.
        """
        if self._lists is not None:
            yield from self._lists
            return
        n = len(self.order)
        if n <= CHUNK:
            self._lists = [self.encoded.take(self.order).to_list()]
            yield from self._lists
            return
        in_order = self.encoded.take(self.order)
        for start in range(0, n, CHUNK):
            yield in_order.slice(start, start + CHUNK).to_list()

    def release(self) -> None:
        self._lists = None


class LmdbStore(KeyedStore):
    def __init__(self, spec: StoreSpec, key_groups_owned: range, directory: str, backend: LmdbBackend) -> None:
        super().__init__(spec, key_groups_owned)
        self.lmdb = _lmdb()
        self.directory = directory
        self.backend = backend
        what = f"lmdb store {spec.name!r}"
        self.key_codec = RowCodec(spec.key_schema, what=f"{what} keys", canonical=True, prefix_width=2)
        self.value_codec = RowCodec(spec.value_schema, what=f"{what} values", canonical=False)
        if spec.max_parallelism > 1 << 16:
            msg = f"{what}: max_parallelism {spec.max_parallelism} exceeds the 65536 key groups the lmdb key prefix holds"
            raise StateError(msg)
        self.map_size = backend.map_size
        self._last_keys: _KeyBatch | None = None
        width = self.value_codec.row_width
        # Fixed-width values are looked up with a placeholder for a missing key, so that a
        # batch's values are one buffer: tag bytes 0xff (a stored row's tags are 0 or 1).
        self._missing = b"\xff" * width if width else None
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
            env = self.lmdb.open(
                directory, map_size=map_size, max_dbs=2, sync=False, metasync=False,
                readahead=False, writemap=True, meminit=False, max_spare_txns=2,
            )
        except (OSError, self.lmdb.Error) as exc:
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

    def _write_meta(self, txn: Any) -> None:
        txn.put(b"format", FORMAT, db=self.meta)
        txn.put(b"key_schema", _schema_bytes(self.spec.key_schema), db=self.meta)
        txn.put(b"value_schema", _schema_bytes(self.spec.value_schema), db=self.meta)
        txn.put(b"key_groups", f"{self.key_groups.start},{self.key_groups.stop}".encode(), db=self.meta)
        txn.put(b"max_parallelism", str(self.spec.max_parallelism).encode(), db=self.meta)

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
        except self.lmdb.Error as exc:
            msg = f"lmdb store {self.spec.name!r}: cannot grow its map to {new_size} bytes: {exc}"
            raise StateError(msg) from exc
        self.map_size = new_size

    def _write(self, apply: Callable[[Any], None]) -> None:
        """Run ``apply`` in one write transaction; grow the map and retry while it is full."""
        while True:
            try:
                with self.env.begin(write=True, db=self.entries) as txn:
                    apply(txn)
                return
            except self.lmdb.MapFullError:
                self._grow()
            except self.lmdb.Error as exc:
                msg = (
                    f"lmdb store {self.spec.name!r} in {self.directory!r}: the write failed and was "
                    f"rolled back, the store is unchanged: {exc}"
                )
                raise StateError(msg) from exc

    # ------------------------------------------------------------------------ encoding

    def _batch(self, keys: pl.DataFrame) -> _KeyBatch:
        """The batch's encoded keys, in the order LMDB stores them.

        A keyed operator puts exactly the keys it just got; the batch is kept from the ``get``
        (an encoding depends on the keys only, never on the store's contents), with the
        ``bytes`` objects the binding was given when the batch is at most one chunk.
        """
        keys = keys.select(self.spec.key_columns)
        last = self._last_keys
        if last is not None and (last.keys is keys or (last.keys.height == keys.height and last.keys.equals(keys))):
            return last
        groups = self.spec.key_groups_of(keys)
        encoded = self.key_codec.encode(keys, _prefix(groups))
        batch = _KeyBatch(keys, encoded, encoded.locality_order())
        self._last_keys = batch
        return batch

    def _lookup(self, batch: _KeyBatch) -> list[Any]:
        """The binding's lookups, in LMDB order, one part per chunk of keys.

        Fixed-width values: each part is the concatenated values (``bytes``), a missing key
        giving ``missing`` (tag bytes 0xff, which no stored row has). Otherwise each part is
        an Arrow binary array with nulls for missing keys.
        """
        parts: list[Any] = []
        fixed = self._missing is not None
        with self.env.begin(db=self.entries) as txn:
            lookup = txn.cursor().get
            for chunk in batch.key_lists():
                if fixed:
                    parts.append(b"".join(map(lookup, chunk, repeat(self._missing))))
                else:
                    parts.append(pa.array(map(lookup, chunk), type=pa.binary(), size=len(chunk)))
        return parts

    def _decode_found(self, batch: _KeyBatch, parts: list[Any]) -> pl.DataFrame:
        """The values (and FOUND) in the batch's original order, from :meth:`_lookup`'s parts."""
        order = batch.order
        n = len(order)
        if self._missing is not None:
            width = len(self._missing)
            raw = parts[0] if len(parts) == 1 else b"".join(parts)
            if len(raw) != n * width:
                detail = f"expected values of {width} bytes"
                raise self.value_codec._corrupt(detail)
            matrix = np.empty((n, width), dtype=np.uint8)
            matrix[order] = np.frombuffer(raw, dtype=np.uint8).reshape(n, width)
            found = matrix[:, 0] != 0xFF
            values = self.value_codec.decode_fixed(matrix, found)
            return values.with_columns(pl.Series(FOUND, found))
        back = np.empty_like(order)
        back[order] = np.arange(n)
        found_values = pa.chunked_array(parts).combine_chunks().take(pa.array(back))
        values = self.value_codec.decode(found_values)
        return values.with_columns(pl.Series(FOUND, found_values.is_valid()))

    def _value_lists(self, batch: _KeyBatch, values: pl.DataFrame) -> Iterator[list[bytes]]:
        """The encoded values, one ``bytes`` each, in LMDB order, chunk by chunk."""
        values = values.select(self.spec.value_columns)
        if self._missing is not None:
            width = len(self._missing)
            ordered = self.value_codec.encode(values).data.reshape(-1, width)[batch.order]
            rows = ordered.reshape(-1).view(f"V{width}")
            for start in range(0, len(rows), CHUNK):
                yield rows[start : start + CHUNK].tolist()
            return
        ordered_values = values[batch.order]
        for start in range(0, len(batch.order), CHUNK):
            yield self.value_codec.encode(ordered_values.slice(start, CHUNK)).to_list()

    # ------------------------------------------------------------------------ KeyedStore

    def get(self, keys: pl.DataFrame) -> pl.DataFrame:
        if keys.height == 0:
            return self.spec.empty_values(0)
        batch = self._batch(keys)
        return self._decode_found(batch, self._lookup(batch))

    def put(self, keys: pl.DataFrame, values: pl.DataFrame) -> None:
        if keys.height == 0:
            return
        batch = self._batch(keys)

        def apply(txn: Any) -> None:
            putmulti = txn.cursor().putmulti
            for chunk_keys, chunk_values in zip(batch.key_lists(), self._value_lists(batch, values), strict=True):
                putmulti(zip(chunk_keys, chunk_values, strict=True))

        self._write(apply)
        batch.release()  # the get-then-put of this batch is done: its objects go now

    def delete(self, keys: pl.DataFrame) -> None:
        if keys.height == 0:
            return
        batch = self._batch(keys)

        def apply(txn: Any) -> None:
            for chunk in batch.key_lists():
                list(map(txn.delete, chunk))

        self._write(apply)
        batch.release()

    def scan(self) -> Iterator[pl.DataFrame]:
        with self.env.begin(db=self.entries) as txn:
            entries = iter(txn.cursor())
            while chunk := list(islice(entries, SCAN_BATCH)):
                yield self._decode_entries(chunk)

    def _decode_entries(self, chunk: list[tuple[bytes, bytes]]) -> pl.DataFrame:
        keys = self.key_codec.decode(pa.array(list(map(itemgetter(0), chunk)), type=pa.binary()))
        values = self.value_codec.decode(pa.array(list(map(itemgetter(1), chunk)), type=pa.binary()))
        return pl.concat([keys, values], how="horizontal")

    def count(self) -> int:
        with self.env.begin() as txn:
            return int(txn.stat(self.entries)["entries"])

    def snapshot(self, fs: fsspec.AbstractFileSystem, root: str, checkpoint_id: int) -> list[StateFile]:
        relative = snapshot_path(checkpoint_id, self.spec.name, self.key_groups, "lmdb")
        fd, local = tempfile.mkstemp(prefix="snapshot-", suffix=".mdb", dir=os.path.dirname(self.directory))
        try:
            try:
                self.env.copyfd(fd, compact=True)
            except self.lmdb.Error as exc:
                msg = f"lmdb store {self.spec.name!r}: cannot copy the environment for a snapshot: {exc}"
                raise StateError(msg) from exc
            finally:
                os.close(fd)
            size, digest = upload_file(fs, local, f"{root}/{relative}")
        finally:
            os.unlink(local)
        return [StateFile(relative, size, digest, self.spec.name,
                          (self.key_groups.start, self.key_groups.stop), "lmdb",
                          {"entries": self.count()})]

    def restore(self, fs: fsspec.AbstractFileSystem, root: str, files: list[StateFile]) -> None:
        self._write(lambda txn: txn.drop(self.entries, delete=False))
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

    def _restore_lmdb(self, fs: fsspec.AbstractFileSystem, root: str, state_file: StateFile) -> None:
        fd, local = tempfile.mkstemp(prefix="restore-", suffix=".mdb", dir=os.path.dirname(self.directory))
        os.close(fd)
        try:
            download_verified(fs, root, state_file, local)
            try:
                source = self.lmdb.open(local, subdir=False, readonly=True, lock=False, max_dbs=2, readahead=False)
            except self.lmdb.Error as exc:
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
        with source.begin() as txn:
            try:
                meta = source.open_db(b"meta", txn=txn, create=False)
                entries = source.open_db(b"entries", txn=txn, create=False)
            except self.lmdb.Error as exc:
                msg = f"state file {state_file.path!r} is not an arrowflow LMDB snapshot: {exc}"
                raise StateError(msg) from exc
            found_format = txn.get(b"format", db=meta)
            key_schema = _schema_from_bytes(txn.get(b"key_schema", db=meta) or b"")
            value_schema = _schema_from_bytes(txn.get(b"value_schema", db=meta) or b"")
            if found_format != FORMAT or key_schema != self.spec.key_schema or value_schema != self.spec.value_schema:
                msg = (
                    f"state file {state_file.path!r} holds {found_format!r} keys {dict(key_schema)} values "
                    f"{dict(value_schema)}, but store {self.spec.name!r} is {FORMAT!r} keys "
                    f"{dict(self.spec.key_schema)} values {dict(self.spec.value_schema)}"
                )
                raise StateError(msg)
            start = int(self.key_groups.start).to_bytes(2, "big")
            stop = int(self.key_groups.stop).to_bytes(2, "big")
            cursor = txn.cursor(db=entries)
            if not cursor.set_range(start):
                return
            # The key-group prefix makes the owned groups one contiguous range of keys.
            entries_iter = iter(cursor)
            while chunk := list(islice(entries_iter, SCAN_BATCH)):
                last = chunk[-1][0][:2] >= stop
                if last:
                    chunk = [entry for entry in chunk if entry[0][:2] < stop]
                self._write(lambda wtxn, c=chunk: wtxn.cursor().putmulti(c))
                if last:
                    return

    def _restore_arrow(self, fs: fsspec.AbstractFileSystem, root: str, state_file: StateFile) -> None:
        frame = read_ipc_bytes(read_verified(fs, root, state_file))
        frame = frame.filter(pl.col(KEY_GROUP).is_between(self.key_groups.start, self.key_groups.stop - 1))
        frame = frame.select([*self.spec.key_columns, *self.spec.value_columns]).cast(
            dict(self.spec.key_schema) | dict(self.spec.value_schema))
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
    up to ``max_map_size`` (None: no limit but the disk).
    """

    name = "lmdb"

    def __init__(self, path: str | None = None, *, map_size: int = 64 * _MiB, max_map_size: int | None = None) -> None:
        if map_size < 1 << 16:
            msg = f"LmdbBackend(map_size=...) must be at least 65536 bytes, got {map_size}"
            raise StateError(msg)
        self.path = path
        self.map_size = map_size
        self.max_map_size = max_map_size

    def open_store(self, spec: StoreSpec, key_groups: range, context: StoreContext) -> KeyedStore:
        base = self.path if self.path is not None else context.local_dir
        directory = os.path.join(
            base, "lmdb", f"w{context.worker}-{safe_component(spec.name)}-{range_name(key_groups)}")
        return LmdbStore(spec, key_groups, directory, self)

    def __repr__(self) -> str:
        return f"LmdbBackend(path={self.path!r}, map_size={self.map_size}, max_map_size={self.max_map_size})"
