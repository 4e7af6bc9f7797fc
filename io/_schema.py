"""The rule for when a file's column type may be read as the type a schema asks for.

A file format that stores types (Parquet, Arrow IPC) is read as the schema says only when the
conversion loses nothing (:func:`arrowflow._foundation.schema.lossless`). Anything else is a
:class:`SchemaError` at plan time naming the column and both types, because a silent
narrowing cast would change data.
"""

from __future__ import annotations

import polars as pl

from arrowflow._foundation.schema import lossless
from arrowflow.errors import SchemaError


def check_file_schema(found: pl.Schema, wanted: pl.Schema, *, url: str, what: str) -> None:
    """Raise a SchemaError unless ``found`` holds every column of ``wanted`` in a type that
    reads losslessly as the wanted type."""
    for name, dtype in wanted.items():
        if name not in found:
            shown = ", ".join(found.names()[:20]) + (" ..." if len(found) > 20 else "")
            msg = (
                f"{what}: {url!r} has no column {name!r}; its columns are [{shown}]; "
                f"fix the schema= (or the path) so every file has the columns you read"
            )
            raise SchemaError(msg)
        if not lossless(found[name], dtype):
            msg = (
                f"{what}: column {name!r} is {found[name]} in {url!r}, but the schema says {dtype}; "
                f"reading it as {dtype} would change values. Give schema={{{name!r}: pl.{found[name]!r}}} "
                f"and cast after reading, e.g. .with_columns(pl.col({name!r}).cast(pl.{dtype!r}))"
            )
            raise SchemaError(msg)


def conform(frame: pl.DataFrame, wanted: pl.Schema) -> pl.DataFrame:
    """``frame`` with exactly the columns of ``wanted``, in order, cast where needed (losslessly)."""
    if frame.schema == wanted:
        return frame
    return frame.select(
        [
            pl.col(name).cast(dtype) if frame.schema[name] != dtype else pl.col(name)
            for name, dtype in wanted.items()
        ]
    )
