"""The one registry of plug-ins: state backends, source and sink formats, runners.

Each plug-in is known by a *group* and a *name* and points at ``"module:object"``; the module is
imported on first use, so naming a plug-in costs nothing until a flow uses it (the model is
fsspec's ``registry.py``). The engine reaches ``arrowflow.io`` and ``arrowflow.backends`` only
through here; an import-linter contract in CI holds that.

Groups
------
``state``
    State backends: a :class:`arrowflow.state.StateBackend` class, called with the backend's
    options.
``source``
    Source formats (``"parquet"``, ``"csv"``, ...): a callable that builds a
    :class:`arrowflow.sources.Source`; ``flow.read(name, *args, **options)`` calls it with
    the arguments after the name (``Flow.read_parquet`` and the other readers do the same).
``sink``
    Sink formats: a callable that builds a :class:`arrowflow.sinks.Sink`;
    ``stream.write(name, *args, **options)`` calls it (as ``Stream.write_parquet`` and the
    other writers do).
``runner``
    Runners (``"inprocess"``, ``"pool"``): a :class:`arrowflow.runners.Runner` class.

Third parties register in two ways:

- at run time, ``arrowflow.registry.register("sink", "delta", "mypkg.delta:DeltaSink")``;
- from their package metadata, with an entry point in the group ``arrowflow.<group>``
  (``arrowflow.state``, ``arrowflow.source``, ``arrowflow.sink``, ``arrowflow.runner``), e.g. in
  ``pyproject.toml``::

      [project.entry-points."arrowflow.sink"]
      delta = "mypkg.delta:DeltaSink"

  Entry points are read once, on the first lookup of a name the built-in table does not have;
  a built-in name is never replaced by an entry point. When an entry point's module cannot
  be imported, the error says to install its distribution again.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from arrowflow._foundation.deps import import_object
from arrowflow.errors import PlanError

__all__ = ["GROUPS", "Entry", "available", "entry", "load", "register"]

GROUPS = ("state", "source", "sink", "runner")


@dataclass(frozen=True)
class Entry:
    """One registered plug-in: where it lives and what installs its dependencies."""

    group: str
    name: str
    target: str | Any
    """``"module:object"`` (imported on first use) or the object itself."""
    extra: str | None = None
    """The pip requirement that brings what the module imports, for the error message."""
    origin: str = "built-in"
    """``"built-in"``, ``"register()"`` or ``"entry point <dist>"``."""


# Built-in plug-ins. A new one is one line here (or one entry point in a third-party package).
_BUILTIN: tuple[Entry, ...] = (
    Entry("source", "parquet", "arrowflow.io.formats:read_parquet"),
    Entry("source", "csv", "arrowflow.io.formats:read_csv"),
    Entry("source", "ndjson", "arrowflow.io.formats:read_ndjson"),
    Entry("source", "ipc", "arrowflow.io.formats:read_ipc"),
    Entry("source", "tail", "arrowflow.io.stream:TailSource"),
    Entry("source", "watch", "arrowflow.io.stream:WatchSource"),
    Entry("source", "polars", "arrowflow.io.memory:MemorySource.from_polars"),
    Entry("source", "arrow", "arrowflow.io.memory:MemorySource.from_arrow"),
    Entry("sink", "parquet", "arrowflow.io.formats:write_parquet"),
    Entry("sink", "csv", "arrowflow.io.formats:write_csv"),
    Entry("sink", "ndjson", "arrowflow.io.formats:write_ndjson"),
    Entry("sink", "ipc", "arrowflow.io.formats:write_ipc"),
    Entry("sink", "database", "arrowflow.io.database:DatabaseSink", extra="arrowflow[sql]"),
    # what stream.collect() gathers its rows with, in the coordinator
    Entry("sink", "collect", "arrowflow.io.memory:CollectSink"),
    Entry("state", "memory", "arrowflow.backends.memory:MemoryBackend"),
    Entry("state", "arrow", "arrowflow.backends.arrow_ipc:ArrowBackend"),
    Entry("state", "lmdb", "arrowflow.backends.lmdb:LmdbBackend"),
    Entry("state", "sql", "arrowflow.backends.sql:SqlBackend", extra="arrowflow[sql]"),
    Entry("runner", "inprocess", "arrowflow._runtime.inprocess:InProcessRunner"),
    Entry("runner", "pool", "arrowflow._runtime.pool:PoolRunner"),
)

_lock = threading.Lock()
_table: dict[tuple[str, str], Entry] = {}
_loaded: dict[tuple[str, str], Any] = {}
_entry_points_read: set[str] = set()


def _check_group(group: str) -> None:
    if group not in GROUPS:
        msg = f"unknown plug-in group {group!r}; expected one of {list(GROUPS)}"
        raise PlanError(msg)


def register(
    group: str, name: str, target: str | Any, *, extra: str | None = None, clobber: bool = False
) -> None:
    """Register a plug-in under ``group`` and ``name``.

    Parameters
    ----------
    group
        One of :data:`GROUPS`.
    name
        The name users write (``state="mystore"``, ``format="delta"``).
    target
        ``"module:object"``, imported on first use, or the object itself.
    extra
        The pip requirement that installs the plug-in's dependencies; named in the error when
        its import fails.
    clobber
        Replace an existing registration of the same name; without it that is an error.
    """
    _check_group(group)
    if not isinstance(name, str) or not name:
        msg = f"a plug-in name must be a non-empty string, got {name!r}"
        raise PlanError(msg)
    if isinstance(target, str) and target.count(":") != 1:
        msg = f"plug-in target must be 'module:object', got {target!r}"
        raise PlanError(msg)
    with _lock:
        _ensure_builtins()
        key = (group, name)
        if key in _table and not clobber:
            msg = (
                f"a {group} plug-in named {name!r} is already registered "
                f"({_table[key].origin}: {_table[key].target!r}); pass clobber=True to replace it"
            )
            raise PlanError(msg)
        _table[key] = Entry(group, name, target, extra, origin="register()")
        _loaded.pop(key, None)


def _ensure_builtins() -> None:
    if not _table:
        for item in _BUILTIN:
            _table[(item.group, item.name)] = item


def _read_entry_points(group: str) -> None:
    if group in _entry_points_read:
        return
    _entry_points_read.add(group)
    for point in metadata.entry_points(group=f"arrowflow.{group}"):
        key = (group, point.name)
        if key in _table:
            continue  # a built-in or an explicit register() wins over package metadata
        dist = getattr(point, "dist", None)
        origin = f"entry point {dist.name}" if dist is not None else "entry point"
        # the distribution that declares the entry point is what installs its dependencies
        extra = dist.name if dist is not None else None
        _table[key] = Entry(group, point.name, point.value, extra, origin=origin)


def entry(group: str, name: str) -> Entry:
    """The registration of ``name`` in ``group``, without importing it."""
    _check_group(group)
    with _lock:
        _ensure_builtins()
        found = _table.get((group, name))
        if found is None:
            _read_entry_points(group)
            found = _table.get((group, name))
    if found is None:
        msg = f"no {group} plug-in named {name!r}; registered: {available(group)}"
        raise PlanError(msg)
    return found


def load(group: str, name: str) -> Any:
    """The object registered as ``name`` in ``group``, importing its module on first use."""
    item = entry(group, name)
    key = (group, name)
    with _lock:
        if key in _loaded:
            return _loaded[key]
    target = item.target
    if isinstance(target, str):
        module_name, _, attr = target.partition(":")
        try:
            target = import_object(target)
        except ImportError as exc:
            hint = f"; run: pip install '{item.extra}'" if item.extra else ""
            msg = f"the {group} plug-in {name!r} ({target}) cannot be imported: {exc}{hint}"
            raise ImportError(msg) from exc
        except AttributeError as exc:
            msg = f"the {group} plug-in {name!r}: module {module_name!r} has no {attr!r}"
            raise ImportError(msg) from exc
    with _lock:
        _loaded[key] = target
    return target


def available(group: str) -> list[str]:
    """Names registered in ``group`` (built-in, registered and from entry points), sorted."""
    _check_group(group)
    with _lock:
        _ensure_builtins()
        _read_entry_points(group)
        return sorted(name for g, name in _table if g == group)
