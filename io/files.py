"""File sources: Parquet, CSV, NDJSON and Arrow IPC over any fsspec filesystem.

State and protocol:

- **Build time** (``prepare_schema()``, as the flow adds the source): without ``schema=``, the
  schema is read from the first file the first path names: its footer (Parquet, IPC) or the
  schema inferred from its head (CSV, NDJSON), as the plan would take it; it is then the
  declared schema, every step downstream is checked against it as it is added, and the plan
  checks every file against it as against a schema the user gave. Paths that name no file
  yet, or whose first files cannot be read, leave it to plan time.
- **Plan time** (``schema()``): the paths are resolved into files once (a missing file or an
  empty glob is a :class:`SourceError` here). Parquet and IPC read every file's footer: each
  file must hold the source's columns in types that read losslessly as the schema says, or a
  :class:`SchemaError` names the file, the column and both types. CSV and NDJSON take the
  schema the user gave, or infer it from the first MiB of the first non-empty file.
- **Splits** (coordinator): one per Parquet row-group range (consecutive row groups up to
  about ``ROWS_PER_SPLIT`` rows), one per CSV, NDJSON or IPC file.
- **Positions**: the number of *records* of the split already emitted, good or malformed, in
  file order. A reader reopened at position ``p`` emits record ``p`` next. Records are rows
  for Parquet and IPC, and for CSV/NDJSON every line or quoted record except blank lines (see
  :mod:`arrowflow.io._text`), so a position does not depend on which columns are read.
- **Bad rows** (CSV, NDJSON): a row of the wrong width, a value that does not parse as its
  column's type, a line that is not a JSON object or not UTF-8 goes to the ``malformed``
  side output with the file, byte offset, line and reason, in order with the data; with
  ``on_error="raise"`` the first one fails the job instead. Type checks apply to every column
  of the schema, whichever columns the flow reads: the same rows are malformed under any
  projection (the columns nobody reads are parsed, checked and dropped).
- **Corrupt files** (one that cannot be read as its format: truncated, garbage, a broken
  compressed stream) fail the job, naming the file. With ``on_corrupt_file="skip"`` such a
  file, found at plan time (its footer, or the head read to infer a schema) or while its
  split is read, becomes one ``malformed`` row (file, reason; offset and line -1) and the
  split ends at position :data:`SKIPPED`, so a resumed run does not report it twice. A
  readable file whose columns do not match the schema is not corrupt: it fails the plan.
  (Parquet pages carry no checksum by default: bytes flipped inside a page are found only
  when they break its structure; most such damage reads as other values, undetected.)

Worked example: a CSV file whose records 1 and 2 are bad, read two records at a time; the
reader reports the position after each batch, and reopened at position 2 it would yield
only the second batch.

>>> import pathlib, tempfile
>>> path = pathlib.Path(tempfile.mkdtemp()) / "x.csv"
>>> _ = path.write_text("a,b\\n1,x\\n2\\nzz,y\\n3,z\\n")
>>> source = FileSource("csv", str(path), schema={"a": pl.Int64, "b": pl.String})
>>> split = source.discover_splits()[0]
>>> for batch in source.open_reader(split, None, batch_size=2).batches():
...     print(batch.position, batch.data["a"].to_list(), batch.malformed["reason"].to_list())
2 [1] ['expected 2 fields, found 1']
4 [3] ["column 'a': cannot parse 'zz' as Int64"]
"""

from __future__ import annotations

import operator
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import polars as pl

import arrowflow.io._columnar as _columnar
from arrowflow._foundation.schema import to_polars_schema
from arrowflow.errors import SchemaError, SourceError
from arrowflow.io._csv import CsvFile, CsvOptions, infer_schema
from arrowflow.io._fs import (
    CorruptFileError,
    filesystem,
    first_line,
    in_memory,
    open_payload,
    resolve_files,
)
from arrowflow.io._ndjson import NdjsonFile
from arrowflow.io._schema import check_file_schema, conform
from arrowflow.io._text import Parsed
from arrowflow.sources import MALFORMED_SCHEMA, Source, SourceBatch, Split, SplitReader

FORMATS = ("parquet", "csv", "ndjson", "ipc")
SUFFIXES = {
    "parquet": (".parquet", ".pq", ".parq"),
    "csv": (".csv", ".tsv", ".csv.gz", ".tsv.gz", ".csv.zst", ".csv.bz2"),
    "ndjson": (
        ".ndjson",
        ".jsonl",
        ".json",
        ".ndjson.gz",
        ".jsonl.gz",
        ".ndjson.zst",
        ".jsonl.zst",
    ),
    "ipc": (".arrow", ".ipc", ".feather"),
}
ROWS_PER_SPLIT = 1_000_000
INFER_BYTES = 1 << 20
INFER_FILES = 8  # empty files skipped while looking for one to infer a text schema from
ON_ERROR = ("side_output", "raise")
ON_CORRUPT_FILE = ("fail", "skip")
SKIPPED = "skipped: corrupt file"  # the position of a split reported as a corrupt file
_CSV_OPTIONS = ("has_header", "separator", "quote_char")


class FileSource(Source):
    """Bounded files of one format: a path, a directory, a glob or a list of them."""

    def __init__(
        self,
        fmt: str,
        path: str | Sequence[str],
        *,
        schema: Any = None,
        storage_options: dict[str, Any] | None = None,
        on_error: str = "side_output",
        options: dict[str, Any] | None = None,
        columns: list[str] | None = None,
        on_corrupt_file: str = "fail",
    ) -> None:
        if fmt not in FORMATS:
            msg = f"unknown file format {fmt!r}; expected one of {FORMATS}"
            raise SourceError(msg)
        kind = f"read_{fmt}"
        if on_error not in ON_ERROR:
            msg = f"{kind}(on_error=...) must be 'side_output' or 'raise', got {on_error!r}"
            raise SourceError(msg)
        if not isinstance(on_corrupt_file, str) or on_corrupt_file not in ON_CORRUPT_FILE:
            msg = (
                f"{kind}(on_corrupt_file=...) must be 'fail' (a file that cannot be read fails the job) or "
                f"'skip' (it is reported in the 'malformed' side output and the rest is read), "
                f"got {on_corrupt_file!r}"
            )
            raise SourceError(msg)
        if isinstance(path, os.PathLike):
            path = os.fspath(path)
        if isinstance(path, str) and path:
            paths = [path]
        elif (
            isinstance(path, Sequence)
            and path
            and all(isinstance(p, str | os.PathLike) and p for p in path)
        ):
            paths = [os.fspath(p) for p in path]
        else:
            msg = (
                f"{kind}() expects a path, glob or URL string, or a non-empty list of them; "
                f"got {type(path).__name__} {path!r}"
            )
            raise SourceError(msg)
        if storage_options is not None and not isinstance(storage_options, dict):
            msg = f"{kind}(storage_options=...) must be a dict of fsspec options, got {type(storage_options).__name__}"
            raise SourceError(msg)
        options = dict(options or {})
        unknown = sorted(set(options) - set(_CSV_OPTIONS if fmt == "csv" else ()))
        if unknown:
            msg = f"{kind}() got unknown options {unknown}; {fmt} takes {list(_CSV_OPTIONS) if fmt == 'csv' else 'none'}"
            raise SourceError(msg)
        self.format = fmt
        self.kind = kind
        self.paths = paths
        self.user_schema = to_polars_schema(schema) if schema is not None else None
        self.storage_options = storage_options
        self.on_error = on_error
        self.on_corrupt_file = on_corrupt_file
        self.options = options
        self.csv = CsvOptions(**options) if fmt == "csv" else None
        if self.csv is not None:
            self.csv.validate()
        if self.user_schema is not None:
            self._check_user_schema(self.user_schema)
        self.columns = columns
        # The schema known without I/O: the user's, or the one prepare_schema() read when the
        # flow was built; the plan then checks every file against it, as against the user's.
        self._declared: pl.Schema | None = self.user_schema
        self._files: list[str] | None = None
        self._full_schema: pl.Schema | None = None
        self._meta: dict[str, _columnar.FileMeta] = {}
        self._corrupt: dict[
            str, CorruptFileError
        ] = {}  # files skipped at plan time (on_corrupt_file="skip")

    def _check_user_schema(self, schema: pl.Schema) -> None:
        if not len(schema):
            msg = f"{self.kind}(schema=...) names no column; give at least one, or leave schema=None to infer it"
            raise SchemaError(msg)
        if self.format == "csv":
            nested = [c for c, t in schema.items() if t.is_nested() or t == pl.Object]
            if nested:
                msg = (
                    f"{self.kind}: CSV cannot hold the column {nested[0]!r} of type {schema[nested[0]]}; "
                    f"read it as pl.String and parse it after reading"
                )
                raise SchemaError(msg)

    @property
    def schema_is_static(self) -> bool:
        """True when the schema is known without any I/O: given as schema=, or read by
        :meth:`prepare_schema` when the flow was built."""
        return self._declared is not None

    # ------------------------------------------------------------------ build time
    def prepare_schema(self) -> None:
        """Read the schema as the flow is built, as the plan would: the footer of the first
        file the first path names (Parquet, IPC), or the schema inferred from the head of its
        first non-empty file (CSV, NDJSON). Nothing else is read, and nothing is kept but the
        schema: the plan resolves the paths again and checks every file against it. When the
        paths name no file yet, or the first ones cannot be read, the schema stays unknown
        and the plan reports what it finds, as without this step."""
        if self._declared is not None:
            return
        try:
            files = resolve_files(
                self.paths[:1], self.storage_options, suffixes=SUFFIXES[self.format]
            )
        except SourceError:
            return
        try:
            self._declared = next(self._schemas(files, note_corrupt=False), None)
        except SourceError:  # incl. a corrupt file: the plan raises or skips it, as it would
            return

    # ------------------------------------------------------------------ plan time
    def check_schema(self) -> None:
        """Parquet and IPC: every file's footer against the declared schema (what
        :meth:`full_schema` does). CSV and NDJSON: nothing to read before the splits."""
        self.full_schema()

    def files(self) -> list[str]:
        if self._files is None:
            self._files = resolve_files(
                self.paths, self.storage_options, suffixes=SUFFIXES[self.format]
            )
        return self._files

    def meta(self, url: str) -> _columnar.FileMeta:
        """Footer metadata of a Parquet or IPC file (read once per source)."""
        if url not in self._meta:
            read = _columnar.parquet_meta if self.format == "parquet" else _columnar.ipc_meta
            self._meta[url] = read(url, self.storage_options, what=self.kind)
        return self._meta[url]

    def _skip_corrupt(self, exc: CorruptFileError) -> None:
        """Note a file that cannot be read, or raise when the source fails on one (the default)."""
        if self.on_corrupt_file != "skip":
            raise exc
        self._corrupt[exc.url] = exc

    def _readable_files(self) -> list[str]:
        """Parquet and IPC files whose footer reads; the others are skipped or fail the source."""
        readable = []
        for url in self.files():
            try:
                self.meta(url)
            except CorruptFileError as exc:
                self._skip_corrupt(exc)
                continue
            readable.append(url)
        return readable

    def full_schema(self) -> pl.Schema:
        """Every column the source can return, with its type (the user's schema when given)."""
        if self._full_schema is None:
            if self.format in ("parquet", "ipc"):
                files = self._readable_files()
                if not files and self._declared is None:
                    first = next(iter(self._corrupt.values()))
                    msg = (
                        f"{self.kind}: no file of {self.paths} can be read, so there is no schema to take: "
                        f"{first}; pass schema={{...}} to run anyway (every file is then reported as skipped)"
                    )
                    raise SourceError(msg)
                wanted = (
                    self._declared if self._declared is not None else self.meta(files[0]).schema
                )
                for url in files:
                    check_file_schema(self.meta(url).schema, wanted, url=url, what=self.kind)
                self._full_schema = wanted
            else:
                self._full_schema = (
                    self._declared if self._declared is not None else self._infer_text_schema()
                )
        return self._full_schema

    def schema(self) -> pl.Schema:
        full = self._full_schema if self._full_schema is not None else self._declared
        if full is None:
            full = self.full_schema()
        if self.columns is None:
            return full
        return pl.Schema({c: full[c] for c in self.columns})

    def _infer_text_schema(self) -> pl.Schema:
        schema = next(self._schemas(self.files()[:INFER_FILES], note_corrupt=True), None)
        if schema is not None:
            return schema
        msg = (
            f"{self.kind}: the first files of {self.paths} are empty, so no schema can be inferred; "
            f"pass schema={{'column': pl.Int64, ...}}"
        )
        raise SourceError(msg)

    def _schemas(self, files: list[str], *, note_corrupt: bool) -> Iterator[pl.Schema]:
        """The schema of each of ``files`` that has one to give, in order: its footer (Parquet,
        IPC) or the schema inferred from its head (CSV, NDJSON; empty files give none). A
        corrupt file fails, or is skipped with ``on_corrupt_file="skip"`` (and noted for the
        plan when ``note_corrupt``)."""
        for url in files[:INFER_FILES]:
            try:
                if self.format in ("parquet", "ipc"):
                    read = (
                        _columnar.parquet_meta if self.format == "parquet" else _columnar.ipc_meta
                    )
                    yield read(url, self.storage_options, what=self.kind).schema
                    continue
                head = self._head(url)
            except CorruptFileError as exc:
                if note_corrupt:
                    self._skip_corrupt(exc)
                elif self.on_corrupt_file != "skip":
                    raise
                continue
            if not head.strip():
                continue
            try:
                if self.csv is not None:
                    schema = infer_schema(head, self.csv)
                else:
                    schema = pl.read_ndjson(_json_objects(head), infer_schema_length=10_000).schema
            except pl.exceptions.PolarsError as exc:
                msg = (
                    f"{self.kind}: cannot infer the schema of {url!r}: {str(exc).strip().splitlines()[0]}; "
                    f"is it a {self.format} file? Pass schema={{...}} to fix the types"
                )
                raise SourceError(msg) from exc
            if len(schema):
                yield schema

    def _head(self, url: str) -> bytes:
        fs, path = filesystem(url, self.storage_options)
        try:
            with fs.open(path, "rb", compression="infer") as handle:
                head = handle.read(INFER_BYTES)
        except FileNotFoundError as exc:
            msg = f"{self.kind}: cannot read {url!r}: {type(exc).__name__}: {exc}"
            raise SourceError(msg) from exc
        except (OSError, EOFError) as exc:  # e.g. a broken compressed stream
            detail = f"{type(exc).__name__}: {first_line(exc)}"
            msg = (
                f"{self.kind}: cannot read {url!r}: {detail}; is it a complete file of this format? "
                f"on_corrupt_file='skip' reports such files in 'malformed' and reads on"
            )
            raise CorruptFileError(msg, url=url, detail=detail) from exc
        if len(head) == INFER_BYTES and b"\n" in head:
            head = head[: head.rindex(b"\n") + 1]  # whole lines only
        return head

    def with_columns_pruned(self, columns: list[str]) -> FileSource:
        full = self.full_schema()
        unknown = [c for c in columns if c not in full]
        if unknown:
            msg = f"{self.kind}: no column {unknown[0]!r}; the columns are {full.names()}"
            raise SchemaError(msg)
        clone = FileSource(
            self.format,
            self.paths,
            schema=self.user_schema,
            storage_options=self.storage_options,
            on_error=self.on_error,
            options=self.options,
            columns=list(columns),
            on_corrupt_file=self.on_corrupt_file,
        )
        clone._files, clone._full_schema, clone._meta = self._files, self._full_schema, self._meta
        clone._declared = self._declared
        clone._corrupt = self._corrupt
        return clone

    # ------------------------------------------------------------------ coordinator
    def discover_splits(self, *, not_before: float | None = None) -> list[Split]:
        self.full_schema()  # every file checked before any data moves
        splits = []
        for url in self.files():
            if url in self._corrupt:  # skipped at plan time: its split only reports it
                splits.append(Split(url, {"url": url, "corrupt": self._corrupt[url].detail}))
                continue
            if self.format != "parquet":
                splits.append(Split(url, {"url": url}))
                continue
            sizes = self.meta(url).row_groups
            first, start, rows = 0, 0, 0
            for index, size in enumerate(sizes):
                rows += size
                if rows >= ROWS_PER_SPLIT or index == len(sizes) - 1:
                    splits.append(
                        Split(
                            f"{url}#rg{first}-{index}",
                            {
                                "url": url,
                                "row_groups": list(range(first, index + 1)),
                                "start": start,
                                "rows": rows,
                            },
                        )
                    )
                    first, start, rows = index + 1, start + rows, 0
        return splits

    def event_time_bounds(self, splits: list[Split], column: str) -> dict[str, int]:
        """Parquet: the lowest row-group minimum of ``column`` over each split's row groups,
        from the footer's statistics (read at plan time). Other formats know no bounds."""
        if self.format != "parquet":
            return {}
        bounds: dict[str, int] = {}
        for split in splits:
            if "corrupt" in split.info:  # skipped as corrupt at plan time: no footer to read
                continue
            mins = self.meta(split.info["url"]).time_mins.get(column)
            if mins is None:
                continue
            values = [mins[group] for group in split.info["row_groups"] if group < len(mins)]
            if values and all(value is not None for value in values):
                bounds[split.split_id] = min(values)
        return bounds

    # ------------------------------------------------------------------ worker
    def open_reader(
        self, split: Split, position: Any | None, *, batch_size: int | None
    ) -> SplitReader:
        if position == SKIPPED:  # reported as a corrupt file already: nothing left to emit
            return _FileReader(self, split, 0, batch_size, reported=True)
        try:  # a row count; a restored one comes from a manifest, which may be damaged or crafted
            skip = operator.index(position or 0)
        except TypeError:
            skip = -1
        if skip < 0:
            msg = (
                f"{self.kind}: position {position!r} of split {split.split_id!r} is not a row count (a whole "
                f"number >= 0); the checkpoint it was restored from is damaged: restore an older one, or "
                f"restore=None to start over"
            )
            raise SourceError(msg)
        return _FileReader(self, split, skip, batch_size)

    def process_local(self) -> str | None:
        return in_memory(self.paths, self.kind)

    def describe(self) -> str:
        shown = ", ".join(repr(p) for p in self.paths[:3]) + (" ..." if len(self.paths) > 3 else "")
        return f"{self.kind} {shown}"


def _json_objects(payload: bytes) -> bytes:
    """Lines of ``payload`` that are JSON objects (schema inference skips malformed lines)."""
    lines = pl.Series(payload.decode("utf-8", errors="replace").splitlines(), dtype=pl.String)
    matched = lines.str.json_path_match("$")
    good = lines.filter(matched.is_not_null() & matched.str.starts_with("{"))
    return ("\n".join(good.to_list()) + "\n").encode()


class _FileReader(SplitReader):
    """Reads one split; emits records ``[skip, end)`` in windows of ``batch_size`` records."""

    def __init__(
        self,
        source: FileSource,
        split: Split,
        skip: int,
        batch_size: int | None,
        *,
        reported: bool = False,
    ) -> None:
        self.source = source
        self.split = split
        self.skip = skip
        self.batch_size = batch_size
        self.url: str = split.info["url"]
        self.reported = reported
        self.query: Callable[[pl.LazyFrame], pl.LazyFrame] | None = None

    def push_down(self, query: Callable[[pl.LazyFrame], pl.LazyFrame]) -> bool:
        """Parquet read as one batch (no ``batch_size``): the query runs in polars' scan."""
        if self.source.format != "parquet" or self.batch_size is not None or self.reported:
            return False
        self.query = query
        return True

    def batches(self) -> Iterator[SourceBatch]:
        if self.reported:
            return
        wanted = self.source.schema()
        if self.query is not None:
            yield from self._queried(wanted, self.query)
            return
        corrupt = self.split.info.get("corrupt")
        if corrupt is None:
            try:
                parsed, origin = self._load()
            except CorruptFileError as exc:
                if self.source.on_corrupt_file != "skip":
                    raise
                corrupt = exc.detail
        if corrupt is not None:
            yield SourceBatch(pl.DataFrame(schema=wanted), SKIPPED, self._skipped(corrupt))
            return
        start = self.skip - origin
        step = self.batch_size or max(1, parsed.records - start)
        for low in range(start, parsed.records, step):
            high = min(low + step, parsed.records)
            data, malformed = parsed.window(low, high)
            yield SourceBatch(self._conform(data, wanted), origin + high, malformed)

    def _queried(
        self, wanted: pl.Schema, query: Callable[[pl.LazyFrame], pl.LazyFrame]
    ) -> Iterator[SourceBatch]:
        """The rest of a Parquet split as one batch: the pushed-down query over its rows."""
        info = self.split.info
        conformed = query if not len(wanted) else lambda rows: query(rows.cast(dict(wanted)))
        corrupt = info.get("corrupt")
        if corrupt is None:
            try:
                frame = _columnar.read_parquet(
                    self.url,
                    self.source.storage_options,
                    info["row_groups"],
                    info["start"],
                    info["rows"],
                    self.skip,
                    wanted.names(),
                    what=self.source.kind,
                    query=conformed,
                )
            except CorruptFileError as exc:
                if self.source.on_corrupt_file != "skip":
                    raise
                corrupt = exc.detail
        if corrupt is not None:
            empty = query(pl.LazyFrame(schema=wanted)).collect()
            yield SourceBatch(empty, SKIPPED, self._skipped(corrupt), rows_read=0)
            return
        rows = info["rows"] - self.skip
        if rows > 0:
            yield SourceBatch(frame, info["rows"], rows_read=rows)

    def _skipped(self, detail: str) -> pl.DataFrame:
        """The one ``malformed`` row that reports this split's file as skipped."""
        info = self.split.info
        what = "corrupt file skipped"
        if (
            "row_groups" in info and "corrupt" not in info
        ):  # a row-group range of a file whose footer read
            groups, start = info["row_groups"], info["start"]
            what += (
                f" (row groups {groups[0]}-{groups[-1]}, rows {start}-{start + info['rows'] - 1})"
            )
        return pl.DataFrame(
            {
                "source": [self.source.kind],
                "file": [self.url],
                "offset": [-1],
                "line": [-1],
                "reason": [f"{what}: {detail}"],
                "raw": [None],
            },
            schema=MALFORMED_SCHEMA,
        )

    def _conform(self, data: pl.DataFrame, wanted: pl.Schema) -> pl.DataFrame:
        if not len(wanted) or data.schema == wanted:
            return data
        try:
            return conform(data, wanted)
        except (pl.exceptions.PolarsError, KeyError) as exc:
            msg = (
                f"{self.source.kind}: {self.url!r} does not match the schema {dict(wanted)}: "
                f"{str(exc).strip().splitlines()[0]}; was the file replaced after the run started?"
            )
            raise SchemaError(msg) from exc

    def _load(self) -> tuple[Parsed, int]:
        """The split's records (from ``skip`` on for the columnar formats) and the position
        of the first of them."""
        source = self.source
        # The declared schema when there is one: full_schema() lists the paths again and
        # reads every footer, which a watched folder's half-written files would fail.
        names = source.schema().names()
        if source.format == "parquet":
            info = self.split.info
            frame = _columnar.read_parquet(
                self.url,
                source.storage_options,
                info["row_groups"],
                info["start"],
                info["rows"],
                self.skip,
                names,
                what=source.kind,
            )
            return Parsed(frame, frame.height), self.skip
        if source.format == "ipc":
            frame = _columnar.read_ipc(
                self.url,
                source.storage_options,
                self.skip,
                names,
                stream=source.meta(self.url).stream,
                what=source.kind,
            )
            return Parsed(frame, frame.height), self.skip
        payload, path = open_payload(self.url, source.storage_options, what=source.kind)
        schema = source.full_schema()
        if source.csv is not None:
            text: CsvFile | NdjsonFile = CsvFile(
                payload,
                url=self.url,
                kind=source.kind,
                schema=schema,
                columns=names,
                options=source.csv,
                on_error=source.on_error,
                path=path,
            )
        else:
            text = NdjsonFile(
                payload,
                url=self.url,
                kind=source.kind,
                schema=schema,
                columns=names,
                on_error=source.on_error,
                path=path,
            )
        try:
            return text.parse(), 0
        except pl.exceptions.PolarsError as exc:
            msg = f"{source.kind}: cannot read {self.url!r}: {str(exc).strip().splitlines()[0]}"
            raise SourceError(msg) from exc
