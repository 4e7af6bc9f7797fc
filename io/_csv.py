"""CSV: one file's bytes into good rows and malformed rows.

Fast path (a clean file): one ``pl.read_csv`` call with the schema fixed (no inference), every
column of the declared schema (not only those the flow reads: a row is malformed when any
declared column fails to parse, whatever the projection) plus the file's last column, then a
check that no row was short:
polars fills a short row's missing fields with nulls, so when the last column has no null no
row was short; when it has some, the file's separators and newlines are counted (vectorized)
and must add up to exactly ``width`` fields per line. Datetime and Date columns are read as
text and parsed by Arrow (see :func:`arrowflow.io._text.parse_temporal`).

Slow path (a file polars refuses, or whose counts do not add up): :func:`split_records` finds
every record with its fields, byte offset and line; records of the wrong width or with bytes
that are not UTF-8 are malformed; the rest are parsed by polars twice, typed (values that do
not parse become null) and as text, and a value that is present in the text but null when
typed is a value of the wrong type. A chunk of records polars still cannot read is bisected
down to the records at fault, so one odd record costs ``log n`` parses, not a row loop.

Blank lines are not records, except in a one-column file where a blank line is a null value
(that is how polars writes a null there).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from arrowflow.errors import SchemaError, SourceError
from arrowflow.io._text import (
    Parsed,
    Records,
    checked_columns,
    contains,
    empty_frame,
    ends_with_newline,
    finish,
    first_bad_value,
    is_blank,
    parse_in_pieces,
    parse_temporal,
    read_as_text,
    split_csv_records,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

    from polars._typing import PolarsDataType  # a dtype instance or class (pl.String)

_FIELD_START = (ord("\n"), ord("\r"))


@dataclass(frozen=True)
class CsvOptions:
    has_header: bool = True
    separator: str = ","
    quote_char: str | None = '"'

    def validate(self) -> None:
        if not isinstance(self.separator, str) or len(self.separator.encode()) != 1:
            msg = f"read_csv(separator=...) must be a single one-byte character, got {self.separator!r}"
            raise SourceError(msg)
        if self.quote_char is not None and (
            not isinstance(self.quote_char, str) or len(self.quote_char.encode()) != 1
        ):
            msg = f"read_csv(quote_char=...) must be a single one-byte character or None, got {self.quote_char!r}"
            raise SourceError(msg)
        if self.separator in ("\n", "\r") or self.separator == self.quote_char:
            msg = (
                f"read_csv(separator={self.separator!r}) cannot be a newline or the quote character"
            )
            raise SourceError(msg)


def header(payload: str | bytes, options: CsvOptions) -> list[str]:
    """The column names in the file's first line (as polars names them)."""
    return pl.read_csv(
        payload,
        n_rows=0,
        has_header=True,
        separator=options.separator,
        quote_char=options.quote_char,
        infer_schema=False,
        raise_if_empty=False,
    ).columns


def infer_schema(head: bytes, options: CsvOptions) -> pl.Schema:
    return pl.read_csv(
        head,
        has_header=options.has_header,
        separator=options.separator,
        quote_char=options.quote_char,
        infer_schema_length=10_000,
        truncate_ragged_lines=True,
        raise_if_empty=False,
    ).schema


class CsvFile:
    """Parses one CSV file for a source: ``schema`` holds the source's columns and types,
    ``columns`` the ones to return (in that order)."""

    def __init__(
        self,
        payload: Any,
        *,
        url: str,
        kind: str,
        schema: pl.Schema,
        columns: list[str],
        options: CsvOptions,
        on_error: str,
        path: str | None = None,
    ) -> None:
        self.payload = payload  # bytes, or a memory map of a local file (see open_payload)
        self.path = path
        self.url, self.kind = url, kind
        self.schema, self.columns = schema, columns
        self.options = options
        self.on_error = on_error

    # ------------------------------------------------------------------------ entry
    def parse(self) -> Parsed:
        wanted = pl.Schema({c: self.schema[c] for c in self.columns})
        if is_blank(self.payload):
            return Parsed(empty_frame(wanted), 0)
        self.names = self._names()
        self.width = len(self.names)
        # Every column of the declared schema that might not parse is parsed and checked,
        # whichever the flow reads: whether a row is malformed must not depend on the projection
        # (the columns not read are dropped after the check).
        checked = checked_columns(self.schema, self.columns)
        self.need = [c for c in self.names if c in checked]
        self.read = list(self.need) or [self.names[-1]]
        if self.width > 1 and self.names[-1] not in self.read:
            self.read.append(self.names[-1])  # read it to see short rows
        fast = self._fast(self.schema)
        return fast if fast is not None else self._slow(self.schema)

    def _names(self) -> list[str]:
        if not self.options.has_header:
            return self.schema.names()
        names = header(self.path or self.payload, self.options)
        missing = [c for c in self.schema.names() if c not in names]
        if missing:
            shown = ", ".join(names[:20]) + (" ..." if len(names) > 20 else "")
            msg = (
                f"{self.kind}: {self.url!r} has no column {missing[0]!r}; its header is [{shown}]; "
                f"fix schema= or the file (a file without a header needs has_header=False)"
            )
            raise SchemaError(msg)
        return names

    def _read(
        self,
        payload: Any,
        dtypes: Mapping[str, PolarsDataType],
        columns: list[str],
        *,
        ignore_errors: bool = False,
    ) -> pl.DataFrame:
        options = self.options
        if payload is self.payload and self.path is not None:
            payload = self.path  # polars reads a local file faster than a copy in memory
        schema = {name: dtypes.get(name, pl.String) for name in self.names}
        with warnings.catch_warnings():
            # polars warns about chunks it had to re-split; the caller checks the row count.
            warnings.simplefilter("ignore", UserWarning)
            return pl.read_csv(
                payload,
                has_header=options.has_header,
                separator=options.separator,
                quote_char=options.quote_char,
                schema=schema,
                columns=[self.names.index(c) for c in columns],
                raise_if_empty=False,
                ignore_errors=ignore_errors,
            )

    def _output(self, frame: pl.DataFrame, height: int) -> pl.DataFrame:
        if not self.columns:
            return pl.DataFrame(height=height)
        return frame.select(self.columns)

    # ------------------------------------------------------------------------ fast path
    def _fast(self, declared: pl.Schema) -> Parsed | None:
        text_types = {
            c: (pl.String if read_as_text(declared[c]) else declared[c]) for c in self.need
        }
        try:
            frame = self._read(self.payload, text_types, self.read)
        except pl.exceptions.PolarsError:
            return None
        if (
            self.width > 1
            and frame[self.names[-1]].null_count()
            and not self._every_row_whole(frame)
        ):
            return None
        temporal = [c for c in self.need if read_as_text(declared[c])]
        parsed = {c: parse_temporal(frame[c], declared[c]) for c in temporal}
        if any(series is None for series in parsed.values()):
            try:  # values Arrow's ISO 8601 parser refuses: let polars parse them, with its rules
                frame = self._read(self.payload, {c: declared[c] for c in self.need}, self.read)
            except pl.exceptions.PolarsError:
                return None
        elif parsed:
            frame = frame.with_columns(list(parsed.values()))
        return Parsed(self._output(frame, frame.height), frame.height)

    def _every_row_whole(self, frame: pl.DataFrame) -> bool:
        """No row was short: the separators and newlines outside quoted fields add up to
        exactly ``width`` fields on every one of ``rows`` lines (vectorized counts)."""
        payload, options = self.payload, self.options
        data = pl.Series(np.frombuffer(payload, dtype=np.uint8))
        separators = int((data == ord(options.separator)).sum())
        newlines = int((data == ord("\n")).sum())
        if options.quote_char and contains(payload, options.quote_char.encode()):
            # Separators and newlines inside quoted fields are in the string values: count them
            # there. Text columns not read yet are read as text; a quoted separator in a
            # column typed as a number (not read) makes the counts differ: the slow path.
            unread = [
                c
                for c in self.names
                if c not in frame.columns
                and (
                    c not in self.schema
                    or self.schema[c] in (pl.String, pl.Categorical)
                    or read_as_text(self.schema[c])
                )
            ]
            try:
                extra = (
                    self._read(payload, {}, unread) if unread else pl.DataFrame(height=frame.height)
                )
            except pl.exceptions.PolarsError:
                return False
            texts = pl.concat([frame.select(pl.col(pl.String)), extra], how="horizontal")
            counted = texts.select(
                pl.sum_horizontal(
                    pl.all().str.count_matches(options.separator, literal=True).sum()
                ).alias("sep"),
                pl.sum_horizontal(pl.all().str.count_matches("\n", literal=True).sum()).alias("nl"),
            ).row(0)
            names = self.names if options.has_header else []
            separators -= int(counted[0] or 0) + sum(n.count(options.separator) for n in names)
            newlines -= int(counted[1] or 0) + sum(n.count("\n") for n in names)
        lines = newlines + (0 if ends_with_newline(payload) else 1)
        return separators == (self.width - 1) * lines and lines == frame.height + int(
            options.has_header
        )

    # ------------------------------------------------------------------------ slow path
    def _slow(self, declared: pl.Schema) -> Parsed:
        records = split_records(self.payload, self.options)
        first = 1 if self.options.has_header else 0
        positions = np.arange(first, len(records))
        if self.width > 1:
            positions = positions[~records.blank()[first:]]
        invalid = records.invalid_utf8()[positions]
        fields = (
            records.fields[positions]
            if records.fields is not None
            else np.ones(len(positions), dtype=np.int64)
        )
        wrong_width = (fields != self.width) & ~invalid
        candidates = ~(invalid | wrong_width)
        reasons: dict[int, str] = {}
        for index in np.flatnonzero(invalid).tolist():
            reasons[index] = "not valid UTF-8"
        for index in np.flatnonzero(wrong_width).tolist():
            reasons[index] = f"expected {self.width} fields, found {int(fields[index])}"

        prefix = b""
        if first and len(records):
            end = int(records.starts[1]) if len(records) > 1 else len(self.payload)
            prefix = self.payload[int(records.starts[0]) : end]
        typed_types = {c: declared[c] for c in self.need}
        text_types = {c: (pl.String if read_as_text(t) else t) for c, t in typed_types.items()}
        read = self.need or [self.names[0]]

        def parse(rows: np.ndarray) -> pl.DataFrame:
            keep = np.zeros(len(records), dtype=bool)
            keep[positions[rows]] = True
            chunk = records.select(keep, prefix)
            typed = self._read(chunk, text_types, read, ignore_errors=True)
            if typed.height != len(rows):
                msg = f"{len(rows)} records gave {typed.height} rows"
                raise ValueError(msg)
            if not self.need:
                return pl.DataFrame(height=len(rows))
            for name, dtype in typed_types.items():
                if read_as_text(dtype):
                    values = parse_temporal(typed[name], dtype)
                    if values is None:  # a value Arrow refuses: polars decides, value by value
                        values = self._read(chunk, {name: dtype}, [name], ignore_errors=True)[name]
                    typed = typed.with_columns(values)
            # A null may be a value that did not parse: read those columns again as text.
            nullable = {c: typed_types[c] for c in self.need if typed[c].null_count()}
            if not nullable:
                return typed.select(self.need).with_columns(
                    pl.lit(None, dtype=pl.String).alias("__bad")
                )
            text = self._read(chunk, {}, list(nullable))
            if text.height != len(rows):
                msg = f"{len(rows)} records gave {text.height} rows"
                raise ValueError(msg)
            bad = first_bad_value(typed, text, nullable)
            return typed.select(self.need).with_columns(bad.alias("__bad"))

        good_rows, frames = parse_in_pieces(np.flatnonzero(candidates), parse, reasons)
        frame = (
            pl.concat(frames, how="vertical")
            if frames
            else pl.DataFrame(schema={**{c: typed_types[c] for c in self.need}, "__bad": pl.String})
        )
        if self.need:
            value_bad = frame["__bad"].is_not_null().to_numpy()
            for row, why in zip(
                good_rows[value_bad].tolist(),
                frame.filter(pl.col("__bad").is_not_null())["__bad"].to_list(),
                strict=True,
            ):
                reasons[row] = why
            frame = frame.filter(pl.col("__bad").is_null()).drop("__bad")
            good_rows = good_rows[~value_bad]
        else:
            frame = pl.DataFrame(height=len(good_rows))
        return finish(self, frame, good_rows, records, positions, reasons)


def split_records(payload: Any, options: CsvOptions) -> Records:
    """Record boundaries and field counts. Quoting follows RFC 4180 as polars reads it: a quote
    opens a quoted field only at the start of a field; inside one, ``""`` is a literal quote."""
    quote = options.quote_char
    if not quote or not contains(payload, quote.encode()):
        return split_csv_records(payload, options.separator)
    buffer = np.frombuffer(payload, dtype=np.uint8)
    quotes = np.flatnonzero(buffer == ord(quote))
    separator = ord(options.separator)
    quoted = _quoted_by_parity(buffer, quotes, separator)
    if quoted is None:
        quoted = _quoted_by_scanning(buffer, quotes, separator, len(payload))
    return split_csv_records(payload, options.separator, quoted=quoted)


def _starts_field(buffer: np.ndarray, at: np.ndarray, separator: int) -> np.ndarray:
    before = buffer[np.maximum(at - 1, 0)]
    return (at == 0) | (before == separator) | np.isin(before, _FIELD_START)


def _quoted_by_parity(
    buffer: np.ndarray, quotes: np.ndarray, separator: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """Quoted fields when quotes simply alternate open/close (vectorized), else None.

    Alternating is exactly RFC 4180 when every quote that would open a field (the even ones)
    stands at the start of a field or right after the quote before it (the second quote of
    an escaped ``""``): then no quote is a literal character inside an unquoted field.
    """
    opens, closes = quotes[0::2], quotes[1::2]
    fine = _starts_field(buffer, opens, separator)
    fine[1:] |= opens[1:] - 1 == closes[: len(opens) - 1]
    if not fine.all():
        return None
    if len(closes) < len(opens):  # an unterminated quote runs to the end of the payload
        closes = np.append(closes, len(buffer))
    return opens, closes


def _quoted_by_scanning(
    buffer: np.ndarray, quotes: np.ndarray, separator: int, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """The general case (quotes inside unquoted fields): a loop over the quote characters only,
    never over rows, in the slow path only."""
    positions = quotes.tolist()
    at_start = _starts_field(buffer, quotes, separator).tolist()
    opens: list[int] = []
    closes: list[int] = []
    index, count = 0, len(positions)
    while index < count:
        if at_start[index]:
            close = index + 1
            while close + 1 < count and positions[close + 1] == positions[close] + 1:
                close += 2  # an escaped quote inside the field
            opens.append(positions[index])
            closes.append(positions[close] if close < count else size)
            index = close + 1
        else:
            index += 1  # a quote inside an unquoted field is a literal character
    return np.array(opens, dtype=np.int64), np.array(closes, dtype=np.int64)
