"""The in-process runner: one worker in the calling process, same semantics as the pool.

It exists for tests, debugging and notebook runs: no processes, no shared memory, and a
Python debugger stops inside user functions. The coordinator's duties (splits, checkpoints,
commits) run in the same process, driven from the worker's loop through a direct link: a
control message is a function call, and with one worker there is no transport.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from typing import Any

from arrowflow.errors import PlanError
from arrowflow.options import RunOptions
from arrowflow.runners import ControlLink, Coordinator, Runner, WorkerLoop, WorkerSpec
from arrowflow.sources import Split


class _DirectLink(ControlLink):
    """The worker's control link as direct calls of the coordinator (worker 0)."""

    def __init__(self, coordinator: Coordinator) -> None:
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


class InProcessRunner(Runner):
    """One worker, in the calling thread; the coordinator is driven from the worker's loop.

    Parameters
    ----------
    options
        The run's options; ``workers`` must be 0 or left out.
    """

    name = "inprocess"

    def __init__(self, options: RunOptions) -> None:
        super().__init__(options)
        if options.workers not in (None, 0):
            msg = (
                f"the in-process runner runs one worker in this process, not workers={options.workers}; "
                f"drop runner={options.runner!r} to use a process pool, or pass workers=0"
            )
            raise PlanError(msg)
        self.worker: WorkerLoop | None = None
        self.local_dir: str | None = None

    @property
    def parallelism(self) -> int:
        return 1

    @property
    def processes(self) -> int:
        return 0

    def launch(self, spec: WorkerSpec, coordinator: Coordinator) -> None:
        self.local_dir = tempfile.mkdtemp(prefix=f"arrowflow-{spec.flow_name}-")
        self.worker = spec.build(0, _DirectLink(coordinator), None, self.local_dir)

    def coordinate(self, coordinator: Coordinator) -> list[Any]:
        assert self.worker is not None
        return [self.worker.run()]

    def shutdown(self, *, graceful: bool = False) -> None:
        worker, self.worker = self.worker, None
        if worker is not None:
            worker.close()
        local_dir, self.local_dir = self.local_dir, None
        if local_dir is not None:
            shutil.rmtree(local_dir, ignore_errors=True)
