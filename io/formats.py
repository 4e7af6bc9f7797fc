"""The built-in file formats by name, as factories for ``arrowflow.registry``.

``arrowflow.registry`` lists these for the ``source`` and ``sink`` names ``"parquet"``,
``"csv"``, ``"ndjson"`` and ``"ipc"``. One :class:`FileSource` and one :class:`FileSink` class serve every file format, told which
by their first argument; a registered factory takes the options of the matching
``Flow.read_<format>`` or ``Stream.write_<format>`` method instead, so that
``flow.read("csv", path, separator=";")`` and ``flow.read_csv(path, separator=";")`` build the
same source. The other built-in formats (``tail``, ``watch``, ``polars``, ``arrow``,
``database``, ``collect``) are registered as their classes or class methods, which take those
options already. Building a source or sink does no I/O.

>>> source = read_csv("events/*.csv", separator=";")
>>> source.kind, source.options["separator"]
('read_csv', ';')
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from arrowflow.io.files import FileSource
from arrowflow.io.filesinks import FileSink

__all__ = [
    "read_csv",
    "read_ipc",
    "read_ndjson",
    "read_parquet",
    "write_csv",
    "write_ipc",
    "write_ndjson",
    "write_parquet",
]


def read_parquet(path: str | Sequence[str], **options: Any) -> FileSource:
    """Parquet files; ``options`` as :meth:`arrowflow.Flow.read_parquet`'s."""
    return FileSource("parquet", path, **options)


def read_csv(
    path: str | Sequence[str], *, has_header: bool = True, separator: str = ",", **options: Any
) -> FileSource:
    """CSV files; ``has_header``, ``separator`` and ``options`` as :meth:`arrowflow.Flow.read_csv`'s."""
    return FileSource(
        "csv", path, options={"has_header": has_header, "separator": separator}, **options
    )


def read_ndjson(path: str | Sequence[str], **options: Any) -> FileSource:
    """Newline-delimited JSON files; ``options`` as :meth:`arrowflow.Flow.read_ndjson`'s."""
    return FileSource("ndjson", path, **options)


def read_ipc(path: str | Sequence[str], **options: Any) -> FileSource:
    """Arrow IPC files; ``options`` as :meth:`arrowflow.Flow.read_ipc`'s."""
    return FileSource("ipc", path, **options)


def write_parquet(path: str, **options: Any) -> FileSink:
    """Parquet part files; ``options`` as :meth:`arrowflow.Stream.write_parquet`'s."""
    return FileSink("parquet", path, **options)


def write_csv(path: str, **options: Any) -> FileSink:
    """CSV part files; ``options`` as :meth:`arrowflow.Stream.write_csv`'s."""
    return FileSink("csv", path, **options)


def write_ndjson(path: str, **options: Any) -> FileSink:
    """NDJSON part files; ``options`` as :meth:`arrowflow.Stream.write_ndjson`'s."""
    return FileSink("ndjson", path, **options)


def write_ipc(path: str, **options: Any) -> FileSink:
    """Arrow IPC part files; ``options`` as :meth:`arrowflow.Stream.write_ipc`'s."""
    return FileSink("ipc", path, **options)
