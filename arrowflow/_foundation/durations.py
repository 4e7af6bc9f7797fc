"""Durations: ``"200ms"``, ``"10s"``, ``"5m"`` or a timedelta, as whole milliseconds."""

from __future__ import annotations

import re
from datetime import timedelta

from arrowflow.errors import PlanError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(us|ms|s|m|h|d)\s*$")
_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0, "d": 86_400_000.0}


def duration_ms(value: str | int | float | timedelta, *, what: str = "duration") -> int:
    """Parse ``"200ms"``, ``"10s"``, ``"5m"``, ``"1h"`` or a timedelta into whole milliseconds.

    >>> duration_ms("1.5s"), duration_ms("5m"), duration_ms(timedelta(seconds=2))
    (1500, 300000, 2000)
    """
    if isinstance(value, timedelta):
        if value < timedelta(0):
            msg = f"{what}: expected a duration of zero or more, got the negative {value!r}"
            raise PlanError(msg)
        return round(value.total_seconds() * 1000)
    if isinstance(value, bool):
        msg = f"{what}: expected a string like '10s' or a timedelta, got {value!r}"
        raise PlanError(msg)
    if isinstance(value, int | float):
        msg = (
            f"{what}: a bare number {value!r} is ambiguous; write it with a unit, "
            f"e.g. '{value}s' or '{value}ms'"
        )
        raise PlanError(msg)
    match = _DURATION.match(str(value))
    if not match:
        msg = (
            f"{what}: cannot read {value!r} as a duration; expected a number and a unit "
            f"(us, ms, s, m, h, d), e.g. '200ms', '10s', '5m'"
        )
        raise PlanError(msg)
    amount, unit = match.groups()
    return round(float(amount) * _UNIT_MS[unit])
