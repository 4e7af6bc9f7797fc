"""What the forkserver imports once, so that forked workers start without imports.

Nothing here may start a thread: a fork copies only the forking thread, and a thread pool
started before the fork (polars', Arrow's) would be unusable in every worker. polars and
pyarrow start their pools lazily, on first use, so importing them is safe.
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
