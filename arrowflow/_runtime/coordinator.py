"""The job coordinator: split enumeration, checkpoints and commits, shared by both executors.

State it keeps:

- the :class:`SplitEnumerator` (splits pending, assigned, finished — per worker);
- the checkpoint in flight (id, start time, acks received), at most one at a time, and the
  ids of completed checkpoints;
- rows read so far (for row-count triggers) and which workers have finished.

Protocol (docs/checkpoints.md), seen from here:

1. ``poll()`` asks the trigger; when it fires (and the minimum pause has passed, and no
   checkpoint is in flight) it returns ``("checkpoint", n)`` for every worker.
2. Each worker acks with its sources' positions, the state files it wrote and its sinks'
   staged output. The splits a worker finished before it acked are recorded with the ack:
   its sources were paused from the barrier to the ack, so that set is exact.
3. With every ack in, ``sources.json`` and then ``_MANIFEST.json`` are written (atomically);
   only then do the sinks commit. A checkpoint that takes longer than ``timeout`` is
   counted as aborted: no manifest, and its staged output is carried into the next one.
4. When every worker has finished, one last checkpoint marked ``final`` commits the rest of
   the output; then the workers are told to exit.

Without a checkpoint directory nothing is written but the sinks' output: the same barriers
run every ``emit_interval_s`` (emissions: docs/checkpoints.md, "Emission") and once at the
end, and each commits the sinks without a manifest. Such a run never restarts.
"""

from __future__ import annotations

import json
import time
from typing import Any

from arrowflow._foundation.faults import fault_point
from arrowflow._foundation.warn import warn
from arrowflow._plan import Plan
from arrowflow._runtime.checkpoints import SOURCES, CheckpointStorage, Manifest, chk_dir
from arrowflow._runtime.splits import SplitEnumerator
from arrowflow.errors import CheckpointError
from arrowflow.sources import Split
from arrowflow.triggers import ManualTrigger, Trigger, TriggerStats


class JobCoordinator:
    def __init__(
        self,
        plan: Plan,
        parallelism: int,
        *,
        storage: CheckpointStorage | None,
        trigger: Trigger | None,
        restored: Manifest | None,
        max_parallelism: int,
        min_pause_s: float = 0.0,
        timeout_s: float = 600.0,
        first_id: int = 1,
        emit_interval_s: float | None = None,
    ) -> None:
        self.plan = plan
        # Seconds between the commits that emit output (Plan.emission_interval): without
        # storage they are the only commits before the final one, with storage checkpoints.
        self.emit_interval_s = emit_interval_s
        self.parallelism = parallelism
        self.storage = storage
        self.trigger = trigger or ManualTrigger()
        self.max_parallelism = max_parallelism
        self.min_pause_s = min_pause_s
        self.timeout_s = timeout_s
        positions: dict[str, dict[str, Any]] = {}
        finished: dict[str, set[str]] = {}
        ages: dict[str, dict[str, Any]] = {}
        tops: dict[str, dict[str, dict[str, int]]] = {}
        if restored is not None:
            for source_id, offsets in restored.sources.items():
                positions[source_id] = dict(offsets.get("positions", {}))
                finished[source_id] = set(offsets.get("finished", []))
                ages[source_id] = {
                    "newest": offsets.get("newest"),
                    "mtimes": offsets.get("mtimes", {}),
                    "unfinished_floor": offsets.get("unfinished_floor"),
                }
                tops[source_id] = checked_tops(
                    offsets.get("split_tops", {}), source_id, restored.id
                )
        self.enumerator = SplitEnumerator(
            plan, positions=positions, finished=finished, ages=ages, tops=tops
        )
        self.base_finished = {op.id: set(finished.get(op.id, ())) for op in plan.sources}
        self.finished_by: dict[int, dict[str, list[str]]] = {w: {} for w in range(parallelism)}
        # Never reuse an id: a newer checkpoint may exist, damaged or incomplete.
        self.next_id = max(restored.id + 1, first_id) if restored is not None else first_id
        self.in_flight: dict[str, Any] | None = None
        self.completed: list[int] = []
        self.durations: dict[int, float] = {}  # checkpoint id -> seconds from trigger to commit
        self.completed_at: dict[int, float] = {}  # checkpoint id -> time.monotonic() of its commit
        self.aborted: list[int] = []
        self.carried: dict[str, list[Any]] = {}
        self.workers_finished: set[int] = set()
        self.rows_total = 0
        self.rows_at_last = 0
        self.last_started = time.monotonic()
        self.final_done = False
        self.requested = False
        # Stopping from outside (job.stop()): "stop" ends at once, keeping what the last
        # checkpoint committed; "savepoint" first takes one more checkpoint, then ends.
        self.stop_mode: str | None = None
        self.last_discovery = time.monotonic()
        self.discovery_interval = min(
            (
                op.params["source"].poll_interval_s
                for op in plan.sources
                if not op.params["source"].bounded
            ),
            default=1.0,
        )
        self.savepoint_id: int | None = None
        self.exit_now = False
        # For watching a live job (arrowflow._api.job): the newest counters of each worker's
        # operators, and where live-results taps send their rows.
        self.restored_id = restored.id if restored is not None else 0
        self.live_metrics: dict[int, list[dict[str, Any]]] = {}
        self.on_publish: Any = None
        # Called with a checkpoint id no restart of this run will go back before (the oldest kept).
        self.on_restorable: Any = None

    # ------------------------------------------------------------------ from workers
    def next_split(self, source_id: str, worker: int) -> tuple[Split, Any] | str | None:
        return self.enumerator.next_split(source_id, worker)

    def hand_out(
        self, source_id: str, worker: int
    ) -> tuple[Split, Any, dict[str, Any]] | str | None:
        """``next_split`` for a worker's link: the split and its position, with what its
        watermark needs (:meth:`SplitEnumerator.event_time`), or ``WAIT`` or ``None``."""
        handed = self.enumerator.next_split(source_id, worker)
        if not isinstance(handed, tuple):
            return handed
        split, position = handed
        return split, position, self.enumerator.event_time(source_id, split.split_id)

    def split_done(self, source_id: str, split_id: str, worker: int) -> None:
        self.enumerator.split_done(source_id, split_id)
        self.finished_by[worker].setdefault(source_id, []).append(split_id)

    def rows(self, count: int) -> None:
        self.rows_total += count

    def finished(self, worker: int) -> None:
        self.workers_finished.add(worker)

    def worker_metrics(self, worker: int, rows: list[dict[str, Any]]) -> None:
        self.live_metrics[worker] = rows

    def publish(
        self, sink_id: str, worker: int, epoch: int | None, payload: bytes, produced: int
    ) -> None:
        """Rows a live-results tap saw (Arrow IPC bytes); ``epoch``: the last checkpoint its writer took part in
        (None: none yet in this attempt, so the rows come after the restored checkpoint)."""
        if self.on_publish is not None:
            self.on_publish(
                sink_id, worker, self.restored_id if epoch is None else epoch, payload, produced
            )

    def ack(self, worker: int, checkpoint_id: int, payload: dict[str, Any]) -> bool:
        """Record one ack; returns True when this completed the final checkpoint."""
        flight = self.in_flight
        if flight is None or flight["id"] != checkpoint_id:
            msg = (
                f"internal: ack for checkpoint {checkpoint_id} from worker {worker}, none in flight"
            )
            raise RuntimeError(msg)
        payload["finished"] = {s: list(ids) for s, ids in self.finished_by[worker].items()}
        flight["acks"][worker] = payload
        if len(flight["acks"]) < self.parallelism:
            return False
        self.in_flight = None
        return self._complete(flight)

    # ------------------------------------------------------------------ decisions
    def request_checkpoint(self) -> None:
        """A user asked for a checkpoint now (``job.checkpoint()``)."""
        self.requested = True

    def request_stop(self, *, savepoint: bool) -> None:
        """``job.stop()``: end the run; with ``savepoint`` after one more checkpoint."""
        if savepoint and self.storage is None:
            msg = "stop(savepoint=True) needs a checkpoint_dir to write the savepoint to"
            raise CheckpointError(msg)
        self.stop_mode = "savepoint" if savepoint else "stop"

    def poll(self) -> int | None:
        """The id of a checkpoint to start now, or None."""
        now = time.monotonic()
        if self.enumerator.unbounded and now - self.last_discovery >= self.discovery_interval:
            self.enumerator.discover()  # files that landed, a tailed file that appeared
            self.last_discovery = now
        if self.stop_mode == "stop" and not self.final_done:
            self.exit_now = True
            return None
        if self.in_flight is not None:
            if not self.in_flight["aborted"] and now - self.in_flight["started"] > self.timeout_s:
                self.in_flight["aborted"] = True
                self.aborted.append(self.in_flight["id"])
                warn(
                    f"checkpoint {self.in_flight['id']} took longer than {self.timeout_s}s and "
                    f"was aborted; the job goes on"
                )
            return None
        if self.final_done or self.exit_now:
            return None
        final = len(self.workers_finished) == self.parallelism
        if not final:
            emission = (
                self.emit_interval_s is not None and now - self.last_started >= self.emit_interval_s
            )
            if self.storage is None:
                if not emission:
                    return None
            else:
                if now - self.last_started < self.min_pause_s:
                    return None
                stats = TriggerStats(
                    now - self.last_started, self.rows_total - self.rows_at_last, self.rows_total
                )
                savepoint = self.stop_mode == "savepoint"
                if not (
                    savepoint or self.requested or emission or self.trigger.should_trigger(stats)
                ):
                    return None
                if savepoint:
                    self.savepoint_id = self.next_id
        self.requested = False
        checkpoint_id = self.next_id
        self.next_id += 1
        self.in_flight = {
            "id": checkpoint_id,
            "started": now,
            "acks": {},
            "final": final,
            "aborted": False,
        }
        self.last_started = now
        self.rows_at_last = self.rows_total
        return checkpoint_id

    # ------------------------------------------------------------------ completion
    def _complete(self, flight: dict[str, Any]) -> bool:
        checkpoint_id = flight["id"]
        acks = [flight["acks"][w] for w in range(self.parallelism)]
        staged: dict[str, list[Any]] = {k: list(v) for k, v in self.carried.items()}
        for ack in acks:
            for sink_id, item in ack["staged"].items():
                if item is not None:
                    staged.setdefault(sink_id, []).append(item)
        if flight["aborted"]:
            self.carried = staged
            return False
        self.carried = {}
        if self.storage is not None:
            self._write_checkpoint(checkpoint_id, acks, staged, final=flight["final"])
        self._commit(checkpoint_id, staged)
        self.completed.append(checkpoint_id)
        self.durations[checkpoint_id] = time.monotonic() - flight["started"]
        self.completed_at[checkpoint_id] = time.monotonic()
        if self.storage is not None:
            self.storage.prune()
            if self.on_restorable is not None and self.storage.oldest_kept is not None:
                self.on_restorable(self.storage.oldest_kept)
        if flight["final"]:
            self.final_done = True
        if checkpoint_id == self.savepoint_id:
            self.exit_now = True
        return flight["final"]

    def sources_state(self, acks: list[dict[str, Any]]) -> dict[str, Any]:
        state: dict[str, Any] = {}
        for op in self.plan.sources:
            finished = set(self.base_finished.get(op.id, ()))
            for ack in acks:
                finished.update(ack["finished"].get(op.id, []))
            # Splits restored at an offset keep it until a worker reports a newer one: a split
            # still waiting in the queue at this checkpoint must not restart from zero later.
            positions: dict[str, Any] = {
                split: offset
                for split, offset in self.enumerator.positions.get(op.id, {}).items()
                if split not in finished
            }
            for ack in acks:
                positions.update(ack["positions"].get(op.id, {}))
            # The running maxima of event time of splits in progress (per watermark operator),
            # kept like their offsets: a restored split is judged on as it would have been.
            tops: dict[str, dict[str, int]] = {
                split: dict(by_op)
                for split, by_op in self.enumerator.tops.get(op.id, {}).items()
                if split not in finished
            }
            for ack in acks:
                for split, by_op in ack.get("split_tops", {}).get(op.id, {}).items():
                    if split not in finished:
                        tops.setdefault(split, {}).update(by_op)
            # An age-bounded source (watch) forgets old finished splits: so do checkpoints.
            finished = {split for split in finished if self.enumerator.remembered(op.id, split)}
            state[op.id] = {
                "finished": sorted(finished),
                "positions": positions,
                **({"split_tops": tops} if tops else {}),
                **self.enumerator.ages_state(op.id, finished),
            }
        self._forget()
        return state

    def _forget(self) -> None:
        """Drop from the coordinator's own record the finished splits the age bound forgot.

        (Not "the splits this checkpoint lists": a split a worker finished after its ack, while
        other acks were still coming, belongs to the next checkpoint and must stay recorded.)
        """
        for source_id in self.enumerator.max_age:

            def kept(split: str, source_id: str = source_id) -> bool:
                return self.enumerator.remembered(source_id, split)

            self.base_finished[source_id] = {
                s for s in self.base_finished.get(source_id, ()) if kept(s)
            }
            for by_source in self.finished_by.values():
                if source_id in by_source:
                    by_source[source_id] = [s for s in by_source[source_id] if kept(s)]

    def _write_checkpoint(
        self,
        checkpoint_id: int,
        acks: list[dict[str, Any]],
        staged: dict[str, list[Any]],
        *,
        final: bool,
    ) -> None:
        assert self.storage is not None
        sources = self.sources_state(acks)
        files = [
            self.storage.write_file(
                f"{chk_dir(checkpoint_id)}/{SOURCES}",
                json.dumps(sources, sort_keys=True, default=str).encode(),
            )
        ]
        state = [entry for ack in acks for entry in ack["state"]]
        files.extend({"path": e["path"], "size": e["size"], "sha256": e["sha256"]} for e in state)
        manifest = Manifest(
            id=checkpoint_id,
            time=time.time(),
            flow=self.plan.flow_name,
            fingerprint=self.plan.fingerprint,
            operators=self.plan.operator_fingerprints,
            parallelism=self.parallelism,
            max_parallelism=self.max_parallelism,
            sources=sources,
            state=state,
            files=files,
            sinks={
                sink: items
                for sink, items in staged.items()
                if self.plan.op(sink).params["sink"].durable
            },
            final=final,
            stores={name: spec for ack in acks for name, spec in ack.get("stores", {}).items()},
        )
        fault_point("before_manifest")
        self.storage.write_manifest(manifest)
        fault_point("after_manifest")

    def _commit(self, checkpoint_id: int, staged: dict[str, list[Any]]) -> None:
        for op in self.plan.ops:
            if op.kind == "sink":
                op.params["sink"].commit(checkpoint_id, staged.get(op.id, []))


def checked_tops(value: Any, source_id: str, checkpoint_id: int) -> dict[str, dict[str, int]]:
    """``split_tops`` of a source as read from a checkpoint: split id -> watermark operator id
    -> int64 microseconds. Anything else makes the checkpoint unusable (it was written by
    :meth:`JobCoordinator.sources_state`, so a different shape means damage or tampering)."""
    problem = None
    if not isinstance(value, dict):
        problem = f"a {type(value).__name__}"
    else:
        for split, by_op in value.items():
            if not isinstance(by_op, dict):
                problem = f"split {split!r} maps to a {type(by_op).__name__}"
                break
            for op_id, top in by_op.items():
                if isinstance(top, bool) or not isinstance(top, int) or not -(2**63) <= top < 2**63:
                    problem = f"split {split!r}, operator {op_id!r}: {top!r}"
                    break
    if problem is not None:
        msg = (
            f"checkpoint {checkpoint_id}: the split_tops of source {source_id!r} in its sources are not "
            f"valid ({problem}); expected {{split id: {{watermark operator: int microseconds}}}}. Restore "
            f"an older checkpoint, or start over with restore=None"
        )
        raise CheckpointError(msg)
    return {split: dict(by_op) for split, by_op in value.items()}
