"""``keyed.window(spec)``: a keyed stream with a window.

Its ``.agg(...)`` adds the window aggregation to the flow (see :mod:`arrowflow.windows` for
what windows mean).
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

import polars as pl

from arrowflow._foundation.watermarks import duration_arg
from arrowflow._graph.aggregates import named_aggregations
from arrowflow._graph.windows import WindowAgg
from arrowflow.errors import PlanError
from arrowflow.windows import WindowSpec

if TYPE_CHECKING:
    from arrowflow._api.flow import KeyedStream, Stream


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
        return type(stream)(flow, flow._validate(node))

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
