"""arrowflow: batch-and-stream processing on Apache Arrow.

Build a :class:`Flow` from sources, polars expressions and keyed aggregations, then
``flow.run()`` it or ``stream.collect()`` a stream into a polars DataFrame.
"""

# Layout (docs/architecture.md has the whole map). Imports go down this list only; import-linter
# contracts in CI hold it (tools/check_architecture.py).
#
#   cli, demo, testing      entry points: the command line, the demo job, test helpers and the
#                           conformance suites (state, source, sink)
#   _api/                   the facade: Flow/Stream/KeyedStream (flow), windowed streams, Job,
#                           checkpoint inspection, run summaries, HTML and live views, progress
#   _runtime/               runners (inprocess, pool), the shared-memory transport (shm), the
#                           control link, workers, physical operators, the job coordinator, split
#                           enumeration, checkpoint storage, leases, restarts, sink outputs
#   _plan                   the planner: logical graph -> physical plan, fingerprints
#   _graph/, _process/      the graph model: nodes, operator kinds (one table: _graph/kinds.py),
#                           aggregations, windows; process-function state declarations and handles
#   sources, sinks, state,  the plug-in interfaces and what a user passes: the hooks a source,
#   runners, registry,      sink, state backend or runner implements, the registry that finds
#   options, triggers,      them by name, RunOptions, checkpoint triggers, window specs
#   windows, process
#   errors, _foundation/    errors; durations, optional dependencies, Arrow IPC, SQL and SQLite
#                           helpers, schema helpers, key groups, watermark arithmetic, fault points
#
# Beside the stack: arrowflow.io (sources and sinks) and arrowflow.backends (state backends),
# installed from io/ and backends/; they import errors, _foundation and the interfaces only,
# and the engine reaches them by name through arrowflow.registry.

from arrowflow._api.flow import Flow as Flow
from arrowflow._api.flow import KeyedStream as KeyedStream
from arrowflow._api.flow import Stream as Stream
from arrowflow._api.inspect import list_checkpoints as list_checkpoints
from arrowflow._api.inspect import query_state as query_state
from arrowflow._api.inspect import read_state as read_state
from arrowflow._api.job import Job as Job
from arrowflow._runtime.result import RunResult as RunResult
from arrowflow.errors import ArrowflowError as ArrowflowError
from arrowflow.errors import CheckpointError as CheckpointError
from arrowflow.errors import PlanError as PlanError
from arrowflow.errors import SchemaError as SchemaError
from arrowflow.errors import SinkError as SinkError
from arrowflow.errors import SourceError as SourceError
from arrowflow.errors import StateError as StateError
from arrowflow.errors import WorkerError as WorkerError
from arrowflow.options import RunOptions as RunOptions
from arrowflow.process import ListState as ListState
from arrowflow.process import MapState as MapState
from arrowflow.process import ProcessContext as ProcessContext
from arrowflow.process import ValueState as ValueState
from arrowflow.triggers import Trigger as Trigger
from arrowflow.triggers import TriggerStats as TriggerStats
from arrowflow.triggers import every as every
from arrowflow.triggers import every_rows as every_rows
from arrowflow.windows import WindowSpec as WindowSpec
from arrowflow.windows import session as session
from arrowflow.windows import sliding as sliding
from arrowflow.windows import tumbling as tumbling

__version__ = "0.1.0"

__all__ = [
    "ArrowflowError",
    "CheckpointError",
    "Flow",
    "Job",
    "KeyedStream",
    "ListState",
    "MapState",
    "PlanError",
    "ProcessContext",
    "RunOptions",
    "RunResult",
    "SchemaError",
    "SinkError",
    "SourceError",
    "StateError",
    "Stream",
    "Trigger",
    "TriggerStats",
    "ValueState",
    "WindowSpec",
    "WorkerError",
    "every",
    "every_rows",
    "list_checkpoints",
    "query_state",
    "read_state",
    "session",
    "sliding",
    "tumbling",
]
