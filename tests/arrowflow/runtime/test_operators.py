"""The runtime operators' own contracts, driven directly (the flows that use them are in
tests/arrowflow/test_aggregation.py, tests/e2e/test_emission.py and tests/recovery).

Expected values come from the rule as docs/checkpoints.md ("Emission") states it, computed
here, not from the engine."""

from __future__ import annotations

import time

import pytest

from arrowflow._runtime.operators import RuntimeContext


@pytest.mark.parametrize(
    ("every", "interval", "checkpoints", "ago", "due"),
    [
        # no emit_every of its own: every commit emits
        (None, None, False, 0.0, True),
        (None, 0.2, False, 0.0, True),
        # with checkpoints always: what an operator holds back is in no snapshot
        (1.0, 0.2, True, 0.0, True),
        (3600.0, None, True, 0.0, True),
        # without: once ``every`` has passed, to within half the run's own interval
        (1.0, 0.2, False, 0.95, True),  # 1.0 - 0.2 / 2 = 0.9 <= 0.95
        (1.0, 0.2, False, 0.85, False),
        (1.0, 0.4, False, 0.85, True),  # 1.0 - 0.2 = 0.8
        (1.0, 0.4, False, 0.75, False),
        # without an interval of the run's own: no slack
        (1.0, None, False, 0.95, False),
        (1.0, None, False, 1.05, True),
        (3600.0, 0.2, False, 10.0, False),
    ],
)
def test_an_own_emit_every_decides_which_commits_emit(
    every: float | None, interval: float | None, checkpoints: bool, ago: float, due: bool
) -> None:
    context = RuntimeContext(storage=object() if checkpoints else None, emit_interval_s=interval)
    assert context.emission_due(every, time.monotonic() - ago) is due
