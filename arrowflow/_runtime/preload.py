"""What the forkserver imports once, so that forked workers start without imports.

Nothing here may start a thread pool: a fork copies only the forking thread, and a pool
started before the fork (polars', Arrow's) would be unusable in every worker. polars and
pyarrow start their pools lazily, on first use; the jemalloc purging threads their imports
would start are switched off in the server (``pool._server_env``).
"""

from __future__ import annotations

import pickle
import sys
import traceback
from typing import Any

import cloudpickle  # noqa: F401
import polars  # noqa: F401
import pyarrow
import pyarrow.compute
import pyarrow.csv
import pyarrow.ipc
import pyarrow.parquet  # noqa: F401

import arrowflow._runtime.pool
import arrowflow._runtime.worker  # noqa: F401

# arrowflow.io and arrowflow.backends are preloaded too, named in pool.PRELOAD: the runtime
# does not import its plug-ins (docs/architecture.md).


def _spawn_cut_short(kind: type[BaseException], value: BaseException, tb: Any) -> bool:
    """The error of a worker whose start message stopped mid-way: the coordinator was
    interrupted (Ctrl-C) or killed while it wrote it, in ``multiprocessing.spawn._main``."""
    if not (
        issubclass(kind, EOFError)
        or (issubclass(kind, pickle.UnpicklingError) and "truncated" in str(value))
    ):
        return False
    for frame, _ in traceback.walk_tb(tb):
        code = frame.f_code
        if code.co_name == "_main" and code.co_filename.endswith("multiprocessing/spawn.py"):
            return True
    return False


def _excepthook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
    # The forkserver's children report a failed start with sys.excepthook. A start the
    # coordinator abandoned has nothing for the user to read (the coordinator says why it
    # stopped); any other error is printed as before.
    if _spawn_cut_short(kind, value, tb):
        return
    _default_excepthook(kind, value, tb)


_default_excepthook = sys.excepthook
sys.excepthook = _excepthook
