"""Schema conversion: user-given schemas (polars dtypes or pyarrow) to a polars Schema."""

from __future__ import annotations

from typing import Any

import polars as pl
import pyarrow as pa

from arrowflow.errors import SchemaError


def to_polars_schema(schema: Any) -> pl.Schema:
    """Accept ``{"col": pl.Int64}``, a ``pl.Schema``, or a ``pa.Schema``."""
    if isinstance(schema, pl.Schema):
        return schema
    if isinstance(schema, pa.Schema):
        return pl.DataFrame(schema.empty_table()).schema
    if isinstance(schema, dict):
        converted = {}
        for name, dtype in schema.items():
            if isinstance(dtype, pa.DataType):
                dtype = pl.DataFrame(pa.schema([(name, dtype)]).empty_table()).schema[name]
            try:
                converted[name] = pl.DataFrame(schema={name: dtype}).schema[name]
            except (TypeError, ValueError) as exc:
                msg = f"schema: column {name!r} has type {dtype!r}, which is not a polars or pyarrow type"
                raise SchemaError(msg) from exc
        return pl.Schema(converted)
    msg = f"schema= expects a dict of column -> polars type, a pl.Schema or a pa.Schema; got {type(schema).__name__}"
    raise SchemaError(msg)
