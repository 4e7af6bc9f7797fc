"""How a finished run is reported on a terminal: the summary table and the restarts line.

Used by the command line (``arrowflow run``) and the demo.
"""

from __future__ import annotations

from arrowflow._api.flow import Flow
from arrowflow._runtime.result import RunResult


def _rate(rows: int, seconds: float) -> str:
    if seconds <= 0:
        return "-"
    per_s = rows / seconds
    if per_s >= 1e6:
        return f"{per_s / 1e6:.2f}M rows/s"
    if per_s >= 1e3:
        return f"{per_s / 1e3:.1f}k rows/s"
    return f"{per_s:.0f} rows/s"


def _table(header: list[str], rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = []
    for row in [header, *rows]:
        cells = [
            str(cell).ljust(w) if i < 2 else str(cell).rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append(indent + "  ".join(cells).rstrip())
    return lines


def format_summary(flow: Flow, result: RunResult, *, restarts: bool = True) -> str:
    """What a finished run did, as a few lines of text for a terminal, ending with the restarts
    line (``restarts=False``: the caller prints it last itself, after more output)."""
    if result.workers == 0:
        where = "in-process"
    else:
        where = f"{result.workers} worker process{'es' if result.workers > 1 else ''}"
    lines = [
        f"flow {flow.name!r} finished in {result.elapsed_s:.2f} s ({where})",
        f"  rows in    {result.rows_in:>13,}   {_rate(result.rows_in, result.elapsed_s)}",
        f"  rows out   {result.rows_out:>13,}",
    ]
    if result.malformed:
        lines.append(
            f"  malformed  {result.malformed:>13,}   (rows a source could not parse; see its 'malformed' side output)"
        )
    for item in result.rolled_back:
        lines.append(f"  rolled back {item}")
    metrics = result.metrics()
    if metrics.height:
        extra = [
            c for c in ("malformed", "unconsumed") if c in metrics.columns and metrics[c].sum()
        ]
        header = ["operator", "kind", "rows in", "rows out", "batches", *extra]
        body = [
            [
                row["operator"],
                row["kind"],
                f"{row['rows_in']:,}",
                f"{row['rows_out']:,}",
                f"{row['batches_in']:,}",
                *(f"{row[c]:,}" for c in extra),
            ]
            for row in metrics.iter_rows(named=True)
        ]
        lines.append("operators:")
        lines.extend(_table(header, body))
    sink_rows = (
        {
            row["operator"]: row["rows_in"]
            for row in metrics.iter_rows(named=True)
            if row["kind"] == "sink"
        }
        if metrics.height
        else {}
    )
    sinks = flow.sinks()
    if sinks:
        lines.append("outputs:")
        for node in sinks:
            sink = node.params["sink"]
            lines.append(f"  {node.id}: {sink_rows.get(node.id, 0):,} rows -> {sink.describe()}")
    # The notes name flow.run's options; on the command line they are flags.
    lines.extend(f"note: {note.replace('restore=None', '--restore none')}" for note in result.notes)
    if restarts:
        lines.append(restarts_line(result))
    return "\n".join(lines)


def restarts_line(result: RunResult) -> str:
    """How many times the run restarted from a checkpoint, and why: a restart hides a crash
    unless it is said, so summaries end with this line."""
    if not result.restarts:
        return "restarts: none (no worker failed)"
    reasons = result.restart_reasons or ["reason not recorded"]
    listed = "; ".join(f"{number}. {reason}" for number, reason in enumerate(reasons, 1))
    return (
        f"restarts: {result.restarts} — a worker failed and the run went on from its newest checkpoint: "
        f"{listed}"
    )


# ---------------------------------------------------------------------------- commands
