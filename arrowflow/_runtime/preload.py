"""What the forkserver imports once, so that forked workers start without imports.

Nothing here may start a thread pool: a fork copies only the forking thread, and a pool
started before the fork (polars', Arrow's) would be unusable in every worker. polars and
pyarrow start their pools lazily, on first use; the jemalloc purging threads their imports
would start are switched off in the server (``pool._server_env``).
"""

from __future__ import annotations

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
