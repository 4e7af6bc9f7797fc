"""How a running :class:`arrowflow._api.job.Job` shows itself: HTML in Jupyter (refreshed in
place until the job ends, with a text form for text-only front ends, also ``str(job)``), a
status line in a terminal.

Everything here is self-contained HTML and inline SVG: no JavaScript, no network, no
plotting library. The chart draws throughput and lag over time from ``job.history()``.
"""

from __future__ import annotations

import html
import sys
import threading
import time
from typing import Any

import polars as pl

NONE = "\u2013"  # an en dash: no value yet

#: Seconds between two refreshes of the live view in a notebook.
REFRESH_S = 1.0

_STATUS_COLORS = {
    "running": "#1f77b4",
    "finished": "#2ca02c",
    "stopped": "#7f7f7f",
    "failed": "#d62728",
}

_STYLE = """<style>
.arrowflow-job{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;font-size:13px;color:#222;max-width:980px}
.arrowflow-job .af-head{font-size:15px;margin-bottom:6px}
.arrowflow-job .af-badge{display:inline-block;padding:1px 8px;border-radius:9px;color:#fff;font-size:12px}
.arrowflow-job .af-bar{background:#e8e8e8;border-radius:4px;height:10px;width:360px;display:inline-block;vertical-align:middle}
.arrowflow-job .af-bar>div{background:#4c9be8;height:10px;border-radius:4px}
.arrowflow-job table{border-collapse:collapse;margin:6px 0}
.arrowflow-job th,.arrowflow-job td{padding:2px 10px;border-bottom:1px solid #ddd;text-align:right;white-space:nowrap}
.arrowflow-job th:first-child,.arrowflow-job td:first-child,.arrowflow-job td.af-l,.arrowflow-job th.af-l{text-align:left}
.arrowflow-job .af-muted{color:#777}
.arrowflow-job .af-error{color:#d62728;white-space:pre-wrap;font-family:monospace}
</style>"""


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _number(value: Any) -> str:
    if value is None:
        return NONE
    if isinstance(value, float):
        if value != value:  # NaN
            return NONE
        return f"{value:,.1f}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return _esc(value)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return NONE
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def summary(job: Any) -> dict[str, Any]:
    """What both views show: status, progress, rate, last checkpoint."""
    progress = job.progress
    history = job.samples
    rate = history[-1].get("rows_per_s", 0.0) if history else 0.0
    if job.status != "running" and job.elapsed_s > 0:
        rate = progress["rows_in"] / job.elapsed_s
    return {
        "status": job.status,
        "progress": progress,
        "rate": rate,
        "checkpoint": job.last_checkpoint(),
    }


_LEFT, _RIGHT, _UPPER, _LOWER = 52, 8, 18, 20  # the charts' margins, px


def _chart(history: pl.DataFrame, width: int = 440, height: int = 120) -> str:
    """Two small line charts side by side: rows/s and lag (s) over elapsed time."""
    if history.height < 2:
        return ""
    parts = []
    for column, title, color in (
        ("rows_per_s", "throughput, rows/s", "#1f77b4"),
        ("lag_s", "event-time lag, s", "#ff7f0e"),
    ):
        series = history.select("elapsed_s", column).drop_nulls()
        if series.height < 2:
            continue
        xs = series.get_column("elapsed_s").to_list()
        ys = series.get_column(column).to_list()
        x0, x1 = xs[0], xs[-1] if xs[-1] > xs[0] else xs[0] + 1
        top = max(ys) if max(ys) > 0 else 1.0
        plot_w, plot_h = width - _LEFT - _RIGHT, height - _UPPER - _LOWER
        left, upper = _LEFT, _UPPER
        points = " ".join(
            f"{left + (x - x0) / (x1 - x0) * plot_w:.1f},{upper + plot_h - max(0.0, y) / top * plot_h:.1f}"
            for x, y in zip(xs, ys, strict=True)
        )
        parts.append(
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'role="img" aria-label="{_esc(title)}" style="margin-right:12px">'
            f'<text x="{left}" y="12" font-size="12" fill="#333">{_esc(title)}</text>'
            f'<line x1="{left}" y1="{upper + plot_h}" x2="{left + plot_w}" y2="{upper + plot_h}" stroke="#999"/>'
            f'<line x1="{left}" y1="{upper}" x2="{left}" y2="{upper + plot_h}" stroke="#999"/>'
            f'<text x="{left - 4}" y="{upper + 4}" font-size="10" text-anchor="end" fill="#555">'
            f"{_esc(_short(top))}</text>"
            f'<text x="{left - 4}" y="{upper + plot_h}" font-size="10" text-anchor="end" fill="#555">0</text>'
            f'<text x="{left}" y="{height - 4}" font-size="10" fill="#555">{_esc(_duration(x0))}</text>'
            f'<text x="{left + plot_w}" y="{height - 4}" font-size="10" text-anchor="end" fill="#555">'
            f"{_esc(_duration(x1))}</text>"
            f'<polyline fill="none" stroke="{color}" stroke-width="1.8" points="{points}"/></svg>'
        )
    return "".join(parts)


def _short(value: float) -> str:
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            return f"{value / limit:.1f}{suffix}"
    return f"{value:.0f}" if value >= 10 else f"{value:.2f}"


def job_html(job: Any) -> str:
    """The job as one self-contained HTML fragment (a snapshot)."""
    info = summary(job)
    status = info["status"]
    progress = info["progress"]
    color = _STATUS_COLORS.get(status, "#555")
    workers = job.options.workers
    lines = [
        _STYLE,
        '<div class="arrowflow-job">',
        f'<div class="af-head"><b>Job {_esc(job.name)!s}</b> '
        f'<span class="af-badge" style="background:{color}">{_esc(status)}</span> '
        f'<span class="af-muted">{_esc(_duration(job.elapsed_s))} · workers '
        f"{_esc('cores' if workers is None else workers)} · restarts {progress['restarts']}</span></div>",
    ]
    done, total = progress["splits_done"], progress["splits_total"]
    bar = ""
    if progress["unbounded"]:
        bar = f"following {total:,} splits ({done:,} done) · "
    elif total:
        share = min(1.0, done / total)
        bar = (
            f'<span class="af-bar"><div style="width:{share * 100:.1f}%"></div></span> '
            f"{done:,} of {total:,} splits · "
        )
    lines.append(
        f"<div>{bar}{progress['rows_in']:,} rows read · {_esc(_short(info['rate']))} rows/s</div>"
    )
    checkpoint = info["checkpoint"] if job.options.checkpoint_dir else None  # else commits only
    if checkpoint is not None:
        lines.append(
            f"<div>last checkpoint <b>{checkpoint['id']}</b> "
            f"{_esc(_duration(checkpoint['ago_s']))} ago, took {_esc(_duration(checkpoint['took_s']))}"
            f" · {len(progress['checkpoints'])} this attempt</div>"
        )
    elif job.options.checkpoint_dir:
        lines.append('<div class="af-muted">no checkpoint yet</div>')
    if job.error is not None:
        text = str(job.error).strip().splitlines()
        lines.append(
            f'<div class="af-error">{_esc(type(job.error).__name__)}: {_esc(text[0] if text else "")}</div>'
        )
    metrics = job.metrics()
    if metrics.height:
        lines.append(_metrics_table(metrics))
    lines.append(_chart(job.history()))
    if job.taps:
        results = ", ".join(
            f"<code>{_esc(stream)}</code> {job.control.results.count(sink):,} rows"
            for stream, (sink, _schema) in job.taps.items()
        )
        lines.append(f'<div class="af-muted">results so far (job.results(stream)): {results}</div>')
    lines.append("</div>")
    return "".join(lines)


def _metrics_table(metrics: pl.DataFrame) -> str:
    shown = [c for c in metrics.columns if c not in ("batches_in", "unconsumed")]
    head = "".join(
        f'<th class="{"af-l" if c in ("operator", "kind", "watermark") else ""}">{_esc(c)}</th>'
        for c in shown
    )
    body = []
    for row in metrics.select(shown).iter_rows(named=True):
        cells = []
        for column in shown:
            value = row[column]
            if column == "watermark":
                cells.append(
                    f'<td class="af-l">{_esc(value.strftime("%Y-%m-%d %H:%M:%S")) if value else NONE}</td>'
                )
            elif column == "lag_s":
                cells.append(f"<td>{_esc(_duration(value)) if value is not None else NONE}</td>")
            elif column in ("operator", "kind"):
                cells.append(f'<td class="af-l">{_esc(value)}</td>')
            else:
                cells.append(f"<td>{_number(value)}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


#: Columns of the text view's operator table (the first ones ``job.metrics()`` has).
TEXT_COLUMNS = (
    "operator",
    "kind",
    "rows_in",
    "rows_out",
    "malformed",
    "late",
    "lag_s",
    "watermark",
)


def job_text(job: Any) -> str:
    """The job as plain text (a snapshot): what the HTML view shows, for front ends that
    show text only (a terminal IPython, ``jupyter console``, a notebook exported as text)."""
    info = summary(job)
    progress = info["progress"]
    workers = job.options.workers
    lines = [
        f"Job {job.name!r}: {info['status']} · {_duration(job.elapsed_s)} · workers "
        f"{'default' if workers is None else workers} · restarts {progress['restarts']}"
    ]
    done, total = progress["splits_done"], progress["splits_total"]
    reading = (
        f"following {total:,} splits ({done:,} done)"
        if progress["unbounded"]
        else f"{done:,} of {total:,} splits"
    )
    lines.append(f"{reading} · {progress['rows_in']:,} rows read · {_short(info['rate'])} rows/s")
    checkpoint = info["checkpoint"] if job.options.checkpoint_dir else None  # else commits only
    if checkpoint is not None:
        lines.append(
            f"last checkpoint {checkpoint['id']} {_duration(checkpoint['ago_s'])} ago, took "
            f"{_duration(checkpoint['took_s'])} · {len(progress['checkpoints'])} this attempt"
        )
    elif job.options.checkpoint_dir:
        lines.append("no checkpoint yet")
    if job.error is not None:
        text = str(job.error).strip().splitlines()
        lines.append(f"{type(job.error).__name__}: {text[0] if text else ''}")
    metrics = job.metrics()
    if metrics.height:
        lines.extend(["", *_metrics_text(metrics)])
    return "\n".join(lines)


def _metrics_text(metrics: pl.DataFrame) -> list[str]:
    shown = [c for c in TEXT_COLUMNS if c in metrics.columns]
    rows = [list(shown)]
    for row in metrics.select(shown).iter_rows(named=True):
        cells = []
        for column in shown:
            value = row[column]
            if column == "watermark":
                cells.append(value.strftime("%Y-%m-%d %H:%M:%S") if value else NONE)
            elif column == "lag_s":
                cells.append(_duration(value) if value is not None else NONE)
            elif column in ("operator", "kind"):
                cells.append(str(value))
            else:
                cells.append(html.unescape(_number(value)))
        rows.append(cells)
    widths = [max(len(r[i]) for r in rows) for i in range(len(shown))]
    left = {"operator", "kind", "watermark"}
    return [
        "  ".join(
            cell.ljust(w) if column in left else cell.rjust(w)
            for cell, w, column in zip(r, widths, shown, strict=True)
        ).rstrip()
        for r in rows
    ]


def _bundle(job: Any) -> dict[str, str]:
    return {"text/plain": job_text(job), "text/html": job_html(job)}


def status_line(job: Any) -> str:
    """The job in one line, for terminals and logs."""
    info = summary(job)
    progress = info["progress"]
    parts = [
        f"{job.name}: {info['status']}",
        _duration(job.elapsed_s),
        f"{progress['rows_in']:,} rows",
        f"{_short(info['rate'])} rows/s",
    ]
    if progress["splits_total"] and not progress["unbounded"]:
        parts.append(f"splits {progress['splits_done']}/{progress['splits_total']}")
    metrics = job.metrics()
    if metrics.height and metrics.get_column("lag_s").drop_nulls().len():
        parts.append(f"lag {_duration(metrics.get_column('lag_s').drop_nulls().max())}")
    if info["checkpoint"] is not None:
        parts.append(f"checkpoint {info['checkpoint']['id']}")
    if progress["restarts"]:
        parts.append(f"restarts {progress['restarts']}")
    return " · ".join(parts)


def in_notebook() -> bool:
    """True inside a Jupyter kernel (not a plain IPython terminal)."""
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    try:
        ip = shell.get_ipython()
    except Exception:
        return False
    return ip is not None and "IPKernelApp" in getattr(ip, "config", {})


def display_live(job: Any, refresh_s: float = REFRESH_S) -> None:
    """Show the job and refresh it in place (display id) until the job ends: HTML, with its
    text form beside it for front ends that show text only."""
    from IPython.display import display

    handle = display(_bundle(job), raw=True, display_id=True)
    if handle is None or job.status != "running":
        return

    def refresh() -> None:
        while job.status == "running":
            time.sleep(refresh_s)
            try:
                handle.update(_bundle(job), raw=True)
            except Exception:
                return
        job._sampler.join(5.0)
        handle.update(_bundle(job), raw=True)

    threading.Thread(target=refresh, name=f"arrowflow-job-{job.name}-view", daemon=True).start()


def watch_terminal(job: Any, *, interval: float, file: Any = None) -> Any:
    stream = file or sys.stderr
    try:
        while job.status == "running":
            print(status_line(job), file=stream, flush=True)
            job._thread.join(interval)
    except KeyboardInterrupt:
        print(f"stopped watching; the job goes on ({job.status})", file=stream, flush=True)
        return None
    print(status_line(job), file=stream, flush=True)
    return job.wait()
