"""Sources and sinks: files (Parquet, CSV, NDJSON, Arrow IPC) over fsspec, SQLite and PostgreSQL tables (``write_database``), and in-memory data.

Installed as ``arrowflow.io``. The engine never imports this package: ``Flow.read_parquet``,
``Stream.write_database`` and the rest name their formats through :mod:`arrowflow.registry`
(groups ``source`` and ``sink``; :mod:`arrowflow.io.formats` holds the file formats'
factories), which imports a format's module the first time a flow uses it. Implementations
import only ``arrowflow.errors``, ``arrowflow._foundation`` and the interfaces they implement
(:mod:`arrowflow.sources`, :mod:`arrowflow.sinks`); a third-party format registers the same
way (see ``docs/plugins.md``).
"""

from arrowflow.io.database import DatabaseSink as DatabaseSink
from arrowflow.io.files import FileSource as FileSource
from arrowflow.io.filesinks import FileSink as FileSink
from arrowflow.io.memory import CollectSink as CollectSink
from arrowflow.io.memory import MemorySource as MemorySource
