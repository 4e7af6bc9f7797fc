"""Event time: watermarks, their special values, and time units.

A *watermark* ``w`` is a promise travelling with the data: "no more events with an event time
before ``w`` will arrive here". ``stream.with_watermark("ts", delay="5s")`` makes them with
bounded out-of-orderness, **per split** (as Flink's FLIP-27 sources do), and on bounded input
goes further, so that windows and late rows do not depend on scheduling: the same for any
number of workers, any batch size and any order in which the splits are read.

Per split (when the watermark operator sees its sources' batches directly, through stateless
chains and unions; behind an exchange or a keyed operator it falls back to one watermark per
worker, ``max(ts seen) - delay``):

- each split ``s`` has its running maximum ``top_s`` of the event time, over its rows in the
  split's own order. A row is **late within its split** when its window's end plus the
  allowed lateness is at or behind ``top_s`` *before that row* minus ``delay`` (for a
  session: ``ts + gap + allowed_lateness`` at or behind it). The watermark operator attaches
  that per-row split watermark to each batch as the internal column
  :data:`SPLIT_WATERMARK`, which travels through filters, ``with_columns``, ``select``,
  unions and the exchange to the window operator, which decides lateness with it; every
  other operator drops it. Where a step cannot keep rows and values aligned (``map_batches``,
  a ``select`` that changes the row count) the rows of a batch keep the split watermark of
  the batch's first row (still independent of scheduling, no longer of batch size);
- a split contributes ``max(lower_s, top_s - delay)`` to its worker's watermark, where
  ``lower_s`` is a lower bound of the split's event times known without reading it (Parquet
  column statistics of the watermark column; for ``from_polars`` the frame itself). A split
  started but without rows yet contributes ``lower_s``, or holds the watermark back
  (:data:`NO_WATERMARK`) when no bound is known;
- splits not handed out yet count too: with every split it hands out, the coordinator sends
  the source's **floor**, the lowest bound over the splits still pending (NO_WATERMARK while a
  pending split has no known bound, +infinity when none is pending). The floor only rises as
  splits are taken, so a worker's last known floor is a safe (if stale) one;
- a worker's watermark is the minimum, over its upstream sources, of that source's floor and
  the contributions of its splits in progress on this worker; it never goes backwards. The
  split enumerator hands out bounded splits in event-time order: splits without a known
  bound first (they hold the watermark until they start), then by ascending bound.

Why this makes results deterministic on bounded input: a window fires at the window operator
only when the minimum over all workers reaches its end plus the allowed lateness, and that
minimum is at most every unfinished split's contribution. A row that is not late within its
split has its window end plus lateness beyond its split's ``top - delay`` (and beyond
``lower_s``, which every row of the split is at or above), so its window has not fired: the
late rows are exactly those late within their own split, whatever ran when. The window
operator still sends a row whose window already fired to ``late`` (possible only on
unbounded input, or with the per-worker fallback), so nothing is ever counted twice. The
price: a window fires only once every split that may hold its rows has passed it, so files
that each cover the whole time span keep their windows open until the last split starts. Session windows fire ``gap`` later than
their end plus lateness, so a row that is not late can never touch a fired session.

Per-split state survives checkpoints: each worker's ack carries ``top_s`` of its splits in
progress (per watermark operator), the coordinator keeps it in ``sources.json`` next to the
split's offset, and hands it back with the split after a restore, to whichever worker (on any
number of workers) reads it on, so that the rest of the split is judged as without a crash.

Unbounded sources (``tail``, ``watch``): splits have no known bounds, so a split waiting to
be handed out holds the watermark (the floor, as above) until someone takes it; a worker told
to wait (nothing pending) is held by nothing pending. Each split in progress contributes
``top_s - delay``, and holds the watermark back before its first row; with ``idle_timeout`` a
split that produced nothing for that long does not hold it back until it produces again.
Rows of a file that lands in a watched folder behind the watermark are late when their
window already fired, so files should land in event-time order, or ``delay`` should cover
how far they overlap. ``idle_timeout`` applies to unbounded splits only: on
bounded input an idle split would let windows fire that its later rows still belong to.

Watermarks then travel in order with the batches:

- through operators: an operator's watermark is the minimum over its inputs; an input that
  ended no longer holds it back, and an *idle* input does not either, until it sends data
  again. An input is idle after ``idle_timeout`` without data, and at once when its worker's
  source reader has no split to read (a second worker while one file is tailed, a watched
  folder with nothing new: as in Flink). An input back from idle behind the operator's
  watermark counts again once it catches up. When every input is idle, the watermark
  advances to the highest any input reached, so the windows the last rows closed fire;
- through exchanges: every worker sends its watermark to every other worker (a ``WATERMARK``
  ring message) and an exchange's output watermark is the minimum over the sending workers;
- it never goes backwards: an operator ignores a lower value than the one it passed on.

Values are int64 microseconds since the epoch, whatever the unit of the time column, so that
streams with different units can meet in a union. Two values are reserved: :data:`NO_WATERMARK`
(nothing seen yet: the lowest int64) and :data:`IDLE` (the input is idle: the highest).

Worked example (delay 5 s, tumbling 10 min, two Parquet files ``a`` and ``b`` that both cover
12:00-13:00, two workers). The enumerator knows both lower bounds (12:00:00) from the
statistics; it hands ``a`` to worker 0 with the floor 12:00:00 (``b`` is still pending) and
``b`` to worker 1 with the floor +infinity. Worker 0 reads ``a`` to 12:40:00 but sends at
most its floor, 12:00:00, until it asks again; worker 1 sends 12:19:55 after reading ``b`` to
12:20:00. Nothing fires. Worker 0 finishes ``a``, asks again, learns that nothing is pending,
and its source ends: now only worker 1 counts, and the windows up to 12:10 fire. A row of
``b`` at 12:05:00 that comes after ``b``'s own 12:15:06 is late (12:10 <= 12:15:01); one at
12:05:00 that comes after a row of ``a`` at 12:39 is not: ``a``'s rows never make ``b``'s
late. With one worker reading ``a`` then ``b``, or ``b`` first, the late rows are the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import polars as pl

from arrowflow._foundation.durations import duration_ms
from arrowflow.errors import PlanError, SchemaError

NO_WATERMARK = -(2**63)
IDLE = 2**63 - 1
#: Internal column (int64 microseconds, null before a split's first row) with each row's
#: split watermark: its split's running maximum before the row minus the delay.
SPLIT_WATERMARK = "__arrowflow_split_watermark"
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
        msg = (
            f"operator {operator_id!r}: no event-time column {column!r}; the columns are "
            f"{schema.names()}"
        )
        raise SchemaError(msg)
    dtype = schema[column]
    if not isinstance(dtype, pl.Datetime):
        hint = (
            "pl.from_epoch(pl.col(c), time_unit='ms')"
            if dtype.is_integer()
            else "pl.col(c).str.to_datetime()"
            if dtype == pl.String
            else "pl.col(c).cast(pl.Datetime('ms'))"
        )
        msg = (
            f"operator {operator_id!r}: the event-time column {column!r} must be a pl.Datetime, it is "
            f"{dtype}; convert it first, e.g. .with_columns({column}={hint.replace('(c)', f'({column!r})')})"
        )
        raise SchemaError(msg)
    return dtype


def to_micros(values: pl.Series | pl.Expr, dtype: pl.Datetime) -> Any:
    """Physical Datetime values as int64 microseconds (floored for nanoseconds)."""
    factor = per_ms(dtype)
    if isinstance(values, pl.Series):
        physical: pl.Series | pl.Expr = values.to_physical()
    else:
        physical = values.to_physical()
    if factor == 1:
        return physical * US_PER_MS
    if factor == 1_000_000:
        return physical // 1000
    return physical


def duration_arg(
    value: str | timedelta | None, what: str, *, allow_zero: bool = True
) -> int | None:
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
