"""Schemas: user-given schemas to a polars Schema, and the rule of lossless conversion.

A user gives a schema as polars dtypes or pyarrow types; :func:`to_polars_schema` turns it
into a polars Schema. :func:`lossless` says when a value of one type converts to another
without loss.

A type converts losslessly to another when every value survives: the same type, a wider
integer or float, an integer into a float that holds it exactly, a finer time unit,
String <-> Categorical, or a Null column. File sources read a stored column as the type a
schema asks for only then (:mod:`arrowflow.io._schema`), and process-function state handles
convert a frame to a state's declared types only then, because a silent narrowing cast would
change data.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import polars as pl
import pyarrow as pa

from arrowflow.errors import SchemaError

if TYPE_CHECKING:
    from polars._typing import PolarsDataType  # a dtype instance or class (pl.Int64)

_SIGNED = {pl.Int8: 8, pl.Int16: 16, pl.Int32: 32, pl.Int64: 64, pl.Int128: 128}
_UNSIGNED = {pl.UInt8: 8, pl.UInt16: 16, pl.UInt32: 32, pl.UInt64: 64}
_FLOAT_MANTISSA = {pl.Float32: 24, pl.Float64: 53}
_UNITS = {"ms": 0, "us": 1, "ns": 2}


def arrow_to_polars(schema: pa.Schema) -> pl.Schema:
    """The polars schema a pyarrow schema turns into (what ``pl.from_arrow`` would give)."""
    return pl.DataFrame(schema.empty_table()).schema


def to_polars_schema(schema: Any) -> pl.Schema:
    """Accept ``{"col": pl.Int64}``, a ``pl.Schema``, or a ``pa.Schema``."""
    if isinstance(schema, pl.Schema):
        return schema
    if isinstance(schema, pa.Schema):
        return arrow_to_polars(schema)
    if isinstance(schema, dict):
        converted = {}
        for name, dtype in schema.items():
            if not isinstance(name, str):
                msg = f"schema: column names must be strings, got {type(name).__name__} {name!r}"
                raise SchemaError(msg)
            if isinstance(dtype, pa.DataType):
                dtype = arrow_to_polars(pa.schema([(name, dtype)]))[name]
            try:
                converted[name] = pl.DataFrame(schema={name: dtype}).schema[name]
            except (TypeError, ValueError) as exc:
                msg = (
                    f"schema: column {name!r} has type {dtype!r}, which is not a polars or pyarrow type; "
                    f"write e.g. pl.Int64, pl.String, pl.Datetime('ms')"
                )
                raise SchemaError(msg) from exc
        return pl.Schema(converted)
    msg = f"schema= expects a dict of column -> polars type, a pl.Schema or a pa.Schema; got {type(schema).__name__}"
    raise SchemaError(msg)


def _int_bits(dtype: PolarsDataType) -> tuple[bool, int] | None:
    for table, signed in ((_SIGNED, True), (_UNSIGNED, False)):
        for kind, bits in table.items():
            if dtype == kind:
                return signed, bits
    return None


def _mantissa(dtype: PolarsDataType) -> int | None:
    return next((bits for kind, bits in _FLOAT_MANTISSA.items() if dtype == kind), None)


def lossless(found: PolarsDataType, wanted: PolarsDataType) -> bool:
    """True when every value of type ``found`` converts to ``wanted`` exactly."""
    if found == wanted or found == pl.Null:
        return True
    found_int, wanted_int = _int_bits(found), _int_bits(wanted)
    if found_int and wanted_int:
        (f_signed, f_bits), (w_signed, w_bits) = found_int, wanted_int
        if f_signed == w_signed:
            return w_bits >= f_bits
        return w_signed and w_bits > f_bits  # unsigned into a wider signed
    found_float, wanted_float = _mantissa(found), _mantissa(wanted)
    if found_int and wanted_float:
        return found_int[1] - (1 if found_int[0] else 0) <= wanted_float
    if found_float and wanted_float:
        return wanted_float >= found_float
    string_like = (pl.String, pl.Categorical)
    if any(found == t for t in string_like) and (
        any(wanted == t for t in string_like) or isinstance(wanted, pl.Enum)
    ):
        return True
    if isinstance(found, pl.Enum) and wanted in string_like:
        return True
    if isinstance(found, pl.Datetime) and isinstance(wanted, pl.Datetime):
        return (
            found.time_zone == wanted.time_zone
            and _UNITS[wanted.time_unit] >= _UNITS[found.time_unit]
        )
    if found == pl.Date and isinstance(wanted, pl.Datetime):
        return wanted.time_zone is None
    if isinstance(found, pl.Duration) and isinstance(wanted, pl.Duration):
        return _UNITS[wanted.time_unit] >= _UNITS[found.time_unit]
    if isinstance(found, pl.Decimal) and isinstance(wanted, pl.Decimal):
        f_scale, w_scale = found.scale or 0, wanted.scale or 0
        return (
            w_scale >= f_scale
            and (wanted.precision or 38) - w_scale >= (found.precision or 38) - f_scale
        )
    if isinstance(found, pl.List) and isinstance(wanted, pl.List):
        return lossless(found.inner, wanted.inner)
    if isinstance(found, pl.Array) and isinstance(wanted, pl.Array):
        return found.size == wanted.size and lossless(found.inner, wanted.inner)
    if isinstance(found, pl.Struct) and isinstance(wanted, pl.Struct):
        inner = {f.name: f.dtype for f in found.fields}
        return [f.name for f in wanted.fields] == list(inner) and all(
            lossless(inner[f.name], f.dtype) for f in wanted.fields
        )
    return False
