"""Checkpoint triggers: when the coordinator starts the next checkpoint.

A trigger is asked, about every 20 ms while a job runs and no checkpoint is in flight,
whether to start one now. It sees the time and the rows read since the last checkpoint
started. Any object with a ``should_trigger(stats)`` method works, so a user can checkpoint
on their own condition (a file appearing, a business event).

>>> trigger = every_rows(1_000_000)
>>> trigger.should_trigger(TriggerStats(seconds_since_last=1.0, rows_since_last=999_999, rows_total=5))
False
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from arrowflow._foundation.durations import duration_ms
from arrowflow.errors import PlanError


@dataclass(frozen=True)
class TriggerStats:
    seconds_since_last: float  # since the last checkpoint started (or the job started)
    rows_since_last: int  # rows read by all sources since then
    rows_total: int


class Trigger(abc.ABC):
    @abc.abstractmethod
    def should_trigger(self, stats: TriggerStats) -> bool:
        """True to start a checkpoint now. Called often: keep it cheap, never block."""


class IntervalTrigger(Trigger):
    def __init__(self, every: str | timedelta) -> None:
        self.seconds = duration_ms(every, what="checkpoint_every") / 1000
        if self.seconds <= 0:
            msg = f"checkpoint_every must be positive, got {every!r}"
            raise PlanError(msg)

    def should_trigger(self, stats: TriggerStats) -> bool:
        return stats.seconds_since_last >= self.seconds

    def __repr__(self) -> str:
        return f"every({self.seconds}s)"


class RowsTrigger(Trigger):
    def __init__(self, rows: int) -> None:
        if not isinstance(rows, int) or isinstance(rows, bool) or rows < 1:
            msg = f"every_rows() expects a positive number of rows, got {rows!r}"
            raise PlanError(msg)
        self.rows = rows

    def should_trigger(self, stats: TriggerStats) -> bool:
        return stats.rows_since_last >= self.rows

    def __repr__(self) -> str:
        return f"every_rows({self.rows})"


class ManualTrigger(Trigger):
    """Never fires by itself: checkpoints happen only on ``job.checkpoint()`` and at the end."""

    def should_trigger(self, stats: TriggerStats) -> bool:
        return False


def every(interval: str | timedelta) -> Trigger:
    """Checkpoint on an interval: ``af.every("10s")``."""
    return IntervalTrigger(interval)


def every_rows(rows: int) -> Trigger:
    """Checkpoint every ``rows`` rows read by the sources: ``af.every_rows(1_000_000)``."""
    return RowsTrigger(rows)


def resolve_trigger(value: Any) -> Trigger:
    if value is None:
        return ManualTrigger()
    if isinstance(value, Trigger) or callable(getattr(value, "should_trigger", None)):
        return value
    if isinstance(value, str | timedelta):
        return IntervalTrigger(value)
    msg = (
        f"checkpoint_every expects a duration like '10s', af.every_rows(n) or a trigger object with "
        f"should_trigger(stats), got {type(value).__name__} {value!r}"
    )
    raise PlanError(msg)
