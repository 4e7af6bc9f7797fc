"""The plan-time half of a keyed window aggregation: schemas, state layout, window assignment.

What windows mean (when they fire, what is late) is in :mod:`arrowflow.windows`; the runtime
side is :mod:`arrowflow._runtime.window_op`.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from arrowflow._foundation.watermarks import check_time_column, per_ms
from arrowflow._graph.aggregates import ORDERED_KINDS, IncrementalAgg
from arrowflow.errors import PlanError, SchemaError
from arrowflow.windows import WINDOW_END, WINDOW_START, WindowSpec


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
        ordered = [t.name for t in self.agg.terms if t.kind in ORDERED_KINDS]
        if spec.kind == "session" and ordered:
            # Sessions merge out of arrival order: a later event joins or bridges sessions
            # stored before it, so the partials are combined in event-time order, and what
            # first/last picked depended on where the batches were cut.
            msg = (
                f"operator {operator_id!r}: {ordered[0]!r} is a first/last aggregation, which "
                f"session windows do not support (sessions merge out of arrival order, so the "
                f"row picked would not be the first or last to arrive); use min()/max(), or a "
                f"tumbling or sliding window, whose first/last keep arrival order"
            )
            raise PlanError(msg)
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
