"""The split enumerator: which source splits are waiting, handed out and finished.

The :class:`SplitEnumerator` holds, per source, the splits not yet handed out, those handed
to each worker and not yet finished, and those finished. Workers ask for splits one at a
time, so a slow worker simply asks less often. Unbounded sources are asked again for new
splits (``discover``); with nothing new, a worker is told to ``WAIT``. When a worker fails,
the job restarts from its newest checkpoint, and a new enumerator is built from that
checkpoint's finished splits and offsets (docs/checkpoints.md).

Event time (:mod:`arrowflow._foundation.watermarks`): for a bounded source read by a per-split watermark,
the enumerator asks the source for lower bounds of the watermark column per split
(``event_time_bounds``) and keeps the pending splits in event-time order: splits without a
known bound first (they hold the watermark back until they start), then by ascending bound.
With every split it hands out it gives :meth:`event_time`: the split's bound, the source's
*floor* (the lowest bound still pending: :data:`NO_WATERMARK` while a split without a known
bound waits, :data:`IDLE` when none does; an unbounded source's splits have no bounds, so its
floor holds while any split waits to be handed out) and the split's
running maximum per watermark operator as a restored checkpoint recorded it.

A source with ``max_split_age_s`` (``flow.watch``) has its finished set bounded: every split
carries its file's modification time (``info["mtime"]``); splits older than the newest seen
minus that age are no longer discovered (``discover_splits`` is given that cutoff as
``not_before``: the enumerator's state, never an attribute of the source) and leave the
finished set, so the checkpoints that record it stay small however long the job runs.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from arrowflow._foundation.watermarks import IDLE, NO_WATERMARK
from arrowflow._plan import Plan, bound_columns
from arrowflow.sources import Split

#: ``next_split`` answer for an unbounded source with nothing to hand out *yet*.
WAIT = "wait"


class SplitEnumerator:
    def __init__(
        self,
        plan: Plan,
        positions: dict[str, dict[str, Any]] | None = None,
        finished: dict[str, set[str]] | None = None,
        ages: dict[str, dict[str, Any]] | None = None,
        tops: dict[str, dict[str, dict[str, int]]] | None = None,
    ) -> None:
        self.plan = plan
        # Event time: the column whose bounds each source reports, the bounds known, and the
        # running maxima a restored checkpoint recorded for splits in progress.
        self.time_columns = bound_columns(plan)
        self.bounds: dict[str, dict[str, int]] = {op.id: {} for op in plan.sources}
        self.tops = {source: dict(by_split) for source, by_split in (tops or {}).items()}
        self.pending: dict[str, deque[Split]] = {}
        self.assigned: dict[str, dict[str, int]] = {}
        self.finished: dict[str, set[str]] = {
            op.id: set(finished.get(op.id, ())) if finished else set() for op in plan.sources
        }
        self.positions = positions or {}
        self.total: dict[str, int] = {}
        self.seen: dict[str, set[str]] = {}
        self.unbounded = {op.id for op in plan.sources if not op.params["source"].bounded}
        # Age-bounded sources: the age, each known split's mtime, the newest mtime seen.
        self.max_age = {
            op.id: op.params["source"].max_split_age_s
            for op in plan.sources
            if op.params["source"].max_split_age_s is not None
        }
        self.mtimes: dict[str, dict[str, float]] = {
            s: dict((ages or {}).get(s, {}).get("mtimes", {})) for s in self.max_age
        }
        self.newest: dict[str, float | None] = {
            s: (ages or {}).get(s, {}).get("newest") for s in self.max_age
        }
        # The oldest mtime among splits a restored checkpoint had found but not finished: they
        # are read after a restore however old, until the first poll has found them again.
        self.floor: dict[str, float | None] = {
            s: (ages or {}).get(s, {}).get("unfinished_floor") for s in self.max_age
        }
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
            source = op.params["source"]
            aged = op.id in self.max_age
            # As Spark's file source: the cutoff comes from the files seen *before* this poll
            # (none on a fresh start: every file counts), so files that land together while
            # the job was down are all read, however far apart their times.
            cutoff = self.cutoff(op.id) if aged else None
            found = source.discover_splits(not_before=cutoff) if aged else source.discover_splits()
            if aged:
                times = [
                    s.info["mtime"]
                    for s in found
                    if s.info.get("mtime") is not None
                    and (cutoff is None or s.info["mtime"] >= cutoff)
                ]
                if times and (self.newest[op.id] is None or max(times) > self.newest[op.id]):
                    self.newest[op.id] = max(times)
            fresh = []
            for split in found:
                if split.split_id not in self.seen[op.id]:
                    mtime = split.info.get("mtime")
                    if aged and mtime is not None:
                        if cutoff is not None and mtime < cutoff:
                            continue  # too old to be remembered: never read
                        self.mtimes[op.id][split.split_id] = mtime
                    self.seen[op.id].add(split.split_id)
                    self.pending[op.id].append(split)
                    self.total[op.id] += 1
                    fresh.append(split)
            if fresh and op.id not in self.unbounded:
                self._order_by_event_time(op.id, source, fresh)
            if aged:
                self.floor[op.id] = None  # the restored unfinished splits are found again (or gone)
                after = self.cutoff(op.id)
                if after is not None:
                    self.forget_older(op.id, after)

    def _order_by_event_time(self, source_id: str, source: Any, fresh: list[Split]) -> None:
        column = self.time_columns.get(source_id)
        if column is not None:
            found = source.event_time_bounds(fresh, column)
            for split_id, bound in found.items():
                if isinstance(bound, bool) or not isinstance(bound, int):
                    msg = (
                        f"source {source_id!r}: event_time_bounds() gave {bound!r} for split {split_id!r}; "
                        f"expected int64 microseconds since the epoch"
                    )
                    raise TypeError(msg)
            self.bounds[source_id].update(found)
        bounds = self.bounds[source_id]
        # Stable: splits without a bound first, in discovery order, then by bound.
        ordered = sorted(
            self.pending[source_id],
            key=lambda split: (split.split_id in bounds, bounds.get(split.split_id, 0)),
        )
        self.pending[source_id] = deque(ordered)

    def time_floor(self, source_id: str) -> int:
        """The lowest event time a pending split may hold (see the module docstring):
        :data:`IDLE` when nothing is pending (for an unbounded source: *yet*)."""
        if not self.pending[source_id]:
            return IDLE
        bounds = self.bounds[source_id]
        first = self.pending[source_id][0]  # the order puts unknown bounds, then the lowest, first
        return bounds.get(first.split_id, NO_WATERMARK)

    def event_time(self, source_id: str, split_id: str) -> dict[str, Any]:
        """What a worker's watermark needs with a split it was handed (after ``next_split``)."""
        return {
            "lower": self.bounds[source_id].get(split_id),
            "floor": self.time_floor(source_id),
            "tops": dict(self.tops.get(source_id, {}).get(split_id, {})),
        }

    def cutoff(self, source_id: str) -> float | None:
        """Modification time below which a split of an age-bounded source is forgotten: the
        newest seen minus the age, but never above a split found and not finished yet (a
        backlog that a fresh start began to read is read to the end, also across restores)."""
        newest = self.newest.get(source_id)
        if newest is None:
            return None
        floor = self.unfinished_floor(source_id)
        return (
            newest - self.max_age[source_id]
            if floor is None
            else min(newest - self.max_age[source_id], floor)
        )

    def unfinished_floor(self, source_id: str, finished: set[str] | None = None) -> float | None:
        """The oldest mtime of a split found but not in ``finished`` (default: not finished)."""
        done = self.finished[source_id] if finished is None else finished
        times = [m for split, m in self.mtimes[source_id].items() if split not in done]
        if self.floor.get(source_id) is not None:
            times.append(self.floor[source_id])  # type: ignore[arg-type]
        return min(times) if times else None

    def forget_older(self, source_id: str, cutoff: float) -> None:
        mtimes = self.mtimes[source_id]
        old = [split for split in self.finished[source_id] if mtimes.get(split, cutoff) < cutoff]
        for split in old:
            self.finished[source_id].discard(split)
            self.seen[source_id].discard(split)
            mtimes.pop(split, None)
        self.total[source_id] -= len(old)

    def remembered(self, source_id: str, split_id: str) -> bool:
        """False for a finished split that its source's age bound has forgotten."""
        return source_id not in self.max_age or split_id in self.seen[source_id]

    def ages_state(self, source_id: str, finished: set[str]) -> dict[str, Any]:
        """What a checkpoint keeps for an age-bounded source: mtimes of its finished splits."""
        if source_id not in self.max_age:
            return {}
        mtimes = self.mtimes[source_id]
        return {
            "newest": self.newest[source_id],
            "mtimes": {split: mtimes[split] for split in sorted(finished) if split in mtimes},
            "unfinished_floor": self.unfinished_floor(source_id, finished),
        }

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
