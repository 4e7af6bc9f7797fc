"""The in-process executor: one worker in the calling process, same semantics as the pool.

It exists for tests, debugging and notebook runs: no processes, no shared memory, and a
Python debugger stops inside user functions. The coordinator's duties (splits, checkpoints,
commits) run in the same process, driven from the worker's loop through a direct link.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from typing import Any

from arrowflow._plan import Plan
from arrowflow._runtime.coordinator import JobCoordinator
from arrowflow._runtime.operators import RuntimeContext
from arrowflow._runtime.result import RunResult
from arrowflow._runtime.worker import Worker
from arrowflow.sources import Split
from arrowflow.state import StateBackend


class _DirectLink:
    def __init__(self, coordinator: JobCoordinator) -> None:
        self.coordinator = coordinator
        self.exit = False

    def next_split(self, source_id: str) -> tuple[Split, Any, dict[str, Any]] | str | None:
        return self.coordinator.hand_out(source_id, 0)

    def split_done(self, source_id: str, split_id: str) -> None:
        self.coordinator.split_done(source_id, split_id, 0)

    def rows(self, count: int) -> None:
        self.coordinator.rows(count)

    def finished(self) -> None:
        self.coordinator.finished(0)

    def metrics(self, rows: list[dict[str, Any]]) -> None:
        self.coordinator.worker_metrics(0, rows)

    def publish(self, sink_id: str, epoch: int | None, payload: bytes, produced: int) -> None:
        self.coordinator.publish(sink_id, 0, epoch, payload, produced)

    def ack(self, checkpoint_id: int, payload: dict[str, Any]) -> None:
        if self.coordinator.ack(0, checkpoint_id, payload):
            self.exit = True

    def poll_command(self, timeout: float) -> tuple[Any, ...] | None:
        if self.exit or self.coordinator.exit_now:
            return ("exit",)
        checkpoint_id = self.coordinator.poll()
        if checkpoint_id is not None:
            return ("checkpoint", checkpoint_id)
        if timeout:
            time.sleep(timeout)
        return None


def run_local(
    plan: Plan,
    backend: StateBackend,
    coordinator: JobCoordinator,
    context: RuntimeContext,
    *,
    batch_size: int | None,
    max_parallelism: int,
) -> RunResult:
    started = time.perf_counter()
    local_dir = tempfile.mkdtemp(prefix=f"arrowflow-{plan.flow_name}-")
    worker = Worker(
        plan,
        0,
        1,
        _DirectLink(coordinator),
        backend,
        batch_size=batch_size,
        local_dir=local_dir,
        max_parallelism=max_parallelism,
        runtime_context=context,
    )
    try:
        report = worker.run()
    finally:
        worker.close()
        shutil.rmtree(local_dir, ignore_errors=True)
    result = RunResult(plan.flow_name, 0, time.perf_counter() - started, report.metrics)
    result.checkpoints = list(coordinator.completed)
    result.outputs = collected_outputs(plan)
    return result


def collected_outputs(plan: Plan) -> dict[str, Any]:
    from arrowflow.io.memory import CollectSink

    return {
        op.id: op.params["sink"].frames
        for op in plan.ops
        if op.kind == "sink" and isinstance(op.params["sink"], CollectSink)
    }
