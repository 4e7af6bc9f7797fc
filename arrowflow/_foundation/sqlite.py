"""Opening an ADBC SQLite connection with its pragmas.

The sql state backend and the database sink share it.
"""

from __future__ import annotations

import contextlib
import os
from types import ModuleType


def open_sqlite(driver: ModuleType, path: str, pragmas: tuple[str, ...]) -> object:
    """An ADBC SQLite connection to ``path`` with ``pragmas`` applied, parent folders created.

    ``driver`` is ``adbc_driver_sqlite.dbapi``; the connection is in autocommit mode.
    ``busy_timeout`` is applied before the others: switching to WAL and the first reads take
    locks that another process opening the same file may hold at that moment, and without
    the timeout SQLite fails at once with "database is locked". A connection whose setup
    fails is closed before the error propagates.
    """
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
