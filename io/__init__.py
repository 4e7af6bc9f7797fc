"""Sources and sinks: files (Parquet, CSV, NDJSON, Arrow IPC) over fsspec, SQLite and PostgreSQL tables (``write_database``), and in-memory data.

Installed as ``arrowflow.io``. Implementations import only the engine's interfaces
(``arrowflow.sources``, ``arrowflow.sinks``, ``arrowflow.errors``) and small helpers.
"""

from arrowflow.io.database import DatabaseSink as DatabaseSink
from arrowflow.io.files import FileSource as FileSource
from arrowflow.io.filesinks import FileSink as FileSink
from arrowflow.io.memory import CollectSink as CollectSink
from arrowflow.io.memory import MemorySource as MemorySource
