"""The split enumerator: which source splits are waiting, handed out and finished.

The :class:`SplitEnumerator` holds, per source, the splits not yet handed out, those handed
to each worker and not yet finished, and those finished. Workers ask for splits one at a
time, so a slow worker simply asks less often. Unbounded sources are asked again for new
splits (``discover``); with nothing new, a worker is told to ``WAIT``. When a worker fails,
the job restarts from its newest checkpoint, and a new enumerator is built from that
checkpoint's finished splits and offsets (DESIGN.md §5).
"""

from __future__ import annotations

from collections import deque
from typing import Any

from arrowflow.plan import Plan
from arrowflow.sources import Split

#: ``next_split`` answer for an unbounded source with nothing to hand out *yet*.
WAIT = "wait"


class SplitEnumerator:
    def __init__(self, plan: Plan, positions: dict[str, dict[str, Any]] | None = None,
                 finished: dict[str, set[str]] | None = None) -> None:
        self.plan = plan
        self.pending: dict[str, deque[Split]] = {}
        self.assigned: dict[str, dict[str, int]] = {}
        self.finished: dict[str, set[str]] = {op.id: set(finished.get(op.id, ())) if finished else set() for op in plan.sources}
        self.positions = positions or {}
        self.total: dict[str, int] = {}
        self.seen: dict[str, set[str]] = {}
        self.unbounded = {op.id for op in plan.sources if not op.params["source"].bounded}
        for op in plan.sources:
            self.pending[op.id] = deque()
            self.assigned[op.id] = {}
            self.seen[op.id] = set(self.finished[op.id])
            self.total[op.id] = len(self.finished[op.id])
        self.discover()

    def discover(self) -> None:
        """Ask every source for splits it has not handed out before (bounded: once)."""
        for op in self.plan.sources:
            if self.total[op.id] > len(self.finished[op.id]) and op.id not in self.unbounded:
                continue  # a bounded source's splits are all known
            for split in op.params["source"].discover_splits():
                if split.split_id not in self.seen[op.id]:
                    self.seen[op.id].add(split.split_id)
                    self.pending[op.id].append(split)
                    self.total[op.id] += 1

    def next_split(self, source_id: str, worker: int) -> tuple[Split, Any] | str | None:
        queue = self.pending[source_id]
        if not queue:
            return WAIT if source_id in self.unbounded else None
        split = queue.popleft()
        self.assigned[source_id][split.split_id] = worker
        return split, self.positions.get(source_id, {}).get(split.split_id)

    def split_done(self, source_id: str, split_id: str) -> None:
        self.assigned[source_id].pop(split_id, None)
        self.finished[source_id].add(split_id)

    def progress(self) -> tuple[int, int]:
        """(splits finished, splits known) over all sources."""
        return sum(len(f) for f in self.finished.values()), sum(self.total.values())
