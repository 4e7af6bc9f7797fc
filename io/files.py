"""File sources: Parquet, CSV, NDJSON and Arrow IPC over any fsspec filesystem.

Splits: one per Parquet row-group range (small row groups are grouped up to about
``ROWS_PER_SPLIT`` rows), one per CSV/NDJSON/IPC file. A split's position is the number of
records of the split already emitted (data rows plus malformed rows), so a reader reopened
at a position re-reads the split deterministically and skips them.

Parsing: CSV and NDJSON are parsed by polars in one call per file (the fast path). When that
fails, the file is parsed again line by line (the slow path, taken only for files holding a
bad row): rows that parse are kept, the others go to the ``malformed`` side output with the
file, byte offset, line number and reason — or raise, with ``on_error="raise"``.
"""

from __future__ import annotations

import csv
import io as _stdio
import json
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from arrowflow.errors import SchemaError, SourceError
from arrowflow.io._fs import filesystem, resolve_files
from arrowflow.io._schema import to_polars_schema
from arrowflow.sources import MALFORMED_SCHEMA, Source, SourceBatch, Split, SplitReader

FORMATS = ("parquet", "csv", "ndjson", "ipc")
SUFFIXES = {"parquet": (".parquet", ".pq"), "csv": (".csv", ".csv.gz", ".tsv"),
            "ndjson": (".ndjson", ".jsonl", ".json"), "ipc": (".arrow", ".ipc", ".feather")}
ROWS_PER_SPLIT = 1_000_000
INFER_BYTES = 1 << 20
RAW_LIMIT = 4096


def _open_bytes(url: str, storage_options: dict[str, Any] | None) -> bytes:
    fs, path = filesystem(url, storage_options)
    try:
        with fs.open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError as exc:
        msg = f"file {url!r} disappeared after the run started"
        raise SourceError(msg) from exc


def _compatible(found: pl.DataType, wanted: pl.DataType) -> bool:
    if found == wanted:
        return True
    if found.is_numeric() and wanted.is_numeric():
        return True
    if found.is_temporal() and wanted.is_temporal():
        return True
    return found in (pl.String, pl.Categorical) and wanted in (pl.String, pl.Categorical)


class FileSource(Source):
    """Bounded files of one format: a path, a directory, a glob or a list of them."""

    def __init__(self, fmt: str, path: str | Sequence[str], *, schema: Any = None,
                 storage_options: dict[str, Any] | None = None, on_error: str = "side_output",
                 options: dict[str, Any] | None = None, columns: list[str] | None = None) -> None:
        if fmt not in FORMATS:
            msg = f"unknown file format {fmt!r}; expected one of {FORMATS}"
            raise SourceError(msg)
        if on_error not in ("side_output", "raise"):
            msg = f"on_error must be 'side_output' or 'raise', got {on_error!r}"
            raise SourceError(msg)
        if not isinstance(path, str) and not (isinstance(path, Sequence) and all(isinstance(p, str) for p in path)):
            msg = f"read_{fmt}() expects a path, glob or URL string (or a list of them), got {type(path).__name__}"
            raise SourceError(msg)
        self.format = fmt
        self.kind = f"read_{fmt}"
        self.paths = [path] if isinstance(path, str) else list(path)
        self.user_schema = to_polars_schema(schema) if schema is not None else None
        self.storage_options = storage_options
        self.on_error = on_error
        self.options = options or {}
        self.columns = columns
        self._files: list[str] | None = None
        self._full_schema: pl.Schema | None = None

    @property
    def schema_is_static(self) -> bool:
        return self.user_schema is not None and self.format in ("csv", "ndjson")

    # ------------------------------------------------------------------ plan time
    def files(self) -> list[str]:
        if self._files is None:
            self._files = resolve_files(self.paths, self.storage_options, suffixes=SUFFIXES[self.format])
        return self._files

    def full_schema(self) -> pl.Schema:
        """Every column of the files (the user's schema when given)."""
        if self._full_schema is None:
            if self.user_schema is not None and self.format in ("csv", "ndjson"):
                self._full_schema = self.user_schema
            else:
                found = self._infer_schema(self.files()[0])
                if self.user_schema is not None:
                    for name, wanted in self.user_schema.items():
                        if name not in found:
                            msg = (f"{self.kind}: the schema names column {name!r}, which {self.files()[0]!r} "
                                   f"does not have; its columns are {found.names()}")
                            raise SchemaError(msg)
                        if not _compatible(found[name], wanted):
                            msg = (f"{self.kind}: column {name!r} is {found[name]} in {self.files()[0]!r}, "
                                   f"but the schema says {wanted}; fix the schema or cast after reading")
                            raise SchemaError(msg)
                    found = self.user_schema
                self._full_schema = found
        return self._full_schema

    def schema(self) -> pl.Schema:
        full = self.full_schema()
        if self.columns is None:
            return full
        return pl.Schema({c: full[c] for c in self.columns})

    def _infer_schema(self, url: str) -> pl.Schema:
        fs, path = filesystem(url, self.storage_options)
        try:
            if self.format == "parquet":
                with fs.open(path, "rb") as handle:
                    return pl.DataFrame(pq.read_schema(handle).empty_table()).schema
            if self.format == "ipc":
                with fs.open(path, "rb") as handle:
                    return pl.DataFrame(_ipc_reader(handle).schema.empty_table()).schema
            with fs.open(path, "rb") as handle:
                head = handle.read(INFER_BYTES)
            if len(head) == INFER_BYTES and b"\n" in head:
                head = head[: head.rindex(b"\n") + 1]
            if self.format == "csv":
                return pl.read_csv(head, has_header=self.options.get("has_header", True),
                                   separator=self.options.get("separator", ","), infer_schema_length=10_000,
                                   truncate_ragged_lines=True).schema
            return pl.read_ndjson(_good_json_lines(head), infer_schema_length=10_000).schema
        except (OSError, pa.ArrowInvalid, pl.exceptions.PolarsError) as exc:
            msg = f"{self.kind}: cannot read the schema of {url!r}: {str(exc).splitlines()[0]}; is it a {self.format} file?"
            raise SourceError(msg) from exc

    def with_columns_pruned(self, columns: list[str]) -> FileSource:
        clone = FileSource(self.format, self.paths, schema=self.user_schema, storage_options=self.storage_options,
                           on_error=self.on_error, options=self.options, columns=columns)
        clone._files, clone._full_schema = self._files, self._full_schema
        return clone

    # ------------------------------------------------------------------ coordinator
    def discover_splits(self) -> list[Split]:
        splits = []
        for url in self.files():
            if self.format != "parquet":
                splits.append(Split(url, {"url": url}))
                continue
            fs, path = filesystem(url, self.storage_options)
            with fs.open(path, "rb") as handle:
                meta = pq.ParquetFile(handle).metadata
            group: list[int] = []
            rows = 0
            for index in range(meta.num_row_groups):
                group.append(index)
                rows += meta.row_group(index).num_rows
                if rows >= ROWS_PER_SPLIT or index == meta.num_row_groups - 1:
                    splits.append(Split(f"{url}#rg{group[0]}-{group[-1]}", {"url": url, "row_groups": group, "rows": rows}))
                    group, rows = [], 0
        return splits

    # ------------------------------------------------------------------ worker
    def open_reader(self, split: Split, position: Any | None, *, batch_size: int | None) -> SplitReader:
        return _FileReader(self, split, int(position or 0), batch_size)

    def describe(self) -> str:
        shown = ", ".join(repr(p) for p in self.paths[:3]) + (" ..." if len(self.paths) > 3 else "")
        return f"{self.kind} {shown}"

    def __getstate__(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _ipc_reader(handle: Any) -> Any:
    data = handle.read()
    try:
        return pa.ipc.open_file(pa.BufferReader(data))
    except pa.ArrowInvalid:
        return pa.ipc.open_stream(pa.BufferReader(data))


def _good_json_lines(payload: bytes) -> bytes:
    """Lines of ``payload`` that parse as JSON objects (for schema inference only)."""
    good = []
    for line in payload.splitlines():
        if not line.strip():
            continue
        try:
            if isinstance(json.loads(line), dict):
                good.append(line)
        except ValueError:
            continue
    return b"\n".join(good) + b"\n"


def _line_offsets(payload: bytes) -> tuple[list[bytes], np.ndarray]:
    lines = payload.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    lengths = np.fromiter((len(x) + 1 for x in lines), dtype=np.int64, count=len(lines))
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if len(lines) else np.zeros(0, dtype=np.int64)
    return lines, starts


class _FileReader(SplitReader):
    def __init__(self, source: FileSource, split: Split, skip: int, batch_size: int | None) -> None:
        self.source = source
        self.split = split
        self.skip = skip
        self.batch_size = batch_size
        self.url = split.info["url"]

    def batches(self) -> Iterator[SourceBatch]:
        source = self.source
        try:
            if source.format == "parquet":
                data, malformed = self._read_parquet(), None
            elif source.format == "ipc":
                data, malformed = self._read_ipc(), None
            else:
                payload = _open_bytes(self.url, source.storage_options)
                data, malformed = self._parse_text(payload)
        except SourceError:
            raise
        except (OSError, pa.ArrowInvalid, pl.exceptions.PolarsError) as exc:
            msg = f"{source.kind}: cannot read {self.url!r}: {str(exc).splitlines()[0]}"
            raise SourceError(msg) from exc
        data = self._conform(data)
        # Records of this split: malformed rows first (they come with the first batch), then data.
        bad = 0 if malformed is None else malformed.height
        done = self.skip
        if done <= bad and malformed is not None and malformed.height:
            first_bad = malformed.slice(done)
        else:
            first_bad = None
        start = max(0, done - bad)
        size = self.batch_size or max(1, data.height)
        first = True
        offset = start
        while offset < data.height or first:
            length = min(size, data.height - offset)
            chunk = data.slice(offset, length) if length > 0 else None
            offset += max(length, 0)
            yield SourceBatch(chunk, bad + offset, first_bad if first else None)
            first = False

    def _conform(self, data: pl.DataFrame) -> pl.DataFrame:
        wanted = self.source.schema()
        if data.schema == wanted:
            return data
        missing = [c for c in wanted.names() if c not in data.columns]
        if missing:
            msg = f"{self.source.kind}: file {self.url!r} has no column {missing[0]!r}; its columns are {data.columns}"
            raise SchemaError(msg)
        try:
            return data.select([pl.col(c).cast(t) for c, t in wanted.items()])
        except pl.exceptions.PolarsError as exc:
            msg = f"{self.source.kind}: file {self.url!r} does not match the schema: {str(exc).splitlines()[0]}"
            raise SchemaError(msg) from exc

    def _read_parquet(self) -> pl.DataFrame:
        fs, path = filesystem(self.url, self.source.storage_options)
        with fs.open(path, "rb") as handle:
            table = pq.ParquetFile(handle).read_row_groups(self.split.info["row_groups"], columns=self.source.columns)
        return pl.DataFrame(pl.from_arrow(table))

    def _read_ipc(self) -> pl.DataFrame:
        fs, path = filesystem(self.url, self.source.storage_options)
        with fs.open(path, "rb") as handle:
            reader = _ipc_reader(handle)
            table = reader.read_all()
        frame = pl.DataFrame(pl.from_arrow(table))
        return frame.select(self.source.columns) if self.source.columns else frame

    # ---------------------------------------------------------------- CSV / NDJSON
    def _parse_text(self, payload: bytes) -> tuple[pl.DataFrame, pl.DataFrame | None]:
        schema = self.source.full_schema()
        try:
            return self._fast(payload, schema), None
        except pl.exceptions.PolarsError as exc:
            if self.source.on_error == "raise":
                msg = f"{self.source.kind}: cannot parse {self.url!r}: {str(exc).splitlines()[0]}"
                raise SourceError(msg) from exc
            return self._slow(payload, schema)

    def _fast(self, payload: bytes, schema: pl.Schema) -> pl.DataFrame:
        columns = self.source.columns
        if self.source.format == "csv":
            opts = self.source.options
            frame = pl.read_csv(payload, has_header=opts.get("has_header", True), separator=opts.get("separator", ","),
                                schema=schema if not opts.get("has_header", True) else None,
                                schema_overrides=schema if opts.get("has_header", True) else None,
                                infer_schema_length=0, raise_if_empty=False)
            if opts.get("has_header", True):
                unknown = [c for c in frame.columns if c not in schema]
                if frame.width != len(schema) or unknown:
                    raise pl.exceptions.ComputeError(f"header {frame.columns} does not match the schema {schema.names()}")
        else:
            if not payload.strip():
                return pl.DataFrame(schema=schema)
            frame = pl.read_ndjson(payload, schema=schema)
        return frame.select(columns) if columns else frame

    def _slow(self, payload: bytes, schema: pl.Schema) -> tuple[pl.DataFrame, pl.DataFrame]:
        lines, starts = _line_offsets(payload)
        good: list[Any] = []
        bad: list[tuple[int, int, str, str]] = []  # offset, line number, reason, raw
        if self.source.format == "csv":
            opts = self.source.options
            first = 1 if opts.get("has_header", True) else 0
            width = len(schema)
            for number in range(first, len(lines)):
                raw = lines[number].rstrip(b"\r")
                if not raw.strip():
                    continue
                text = raw.decode("utf-8", errors="replace")
                fields = next(csv.reader([text], delimiter=opts.get("separator", ",")), [])
                if len(fields) != width:
                    bad.append((int(starts[number]), number + 1, f"expected {width} fields, found {len(fields)}", text))
                    continue
                good.append((number, fields))
            strings = pl.DataFrame([[f[i] for _, f in good] for i in range(width)] if good else None,
                                   schema=dict.fromkeys(schema.names(), pl.String), orient="col")
            strings = strings.with_columns([pl.when(pl.col(c) == "").then(None).otherwise(pl.col(c)).alias(c) for c in schema.names()])
            line_numbers = [n for n, _ in good]
        else:
            rows = []
            line_numbers = []
            for number, raw in enumerate(lines):
                if not raw.strip():
                    continue
                text = raw.decode("utf-8", errors="replace")
                try:
                    value = json.loads(raw)
                except ValueError as exc:
                    bad.append((int(starts[number]), number + 1, f"invalid JSON: {exc}", text))
                    continue
                if not isinstance(value, dict):
                    bad.append((int(starts[number]), number + 1, f"expected a JSON object, found {type(value).__name__}", text))
                    continue
                rows.append({k: (json.dumps(v) if isinstance(v, dict | list) else (None if v is None else str(v))) for k, v in value.items()})
                line_numbers.append(number)
            strings = pl.DataFrame(rows, schema=dict.fromkeys(schema.names(), pl.String)) if rows else pl.DataFrame(schema=dict.fromkeys(schema.names(), pl.String))
        # Cast column by column; a value that does not cast makes its row malformed.
        cast_exprs = []
        failed = pl.lit(False)
        reason = pl.lit(None, dtype=pl.String)
        for name, dtype in schema.items():
            target = pl.Boolean if dtype == pl.Boolean else dtype
            source_col = pl.col(name)
            if dtype == pl.Boolean:
                converted = source_col.str.to_lowercase().replace_strict({"true": True, "false": False, "1": True, "0": False}, default=None, return_dtype=pl.Boolean)
            elif dtype.is_temporal():
                converted = source_col.str.to_datetime(strict=False).cast(dtype, strict=False) if dtype != pl.Date else source_col.str.to_date(strict=False)
            else:
                converted = source_col.cast(target, strict=False)
            bad_value = source_col.is_not_null() & converted.is_null()
            reason = pl.when(reason.is_null() & bad_value).then(pl.format(f"column {name!r}: cannot read {{}} as {dtype}", source_col)).otherwise(reason)
            failed = failed | bad_value
            cast_exprs.append(converted.alias(name))
        checked = strings.with_columns(pl.Series("__line", line_numbers, dtype=pl.Int64)).with_columns(
            failed.alias("__failed"), reason.alias("__reason"))
        typed = checked.filter(~pl.col("__failed")).select(cast_exprs)
        type_errors = checked.filter(pl.col("__failed"))
        for row in type_errors.select("__line", "__reason").iter_rows():
            number, why = row
            bad.append((int(starts[number]), number + 1, why, lines[number].decode("utf-8", errors="replace")))
        bad.sort()
        if self.source.on_error == "raise" and bad:
            offset, number, why, _ = bad[0]
            msg = f"{self.source.kind}: {self.url!r} line {number} (byte {offset}): {why}"
            raise SourceError(msg)
        malformed = pl.DataFrame(
            {"source": [self.source.kind] * len(bad), "file": [self.url] * len(bad),
             "offset": [b[0] for b in bad], "line": [b[1] for b in bad],
             "reason": [b[2] for b in bad], "raw": [b[3][:RAW_LIMIT] for b in bad]},
            schema=MALFORMED_SCHEMA,
        )
        columns = self.source.columns
        return (typed.select(columns) if columns else typed), malformed
