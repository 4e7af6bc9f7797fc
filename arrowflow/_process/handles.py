"""The state handles a process function reaches with ``ctx.state(name)``.

One handle per declared state and operator instance, over one :class:`arrowflow.state.KeyedStore`.
Every method takes whole frames (a column of keys per call) and makes a fixed, small number of
store calls, whatever the number of keys: no Python code runs per key. The semantics (what
``get`` returns for a missing key, which of several writes wins, expiry) are documented on the
public classes, re-exported by :mod:`arrowflow._process.context`.

What a handle keeps between calls: nothing but its store. The clock (``ctx.now_ms``) and the
keys of the batch being processed come from the context.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from arrowflow._foundation.schema import lossless
from arrowflow._process import packed as _packed
from arrowflow._process.declarations import WRITTEN, _StateDecl
from arrowflow.errors import PlanError, SchemaError
from arrowflow.state import FOUND, KeyedStore, join_on_keys

if TYPE_CHECKING:
    from arrowflow._process.context import ProcessContext

_INDEX = "__k"  # row number of a key in the unique keys of a call


def _lossless(found: pl.DataType, wanted: pl.DataType) -> bool:
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
            msg = (
                f"{what}: column {name!r} must be {dtype}, got {found}; cast it first, "
                f"e.g. pl.col({name!r}).cast(pl.{dtype})"
            )
            raise SchemaError(msg)
    try:
        return frame.select(pl.col(name).cast(dtype, strict=True) for name, dtype in schema.items())
    except pl.exceptions.InvalidOperationError as exc:
        msg = f"{what}: a value does not fit the state's type: {str(exc).splitlines()[0]}"
        raise SchemaError(msg) from None


def _schema_differences(expected: pl.Schema, got: pl.Schema) -> str:
    return "; ".join(
        f"{name}: expected {expected.get(name, 'no such column')}, got {got.get(name, 'missing')}"
        for name in dict.fromkeys([*expected.names(), *got.names()])
        if expected.get(name) != got.get(name)
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
        frame.schema[name] in (dtype, pl.Null) for name, dtype in schema.items()
    ):
        return frame.select(pl.col(name).cast(dtype) for name, dtype in schema.items())
    msg = f"{what}: the batch does not match its schema ({_schema_differences(schema, frame.schema)}); {hint}"
    raise SchemaError(msg)


def _broadcast_scalar(value: Any) -> bool:
    return (
        value is None
        or isinstance(value, bool | int | float | str | bytes)
        or type(value).__module__ in ("datetime", "decimal")
    )


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
            msg = (
                f"{self.what}: {method}() takes a DataFrame holding the columns {schema.names()} "
                f"(e.g. the batch itself), got {type(frame).__name__}"
            )
            raise PlanError(msg)
        missing = [name for name in schema.names() if name not in frame.columns]
        if missing:
            msg = (
                f"{self.what}: {method}() needs the column {missing[0]!r} in the frame it gets; "
                f"it has {frame.columns}, and {schema.names()} are needed"
            )
            raise SchemaError(msg)
        return _conform(frame.select(schema.names()), schema, f"{self.what}: {method}()")

    def _values(
        self, rows: pl.DataFrame, frame: pl.DataFrame, values: Any, method: str
    ) -> pl.DataFrame:
        """``values`` as a frame of the state's value columns, one row per row of ``frame``."""
        schema, single = self.decl.values, self.decl.single
        what = f"{self.what}: {method}()"
        if isinstance(values, pl.Expr) or (
            isinstance(values, list | tuple)
            and values
            and all(isinstance(v, pl.Expr) for v in values)
        ):
            exprs = [values] if isinstance(values, pl.Expr) else list(values)
            if single and len(exprs) == 1:
                exprs = [exprs[0].alias(self.decl.name)]
            try:
                out = frame.with_columns(exprs)
            except pl.exceptions.PolarsError as exc:
                msg = (
                    f"{what}: the value expression failed on the frame: {str(exc).splitlines()[0]}"
                )
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
                    msg = (
                        f"{what}: expected one column of values (or a column named {self.decl.name!r}), "
                        f"got {values.columns}"
                    )
                    raise PlanError(msg)
                values = values.rename({values.columns[0]: self.decl.name})
        elif _broadcast_scalar(values):
            values = (
                pl.select(pl.repeat(values, frame.height).alias(self.decl.name)) if single else None
            )
            if values is None:
                msg = (
                    f"{what}: a scalar fits a state of one column; this state has {schema.names()}"
                )
                raise PlanError(msg)
        else:
            msg = (
                f"{what}: values must be a Series, a DataFrame, a polars expression or a scalar, "
                f"got {type(values).__name__}"
            )
            raise PlanError(msg)
        missing = [name for name in schema.names() if name not in values.columns]
        if missing:
            msg = f"{what}: the values have no column {missing[0]!r}; they need {schema.names()}"
            raise SchemaError(msg)
        if values.height != rows.height:
            msg = (
                f"{what}: got {values.height} values for {rows.height} keys; pass one value per row"
            )
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
                found = found.with_columns(
                    pl.when(present).then(pl.col(c)) for c in self.decl.values.names()
                )
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
        expired = [
            part.select(self.ctx.key_columns).filter(self._expired(part.get_column(WRITTEN)))
            for part in self.store.scan()
        ]
        expired = [part for part in expired if part.height]
        if expired:
            self.store.delete(pl.concat(expired))


class _PackedHandle(_Handle):
    """List and map state: every element of a key in one packed store entry."""

    def _decode(self, keys: pl.DataFrame, packed: pl.DataFrame) -> tuple[pl.DataFrame, bool]:
        """(elements with the row number of their key in ``_INDEX``, whether some expired)."""
        elements, lengths = _packed.unpack(packed, self.decl.element_schema)
        elements = elements.with_columns(
            pl.Series(_INDEX, np.repeat(np.arange(keys.height), lengths))
        )
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
        lengths = (
            np.bincount(index, minlength=keys.height)
            if len(index)
            else np.zeros(keys.height, np.int64)
        )
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
        return keys, join_on_keys(rows, numbered, key_columns, "left", maintain_order="left")


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
        return (
            out.get_column(self.decl.name)
            .cast(dtype)
            .fill_null(pl.lit([], dtype=dtype))
            .alias(self.decl.name)
        )

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
        if (
            not isinstance(lists, pl.Series)
            or not isinstance(lists.dtype, pl.List)
            or lists.len() != rows.height
        ):
            msg = (
                f"{self.what}: put() takes one list per row (a Series or expression of type "
                f"{self._list_dtype()}), got {getattr(lists, 'dtype', type(lists).__name__)}"
            )
            raise PlanError(msg)
        frame = rows.with_columns(lists.alias("__lists"))
        if frame.height > 1:
            frame = frame.unique(self.ctx.key_columns, keep="last", maintain_order=True)
        unique = frame.select(self.ctx.key_columns)
        column = frame.get_column("__lists")
        lengths = column.list.len().fill_null(0).to_numpy()
        elements = column.filter(pl.Series(lengths > 0)).explode()
        index = pl.Series(_INDEX, np.repeat(np.arange(frame.height, dtype=np.int64), lengths))
        values = (
            elements.struct.unnest()
            if not self.decl.single
            else elements.alias(self.decl.name).to_frame()
        )
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
        return join_on_keys(indexed, marked, on, "left", maintain_order="left").with_columns(
            pl.col(FOUND).fill_null(False)
        )

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
            new = (
                new.with_row_index("__first")
                .with_columns(first)
                .unique(on_all, keep="last", maintain_order=True)
                .sort("__first")
                .drop("__first")
            )
        new = self._stamp(new)
        unique, indexed, entries = self._entries(new)
        on = [_INDEX, *self.decl.map_keys.names()]
        updates = indexed.select(entries.columns)
        # An updated entry keeps its place (its rank among the key's entries); new ones go last.
        ranked = entries.with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias("__rank"))
        placed = join_on_keys(
            updates, ranked.select(*on, "__rank"), on, "left", maintain_order="left"
        ).with_columns(
            pl.col("__rank").fill_null(pl.int_range(pl.len(), dtype=pl.Int64) + entries.height)
        )
        untouched = join_on_keys(ranked, updates.select(on), on, "anti", maintain_order="left")
        self._save(
            unique,
            pl.concat([untouched, placed], how="vertical").sort(_INDEX, "__rank").drop("__rank"),
        )

    def remove(self, rows: pl.DataFrame) -> None:
        """Remove the entry under each row's (key, map key), where there is one."""
        wanted = self._rows(rows, self.decl.map_keys, "remove")
        unique, indexed, entries = self._entries(wanted)
        on = [_INDEX, *self.decl.map_keys.names()]
        self._save(
            unique, join_on_keys(entries, indexed.select(on), on, "anti", maintain_order="left")
        )

    def items(self, keys: pl.DataFrame) -> pl.DataFrame:
        """Every entry of these keys: the key columns, the map-key columns and the value
        columns, one row per entry; keys in order of first appearance, entries in the order
        they were first put."""
        rows = self._rows(keys, method="items")
        unique, _, entries = self._entries(rows)
        key_rows = unique.with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias(_INDEX))
        return entries.join(key_rows, on=_INDEX, how="left", maintain_order="left").select(
            *self.ctx.key_columns, *self.decl.map_keys.names(), *self.decl.values.names()
        )


HANDLES: dict[str, type[_Handle]] = {
    "value": ValueStateHandle,
    "list": ListStateHandle,
    "map": MapStateHandle,
}
