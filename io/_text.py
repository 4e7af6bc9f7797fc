"""Shared machinery of the text formats (CSV, NDJSON): records, malformed rows, temporal values.

What a text reader produces is a :class:`Parsed` file: the good rows, the malformed rows, and
for each of them its *record index* — its place among the file's records (rows that carry
data or should have: blank lines are not records, except in a one-column CSV where a blank
line is a null value). Positions count records, so a split reopened at a position skips
exactly the records, good or bad, that were already emitted, whichever columns are read.

The fast path parses a whole file with polars in one call and never loops over rows in
Python. A file with a bad row takes the slow path: :func:`split_records` finds record
boundaries with numpy (quote-aware for CSV), bad records are set aside, and the rest is parsed
by polars again, still vectorized; Python touches only the bad rows (to describe them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from arrowflow.errors import SourceError
from arrowflow.sources import MALFORMED_SCHEMA

RAW_LIMIT = 4096
_NEWLINE, _CR = 10, 13
_UTF8_CHUNK = 8 << 20


@dataclass
class Parsed:
    """One file's rows. ``data_records``/``malformed_records`` are sorted record indices;
    ``data_records is None`` means data row *i* is record *i* (no malformed rows)."""

    data: pl.DataFrame
    records: int
    data_records: np.ndarray | None = None
    malformed: pl.DataFrame | None = None
    malformed_records: np.ndarray | None = None

    def window(self, start: int, stop: int) -> tuple[pl.DataFrame, pl.DataFrame | None]:
        """Data and malformed rows of records ``[start, stop)``."""
        if self.data_records is None:
            data = self.data.slice(start, max(0, stop - start))
        else:
            lo, hi = np.searchsorted(self.data_records, [start, stop])
            data = self.data.slice(int(lo), int(hi - lo))
        bad = None
        if (
            self.malformed is not None
            and self.malformed_records is not None
            and len(self.malformed_records)
        ):
            lo, hi = np.searchsorted(self.malformed_records, [start, stop])
            if hi > lo:
                bad = self.malformed.slice(int(lo), int(hi - lo))
        return data, bad


def is_blank(payload: Any) -> bool:
    """True for an empty or whitespace-only payload (bytes or a memory map)."""
    head = payload[:4096]
    if head.strip():
        return False
    return not len(payload) or not bytes(payload).strip()


def contains(payload: Any, needle: bytes) -> bool:
    return payload.find(needle) >= 0


def ends_with_newline(payload: Any) -> bool:
    return payload[-1:] == b"\n"


def empty_frame(schema: pl.Schema, height: int = 0) -> pl.DataFrame:
    if not len(schema):
        return pl.DataFrame(height=height)
    return pl.DataFrame(schema=schema)


@dataclass
class Records:
    """Record boundaries in a payload. Record *i* occupies ``[starts[i], starts[i+1])`` with its
    terminator (the last one ends at the payload's end); its text is ``[starts[i], ends[i])``."""

    payload: bytes
    starts: np.ndarray
    ends: np.ndarray
    newlines: np.ndarray  # every newline of the payload, quoted ones too
    fields: np.ndarray | None = None  # CSV: fields per record (separators outside quotes + 1)

    def line(self, indices: np.ndarray) -> np.ndarray:
        """1-based line number of the first line of each record in ``indices``."""
        return np.searchsorted(self.newlines, self.starts[indices]) + 1

    def __len__(self) -> int:
        return len(self.starts)

    def blank(self) -> np.ndarray:
        """Records with no text at all (an empty line)."""
        return self.ends == self.starts

    def raw(self, index: int) -> str:
        start = int(self.starts[index])
        end = min(int(self.ends[index]), start + RAW_LIMIT)
        return self.payload[start:end].decode("utf-8", errors="replace")

    def invalid_utf8(self) -> np.ndarray:
        """Records holding bytes that are not UTF-8, checked a few MiB at a time (Python runs
        per chunk and per bad record, never per good row)."""
        bad = np.zeros(len(self), dtype=bool)
        view = memoryview(self.payload)
        position, size = 0, len(self.payload)
        while position < size:
            stop = min(size, position + _UTF8_CHUNK)
            if stop < size:  # end the chunk at a record boundary, so no character is cut
                after = int(np.searchsorted(self.starts, stop, side="left"))
                stop = int(self.starts[after]) if after < len(self) else size
                if stop <= position:
                    stop = size
            try:
                str(view[position:stop], "utf-8")
                position = stop
            except UnicodeDecodeError as exc:
                index = max(
                    int(np.searchsorted(self.starts, position + exc.start, side="right")) - 1, 0
                )
                bad[index] = True
                position = int(self.starts[index + 1]) if index + 1 < len(self) else size
        return bad

    def select(self, keep: np.ndarray, prefix: bytes = b"") -> bytes:
        """``prefix`` followed by the kept records (with their terminators), in order: one
        slice per run of kept records, so a file with few bad records costs one copy."""
        if prefix and not prefix.endswith(b"\n"):
            prefix += b"\n"
        edges = np.flatnonzero(np.diff(np.concatenate([[False], keep, [False]]).astype(np.int8)))
        bounds = np.append(self.starts, len(self.payload))
        view = memoryview(self.payload)
        runs = zip(bounds[edges[0::2]].tolist(), bounds[edges[1::2]].tolist(), strict=True)
        return b"".join([prefix, *(view[low:high] for low, high in runs)])

    def texts(self, keep: np.ndarray) -> pl.Series:
        """The kept records' text (terminator stripped), as a String Series. UTF-8 must be valid."""
        offsets = np.append(self.starts, len(self.payload)).astype(np.int64)
        array = pa.LargeBinaryArray.from_buffers(
            pa.large_binary(), len(self), [None, pa.py_buffer(offsets), pa.py_buffer(self.payload)]
        )
        text = pc.filter(array, pa.array(keep)).cast(pa.large_string())
        return pl.Series("text", text).str.strip_chars_end("\r\n")


def split_lines(payload: bytes) -> Records:
    """Records separated by newlines (NDJSON: JSON strings cannot hold a raw newline)."""
    buffer = np.frombuffer(payload, dtype=np.uint8)
    newlines = np.flatnonzero(buffer == _NEWLINE)
    return _records(payload, buffer, newlines, newlines)


def split_csv_records(
    payload: bytes, separator: str, quoted: tuple[np.ndarray, np.ndarray] | None = None
) -> Records:
    """CSV records and their field counts. ``quoted`` holds the (open, close) positions of the
    quoted fields: newlines and separators inside them belong to the field.

    Everything is counted with sorted position arrays and ``searchsorted`` (no per-byte
    prefix sums: they cost more than the parse itself on a large file).
    """
    buffer = np.frombuffer(payload, dtype=np.uint8)
    newlines = np.flatnonzero(buffer == _NEWLINE)
    separators = np.flatnonzero(buffer == ord(separator))
    has_quotes = quoted is not None and len(quoted[0]) > 0
    terminators = newlines[~_inside(newlines, *quoted)] if has_quotes else newlines  # type: ignore[misc]
    records = _records(payload, buffer, terminators, newlines)
    bounds = np.append(records.starts, len(payload))
    fields = np.diff(np.searchsorted(separators, bounds)) + 1
    if has_quotes and len(records):
        opens, closes = quoted  # type: ignore[misc]
        hidden = np.searchsorted(separators, closes) - np.searchsorted(separators, opens)
        owner = np.searchsorted(bounds, opens, side="right") - 1
        fields -= np.bincount(owner, weights=hidden, minlength=len(records)).astype(np.int64)[
            : len(records)
        ]
    records.fields = fields
    return records


def _inside(points: np.ndarray, opens: np.ndarray, closes: np.ndarray) -> np.ndarray:
    """Which of the sorted ``points`` lie inside a quoted field [open, close]."""
    index = np.searchsorted(opens, points, side="right") - 1
    return (index >= 0) & (points < closes[np.maximum(index, 0)])


def _records(
    payload: bytes, buffer: np.ndarray, terminators: np.ndarray, newlines: np.ndarray
) -> Records:
    ends = terminators
    if len(payload) and (not len(terminators) or terminators[-1] != len(payload) - 1):
        ends = np.append(terminators, len(payload))  # a last record without a newline
    starts = (
        np.concatenate([[0], ends[:-1] + 1]).astype(np.int64)
        if len(ends)
        else np.zeros(0, dtype=np.int64)
    )
    ends = ends.astype(np.int64)
    if len(ends):
        has_cr = (ends > starts) & (buffer[np.maximum(ends - 1, 0)] == _CR)
        ends = ends - has_cr
    return Records(payload, starts, ends, newlines)


def malformed_frame(
    kind: str, url: str, records: Records, indices: np.ndarray, reasons: list[str]
) -> pl.DataFrame:
    """The ``malformed`` rows for ``records[indices]`` (Python work per bad row only)."""
    count = len(indices)
    return pl.DataFrame(
        {
            "source": [kind] * count,
            "file": [url] * count,
            "offset": records.starts[indices],
            "line": records.line(indices),
            "reason": reasons,
            "raw": [records.raw(int(i)) for i in indices],
        },
        schema=MALFORMED_SCHEMA,
    )


def first_bad_value(
    typed: pl.DataFrame, text: pl.DataFrame, dtypes: dict[str, pl.DataType]
) -> pl.Series:
    """Per row: a reason naming the first column whose text did not parse, or null."""
    reason = pl.lit(None, dtype=pl.String)
    for name in reversed(list(dtypes)):
        failed = pl.col(f"text:{name}").is_not_null() & pl.col(name).is_null()
        described = pl.format(
            f"column {name!r}: cannot parse '{{}}' as {dtypes[name]}",
            pl.col(f"text:{name}").str.slice(0, 200),
        )
        reason = pl.when(failed).then(described).otherwise(reason)
    both = pl.concat(
        [typed.select(list(dtypes)), text.select([pl.col(c).alias(f"text:{c}") for c in dtypes])],
        how="horizontal",
    )
    return both.select(reason.alias("reason")).to_series()


def finish(
    reader: Any,
    frame: pl.DataFrame,
    good_rows: np.ndarray,
    records: Records,
    positions: np.ndarray,
    reasons: dict[int, str],
) -> Parsed:
    """Assemble a Parsed file from the good rows and the reasons of the bad ones (or raise)."""
    bad_rows = np.array(sorted(reasons), dtype=np.int64)
    kind, url = reader.kind, reader.url
    if len(bad_rows) and reader.on_error == "raise":
        first = int(positions[bad_rows[0]])
        msg = (
            f"{kind}: {url!r} line {int(records.line(np.array([first]))[0])} (byte {int(records.starts[first])}): "
            f"{reasons[int(bad_rows[0])]}; fix the file, or leave on_error at 'side_output' to send bad "
            f"rows to the 'malformed' side output"
        )
        raise SourceError(msg)
    malformed = malformed_frame(
        kind, url, records, positions[bad_rows], [reasons[int(r)] for r in bad_rows]
    )
    output = frame.select(reader.columns) if reader.columns else pl.DataFrame(height=frame.height)
    return Parsed(output, len(positions), good_rows.astype(np.int64), malformed, bad_rows)


def parse_in_pieces(
    rows: np.ndarray,
    parse: Callable[[np.ndarray], pl.DataFrame],
    reasons: dict[int, str],
    describe: Callable[[int, Exception], str] | None = None,
) -> tuple[np.ndarray, list[pl.DataFrame]]:
    """Parse ``rows`` (record numbers) in one piece if polars can, else bisect: a single record
    that still fails gets a reason (``describe(record, error)`` words it, when given). Returns
    the parsed record numbers and their frames."""
    frames: list[pl.DataFrame] = []
    parsed: list[np.ndarray] = []
    pending = [rows] if len(rows) else []
    while pending:
        piece = pending.pop()
        try:
            frames.append(parse(piece))
            parsed.append(piece)
        except (pl.exceptions.PolarsError, ValueError) as exc:
            if len(piece) == 1:
                if describe is not None:
                    reasons[int(piece[0])] = describe(int(piece[0]), exc)
                    continue
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                reasons[int(piece[0])] = f"cannot parse the record: {first[:300]}"
                continue
            middle = len(piece) // 2
            pending.extend([piece[middle:], piece[:middle]])  # the first half is parsed first
    done = np.concatenate(parsed) if parsed else np.zeros(0, dtype=np.int64)
    return done, frames


# ---------------------------------------------------------------------------- temporal values
def read_as_text(dtype: pl.DataType) -> bool:
    """Datetime and Date columns are read as text and parsed by Arrow's ISO 8601 parser: on 10M
    CSV rows polars' own parser spent 13-17 s on one timestamp column, Arrow 0.3-0.5 s (and in
    NDJSON polars took 25-60 s)."""
    return isinstance(dtype, pl.Datetime) or dtype == pl.Date


def checked_columns(schema: pl.Schema, columns: list[str]) -> list[str]:
    """The columns a text reader parses: those the flow reads, and every other column of the
    declared schema whose text might not parse (a row is malformed when any declared column
    fails, whatever the projection). Any text is a valid String or Categorical, so those are
    left unread unless the flow reads them."""
    return [
        c for c, dtype in schema.items() if c in columns or dtype not in (pl.String, pl.Categorical)
    ]


def text_schema(schema: pl.Schema) -> pl.Schema:
    return pl.Schema(
        {name: pl.String if read_as_text(dtype) else dtype for name, dtype in schema.items()}
    )


def parse_temporal(text: pl.Series, dtype: pl.DataType) -> pl.Series | None:
    """``text`` as ``dtype`` through Arrow's ISO 8601 parser; None when it refuses any value
    (the caller then lets polars parse the column, with polars' rules)."""
    if isinstance(dtype, pl.Datetime):
        target = pa.timestamp(dtype.time_unit or "us", dtype.time_zone)
    else:
        target = pa.date32()
    try:
        values = pc.cast(text.to_arrow(compat_level=pl.CompatLevel.oldest()), target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    converted = pl.Series(text.name, values)
    return converted if converted.dtype == dtype else converted.cast(dtype)
