"""Fault injection for the recovery tests: a real ``kill -9`` of this process at a named point.

``ARROWFLOW_FAULTS="after_manifest@2"`` kills the process (SIGKILL, as ``kill -9`` would)
the 2nd time it reaches the point ``after_manifest``; several points are separated by
commas. With the variable unset this costs one dictionary lookup. Points:

- ``before_manifest``: coordinator, state files and sources.json written, manifest not yet;
- ``after_manifest``: coordinator, manifest written, sinks not yet committed;
- ``during_snapshot``: worker, after the first state file of a checkpoint was uploaded;
- ``after_ack``: worker, right after acknowledging a checkpoint.
"""

from __future__ import annotations

import os
import signal

_SPEC = os.environ.get("ARROWFLOW_FAULTS", "")
_TARGETS = {}
for item in filter(None, (part.strip() for part in _SPEC.split(","))):
    name, _, count = item.partition("@")
    _TARGETS[name] = int(count or 1)
_SEEN: dict[str, int] = {}


def fault_point(name: str) -> None:
    if not _TARGETS or name not in _TARGETS:
        return
    _SEEN[name] = _SEEN.get(name, 0) + 1
    if _SEEN[name] == _TARGETS[name]:
        os.kill(os.getpid(), signal.SIGKILL)
