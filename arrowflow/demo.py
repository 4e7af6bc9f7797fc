"""``arrowflow demo``: a real job on a generated clickstream, from nothing to Parquet.

What it does, in order:

1. generates a day of clickstream events (the data set of ``docs/benchmarks.md``: ``ts``,
   ``user_id`` over 100,000 users, ``event_type``, ``amount``) into a working folder —
   web events as Parquet files, a slice of mobile events as NDJSON with a few broken lines
   in it, as real uploads have. A folder generated before with the same row count is reused;
2. runs one flow over both: union, filter to the shopping events, derive columns, a keyed
   running aggregation per user, written as Parquet; the NDJSON rows that cannot be parsed
   go to their own output through the ``malformed`` side output;
3. prints what happened (rows in and out, time, throughput, per operator), where the output
   is, and a peek at it with polars.

:func:`clickstream` is the one generator of the events data set; ``benchmarks/data.py``
writes its files from it.

>>> events = clickstream(1_000)
>>> events.columns, events.height
(['ts', 'user_id', 'event_type', 'amount'], 1000)
>>> clickstream(1_000).equals(events)  # deterministic for a given seed and row count
True
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

import arrowflow as af
from arrowflow._api.summary import format_summary, restarts_line
from arrowflow._runtime.checkpoints import CheckpointStorage

EVENT_TYPES = (
    "view",
    "click",
    "add_to_cart",
    "purchase",
    "remove_from_cart",
    "search",
    "login",
    "logout",
)
EVENT_WEIGHTS = (0.50, 0.20, 0.10, 0.05, 0.05, 0.05, 0.03, 0.02)
USERS = 100_000
DAY_MS = 86_400_000
START = np.datetime64("2024-01-01T00:00:00", "ms")
SCHEMA = pl.Schema(
    {
        "ts": pl.Datetime("ms"),
        "user_id": pl.Int64(),
        "event_type": pl.String(),
        "amount": pl.Float64(),
    }
)

DEFAULT_ROWS = 3_000_000
ROWS_PER_FILE = 1_000_000
ROW_GROUP = 250_000
MAX_MOBILE_ROWS = 50_000
# Broken lines as they turn up in real uploads: a cut-off write, a wrong type, a stray array,
# a log line in the wrong file, a field that is not a number.
BROKEN_LINES = (
    '{"ts": "2024-01-01T09:14:02.118", "user_id": 4711, "event_type": "purch',
    '{"ts": "2024-01-01T11:02:45.001", "user_id": "guest", "event_type": "view", "amount": 0.0}',
    '[4711, "purchase", 19.99]',
    "2024-01-01 12:00:00 WARN upload retried",
    '{"ts": "2024-01-01T17:30:00.000", "user_id": 808, "event_type": "purchase", "amount": "n/a"}',
)
MARKER = "_arrowflow_demo.json"


def clickstream(rows: int, *, seed: int = 42) -> pl.DataFrame:
    """``rows`` events over one day, generated deterministically (see ``docs/benchmarks.md``).

    - ``ts``: 2024-01-01 + ``floor(i * day / rows)`` ms + uniform [0, 5000) ms jitter:
      mostly increasing, out of order by under 5 s;
    - ``user_id``: int64, uniform over 100,000 users;
    - ``event_type``: view 50%, click 20%, add_to_cart 10%, purchase 5%, remove_from_cart 5%,
      search 5%, login 3%, logout 2%;
    - ``amount``: float64, exponential with mean 30, rounded to cents.
    """
    if rows < 0:
        msg = f"rows must be zero or more, got {rows}"
        raise ValueError(msg)
    rng = np.random.default_rng(seed)
    index = np.arange(rows, dtype=np.int64)
    ts = START.astype(np.int64) + index * DAY_MS // max(rows, 1) + rng.integers(0, 5000, rows)
    user_id = rng.integers(0, USERS, rows, dtype=np.int64)
    codes = rng.choice(len(EVENT_TYPES), size=rows, p=EVENT_WEIGHTS)
    amount = np.round(rng.exponential(30.0, rows), 2)
    return pl.DataFrame(
        {
            "ts": pl.Series(ts, dtype=pl.Int64).cast(pl.Datetime("ms")),
            "user_id": user_id,
            "event_type": pl.Series(EVENT_TYPES, dtype=pl.String).gather(codes),
            "amount": amount,
        }
    )


@dataclass
class DemoData:
    """Where the generated input is, and what it holds."""

    root: Path
    web_files: int
    web_rows: int
    mobile_rows: int
    broken_lines: int
    generated_s: float  # 0.0 when an earlier run's files were reused

    @property
    def web(self) -> Path:
        return self.root / "data" / "web"

    @property
    def mobile(self) -> Path:
        return self.root / "data" / "mobile"

    @property
    def out(self) -> Path:
        return self.root / "out"


def generate(root: str | os.PathLike[str], rows: int = DEFAULT_ROWS, *, seed: int = 42) -> DemoData:
    """Write the demo's input under ``root/data`` (reused when already there for ``rows``).

    One event in ``step`` comes from the mobile app as NDJSON (at most 50,000 lines, with the
    :data:`BROKEN_LINES` spread through it); the rest are web events in Parquet files of up to
    a million rows.
    """
    root = Path(root)
    if rows < 1:
        msg = f"the demo needs at least one row, got --rows {rows}"
        raise af.ArrowflowError(msg)
    step = max(20, math.ceil(rows / MAX_MOBILE_ROWS))
    marker = root / "data" / MARKER
    wanted = {"rows": rows, "seed": seed, "step": step, "version": 1}
    if marker.exists():
        try:
            found = json.loads(marker.read_text())
        except ValueError:
            found = {}
        if {k: found.get(k) for k in wanted} == wanted:
            return DemoData(
                root,
                found["web_files"],
                found["web_rows"],
                found["mobile_rows"],
                len(BROKEN_LINES),
                0.0,
            )

    started = time.perf_counter()
    shutil.rmtree(root / "data", ignore_errors=True)
    events = clickstream(rows, seed=seed).with_row_index("_i")
    from_mobile = pl.col("_i") % step == step // 2
    web = events.filter(~from_mobile).drop("_i")
    mobile = events.filter(from_mobile).drop("_i")

    data = DemoData(root, 0, web.height, mobile.height, len(BROKEN_LINES), 0.0)
    data.web.mkdir(parents=True)
    data.mobile.mkdir(parents=True)
    for number, part in enumerate(web.iter_slices(ROWS_PER_FILE)):
        part.write_parquet(data.web / f"events-{number:03d}.parquet", row_group_size=ROW_GROUP)
        data.web_files += 1

    lines = (
        mobile.with_columns(pl.col("ts").dt.strftime("%Y-%m-%dT%H:%M:%S%.3f"))
        .write_ndjson()
        .splitlines()
    )
    every = max(1, len(lines) // len(BROKEN_LINES))
    for number, broken in enumerate(BROKEN_LINES):
        lines.insert(min(len(lines), number * every + every // 2 + number), broken)
    (data.mobile / "uploads.ndjson").write_text("\n".join(lines) + "\n")

    data.generated_s = time.perf_counter() - started
    marker.write_text(
        json.dumps(
            {
                **wanted,
                "web_files": data.web_files,
                "web_rows": data.web_rows,
                "mobile_rows": data.mobile_rows,
            }
        )
    )
    return data


def build_flow(data: DemoData) -> af.Flow:
    """The demo job: per-user shopping totals over web and mobile events.

    Outputs ``out/per_user`` (Parquet, one row per user who put something in a cart or
    bought), ``out/per_10_minutes`` (Parquet: event counts and amounts per event type and
    10-minute event-time window), ``out/late`` (NDJSON: events that came behind the watermark,
    with the window they missed) and ``out/malformed`` (NDJSON: the lines of the mobile upload that could not be
    parsed, with the file, byte offset, line number and reason).
    """
    flow = af.Flow("clickstream-demo")
    web = flow.read_parquet(str(data.web / "*.parquet"), name="web_events")
    mobile = flow.read_ndjson(str(data.mobile / "*.ndjson"), schema=SCHEMA, name="mobile_events")
    mobile.side_output("malformed").write_ndjson(str(data.out / "malformed"), name="malformed_rows")

    events = web.union(mobile, name="all_events")
    # Event time: 10-minute windows per event type; each file's watermark trails its newest
    # event by 5 s, and events behind their own file's watermark go to ``late`` (the mobile
    # upload covers the same hours as the web files without being late: watermarks are per
    # split, and a window fires only when every file has passed it).
    per_10_minutes = (
        events.with_watermark("ts", delay="5s", name="event_time")
        .key_by("event_type")
        .window(af.tumbling("10m"))
        .agg(events=pl.len(), amount=pl.col("amount").sum(), name="per_10_minutes")
    )
    per_10_minutes.write_parquet(str(data.out / "per_10_minutes"), name="per_10_minutes_out")
    per_10_minutes.side_output("late").write_ndjson(str(data.out / "late"), name="late_events")
    shopping = events.filter(
        pl.col("event_type").is_in(["add_to_cart", "purchase"]), name="shopping_only"
    ).with_columns(
        bought=pl.col("event_type") == "purchase",
        revenue_eur=pl.when(pl.col("event_type") == "purchase")
        .then(pl.col("amount") * 0.92)
        .otherwise(0.0),
        name="enrich",
    )
    per_user = shopping.key_by("user_id").agg(
        cart_adds=(~pl.col("bought")).sum(),
        purchases=pl.col("bought").sum(),
        revenue_eur=pl.col("revenue_eur").sum(),
        first_seen=pl.col("ts").min(),
        last_seen=pl.col("ts").max(),
        name="per_user_totals",
    )
    per_user.write_parquet(str(data.out / "per_user"), name="per_user")
    return flow


def late_line(folder: Path) -> str:
    """Why the demo's events are late (or not), and where late ones go."""
    files = sorted(folder.glob("*.ndjson"))
    late = pl.scan_ndjson(files).select(pl.len()).collect().item() if files else 0
    why = (
        "the generated events are out of order by under 5 s and the watermark waits 5 s "
        "(with_watermark(delay='5s')), so no event is late"
        if late == 0
        else f"{late:,} events came more than 5 s behind the newest event of their own file"
    )
    return (
        f"late events: {late:,} in {folder}: {why}; an event behind the watermark (its "
        f"10-minute window already fired) is written there with the window it missed, never dropped"
    )


def run_demo(
    root: str | os.PathLike[str] = "arrowflow-demo",
    rows: int = DEFAULT_ROWS,
    *,
    workers: int | None = None,
    say: Callable[[str], None] = print,
) -> af.RunResult:
    """Generate (or reuse) the data, run the demo flow, and ``say`` what happened."""
    root = Path(root)
    say(f"arrowflow demo: {rows:,} clickstream events in {root}/data")
    data = generate(root, rows)
    if data.generated_s:
        say(
            f"  generated {data.web_rows:,} web events in {data.web_files} Parquet files and "
            f"{data.mobile_rows:,} mobile events as NDJSON (+{data.broken_lines} broken lines) "
            f"in {data.generated_s:.1f} s"
        )
    else:
        say("  reusing the data generated by an earlier run")
    flow = build_flow(data)
    say("")
    say(
        "the flow: web Parquet + mobile NDJSON -> keep add_to_cart/purchase -> revenue in EUR -> "
        "totals per user -> Parquet;\n          10-minute event-time windows per event type -> Parquet, events "
        "behind the watermark -> 'late';\n          unparseable NDJSON lines -> their own output"
    )
    say("")
    # The embedded defaults a user would deploy: state in LMDB on local disk, checkpoints in a
    # local folder. Each run of the demo starts fresh.
    checkpoints = root / "checkpoints"
    shutil.rmtree(checkpoints, ignore_errors=True)
    options: dict[str, Any] = {
        "state": "lmdb",
        "checkpoint_dir": str(checkpoints),
        "checkpoint_every": "1s",
        "restore": None,
    }
    if workers is not None:
        options["workers"] = workers
    result = flow.run(**options)
    say(format_summary(flow, result, restarts=False))  # said on the last line instead
    say(late_line(data.out / "late"))
    say("")
    listing = CheckpointStorage(str(checkpoints)).list()
    say(
        f"checkpoints: {len(result.checkpoints)} taken ({', '.join(map(str, result.checkpoints))}), state in LMDB; "
        f"kept in {checkpoints}:"
    )
    with pl.Config(
        tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True, tbl_width_chars=120
    ):
        say(str(listing.select("id", "time", "size_bytes", "state_files", "final")))
    say(
        "  a job killed mid-run resumes from its newest complete checkpoint, losing and repeating "
        "nothing; for a job file of your own (the demo's flow is build_flow in arrowflow/demo.py):"
    )
    say(
        f"  arrowflow run job.py --state lmdb --checkpoint-dir {checkpoints} --checkpoint-every 1s "
        f"--restore latest"
    )
    say(f"  arrowflow checkpoints list {checkpoints}")
    say(
        f'  arrowflow state query {checkpoints} "SELECT * FROM per_user_totals ORDER BY revenue_eur DESC LIMIT 3"'
    )

    # A running aggregation emits, at each checkpoint, the users updated since the previous
    # one: the newest row per user (part files are named in checkpoint order) is the total.
    files = sorted((data.out / "per_user").glob("*.parquet"))
    per_user = (
        pl.concat([pl.read_parquet(f) for f in files])
        .with_row_index("_emitted")
        .group_by("user_id")
        .last()
        .drop("_emitted")
    )
    say("")
    say(f"top users by revenue ({per_user.height:,} users in {data.out / 'per_user'}):")
    with pl.Config(
        tbl_rows=5,
        tbl_hide_dataframe_shape=True,
        tbl_hide_column_data_types=True,
        float_precision=2,
        tbl_width_chars=120,
    ):
        say(str(per_user.sort("revenue_eur", "user_id", descending=[True, False]).head(5)))
        malformed_files = sorted((data.out / "malformed").glob("*.ndjson"))
        if malformed_files:
            malformed = pl.read_ndjson(malformed_files)
            say("")
            say(f"malformed rows set aside ({malformed.height} in {data.out / 'malformed'}):")
            with pl.Config(fmt_str_lengths=60):
                say(str(malformed.select("line", "reason").sort("line")))
    say("")
    say("read the result with polars:")
    say(
        f"  pl.read_parquet({str(data.out / 'per_user' / '*.parquet')!r})  "
        f"# one row per user and checkpoint that updated it; the newest is the total"
    )
    say("")
    say(restarts_line(result))
    return result
