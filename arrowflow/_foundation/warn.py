"""Warnings that point at the user's line, not at the engine's.

``warnings.warn`` names the frame ``stacklevel`` levels up; the engine warns from different
depths (a run, a restart, a restore, a job's thread), so a fixed ``stacklevel`` showed a line
of arrowflow's own (``_runtime/__init__.py:43: UserWarning ... result = run_attempts(...)``).
:func:`warn` names the first frame outside the ``arrowflow`` package instead: the user's
``flow.run(...)`` line (or the thread's entry point for ``flow.start``).
"""

from __future__ import annotations

import sys
import warnings


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn(message, category)`` attributed to the first caller outside arrowflow."""
    frame = sys._getframe(1)
    level = 2
    while frame.f_back is not None and frame.f_globals.get("__name__", "").startswith("arrowflow"):
        frame = frame.f_back
        level += 1
    warnings.warn(message, category, stacklevel=level)
