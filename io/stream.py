"""Unbounded sources: following a growing file (``flow.tail``) and a folder where files land
(``flow.watch``).

``TailSource`` has one split per followed path. Its position is ``{"offset", "line",
"inode"}``: the byte after the last complete line read, that line's number, and the file's
identity. A reader reads only complete lines — a half-written last line waits for its
newline — and parses them with the same CSV/NDJSON code as ``read_csv``/``read_ndjson``
(so bad lines go to the ``malformed`` side output with their file offset and line). When the
file shrinks below the position (truncated) or is replaced by another file (rotated: a new
inode), reading starts again at the new file's beginning, and a warning says so. Rows that
were appended to the old file after the last read, before it was rotated away, cannot be
read any more; rotate by renaming a *finished* file away, as logrotate does.

``WatchSource`` lists a glob every ``poll_interval`` and hands out each new file as a split
(for Parquet, its row-group ranges), read by the file readers of :mod:`arrowflow.io.files`.
The coordinator keeps the ids of finished splits in checkpoints, so each file is processed
exactly once, also across restarts. Files must appear complete: write them elsewhere (or
under a name starting with ``.`` or ``_``) and rename them into place.

That set of finished splits stays bounded, as in Spark's file stream source: with
``max_file_age`` (default 7 days) a file whose modification time is older than the newest
file seen *before* the poll that lists it, minus that age, is neither read nor remembered,
and finished splits of such files leave the set (and the checkpoints). A fresh start reads
every file present. A file that lands with an old modification time (a copy
that keeps it) is therefore skipped: give landed files a fresh time, or a longer age
(``max_file_age=None`` remembers every file forever). Each file's footer and splits are
worked out once per run, not at every poll.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import polars as pl

from arrowflow._foundation.durations import duration_ms
from arrowflow._foundation.schema import to_polars_schema
from arrowflow._foundation.warn import warn
from arrowflow.errors import SchemaError, SourceError
from arrowflow.io._csv import CsvFile, CsvOptions
from arrowflow.io._fs import (
    GLOB_CHARS,
    CorruptFileError,
    _glob_root,
    filesystem,
    in_memory,
    is_hidden,
    is_local,
)
from arrowflow.io._ndjson import NdjsonFile
from arrowflow.io.files import FileSource
from arrowflow.sources import Source, SourceBatch, Split, SplitReader

TAIL_FORMATS = ("ndjson", "csv")
#: Bytes a tail reader parses per batch at most (a long backlog is read in pieces).
TAIL_CHUNK = 64 << 20


class TailSource(Source):
    """Follow one local file as it grows."""

    bounded = False
    schema_is_static = True

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        format: str = "ndjson",  # noqa: A002
        schema: Any = None,
        has_header: bool = True,
        separator: str = ",",
        poll_interval: str = "100ms",
        on_error: str = "side_output",
        columns: list[str] | None = None,
    ) -> None:
        path = os.fspath(path)
        if format not in TAIL_FORMATS:
            msg = f"tail(format=...) must be one of {TAIL_FORMATS}, got {format!r}"
            raise SourceError(msg)
        if "://" in path and not path.startswith("file://"):
            msg = (
                f"tail() follows a local file; {path!r} is a URL. Use flow.watch() for files landing "
                f"on other filesystems"
            )
            raise SourceError(msg)
        if schema is None:
            msg = (
                f"tail({path!r}) needs schema={{...}}: the file may be empty when the job starts, so "
                f"its columns cannot be inferred"
            )
            raise SchemaError(msg)
        self.path = path.removeprefix("file://")
        self.format = format
        self.kind = "tail"
        self.user_schema = to_polars_schema(schema)
        self.csv = (
            CsvOptions(has_header=has_header, separator=separator) if format == "csv" else None
        )
        if self.csv is not None:
            self.csv.validate()
        self.poll_interval_s = duration_ms(poll_interval, what="poll_interval") / 1000
        self.on_error = on_error
        self.columns = columns

    def schema(self) -> pl.Schema:
        if self.columns is None:
            return self.user_schema
        return pl.Schema({c: self.user_schema[c] for c in self.columns})

    def with_columns_pruned(self, columns: list[str]) -> TailSource:
        clone = TailSource(
            self.path,
            format=self.format,
            schema=self.user_schema,
            has_header=self.csv.has_header if self.csv else True,
            separator=self.csv.separator if self.csv else ",",
            poll_interval=f"{self.poll_interval_s}s",
            on_error=self.on_error,
            columns=columns,
        )
        return clone

    def discover_splits(self, *, not_before: float | None = None) -> list[Split]:
        return [Split(f"tail:{self.path}", {"path": self.path})]

    def open_reader(
        self, split: Split, position: Any | None, *, batch_size: int | None
    ) -> SplitReader:
        return _TailReader(self, position or {"offset": 0, "line": 0, "inode": None})

    def process_local(self) -> str | None:
        return in_memory([self.path], "tail")

    def describe(self) -> str:
        return f"tail {self.path!r} ({self.format}, polled every {self.poll_interval_s:g} s)"


class _TailReader(SplitReader):
    def __init__(self, source: TailSource, position: dict[str, Any]) -> None:
        self.source = source
        self.offset = int(position["offset"])
        self.line = int(position["line"])
        self.inode = position.get("inode")
        self.header: bytes | None = None
        self.next_check = 0.0

    def position(self) -> dict[str, Any]:
        return {"offset": self.offset, "line": self.line, "inode": self.inode}

    def batches(self) -> Iterator[SourceBatch]:
        while True:
            now = time.monotonic()
            if now < self.next_check:
                yield SourceBatch(None, self.position())
                continue
            batch = self._read()
            if batch is None:
                self.next_check = now + self.source.poll_interval_s
                yield SourceBatch(None, self.position())
            else:
                yield batch

    def _restart(self, why: str) -> None:
        warn(f"tail {self.source.path!r}: {why}; reading it again from its start")
        self.offset, self.line, self.header = 0, 0, None

    def _read(self) -> SourceBatch | None:
        path = self.source.path
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            return None  # not created yet, or between a rotation and the new file
        if self.inode is not None and stat.st_ino != self.inode:
            self._restart("the file was replaced (rotated)")
        elif stat.st_size < self.offset:
            self._restart(f"the file shrank from {self.offset} to {stat.st_size} bytes (truncated)")
        self.inode = stat.st_ino
        if stat.st_size <= self.offset:
            return None
        with open(path, "rb") as handle:
            handle.seek(self.offset)
            chunk = handle.read(min(stat.st_size - self.offset, TAIL_CHUNK))
        end = chunk.rfind(b"\n")
        if end < 0:
            return None  # a half-written line: wait for its newline
        chunk = chunk[: end + 1]
        data, malformed = self._parse(chunk)
        self.offset += len(chunk)
        self.line += chunk.count(b"\n")
        return SourceBatch(data, self.position(), malformed)

    def _parse(self, chunk: bytes) -> tuple[pl.DataFrame, pl.DataFrame | None]:
        source = self.source
        names = source.columns if source.columns is not None else source.user_schema.names()
        base_offset, base_line = self.offset, self.line
        payload = chunk
        if source.csv is not None and source.csv.has_header:
            if base_offset == 0:
                first = chunk.find(b"\n")
                self.header = chunk[: first + 1]
            elif self.header is None:
                with open(source.path, "rb") as handle:
                    self.header = handle.readline()
            if base_offset > 0:
                payload = self.header + chunk
                base_offset -= len(self.header)
                base_line -= 1
        if source.csv is not None:
            text: CsvFile | NdjsonFile = CsvFile(
                payload,
                url=source.path,
                kind=source.kind,
                schema=source.user_schema,
                columns=names,
                options=source.csv,
                on_error=source.on_error,
            )
        else:
            text = NdjsonFile(
                payload,
                url=source.path,
                kind=source.kind,
                schema=source.user_schema,
                columns=names,
                on_error=source.on_error,
            )
        try:
            parsed = text.parse()
        except pl.exceptions.PolarsError as exc:
            msg = f"tail: cannot read {source.path!r} at byte {self.offset}: {str(exc).strip().splitlines()[0]}"
            raise SourceError(msg) from exc
        data, malformed = parsed.window(0, parsed.records)
        if malformed is not None and malformed.height:
            malformed = malformed.with_columns(
                pl.col("offset") + base_offset, pl.col("line") + base_line
            )
        return data, malformed


#: Formats with no end marker: a file written in place is taken once two listings agree.
_TEXT_FORMATS = ("csv", "ndjson")


class WatchSource(Source):
    """Files that appear in a folder or under a glob, each processed exactly once."""

    bounded = False

    def __init__(
        self,
        pattern: str,
        *,
        format: str = "parquet",  # noqa: A002
        schema: Any = None,
        storage_options: dict[str, Any] | None = None,
        poll_interval: str = "1s",
        on_error: str = "side_output",
        options: dict[str, Any] | None = None,
        columns: list[str] | None = None,
        max_file_age: Any = "7d",
    ) -> None:
        if schema is None:
            msg = (
                f"watch({pattern!r}) needs schema={{...}}: the folder may be empty when the job "
                f"starts, so the columns cannot be inferred"
            )
            raise SchemaError(msg)
        self.pattern = pattern
        self.format = format
        self.kind = "watch"
        self.storage_options = storage_options
        self.poll_interval_s = duration_ms(poll_interval, what="poll_interval") / 1000
        #: Seconds: splits of files older than the newest seen minus this are forgotten
        #: (the split enumerator applies it; None keeps every finished split).
        self.max_split_age_s = (
            None if max_file_age is None else duration_ms(max_file_age, what="max_file_age") / 1000
        )
        self._known: dict[str, tuple[float | None, list[Split]]] = {}  # url -> (mtime, its splits)
        # url -> (mtime, size) of the previous listing: a file being written in place is taken
        # once two listings agree (or it is old enough), never half-written.
        self._listed: dict[str, tuple[float | None, int | None]] = {}
        # The files themselves are read exactly as read_<format> reads them.
        self.files = FileSource(
            format,
            pattern,
            schema=schema,
            storage_options=storage_options,
            on_error=on_error,
            options=options,
            columns=columns,
        )
        self.files.kind = "watch"

    @property
    def schema_is_static(self) -> bool:
        return True

    def schema(self) -> pl.Schema:
        if self.files.columns is None:
            assert self.files.user_schema is not None  # __init__ refuses schema=None
            return self.files.user_schema
        return self.files.schema()

    def with_columns_pruned(self, columns: list[str]) -> WatchSource:
        clone = WatchSource.__new__(WatchSource)
        clone.__dict__.update(self.__dict__)
        clone._known = {}
        clone._listed = {}
        clone.files = self.files.with_columns_pruned(columns)
        clone.files.kind = "watch"
        return clone

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_known": {}, "_listed": {}}  # workers don't discover

    def listing(self) -> dict[str, float | None]:
        """Every visible file the pattern names now, with its modification time (epoch s)."""
        return {url: mtime for url, (mtime, _size) in self._list().items()}

    def _landed(
        self, url: str, mtime: float | None, size: int | None, now: float, before: Any
    ) -> bool:
        """Whether a file listed with ``mtime`` and ``size`` may be read now (see
        :meth:`discover_splits`); ``before`` is what the previous listing saw of it."""
        if mtime is None or now - mtime > self.settle_s:
            return True  # unchanged for long enough (or no age to tell): take what it holds
        if size == 0:
            return False  # just created far more often than meant to be empty
        if self.format in _TEXT_FORMATS:
            return before == (mtime, size)
        return True  # parquet, ipc: a file without its footer yet fails to open and waits

    @property
    def settle_s(self) -> float:
        """Seconds after which a file unchanged since is taken at its first listing."""
        return 2 * self.poll_interval_s + 1.0

    def _list(self) -> dict[str, tuple[float | None, int | None]]:
        fs, path = filesystem(self.pattern, self.storage_options)
        try:
            if any(ch in path for ch in GLOB_CHARS):
                root = _glob_root(path)
                entries = fs.glob(path, detail=True)
            else:
                root = path
                entries = fs.find(path, detail=True) if fs.isdir(path) else {}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            msg = f"watch: cannot list {self.pattern!r}: {type(exc).__name__}: {exc}"
            raise SourceError(msg) from exc
        found = {}
        for name, info in sorted(entries.items()):
            if info.get("type") == "file" and not is_hidden(name, root):
                size = info.get("size")
                found[name if is_local(fs) else fs.unstrip_protocol(name)] = (
                    _mtime(info),
                    int(size) if isinstance(size, int | float) else None,
                )
        return found

    def discover_splits(self, *, not_before: float | None = None) -> list[Split]:
        """Every file listed now that has landed, as splits; files modified before
        ``not_before`` (the split enumerator's age cutoff, epoch seconds) are left out and
        forgotten unread.

        A file may still be being written in place. It waits for a later listing while it was
        modified less than :attr:`settle_s` ago and is empty, or is a parquet/IPC file that does
        not open yet (no footer), or is a CSV/NDJSON file whose size or modification time
        changed since the previous listing (a text file has no end marker to check). Files
        renamed into place whole are taken at once.
        """
        now = time.time()
        detailed = self._list()
        previous, self._listed = self._listed, detailed
        listed = {url: mtime for url, (mtime, _size) in detailed.items()}
        for gone in set(self._known) - set(listed):
            del self._known[gone]
        splits = []
        for url, mtime in listed.items():
            if not_before is not None and mtime is not None and mtime < not_before:
                self._known.pop(url, None)
                continue  # older than the files it remembers: neither read nor remembered
            known = self._known.get(url)
            if known is None or known[0] != mtime:
                size = detailed[url][1]
                young = mtime is not None and now - mtime <= self.settle_s
                if not self._landed(url, mtime, size, now, previous.get(url)):
                    if known is not None:
                        splits.extend(known[1])  # the version read before, until this one lands
                    continue
                one = FileSource(
                    self.files.format,
                    [url],
                    schema=self.files.user_schema,
                    storage_options=self.storage_options,
                    on_error=self.files.on_error,
                    options=self.files.options,
                    columns=self.files.columns,
                )
                try:
                    found = one.discover_splits()
                except CorruptFileError:
                    if not young:
                        raise
                    if known is not None:
                        splits.extend(known[1])
                    continue  # no footer yet: being written in place; the next listing sees
                for split in found:
                    split.info["mtime"] = mtime
                known = (mtime, found)
                self._known[url] = known
            splits.extend(known[1])
        return splits

    def open_reader(
        self, split: Split, position: Any | None, *, batch_size: int | None
    ) -> SplitReader:
        return self.files.open_reader(split, position, batch_size=batch_size)

    def process_local(self) -> str | None:
        return in_memory([self.pattern], "watch")

    def describe(self) -> str:
        return f"watch {self.pattern!r} ({self.format}, polled every {self.poll_interval_s:g} s)"


def _mtime(info: dict[str, Any]) -> float | None:
    """A file's modification time from an fsspec ``info`` (local, memory, S3 spell it apart)."""
    for key in ("mtime", "LastModified", "last_modified", "created"):
        value = info.get(key)
        if value is None:
            continue
        if hasattr(value, "timestamp"):
            return float(value.timestamp())
        try:
            return float(value)
        except (TypeError, ValueError):
            continue
    return None
