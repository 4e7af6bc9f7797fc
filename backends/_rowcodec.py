"""A stable, vectorized binary encoding of table rows, for stores that keep bytes per key.

The ``lmdb`` backend keeps one LMDB entry per key (encoded key -> encoded values), and the
``sql`` backend identifies a key by one binary column, so that keys with nulls and keys of
several columns compare with a plain ``=``. Both need the same thing: every row of a frame
turned into one ``bytes`` value, and back, without a Python loop per row.

Format of one row (version 1), the concatenation over the columns of:

- a fixed-width column (integers, floats, booleans, dates, times, timestamps, durations,
  decimals): a tag byte (0 null, 1 valid) then the little-endian physical value
  (``width`` bytes, all zero when null);
- a variable-width column (strings, binary, categoricals as their string): a tag byte, a
  4-byte little-endian length, then the bytes.

An optional prefix of ``prefix_width`` bytes is written before the row (the ``lmdb`` backend
puts the big-endian key group there). The encoding of a key is canonical: equal keys give
equal bytes, with -0.0 == 0.0 and every NaN equal (as polars joins compare them), so a
byte comparison is a key comparison. Nothing relies on the byte order of the encoding.

Everything is numpy over whole columns: the per-row work is what Python forces when a
caller needs a ``list[bytes]`` (one object per row), done by ``ndarray.tolist``.

>>> import polars as pl
>>> codec = RowCodec(pl.Schema({"k": pl.Int64, "s": pl.String}), what="store 'x' keys")
>>> frame = pl.DataFrame({"k": [1, None], "s": ["ab", None]})
>>> codec.decode(codec.encode(frame).to_arrow()).equals(frame)
True
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from arrowflow.errors import StateError

_VARIABLE = (pl.String, pl.Binary, pl.Categorical, pl.Enum)


@dataclass(frozen=True)
class _Column:
    name: str
    dtype: pl.DataType
    arrow_type: pa.DataType  # the type the bytes are read back as
    width: int  # bytes of the value for fixed-width columns; -1 for variable width
    is_float: bool
    is_bool: bool


def _column_layout(name: str, dtype: pl.DataType, what: str) -> _Column:
    if isinstance(dtype, _VARIABLE) or dtype in _VARIABLE:
        arrow_type = pa.large_binary() if dtype == pl.Binary else pa.large_string()
        return _Column(name, dtype, arrow_type, -1, False, False)
    if dtype == pl.Null:
        return _Column(name, dtype, pa.null(), 0, False, False)
    if dtype == pl.Boolean:
        return _Column(name, dtype, pa.bool_(), 1, False, True)
    if dtype.is_numeric() or dtype.is_temporal() or isinstance(dtype, pl.Decimal):
        try:
            arrow_type = pl.Series(name, [], dtype=dtype).to_arrow().type
            width = arrow_type.bit_width // 8
        except Exception:  # e.g. Int128, which Arrow has no type for
            pass
        else:
            return _Column(name, dtype, arrow_type, width, dtype.is_float(), False)
    msg = (
        f"{what}: column {name!r} has type {dtype}, which this state backend cannot store; it "
        f"keeps flat columns (integers, floats, booleans, strings, binary, dates, times, "
        f"timestamps, durations, decimals). Use state='memory' or state='arrow' for nested types."
    )
    raise StateError(msg)


_SPAN_CHUNK = 1 << 22  # bytes of spans handled per step: bounds the index arrays to 32 MiB


def _span_chunks(lengths: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Row ranges [lo, hi) whose spans total at most ~_SPAN_CHUNK bytes, with their byte range."""
    ends = np.cumsum(lengths)
    total = int(ends[-1]) if len(ends) else 0
    if total <= _SPAN_CHUNK:
        return [(0, len(lengths), 0, total)]
    cuts = np.searchsorted(ends, np.arange(_SPAN_CHUNK, total, _SPAN_CHUNK), side="right")
    bounds = [0, *np.unique(cuts).tolist(), len(lengths)]
    chunks = []
    for lo, hi in pairwise(bounds):
        if hi > lo:
            first = int(ends[lo - 1]) if lo else 0
            chunks.append((lo, hi, first, int(ends[hi - 1])))
    return chunks


def _gather_spans(data: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The bytes ``data[starts[i] : starts[i] + lengths[i]]`` of every row, concatenated."""
    out = np.empty(int(lengths.sum()), dtype=np.uint8)
    for lo, hi, first, last in _span_chunks(lengths):
        row_lengths = lengths[lo:hi]
        shift = starts[lo:hi] - (np.cumsum(row_lengths) - row_lengths)
        out[first:last] = data[np.repeat(shift, row_lengths) + np.arange(last - first)]
    return out


def _scatter_spans(
    out: np.ndarray, starts: np.ndarray, lengths: np.ndarray, payload: np.ndarray
) -> None:
    """Write the concatenated ``payload`` to ``out[starts[i] : starts[i] + lengths[i]]``."""
    for lo, hi, first, last in _span_chunks(lengths):
        row_lengths = lengths[lo:hi]
        shift = starts[lo:hi] - (np.cumsum(row_lengths) - row_lengths)
        out[np.repeat(shift, row_lengths) + np.arange(last - first)] = payload[first:last]


@dataclass(frozen=True)
class Encoded:
    """Encoded rows: ``data[offsets[i]:offsets[i+1]]`` is row ``i``."""

    data: np.ndarray  # uint8
    offsets: np.ndarray  # int64, len(rows) + 1
    width: int | None  # every row's length when they are all equal (fixed-width rows)

    @classmethod
    def from_buffers(cls, data: Any, offsets: Any) -> Encoded:
        """Rows given as two buffers (``bytes`` or arrays): the data and int64 offsets."""
        return cls(
            np.frombuffer(data, dtype=np.uint8), np.frombuffer(offsets, dtype=np.int64), None
        )

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def to_arrow(self, valid: Any = None) -> pa.Array:
        """A large_binary array of the rows; ``valid`` (a uint8 buffer, 0 or 1 per row) marks nulls."""
        mask = None
        if valid is not None:
            mask = pa.py_buffer(
                np.packbits(np.frombuffer(valid, dtype=np.uint8), bitorder="little")
            )
        return pa.Array.from_buffers(
            pa.large_binary(),
            len(self),
            [mask, pa.py_buffer(self.offsets), pa.py_buffer(self.data)],
        )

    def locality_order(self) -> np.ndarray:
        """A permutation that sorts the rows by their first 6 bytes, as a B-tree orders them.

        Rows that share those bytes stay in any order: the point is that a batch visits a
        B-tree's pages in order (memcmp order, as LMDB and SQLite compare blobs), not an exact
        sort, which costs more than it saves. Three stable radix passes over 16-bit words.
        """
        n = len(self)
        if self.width is not None and self.width >= 8:  # fixed width: the head is a strided view
            head = np.ascontiguousarray(self.data.reshape(n, self.width)[:, :8])
        else:
            starts = self.offsets[:-1]
            lengths = np.diff(self.offsets)
            positions = starts[:, None] + np.arange(8)
            inside = np.arange(8) < lengths[:, None]
            limit = max(len(self.data) - 1, 0)
            head = np.where(inside, self.data[np.minimum(positions, limit)], 0).astype(np.uint8)
        words = head.view(">u2").reshape(n, 4)
        order = np.argsort(words[:, 2], kind="stable")
        for column in (1, 0):
            order = order[np.argsort(words[order, column], kind="stable")]
        return order

    def take(self, order: np.ndarray) -> Encoded:
        """The rows in ``order``."""
        if self.width is not None:
            rows = self.data.reshape(-1, self.width)[order].reshape(-1)
            return Encoded(rows, self.offsets, self.width)
        taken = self.to_arrow().take(pa.array(order))
        _, offsets_buf, data_buf = taken.buffers()
        offsets = np.frombuffer(offsets_buf, dtype=np.int64)[
            taken.offset : taken.offset + len(taken) + 1
        ]
        data = (
            np.frombuffer(data_buf, dtype=np.uint8)
            if data_buf is not None
            else np.zeros(0, np.uint8)
        )
        return Encoded(data, offsets, None)

    def to_list(self) -> list[bytes]:
        """One ``bytes`` per row (what the lmdb Python binding needs)."""
        if self.width is not None and len(self):
            return self.data.view(f"V{self.width}").tolist()
        return self.to_arrow().to_numpy(zero_copy_only=False).tolist()


class RowCodec:
    """Encodes the rows of frames with ``schema`` into bytes and back."""

    def __init__(
        self, schema: pl.Schema, *, what: str, canonical: bool = True, prefix_width: int = 0
    ) -> None:
        self.schema = schema
        self.what = what
        self.canonical = canonical
        self.prefix_width = prefix_width
        self.columns = [_column_layout(name, dtype, what) for name, dtype in schema.items()]
        self.fixed = all(col.width >= 0 for col in self.columns)
        self.row_width = (
            prefix_width + sum(1 + col.width for col in self.columns) if self.fixed else None
        )

    # ------------------------------------------------------------------------------ encode

    def _fixed_bytes(self, col: _Column, series: pl.Series, valid: np.ndarray | None) -> np.ndarray:
        """(n, width) uint8 matrix of the physical values, zero where null."""
        n = series.len()
        if col.width == 0:
            return np.zeros((n, 0), dtype=np.uint8)
        if col.is_bool:
            values = series.fill_null(False).to_numpy().astype(np.uint8)
            return values.reshape(n, 1)
        array = series.to_arrow()
        if isinstance(array, pa.ChunkedArray):
            array = array.combine_chunks()
        buffer = array.buffers()[1]
        raw = np.frombuffer(buffer, dtype=np.uint8)[
            array.offset * col.width : (array.offset + n) * col.width
        ]
        matrix = raw.reshape(n, col.width)
        if col.is_float and self.canonical:
            floats = matrix.view(f"<f{col.width}").ravel().copy()
            floats[floats == 0] = 0  # -0.0 and 0.0 are one key
            floats[np.isnan(floats)] = np.nan  # one NaN
            matrix = floats.view(np.uint8).reshape(n, col.width)
        if valid is not None:
            matrix = np.where(valid[:, None], matrix, np.uint8(0))
        return matrix

    @staticmethod
    def _variable_parts(series: pl.Series) -> tuple[np.ndarray, np.ndarray]:
        """(lengths int64, data uint8) of a string/binary column; nulls have length 0."""
        if series.dtype != pl.Binary:
            series = series.cast(pl.String).cast(pl.Binary)
        if series.null_count():
            series = series.fill_null(b"")
        array = series.to_arrow()
        if isinstance(array, pa.ChunkedArray):
            array = array.combine_chunks()
        array = array.cast(pa.large_binary())
        n = len(array)
        _, offsets_buf, data_buf = array.buffers()
        offsets = np.frombuffer(offsets_buf, dtype=np.int64)[array.offset : array.offset + n + 1]
        data = (
            np.frombuffer(data_buf, dtype=np.uint8)
            if data_buf is not None
            else np.zeros(0, np.uint8)
        )
        return np.diff(offsets), data[offsets[0] : offsets[-1]]

    def encode(self, frame: pl.DataFrame, prefix: np.ndarray | None = None) -> Encoded:
        """Encode every row; ``prefix`` is a (n, prefix_width) uint8 matrix put first."""
        n = frame.height
        frame = frame.select(list(self.schema.names()))
        if self.fixed:
            assert self.row_width is not None
            out = np.empty((n, self.row_width), dtype=np.uint8)
            position = 0
            if self.prefix_width:
                assert prefix is not None
                out[:, : self.prefix_width] = prefix
                position = self.prefix_width
            for col, series in zip(self.columns, frame.get_columns(), strict=True):
                valid = series.is_not_null().to_numpy() if series.null_count() else None
                out[:, position] = 1 if valid is None else valid
                out[:, position + 1 : position + 1 + col.width] = self._fixed_bytes(
                    col, series, valid
                )
                position += 1 + col.width
            offsets = np.arange(0, (n + 1) * self.row_width, self.row_width, dtype=np.int64)
            return Encoded(out.reshape(-1), offsets, self.row_width)
        return self._encode_variable(frame, prefix)

    def _encode_variable(self, frame: pl.DataFrame, prefix: np.ndarray | None) -> Encoded:
        n = frame.height
        # (column, null tags, fixed bytes or variable lengths, variable data or None)
        parts: list[tuple[_Column, np.ndarray, np.ndarray, np.ndarray | None]] = []
        row_lengths = np.full(n, self.prefix_width, dtype=np.int64)
        for col, series in zip(self.columns, frame.get_columns(), strict=True):
            valid = series.is_not_null().to_numpy() if series.null_count() else None
            tags = np.ones(n, np.uint8) if valid is None else valid.astype(np.uint8)
            if col.width >= 0:
                parts.append((col, tags, self._fixed_bytes(col, series, valid), None))
                row_lengths += 1 + col.width
            else:
                lengths, variable = self._variable_parts(series)
                parts.append((col, tags, lengths, variable))
                row_lengths += 5 + lengths
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(row_lengths, out=offsets[1:])
        out = np.empty(int(offsets[-1]), dtype=np.uint8)
        cursor = offsets[:-1].copy()
        if self.prefix_width:
            assert prefix is not None
            out[cursor[:, None] + np.arange(self.prefix_width)] = prefix
            cursor += self.prefix_width
        for col, tags, payload, data in parts:
            out[cursor] = tags
            cursor += 1
            if data is None:  # fixed width
                if col.width:
                    out[cursor[:, None] + np.arange(col.width)] = payload
                    cursor += col.width
                continue
            lengths = payload
            out[cursor[:, None] + np.arange(4)] = lengths.astype("<u4").view(np.uint8).reshape(n, 4)
            cursor += 4
            total = int(lengths.sum())
            if total:
                _scatter_spans(out, cursor, lengths, data)
            cursor += lengths
        return Encoded(out, offsets, None)

    # ------------------------------------------------------------------------------ decode

    def _corrupt(self, detail: str) -> StateError:
        msg = f"{self.what}: stored bytes do not decode ({detail}); the store is damaged or was written with another schema"
        return StateError(msg)

    def decode(self, encoded: pa.Array) -> pl.DataFrame:
        """Rows back from a binary Arrow array; a null entry decodes as a row of nulls."""
        if isinstance(encoded, pa.ChunkedArray):
            encoded = encoded.combine_chunks()
        if not pa.types.is_large_binary(encoded.type):
            encoded = encoded.cast(pa.large_binary())
        n = len(encoded)
        missing = encoded.null_count
        if missing:
            present = encoded.filter(encoded.is_valid())
            frame = self._decode_present(present)
            found = np.asarray(encoded.is_valid())
            index = pl.Series(np.cumsum(found) - 1, dtype=pl.Int64).set(pl.Series(~found), None)
            return frame.select(pl.all().gather(index)) if frame.width else frame
        del n
        return self._decode_present(encoded)

    def _decode_present(self, encoded: pa.Array) -> pl.DataFrame:
        n = len(encoded)
        _, offsets_buf, data_buf = encoded.buffers()
        offsets = np.frombuffer(offsets_buf, dtype=np.int64)[
            encoded.offset : encoded.offset + n + 1
        ]
        data = (
            np.frombuffer(data_buf, dtype=np.uint8)
            if data_buf is not None
            else np.zeros(0, np.uint8)
        )
        lengths = np.diff(offsets)
        if self.fixed:
            width = self.row_width
            assert width is not None
            if n and (lengths != width).any():
                detail = f"expected rows of {width} bytes"
                raise self._corrupt(detail)
            return self.decode_fixed(data[offsets[0] : offsets[0] + n * width].reshape(n, width))
        cursor = offsets[:-1] + self.prefix_width
        ends = offsets[1:]
        columns = []
        try:
            for col in self.columns:
                tags = data[cursor]
                cursor = cursor + 1
                if col.width >= 0:
                    values = (
                        data[cursor[:, None] + np.arange(col.width)]
                        if col.width
                        else np.zeros((n, 0), np.uint8)
                    )
                    columns.append(self._fixed_series(col, tags, values))
                    cursor = cursor + col.width
                    continue
                lengths = (
                    np.ascontiguousarray(data[cursor[:, None] + np.arange(4)])
                    .view("<u4")
                    .ravel()
                    .astype(np.int64)
                )
                cursor = cursor + 4
                value_offsets = np.zeros(n + 1, dtype=np.int64)
                np.cumsum(lengths, out=value_offsets[1:])
                total = int(value_offsets[-1])
                if total:
                    payload = _gather_spans(data, cursor, lengths)
                else:
                    payload = np.zeros(0, np.uint8)
                columns.append(self._variable_series(col, tags, value_offsets, payload))
                cursor = cursor + lengths
        except IndexError:
            detail = "a row is shorter than its columns"
            raise self._corrupt(detail) from None
        if n and (cursor != ends).any():
            detail = "a row is longer than its columns"
            raise self._corrupt(detail)
        return pl.DataFrame(columns) if columns else pl.DataFrame()

    def decode_fixed(self, matrix: np.ndarray, present: np.ndarray | None = None) -> pl.DataFrame:
        """Rows back from a (n, row_width) uint8 matrix of fixed-width rows (one row each).

        ``present`` (bool, n): rows where it is False decode as a row of nulls whatever their
        bytes (a lookup's placeholder for a missing key).
        """
        width = self.row_width
        if width is None or matrix.ndim != 2 or matrix.shape[1] != width:
            detail = f"expected rows of {width} bytes"
            raise self._corrupt(detail)
        columns = []
        position = self.prefix_width
        for col in self.columns:
            tags = matrix[:, position]
            if present is not None:
                tags = tags & present  # uint8 & bool: 0 where the row is missing
            values = matrix[:, position + 1 : position + 1 + col.width]
            columns.append(self._fixed_series(col, tags, values))
            position += 1 + col.width
        return pl.DataFrame(columns) if columns else pl.DataFrame()

    @staticmethod
    def _validity(tags: np.ndarray) -> tuple[pa.Buffer | None, int]:
        valid = tags.astype(bool)
        nulls = int(len(tags) - valid.sum())
        if nulls == 0:
            return None, 0
        return pa.py_buffer(np.packbits(valid, bitorder="little")), nulls

    def _fixed_series(self, col: _Column, tags: np.ndarray, values: np.ndarray) -> pl.Series:
        n = len(tags)
        validity, nulls = self._validity(tags)
        if col.width == 0:
            return pl.Series(col.name, [None] * n, dtype=col.dtype)
        if col.is_bool:
            bits = pa.py_buffer(np.packbits(values.ravel().astype(bool), bitorder="little"))
            array = pa.Array.from_buffers(pa.bool_(), n, [validity, bits], null_count=nulls)
        else:
            array = pa.Array.from_buffers(
                col.arrow_type,
                n,
                [validity, pa.py_buffer(np.ascontiguousarray(values))],
                null_count=nulls,
            )
        series = pl.Series(col.name, array)
        return series if series.dtype == col.dtype else series.cast(col.dtype)

    def _variable_series(
        self, col: _Column, tags: np.ndarray, offsets: np.ndarray, payload: np.ndarray
    ) -> pl.Series:
        validity, nulls = self._validity(tags)
        array = pa.Array.from_buffers(
            col.arrow_type,
            len(tags),
            [validity, pa.py_buffer(offsets), pa.py_buffer(payload)],
            null_count=nulls,
        )
        series = pl.Series(col.name, array)
        return series if series.dtype == col.dtype else series.cast(col.dtype)
