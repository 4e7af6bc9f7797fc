"""Names of the pool's shared-memory segments, and reclaiming those a dead coordinator left.

The coordinator creates one segment per ring and unlinks them all when the pool stops,
whatever happened. Only a coordinator killed together with Python's resource tracker
(``kill -9`` of its process group, the OOM killer, a container stopped) leaves them behind,
in ``/dev/shm`` until the machine reboots: 32 MiB of memory each.

So a segment's name says who created it: ``af-<pid>-<start>-<token>-<sender>-<receiver>``,
``start`` being the creator's start time (field 22 of ``/proc/<pid>/stat``, clock ticks
since boot, base 36), so that a pid reused by another process does not keep a dead
creator's segments alive. A pool about to create its segments first unlinks every ``af-``
segment of this user whose creator is gone: no process with that pid, or one that started
at another time (or a zombie). Names without a start time (``af-<pid>-<token>-<s>-<t>``,
older arrowflow) are reclaimed when their pid is gone. Without ``/proc`` (not Linux) nothing
is reclaimed and the start time is written as ``0``.
"""

from __future__ import annotations

import os

SHM_DIR = "/dev/shm"
PREFIX = "af"
_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def _base36(number: int) -> str:
    text = ""
    while True:
        number, digit = divmod(number, 36)
        text = _DIGITS[digit] + text
        if not number:
            return text


def start_time(pid: int) -> str | None:
    """The start time of process ``pid`` (base 36), or None when there is no live process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read().decode("ascii", "replace")
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()  # the command in (...) may hold spaces
    if len(fields) < 20 or fields[0] == "Z":
        return None
    return _base36(int(fields[19]))  # field 22; fields[0] is field 3 (the state)


def segment_name(token: str, sender: int, receiver: int) -> str:
    """The name of the ring from ``sender`` to ``receiver`` of the pool ``token`` of this process."""
    pid = os.getpid()
    return f"{PREFIX}-{pid}-{start_time(pid) or '0'}-{token}-{sender}-{receiver}"


def _creator_gone(name: str) -> bool:
    parts = name.split("-")
    if parts[0] != PREFIX or len(parts) not in (5, 6) or not parts[1].isdigit():
        return False  # not a ring segment
    started = start_time(int(parts[1]))
    if len(parts) == 5:  # af-<pid>-<token>-<s>-<t>: no start time to compare
        return started is None
    return parts[2] != "0" and started != parts[2]


def reclaim_segments() -> list[str]:
    """Unlink the ring segments of this user whose creator is gone; return their names."""
    if not os.path.isdir("/proc/self") or not os.path.isdir(SHM_DIR):
        return []
    try:
        names = os.listdir(SHM_DIR)
    except OSError:
        return []
    uid = os.getuid()
    removed = []
    for name in names:
        if not name.startswith(f"{PREFIX}-") or not _creator_gone(name):
            continue
        path = os.path.join(SHM_DIR, name)
        try:
            if os.stat(path).st_uid != uid:
                continue
            os.unlink(path)
        except OSError:  # gone meanwhile, or not ours to remove
            continue
        removed.append(name)
    return removed
