"""Event-time windows: the window kinds a user passes to ``keyed.window()``, and what they mean.

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
  ``[first event, last event + gap)``; sessions that come to overlap merge. Sessions take
  no ``first``/``last`` aggregation (a plan error): an event arriving out of order joins or
  bridges sessions stored before it, so the row either would pick is not the first or last
  to arrive (before they were refused, a session's ``last`` changed with the batch size).

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

These are the values a user passes. The plan-time half of a window aggregation (schemas,
state layout, window assignment) is :class:`arrowflow._graph.windows.WindowAgg`, over the
incremental aggregates of :mod:`arrowflow._graph.aggregates` with the window start as an extra
key; ``.window(...)`` returns an :class:`arrowflow._api.windowed.WindowedStream`; the runtime
side is :mod:`arrowflow._runtime.window_op`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from arrowflow._foundation.watermarks import duration_arg
from arrowflow.errors import PlanError

WINDOW_START, WINDOW_END = "window_start", "window_end"
KINDS = ("tumbling", "sliding", "session")


@dataclass(frozen=True)
class WindowSpec:
    """A window kind and its durations in milliseconds.

    Build it with :func:`tumbling`, :func:`sliding` or :func:`session`.
    """

    kind: str
    size_ms: int = 0
    every_ms: int = 0
    gap_ms: int = 0

    def describe(self) -> str:
        """The window as text, e.g. ``tumbling(60000ms)`` (for ``explain`` and the display)."""
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
