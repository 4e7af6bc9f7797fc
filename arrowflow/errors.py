"""The exceptions arrowflow raises.

A small vocabulary under one root, so users can catch ``ArrowflowError`` and tests can
check the exact kind. Messages say what was expected, what arrived and the likely fix.
"""

from __future__ import annotations


class ArrowflowError(Exception):
    """Root of every error arrowflow raises on purpose."""


class PlanError(ArrowflowError):
    """The flow, as built, cannot be run: wrong API use, an unsupported expression."""


class SchemaError(PlanError):
    """A column is missing or has a type other than the one an operator needs."""


class SourceError(ArrowflowError):
    """A source cannot be read: no such file, an empty glob, an unreadable file."""


class SinkError(ArrowflowError):
    """A sink cannot write or commit its output."""


class StateError(ArrowflowError):
    """A state backend cannot open, read, write, snapshot or restore a store."""


class CheckpointError(ArrowflowError):
    """A checkpoint cannot be written, found, verified or restored."""


class WorkerError(ArrowflowError):
    """A worker process raised or died; the message carries its traceback as text."""

    def __init__(
        self,
        msg: str,
        *,
        worker: int | None = None,
        traceback_text: str = "",
        signal: int | None = None,
    ) -> None:
        super().__init__(msg)
        self.worker = worker
        self.traceback_text = traceback_text
        #: The signal that killed the worker process (None: it raised, or exited by itself).
        self.signal = signal


def summarize(exc: BaseException) -> str:
    """``Type: message`` in one line, naming the type as a traceback does.

    The first line of the message, not the traceback's last line: polars' errors run over
    many lines (the plan that failed, hints), and their last line is rarely the reason.
    """
    kind = type(exc)
    name = (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{name}: {lines[0]}" if lines else name


class JobCancelled(ArrowflowError):
    """The run was stopped from outside (Ctrl-C, ``job.stop()``)."""
