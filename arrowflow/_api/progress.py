"""Progress bars for ``flow.run(progress=...)``: tqdm, in a notebook or a terminal.

``progress=None`` (the default) shows a bar when someone is watching: inside a Jupyter
kernel, or when standard error is a terminal — and not under CI or with
``ARROWFLOW_PROGRESS=0``. ``True`` forces it, ``False`` turns it off.

Over bounded sources the bar counts splits (files, row-group ranges) done of the total,
with rows read and rows/s beside it; over unbounded ones (``tail``, ``watch``) it counts rows.
A thread samples the coordinator five times a second; the run itself is not slowed.

Where nobody watches a redrawn line (standard error is no terminal and no notebook widget
shows the bar: nbconvert without ipywidgets, a pipe, a log file) there is no bar: one line at
the end says what the run did (splits, rows, rows/s, checkpoints, restarts), instead of a
line per refresh.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import threading
import time
from typing import Any

from arrowflow._api.jobview import in_notebook

INTERVAL_S = 0.2


def wanted(progress: bool | None) -> bool:
    if progress is not None:
        return bool(progress)
    if os.environ.get("ARROWFLOW_PROGRESS", "").strip() in ("0", "false", "no", "off"):
        return False
    if os.environ.get("CI"):
        return False
    if in_notebook():
        return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _widget() -> bool:
    """Whether the bar is a notebook widget (a kernel, and ipywidgets to draw it)."""
    return in_notebook() and importlib.util.find_spec("ipywidgets") is not None


def _tqdm_class() -> Any:
    if _widget():
        from tqdm.notebook import tqdm

        return tqdm
    from tqdm import tqdm

    return tqdm


def _redraws(file: Any) -> bool:
    """Whether a bar written to ``file`` (None: standard error) redraws in place for a viewer."""
    if _widget():
        return True
    stream = sys.stderr if file is None else file
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class ProgressBar:
    """Follows the coordinator of the current attempt (``control.coordinator``) until closed."""

    def __init__(self, control: Any, name: str, *, file: Any = None) -> None:
        self.control = control
        self.name = name
        self.file = file
        self.done = threading.Event()
        self.bar: Any = None
        self.unbounded = False
        self.one_line = not _redraws(file)
        self.started = time.monotonic()
        self.last: tuple[int, int, int, int, bool] = (0, 0, 0, 0, False)
        self.thread = threading.Thread(
            target=self._loop, name=f"arrowflow-progress-{name}", daemon=True
        )
        self.thread.start()

    def _update(self) -> None:
        coordinator = self.control.coordinator
        if coordinator is None:
            return
        done, total = coordinator.enumerator.progress()
        rows = coordinator.rows_total
        if self.one_line:
            checkpoints = len(coordinator.completed) if coordinator.storage is not None else -1
            unbounded = coordinator.enumerator.unbounded or not total
            self.last = (done, total, rows, checkpoints, unbounded)
            return
        if self.bar is None:
            self.unbounded = coordinator.enumerator.unbounded or not total
            kwargs: dict[str, Any] = {
                "desc": self.name,
                "file": self.file,
                "dynamic_ncols": True,
                "leave": True,
                "mininterval": INTERVAL_S,
            }
            if self.unbounded:
                self.bar = _tqdm_class()(total=None, unit=" rows", unit_scale=True, **kwargs)
            else:
                self.bar = _tqdm_class()(total=total, unit=" splits", **kwargs)
        checkpoints = len(coordinator.completed)
        postfix = (
            f"{checkpoints} checkpoint{'' if checkpoints == 1 else 's'}"
            if coordinator.storage is not None
            else ""
        )
        if self.unbounded:
            self.bar.update(max(0, rows - self.bar.n))
        else:
            if total != self.bar.total:
                self.bar.total = total
            self.bar.update(max(0, done - self.bar.n))
            elapsed = self.bar.format_dict.get("elapsed") or 0.0
            rate = f", {rows / elapsed:,.0f} rows/s" if elapsed > 0 else ""
            postfix = f"{rows:,} rows{rate}" + (f", {postfix}" if postfix else "")
        if self.control.restarts:
            postfix += f", restarts {self.control.restarts}"
        self.bar.set_postfix_str(postfix, refresh=False)

    def _loop(self) -> None:
        while not self.done.wait(INTERVAL_S):
            try:
                self._update()
            except Exception:
                return  # a progress bar never breaks a run

    def close(self) -> None:
        self.done.set()
        self.thread.join(2.0)
        try:
            self._update()
        except Exception:
            pass
        if self.bar is not None:
            self.bar.close()
        elif self.one_line and self.control.coordinator is not None:
            print(self._summary(), file=self.file or sys.stderr, flush=True)

    def _summary(self) -> str:
        done, total, rows, checkpoints, unbounded = self.last
        elapsed = time.monotonic() - self.started
        parts = [] if unbounded else [f"{done}/{total} splits"]
        parts.append(
            f"{rows:,} rows in {elapsed:.1f} s ({rows / elapsed if elapsed else 0:,.0f} rows/s)"
        )
        if checkpoints >= 0:
            parts.append(f"{checkpoints} checkpoint{'' if checkpoints == 1 else 's'}")
        if self.control.restarts:
            parts.append(f"restarts {self.control.restarts}")
        return f"{self.name}: " + ", ".join(parts)
