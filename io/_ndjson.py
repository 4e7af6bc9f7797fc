"""NDJSON: one file's bytes into good rows and malformed rows.

Fast path: one ``pl.read_ndjson`` call with the schema fixed. Integers narrower than 64 bits
and Float32 are read wide and cast (polars' JSON reader panics on narrow types), Datetime and
Date are read as text and parsed by Arrow. polars refuses the whole file on a bad line, so
a clean file is exactly one that parses.

Slow path: lines are split with numpy; a line that is not UTF-8, not JSON
(``str.json_path_match`` says so, vectorized) or not an object is malformed; the rest are
parsed typed (a value of the wrong type becomes null) and as text, and a value present as
text but null when typed has the wrong type. Whitespace-only lines are not records.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import polars as pl

from arrowflow.errors import SourceError
from arrowflow.io._text import (
    Parsed,
    empty_frame,
    finish,
    first_bad_value,
    is_blank,
    parse_in_pieces,
    parse_temporal,
    read_as_text,
    split_lines,
)

_WIDE = {pl.Int8: pl.Int64, pl.Int16: pl.Int64, pl.Int32: pl.Int64, pl.UInt8: pl.Int64,
         pl.UInt16: pl.Int64, pl.UInt32: pl.Int64, pl.Float32: pl.Float64}
_COUNT = "__rows"
_PANIC = getattr(pl.exceptions, "PanicException", None) or type("NoPanic", (Exception,), {})


def read_type(dtype: pl.DataType) -> pl.DataType:
    """The type polars' JSON reader is asked for, before the cast to ``dtype``."""
    if read_as_text(dtype) or dtype == pl.Categorical or isinstance(dtype, pl.Enum):
        return pl.String
    return next((wide for narrow, wide in _WIDE.items() if dtype == narrow), dtype)


def _describe(raw: bytes) -> str:
    try:
        value = json.loads(raw)
    except ValueError as exc:
        return f"invalid JSON: {exc}"
    kind = "null" if value is None else {list: "an array", str: "a string", bool: "a boolean"}.get(
        type(value), "a number")
    return f"expected a JSON object, found {kind}"


class NdjsonFile:
    def __init__(self, payload: Any, *, url: str, kind: str, schema: pl.Schema, columns: list[str],
                 on_error: str, path: str | None = None) -> None:
        self.payload = payload  # bytes, or a memory map of a local file (see open_payload)
        self.path = path
        self.url, self.kind = url, kind
        self.schema, self.columns = schema, columns
        self.on_error = on_error

    def parse(self) -> Parsed:
        # Every key of the declared schema is parsed and checked, whichever columns the flow
        # reads: whether a line is malformed must not depend on the projection.
        self.wanted = self.schema
        if is_blank(self.payload):
            return Parsed(empty_frame(pl.Schema({c: self.schema[c] for c in self.columns})), 0)
        self.read_types = {c: read_type(t) for c, t in self.wanted.items()} or {_COUNT: pl.String}
        fast = self._fast()
        return fast if fast is not None else self._slow()

    def _read(self, payload: Any, schema: dict[str, pl.DataType], *, ignore_errors: bool = False) -> pl.DataFrame:
        if payload is self.payload and self.path is not None:
            payload = self.path  # polars reads a local file about twice as fast as bytes
        try:
            return pl.read_ndjson(payload, schema=schema, ignore_errors=ignore_errors)
        except _PANIC as exc:  # a type polars' JSON reader cannot build
            msg = (f"{self.kind}: polars cannot read {self.url!r} with the schema {schema}: {exc}; "
                   f"read the column with a simpler type (e.g. pl.String) and convert it after reading")
            raise SourceError(msg) from None

    def _typed(self, frame: pl.DataFrame, payload: Any, *, strict: bool) -> pl.DataFrame | None:
        """Cast what the JSON reader gave to the wanted types; None when strict and a value
        does not fit (the caller then takes the slow path)."""
        converted = []
        for name, dtype in self.wanted.items():
            column = frame[name]
            if column.dtype == dtype:
                continue
            if read_as_text(dtype):
                values = parse_temporal(column, dtype)
                if values is None:  # a value Arrow refuses: polars decides, with its rules
                    try:
                        values = self._read(payload, {name: dtype}, ignore_errors=not strict)[name]
                    except pl.exceptions.PolarsError:
                        return None
                converted.append(values)
                continue
            try:
                converted.append(column.cast(dtype, strict=strict))
            except pl.exceptions.PolarsError:
                return None
        return frame.with_columns(converted) if converted else frame

    def _output(self, frame: pl.DataFrame) -> pl.DataFrame:
        return frame.select(self.columns) if self.columns else pl.DataFrame(height=frame.height)

    def _fast(self) -> Parsed | None:
        try:
            frame = self._read(self.payload, self.read_types)
        except pl.exceptions.PolarsError:
            return None
        typed = self._typed(frame, self.payload, strict=True)
        if typed is None:
            return None
        return Parsed(self._output(typed), typed.height)

    def _slow(self) -> Parsed:
        records = split_lines(self.payload)
        invalid = records.invalid_utf8()
        valid = np.flatnonzero(~invalid)
        texts = records.texts(~invalid)
        blank = np.zeros(len(records), dtype=bool)
        blank[valid] = (texts.str.strip_chars() == "").to_numpy()
        positions = np.flatnonzero(~blank)  # records: every line that is not blank
        checked = texts.str.json_path_match("$")
        not_object = np.zeros(len(records), dtype=bool)
        not_object[valid] = (checked.is_null() | ~checked.str.starts_with("{")).fill_null(True).to_numpy()
        not_object &= ~blank

        reasons: dict[int, str] = {}
        rows_invalid = invalid[positions]
        rows_not_object = not_object[positions]
        for row in np.flatnonzero(rows_invalid).tolist():
            reasons[row] = "not valid UTF-8"
        for row in np.flatnonzero(rows_not_object).tolist():
            at = int(positions[row])
            reasons[row] = _describe(self.payload[int(records.starts[at]):int(records.ends[at])])
        candidates = np.flatnonzero(~(rows_invalid | rows_not_object))
        text_types = dict.fromkeys(self.read_types, pl.String)

        def parse(rows: np.ndarray) -> pl.DataFrame:
            keep = np.zeros(len(records), dtype=bool)
            keep[positions[rows]] = True
            chunk = records.select(keep)
            raw = self._read(chunk, self.read_types, ignore_errors=True)
            text = self._read(chunk, text_types, ignore_errors=True)
            if raw.height != len(rows) or text.height != len(rows):
                msg = f"{len(rows)} lines gave {raw.height} rows"
                raise ValueError(msg)
            typed = self._typed(raw, chunk, strict=False)
            assert typed is not None
            bad = first_bad_value(typed, text, dict(self.wanted))
            return typed.select(self.wanted.names()).with_columns(bad.alias("__bad"))

        good_rows, frames = parse_in_pieces(candidates, parse, reasons)
        frame = pl.concat(frames, how="vertical") if frames else pl.DataFrame(
            schema={**dict(self.wanted), "__bad": pl.String})
        value_bad = frame["__bad"].is_not_null().to_numpy()
        for row, why in zip(good_rows[value_bad].tolist(),
                            frame.filter(pl.col("__bad").is_not_null())["__bad"].to_list(), strict=True):
            reasons[row] = why
        frame = frame.filter(pl.col("__bad").is_null()).drop("__bad")
        good_rows = good_rows[~value_bad]
        return finish(self, frame, good_rows, records, positions, reasons)
