"""Keyed process functions: your code over whole batches, with vectorized keyed state.

``stream.key_by(...).process(fn, states=[...])`` calls ``fn(batch, ctx)`` for every batch
that reaches a worker. ``batch`` is a ``pl.DataFrame`` holding exactly the rows whose keys
that worker owns (rows with equal keys always meet in the same worker, in arrival order);
``fn`` returns a ``pl.DataFrame`` with the same columns every time, any number of rows.
Through ``ctx`` it reads and writes the states it declared — a whole column of keys per
call, never one key at a time — and sends rows to side outputs.

Three kinds of state, each declared once and reached with ``ctx.state(name)``:

- :class:`ValueState`: one value per key. ``get(keys)`` gives a column of values, null where
  a key has none; ``put(keys, values)``; ``clear(keys)``; ``contains(keys)``.
- :class:`ListState`: a list per key. ``get(keys)`` gives a List column (an empty list where
  a key has none); ``append(keys, values)`` appends one element per row, in row order;
  ``put(keys, lists)`` replaces; ``clear(keys)``.
- :class:`MapState`: a map per key, from map keys to values. ``get(rows)``, ``contains``,
  ``put(rows, values)`` and ``remove(rows)`` take rows holding the key columns and the
  map-key columns; ``items(keys)`` lists every entry of the keys; ``clear(keys)``.

A state holds one polars type (``pl.Int64``: the values are a Series named after the
state) or several columns (``{"n": pl.Int64, "total": pl.Float64}``: a DataFrame). Wherever
a method takes ``keys`` or ``rows`` it reads the key columns (and map-key columns) by name and
ignores the others, so passing the batch itself is fine. Values may be a Series, a
DataFrame, a polars expression evaluated on the ``keys`` frame (``pl.col("n") + 1``) or a
scalar. When several rows of one ``put`` share a key, the last one wins.

**Time to live.** ``ttl="30m"`` makes an entry (a value, a list element, a map entry)
expire that long after it was last written: expired entries are invisible to every read
and are deleted lazily, when a read meets them and in a sweep of the whole state at most
once per ``max(ttl, 5 min)``. The clock is processing time (the wall clock when the batch
arrived, ``ctx.now_ms``), or event time with ``process(..., event_time="ts")``: the largest
value of that column the operator has seen so far (each worker measures its own rows until
watermarks exist). Expiry is decided per batch: ``ctx.now_ms`` is the same for every row.

**State layout** (what :mod:`arrowflow.state` stores, one store ``<operator>/<state>`` per
state, keyed by the key columns, on every backend): a value state stores its columns (plus
``__written``, the write time in ms, when it has a TTL); list and map states store all the
elements of a key in one entry (:mod:`arrowflow._packed`), so a list or a map is read and
rewritten whole when one of its keys is touched — keep them to thousands of elements per key,
not millions.

The batch, and anything taken from it, is valid during the call: ``fn`` may keep copies of
its own, and what it returns or writes to state is kept by the engine, which copies the
batches that arrive from another worker (they live in a shared-memory ring) first.

Example — de-duplicate events by id, and count each user's events so far::

    >>> import arrowflow as af, polars as pl
    >>> events = pl.DataFrame({"event_id": [1, 2, 1, 3, 2], "user": ["a", "b", "a", "a", "b"]})
    >>> seen = af.ValueState("seen", pl.Boolean, ttl="1h")
    >>> def dedupe(batch: pl.DataFrame, ctx: af.ProcessContext) -> pl.DataFrame:
    ...     first = batch.unique("event_id", keep="first", maintain_order=True)
    ...     fresh = first.filter(ctx.state("seen").get(first).is_null())
    ...     ctx.state("seen").put(fresh, True)
    ...     return fresh
    >>> def running_count(batch: pl.DataFrame, ctx: af.ProcessContext) -> pl.DataFrame:
    ...     count = ctx.state("count")
    ...     before = count.get(batch).fill_null(0)
    ...     out = batch.with_columns(n=before + pl.int_range(1, pl.len() + 1).over("user"))
    ...     count.put(out, pl.col("n"))  # several rows per user: the last (largest) n wins
    ...     return out
    >>> flow = af.Flow("doc")
    >>> unique = flow.from_polars(events).key_by("event_id").process(dedupe, states=[seen])
    >>> counted = unique.key_by("user").process(running_count, states=[af.ValueState("count", pl.Int64)])
    >>> counted.collect().sort("event_id").rows()
    [(1, 'a', 1), (2, 'b', 1), (3, 'a', 2)]
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from arrowflow import _packed
from arrowflow.errors import PlanError, SchemaError, StateError
from arrowflow.keygroups import (
    DEFAULT_MAX_PARALLELISM,
    KEY_TYPES_HINT,
    is_hashable_key_type,
    key_groups,
)
from arrowflow.state import FOUND, KeyedStore, StateFile, StoreSpec

__all__ = ["ListState", "ListStateHandle", "MapState", "MapStateHandle", "ProcessContext", "ValueState",
           "ValueStateHandle"]

#: Write time (ms of the TTL clock) of a value, a list element or a map entry with a TTL.
WRITTEN = "__written"
#: How often at most a whole state is swept for expired entries, whatever its TTL.
MIN_SWEEP_MS = 5 * 60 * 1000
_STATE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_INDEX = "__k"  # row number of a key in the unique keys of a call

# ---------------------------------------------------------------------------- declarations


def _dtype(value: Any) -> pl.DataType | None:
    if isinstance(value, pl.DataType) or (isinstance(value, type) and issubclass(value, pl.DataType)):
        return pl.DataFrame(schema={"x": value}).schema["x"]
    return None


def _columns(value: Any, default_name: str, what: str) -> tuple[pl.Schema, bool]:
    """(schema, single): a polars type is one column named ``default_name``."""
    dtype = _dtype(value)
    if dtype is not None:
        return pl.Schema({default_name: dtype}), True
    if isinstance(value, Mapping | pl.Schema) or type(value).__name__ == "Schema":
        from arrowflow.io._schema import to_polars_schema

        schema = to_polars_schema(value if isinstance(value, pl.Schema) else dict(value))
        if not len(schema):
            msg = f"{what}: needs at least one column, got an empty schema"
            raise PlanError(msg)
        reserved = [name for name in schema.names() if name.startswith("__")]
        if reserved:
            msg = f"{what}: column names starting with '__' are reserved for arrowflow, got {reserved[0]!r}"
            raise PlanError(msg)
        return schema, False
    msg = (f"{what}: expected a polars type such as pl.Int64 or a schema such as "
           f"{{'n': pl.Int64, 'total': pl.Float64}}, got {type(value).__name__} {value!r}")
    raise PlanError(msg)


def _ttl(ttl: Any, what: str) -> int | None:
    if ttl is None:
        return None
    from arrowflow._util import duration_ms

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
            msg = (f"{kind}(name, ...): the name must be letters, digits and '_', not starting with a "
                   f"digit or '__', e.g. 'seen' or 'click_count'; got {name!r}")
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
        return self.element_schema if self.kind == "value" else _packed.packed_schema(self.element_schema)

    def store_spec(self, operator_id: str, key_schema: pl.Schema, max_parallelism: int) -> StoreSpec:
        return StoreSpec(f"{operator_id}/{self.name}", key_schema, self.store_values, max_parallelism=max_parallelism)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "map_keys": {k: str(v) for k, v in self.map_keys.items()},
                "values": {k: str(v) for k, v in self.values.items()}, "ttl_ms": self.ttl_ms}

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

    def __init__(self, name: str, *, key: Mapping[str, Any], value: Any, ttl: str | Any = None) -> None:
        name = self._checked_name(name, "MapState")
        what = f"MapState {name!r}"
        if _dtype(key) is not None or not isinstance(key, Mapping | pl.Schema):
            msg = (f"{what}: key= names the map-key columns and their types, e.g. key={{'page': pl.String}}; "
                   f"got {key!r}")
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


# ---------------------------------------------------------------------------- helpers


def _lossless(found: pl.DataType, wanted: pl.DataType) -> bool:
    from arrowflow.io._schema import lossless

    return found == wanted or found == pl.Null or lossless(found, wanted)


def _conform(frame: pl.DataFrame, schema: pl.Schema, what: str) -> pl.DataFrame:
    """``frame``'s columns as ``schema``'s types, when nothing is lost converting them.

    Integers convert to any integer type, failing if a value does not fit (a Python ``[1, 2]``
    is Int64 and an Int32 state should take it); other types only to types that hold every
    value (Int32 -> Int64, Float32 -> Float64, a Null column to anything).
    """
    if frame.schema == schema:
        return frame
    for name, dtype in schema.items():
        found = frame.schema[name]
        if not (_lossless(found, dtype) or (found.is_integer() and dtype.is_integer())):
            msg = (f"{what}: column {name!r} must be {dtype}, got {found}; cast it first, "
                   f"e.g. pl.col({name!r}).cast(pl.{dtype})")
            raise SchemaError(msg)
    try:
        return frame.select(pl.col(name).cast(dtype, strict=True) for name, dtype in schema.items())
    except pl.exceptions.InvalidOperationError as exc:
        msg = f"{what}: a value does not fit the state's type: {str(exc).splitlines()[0]}"
        raise SchemaError(msg) from None


def _schema_differences(expected: pl.Schema, got: pl.Schema) -> str:
    return "; ".join(
        f"{name}: expected {expected.get(name, 'no such column')}, got {got.get(name, 'missing')}"
        for name in dict.fromkeys([*expected.names(), *got.names()]) if expected.get(name) != got.get(name)
    )


def conform_output(frame: Any, schema: pl.Schema, what: str, hint: str) -> pl.DataFrame:
    """Check a returned or emitted frame against its schema: same columns (any order), same
    types (all-null columns may be Null); return it in the schema's order and types."""
    if not isinstance(frame, pl.DataFrame):
        msg = f"{what}: expected a polars DataFrame, got {type(frame).__name__}"
        raise PlanError(msg)
    if frame.schema == schema:
        return frame
    if sorted(frame.columns) == sorted(schema.names()) and all(
            frame.schema[name] in (dtype, pl.Null) for name, dtype in schema.items()):
        return frame.select(pl.col(name).cast(dtype) for name, dtype in schema.items())
    msg = f"{what}: the batch does not match its schema ({_schema_differences(schema, frame.schema)}); {hint}"
    raise SchemaError(msg)


def _broadcast_scalar(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | float | str | bytes) or type(value).__module__ in (
        "datetime", "decimal")


# ---------------------------------------------------------------------------- handles


class _Handle:
    """What ``ctx.state(name)`` returns: one state of the operator, over one store."""

    def __init__(self, decl: _StateDecl, store: KeyedStore, ctx: ProcessContext) -> None:
        self.decl = decl
        self.store = store
        self.ctx = ctx
        self.what = f"operator {ctx.operator_id!r}, {type(decl).__name__} {decl.name!r}"

    @property
    def name(self) -> str:
        return self.decl.name

    def _rows(self, frame: Any, extra: pl.Schema | None = None, method: str = "") -> pl.DataFrame:
        """The key columns (and ``extra`` columns) of ``frame``, in the state's types."""
        schema = pl.Schema({**self.ctx.key_schema, **(extra or {})})
        if not isinstance(frame, pl.DataFrame):
            msg = (f"{self.what}: {method}() takes a DataFrame holding the columns {schema.names()} "
                   f"(e.g. the batch itself), got {type(frame).__name__}")
            raise PlanError(msg)
        missing = [name for name in schema.names() if name not in frame.columns]
        if missing:
            msg = (f"{self.what}: {method}() needs the column {missing[0]!r} in the frame it gets; "
                   f"it has {frame.columns}, and {schema.names()} are needed")
            raise SchemaError(msg)
        return _conform(frame.select(schema.names()), schema, f"{self.what}: {method}()")

    def _values(self, rows: pl.DataFrame, frame: pl.DataFrame, values: Any, method: str) -> pl.DataFrame:
        """``values`` as a frame of the state's value columns, one row per row of ``frame``."""
        schema, single = self.decl.values, self.decl.single
        what = f"{self.what}: {method}()"
        if isinstance(values, pl.Expr) or (isinstance(values, list | tuple) and values
                                           and all(isinstance(v, pl.Expr) for v in values)):
            exprs = [values] if isinstance(values, pl.Expr) else list(values)
            if single and len(exprs) == 1:
                exprs = [exprs[0].alias(self.decl.name)]
            try:
                out = frame.with_columns(exprs)
            except pl.exceptions.PolarsError as exc:
                msg = f"{what}: the value expression failed on the frame: {str(exc).splitlines()[0]}"
                raise SchemaError(msg) from None
            values = out.select(name for name in schema.names() if name in out.columns)
        elif isinstance(values, pl.Series):
            if not single:
                msg = f"{what}: this state has the columns {schema.names()}; pass a DataFrame with them, not a Series"
                raise PlanError(msg)
            values = values.alias(self.decl.name).to_frame()
        elif isinstance(values, pl.DataFrame):
            if single and self.decl.name not in values.columns:
                if values.width != 1:
                    msg = (f"{what}: expected one column of values (or a column named {self.decl.name!r}), "
                           f"got {values.columns}")
                    raise PlanError(msg)
                values = values.rename({values.columns[0]: self.decl.name})
        elif _broadcast_scalar(values):
            values = pl.select(pl.repeat(values, frame.height).alias(self.decl.name)) if single else None
            if values is None:
                msg = f"{what}: a scalar fits a state of one column; this state has {schema.names()}"
                raise PlanError(msg)
        else:
            msg = (f"{what}: values must be a Series, a DataFrame, a polars expression or a scalar, "
                   f"got {type(values).__name__}")
            raise PlanError(msg)
        missing = [name for name in schema.names() if name not in values.columns]
        if missing:
            msg = f"{what}: the values have no column {missing[0]!r}; they need {schema.names()}"
            raise SchemaError(msg)
        if values.height != rows.height:
            msg = f"{what}: got {values.height} values for {rows.height} keys; pass one value per row"
            raise PlanError(msg)
        return _conform(values.select(schema.names()), schema, what)

    def _stamp(self, frame: pl.DataFrame) -> pl.DataFrame:
        if self.decl.ttl_ms is None:
            return frame
        return frame.with_columns(pl.lit(self.ctx.now_ms, dtype=pl.Int64).alias(WRITTEN))

    def _expired(self, written: pl.Series) -> np.ndarray:
        """True where an entry with this write time has expired."""
        assert self.decl.ttl_ms is not None
        limit = self.ctx.now_ms - self.decl.ttl_ms
        return (written.fill_null(limit + 1) <= limit).to_numpy()

    def _unique(self, keys: pl.DataFrame) -> pl.DataFrame:
        return keys.unique(maintain_order=True) if keys.height > 1 else keys

    def _write(self, keys: pl.DataFrame, values: pl.DataFrame) -> None:
        self.ctx._check_owned(keys, self.what)
        self.store.put(keys, values)

    def clear(self, keys: pl.DataFrame) -> None:
        """Remove everything the state holds for these keys."""
        rows = self._unique(self._rows(keys, method="clear"))
        if rows.height:
            self.store.delete(rows)

    def _sweep(self) -> None:
        """Delete every expired entry of the state (called by the operator, rarely)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.decl!r}>"


class ValueStateHandle(_Handle):
    """A :class:`ValueState` inside a process function (``ctx.state(name)``)."""

    def _read(self, keys: pl.DataFrame) -> tuple[pl.DataFrame, pl.Series]:
        found = self.store.get(keys)
        present = found.get_column(FOUND)
        if self.decl.ttl_ms is not None and keys.height:
            expired = pl.Series(self._expired(found.get_column(WRITTEN))) & present
            if expired.any():
                self.store.delete(self._unique(keys.filter(expired)))
                present = present & ~expired
                found = found.with_columns(pl.when(present).then(pl.col(c)) for c in self.decl.values.names())
        return found.select(self.decl.values.names()), present

    def get(self, keys: pl.DataFrame) -> pl.Series | pl.DataFrame:
        """The value of each row's key, null where there is none (or it expired)."""
        values, _ = self._read(self._rows(keys, method="get"))
        return values.to_series() if self.decl.single else values

    def contains(self, keys: pl.DataFrame) -> pl.Series:
        """True where the row's key has a value (even a null one)."""
        _, present = self._read(self._rows(keys, method="contains"))
        return present.alias(self.decl.name)

    def put(self, keys: pl.DataFrame, values: Any) -> None:
        """Set the value of each row's key; of several rows with one key, the last wins."""
        rows = self._rows(keys, method="put")
        frame = pl.concat([rows, self._values(rows, keys, values, "put")], how="horizontal")
        if frame.height > 1:
            frame = frame.unique(self.ctx.key_columns, keep="last", maintain_order=False)
        frame = self._stamp(frame)
        self._write(frame.select(self.ctx.key_columns), frame.drop(self.ctx.key_columns))

    def _sweep(self) -> None:
        if self.decl.ttl_ms is None:
            return
        expired = [part.select(self.ctx.key_columns).filter(self._expired(part.get_column(WRITTEN)))
                   for part in self.store.scan()]
        expired = [part for part in expired if part.height]
        if expired:
            self.store.delete(pl.concat(expired))


class _PackedHandle(_Handle):
    """List and map state: every element of a key in one packed store entry."""

    def _decode(self, keys: pl.DataFrame, packed: pl.DataFrame) -> tuple[pl.DataFrame, bool]:
        """(elements with the row number of their key in ``_INDEX``, whether some expired)."""
        elements, lengths = _packed.unpack(packed, self.decl.element_schema)
        elements = elements.with_columns(pl.Series(_INDEX, np.repeat(np.arange(keys.height), lengths)))
        if self.decl.ttl_ms is None or not elements.height:
            return elements, False
        expired = self._expired(elements.get_column(WRITTEN))
        if not expired.any():
            return elements, False
        return elements.filter(~expired), True

    def _load(self, keys: pl.DataFrame) -> pl.DataFrame:
        """The live elements of ``keys`` (unique), in order, with ``_INDEX``; expired ones are deleted."""
        if not keys.height:
            return self._decode(keys, pl.DataFrame(schema=self.decl.store_values))[0]
        elements, some_expired = self._decode(keys, self.store.get(keys))
        if some_expired:
            self._save(keys, elements)
        return elements

    def _save(self, keys: pl.DataFrame, elements: pl.DataFrame) -> None:
        """Store ``elements`` (ordered by ``_INDEX``) as the whole content of ``keys``."""
        index = elements.get_column(_INDEX).to_numpy()
        lengths = np.bincount(index, minlength=keys.height) if len(index) else np.zeros(keys.height, np.int64)
        empty = lengths == 0
        if empty.any():
            self.store.delete(keys.filter(empty))
        if (~empty).any():
            kept = keys.filter(~empty)
            packed = _packed.pack(elements.drop(_INDEX), lengths[~empty], self.decl.element_schema)
            self._write(kept, packed)

    def _sweep(self) -> None:
        if self.decl.ttl_ms is None:
            return
        changes = []
        for part in self.store.scan():
            keys = part.select(self.ctx.key_columns)
            elements, some_expired = self._decode(keys, part.drop(self.ctx.key_columns))
            if some_expired:
                changes.append((keys, elements))
        for keys, elements in changes:
            self._save(keys, elements)

    def _indexed(self, rows: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
        """(unique keys of ``rows``, ``rows`` with the row number of their key in ``_INDEX``)."""
        key_columns = self.ctx.key_columns
        keys = rows.select(key_columns).unique(maintain_order=True)
        numbered = keys.with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias(_INDEX))
        return keys, rows.join(numbered, on=key_columns, how="left", nulls_equal=True, maintain_order="left")


class ListStateHandle(_PackedHandle):
    """A :class:`ListState` inside a process function (``ctx.state(name)``)."""

    def _list_dtype(self) -> pl.DataType:
        if self.decl.single:
            return pl.List(self.decl.values.dtypes()[0])
        return pl.List(pl.Struct(self.decl.values))

    def get(self, keys: pl.DataFrame) -> pl.Series:
        """Each row's list (elements in the order appended; ``[]`` where there is none)."""
        rows = self._rows(keys, method="get")
        unique, indexed = self._indexed(rows)
        elements = self._load(unique)
        columns = self.decl.values.names()
        element = pl.col(columns[0]) if self.decl.single else pl.struct(columns)
        lists = elements.group_by(_INDEX, maintain_order=True).agg(element.alias(self.decl.name))
        dtype = self._list_dtype()
        out = indexed.select(_INDEX).join(lists, on=_INDEX, how="left", maintain_order="left")
        return out.get_column(self.decl.name).cast(dtype).fill_null(pl.lit([], dtype=dtype)).alias(self.decl.name)

    def append(self, keys: pl.DataFrame, values: Any) -> None:
        """Append one element per row to its key's list, in row order."""
        rows = self._rows(keys, method="append")
        added = self._values(rows, keys, values, "append")
        unique, indexed = self._indexed(rows)
        new = self._stamp(pl.concat([added, indexed.select(_INDEX)], how="horizontal"))
        self._replace(unique, new, keep_old=True)

    def put(self, keys: pl.DataFrame, lists: Any) -> None:
        """Replace each row's list (a List column, or a List of Struct for several columns);
        of several rows with one key, the last wins."""
        rows = self._rows(keys, method="put")
        if isinstance(lists, pl.Expr):
            lists = keys.with_columns(lists.alias("__lists")).get_column("__lists")
        if not isinstance(lists, pl.Series) or not isinstance(lists.dtype, pl.List) or lists.len() != rows.height:
            msg = (f"{self.what}: put() takes one list per row (a Series or expression of type "
                   f"{self._list_dtype()}), got {getattr(lists, 'dtype', type(lists).__name__)}")
            raise PlanError(msg)
        frame = rows.with_columns(lists.alias("__lists"))
        if frame.height > 1:
            frame = frame.unique(self.ctx.key_columns, keep="last", maintain_order=True)
        unique = frame.select(self.ctx.key_columns)
        column = frame.get_column("__lists")
        lengths = column.list.len().fill_null(0).to_numpy()
        elements = column.filter(pl.Series(lengths > 0)).explode()
        index = pl.Series(_INDEX, np.repeat(np.arange(frame.height, dtype=np.int64), lengths))
        values = elements.struct.unnest() if not self.decl.single else elements.alias(self.decl.name).to_frame()
        added = self._values(values, values, values, "put")
        self._replace(unique, self._stamp(added.with_columns(index)), keep_old=False)

    def _replace(self, unique: pl.DataFrame, new: pl.DataFrame, *, keep_old: bool) -> None:
        if keep_old:
            old = self._load(unique)
            new = pl.concat([old, new.select(old.columns)], how="vertical") if old.height else new
        self._save(unique, new.sort(_INDEX, maintain_order=True))


class MapStateHandle(_PackedHandle):
    """A :class:`MapState` inside a process function (``ctx.state(name)``)."""

    def _entries(self, rows: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
        """(unique keys, ``rows`` with ``_INDEX``, the live entries of those keys)."""
        unique, indexed = self._indexed(rows)
        return unique, indexed, self._load(unique)

    def _lookup(self, rows: Any, method: str) -> pl.DataFrame:
        wanted = self._rows(rows, self.decl.map_keys, method)
        _, indexed, entries = self._entries(wanted)
        on = [_INDEX, *self.decl.map_keys.names()]
        marked = entries.select(*on, *self.decl.values.names(), pl.lit(True).alias(FOUND))
        return indexed.join(marked, on=on, how="left", nulls_equal=True, maintain_order="left").with_columns(
            pl.col(FOUND).fill_null(False))

    def get(self, rows: pl.DataFrame) -> pl.Series | pl.DataFrame:
        """The value under each row's (key, map key), null where there is none."""
        values = self._lookup(rows, "get").select(self.decl.values.names())
        return values.to_series() if self.decl.single else values

    def contains(self, rows: pl.DataFrame) -> pl.Series:
        """True where the row's (key, map key) has an entry."""
        return self._lookup(rows, "contains").get_column(FOUND).alias(self.decl.name)

    def put(self, rows: pl.DataFrame, values: Any) -> None:
        """Set the value under each row's (key, map key); an existing entry keeps its place,
        a new one goes last. Of several rows with one (key, map key), the last wins."""
        wanted = self._rows(rows, self.decl.map_keys, "put")
        new = pl.concat([wanted, self._values(wanted, rows, values, "put")], how="horizontal")
        on_all = [*self.ctx.key_columns, *self.decl.map_keys.names()]
        if new.height > 1:  # the last value wins, in the place of the first (as in a dict)
            first = pl.col("__first").min().over(on_all)
            new = (new.with_row_index("__first").with_columns(first)
                   .unique(on_all, keep="last", maintain_order=True).sort("__first").drop("__first"))
        new = self._stamp(new)
        unique, indexed, entries = self._entries(new)
        on = [_INDEX, *self.decl.map_keys.names()]
        updates = indexed.select(entries.columns)
        # An updated entry keeps its place (its rank among the key's entries); new ones go last.
        ranked = entries.with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias("__rank"))
        placed = updates.join(ranked.select(*on, "__rank"), on=on, how="left", nulls_equal=True,
                              maintain_order="left").with_columns(
            pl.col("__rank").fill_null(pl.int_range(pl.len(), dtype=pl.Int64) + entries.height))
        untouched = ranked.join(updates.select(on), on=on, how="anti", nulls_equal=True, maintain_order="left")
        self._save(unique, pl.concat([untouched, placed], how="vertical").sort(_INDEX, "__rank").drop("__rank"))

    def remove(self, rows: pl.DataFrame) -> None:
        """Remove the entry under each row's (key, map key), where there is one."""
        wanted = self._rows(rows, self.decl.map_keys, "remove")
        unique, indexed, entries = self._entries(wanted)
        on = [_INDEX, *self.decl.map_keys.names()]
        self._save(unique, entries.join(indexed.select(on), on=on, how="anti", nulls_equal=True, maintain_order="left"))

    def items(self, keys: pl.DataFrame) -> pl.DataFrame:
        """Every entry of these keys: the key columns, the map-key columns and the value
        columns, one row per entry; keys in order of first appearance, entries in the order
        they were first put."""
        rows = self._rows(keys, method="items")
        unique, _, entries = self._entries(rows)
        key_rows = unique.with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias(_INDEX))
        return entries.join(key_rows, on=_INDEX, how="left", maintain_order="left").select(
            *self.ctx.key_columns, *self.decl.map_keys.names(), *self.decl.values.names())


_HANDLES: dict[str, type[_Handle]] = {"value": ValueStateHandle, "list": ListStateHandle, "map": MapStateHandle}

# ---------------------------------------------------------------------------- the context


class ProcessContext:
    """What a process function gets besides its batch: its states, side outputs and clock.

    One context per operator instance (per worker), reused for every batch; don't keep it
    beyond the call either.
    """

    def __init__(self, function: ProcessFunction, key_schema: pl.Schema, stores: Mapping[str, KeyedStore], *,
                 emit: Callable[[pl.DataFrame, str], None] | None = None, worker: int = 0, parallelism: int = 1,
                 key_range: range | None = None) -> None:
        self.operator_id = function.operator_id
        self.key_columns: list[str] = list(key_schema.names())
        self.key_schema = key_schema
        self.worker = worker
        self.parallelism = parallelism
        self.max_parallelism = function.max_parallelism
        self.key_range = key_range if key_range is not None else range(function.max_parallelism)
        #: The clock of this batch, in ms since the epoch: processing time, or event time
        #: with ``event_time=``. TTLs are measured against it.
        self.now_ms = 0
        self._batch_keys: pl.DataFrame | None = None
        self._side_outputs = function.side_output_schemas
        self._emit = emit
        self._input_schema = function.input_schema
        self._states: dict[str, _Handle] = {}
        for decl in function.states:
            store = stores[f"{function.operator_id}/{decl.name}"]
            self._states[decl.name] = _HANDLES[decl.kind](decl, store, self)

    def state(self, name: str) -> Any:
        """The declared state ``name``: a :class:`ValueStateHandle`, :class:`ListStateHandle`
        or :class:`MapStateHandle`."""
        handle = self._states.get(name)
        if handle is None:
            declared = sorted(self._states)
            msg = (f"operator {self.operator_id!r}: the process function asked for state {name!r}, which it did "
                   f"not declare; declared: {declared or 'none'}. Add it to states=[...], e.g. "
                   f"states=[af.ValueState({name!r}, pl.Int64)]")
            raise PlanError(msg)
        return handle

    def emit(self, side_output: str, frame: pl.DataFrame) -> None:
        """Send ``frame`` to the side output ``side_output`` (read with ``stream.side_output(name)``)."""
        schema = self._side_outputs.get(side_output) if isinstance(side_output, str) else None
        if schema is None:
            msg = (f"operator {self.operator_id!r}: emit() to side output {side_output!r}, which is not declared; "
                   f"declared: {sorted(self._side_outputs) or 'none'}. Declare it with "
                   f"side_outputs={{{side_output!r}: schema}} on process()")
            raise PlanError(msg)
        what = f"operator {self.operator_id!r}: emit({side_output!r}, ...)"
        frame = conform_output(frame, self._input_schema if schema == "input" else schema, what,
                               "emit the columns and types declared in side_outputs=")
        if self._emit is not None:
            self._emit(frame, side_output)

    def _begin(self, batch: pl.DataFrame, now_ms: int) -> None:
        """Called by the operator before each call of the function."""
        self.now_ms = now_ms
        self._batch_keys = batch.select(self.key_columns)

    def _check_owned(self, keys: pl.DataFrame, what: str) -> None:
        """Refuse writes for keys of another worker's key groups (they would be lost by a
        snapshot). Keys of the batch are owned; only the others are hashed (cheaper: hashing
        strings costs ~10x a join)."""
        if len(self.key_range) == self.max_parallelism or not keys.height:
            return
        if self._batch_keys is not None:
            keys = keys.join(self._batch_keys, on=self.key_columns, how="anti", nulls_equal=True)
            if not keys.height:
                return
        groups = key_groups(keys, self.max_parallelism)
        if ((groups < self.key_range.start) | (groups >= self.key_range.stop)).any():
            msg = (f"{what}: the process function wrote state for a key this worker does not own; a process "
                   f"function may write state only for keys of the batch it was given")
            raise StateError(msg)

    def _sweep(self) -> None:
        for handle in self._states.values():
            handle._sweep()


# ---------------------------------------------------------------------------- the operator's description


class _EmptyStore(KeyedStore):
    """A store that holds nothing: what the process function sees when its schema is learned."""

    def get(self, keys: pl.DataFrame) -> pl.DataFrame:
        return self.spec.empty_values(keys.height)

    def put(self, keys: pl.DataFrame, values: pl.DataFrame) -> None:
        pass

    def delete(self, keys: pl.DataFrame) -> None:
        pass

    def scan(self) -> Iterator[pl.DataFrame]:
        return iter(())

    def count(self) -> int:
        return 0

    def snapshot(self, fs: Any, root: str, checkpoint_id: int) -> list[StateFile]:
        return []

    def restore(self, fs: Any, root: str, files: list[StateFile]) -> None:
        pass


@dataclass
class ProcessFunction:
    """A keyed process function as the plan holds it (plain data; shipped once per worker)."""

    fn: Callable[[pl.DataFrame, ProcessContext], pl.DataFrame]
    keys: list[str]
    states: tuple[_StateDecl, ...]
    declared_schema: pl.Schema | None
    side_outputs: dict[str, pl.Schema | None]
    event_time: str | None
    operator_id: str
    max_parallelism: int = DEFAULT_MAX_PARALLELISM
    input_schema: pl.Schema = field(default_factory=pl.Schema)
    output_schema: pl.Schema = field(default_factory=pl.Schema)

    @classmethod
    def build(cls, fn: Any, *, keys: list[str], states: Any, schema: Any, side_outputs: Any,
              event_time: Any, operator_id: str) -> ProcessFunction:
        """Check the arguments of ``KeyedStream.process``; no schema needed yet."""
        where = f"operator {operator_id!r}"
        if not callable(fn):
            msg = (f"{where}: process() expects a function (batch: pl.DataFrame, ctx: af.ProcessContext) -> "
                   f"pl.DataFrame, got {type(fn).__name__}")
            raise PlanError(msg)
        if isinstance(states, _StateDecl):
            states = [states]
        if not isinstance(states, Sequence) or isinstance(states, str) or not all(
                isinstance(s, _StateDecl) for s in states):
            msg = (f"{where}: states= expects a list of af.ValueState, af.ListState or af.MapState, "
                   f"got {states!r}")
            raise PlanError(msg)
        names = [s.name for s in states]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            msg = f"{where}: two states are called {twice[0]!r}; state names must be unique per operator"
            raise PlanError(msg)
        reserved = [k for k in keys if k.startswith("__")]
        if reserved:
            msg = f"{where}: key columns starting with '__' are reserved for arrowflow, got {reserved[0]!r}"
            raise PlanError(msg)
        for state in states:
            clash = sorted(set(keys) & set(state.element_schema.names()))
            if clash:
                msg = (f"{where}: {state!r} has a column {clash[0]!r}, which is also a key column; rename "
                       f"the state or its columns")
                raise PlanError(msg)
        declared = None
        if schema is not None:
            from arrowflow.io._schema import to_polars_schema

            declared = to_polars_schema(schema)
        sides: dict[str, pl.Schema | None] = {}
        if side_outputs is not None:
            if not isinstance(side_outputs, Mapping):
                msg = (f"{where}: side_outputs= expects a dict of name -> schema (None: the input's schema), "
                       f"got {type(side_outputs).__name__}")
                raise PlanError(msg)
            from arrowflow.io._schema import to_polars_schema

            for side, side_schema in side_outputs.items():
                if not isinstance(side, str) or not re.match(r"^[A-Za-z0-9_.\-]+$", side) or side in (
                        "main", "malformed", "late"):
                    msg = (f"{where}: side output names are letters, digits, '_', '-', '.', and not 'main', "
                           f"'malformed' or 'late'; got {side!r}")
                    raise PlanError(msg)
                sides[side] = None if side_schema is None else to_polars_schema(side_schema)
        if event_time is not None and not isinstance(event_time, str):
            msg = f"{where}: event_time= expects the name of a Datetime or Date column, got {event_time!r}"
            raise PlanError(msg)
        return cls(fn, list(keys), tuple(states), declared, sides, event_time, operator_id)

    @property
    def side_output_schemas(self) -> dict[str, Any]:
        return {name: "input" if schema is None else schema for name, schema in self.side_outputs.items()}

    def key_schema(self, input_schema: pl.Schema) -> pl.Schema:
        return pl.Schema({k: input_schema[k] for k in self.keys})

    def side_output_schema(self, name: str, input_schema: pl.Schema) -> pl.Schema:
        schema = self.side_outputs[name]
        return input_schema if schema is None else schema

    def fingerprint(self) -> dict[str, Any]:
        return {"keys": self.keys, "states": [s.describe() for s in self.states], "event_time": self.event_time}

    def describe(self) -> str:
        name = getattr(self.fn, "__name__", type(self.fn).__name__)
        states = ", ".join(repr(s) for s in self.states) or "no state"
        text = f"keyed process function {name} by {self.keys}; {states}"
        if self.side_outputs:
            text += f"; side outputs {sorted(self.side_outputs)}"
        return text

    def bind(self, input_schema: pl.Schema, output_schema: pl.Schema, max_parallelism: int) -> ProcessFunction:
        """A copy for the plan, knowing its schemas and key groups."""
        from dataclasses import replace

        return replace(self, input_schema=input_schema, output_schema=output_schema, max_parallelism=max_parallelism)

    def learn_schema(self, input_schema: pl.Schema) -> pl.Schema:
        """Check the function against ``input_schema`` and return its output schema.

        The function runs once on an empty batch, with states that hold nothing: that checks
        the state names and arguments it uses and, without ``schema=``, learns its output.
        """
        where = f"operator {self.operator_id!r}"
        missing = [k for k in self.keys if k not in input_schema]
        if missing:
            msg = f"{where}: no key column {missing[0]!r} in the input; its columns are {input_schema.names()}"
            raise SchemaError(msg)
        for key in self.keys:
            if not is_hashable_key_type(input_schema[key]):
                msg = f"{where}: cannot key by column {key!r} of type {input_schema[key]}; {KEY_TYPES_HINT}"
                raise SchemaError(msg)
        if self.event_time is not None:
            dtype = input_schema.get(self.event_time)
            if dtype is None or not (isinstance(dtype, pl.Datetime) or dtype == pl.Date):
                msg = (f"{where}: event_time={self.event_time!r} must name a Datetime or Date column of the input; "
                       f"it is {dtype or 'missing'} (columns: {input_schema.names()})")
                raise SchemaError(msg)
        key_schema = self.key_schema(input_schema)
        probe = ProcessFunction(**{**self.__dict__, "input_schema": input_schema})
        stores = {}
        for decl in self.states:
            spec = decl.store_spec(self.operator_id, key_schema, self.max_parallelism)
            stores[spec.name] = _EmptyStore(spec, range(self.max_parallelism))
        ctx = ProcessContext(probe, key_schema, stores)
        try:
            out = self.fn(pl.DataFrame(schema=input_schema), ctx)
        except PlanError as exc:  # our own checks (state names, arguments): always an error
            msg = f"{exc} (found calling the process function on an empty batch)"
            raise type(exc)(msg) from None
        except Exception as exc:
            if self.declared_schema is not None:
                return self.declared_schema
            msg = (f"{where}: the process function could not be run on an empty batch to learn its output "
                   f"schema ({type(exc).__name__}: {exc}); pass schema={{...}} to process()")
            raise SchemaError(msg) from None
        if not isinstance(out, pl.DataFrame):
            msg = f"{where}: the process function must return a polars DataFrame, it returned {type(out).__name__}"
            raise PlanError(msg)
        if self.declared_schema is None:
            return out.schema
        conform_output(out, self.declared_schema, f"{where}: on an empty batch the process function",
                       "return the declared schema= (or drop schema= to learn it)")
        return self.declared_schema
