"""The in-process executor: one worker in the calling process, same semantics as the pool.

It exists for tests, debugging and small notebook runs: no processes, no shared memory, and
a Python debugger stops inside user functions. The coordinator's duties (split enumeration,
sink begin/commit) run in the same process through a direct link.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from typing import Any

from arrowflow.plan import Plan
from arrowflow.runtime.coordinator import SplitEnumerator, commit_sinks
from arrowflow.runtime.result import RunResult
from arrowflow.runtime.worker import Worker
from arrowflow.sources import Split
from arrowflow.state import StateBackend


class _DirectLink:
    def __init__(self, enumerator: SplitEnumerator) -> None:
        self.enumerator = enumerator

    def next_split(self, source_id: str) -> tuple[Split, Any] | None:
        return self.enumerator.next_split(source_id, 0)

    def split_done(self, source_id: str, split_id: str) -> None:
        self.enumerator.split_done(source_id, split_id)


def run_local(plan: Plan, backend: StateBackend, *, batch_size: int | None, max_parallelism: int) -> RunResult:
    started = time.perf_counter()
    for op in plan.ops:
        if op.kind == "sink":
            op.params["sink"].begin()
    enumerator = SplitEnumerator(plan)
    local_dir = tempfile.mkdtemp(prefix=f"arrowflow-{plan.flow_name}-")
    worker = Worker(plan, 0, 1, _DirectLink(enumerator), backend, batch_size=batch_size,
                    local_dir=local_dir, max_parallelism=max_parallelism)
    try:
        report = worker.run(final_checkpoint=1)
    finally:
        worker.close()
        shutil.rmtree(local_dir, ignore_errors=True)
    commit_sinks(plan, 1, {sink: [staged] for sink, staged in report.staged.items()})
    result = RunResult(plan.flow_name, 0, time.perf_counter() - started, report.metrics)
    result.outputs = collected_outputs(plan)
    return result


def collected_outputs(plan: Plan) -> dict[str, Any]:
    from arrowflow.io.memory import CollectSink

    return {op.id: op.params["sink"].frames for op in plan.ops
            if op.kind == "sink" and isinstance(op.params["sink"], CollectSink)}
