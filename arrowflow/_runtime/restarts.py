"""The restart loop of a run: its attempts, what each restores, and the restart policy.

``run_attempts`` owns what happens around the attempts of a run: choosing the checkpoint to
restore (and refusing one taken from a different flow), re-running the restored
checkpoint's commit (idempotent), rolling the sinks back to it (output that later
checkpoints committed: a damaged newest checkpoint, an explicit older ``restore=``), and the
restart strategy — a pool run whose worker dies or raises is restarted from its newest
complete checkpoint, a bounded number of times.

A restart must never hide a crash: every restart is recorded with its reason in the
:class:`RunResult` (``restart_reasons``), warned about, and printed on the last lines of the
CLI's and the demo's summary. ``ARROWFLOW_RESTARTS`` sets the policy (the test suite runs
with ``fail``, and ``injected`` in the tests that kill workers on purpose):

- ``allow`` (default): restart any worker failure, up to ``RunOptions.max_restarts`` times;
- ``injected``: restart only a worker killed by SIGKILL (``kill -9``, what the fault points
  of :mod:`arrowflow._foundation.faults` and the recovery tests do); any other failure — a segfault, a
  panic, an exception — fails the run at once;
- ``fail``: never restart; the first failure fails the run.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from arrowflow._foundation.warn import warn
from arrowflow._plan import Plan
from arrowflow._runtime.checkpoints import (
    CheckpointStorage,
    Manifest,
    operator_differences,
)
from arrowflow._runtime.coordinator import JobCoordinator
from arrowflow._runtime.launch import WorkerSpec
from arrowflow._runtime.lease import JobLeases
from arrowflow._runtime.operators import RuntimeContext
from arrowflow._runtime.outputs import (
    attach_sinks,
    discard_staged,
    job_tag,
    prepare_sinks,
    recommit,
    refuse_without_rollback,
    returned_rows,
    roll_back,
    take_leases,
)
from arrowflow._runtime.result import RunResult
from arrowflow.errors import CheckpointError, PlanError, WorkerError
from arrowflow.options import RunOptions
from arrowflow.runners import Runner
from arrowflow.sinks import JobIdentity, RolledBack
from arrowflow.state import StateBackend, StateFile, resolve_backend
from arrowflow.triggers import resolve_trigger

RESTART_DELAY_S = 0.5
RESTART_POLICIES = ("allow", "injected", "fail")


def restart_policy() -> str:
    """The restart policy from ``ARROWFLOW_RESTARTS`` (``allow`` when unset)."""
    policy = os.environ.get("ARROWFLOW_RESTARTS", "").strip().lower() or "allow"
    if policy not in RESTART_POLICIES:
        msg = f"ARROWFLOW_RESTARTS must be one of {RESTART_POLICIES}, got {policy!r}"
        raise PlanError(msg)
    return policy


def _restart_refused(exc: WorkerError, policy: str) -> str | None:
    """Why the policy refuses to restart after ``exc`` (None: it may restart)."""
    if policy == "fail":
        return "restarts are disabled (ARROWFLOW_RESTARTS=fail)"
    if policy == "injected" and exc.signal != signal.SIGKILL:
        return (
            "only a worker killed by SIGKILL is restarted (ARROWFLOW_RESTARTS=injected); this failure "
            "was not an injected fault"
        )
    return None


def _restore_point(
    storage: CheckpointStorage | None,
    restore: Any,
    plan: Plan,
    max_parallelism: int,
    min_id: int = 0,
    backend: StateBackend | None = None,
) -> Manifest | None:
    if storage is None or restore is None:
        return None
    if restore == "latest":
        manifest = storage.latest(min_id=min_id)
        if manifest is None:
            return None
    elif isinstance(restore, int) and not isinstance(restore, bool):
        manifest = storage.find(restore)
    else:
        msg = f"restore= expects 'latest', a checkpoint id or None, got {restore!r}"
        raise CheckpointError(msg)
    differences = operator_differences(manifest.operators, plan.operator_fingerprints)
    if differences:
        msg = (
            f"cannot restore checkpoint {manifest.id} of flow {manifest.flow!r} from {storage.url!r} onto "
            f"this flow: "
            + "; ".join(differences)
            + ". Restore onto the flow that wrote it, or start "
            "fresh with restore=None (or another checkpoint_dir)."
        )
        raise CheckpointError(msg)
    if manifest.max_parallelism != max_parallelism:
        msg = (
            f"checkpoint {manifest.id} was taken with max_parallelism={manifest.max_parallelism}, the run "
            f"asks for {max_parallelism}; state is organised in key groups, so it must stay the same"
        )
        raise CheckpointError(msg)
    if backend is not None:
        _check_state_formats(manifest, backend)
    return manifest


def _check_state_formats(manifest: Manifest, backend: StateBackend) -> None:
    """Refuse a checkpoint whose state files the run's backend cannot read, before the run
    acts on it (a sink rollback removes output; a refusal after it would leave it removed)."""
    if backend.restores is None:
        return
    # "json": a window's watermark, which the operator reads itself whatever the backend.
    written = {str(entry.get("format")) for entry in manifest.state} - {"json"}
    formats = sorted(written - set(backend.restores))
    if formats:
        msg = (
            f"cannot restore checkpoint {manifest.id} with state={backend.name!r}: its state files are "
            f"in the {', '.join(map(repr, formats))} format, which the {backend.name!r} backend does not "
            f"read (it reads {', '.join(map(repr, backend.restores))}); run with the state backend that "
            f"wrote it, or start over with restore=None. Nothing was changed."
        )
        raise CheckpointError(msg)


def run_attempts(
    plan: Plan,
    options: RunOptions,
    runner: Runner,
    *,
    control: Any,
    leases: JobLeases,
) -> RunResult:
    """Run ``plan`` on ``runner`` until an attempt ends the input, restarting failed attempts
    from checkpoints as the policy allows; the last attempt's result."""
    backend = resolve_backend(options.state)
    max_parallelism = options.max_parallelism
    restore = options.restore
    max_restarts = options.max_restarts
    keep_checkpoints = options.keep_checkpoints
    trigger = resolve_trigger(options.checkpoint_every)
    emit_interval_s = plan.emission_interval(checkpoint_every=options.checkpoint_every)
    storage = (
        CheckpointStorage(options.checkpoint_dir, options.storage_options, keep=keep_checkpoints)
        if options.checkpoint_dir
        else None
    )
    if storage is not None:
        storage.ensure()
    take_leases(leases, plan, storage)
    tag = job_tag(storage)
    parallelism = runner.parallelism
    policy = restart_policy()
    restarts = 0
    reasons: list[str] = []
    # A restart goes back to this run's own newest checkpoint, else to the one it started from
    # (or to nothing), never to another run's that happens to share the directory.
    own_first_id = 0
    started_from: int | None = None
    rolled_back: list[RolledBack] = []  # over every attempt
    while True:
        if restarts == 0:
            restored = _restore_point(storage, restore, plan, max_parallelism, backend=backend)
        else:
            restored = _restore_point(
                storage, "latest", plan, max_parallelism, own_first_id, backend=backend
            )
            if restored is None and started_from is not None:
                restored = _restore_point(
                    storage, started_from, plan, max_parallelism, backend=backend
                )
        existing = storage.checkpoint_ids() if storage is not None else []
        first_id = max(existing) + 1 if existing else 1
        attach_sinks(plan, JobIdentity(tag, first_id, storage is not None, keep_checkpoints))
        # A restart that starts over removes what this run's own checkpoints committed; so does
        # a run told to resume that finds every checkpoint damaged (their output is the job's).
        back_to = restored.id if restored is not None else (own_first_id - 1 if restarts else None)
        if (
            back_to is None
            and restore == "latest"
            and storage is not None
            and storage.committed_after(0)
        ):
            back_to = 0
        refuse_without_rollback(plan, storage, back_to)
        if storage is not None and back_to is not None:
            # Before any output is rolled back: the checkpoints after back_to are abandoned.
            storage.supersede_after(back_to)
        if restored is not None and restored.final:
            recommit(plan, restored)
            note = (
                f"restored checkpoint {restored.id}, a final one: nothing left to read; pass restore=None "
                f"to start over"
            )
            warn(f"flow {plan.flow_name!r}: {note}")
            result = RunResult(plan.flow_name, options.workers or 0, 0.0)
            result.rolled_back = rolled_back + roll_back(plan, storage, back_to)
            result.checkpoints = [restored.id]
            result.restored_from = restored.id
            result.notes.append(note)
            return result
        prepare_sinks(plan, restored)
        rolled_back.extend(roll_back(plan, storage, back_to))
        if restarts == 0:
            own_first_id, started_from = first_id, (restored.id if restored is not None else None)
            resumed = (
                f"resumed from checkpoint {restored.id} of an earlier run (taken "
                f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(restored.time))}, "
                f"{restored.parallelism} worker{'s' if restored.parallelism != 1 else ''}): the counts "
                f"are of the rows read after it"
                if restored is not None
                else None
            )
        coordinator = JobCoordinator(
            plan,
            parallelism,
            storage=storage,
            trigger=trigger,
            restored=restored,
            max_parallelism=max_parallelism,
            first_id=first_id,
            emit_interval_s=emit_interval_s,
        )
        if control is not None:
            control.attach(coordinator)
        context = RuntimeContext(storage=storage, emit_interval_s=emit_interval_s)
        if restored is not None:
            assert storage is not None
            context.restore_root = storage.root
            context.restore_files = [StateFile.from_json(f) for f in restored.state]
        spec = WorkerSpec(plan, backend, context, parallelism, options.batch_size, max_parallelism)
        try:
            started = time.perf_counter()
            reports = runner.run(spec, coordinator)
            metrics = [row for report in reports for row in report.metrics]
            result = RunResult(
                plan.flow_name, runner.processes, time.perf_counter() - started, metrics
            )
            result.checkpoints = list(coordinator.completed)
            result.outputs = returned_rows(plan)
        except WorkerError as exc:
            refused = _restart_refused(exc, policy) if storage is not None else None
            if storage is None or restarts >= max_restarts or refused:
                if refused:
                    exc.args = (f"{exc.args[0]}\n(not restarted: {refused})",)
                elif storage is not None:
                    exc.args = (
                        f"{exc.args[0]}\n(gave up after {restarts} restarts from checkpoints)",
                    )
                discard_staged(plan, storage, own_first_id, started_from)
                raise
            restarts += 1
            reason = str(exc).splitlines()[0]
            reasons.append(reason)
            warn(
                f"flow {plan.flow_name!r}: {reason}; restarting from the newest "
                f"checkpoint (restart {restarts} of at most {max_restarts})"
            )
            time.sleep(RESTART_DELAY_S)
            continue
        except BaseException:  # raised in this process (workers=0), Ctrl-C, a failed commit
            discard_staged(plan, storage, own_first_id, started_from)
            raise
        result.restarts = restarts
        result.restart_reasons = reasons
        result.rolled_back = rolled_back
        # Live-results taps (flow.start) are not the user's operators: their rows are no output.
        taps = {op.id for op in plan.ops if op.kind == "sink" and op.params["sink"].transient}
        if taps:
            result.operator_metrics = [
                m for m in result.operator_metrics if m["operator"] not in taps
            ]
        result.restored_from = restored.id if restored is not None else None
        result.resumed_from = started_from
        if resumed is not None:
            result.notes.insert(0, resumed)
        result.checkpoint_seconds = dict(coordinator.durations)
        result.aborted_checkpoints = list(coordinator.aborted)
        if coordinator.exit_now:
            result.status = "stopped"
        return result
