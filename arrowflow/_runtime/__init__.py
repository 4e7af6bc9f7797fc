"""The runtime: ``execute`` runs a physical plan on the runner its options name.

The runner (:class:`arrowflow.runners.Runner`: ``inprocess``, ``pool``, or one a package
registered) is looked up in :mod:`arrowflow.registry` by ``RunOptions.runner_name``. Leases on
the checkpoint directory and the output folders (one job at a time,
:mod:`arrowflow._runtime.lease`) are held for the whole run; the attempts, restores and
restarts are :mod:`arrowflow._runtime.restarts`; what sinks are told around each attempt is
:mod:`arrowflow._runtime.outputs`.
"""

from __future__ import annotations

import os
from typing import Any

from arrowflow._foundation.warn import warn
from arrowflow._graph.aggregates import ORDERED_KINDS
from arrowflow._plan import OpSpec, Plan
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
    options, placed = place(plan, options)
    runner = make_runner(options)
    leases = JobLeases()
    try:
        result = run_attempts(plan, options, runner, control=control, leases=leases)
    finally:
        leases.release()
    if placed is not None:
        result.notes.append(placed)
    unread = unread_side_outputs(result)
    if unread:
        note = (
            f"{unread}: nothing reads their side output, so they are only counted; read them "
            f"with stream.side_output('malformed') or .side_output('late') and a sink"
        )
        result.notes.append(note)
        warn(f"flow {plan.flow_name!r}: {note}")
    return result


def unread_side_outputs(result: RunResult) -> str:
    """What the run's side outputs held that no operator read ("3 malformed rows of
    'read_csv'"), or an empty string: rows a run set aside are never dropped unsaid."""
    parts = []
    for row in result.metrics().iter_rows(named=True) if result.operator_metrics else ():
        unconsumed = int(row.get("unconsumed") or 0)
        if not unconsumed:
            continue
        what = "malformed" if row.get("kind") == "source" else "set-aside"
        if row.get("late"):
            what = "late"
        parts.append(
            f"{unconsumed:,} {what} row{'s' if unconsumed != 1 else ''} of {row['operator']!r}"
        )
    return ", ".join(parts)


def process_local(plan: Plan, options: RunOptions) -> str | None:
    """Why only this process can run ``plan`` (a source, sink or checkpoint directory in its
    memory, :meth:`arrowflow.sources.Source.process_local`), or None."""
    for op in plan.ops:
        if op.kind in ("source", "sink"):
            reason = op.params[op.kind].process_local()
            if reason is not None:
                return str(reason)
    if options.checkpoint_dir is not None and options.checkpoint_dir.startswith("memory://"):
        return f"checkpoint_dir {options.checkpoint_dir!r} is in this process's memory (memory://)"
    return None


def arrival_ordered(plan: Plan) -> dict[str, list[str]]:
    """Operator id -> its ``first``/``last`` aggregations, for ``plan``'s aggregations and
    windows: the row they pick is the first or last to arrive, and with several workers
    reading splits side by side that order changes from run to run."""
    found: dict[str, list[str]] = {}
    for op in plan.ops:
        agg = op.params.get("agg")
        if agg is None and op.params.get("window") is not None:
            agg = getattr(op.params["window"], "agg", None)
        for term in getattr(agg, "terms", ()):
            if term.kind in ORDERED_KINDS:
                found.setdefault(op.id, []).append(term.name)
    return found


def _upstream_sources(plan: Plan, op_id: str) -> list[OpSpec]:
    seen: set[str] = set()
    todo, sources = [op_id], []
    while todo:
        spec = plan.op(todo.pop())
        if spec.id in seen:
            continue
        seen.add(spec.id)
        if spec.kind == "source":
            sources.append(spec)
        todo.extend(edge.op for edge in spec.inputs)
    return sources


def _one_split(sources: list[OpSpec]) -> bool:
    """Whether ``sources`` are bounded and hold a single split in all (listed now)."""
    if not all(op.params["source"].bounded for op in sources):
        return False
    return sum(len(op.params["source"].discover_splits()) for op in sources) <= 1


#: Up to this many cores, a flow of polars expressions only runs in this process by default:
#: polars already spreads each batch over every core there, and worker processes only add the
#: exchange (measured on 2 cores: W1 10M in-process 1.1 s, 1 worker 1.9 s, 2 workers 1.9 s;
#: W2 3.8 s, 4.9 s, 5.6 s; docs/benchmarks.md). Not measured on more cores: there the default
#: stays one worker per core.
IN_PROCESS_CORES = 2


def python_steps(plan: Plan) -> list[str]:
    """Operators of ``plan`` that run the user's Python on batches (``map_batches``,
    ``process``): the GIL lets one process run one of them at a time."""
    found = []
    for op in plan.ops:
        if op.kind == "process":
            found.append(op.id)
        elif op.kind == "chain":
            found.extend(s["id"] for s in op.params.get("steps", []) if s["kind"] == "map_batches")
    return found


def default_workers(plan: Plan) -> int | None:
    """The worker count ``workers=None`` means for ``plan`` on this machine: 0 (in this
    process) for a flow of polars expressions on up to :data:`IN_PROCESS_CORES` cores, else
    None (one worker process per core)."""
    cores = os.cpu_count() or 1
    if cores <= IN_PROCESS_CORES and not python_steps(plan):
        return 0
    return None


def place(plan: Plan, options: RunOptions) -> tuple[RunOptions, str | None]:
    """The options to run ``plan`` with, and a note when they changed.

    - A flow only this process can run (:func:`process_local`) runs in it when ``workers``
      and ``runner`` were left to the default, and is refused before anything starts when
      they were not.
    - ``workers=None`` runs in this process where :func:`default_workers` says so.
    - A flow with ``first``/``last`` aggregations (:func:`arrival_ordered`) runs with one
      worker process under the default (its splits are then read in order, as polars reads
      the files, and polars' threads still use every core); several workers are refused
      unless the flow reads a single split.
    """
    if options.runner_name == "inprocess":
        return options, None
    reason = process_local(plan, options)
    if reason is None:
        if options.workers is None and options.runner is None and default_workers(plan) == 0:
            return options.replace(workers=0), None
        ordered = arrival_ordered(plan)
        if not ordered or (options.workers is not None and options.workers <= 1):
            return options, None
        if options.workers is not None:
            # one reader upstream: its rows arrive in order on any worker count
            ordered = {
                op: names
                for op, names in ordered.items()
                if not _one_split(_upstream_sources(plan, op))
            }
            if not ordered:
                return options, None
        named = [f"{op}.{name}" for op, names in ordered.items() for name in names]
        shown = ", ".join(named[:3]) + (", ..." if len(named) > 3 else "")
        why = (
            f"{shown} take the first or last row to arrive, and with several workers reading "
            f"splits side by side that order changes from run to run"
        )
        if options.workers is None and options.runner is None:
            return options.replace(workers=1), f"ran with one worker: {why}"
        msg = (
            f"flow {plan.flow_name!r}: {why}, so {_asked(options)} would give other values on every run; run "
            f"with workers=1 (the default does so for such a flow) or workers=0, or aggregate with "
            f"min()/max() of a column that orders the rows"
        )
        raise PlanError(msg)
    if options.workers is None and options.runner is None:
        note = f"ran in this process (workers=0): {reason}, which worker processes cannot see"
        return options.replace(workers=0), note
    msg = (
        f"flow {plan.flow_name!r}: {reason}, which worker processes cannot see, so it cannot run "
        f"with {_asked(options)}; pass workers=0 (the default does so for such a flow), or use a local "
        f"folder or s3:// path"
    )
    raise PlanError(msg)


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


def _asked(options: RunOptions) -> str:
    """What the user asked for instead of the default, as they wrote it."""
    return f"runner={options.runner!r}" if options.runner else f"workers={options.workers}"
