"""The forkserver's preload: a worker start cut short by the coordinator prints nothing."""

from __future__ import annotations

import multiprocessing.spawn
import os
import pickle
import sys

import pytest

from arrowflow._runtime import preload


def _cut_short_start() -> tuple[type[BaseException], BaseException, object]:
    """A real ``multiprocessing.spawn._main`` reading a start message cut mid-way (what a
    forked worker reads when its coordinator is interrupted while it writes)."""
    message = pickle.dumps({"name": "worker", "sys_path": sys.path})
    read, write = os.pipe()
    os.write(write, message[: len(message) // 2])
    os.close(write)
    try:
        multiprocessing.spawn._main(read, -1)  # type: ignore[attr-defined]
    except (EOFError, pickle.UnpicklingError):
        kind, value, tb = sys.exc_info()
        assert kind is not None and value is not None
        return kind, value, tb
    raise AssertionError("spawn._main read a truncated message without an error")


def test_a_start_cut_short_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    kind, value, tb = _cut_short_start()
    assert preload._spawn_cut_short(kind, value, tb)
    preload._excepthook(kind, value, tb)
    assert capsys.readouterr().err == ""


def test_other_errors_are_still_printed(capsys: pytest.CaptureFixture[str]) -> None:
    kind, value, tb = _cut_short_start()
    # the same error raised outside a worker's start, and another error inside it
    assert not preload._spawn_cut_short(kind, value, None)
    assert not preload._spawn_cut_short(ValueError, ValueError("bad spec"), tb)
    try:
        raise ValueError("bad spec")
    except ValueError:
        preload._excepthook(*sys.exc_info())  # type: ignore[arg-type]
    assert "ValueError: bad spec" in capsys.readouterr().err
