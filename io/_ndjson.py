"""NDJSON: one file's bytes into good rows and malformed rows.

Fast path: one ``pl.read_ndjson`` call with the schema fixed. Integers narrower than 64 bits
and Float32 are read wide and cast (polars' JSON reader panics on narrow types), Datetime and
Date are read as text and parsed by Arrow. polars refuses the whole file on a bad line, so
a clean file is exactly one that parses.

Slow path: lines are split with numpy; a line that is not UTF-8 or not an object is
malformed. ``str.json_path_match`` tells the JSON lines (vectorized); each line it refuses
is put to polars' reader alone (Python per bad line only), so the lines that are good do not
depend on the path taken: polars reads nesting up to :data:`MAX_DEPTH` levels where
``json_path_match`` stops at 128. The rest are parsed typed (a value of the wrong type
becomes null) and as text, and a value present as text but null when typed has the wrong
type. Whitespace-only lines are not records.

Reasons never recurse: a line nested deeper than :data:`MAX_DEPTH` levels is measured with
numpy ("nesting deeper than 1024 levels"), and a number polars' reader cannot hold (an
integer beyond 128 bits, a float beyond 1.8e308: it refuses the whole line, whatever the
column's type) is named with its column ("does not fit in Int64"; for a String or Float64
column: write it as a JSON string to keep it).
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from arrowflow.errors import SourceError
from arrowflow.io._fs import first_line
from arrowflow.io._text import (
    Parsed,
    checked_columns,
    empty_frame,
    finish,
    first_bad_value,
    is_blank,
    parse_in_pieces,
    parse_temporal,
    read_as_text,
    split_lines,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

    from polars._typing import PolarsDataType  # a dtype instance or class (pl.String)

_WIDE = {
    pl.Int8: pl.Int64,
    pl.Int16: pl.Int64,
    pl.Int32: pl.Int64,
    pl.UInt8: pl.Int64,
    pl.UInt16: pl.Int64,
    pl.UInt32: pl.Int64,
    pl.Float32: pl.Float64,
}
_COUNT = "__rows"
_PANIC: type[Exception] = getattr(pl.exceptions, "PanicException", None) or type(
    "NoPanic", (Exception,), {}
)


def read_type(dtype: pl.DataType) -> PolarsDataType:
    """The type polars' JSON reader is asked for, before the cast to ``dtype``."""
    if read_as_text(dtype) or dtype == pl.Categorical or isinstance(dtype, pl.Enum):
        return pl.String
    return next((wide for narrow, wide in _WIDE.items() if dtype == narrow), dtype)


MAX_DEPTH = (
    1024  # the nesting polars' JSON reader (simd-json) accepts; one level more it refuses the line
)
_NUMBER_CHARS = frozenset(b"0123456789+-.eE")
_AT_CHARACTER = re.compile(r"at character (\d+)")
_KEY_BEFORE = re.compile(rb'"((?:[^"\\]|\\.)*)"\s*:\s*$')
_BEYOND = (
    "is beyond what the JSON reader holds (integers of up to 128 bits, floats up to 1.8e308), so polars "
    "cannot read the line"
)


def nesting_depth(raw: bytes, limit: int) -> int | None:
    """How deep arrays and objects nest in one JSON text, when deeper than ``limit``; else None.

    Vectorized (numpy over the line's bytes): brackets inside strings do not count, a quote
    after an odd run of backslashes is escaped. A line with at most ``limit`` brackets is
    answered without looking further.
    """
    buffer = np.frombuffer(raw, dtype=np.uint8)
    opening = (buffer == ord("[")) | (buffer == ord("{"))
    if int(np.count_nonzero(opening)) <= limit:
        return None
    brackets = np.flatnonzero(opening | (buffer == ord("]")) | (buffer == ord("}")))
    quotes = np.flatnonzero(buffer == ord('"'))
    backslashes = np.flatnonzero(buffer == ord("\\"))
    if len(quotes) and len(
        backslashes
    ):  # drop the escaped quotes: an odd run of backslashes before them
        breaks = np.flatnonzero(np.diff(backslashes) != 1)
        run_starts = backslashes[np.concatenate([[0], breaks + 1])]
        run_ends = backslashes[np.concatenate([breaks, [len(backslashes) - 1]])]
        run = np.minimum(np.searchsorted(run_ends, quotes - 1), len(run_ends) - 1)
        length = np.where(run_ends[run] == quotes - 1, run_ends[run] - run_starts[run] + 1, 0)
        quotes = quotes[length % 2 == 0]
    if len(quotes):
        brackets = brackets[np.searchsorted(quotes, brackets, side="right") % 2 == 0]
    steps = np.where(opening[brackets], 1, -1)
    depth = int(np.cumsum(steps).max(initial=0))
    return depth if depth > limit else None


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {list: "an array", str: "a string", bool: "a boolean", dict: "an object"}.get(
        type(value), "a number"
    )


def _syntax(raw: bytes) -> tuple[str | None, dict | None]:
    """Why a line (valid UTF-8) cannot be a row: nested too deep, not JSON, not an object; or
    (None, the object) when it may be one (the object is None when too deep for Python's
    parser: polars' reader decides then). Never recurses past Python's limit."""
    depth = nesting_depth(raw, MAX_DEPTH)
    if depth is not None:
        return f"nesting deeper than {MAX_DEPTH} levels ({depth} found)", None
    try:
        value = json.loads(raw)
    except RecursionError:
        return None, None
    except ValueError as exc:
        return f"invalid JSON: {exc}", None
    if not isinstance(
        value, dict
    ):  # polars reads a lone ``null`` line as a row of nulls: say it here
        return f"expected a JSON object, found {_kind(value)}", None
    return None, value


class NdjsonFile:
    def __init__(
        self,
        payload: Any,
        *,
        url: str,
        kind: str,
        schema: pl.Schema,
        columns: list[str],
        on_error: str,
        path: str | None = None,
    ) -> None:
        self.payload = payload  # bytes, or a memory map of a local file (see open_payload)
        self.path = path
        self.url, self.kind = url, kind
        self.schema, self.columns = schema, columns
        self.on_error = on_error

    def parse(self) -> Parsed:
        # Every key of the declared schema that might not parse is parsed and checked, whichever
        # columns the flow reads: whether a line is malformed must not depend on the projection.
        self.wanted = pl.Schema(
            {c: self.schema[c] for c in checked_columns(self.schema, self.columns)}
        )
        if is_blank(self.payload):
            return Parsed(empty_frame(pl.Schema({c: self.schema[c] for c in self.columns})), 0)
        self.read_types = {c: read_type(t) for c, t in self.wanted.items()} or {_COUNT: pl.String}
        fast = self._fast()
        return fast if fast is not None else self._slow()

    def _read(
        self, payload: Any, schema: Mapping[str, PolarsDataType], *, ignore_errors: bool = False
    ) -> pl.DataFrame:
        if payload is self.payload and self.path is not None:
            payload = self.path  # polars reads a local file about twice as fast as bytes
        try:
            return pl.read_ndjson(payload, schema=schema, ignore_errors=ignore_errors)
        except _PANIC as exc:  # a type polars' JSON reader cannot build
            msg = (
                f"{self.kind}: polars cannot read {self.url!r} with the schema {schema}: {exc}; "
                f"read the column with a simpler type (e.g. pl.String) and convert it after reading"
            )
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

    def _refused(self, raw: bytes) -> str | None:
        """Why polars' reader refuses this one line (valid UTF-8), or None when it reads it."""
        why, value = _syntax(raw)
        if why is not None:
            return why
        try:
            self._read(raw + b"\n", self.read_types, ignore_errors=True)
        except pl.exceptions.PolarsError as exc:
            return self._reader_reason(raw, exc, value)
        return None

    def _why_refused(self, raw: bytes, exc: Exception) -> str:
        """A reason for a line polars could not read, in the user's terms (the column, the number)."""
        why, value = _syntax(raw)
        return why if why is not None else self._reader_reason(raw, exc, value)

    def _reader_reason(self, raw: bytes, exc: Exception, value: dict | None) -> str:
        message = first_line(exc)
        if "InvalidNumber" in message:
            return self._number_reason(raw, message, value)
        return f"cannot parse the record: {message[:300]}"

    def _number_reason(self, raw: bytes, message: str, value: dict | None) -> str:
        """A number polars' reader cannot hold: name its column and say whether its type could."""
        found = _AT_CHARACTER.search(message)
        at = int(found.group(1)) if found else -1
        if not 0 <= at < len(raw) or raw[at] not in _NUMBER_CHARS:
            return f"a number in the line {_BEYOND}: {message[:200]}"
        start, stop = at, at
        while start > 0 and raw[start - 1] in _NUMBER_CHARS:
            start -= 1
        while stop < len(raw) and raw[stop] in _NUMBER_CHARS:
            stop += 1
        token = raw[start:stop].decode()
        digits = sum(c.isdigit() for c in token)
        shown = f"{token[:6]}...{token[-4:]} ({digits} digits)" if len(token) > 24 else token
        key_match = _KEY_BEFORE.search(raw[:start])
        key = json.loads(b'"' + key_match.group(1) + b'"') if key_match else None
        top_level = isinstance(value, dict) and key in value and isinstance(value[key], int | float)
        if not top_level or key is None:
            return f"the number {shown} at byte {start} {_BEYOND}"
        dtype = self.schema.get(key)
        if dtype is None:
            return f"key {key!r} (not in the schema): the number {shown} {_BEYOND}"
        if dtype.is_integer():
            return f"column {key!r}: the number {shown} does not fit in {dtype}"
        return (
            f"column {key!r}: the number {shown} {_BEYOND}, not even as {dtype}; "
            f"write it as a JSON string to keep it"
        )

    def _slow(self) -> Parsed:
        records = split_lines(self.payload)
        invalid = records.invalid_utf8()
        valid = np.flatnonzero(~invalid)
        texts = records.texts(~invalid)
        blank = np.zeros(len(records), dtype=bool)
        blank[valid] = (texts.str.strip_chars() == "").to_numpy()
        positions = np.flatnonzero(~blank)  # records: every line that is not blank
        # polars' str.json_path_match (serde_json) tells the lines that are JSON, vectorized; it
        # refuses some that polars' reader accepts (nesting of 128 to 1024 levels), so each line
        # it refuses is put to the reader itself before it is called malformed.
        checked = texts.str.json_path_match("$")
        not_json = np.zeros(len(records), dtype=bool)
        not_json[valid] = checked.is_null().to_numpy()
        not_json &= ~blank
        not_object = np.zeros(len(records), dtype=bool)
        not_object[valid] = (~checked.str.starts_with("{")).fill_null(False).to_numpy()

        reasons: dict[int, str] = {}
        rows_invalid = invalid[positions]
        rows_not_object = not_object[positions]
        rows_not_json = not_json[positions]
        for row in np.flatnonzero(rows_invalid).tolist():
            reasons[row] = "not valid UTF-8"
        for row in np.flatnonzero(rows_not_object | rows_not_json).tolist():
            at = int(positions[row])
            raw = bytes(self.payload[int(records.starts[at]) : int(records.ends[at])])
            why = self._refused(raw)
            if why is not None:
                reasons[row] = why
        candidates = np.setdiff1d(
            np.arange(len(positions)), np.fromiter(reasons, dtype=np.int64, count=len(reasons))
        )

        def describe(row: int, exc: Exception) -> str:
            at = int(positions[row])
            return self._why_refused(
                bytes(self.payload[int(records.starts[at]) : int(records.ends[at])]), exc
            )

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
            if not self.wanted:  # only the line count is read (nothing to check)
                return pl.DataFrame({"__bad": pl.Series([None] * len(rows), dtype=pl.String)})
            typed = self._typed(raw, chunk, strict=False)
            assert typed is not None
            bad = first_bad_value(typed, text, dict(self.wanted))
            return typed.select(self.wanted.names()).with_columns(bad.alias("__bad"))

        good_rows, frames = parse_in_pieces(candidates, parse, reasons, describe)
        frame = (
            pl.concat(frames, how="vertical")
            if frames
            else pl.DataFrame(schema={**dict(self.wanted), "__bad": pl.String})
        )
        value_bad = frame["__bad"].is_not_null().to_numpy()
        for row, why in zip(
            good_rows[value_bad].tolist(),
            frame.filter(pl.col("__bad").is_not_null())["__bad"].to_list(),
            strict=True,
        ):
            reasons[row] = why
        frame = frame.filter(pl.col("__bad").is_null()).drop("__bad")
        good_rows = good_rows[~value_bad]
        return finish(self, frame, good_rows, records, positions, reasons)
