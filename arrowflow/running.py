"""Background jobs: ``flow.start()`` runs a flow in a thread and returns a :class:`Job`.

The job's coordinator runs in that thread (its workers are processes, or the thread itself
with ``workers=0``), so the calling thread — a notebook, a service — stays free to watch
it, ask for a checkpoint, or stop it:

>>> import arrowflow as af, polars as pl
>>> from arrowflow.testing import CollectingSink
>>> flow = af.Flow("bg")
>>> flow.from_polars(pl.DataFrame({"k": [1, 2, 1]})).key_by("k").agg(n=pl.len()).write_to(CollectingSink())
>>> job = flow.start(workers=0)
>>> job.wait().status
'finished'

``job.stop()`` ends the run at once: output of checkpoints already completed stays
committed, nothing after them is. ``job.stop(savepoint=True)`` first takes one more
checkpoint and commits it, so a later ``flow.run(restore="latest")`` goes on exactly
from there.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from arrowflow.errors import ArrowflowError
from arrowflow.runtime.result import RunResult


class JobControl:
    """Requests from the user's thread, applied to the coordinator of the current attempt."""

    def __init__(self) -> None:
        self.coordinator: Any = None
        self.stop_mode: str | None = None
        self.lock = threading.Lock()

    def attach(self, coordinator: Any) -> None:
        with self.lock:
            self.coordinator = coordinator
            if self.stop_mode is not None:
                coordinator.request_stop(savepoint=self.stop_mode == "savepoint")


class Job:
    """A flow running in the background."""

    def __init__(self, name: str, run: Any, kwargs: dict[str, Any]) -> None:
        self.name = name
        self.control = JobControl()
        self.result: RunResult | None = None
        self.error: BaseException | None = None
        self.started = time.monotonic()
        self._thread = threading.Thread(target=self._main, args=(run, kwargs), name=f"arrowflow-job-{name}",
                                        daemon=True)
        self._thread.start()

    def _main(self, run: Any, kwargs: dict[str, Any]) -> None:
        try:
            self.result = run(control=self.control, **kwargs)
        except BaseException as exc:
            self.error = exc

    # ------------------------------------------------------------------ watching
    @property
    def status(self) -> str:
        """``running``, ``finished`` (input ended), ``stopped`` (job.stop()) or ``failed``."""
        if self._thread.is_alive():
            return "running"
        if self.error is not None:
            return "failed"
        return self.result.status if self.result is not None else "failed"

    @property
    def progress(self) -> dict[str, Any]:
        """Rows read so far, splits done of those known, checkpoints completed, restarts."""
        coordinator = self.control.coordinator
        if coordinator is None:
            return {"rows_in": 0, "splits_done": 0, "splits_total": 0, "checkpoints": [],
                    "elapsed_s": time.monotonic() - self.started}
        done, total = coordinator.enumerator.progress()
        return {"rows_in": coordinator.rows_total, "splits_done": done, "splits_total": total,
                "checkpoints": list(coordinator.completed), "elapsed_s": time.monotonic() - self.started}

    def wait(self, timeout: float | None = None) -> RunResult:
        """Block until the run ends; its result, or the error that ended it."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            msg = f"job {self.name!r} is still running after {timeout} s"
            raise TimeoutError(msg)
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result

    # ------------------------------------------------------------------ controlling
    def checkpoint(self, *, timeout: float = 60.0) -> int:
        """Take a checkpoint now; returns its id once it is complete (and its output committed)."""
        deadline = time.monotonic() + timeout
        while self.control.coordinator is None and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        coordinator = self.control.coordinator
        if coordinator is None or coordinator.storage is None:
            msg = f"job {self.name!r} has no checkpoint_dir, so it cannot take a checkpoint"
            raise ArrowflowError(msg)
        before = len(coordinator.completed)
        coordinator.request_checkpoint()
        while time.monotonic() < deadline:
            if len(coordinator.completed) > before:
                return coordinator.completed[-1]
            if not self._thread.is_alive():
                break
            time.sleep(0.01)
        msg = f"job {self.name!r}: no checkpoint completed within {timeout} s (status: {self.status})"
        raise ArrowflowError(msg)

    def stop(self, *, savepoint: bool = False, timeout: float = 120.0) -> RunResult:
        """End the run (with ``savepoint``: after one more committed checkpoint); its result."""
        with self.control.lock:
            self.control.stop_mode = "savepoint" if savepoint else "stop"
            if self.control.coordinator is not None:
                self.control.coordinator.request_stop(savepoint=savepoint)
        return self.wait(timeout)

    def __repr__(self) -> str:
        progress = self.progress
        return (f"Job({self.name!r}, {self.status}, rows_in={progress['rows_in']:,}, "
                f"splits {progress['splits_done']}/{progress['splits_total']}, "
                f"checkpoints={progress['checkpoints'][-3:]})")
