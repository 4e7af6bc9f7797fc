"""A run's outputs around its attempts: the leases on them, the job's tag, and what each
sink is told before and after an attempt (attach, begin or recover, rollback, the restored
checkpoint's commit again, discarding what a failed run staged)."""

from __future__ import annotations

import secrets
from typing import Any

from arrowflow._foundation.warn import warn
from arrowflow._plan import Plan
from arrowflow._runtime.checkpoints import (
    CheckpointStorage,
    Manifest,
    chk_dir,
)
from arrowflow._runtime.lease import JobLeases
from arrowflow.errors import CheckpointError, SinkError
from arrowflow.sinks import JobIdentity, RolledBack, Sink


def take_leases(leases: JobLeases, plan: Plan, storage: CheckpointStorage | None) -> None:
    """One job at a time on the checkpoint directory and on every sink's output folder."""
    if storage is not None:
        leases.take(
            storage.url,
            storage.storage_options,
            what="checkpoint_dir",
            flow=plan.flow_name,
            error=CheckpointError,
        )
    for op in plan.ops:
        if op.kind == "sink":
            sink = op.params["sink"]
            for url, options in sink.leases():
                leases.take(
                    url,
                    options,
                    what=f"output folder of {sink.kind}",
                    flow=plan.flow_name,
                    error=SinkError,
                )


def job_tag(storage: CheckpointStorage | None) -> str:
    """Names this job's output: the same for every run on one checkpoint directory
    (:meth:`CheckpointStorage.job_tag`), random per run without one."""
    if storage is None:
        return secrets.token_hex(4)
    return storage.job_tag()


def prepare_sinks(plan: Plan, restored: Manifest | None) -> None:
    for op in plan.ops:
        if op.kind != "sink":
            continue
        sink = op.params["sink"]
        if restored is None:
            sink.begin()
        else:
            # The crash may have come between the manifest and the commit: commit again
            # (idempotent), then drop what was staged after that checkpoint.
            sink.commit(restored.id, restored.sinks.get(op.id, []))
            sink.recover(restored.id)


def discard_staged(
    plan: Plan, storage: CheckpointStorage | None, since_id: int, started_from: int | None
) -> None:
    """The run failed for good: commit its newest complete checkpoint again (idempotent: the
    failure may have come between a manifest and its commit), then let every sink drop what is
    still staged, which belongs to no complete checkpoint. If that fails, the staged output
    stays for the next run, whose restore (or fresh start) clears it."""
    try:
        newest = None
        # Only the manifest's sink lists are needed (its checksum covers them): no state file is
        # read and hashed on this failure path.
        for checkpoint_id in storage.checkpoint_ids() if storage is not None else []:
            if checkpoint_id < since_id and checkpoint_id != started_from:
                continue
            assert storage is not None  # there are ids only with storage
            try:
                newest = storage.read_manifest(checkpoint_id, verify_files=False)
                break
            except CheckpointError:
                continue
        sinks = [op for op in plan.ops if op.kind == "sink"]
        if newest is not None:
            for op in sinks:
                op.params["sink"].commit(newest.id, newest.sinks.get(op.id, []))
        for op in sinks:
            op.params["sink"].discard_staged()
    except Exception as exc:
        warn(
            f"flow {plan.flow_name!r}: the failed run's staged output stays until the next run clears "
            f"it: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        )


def attach_sinks(plan: Plan, job: JobIdentity) -> None:
    for op in plan.ops:
        if op.kind == "sink":
            op.params["sink"].attach(job)


def _durable_sinks(plan: Plan) -> list[tuple[str, Sink]]:
    return [
        (op.id, op.params["sink"])
        for op in plan.ops
        if op.kind == "sink" and op.params["sink"].durable
    ]


def refuse_without_rollback(
    plan: Plan, storage: CheckpointStorage | None, checkpoint_id: int | None
) -> None:
    """Before any sink changes anything: refuse a restore to ``checkpoint_id`` when later
    checkpoints may have committed output that a sink cannot remove."""
    if storage is None or checkpoint_id is None:
        return
    unable = [
        (op_id, sink)
        for op_id, sink in _durable_sinks(plan)
        if type(sink).rollback is Sink.rollback
    ]
    later = storage.committed_after(checkpoint_id) if unable else []
    if later:
        shown = ", ".join(f"{op_id!r} ({sink.describe()})" for op_id, sink in unable)
        dirs = ", ".join(chk_dir(i) for i in later)
        msg = (
            f"cannot restore checkpoint {checkpoint_id} from {storage.url!r}: the later checkpoint(s) "
            f"{later} may have committed output, and the sink(s) {shown} cannot remove output of later "
            f"checkpoints, so the replay would write it twice. To go on: remove that output yourself and "
            f"delete {dirs} from the checkpoint directory, then run again; or restore=None (with a fresh "
            f"output) to start over."
        )
        raise CheckpointError(msg)


def roll_back(
    plan: Plan, storage: CheckpointStorage | None, checkpoint_id: int | None
) -> list[RolledBack]:
    """Remove the sinks' output of checkpoints after ``checkpoint_id``: it is replayed."""
    if storage is None or checkpoint_id is None:
        return []
    done = []
    for op_id, sink in _durable_sinks(plan):
        item = sink.rollback(checkpoint_id)
        if item is not None and item.count:
            warn(
                f"flow {plan.flow_name!r}: restoring checkpoint {checkpoint_id}, rolled back output "
                f"of later checkpoints ({op_id!r}) {item}"
            )
            done.append(item)
    return done


def recommit(plan: Plan, restored: Manifest) -> None:
    for op in plan.ops:
        if op.kind == "sink":
            op.params["sink"].commit(restored.id, restored.sinks.get(op.id, []))


def returned_rows(plan: Plan) -> dict[str, Any]:
    """What the run hands back per sink in ``RunResult.outputs`` (``Sink.returned_rows``)."""
    returned = {}
    for op in plan.ops:
        if op.kind == "sink":
            rows = op.params["sink"].returned_rows()
            if rows is not None:
                returned[op.id] = rows
    return returned
