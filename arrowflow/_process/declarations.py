"""State declarations of keyed process functions: what ``states=[...]`` holds.

Plain, picklable descriptions (name, columns, time to live), checked when they are created;
the public names live in :mod:`arrowflow._process.context`. ``store_spec`` gives the store each one is
kept in: keyed by the operator's key columns; a value state's columns as they are, a list's or
a map's entries packed per key (:mod:`arrowflow._process.packed`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from arrowflow._foundation.durations import duration_ms
from arrowflow._foundation.schema import to_polars_schema
from arrowflow._process import packed as _packed
from arrowflow.errors import PlanError
from arrowflow.state import StoreSpec

#: Write time (ms of the TTL clock) of a value, a list element or a map entry with a TTL.
WRITTEN = "__written"
_STATE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _dtype(value: Any) -> pl.DataType | None:
    if isinstance(value, pl.DataType) or (
        isinstance(value, type) and issubclass(value, pl.DataType)
    ):
        return pl.DataFrame(schema={"x": value}).schema["x"]
    return None


def _columns(value: Any, default_name: str, what: str) -> tuple[pl.Schema, bool]:
    """(schema, single): a polars type is one column named ``default_name``."""
    dtype = _dtype(value)
    if dtype is not None:
        return pl.Schema({default_name: dtype}), True
    if isinstance(value, Mapping | pl.Schema) or type(value).__name__ == "Schema":
        schema = to_polars_schema(value if isinstance(value, pl.Schema) else dict(value))
        if not len(schema):
            msg = f"{what}: needs at least one column, got an empty schema"
            raise PlanError(msg)
        reserved = [name for name in schema.names() if name.startswith("__")]
        if reserved:
            msg = f"{what}: column names starting with '__' are reserved for arrowflow, got {reserved[0]!r}"
            raise PlanError(msg)
        return schema, False
    msg = (
        f"{what}: expected a polars type such as pl.Int64 or a schema such as "
        f"{{'n': pl.Int64, 'total': pl.Float64}}, got {type(value).__name__} {value!r}"
    )
    raise PlanError(msg)


def _ttl(ttl: Any, what: str) -> int | None:
    if ttl is None:
        return None
    ms = duration_ms(ttl, what=f"{what} ttl")
    if ms <= 0:
        msg = f"{what}: ttl must be longer than zero, got {ttl!r}; leave ttl=None for state that never expires"
        raise PlanError(msg)
    return ms


@dataclass(frozen=True)
class _StateDecl:
    name: str
    kind: str
    values: pl.Schema
    single: bool
    ttl_ms: int | None
    map_keys: pl.Schema = field(default_factory=pl.Schema)

    @classmethod
    def _checked_name(cls, name: Any, kind: str) -> str:
        if not isinstance(name, str) or not _STATE_NAME.match(name) or name.startswith("__"):
            msg = (
                f"{kind}(name, ...): the name must be letters, digits and '_', not starting with a "
                f"digit or '__', e.g. 'seen' or 'click_count'; got {name!r}"
            )
            raise PlanError(msg)
        return name

    @property
    def element_schema(self) -> pl.Schema:
        """The columns of one stored element (list, map) or value, TTL time included."""
        columns = {**self.map_keys, **self.values}
        if self.ttl_ms is not None:
            columns[WRITTEN] = pl.Int64()
        return pl.Schema(columns)

    @property
    def store_values(self) -> pl.Schema:
        """The value columns of the state's store."""
        return (
            self.element_schema
            if self.kind == "value"
            else _packed.packed_schema(self.element_schema)
        )

    def store_spec(
        self, operator_id: str, key_schema: pl.Schema, max_parallelism: int
    ) -> StoreSpec:
        return StoreSpec(
            f"{operator_id}/{self.name}",
            key_schema,
            self.store_values,
            max_parallelism=max_parallelism,
        )

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "map_keys": {k: str(v) for k, v in self.map_keys.items()},
            "values": {k: str(v) for k, v in self.values.items()},
            "ttl_ms": self.ttl_ms,
        }

    def __repr__(self) -> str:
        ttl = f", ttl={self.ttl_ms}ms" if self.ttl_ms is not None else ""
        values = next(iter(self.values.values())) if self.single else dict(self.values)
        keys = f"{dict(self.map_keys)}, " if self.kind == "map" else ""
        return f"{type(self).__name__}({self.name!r}, {keys}{values}{ttl})"


class ValueState(_StateDecl):
    """One value per key: ``af.ValueState("count", pl.Int64, ttl="1h")``.

    ``values`` is a polars type (``get`` returns a Series named ``name``) or a schema of
    several columns (``get`` returns a DataFrame). See :class:`ValueStateHandle`.
    """

    def __init__(self, name: str, values: Any, *, ttl: str | Any = None) -> None:
        name = self._checked_name(name, "ValueState")
        schema, single = _columns(values, name, f"ValueState {name!r}")
        super().__init__(name, "value", schema, single, _ttl(ttl, f"ValueState {name!r}"))


class ListState(_StateDecl):
    """A list per key: ``af.ListState("recent", {"page": pl.String, "ts": pl.Datetime("ms")})``.

    Elements are one flat column (a polars type) or several (a schema: ``get`` returns a
    List of Struct). With ``ttl`` every element expires on its own, that long after it was
    appended. See :class:`ListStateHandle`.
    """

    def __init__(self, name: str, values: Any, *, ttl: str | Any = None) -> None:
        name = self._checked_name(name, "ListState")
        schema, single = _columns(values, name, f"ListState {name!r}")
        super().__init__(name, "list", schema, single, _ttl(ttl, f"ListState {name!r}"))
        for column, dtype in self.element_schema.items():
            _packed.layout(column, dtype, f"ListState {name!r}")


class MapState(_StateDecl):
    """A map per key: ``af.MapState("views", key={"page": pl.String}, value=pl.Int64)``.

    ``key`` names the map-key columns (a schema), ``value`` is a polars type or a schema. With
    ``ttl`` every entry expires on its own, that long after it was last put. See
    :class:`MapStateHandle`.
    """

    def __init__(
        self, name: str, *, key: Mapping[str, Any], value: Any, ttl: str | Any = None
    ) -> None:
        name = self._checked_name(name, "MapState")
        what = f"MapState {name!r}"
        if _dtype(key) is not None or not isinstance(key, Mapping | pl.Schema):
            msg = (
                f"{what}: key= names the map-key columns and their types, e.g. key={{'page': pl.String}}; "
                f"got {key!r}"
            )
            raise PlanError(msg)
        map_keys, _ = _columns(key, name, f"{what} key")
        values, single = _columns(value, name, f"{what} value")
        clash = sorted(set(map_keys.names()) & set(values.names()))
        if clash:
            msg = f"{what}: {clash[0]!r} is both a map-key and a value column; rename one of them"
            raise PlanError(msg)
        super().__init__(name, "map", values, single, _ttl(ttl, what), map_keys)
        for column, dtype in self.element_schema.items():
            _packed.layout(column, dtype, what)
