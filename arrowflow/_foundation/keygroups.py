"""Stable, vectorized hashing of key columns into key groups.

A key maps to one of ``max_parallelism`` key groups; each worker owns a contiguous range
of them. The hash must be identical across processes, runs, machines and library versions
(state in a checkpoint is organised by key group), so it is our own: splitmix64 over the
physical integer value, the bit pattern of a normalised float, or a polynomial over the
UTF-8 bytes of a string — never Python's salted ``hash()`` nor a library's internal hash.

Everything here is numpy over whole columns; no Python loop runs per row.

>>> import polars as pl
>>> key_groups(pl.DataFrame({"user": [1, 2, 1]}), 128).tolist()[0] == key_groups(
...     pl.DataFrame({"user": [1]}), 128).tolist()[0]
True
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa

from arrowflow.errors import SchemaError

DEFAULT_MAX_PARALLELISM = 128

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_NULL_HASH = np.uint64(0x6A09E667F3BCC909)
_BYTE_BASE = np.uint64(0x100000001B3)


KEY_TYPES_HINT = (
    "key columns must be integers, floats, booleans, strings, binary, categoricals, decimals, dates, "
    "times, timestamps or durations; derive one first, e.g. .with_columns(key=pl.col('tags').list.join(','))"
)


def _mix64(z: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = z.astype(np.uint64, copy=True)
        z ^= z >> np.uint64(30)
        z *= _M1
        z ^= z >> np.uint64(27)
        z *= _M2
        z ^= z >> np.uint64(31)
    return z


def _hash_bytes(array: pa.Array) -> np.ndarray:
    """Polynomial hash of each value's bytes, vectorized over the offsets buffer."""
    array = array.cast(pa.large_binary())
    n = len(array)
    if n == 0:
        return np.zeros(0, dtype=np.uint64)
    _, offsets_buf, data_buf = array.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int64)[array.offset : array.offset + n + 1]
    start, stop = int(offsets[0]), int(offsets[-1])
    lengths = np.diff(offsets)
    if stop == start:
        sums = np.zeros(n, dtype=np.uint64)
    else:
        data = np.frombuffer(data_buf, dtype=np.uint8)[start:stop].astype(np.uint64) + np.uint64(1)
        max_len = int(lengths.max())
        with np.errstate(over="ignore"):
            powers = np.cumprod(np.full(max_len, _BYTE_BASE, dtype=np.uint64))
            position = np.arange(stop - start, dtype=np.int64) - np.repeat(
                offsets[:-1] - start, lengths
            )
            products = data * powers[position]
        padded = np.append(products, np.uint64(0))
        sums = np.add.reduceat(padded, np.minimum(offsets[:-1] - start, stop - start))
        sums[lengths == 0] = 0
    with np.errstate(over="ignore"):
        return _mix64(sums ^ (lengths.astype(np.uint64) * _GOLDEN))


def is_hashable_key_type(dtype: pl.DataType) -> bool:
    """True when :func:`key_groups` can hash a key column of this type."""
    return (
        dtype in (pl.String, pl.Binary, pl.Boolean, pl.Null)
        or isinstance(dtype, pl.Categorical | pl.Enum | pl.Decimal)
        or dtype.is_float()
        or dtype.is_integer()
        or dtype.is_temporal()
    )


def _hash_series(series: pl.Series) -> np.ndarray:
    dtype = series.dtype
    nulls = series.is_null().to_numpy() if series.null_count() else None
    if dtype in (pl.String, pl.Binary) or isinstance(dtype, pl.Categorical | pl.Enum):
        values = series.cast(pl.String) if dtype != pl.Binary else series
        hashed = _hash_bytes(
            pa.array(values.fill_null(b"" if dtype == pl.Binary else "").to_arrow())
        )
    elif dtype.is_float():
        floats = series.cast(pl.Float64).fill_null(0.0).to_numpy().copy()
        floats[floats == 0.0] = 0.0  # -0.0 and 0.0 are one key
        floats[np.isnan(floats)] = np.nan  # one NaN bit pattern
        hashed = _mix64(floats.view(np.uint64))
    elif dtype == pl.Boolean:
        hashed = _mix64(series.fill_null(False).cast(pl.UInt8).to_numpy().astype(np.uint64))
    elif dtype.is_integer() or dtype.is_temporal():
        physical = series.to_physical().fill_null(0)
        values = physical.to_numpy()
        hashed = _mix64(values.astype(np.int64, copy=False).view(np.uint64))
    elif isinstance(dtype, pl.Decimal):
        # The unscaled 128-bit integer, not a formatted string: text formatting of decimals
        # may change between library versions, the stored integer does not.
        array = pa.array(series.to_arrow()).cast(pa.decimal128(38, dtype.scale or 0))
        words = np.frombuffer(array.buffers()[1], dtype="<u8").reshape(-1, 2)[
            array.offset : array.offset + len(array)
        ]
        with np.errstate(over="ignore"):
            hashed = _mix64(_mix64(words[:, 0]) * _GOLDEN + words[:, 1])
    elif dtype == pl.Null:
        hashed = np.full(len(series), _NULL_HASH, dtype=np.uint64)
    else:
        msg = f"cannot hash key column {series.name!r} of type {dtype}; {KEY_TYPES_HINT}"
        raise SchemaError(msg)
    if nulls is not None:
        hashed = np.where(nulls, _NULL_HASH, hashed)
    return hashed


def hash_keys(keys: pl.DataFrame) -> np.ndarray:
    """A stable 64-bit hash per row of the key columns (uint64 numpy array)."""
    combined = np.zeros(keys.height, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for series in keys.get_columns():
            combined = _mix64(combined * _GOLDEN + _hash_series(series))
    return combined


def key_groups(keys: pl.DataFrame, max_parallelism: int = DEFAULT_MAX_PARALLELISM) -> np.ndarray:
    """The key group (0 .. max_parallelism-1) of each row, as an int32 numpy array."""
    return ((hash_keys(keys) >> np.uint64(32)) % np.uint64(max_parallelism)).astype(np.int32)


def key_group_range(
    worker: int, parallelism: int, max_parallelism: int = DEFAULT_MAX_PARALLELISM
) -> range:
    """The contiguous key groups that ``worker`` of ``parallelism`` owns."""
    return range(
        worker * max_parallelism // parallelism, (worker + 1) * max_parallelism // parallelism
    )


def owner_of(
    groups: np.ndarray, parallelism: int, max_parallelism: int = DEFAULT_MAX_PARALLELISM
) -> np.ndarray:
    """The worker that owns each key group (inverse of :func:`key_group_range`)."""
    # worker w owns [w*M//P, (w+1)*M//P); the owner of g is the largest w with w*M//P <= g.
    return ((groups.astype(np.int64) * parallelism + parallelism - 1) // max_parallelism).astype(
        np.int32
    )
