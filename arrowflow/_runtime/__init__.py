"""The runtime: ``execute`` runs a physical plan on the runner its options name.

The runner (:class:`arrowflow.runners.Runner`: ``inprocess``, ``pool``, or one a package
registered) is looked up in :mod:`arrowflow.registry` by ``RunOptions.runner_name``. Leases on
the checkpoint directory and the output folders (one job at a time,
:mod:`arrowflow._runtime.lease`) are held for the whole run; the attempts, restores and
restarts are :mod:`arrowflow._runtime.restarts`; what sinks are told around each attempt is
:mod:`arrowflow._runtime.outputs`.
"""

from __future__ import annotations

from typing import Any

from arrowflow._plan import Plan
from arrowflow._runtime.lease import JobLeases
from arrowflow._runtime.restarts import run_attempts
from arrowflow._runtime.result import RunResult
from arrowflow.errors import PlanError
from arrowflow.options import RunOptions
from arrowflow.registry import load as load_plugin
from arrowflow.runners import Runner


def execute(plan: Plan, options: RunOptions, *, control: Any = None) -> RunResult:
    """Run ``plan`` to the end of its input (or until ``control`` stops it).

    Parameters
    ----------
    plan
        The physical plan (:func:`arrowflow._plan.build_plan`), built with
        ``options.max_parallelism`` key groups.
    options
        Everything the run reads.
    control
        A :class:`arrowflow._api.job.JobControl` (``flow.start``, a progress bar): it is
        attached to each attempt's coordinator. None: nobody watches.
    """
    runner = make_runner(options)
    leases = JobLeases()
    try:
        return run_attempts(plan, options, runner, control=control, leases=leases)
    finally:
        leases.release()


def make_runner(options: RunOptions) -> Runner:
    """The runner ``options`` name, from the registry, built with ``options``."""
    name = options.runner_name
    found = load_plugin("runner", name)
    if not (isinstance(found, type) and issubclass(found, Runner)):
        msg = (
            f"the runner plug-in {name!r} is {found!r}, not an arrowflow.runners.Runner subclass; "
            f"register the class itself"
        )
        raise PlanError(msg)
    return found(options)
