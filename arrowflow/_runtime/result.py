"""What a finished run returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import polars as pl


@dataclass
class RunResult:
    flow: str
    workers: int
    elapsed_s: float
    operator_metrics: list[dict[str, Any]] = field(default_factory=list)
    restarts: int = 0
    restart_reasons: list[str] = field(default_factory=list)  # why each restart happened, in order
    checkpoints: list[int] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)
    restored_from: int | None = None
    #: The checkpoint of an earlier run this run started from (None: it started fresh); a
    #: restart during the run does not change it (``restored_from`` is the last restore's).
    resumed_from: int | None = None
    status: str = "finished"  # "finished" (input ended) or "stopped" (job.stop())
    checkpoint_seconds: dict[int, float] = field(default_factory=dict)  # id -> trigger to commit
    aborted_checkpoints: list[int] = field(default_factory=list)  # took longer than the timeout
    #: What the run did that its counts do not show (it resumed from a final checkpoint…), one
    #: sentence each; the CLI prints them under the summary.
    notes: list[str] = field(default_factory=list)
    #: Output the restore removed because checkpoints after the restored one had committed it
    #: (arrowflow.sinks.RolledBack: sink, checkpoint, what, count, epochs), one per sink and attempt.
    rolled_back: list[Any] = field(default_factory=list)

    def metrics(self) -> pl.DataFrame:
        """Per-operator counts summed over workers: rows in and out, batches, malformed."""
        if not self.operator_metrics:
            return pl.DataFrame()
        frame = pl.from_dicts(self.operator_metrics, infer_schema_length=None)
        numeric = [
            c
            for c, t in frame.schema.items()
            if t.is_numeric() and c not in ("worker", "watermark_us")
        ]
        # An operator's watermark is the lowest of its workers' (summing them meant nothing).
        watermark = [pl.col("watermark_us").min()] if "watermark_us" in frame.columns else []
        return frame.group_by("operator", "kind", maintain_order=True).agg(
            [pl.col(c).sum() for c in numeric] + watermark
        )

    def _sum(self, kind: str, column: str) -> int:
        return int(sum(m[column] for m in self.operator_metrics if m["kind"] == kind))

    @property
    def rows_in(self) -> int:
        """Rows read by all sources."""
        return self._sum("source", "rows_in")

    @property
    def rows_out(self) -> int:
        """Rows written by all sinks."""
        return self._sum("sink", "rows_in")

    @property
    def malformed(self) -> int:
        return int(sum(m.get("malformed", 0) for m in self.operator_metrics))

    def collected(self, sink_id: str, schema: pl.Schema) -> pl.DataFrame:
        frames = self.outputs.get(sink_id) or []
        if not frames:
            return pl.DataFrame(schema=schema)
        return pl.concat(frames, how="vertical_relaxed")

    def __repr__(self) -> str:
        rate = self.rows_in / self.elapsed_s if self.elapsed_s else 0.0
        return (
            f"RunResult(flow={self.flow!r}, workers={self.workers}, rows_in={self.rows_in:,}, "
            f"rows_out={self.rows_out:,}, malformed={self.malformed:,}, elapsed={self.elapsed_s:.3f}s, "
            f"rate={rate:,.0f} rows/s, restarts={self.restarts}"
            + (f", resumed_from={self.resumed_from}" if self.resumed_from is not None else "")
            + (f", rolled_back={self.rolled_back_summary()!r}" if self.rolled_back else "")
            + ")"
        )

    def rolled_back_summary(self) -> str:
        """One line per sink and restore that removed output of later checkpoints."""
        return "; ".join(str(item) for item in self.rolled_back)
