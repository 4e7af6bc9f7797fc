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
elements of a key in one entry (:mod:`arrowflow._process.packed`), so a list or a map is read and
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

import polars as pl

from arrowflow._foundation.keygroups import (
    DEFAULT_MAX_PARALLELISM,
    KEY_TYPES_HINT,
    is_hashable_key_type,
    key_groups,
)
from arrowflow._foundation.schema import to_polars_schema
from arrowflow._process.declarations import WRITTEN as WRITTEN
from arrowflow._process.declarations import ListState as ListState
from arrowflow._process.declarations import MapState as MapState
from arrowflow._process.declarations import ValueState as ValueState
from arrowflow._process.declarations import _StateDecl
from arrowflow._process.handles import HANDLES, _Handle, conform_output
from arrowflow._process.handles import ListStateHandle as ListStateHandle
from arrowflow._process.handles import MapStateHandle as MapStateHandle
from arrowflow._process.handles import ValueStateHandle as ValueStateHandle
from arrowflow.errors import PlanError, SchemaError, StateError
from arrowflow.state import KeyedStore, StateFile

__all__ = [
    "ListState",
    "ListStateHandle",
    "MapState",
    "MapStateHandle",
    "ProcessContext",
    "ValueState",
    "ValueStateHandle",
    "conform_output",
]

#: How often at most a whole state is swept for expired entries, whatever its TTL.
MIN_SWEEP_MS = 5 * 60 * 1000

# ---------------------------------------------------------------------------- the context


class ProcessContext:
    """What a process function gets besides its batch: its states, side outputs and clock.

    One context per operator instance (per worker), reused for every batch; don't keep it
    beyond the call either.
    """

    def __init__(
        self,
        function: ProcessFunction,
        key_schema: pl.Schema,
        stores: Mapping[str, KeyedStore],
        *,
        emit: Callable[[pl.DataFrame, str], None] | None = None,
        worker: int = 0,
        parallelism: int = 1,
        key_range: range | None = None,
    ) -> None:
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
            self._states[decl.name] = HANDLES[decl.kind](decl, store, self)

    def state(self, name: str) -> Any:
        """The declared state ``name``: a :class:`ValueStateHandle`, :class:`ListStateHandle`
        or :class:`MapStateHandle`."""
        handle = self._states.get(name)
        if handle is None:
            declared = sorted(self._states)
            msg = (
                f"operator {self.operator_id!r}: the process function asked for state {name!r}, which it did "
                f"not declare; declared: {declared or 'none'}. Add it to states=[...], e.g. "
                f"states=[af.ValueState({name!r}, pl.Int64)]"
            )
            raise PlanError(msg)
        return handle

    def emit(self, side_output: str, frame: pl.DataFrame) -> None:
        """Send ``frame`` to the side output ``side_output`` (read with ``stream.side_output(name)``)."""
        schema = self._side_outputs.get(side_output) if isinstance(side_output, str) else None
        if schema is None:
            msg = (
                f"operator {self.operator_id!r}: emit() to side output {side_output!r}, which is not declared; "
                f"declared: {sorted(self._side_outputs) or 'none'}. Declare it with "
                f"side_outputs={{{side_output!r}: schema}} on process()"
            )
            raise PlanError(msg)
        what = f"operator {self.operator_id!r}: emit({side_output!r}, ...)"
        frame = conform_output(
            frame,
            self._input_schema if schema == "input" else schema,
            what,
            "emit the columns and types declared in side_outputs=",
        )
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
            msg = (
                f"{what}: the process function wrote state for a key this worker does not own; a process "
                f"function may write state only for keys of the batch it was given"
            )
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
    def build(
        cls,
        fn: Any,
        *,
        keys: list[str],
        states: Any,
        schema: Any,
        side_outputs: Any,
        event_time: Any,
        operator_id: str,
    ) -> ProcessFunction:
        """Check the arguments of ``KeyedStream.process``; no schema needed yet."""
        where = f"operator {operator_id!r}"
        if not callable(fn):
            msg = (
                f"{where}: process() expects a function (batch: pl.DataFrame, ctx: af.ProcessContext) -> "
                f"pl.DataFrame, got {type(fn).__name__}"
            )
            raise PlanError(msg)
        if isinstance(states, _StateDecl):
            states = [states]
        if (
            not isinstance(states, Sequence)
            or isinstance(states, str)
            or not all(isinstance(s, _StateDecl) for s in states)
        ):
            msg = (
                f"{where}: states= expects a list of af.ValueState, af.ListState or af.MapState, "
                f"got {states!r}"
            )
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
                msg = (
                    f"{where}: {state!r} has a column {clash[0]!r}, which is also a key column; rename "
                    f"the state or its columns"
                )
                raise PlanError(msg)
        declared = None
        if schema is not None:
            declared = to_polars_schema(schema)
        sides: dict[str, pl.Schema | None] = {}
        if side_outputs is not None:
            if not isinstance(side_outputs, Mapping):
                msg = (
                    f"{where}: side_outputs= expects a dict of name -> schema (None: the input's schema), "
                    f"got {type(side_outputs).__name__}"
                )
                raise PlanError(msg)
            for side, side_schema in side_outputs.items():
                if (
                    not isinstance(side, str)
                    or not re.match(r"^[A-Za-z0-9_.\-]+$", side)
                    or side in ("main", "malformed", "late")
                ):
                    msg = (
                        f"{where}: side output names are letters, digits, '_', '-', '.', and not 'main', "
                        f"'malformed' or 'late'; got {side!r}"
                    )
                    raise PlanError(msg)
                sides[side] = None if side_schema is None else to_polars_schema(side_schema)
        if event_time is not None and not isinstance(event_time, str):
            msg = f"{where}: event_time= expects the name of a Datetime or Date column, got {event_time!r}"
            raise PlanError(msg)
        return cls(fn, list(keys), tuple(states), declared, sides, event_time, operator_id)

    @property
    def side_output_schemas(self) -> dict[str, Any]:
        return {
            name: "input" if schema is None else schema
            for name, schema in self.side_outputs.items()
        }

    def key_schema(self, input_schema: pl.Schema) -> pl.Schema:
        return pl.Schema({k: input_schema[k] for k in self.keys})

    def side_output_schema(self, name: str, input_schema: pl.Schema) -> pl.Schema:
        schema = self.side_outputs[name]
        return input_schema if schema is None else schema

    def fingerprint(self) -> dict[str, Any]:
        return {
            "keys": self.keys,
            "states": [s.describe() for s in self.states],
            "event_time": self.event_time,
        }

    def describe(self) -> str:
        name = getattr(self.fn, "__name__", type(self.fn).__name__)
        states = ", ".join(repr(s) for s in self.states) or "no state"
        text = f"keyed process function {name} by {self.keys}; {states}"
        if self.side_outputs:
            text += f"; side outputs {sorted(self.side_outputs)}"
        return text

    def bind(
        self, input_schema: pl.Schema, output_schema: pl.Schema, max_parallelism: int
    ) -> ProcessFunction:
        """A copy for the plan, knowing its schemas and key groups."""
        from dataclasses import replace

        return replace(
            self,
            input_schema=input_schema,
            output_schema=output_schema,
            max_parallelism=max_parallelism,
        )

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
                msg = (
                    f"{where}: event_time={self.event_time!r} must name a Datetime or Date column of the input; "
                    f"it is {dtype or 'missing'} (columns: {input_schema.names()})"
                )
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
            msg = (
                f"{where}: the process function could not be run on an empty batch to learn its output "
                f"schema ({type(exc).__name__}: {exc}); pass schema={{...}} to process()"
            )
            raise SchemaError(msg) from None
        if not isinstance(out, pl.DataFrame):
            msg = f"{where}: the process function must return a polars DataFrame, it returned {type(out).__name__}"
            raise PlanError(msg)
        if self.declared_schema is None:
            return out.schema
        conform_output(
            out,
            self.declared_schema,
            f"{where}: on an empty batch the process function",
            "return the declared schema= (or drop schema= to learn it)",
        )
        return self.declared_schema
