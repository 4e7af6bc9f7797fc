"""Executors: the in-process one and the worker pool, behind one ``execute`` entry point."""

from __future__ import annotations

from typing import Any

from arrowflow.errors import PlanError
from arrowflow.plan import Plan
from arrowflow.runtime.result import RunResult
from arrowflow.state import resolve_backend


def execute(plan: Plan, *, workers: int | None, state: Any, checkpoint_dir: str | None,
            checkpoint_every: Any, restore: Any, batch_size: int | None,
            max_parallelism: int | None, progress: bool | None) -> RunResult:
    """Run ``plan`` to the end of its input. ``workers=0``: in this process."""
    backend = resolve_backend(state)
    max_parallelism = max_parallelism or 128
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        msg = f"batch_size must be a positive number of rows, got {batch_size!r}"
        raise PlanError(msg)
    if workers is not None and (not isinstance(workers, int) or workers < 0):
        msg = f"workers must be a number of processes (0 runs in this process), got {workers!r}"
        raise PlanError(msg)
    if checkpoint_dir is not None:
        msg = "checkpoints are not available yet in this version; run with checkpoint_dir=None"
        raise PlanError(msg)
    if workers == 0:
        from arrowflow.runtime.local import run_local

        return run_local(plan, backend, batch_size=batch_size, max_parallelism=max_parallelism)
    from arrowflow.runtime.pool import run_pool

    return run_pool(plan, backend, workers=workers, batch_size=batch_size, max_parallelism=max_parallelism)
