"""Packing a variable number of rows per key into flat columns, vectorized.

List and map state keep all the elements (or entries) of one key in *one* store entry,
keyed by the operator's key alone. That is what lets them run on every state backend:
``lmdb`` and ``sql`` store flat columns only, and every backend computes a key's key group
from the store's key columns, so an entry keyed by (key, element number) would land in
another key group than its key and be lost by a snapshot or a rescaling restore.

A packed entry holds, for ``n`` elements of the columns ``c1, c2, ...``:

- ``__n`` (Int64): the number of elements;
- ``c`` (Binary) per column: the values one after another — fixed-width types (integers,
  floats, temporal, decimals) as their little-endian physical value (``width`` bytes, zeros
  where null), Booleans as one byte, strings and binary as their bytes;
- ``__valid_c`` (Binary): one byte per element, 1 where the value is not null;
- ``__len_c`` (Binary, strings and binary only): the byte length of each element, Int64.

Packing and unpacking are numpy over whole columns: group ``i``'s bytes are the slice
``offsets[i]:offsets[i+1]`` of one buffer, so no Python code runs per key or per element.

>>> import numpy as np, polars as pl
>>> schema = pl.Schema({"sku": pl.String, "qty": pl.Int32})
>>> elements = pl.DataFrame({"sku": ["a", None, "ccc"], "qty": [1, 2, None]}, schema=schema)
>>> packed = pack(elements, np.array([2, 1]), schema)
>>> packed["__n"].to_list()
[2, 1]
>>> back, lengths = unpack(packed, schema)
>>> back.equals(elements), lengths.tolist()
(True, [2, 1])
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa

from arrowflow.errors import PlanError

COUNT = "__n"
_OLDEST = pl.CompatLevel.oldest()


@dataclass(frozen=True)
class _Layout:
    kind: str  # "fixed" | "bool" | "var" | "null"
    arrow_type: pa.DataType
    width: int  # bytes per value, fixed kinds only


def layout(name: str, dtype: pl.DataType, what: str) -> _Layout:
    """How a column of ``dtype`` is packed; a PlanError naming ``what`` for nested types."""
    if dtype == pl.Null:
        return _Layout("null", pa.null(), 0)
    if dtype == pl.Boolean:
        return _Layout("bool", pa.bool_(), 1)
    if dtype in (pl.String, pl.Categorical) or isinstance(dtype, pl.Categorical | pl.Enum):
        return _Layout("var", pa.large_string(), 0)
    if dtype == pl.Binary:
        return _Layout("var", pa.large_binary(), 0)
    if dtype.is_numeric() or dtype.is_temporal() or isinstance(dtype, pl.Decimal):
        try:
            arrow_type = pl.Series(name, [], dtype=dtype).to_arrow(compat_level=_OLDEST).type
        except Exception:
            pass
        else:
            return _Layout("fixed", arrow_type, arrow_type.bit_width // 8)
    msg = (
        f"{what}: column {name!r} has type {dtype}, which list and map state cannot hold; their "
        f"elements are flat columns (integers, floats, booleans, strings, binary, dates, times, "
        f"timestamps, durations, decimals). Declare several columns with a schema, "
        f"e.g. {{'sku': pl.String, 'qty': pl.Int64}}, instead of a struct or list."
    )
    raise PlanError(msg)


def packed_schema(schema: pl.Schema) -> pl.Schema:
    """The flat value columns a packed entry of ``schema``'s columns is stored as."""
    columns: dict[str, pl.DataType] = {COUNT: pl.Int64()}
    for name, dtype in schema.items():
        columns[name] = pl.Binary()
        columns[f"__valid_{name}"] = pl.Binary()
        if layout(name, dtype, "packed state").kind == "var":
            columns[f"__len_{name}"] = pl.Binary()
    return pl.Schema(columns)


def _binary(data: np.ndarray, offsets: np.ndarray) -> pl.Series:
    """A Binary series whose row ``i`` is ``data[offsets[i]:offsets[i+1]]``."""
    array = pa.LargeBinaryArray.from_buffers(
        pa.large_binary(),
        len(offsets) - 1,
        [
            None,
            pa.py_buffer(np.ascontiguousarray(offsets, dtype=np.int64)),
            pa.py_buffer(np.ascontiguousarray(data)),
        ],
    )
    return pl.Series(pl.from_arrow(array))


def _group_offsets(lengths: np.ndarray, width: int) -> np.ndarray:
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths * width, out=offsets[1:])
    return offsets


def _valid_bytes(array: pa.Array) -> np.ndarray:
    if array.null_count == 0:
        return np.ones(len(array), dtype=np.uint8)
    return np.asarray(array.is_valid().to_numpy(zero_copy_only=False), dtype=np.uint8)


def _buffer_bytes(buffer: pa.Buffer | None) -> np.ndarray:
    return np.empty(0, dtype=np.uint8) if buffer is None else np.frombuffer(buffer, dtype=np.uint8)


def pack(elements: pl.DataFrame, lengths: np.ndarray, schema: pl.Schema) -> pl.DataFrame:
    """One packed row per group; group ``i`` is the next ``lengths[i]`` rows of ``elements``."""
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if total != elements.height:
        msg = f"internal: pack() got {elements.height} elements for groups of {total}"
        raise AssertionError(msg)
    columns = [pl.Series(COUNT, lengths, dtype=pl.Int64)]
    group_ends = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=group_ends[1:])
    for name, dtype in schema.items():
        kind = layout(name, dtype, "packed state")
        series = elements.get_column(name)
        if kind.kind == "var" and series.dtype != pl.Binary:
            series = series.cast(pl.String)
        array = series.to_arrow(compat_level=_OLDEST)
        if isinstance(array, pa.ChunkedArray):
            array = array.combine_chunks()
        valid = _valid_bytes(array)
        offset, n = array.offset, len(array)
        if kind.kind == "fixed":
            data = _buffer_bytes(array.buffers()[1])[
                offset * kind.width : (offset + n) * kind.width
            ]
            values = _binary(data, _group_offsets(lengths, kind.width))
        elif kind.kind == "bool":
            bits = _buffer_bytes(array.buffers()[1])
            data = (
                np.unpackbits(bits, bitorder="little")[offset : offset + n]
                if n
                else np.empty(0, np.uint8)
            )
            values = _binary(data, _group_offsets(lengths, 1))
        elif kind.kind == "var":
            value_offsets = (
                np.frombuffer(array.buffers()[1], dtype=np.int64)[offset : offset + n + 1]
                if n
                else np.zeros(1, np.int64)
            )
            data = _buffer_bytes(array.buffers()[2])[value_offsets[0] : value_offsets[-1]]
            values = _binary(data, value_offsets[group_ends] - value_offsets[0])
            element_lengths = np.diff(value_offsets).astype(np.int64)
            columns.append(
                _binary(element_lengths.view(np.uint8), _group_offsets(lengths, 8)).alias(
                    f"__len_{name}"
                )
            )
        else:  # null: the count and the validity say everything
            values = _binary(np.empty(0, np.uint8), np.zeros(len(lengths) + 1, np.int64))
        columns.append(values.alias(name))
        columns.append(_binary(valid, _group_offsets(lengths, 1)).alias(f"__valid_{name}"))
    return pl.DataFrame(columns).select(packed_schema(schema).names())


def _concatenated(series: pl.Series) -> np.ndarray:
    """Every row's bytes, one after another (null rows contribute nothing)."""
    if series.null_count():  # a null slot may still span bytes (Arrow allows it): empty them
        series = series.fill_null(b"")
    array = series.to_arrow(compat_level=_OLDEST)
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if len(array) == 0:
        return np.empty(0, dtype=np.uint8)
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int64)[
        array.offset : array.offset + len(array) + 1
    ]
    return _buffer_bytes(array.buffers()[2])[offsets[0] : offsets[-1]]


def unpack(packed: pl.DataFrame, schema: pl.Schema) -> tuple[pl.DataFrame, np.ndarray]:
    """The inverse of :func:`pack`: the elements of every row in order, and the count per row.

    Rows whose ``__n`` is null (keys a store did not find) have no elements.
    """
    lengths = packed.get_column(COUNT).fill_null(0).to_numpy().astype(np.int64, copy=False)
    total = int(lengths.sum())
    columns = []
    for name, dtype in schema.items():
        kind = layout(name, dtype, "packed state")
        valid = _concatenated(packed.get_column(f"__valid_{name}"))
        if len(valid) != total:
            msg = (
                f"packed state column {name!r} holds {len(valid)} elements, its counts say {total}"
            )
            raise ValueError(msg)
        null_count = int(total - np.count_nonzero(valid))
        bitmap = pa.py_buffer(np.packbits(valid, bitorder="little")) if null_count else None
        data = _concatenated(packed.get_column(name))
        if kind.kind == "fixed":
            array = pa.Array.from_buffers(
                kind.arrow_type,
                total,
                [bitmap, pa.py_buffer(np.ascontiguousarray(data))],
                null_count=null_count,
            )
        elif kind.kind == "bool":
            bits = pa.py_buffer(np.packbits(data, bitorder="little"))
            array = pa.Array.from_buffers(pa.bool_(), total, [bitmap, bits], null_count=null_count)
        elif kind.kind == "var":
            element_lengths = _concatenated(packed.get_column(f"__len_{name}")).view(np.int64)
            offsets = np.zeros(total + 1, dtype=np.int64)
            np.cumsum(element_lengths, out=offsets[1:])
            array = pa.Array.from_buffers(
                kind.arrow_type,
                total,
                [bitmap, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(data))],
                null_count=null_count,
            )
        else:
            array = pa.nulls(total)
        columns.append(pl.Series(name, pl.from_arrow(array)).cast(dtype))
    return pl.DataFrame(columns, schema=schema), lengths
