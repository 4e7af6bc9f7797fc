"""The keyed-state interface: what a state backend in ``arrowflow.backends`` implements.

A :class:`StateBackend` is a picklable description chosen with ``flow.run(state=...)``.
In each worker the runtime calls :meth:`StateBackend.open_store` once per (stateful
operator, store name) with the key groups that worker owns; the returned
:class:`KeyedStore` is used by that worker's thread only.

Access is vectorized: every method takes or returns whole columns. Keys are a
``pl.DataFrame`` of the key columns (Arrow memory underneath); values are a
``pl.DataFrame`` with the store's value columns. No method is ever called per key.

Key groups: a key belongs to group ``key_groups(keys, max_parallelism)``
(:mod:`arrowflow._foundation.keygroups`). Snapshots record the group of every key, so
:meth:`KeyedStore.restore` can load a snapshot taken with a different split of groups
across workers (rescaling): it keeps exactly the keys whose group it owns.

Snapshot files are written through fsspec under the checkpoint root; their paths in
:class:`StateFile` are relative to that root, so an incremental backend may point at a file
an earlier checkpoint wrote (under ``shared/``) instead of writing it again.
"""

from __future__ import annotations

import abc
import hashlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import fsspec
import polars as pl

import arrowflow.registry as registry
from arrowflow._foundation.keygroups import DEFAULT_MAX_PARALLELISM, key_groups
from arrowflow.errors import StateError

#: Name of the Boolean column :meth:`KeyedStore.get` adds: True where the key was found.
FOUND = "__found"
#: Name of the key-group column in snapshot files.
KEY_GROUP = "__key_group"


@dataclass(frozen=True)
class StoreSpec:
    """What a store holds.

    ``name`` is unique per worker: ``<operator id>`` or ``<operator id>/<state name>`` for
    operators with several states.
    """

    name: str
    key_schema: pl.Schema
    value_schema: pl.Schema
    max_parallelism: int = DEFAULT_MAX_PARALLELISM
    ttl_ms: int | None = None
    #: The key columns that decide a key's group, when not all of them: a window's store is
    #: keyed by (user keys, window_start) but routed, like its input, by the user keys alone.
    group_columns: tuple[str, ...] = ()

    @property
    def key_columns(self) -> list[str]:
        """The names of the key columns, in order."""
        return list(self.key_schema.names())

    def key_groups_of(self, keys: pl.DataFrame) -> Any:
        """The key group of every row of ``keys`` (a numpy array), per :attr:`group_columns`."""
        return key_groups(
            keys.select(list(self.group_columns) or self.key_columns), self.max_parallelism
        )

    @property
    def value_columns(self) -> list[str]:
        """The names of the value columns, in order."""
        return list(self.value_schema.names())

    def empty_values(self, height: int) -> pl.DataFrame:
        """All-null values for ``height`` keys, with ``FOUND`` False."""
        found = pl.repeat(False, height, dtype=pl.Boolean, eager=True).alias(FOUND)
        if not self.value_schema:
            return pl.DataFrame([found])
        return pl.DataFrame(schema=self.value_schema).clear(height).hstack([found])


@dataclass(frozen=True)
class StateFile:
    """One file of a snapshot, as recorded in the checkpoint manifest."""

    path: str  # relative to the checkpoint root
    size: int
    sha256: str
    store: str  # StoreSpec.name
    key_groups: tuple[int, int]  # [start, stop) of the groups whose keys the file may hold
    format: str  # "arrow", "lmdb", "sql", ...
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The entry as a manifest lists it (JSON-able)."""
        data = asdict(self)
        data["key_groups"] = list(self.key_groups)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StateFile:
        """The entry from a manifest's JSON (the inverse of :meth:`to_json`)."""
        data = dict(data)
        data["key_groups"] = tuple(data["key_groups"])
        return cls(**data)


@dataclass(frozen=True)
class StoreContext:
    """Where a worker's store may keep local files, and who it belongs to."""

    local_dir: str  # a private directory on local disk, created by the runtime
    worker: int
    parallelism: int


class KeyedStore(abc.ABC):
    """One operator's keyed state for one worker's key groups."""

    def __init__(self, spec: StoreSpec, key_groups: range) -> None:
        self.spec = spec
        self.key_groups = key_groups

    @abc.abstractmethod
    def get(self, keys: pl.DataFrame) -> pl.DataFrame:
        """Values for each row of ``keys``, in the same order.

        The value columns (nulls where a key is missing) plus the Boolean column :data:`FOUND`.
        """

    @abc.abstractmethod
    def put(self, keys: pl.DataFrame, values: pl.DataFrame) -> None:
        """Insert or replace. ``keys`` rows are unique; ``values`` has the same height."""

    @abc.abstractmethod
    def delete(self, keys: pl.DataFrame) -> None:
        """Remove keys; keys that are absent are ignored."""

    @abc.abstractmethod
    def scan(self) -> Iterator[pl.DataFrame]:
        """Every entry as batches of key columns followed by value columns, in no set order."""

    @abc.abstractmethod
    def count(self) -> int:
        """Number of keys held."""

    @abc.abstractmethod
    def snapshot(
        self, fs: fsspec.AbstractFileSystem, root: str, checkpoint_id: int
    ) -> list[StateFile]:
        """Write a consistent copy of the store under ``root`` and describe the files.

        Called between batches (never while a ``put`` runs). The store stays usable and
        unchanged by the call.
        """

    @abc.abstractmethod
    def restore(self, fs: fsspec.AbstractFileSystem, root: str, files: list[StateFile]) -> None:
        """Replace the contents with the entries of ``files`` whose key group this store owns.

        ``files`` may come from a snapshot taken with another key-group split (rescaling)
        and by another backend of the same format family only.
        """

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources. Called once; nothing is called after it."""


class StateBackend(abc.ABC):
    """A picklable description of where keyed state lives."""

    name: str = "backend"
    #: The state-file formats (:attr:`StateFile.format`) its stores restore, checked against a
    #: checkpoint before a run restores it, so nothing (no sink rollback) happens first. None:
    #: not declared, the stores' ``restore`` refuses what it cannot read.
    restores: tuple[str, ...] | None = None

    @abc.abstractmethod
    def open_store(self, spec: StoreSpec, key_groups: range, context: StoreContext) -> KeyedStore:
        """Called in a worker process, once per store, before any batch is processed."""


# ---------------------------------------------------------------- helpers for backends


def join_on_keys(
    left: pl.DataFrame, right: pl.DataFrame, keys: list[str], how: str, **options: Any
) -> pl.DataFrame:
    """``left.join(right, on=keys, how=how, nulls_equal=True)`` where a NaN key matches NaN.

    polars' hash join does not reliably match NaN with NaN (a one-row probe misses it, and so
    does a two-row one built by ``concat``). When a float key column of the smaller side holds
    a NaN (the only case where NaN keys can meet), float keys are joined as (value with NaN as
    0.0, is NaN) instead; otherwise this is the plain join.
    """
    small = left if left.height <= right.height else right
    floats = [k for k in keys if small.schema[k].is_float() and small.get_column(k).is_nan().any()]
    if not floats:
        return left.join(right, on=keys, how=how, nulls_equal=True, **options)  # type: ignore[arg-type]

    def joinable(frame: pl.DataFrame) -> pl.DataFrame:
        return frame.with_columns(
            *(pl.col(k).fill_nan(0.0).alias(f"__nan_free.{k}") for k in floats),
            *(pl.col(k).is_nan().alias(f"__is_nan.{k}") for k in floats),
        )

    on = [
        *(k for k in keys if k not in floats),
        *(f"__nan_free.{k}" for k in floats),
        *(f"__is_nan.{k}" for k in floats),
    ]
    joined = joinable(left).join(
        joinable(right).drop(floats),
        on=on,
        how=how,  # type: ignore[arg-type]
        nulls_equal=True,
        **options,
    )
    return joined.drop([c for c in joined.columns if c.startswith(("__nan_free.", "__is_nan."))])


def checked_write(fs: fsspec.AbstractFileSystem, path: str, payload: bytes) -> tuple[int, str]:
    """Write ``payload`` to ``path`` (creating parents) and return (size, sha256 hex)."""
    parent = path.rsplit("/", 1)[0]
    try:
        fs.makedirs(parent, exist_ok=True)
        with fs.open(path, "wb") as handle:
            handle.write(payload)
    except OSError as exc:
        msg = f"cannot write state snapshot file {path!r}: {exc}"
        raise StateError(msg) from exc
    return len(payload), hashlib.sha256(payload).hexdigest()


#: files :func:`checked_write_many` uploads at once to a remote file system (each thread waits
#: on the network with the GIL released)
WRITE_THREADS = 8


def checked_write_many(
    fs: fsspec.AbstractFileSystem, files: list[tuple[str, bytes]]
) -> list[tuple[int, str]]:
    """:func:`checked_write` for each ``(path, payload)``, several at a time; results in order.

    A snapshot of many small files (the ``arrow`` backend writes one per changed key group)
    costs one round trip per file on object storage and a directory and file create per file
    locally; writing them from a few threads overlaps the waits on remote storage (128 files
    to a local moto S3: 2.4 s one by one, 1.55 s from 8 threads); on local disk they are
    written one by one (threads measured no faster there). An error is a :class:`StateError`;
    from the threads, the first in ``files`` order is raised once every write has finished,
    so no write is left running.
    """
    from fsspec.implementations.local import LocalFileSystem

    if len(files) < 2 or isinstance(fs, LocalFileSystem):
        return [checked_write(fs, path, payload) for path, payload in files]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(WRITE_THREADS, len(files))) as pool:
        futures = [pool.submit(checked_write, fs, path, payload) for path, payload in files]
    return [future.result() for future in futures]


def ipc_bytes(frame: pl.DataFrame) -> bytes:
    """Serialize a frame as one Arrow IPC file (uncompressed, readable by any Arrow tool).

    Written by pyarrow's IPC writer from the frame's Arrow table (zero-copy): a quarter of the
    cost of ``DataFrame.write_ipc`` per call on small frames, which matters for the ``arrow``
    backend writing one file per changed key group (128 frames a checkpoint when every group
    changed). polars reads the file back to the same dtypes (categoricals and enums included).
    """
    import pyarrow as pa

    table = frame.to_arrow()
    sink = pa.BufferOutputStream()
    # a chunked categorical column has a dictionary per chunk; the file format holds one
    options = pa.ipc.IpcWriteOptions(unify_dictionaries=True)
    with pa.ipc.new_file(sink, table.schema, options=options) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def read_ipc_bytes(payload: bytes, what: str = "a state snapshot file") -> pl.DataFrame:
    """A frame from one Arrow IPC file.

    A StateError when ``payload`` is none (its checksum matched a manifest that a crafted or
    buggy writer may have made).
    """
    import io as _stdio

    try:
        return pl.read_ipc(_stdio.BytesIO(payload))
    except (OSError, pl.exceptions.PolarsError) as exc:
        msg = (
            f"{what} is not a readable Arrow IPC file ({type(exc).__name__}: {str(exc).strip()[:200]}); "
            f"the checkpoint is damaged: restore an older one, or restore=None to start over"
        )
        raise StateError(msg) from None


def read_verified(fs: fsspec.AbstractFileSystem, root: str, state_file: StateFile) -> bytes:
    """Read a snapshot file and check its size and checksum against the manifest."""
    path = f"{root}/{state_file.path}"
    try:
        with fs.open(path, "rb") as handle:
            payload = handle.read()
    except (OSError, FileNotFoundError) as exc:
        msg = f"state file {path!r} of store {state_file.store!r} cannot be read: {exc}"
        raise StateError(msg) from exc
    digest = hashlib.sha256(payload).hexdigest()
    if len(payload) != state_file.size or digest != state_file.sha256:
        msg = (
            f"state file {path!r} does not match its manifest: expected {state_file.size} bytes "
            f"sha256 {state_file.sha256[:12]}…, found {len(payload)} bytes sha256 {digest[:12]}…"
        )
        raise StateError(msg)
    return payload


def resolve_backend(state: str | StateBackend | None) -> StateBackend:
    """A state backend object from a name, a database URL or an object.

    A name is looked up in :mod:`arrowflow.registry` (group ``state``): the built-in
    ``"memory"``, ``"arrow"``, ``"lmdb"`` and ``"sql"``, and those a plug-in registered; its
    module is imported on first use and its class is called without arguments. A
    ``postgresql://``, ``postgres://`` or ``sqlite://`` URL is the ``sql`` backend on that
    database.

    Parameters
    ----------
    state
        A backend name, a database URL, a :class:`StateBackend` (returned as it is) or
        ``None`` (``"memory"``).

    Returns
    -------
    StateBackend
        The backend.

    Raises
    ------
    StateError
        No backend has that name (the message lists those registered), its module cannot
        be imported (the message says what to install), or it is not a StateBackend.
    """
    if state is None:
        state = "memory"
    if isinstance(state, StateBackend):
        return state
    if not isinstance(state, str):
        msg = f"state= expects a backend name or a StateBackend object, got {type(state).__name__}"
        raise StateError(msg)
    name = state
    options: dict[str, Any] = {}
    if state.startswith(("postgresql://", "postgres://", "sqlite://")):
        name, options = "sql", {"url": state}
    names = registry.available("state")
    if name not in names:
        msg = (
            f"unknown state backend {state!r}; expected one of {names}, a "
            f"'postgresql://' or 'sqlite://' URL, or a StateBackend object"
        )
        raise StateError(msg)
    entry = registry.entry("state", name)
    try:
        backend_class = registry.load("state", name)
    except ImportError as exc:
        cause = exc.__cause__ if isinstance(exc.__cause__, ImportError) else exc
        hint = f"; run: pip install '{entry.extra}'" if entry.extra else ""
        msg = f"state backend {name!r} cannot be loaded: {cause}{hint}"
        raise StateError(msg) from exc
    backend = backend_class(**options)
    if not isinstance(backend, StateBackend):
        msg = (
            f"state backend {name!r} ({entry.target}, {entry.origin}) made a "
            f"{type(backend).__name__}, not an arrowflow.state.StateBackend"
        )
        raise StateError(msg)
    return backend
