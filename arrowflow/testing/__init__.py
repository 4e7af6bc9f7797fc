"""Public test helpers for arrowflow users and for arrowflow's own suite.

- :func:`assert_frame_equal_unordered`: two DataFrames hold the same rows, in any order. A
  parallel run returns rows in no set order, so this is the check to compare a flow's
  output with polars computing the same thing.
- :func:`collect_all`: run several streams of one flow in a single run and return each
  one's rows (``stream.collect()`` runs one stream at a time).
- :class:`CollectingSink`: a sink that gathers its rows in the calling process, for
  ``stream.write_to(sink)`` next to other sinks in ``flow.run()``.
- :class:`CrashAfter`: a source that raises :class:`InjectedFault` once, after a number of
  rows, for fast recovery tests in this process (:mod:`arrowflow.testing.crash`).
- Conformance suites every plug-in runs: :mod:`arrowflow.testing.source_conformance`,
  :mod:`arrowflow.testing.sink_conformance`, :mod:`arrowflow.testing.state_conformance`.

>>> import polars as pl
>>> from arrowflow.testing import assert_frame_equal_unordered
>>> assert_frame_equal_unordered(pl.DataFrame({"a": [1, 2]}), pl.DataFrame({"a": [2, 1]}))
"""

from __future__ import annotations

from typing import Any

import polars as pl
from polars.testing import assert_frame_equal

from arrowflow._api.flow import Node, Stream
from arrowflow._api.job import run_plan
from arrowflow._plan import build_plan
from arrowflow.io.memory import CollectingSink as CollectingSink
from arrowflow.options import COLLECT_DEFAULTS, RunOptions, options_from
from arrowflow.testing.crash import CrashAfter, InjectedFault

__all__ = [
    "CollectingSink",
    "CrashAfter",
    "InjectedFault",
    "assert_frame_equal_unordered",
    "collect_all",
]

_SHOWN_ROWS = 10


def _sortable(frame: pl.DataFrame) -> list[str]:
    """Columns a frame can be sorted by (nested types cannot)."""
    return [
        name for name, dtype in frame.schema.items() if not dtype.is_nested() and dtype != pl.Object
    ]


def _canonical(frame: pl.DataFrame) -> pl.DataFrame:
    columns = _sortable(frame)
    if not columns or frame.height < 2:
        return frame
    return frame.sort(columns, nulls_last=True, maintain_order=True)


def _row_diff(left: pl.DataFrame, right: pl.DataFrame) -> str:
    """Rows (with their multiplicity) found on one side only, as text."""
    columns = _sortable(left)
    if not columns:
        return ""
    counted_left = left.group_by(columns).len("#left")
    counted_right = right.group_by(columns).len("#right")
    joined = counted_left.join(
        counted_right, on=columns, how="full", nulls_equal=True, coalesce=True
    ).with_columns(pl.col("#left", "#right").fill_null(0))
    lines = []
    for label, mask in (
        ("more often in left", pl.col("#left") > pl.col("#right")),
        ("more often in right", pl.col("#right") > pl.col("#left")),
    ):
        rows = joined.filter(mask)
        if rows.height:
            with pl.Config(tbl_rows=_SHOWN_ROWS, tbl_cols=-1, tbl_width_chars=200):
                lines.append(
                    f"{rows.height} distinct row(s) {label} (#left, #right: times seen):\n{rows.head(_SHOWN_ROWS)}"
                )
    return "\n".join(lines)


def assert_frame_equal_unordered(
    left: pl.DataFrame,
    right: pl.DataFrame,
    *,
    check_dtypes: bool = True,
    check_column_order: bool = True,
    check_exact: bool = False,
    rel_tol: float = 1e-9,
    abs_tol: float = 1e-9,
) -> None:
    """Assert that ``left`` and ``right`` hold the same rows, ignoring row order.

    Both frames are sorted by all their (non-nested) columns, then compared with
    :func:`polars.testing.assert_frame_equal`. Floats compare with tolerance unless
    ``check_exact`` (an aggregation summed in another order differs in the last bits); NaN
    equals NaN and nulls equal nulls. On failure the message lists the rows found on one
    side only, so a missing or duplicated key is visible at once.

    Float columns are part of the sort, so two rows that differ only by float rounding in a
    column that comes before the distinguishing columns may sort differently; keep keys
    (integers, strings) first, as every arrowflow aggregation output does.
    """
    if not isinstance(left, pl.DataFrame) or not isinstance(right, pl.DataFrame):
        msg = (
            f"expected two polars DataFrames, got {type(left).__name__} and {type(right).__name__}"
        )
        raise TypeError(msg)
    if check_column_order:
        if left.columns != right.columns:
            msg = f"columns differ:\n  left:  {left.columns}\n  right: {right.columns}"
            raise AssertionError(msg)
    elif sorted(left.columns) != sorted(right.columns):
        msg = f"column sets differ:\n  left:  {sorted(left.columns)}\n  right: {sorted(right.columns)}"
        raise AssertionError(msg)
    else:
        right = right.select(left.columns)
    if check_dtypes and left.schema != right.schema:
        diffs = [
            f"  {c}: {left.schema[c]} vs {right.schema[c]}"
            for c in left.columns
            if left.schema[c] != right.schema[c]
        ]
        msg = "column types differ (left vs right):\n" + "\n".join(diffs)
        raise AssertionError(msg)
    if left.height != right.height:
        comparable = right if left.schema == right.schema else right.cast(left.schema, strict=False)
        msg = f"row counts differ: left has {left.height} rows, right has {right.height}\n"
        raise AssertionError(msg + _row_diff(left, comparable))
    try:
        assert_frame_equal(
            _canonical(left),
            _canonical(right),
            check_dtypes=check_dtypes,
            check_exact=check_exact,
            rel_tol=rel_tol,
            abs_tol=abs_tol,
        )
    except AssertionError as exc:
        comparable = right if left.schema == right.schema else right.cast(left.schema, strict=False)
        has_floats = any(dtype.is_float() for dtype in left.schema.dtypes())
        diff = _row_diff(left, comparable) if check_exact or not has_floats else ""
        msg = f"frames differ (compared after sorting both by all columns): {exc}"
        if diff:
            msg += "\n" + diff
        raise AssertionError(msg) from None


def collect_all(
    *streams: Stream,
    workers: int | None = COLLECT_DEFAULTS.workers,
    state: Any = COLLECT_DEFAULTS.state,
    batch_size: int | None = COLLECT_DEFAULTS.batch_size,
    max_parallelism: int | None = None,
    options: RunOptions | None = None,
) -> list[pl.DataFrame]:
    """Run ``streams`` (of one flow) together in one run; return each one's rows, in order.

    Like ``stream.collect()`` for several streams at once, so that a branch (one stream
    consumed by several operators) runs as one plan. The flow itself is not changed: no
    sink is added to it.

    Parameters
    ----------
    *streams
        Streams of one flow.
    workers, state, batch_size, max_parallelism
        As in ``stream.collect()`` (default: in this process, memory state).
    options
        The run options as one :class:`arrowflow.RunOptions`, instead of the keywords.
    """
    chosen = options_from(
        "collect_all()",
        {
            "workers": workers,
            "state": state,
            "batch_size": batch_size,
            "max_parallelism": max_parallelism,
        },
        base=COLLECT_DEFAULTS,
        options=options,
    )
    if not streams:
        msg = "collect_all() needs at least one stream"
        raise TypeError(msg)
    if not all(isinstance(s, Stream) for s in streams) or any(
        s.flow is not streams[0].flow for s in streams
    ):
        msg = "collect_all() takes streams of one Flow"
        raise TypeError(msg)
    flow = streams[0].flow
    sinks = [CollectingSink() for _ in streams]
    nodes = [
        Node(flow.unused_id(f"{stream.id}.collect-{i}"), "sink", [stream.node], {"sink": sink})
        for i, (stream, sink) in enumerate(zip(streams, sinks, strict=True))
    ]
    plan = build_plan(flow, nodes, max_parallelism=chosen.max_parallelism)
    # The plan holds its own (pickled or not) copies of the sinks: read the rows from those.
    run_plan(plan, chosen.replace(progress=False))
    return [
        plan.op(node.id).params["sink"].to_polars(stream.schema)
        for node, stream in zip(nodes, streams, strict=True)
    ]
