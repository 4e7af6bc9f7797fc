"""Event time: watermarks, their special values, and time units.

A *watermark* ``w`` is a promise travelling with the data: "no more events with an event time
before ``w`` will arrive here". ``stream.with_watermark("ts", delay="5s")`` makes one per
worker with bounded out-of-orderness: after each batch, ``max(ts seen) - delay`` when that
advanced. Watermarks then travel in order with the batches:

- through operators: an operator's watermark is the minimum over its inputs; an input that
  ended no longer holds it back, and an *idle* input does not either, until it sends data
  again. An input is idle after ``idle_timeout`` without data, and at once when its worker's
  source reader has no split to read (a second worker while one file is tailed, a watched
  folder with nothing new: as in Flink). An input back from idle behind the operator's
  watermark counts again once it catches up; its rows meanwhile may be late, so files that
  land in a watched folder should come in event-time order, or ``delay`` should cover how far
  they overlap. When every input is idle, the watermark advances to the highest any input
  reached, so the windows the last rows closed fire;
- through exchanges: every worker sends its watermark to every other worker (a ``WATERMARK``
  ring message) and an exchange's output watermark is the minimum over the sending workers;
- it never goes backwards: an operator ignores a lower value than the one it passed on.

Values are int64 microseconds since the epoch, whatever the unit of the time column, so that
streams with different units can meet in a union. Two values are reserved: :data:`NO_WATERMARK`
(nothing seen yet: the lowest int64) and :data:`IDLE` (the input is idle: the highest).

Worked example (delay 5 s, two workers, one exchange): worker 0 reads events up to 12:00:30
and sends 12:00:25; worker 1 has read up to 12:00:20 and sent 12:00:15. A window operator on
either worker sees min(12:00:25, 12:00:15) = 12:00:15 and fires every window ending by then.
When worker 1's input ends, only worker 0 counts: 12:00:25. When every input ended, every
open window fires (the end of a bounded input is the watermark +infinity).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import polars as pl

from arrowflow._util import duration_ms
from arrowflow.errors import PlanError, SchemaError

NO_WATERMARK = -(2**63)
IDLE = 2**63 - 1
US_PER_MS = 1000
# physical units per millisecond, by the Datetime column's time unit
_PER_MS = {"ms": 1, "us": 1000, "ns": 1_000_000}


@dataclass(frozen=True)
class Watermark:
    """A watermark held back with the batches of an input that is aligning a barrier."""

    value: int


def per_ms(dtype: pl.DataType) -> int:
    """Physical units of a Datetime column per millisecond."""
    assert isinstance(dtype, pl.Datetime)
    return _PER_MS[dtype.time_unit or "us"]


def check_time_column(schema: pl.Schema, column: str, operator_id: str) -> pl.Datetime:
    """The Datetime type of the event-time column, or a SchemaError that says what to do."""
    if column not in schema:
        msg = (f"operator {operator_id!r}: no event-time column {column!r}; the columns are "
               f"{schema.names()}")
        raise SchemaError(msg)
    dtype = schema[column]
    if not isinstance(dtype, pl.Datetime):
        hint = ("pl.from_epoch(pl.col(c), time_unit='ms')" if dtype.is_integer()
                else "pl.col(c).str.to_datetime()" if dtype == pl.String else "pl.col(c).cast(pl.Datetime('ms'))")
        msg = (f"operator {operator_id!r}: the event-time column {column!r} must be a pl.Datetime, it is "
               f"{dtype}; convert it first, e.g. .with_columns({column}={hint.replace('(c)', f'({column!r})')})")
        raise SchemaError(msg)
    return dtype


def to_micros(values: pl.Series | pl.Expr, dtype: pl.Datetime) -> Any:
    """Physical Datetime values as int64 microseconds (floored for nanoseconds)."""
    factor = per_ms(dtype)
    if isinstance(values, pl.Series):
        physical = values.to_physical()
    else:
        physical = values.to_physical()
    if factor == 1:
        return physical * US_PER_MS
    if factor == 1_000_000:
        return physical // 1000
    return physical


def duration_arg(value: str | timedelta | None, what: str, *, allow_zero: bool = True) -> int | None:
    """A duration argument in milliseconds (None stays None), refusing zero when asked."""
    if value is None:
        return None
    ms = duration_ms(value, what=what)
    if ms == 0 and not allow_zero:
        msg = f"{what}: must be longer than zero, got {value!r}"
        raise PlanError(msg)
    return ms


def describe_watermark(value: int) -> str:
    if value == NO_WATERMARK:
        return "none yet"
    if value == IDLE:
        return "idle"
    from datetime import datetime, timezone

    return datetime.fromtimestamp(value / 1e6, tz=timezone.utc).isoformat()
