"""Event-time windows: the window kinds, and how a keyed window aggregation is computed.

``stream.with_watermark("ts", delay="5s").key_by("user").window(af.tumbling("60s")).agg(...)``
describes, per key, one row per window with the aggregates over the window's events:
output columns are the keys, ``window_start``, ``window_end``, then the aggregates
(docs/design.md §1). Windows are half-open intervals ``[window_start, window_end)`` of the event
time column:

- ``tumbling(size)``: ``[k*size, (k+1)*size)``, aligned on the epoch (as polars'
  ``dt.truncate(size)``); each event is in exactly one window;
- ``sliding(size, every)``: windows of ``size`` starting every ``every`` (at multiples of
  ``every``); an event is in each window that contains it;
- ``session(gap)``: per key, events less than ``gap`` apart belong to one session
  ``[first event, last event + gap)``; sessions that come to overlap merge.

A window *fires* (emits its row, and leaves the state) once the watermark reaches
``window_end + allowed_lateness`` (a session: ``gap`` later still). An event is *late* when
its window's ``window_end + allowed_lateness`` is at or behind the watermark of its own
split before it (the newest event time of the split's earlier rows minus the delay; see
:mod:`arrowflow._foundation.watermarks`), or when its window already fired (on unbounded input): it goes
to the ``late`` side output with the columns of the event and the ``window_start``/
``window_end`` it missed (one row per missed window), and is counted in the operator's
metrics. For a session, an event is late when ``ts + gap + allowed_lateness`` is at or behind
that watermark. Each window fires once: allowed lateness delays the firing, it does not
re-fire an updated row.

The aggregates are the incremental ones of :mod:`arrowflow._graph.aggregates`, with the window start
as an extra key; the runtime side is :mod:`arrowflow._runtime.window_op`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import polars as pl

from arrowflow._foundation.watermarks import check_time_column, duration_arg, per_ms
from arrowflow._graph.aggregates import IncrementalAgg, named_aggregations
from arrowflow.errors import PlanError, SchemaError

if TYPE_CHECKING:
    from arrowflow._api.flow import KeyedStream, Stream

WINDOW_START, WINDOW_END = "window_start", "window_end"
KINDS = ("tumbling", "sliding", "session")


@dataclass(frozen=True)
class WindowSpec:
    """A window kind and its durations in milliseconds (build it with :func:`tumbling`,
    :func:`sliding` or :func:`session`)."""

    kind: str
    size_ms: int = 0
    every_ms: int = 0
    gap_ms: int = 0

    def describe(self) -> str:
        if self.kind == "tumbling":
            return f"tumbling({self.size_ms}ms)"
        if self.kind == "sliding":
            return f"sliding({self.size_ms}ms, every={self.every_ms}ms)"
        return f"session(gap={self.gap_ms}ms)"


def tumbling(size: str | timedelta) -> WindowSpec:
    """Fixed, non-overlapping windows of ``size`` (``"60s"``, ``"5m"``, a timedelta)."""
    ms = duration_arg(size, "tumbling(size)", allow_zero=False)
    assert ms is not None
    return WindowSpec("tumbling", size_ms=ms, every_ms=ms)


def sliding(size: str | timedelta, *, every: str | timedelta) -> WindowSpec:
    """Windows of ``size`` starting every ``every``; an event is in ``size / every`` of them."""
    ms = duration_arg(size, "sliding(size)", allow_zero=False)
    step = duration_arg(every, "sliding(every=...)", allow_zero=False)
    assert ms is not None and step is not None
    if step > ms:
        msg = (
            f"sliding(size={size!r}, every={every!r}): every is longer than the window, so some events "
            f"would be in no window; use every <= size (or tumbling(size) when they are equal)"
        )
        raise PlanError(msg)
    return WindowSpec("sliding", size_ms=ms, every_ms=step)


def session(gap: str | timedelta) -> WindowSpec:
    """Per key, events closer than ``gap`` to the previous one share a session window."""
    ms = duration_arg(gap, "session(gap)", allow_zero=False)
    assert ms is not None
    return WindowSpec("session", gap_ms=ms)


class WindowAgg:
    """The plan-time half of a window aggregation: schemas, state layout, window assignment.

    Window arithmetic happens on the physical integers of the time column (its unit);
    watermarks arrive in microseconds and are converted once per watermark.
    """

    def __init__(
        self,
        spec: WindowSpec,
        keys: list[str],
        aggs: dict[str, pl.Expr],
        input_schema: pl.Schema,
        time_column: str,
        allowed_lateness_ms: int,
        operator_id: str,
    ) -> None:
        self.spec = spec
        self.keys = list(keys)
        self.time_column = time_column
        self.operator_id = operator_id
        self.dtype = check_time_column(input_schema, time_column, operator_id)
        self.per_ms = per_ms(self.dtype)
        taken = [c for c in (WINDOW_START, WINDOW_END) if c in keys or c in aggs]
        if taken:
            msg = (
                f"operator {operator_id!r}: {taken[0]!r} is a column the window adds to its output; "
                f"rename that key or aggregation"
            )
            raise PlanError(msg)
        clash = [c for c in (WINDOW_START, WINDOW_END) if c in input_schema]
        if clash:
            msg = (
                f"operator {operator_id!r}: the input already has a column {clash[0]!r}, which the window "
                f"adds; rename it first, e.g. .rename({{{clash[0]!r}: 'previous_{clash[0]}'}})"
            )
            raise SchemaError(msg)
        self.input_schema = input_schema
        extended = pl.Schema({**input_schema, WINDOW_START: self.dtype})
        self.agg = IncrementalAgg(
            aggs, [*self.keys, WINDOW_START], extended, operator_id=operator_id
        )
        self.size = spec.size_ms * self.per_ms
        self.every = spec.every_ms * self.per_ms
        self.gap = spec.gap_ms * self.per_ms
        self.lateness = allowed_lateness_ms * self.per_ms
        names = list(self.agg.output_schema.names())
        position = len(self.keys) + 1
        self.output_schema = pl.Schema(
            [(n, self.agg.output_schema[n]) for n in names[:position]]
            + [(WINDOW_END, self.dtype)]
            + [(n, self.agg.output_schema[n]) for n in names[position:]]
        )
        self.key_schema = self.agg.key_schema
        if spec.kind == "session":
            self.state_schema = pl.Schema({WINDOW_END: self.dtype, **self.agg.state_schema})
        else:
            self.state_schema = self.agg.state_schema
        self.late_schema = pl.Schema(
            {**input_schema, WINDOW_START: self.dtype, WINDOW_END: self.dtype}
        )

    @property
    def is_session(self) -> bool:
        return self.spec.kind == "session"

    def to_units(self, watermark_us: int) -> int:
        """A watermark (microseconds) in the time column's unit, rounded down."""
        return watermark_us * self.per_ms // 1000

    def assign(self, batch: pl.DataFrame) -> pl.DataFrame:
        """``batch`` with a physical ``__start`` column: one row per (event, window) for
        tumbling and sliding windows."""
        ts = pl.col(self.time_column).to_physical()
        first = (ts // self.every) * self.every
        if self.spec.kind == "tumbling" or self.size == self.every:
            return batch.with_columns(first.alias("__start"))
        copies = -(-self.size // self.every)
        frames = []
        for j in range(copies):
            start = first - j * self.every
            frames.append(
                batch.with_columns(start.alias("__start")).filter(
                    ts < pl.col("__start") + self.size
                )
            )
        return pl.concat(frames, how="vertical")

    def fingerprint(self) -> dict[str, Any]:
        return {
            "window": self.spec.describe(),
            "keys": self.keys,
            "time": self.time_column,
            "lateness": self.lateness,
            "aggs": {t.name: f"{t.kind}({t.source})" for t in self.agg.terms},
            "state": {k: str(v) for k, v in self.state_schema.items()},
        }


class WindowedStream:
    """A keyed stream with a window: ``.agg(...)`` computes the window aggregation."""

    def __init__(
        self, keyed: KeyedStream, spec: WindowSpec, allowed_lateness: str | timedelta | None
    ) -> None:
        if not isinstance(spec, WindowSpec):
            msg = (
                f"window() expects af.tumbling(size), af.sliding(size, every=...) or af.session(gap=...), "
                f"got {type(spec).__name__} {spec!r}"
            )
            raise PlanError(msg)
        self.keyed = keyed
        self.spec = spec
        self.lateness_ms = duration_arg(allowed_lateness, "window(allowed_lateness=...)") or 0
        self.time_column = _upstream_time_column(keyed.stream)

    def agg(self, *exprs: pl.Expr, name: str | None = None, **named: pl.Expr) -> Stream:
        """One row per key and window: keys, window_start, window_end, then the aggregates."""
        from arrowflow._api.flow import Stream

        stream = self.keyed.stream
        flow = stream.flow
        op_id = flow._new_id("window", name)
        aggs = named_aggregations(exprs, named, op_id)
        keys = list(self.keyed.keys)
        spec, time_column, lateness = self.spec, self.time_column, self.lateness_ms

        def make(schema: pl.Schema, _id: list[str] = [op_id]) -> WindowAgg:  # noqa: B006 - set below
            return WindowAgg(spec, keys, aggs, schema, time_column, lateness, _id[0])

        late = {"late": lambda _output, _node=stream.node: make(flow.schema_of(_node)).late_schema}
        node = flow._add(
            "window",
            [stream.node],
            name,
            keys=keys,
            aggs=aggs,
            window=make,
            spec=spec,
            time_column=time_column,
            side_outputs=late,
        )
        make.__defaults__ = ([node.id],)  # name errors after the real operator id
        return Stream(flow, flow._validate(node))

    def __repr__(self) -> str:
        return f"WindowedStream({self.keyed.stream.node.id!r}, keys={self.keyed.keys}, {self.spec.describe()})"


def _upstream_time_column(stream: Stream) -> str:
    """The event-time column of the nearest ``with_watermark`` upstream (or a PlanError)."""
    pending = [stream.node]
    seen: set[int] = set()
    found: list[str] = []
    while pending:
        node = pending.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if node.kind == "watermark":
            found.append(node.params["column"])
            continue
        pending.extend(node.inputs)
    if not found:
        msg = (
            f"window() needs event time: add .with_watermark('ts', delay='5s') upstream of "
            f"{stream.node.id!r} (before key_by), naming the event-time column"
        )
        raise PlanError(msg)
    if len(set(found)) > 1:
        msg = (
            f"window(): the inputs of {stream.node.id!r} carry watermarks on different columns "
            f"{sorted(set(found))}; give them one event-time column name"
        )
        raise PlanError(msg)
    return found[0]
