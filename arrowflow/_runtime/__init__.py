"""The runtime: ``execute`` runs a physical plan, with the runner the options name.

Leases on the checkpoint directory and the output folders (one job at a time,
:mod:`arrowflow._runtime.lease`) are held for the whole run; the attempts, restores and
restarts are :mod:`arrowflow._runtime.restarts`; what sinks are told around each attempt is
:mod:`arrowflow._runtime.outputs`.
"""

from __future__ import annotations

from typing import Any

from arrowflow._plan import Plan
from arrowflow._runtime.lease import JobLeases
from arrowflow._runtime.restarts import MAX_RESTARTS, run_attempts
from arrowflow._runtime.result import RunResult


def execute(
    plan: Plan,
    *,
    workers: int | None,
    state: Any,
    checkpoint_dir: str | None,
    checkpoint_every: Any,
    restore: Any,
    batch_size: int | None,
    max_parallelism: int | None,
    progress: bool | None,
    storage_options: dict[str, Any] | None = None,
    keep_checkpoints: int = 3,
    max_restarts: int = MAX_RESTARTS,
    control: Any = None,
) -> RunResult:
    """Run ``plan`` to the end of its input. ``workers=0``: in this process."""
    from arrowflow._api.progress import ProgressBar, wanted

    bar = None
    if wanted(progress):
        if control is None:
            from arrowflow._api.job import JobControl

            control = JobControl()
        bar = ProgressBar(control, plan.flow_name)
    leases = JobLeases()
    try:
        return run_attempts(
            plan,
            workers=workers,
            state=state,
            checkpoint_dir=checkpoint_dir,
            checkpoint_every=checkpoint_every,
            restore=restore,
            batch_size=batch_size,
            max_parallelism=max_parallelism,
            storage_options=storage_options,
            keep_checkpoints=keep_checkpoints,
            max_restarts=max_restarts,
            control=control,
            leases=leases,
        )
    finally:
        leases.release()
        if bar is not None:
            bar.close()
