"""Small helpers shared by the engine and its plug-ins: durations, optional imports."""

from __future__ import annotations

import contextlib
import importlib
import os
import re
from datetime import timedelta
from types import ModuleType

import polars as pl

from arrowflow.errors import PlanError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(us|ms|s|m|h|d)\s*$")
_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0, "d": 86_400_000.0}

# Optional dependency -> the pip extra that installs it.
_EXTRAS = {
    "adbc_driver_manager": "arrowflow[sql]",
    "adbc_driver_sqlite": "arrowflow[sql]",
    "adbc_driver_postgresql": "arrowflow[sql]",
    "s3fs": "arrowflow[s3]",
    "lmdb": "lmdb",
}


def duration_ms(value: str | int | float | timedelta, *, what: str = "duration") -> int:
    """Parse ``"200ms"``, ``"10s"``, ``"5m"``, ``"1h"`` or a timedelta into whole milliseconds.

    >>> duration_ms("1.5s"), duration_ms("5m"), duration_ms(timedelta(seconds=2))
    (1500, 300000, 2000)
    """
    if isinstance(value, timedelta):
        if value < timedelta(0):
            msg = f"{what}: expected a duration of zero or more, got the negative {value!r}"
            raise PlanError(msg)
        return round(value.total_seconds() * 1000)
    if isinstance(value, bool):
        msg = f"{what}: expected a string like '10s' or a timedelta, got {value!r}"
        raise PlanError(msg)
    if isinstance(value, int | float):
        msg = (
            f"{what}: a bare number {value!r} is ambiguous; write it with a unit, "
            f"e.g. '{value}s' or '{value}ms'"
        )
        raise PlanError(msg)
    match = _DURATION.match(str(value))
    if not match:
        msg = (
            f"{what}: cannot read {value!r} as a duration; expected a number and a unit "
            f"(us, ms, s, m, h, d), e.g. '200ms', '10s', '5m'"
        )
        raise PlanError(msg)
    amount, unit = match.groups()
    return round(float(amount) * _UNIT_MS[unit])


def import_optional(module: str, *, purpose: str) -> ModuleType:
    """Import an optional dependency, or fail saying which ``pip install`` brings it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        extra = _EXTRAS.get(top, top.replace("_", "-"))
        msg = f"{purpose} needs the package {top!r}, which is not installed; run: pip install '{extra}'"
        raise ImportError(msg) from exc


def frame_to_ipc(frames: pl.DataFrame | list[pl.DataFrame], *, last: int | None = None) -> bytes:
    """Frames (of one schema) as one Arrow IPC stream, for a pipe between processes; with
    ``last``, only their last ``last`` rows.

    Not ``pickle`` (polars' own serializer), nor ``pl.concat``: those run on polars' thread
    pool while this thread holds the GIL, and a frame that maps a shared-memory ring holds
    buffers whose release needs the GIL — a pool thread dropping one there deadlocks the
    process. pyarrow does all of it in the calling thread.
    """
    import pyarrow as pa

    tables = [f.to_arrow() for f in ([frames] if isinstance(frames, pl.DataFrame) else frames)]
    table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    if last is not None and table.num_rows > last:
        table = table.slice(table.num_rows - last)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def frame_from_ipc(payload: bytes) -> pl.DataFrame:
    import pyarrow as pa

    table = pa.ipc.open_stream(pa.py_buffer(payload)).read_all()
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    return frame


def open_sqlite(driver: ModuleType, path: str, pragmas: tuple[str, ...]) -> object:
    """An ADBC SQLite connection (``driver``: ``adbc_driver_sqlite.dbapi``; autocommit) to
    ``path`` with ``pragmas`` applied, parent
    folders created. ``busy_timeout`` is applied before the others: switching to WAL and the
    first reads take locks that another process opening the same file may hold at that
    moment, and without the timeout SQLite fails at once with "database is locked". A
    connection whose setup fails is closed before the error propagates."""
    if os.path.isdir(path):
        msg = f"{path!r} is a directory"
        raise OSError(msg)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    connection = driver.connect(path, autocommit=True)
    try:
        with contextlib.closing(connection.cursor()) as cursor:
            for pragma in sorted(pragmas, key=lambda p: not p.startswith("busy_timeout")):
                cursor.execute(f"PRAGMA {pragma}")
                cursor.fetchall()
    except Exception:
        connection.close()
        raise
    return connection
