"""Keyed process functions (``key_by(...).process(fn, states=[...])``) against polars and a model.

Three layers:

- the flow: de-duplication by id, per-user running and session counters, list and map
  state, TTLs in event time, side outputs, on every state backend and executor, each checked
  against polars (or a plain-Python replay for what depends on batch boundaries: the input is
  one split read in bursts of ``BURST`` rows, so every batch is one burst);
- the state handles alone, on every backend: value, list and map semantics, TTL expiry and
  cleanup, and a random sequence of operations against a Python model;
- wrong use, refused when the flow is built.
"""

from __future__ import annotations

import datetime as dt
import random
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

import arrowflow as af
from arrowflow._process.context import ProcessContext, ProcessFunction
from arrowflow.errors import PlanError, SchemaError, StateError, WorkerError
from arrowflow.state import StoreContext, resolve_backend
from arrowflow.testing import CollectingSink, assert_frame_equal_unordered, collect_all

BACKENDS = ["memory", "arrow", "lmdb", "sql"]
BURST = 40
HOUR = dt.timedelta(hours=1)
GAP = dt.timedelta(minutes=30)


def _events(bursts: int = 16, seed: int = 3) -> tuple[pl.DataFrame, list[dt.datetime]]:
    """Bursts of BURST events, each within one minute; bursts 25 min or 3 h apart, so a time
    difference between two bursts is never within minutes of the 1 h TTL or the 30 min gap."""
    rng = np.random.default_rng(seed)
    starts = [
        dt.datetime(2024, 5, 1) + dt.timedelta(minutes=int(m))
        for m in np.cumsum(rng.choice([25, 180], bursts, p=[0.7, 0.3]))
    ]
    n = bursts * BURST
    ts = [
        start + dt.timedelta(seconds=int(s))
        for start in starts
        for s in np.sort(rng.integers(0, 60, BURST))
    ]
    user = rng.choice(["ann", "bob", "cy", "dée", "eve", "fay", "gus"], n).tolist()
    user = [None if r < 0.04 else u for u, r in zip(user, rng.random(n), strict=True)]
    return pl.DataFrame(
        {
            "seq": pl.Series(np.arange(n), dtype=pl.Int64),  # unique: outputs sort by it
            "event_id": pl.Series(rng.integers(0, 150, n), dtype=pl.Int64),
            "user": pl.Series(user, dtype=pl.String),
            "ts": pl.Series(ts, dtype=pl.Datetime("ms")),
            "category": pl.Series(rng.choice(["a", "b", "c"], n).tolist()),
            "amount": pl.Series(rng.integers(1, 100, n), dtype=pl.Int64),
        }
    ), starts


EVENTS, STARTS = _events()


# ---------------------------------------------------------------------------- process functions


def dedupe(batch: pl.DataFrame, ctx: af.ProcessContext) -> pl.DataFrame:
    first = batch.with_row_index("_row").unique("event_id", keep="first", maintain_order=True)
    fresh = first.filter(ctx.state("seen").get(first).is_null())
    ctx.state("seen").put(fresh, True)
    ctx.emit(
        "duplicates",
        batch.filter(~pl.int_range(pl.len(), dtype=pl.UInt32).is_in(fresh["_row"].implode())),
    )
    return fresh.drop("_row")


def running_count(batch: pl.DataFrame, ctx: af.ProcessContext) -> pl.DataFrame:
    before = ctx.state("count").get(batch).fill_null(0)
    out = batch.select("seq", "user", n=before + pl.int_range(1, pl.len() + 1).over("user"))
    ctx.state("count").put(out, pl.col("n"))
    return out


def sessions(batch: pl.DataFrame, ctx: af.ProcessContext) -> pl.DataFrame:
    """Session number and position in the session of each event; a session ends after a
    30 min gap. State: the user's last event time, session number and count in the session."""
    state = ctx.state("session")
    prev = state.get(batch)
    b = batch.with_columns(prev_last=prev["last"], prev_session=prev["session"], prev_n=prev["n"])
    b = b.with_columns(before=pl.col("ts").shift(1).over("user").fill_null(pl.col("prev_last")))
    b = b.with_columns(new=pl.col("before").is_null() | (pl.col("ts") - pl.col("before") > GAP))
    b = b.with_columns(
        session=pl.col("prev_session").fill_null(0)
        + pl.col("new").cast(pl.Int64).cum_sum().over("user")
    )
    b = b.with_columns(
        n=pl.int_range(1, pl.len() + 1).over("user", "session")
        + pl.when(pl.col("session") == pl.col("prev_session")).then(pl.col("prev_n")).otherwise(0)
    )
    state.put(b, [pl.col("ts").alias("last"), pl.col("session"), pl.col("n")])
    return b.select("seq", "user", "session", "n")


def recent_amounts(batch: pl.DataFrame, ctx: af.ProcessContext) -> pl.DataFrame:
    """The user's amounts of the last hour (event time) before this batch; then add this batch's."""
    recent = ctx.state("recent")
    out = batch.select("seq", "user", recent=recent.get(batch))
    recent.append(batch, pl.col("amount"))
    return out


def last_three(batch: pl.DataFrame, ctx: af.ProcessContext) -> pl.DataFrame:
    """The user's last three (category, amount) before this batch; keeps three per user."""
    state = ctx.state("last3")
    out = batch.select("seq", "user", last3=state.get(batch))
    state.append(batch, batch.select("category", "amount"))
    users = batch.select("user").unique()
    state.put(users, state.get(users).list.tail(3))
    return out


def per_category(batch: pl.DataFrame, ctx: af.ProcessContext) -> pl.DataFrame:
    counts = ctx.state("counts")
    before = counts.get(batch).fill_null(0)
    out = batch.select(
        "seq",
        "user",
        "category",
        count=before + pl.int_range(1, pl.len() + 1).over("user", "category"),
    )
    counts.put(out, pl.col("count"))
    ctx.emit("entries", counts.items(batch))
    return out


def _flow_streams(flow: af.Flow) -> list[af.Stream]:
    src = flow.from_polars(EVENTS, splits=1)
    dup_states = [af.ValueState("seen", pl.Boolean)]
    unique = src.key_by("event_id").process(
        dedupe, states=dup_states, side_outputs={"duplicates": None}
    )
    unique_ttl = src.key_by("event_id").process(
        dedupe,
        states=[af.ValueState("seen", pl.Boolean, ttl="1h")],
        side_outputs={"duplicates": None},
        event_time="ts",
        name="dedupe_ttl",
    )
    counted = src.key_by("user").process(running_count, states=[af.ValueState("count", pl.Int64)])
    sessioned = src.key_by("user").process(
        sessions,
        states=[
            af.ValueState(
                "session", {"last": pl.Datetime("ms"), "session": pl.Int64, "n": pl.Int64}
            )
        ],
    )
    recent = src.key_by("user").process(
        recent_amounts, states=[af.ListState("recent", pl.Int64, ttl="1h")], event_time="ts"
    )
    last3 = src.key_by("user").process(
        last_three, states=[af.ListState("last3", {"category": pl.String, "amount": pl.Int64})]
    )
    categories = src.key_by("user").process(
        per_category,
        states=[af.MapState("counts", key={"category": pl.String}, value=pl.Int64)],
        side_outputs={"entries": {"user": pl.String, "category": pl.String, "counts": pl.Int64}},
    )
    return [
        unique,
        unique.side_output("duplicates"),
        unique_ttl,
        counted,
        sessioned,
        recent,
        last3,
        categories,
        categories.side_output("entries"),
    ]


def _replay_bursts() -> dict[str, pl.DataFrame]:
    """What depends on batch boundaries, replayed burst by burst in plain Python."""
    ttl_rows, recent_rows, last3_rows = [], [], []
    fresh_at: dict[int, int] = {}
    appended: dict[str | None, list[tuple[int, int]]] = {}
    history: dict[str | None, list[dict[str, Any]]] = {}
    for b, start in enumerate(STARTS):
        burst = EVENTS.slice(b * BURST, BURST)
        for row in burst.unique("event_id", keep="first", maintain_order=True).iter_rows(
            named=True
        ):
            seen = fresh_at.get(row["event_id"])
            if seen is None or start - STARTS[seen] >= HOUR:
                ttl_rows.append(row)
                fresh_at[row["event_id"]] = b
        for row in burst.iter_rows(named=True):
            alive = [
                amount
                for when, amount in appended.get(row["user"], [])
                if start - STARTS[when] < HOUR
            ]
            recent_rows.append({"seq": row["seq"], "user": row["user"], "recent": alive})
            last3_rows.append(
                {
                    "seq": row["seq"],
                    "user": row["user"],
                    "last3": list(history.get(row["user"], [])),
                }
            )
        for row in burst.iter_rows(named=True):
            appended.setdefault(row["user"], []).append((b, row["amount"]))
            history.setdefault(row["user"], []).append(
                {"category": row["category"], "amount": row["amount"]}
            )
        for user in history:
            history[user] = history[user][-3:]
    return {
        "dedupe_ttl": pl.DataFrame(ttl_rows, schema=EVENTS.schema),
        "recent": pl.DataFrame(
            recent_rows, schema={"seq": pl.Int64, "user": pl.String, "recent": pl.List(pl.Int64)}
        ),
        "last3": pl.DataFrame(
            last3_rows,
            schema={
                "seq": pl.Int64,
                "user": pl.String,
                "last3": pl.List(pl.Struct({"category": pl.String, "amount": pl.Int64})),
            },
        ),
    }


REPLAYED = _replay_bursts()


def _check(name: str, got: pl.DataFrame, expected: pl.DataFrame, **kwargs: Any) -> None:
    try:
        assert_frame_equal_unordered(got, expected, **kwargs)
    except AssertionError as exc:
        raise AssertionError(f"{name}: {exc}") from None


@pytest.mark.parametrize("state", BACKENDS)
def test_process_functions_match_polars(state: str, workers: int, tmp_path: Path) -> None:
    streams = _flow_streams(af.Flow("process"))
    (unique, duplicates, unique_ttl, counted, sessioned, recent, last3, categories, entries) = (
        collect_all(*streams, workers=workers, state=state, batch_size=BURST)
    )

    first = EVENTS.filter(pl.col("event_id").is_first_distinct())
    _check("dedupe", unique, first)
    _check(
        "duplicates side output", duplicates, EVENTS.filter(~pl.col("event_id").is_first_distinct())
    )
    _check("dedupe with ttl", unique_ttl, REPLAYED["dedupe_ttl"])
    assert unique_ttl.height > unique.height, (
        "the TTL never let an id through again: the test proves nothing"
    )
    _check(
        "running count",
        counted,
        EVENTS.select("seq", "user", n=pl.int_range(1, pl.len() + 1, dtype=pl.Int64).over("user")),
    )
    new = pl.col("ts").diff().over("user").fill_null(GAP + dt.timedelta(seconds=1)) > GAP
    expected_sessions = EVENTS.with_columns(
        session=new.cast(pl.Int64).cum_sum().over("user")
    ).select(
        "seq",
        "user",
        "session",
        n=pl.int_range(1, pl.len() + 1, dtype=pl.Int64).over("user", "session"),
    )
    _check("sessions", sessioned, expected_sessions)
    assert sessioned["session"].max() > 2
    _check("recent (list state with ttl)", recent, REPLAYED["recent"])
    assert recent["recent"].list.len().max() > 0 and (recent["recent"].list.len() == 0).sum() > 7
    _check("last three (list of struct)", last3, REPLAYED["last3"])
    _check(
        "per category (map state)",
        categories,
        EVENTS.select(
            "seq",
            "user",
            "category",
            count=pl.int_range(1, pl.len() + 1, dtype=pl.Int64).over("user", "category"),
        ),
    )
    # items() after each batch: the last seen count of every (user, category) is its total.
    final = entries.group_by("user", "category").agg(pl.col("counts").max())
    _check(
        "map items",
        final,
        EVENTS.group_by("user", "category").agg(counts=pl.len().cast(pl.Int64)),
        check_column_order=False,
    )


# ---------------------------------------------------------------------------- the handles alone

KEYS = pl.Schema({"user": pl.String})


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Any:
    return resolve_backend(request.param)


@contextmanager
def open_states(
    backend: Any,
    tmp_path: Path,
    *states: Any,
    key_range: range = range(128),
    input_schema: pl.Schema = KEYS,
    keys: pl.Schema = KEYS,
) -> Iterator[ProcessContext]:
    function = ProcessFunction.build(
        lambda batch, ctx: batch,
        keys=list(keys.names()),
        states=list(states),
        schema=None,
        side_outputs=None,
        event_time=None,
        operator_id="op",
    )
    function = function.bind(input_schema, input_schema, 128)
    context = StoreContext(str(tmp_path), 0, 1)
    stores = {}
    for decl in states:
        spec = decl.store_spec("op", keys, 128)
        stores[spec.name] = backend.open_store(spec, key_range, context)
    try:
        yield ProcessContext(function, keys, stores, key_range=key_range)
    finally:
        for store in stores.values():
            store.close()


def users(*names: str | None) -> pl.DataFrame:
    return pl.DataFrame({"user": list(names)}, schema=KEYS)


def test_value_state(backend: Any, tmp_path: Path) -> None:
    with open_states(
        backend,
        tmp_path,
        af.ValueState("n", pl.Int64),
        af.ValueState("pair", {"x": pl.Float64, "label": pl.String}),
    ) as ctx:
        n = ctx.state("n")
        assert n.get(users("a", None)).to_list() == [None, None]
        n.put(
            users("a", "b", "a", None), pl.Series([1, 2, 3, 4])
        )  # several rows of "a": the last wins
        assert n.get(users("b", "a", "zz", None, "a")).to_list() == [2, 3, None, 4, 3]
        assert n.get(users("a")).name == "n"
        n.put(users("b").with_columns(v=pl.lit(9)), pl.col("v") * 2)  # an expression over the frame
        n.put(users("c"), 7)  # a scalar for every row
        n.put(users("d"), pl.DataFrame({"anything": [None]}, schema={"anything": pl.Int32}))
        assert n.get(users("a", "b", "c", "d")).to_list() == [3, 18, 7, None]
        assert n.contains(users("a", "d", "e")).to_list() == [
            True,
            True,
            False,
        ]  # a stored null is there
        n.clear(users("a", "a", "e"))
        assert n.get(users("a", "b")).to_list() == [None, 18]
        pair = ctx.state("pair")
        pair.put(users("a", "b"), pl.DataFrame({"label": ["p", None], "x": [1.5, 2.0]}))
        got = pair.get(users("b", "a", "c"))
        assert got.columns == ["x", "label"] and got.rows() == [
            (2.0, None),
            (1.5, "p"),
            (None, None),
        ]


def test_value_state_ttl_expires_and_cleans_up(backend: Any, tmp_path: Path) -> None:
    with open_states(backend, tmp_path, af.ValueState("n", pl.Int64, ttl="1h")) as ctx:
        n = ctx.state("n")
        ctx.now_ms = 1_000_000
        n.put(users("a", "b", "c"), pl.Series([1, 2, 3]))
        ctx.now_ms += 30 * 60_000
        n.put(users("b"), 20)  # written again: lives an hour from now
        ctx.now_ms += 30 * 60_000 - 1
        assert n.get(users("a", "b", "c")).to_list() == [1, 20, 3]
        ctx.now_ms += 1  # exactly one hour after the first write
        assert n.get(users("a", "b")).to_list() == [None, 20]
        assert n.contains(users("a", "c")).to_list() == [False, False]
        assert n.store.count() == 1, "expired keys that were read are deleted"
        n.put(users("x"), 5)
        ctx.now_ms += 2 * 3_600_000
        ctx._sweep()
        assert n.store.count() == 0, "the sweep deletes expired keys that nobody reads"


def test_list_state(backend: Any, tmp_path: Path) -> None:
    items = pl.Schema({"sku": pl.String, "qty": pl.Int32, "day": pl.Date, "ok": pl.Boolean})
    with open_states(
        backend, tmp_path, af.ListState("xs", pl.Float64), af.ListState("items", items)
    ) as ctx:
        xs = ctx.state("xs")
        assert xs.get(users("a", None)).to_list() == [[], []]
        xs.append(users("a", "b", "a", None), pl.Series([1.0, 2.0, None, 4.0]))
        xs.append(users("a"), 5.5)
        assert xs.get(users("b", "a", "c", None)).to_list() == [[2.0], [1.0, None, 5.5], [], [4.0]]
        assert xs.get(users("a")).dtype == pl.List(pl.Float64)
        xs.put(users("a", "b", "c"), pl.Series([[9.0], [], [7.0, 8.0]]))  # replace; [] empties
        assert xs.get(users("a", "b", "c")).to_list() == [[9.0], [], [7.0, 8.0]]
        assert xs.store.count() == 3  # "a", "c" and None; "b" was emptied
        xs.put(users("c"), pl.Series([None], dtype=pl.List(pl.Float64)))  # null also empties
        xs.clear(users("a", None))
        assert xs.store.count() == 0
        rows = pl.DataFrame(
            {
                "user": ["a", "b", "a"],
                "sku": ["x", "ÿ", None],
                "qty": [1, None, 3],
                "day": [dt.date(2024, 1, 1), None, dt.date(2024, 1, 3)],
                "ok": [True, False, None],
            }
        )
        lists = ctx.state("items")
        lists.append(rows, rows.select(items.names()))
        got = lists.get(users("a", "b"))
        assert got.dtype == pl.List(pl.Struct(items))
        assert got.to_list() == [
            [
                {"sku": "x", "qty": 1, "day": dt.date(2024, 1, 1), "ok": True},
                {"sku": None, "qty": 3, "day": dt.date(2024, 1, 3), "ok": None},
            ],
            [{"sku": "ÿ", "qty": None, "day": None, "ok": False}],
        ]


def test_list_state_ttl_per_element(backend: Any, tmp_path: Path) -> None:
    with open_states(backend, tmp_path, af.ListState("xs", pl.Int64, ttl="10m")) as ctx:
        xs = ctx.state("xs")
        for minute, value in [(0, 1), (4, 2), (8, 3)]:
            ctx.now_ms = minute * 60_000
            xs.append(users("a", "b"), pl.Series([value, value * 10]))
        ctx.now_ms = 10 * 60_000
        assert xs.get(users("a", "b")).to_list() == [[2, 3], [20, 30]]
        ctx.now_ms = 17 * 60_000
        assert xs.get(users("a")).to_list() == [[3]]
        ctx.now_ms = 30 * 60_000
        assert xs.get(users("a")).to_list() == [[]]
        assert xs.store.count() == 1, "a list whose elements all expired is deleted when read"
        ctx._sweep()
        assert xs.store.count() == 0


def test_map_state(backend: Any, tmp_path: Path) -> None:
    with open_states(
        backend,
        tmp_path,
        af.MapState("views", key={"page": pl.String, "v": pl.Int8}, value=pl.Int64),
        af.MapState(
            "money", key={"currency": pl.String}, value={"amount": pl.Float64, "n": pl.Int64}
        ),
    ) as ctx:
        views = ctx.state("views")
        rows = pl.DataFrame(
            {
                "user": ["a", "a", "b", None, "a"],
                "page": ["/", "/x", "/", "/", "/"],
                "v": [1, 1, 1, None, 1],
                "count": [1, 2, 3, 4, 5],
            },
            schema_overrides={"v": pl.Int8},
        )
        views.put(rows, pl.col("count"))  # ("a", "/", 1) twice: the last wins
        assert views.get(rows).to_list() == [5, 2, 3, 4, 5]
        assert (
            views.contains(rows.with_columns(v=pl.lit(2, dtype=pl.Int8))).to_list() == [False] * 5
        )
        assert views.items(users("a", "zz", None, "a")).rows() == [
            ("a", "/", 1, 5),
            ("a", "/x", 1, 2),
            (None, "/", None, 4),
        ]
        # Updating keeps an entry's place; a new one goes last.
        views.put(
            pl.DataFrame(
                {"user": ["a", "a"], "page": ["/new", "/"], "v": [1, 1]},
                schema_overrides={"v": pl.Int8},
            ),
            pl.Series([7, 50]),
        )
        assert views.items(users("a")).select("page", "views").rows() == [
            ("/", 50),
            ("/x", 2),
            ("/new", 7),
        ]
        views.remove(
            pl.DataFrame(
                {"user": ["a", "b", "b"], "page": ["/x", "/", "/nope"], "v": [1, 1, 1]},
                schema_overrides={"v": pl.Int8},
            )
        )
        assert views.items(users("a", "b")).select("user", "page").rows() == [
            ("a", "/"),
            ("a", "/new"),
        ]
        assert views.store.count() == 2, "a map emptied by remove() is deleted"
        views.clear(users("a"))
        assert views.items(users("a", None)).rows() == [(None, "/", None, 4)]
        money = ctx.state("money")
        money.put(
            pl.DataFrame({"user": ["a"], "currency": ["EUR"]}),
            pl.DataFrame({"n": [2], "amount": [1.5]}),
        )
        assert money.get(pl.DataFrame({"user": ["a", "a"], "currency": ["EUR", "USD"]})).rows() == [
            (1.5, 2),
            (None, None),
        ]


def test_nan_keys_and_map_keys_are_one_key(backend: Any, tmp_path: Path) -> None:
    """A float key (and map key) NaN is one key, as in polars' group_by: list and map states
    line up a batch's rows with its keys by joins, which must match NaN with NaN."""
    nan = float("nan")
    floats = pl.Schema({"k": pl.Float64})
    with open_states(
        backend,
        tmp_path,
        af.ListState("l", pl.Int64),
        af.MapState("m", key={"mk": pl.Float64}, value=pl.Int64),
        input_schema=floats,
        keys=floats,
    ) as ctx:
        lists, maps = ctx.state("l"), ctx.state("m")
        lists.append(pl.DataFrame({"k": [nan, 1.0, nan]}), pl.Series([1, 2, 3]))
        lists.append(pl.DataFrame({"k": [nan]}), pl.Series([4]))
        assert lists.get(pl.DataFrame({"k": [1.0, nan, 2.0]})).to_list() == [[2], [1, 3, 4], []]
        rows = pl.DataFrame({"k": [nan, nan, 1.0, nan], "mk": [nan, 0.5, nan, nan]})
        maps.put(
            rows, pl.Series([10, 20, 30, 40])
        )  # (NaN, NaN) twice: the last wins, in the first's place
        assert maps.get(rows).to_list() == [40, 20, 30, 40]
        assert maps.items(pl.DataFrame({"k": [nan]})).get_column("m").to_list() == [40, 20]
        maps.remove(pl.DataFrame({"k": [nan], "mk": [nan]}))
        assert maps.contains(rows).to_list() == [False, True, True, False]


def test_map_state_ttl_per_entry(backend: Any, tmp_path: Path) -> None:
    with open_states(
        backend, tmp_path, af.MapState("m", key={"k": pl.Int64}, value=pl.String, ttl="1m")
    ) as ctx:
        m = ctx.state("m")
        ctx.now_ms = 0
        m.put(pl.DataFrame({"user": ["a", "a"], "k": [1, 2]}), pl.Series(["one", "two"]))
        ctx.now_ms = 30_000
        m.put(pl.DataFrame({"user": ["a"], "k": [2]}), "TWO")
        ctx.now_ms = 60_000
        assert m.items(users("a")).rows() == [("a", 2, "TWO")]
        assert m.get(pl.DataFrame({"user": ["a", "a"], "k": [1, 2]})).to_list() == [None, "TWO"]
        ctx.now_ms = 90_000
        assert m.items(users("a")).height == 0
        assert m.store.count() == 0


def test_list_and_map_state_follow_a_python_model(backend: Any, tmp_path: Path) -> None:
    """Random appends, puts, removes and clears over a few keys; every read equals the model."""
    rng = random.Random(1)
    names = ["a", "b", "ç", None]
    with open_states(
        backend,
        tmp_path,
        af.ListState("xs", {"s": pl.String, "i": pl.Int64}),
        af.MapState("m", key={"k": pl.String}, value=pl.Int64),
    ) as ctx:
        xs, m = ctx.state("xs"), ctx.state("m")
        lists: dict[str | None, list[dict[str, Any]]] = {}
        maps: dict[str | None, dict[str | None, int | None]] = {}
        for step in range(50):
            who = [rng.choice(names) for _ in range(rng.randint(0, 6))]
            op = rng.choice(["append", "put_list", "clear", "put_map", "remove", "clear_map"])
            keys = users(*who)
            if op == "append":
                elements = [
                    {"s": rng.choice(["x", "", None, "long" * 5]), "i": rng.choice([None, step])}
                    for _ in who
                ]
                xs.append(keys, pl.DataFrame(elements, schema={"s": pl.String, "i": pl.Int64}))
                for user, element in zip(who, elements, strict=True):
                    lists.setdefault(user, []).append(element)
            elif op == "put_list":
                new = [[{"s": str(step), "i": j} for j in range(rng.randint(0, 2))] for _ in who]
                xs.put(
                    keys, pl.Series(new, dtype=pl.List(pl.Struct({"s": pl.String, "i": pl.Int64})))
                )
                for user, elements in zip(who, new, strict=True):
                    lists[user] = elements
            elif op == "clear":
                xs.clear(keys)
                for user in who:
                    lists.pop(user, None)
            else:
                map_keys = [rng.choice(["p", "q", None]) for _ in who]
                rows = keys.with_columns(k=pl.Series(map_keys, dtype=pl.String))
                if op == "put_map":
                    m.put(rows, pl.Series([step] * len(who)))
                    for user, key in zip(who, map_keys, strict=True):
                        maps.setdefault(user, {})[key] = step
                elif op == "remove":
                    m.remove(rows)
                    for user, key in zip(who, map_keys, strict=True):
                        maps.get(user, {}).pop(key, None)
                else:
                    m.clear(keys)
                    for user in who:
                        maps.pop(user, None)
            everyone = users(*names)
            assert xs.get(everyone).to_list() == [lists.get(u, []) for u in names], (
                f"step {step}: {op}"
            )
            expected_items = [(u, k, v) for u in names for k, v in maps.get(u, {}).items()]
            assert sorted(m.items(everyone).rows(), key=repr) == sorted(expected_items, key=repr), (
                f"step {step}"
            )
            probe = pl.DataFrame({"user": names * 3, "k": ["p"] * 4 + ["q"] * 4 + [None] * 4})
            assert m.get(probe).to_list() == [maps.get(u, {}).get(k) for u, k in probe.iter_rows()]


def test_writing_state_of_a_key_another_worker_owns_is_refused(tmp_path: Path) -> None:
    with open_states(
        resolve_backend("memory"), tmp_path, af.ValueState("n", pl.Int64), key_range=range(0, 1)
    ) as ctx:
        from arrowflow._foundation.keygroups import key_groups

        names = [f"user{i}" for i in range(50)]
        groups = key_groups(users(*names), 128)
        mine = [n for n, g in zip(names, groups, strict=True) if g == 0][:1]
        other = next(n for n, g in zip(names, groups, strict=True) if g != 0)
        ctx.state("n").put(users(*mine), 1)
        with pytest.raises(StateError, match="does not own"):
            ctx.state("n").put(users(*mine, other), 1)


def test_processing_time_ttl(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without event_time, TTLs run on the wall clock: a fake one, 40 minutes per batch."""
    from arrowflow._runtime import process_op

    ticks = iter(range(0, 10**9, 40 * 60_000))
    monkeypatch.setattr(process_op, "wall_clock_ms", lambda: next(ticks))

    def count(batch: pl.DataFrame, ctx: af.ProcessContext) -> pl.DataFrame:
        before = ctx.state("n").get(batch).fill_null(0)
        out = batch.with_columns(n=before + 1, now=pl.lit(ctx.now_ms))
        ctx.state("n").put(out, pl.col("n"))
        return out

    keys = pl.DataFrame(
        {"k": ["a", "a", "b", "a", "a", "a"]}
    )  # one row per batch: t = 0, 40, 80, ...
    got = (
        af.Flow("pt")
        .from_polars(keys)
        .key_by("k")
        .process(count, states=[af.ValueState("n", pl.Int64, ttl="1h")])
        .collect(batch_size=1)
    )
    # "a" at 0 and 40 min: 1, 2; at 120 min the last write (40) is 80 min old: 1; then 2, 3.
    assert got["n"].to_list() == [1, 2, 1, 1, 2, 3]


class _Collector:
    def __init__(self) -> None:
        self.batches: list[pl.DataFrame] = []

    def receive(self, batch: pl.DataFrame, index: int) -> None:
        self.batches.append(batch)


def test_batches_from_a_ring_are_copied_before_anything_keeps_them(tmp_path: Path) -> None:
    """With several workers a batch may be a view of a shared-memory ring, reused after the
    call: what the function returns and what it writes to heap state must survive that."""
    import pyarrow as pa

    from arrowflow._runtime.process_op import ProcessOp
    from arrowflow._runtime.shm import ipc_read

    def keep_everything(batch: pl.DataFrame, ctx: af.ProcessContext) -> pl.DataFrame:
        ctx.state("last").put(batch, pl.col("category"))
        return batch

    flow = af.Flow("ring")
    flow.from_polars(EVENTS).key_by("user").process(
        keep_everything, states=[af.ValueState("last", pl.String)]
    ).write_to(CollectingSink())
    spec = flow.plan().op("process")
    table = EVENTS.with_columns(pl.col("category") + "-a-string-longer-than-twelve-bytes").to_arrow(
        compat_level=pl.CompatLevel.newest()
    )
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    ring = bytearray(sink.getvalue().to_pybytes())
    batch = pl.DataFrame(pl.from_arrow(ipc_read(memoryview(ring))))
    expected = batch.clone().to_arrow()  # rows as Python objects, before the ring is reused
    expected = pl.DataFrame(
        pl.from_arrow(pa.Table.from_pylist(expected.to_pylist(), schema=expected.schema))
    )
    op = ProcessOp(spec, resolve_backend("memory"), range(128), StoreContext(str(tmp_path), 0, 2))
    collector = _Collector()
    op.connect("main", collector, 0)  # type: ignore[arg-type]
    op.open()
    op.process(batch, 0)
    ring[:] = bytes(len(ring))  # the ring's space is written again by the next message
    assert pl.concat(collector.batches).equals(expected)
    state = next(iter(op.stores.values())).scan()
    assert sorted(pl.concat(list(state))["last"].to_list()) == sorted(
        expected.unique("user", keep="last")["category"].to_list()
    )
    op.close()


# ---------------------------------------------------------------------------- the plan and its checks


def test_plan_exchanges_reads_every_column_and_fingerprints_the_states() -> None:
    def plan_of(ttl: str | None) -> Any:
        flow = af.Flow("plan")
        src = flow.from_polars(EVENTS)
        src.key_by("user").process(
            running_count, states=[af.ValueState("count", pl.Int64, ttl=ttl)]
        ).select("n").write_to(CollectingSink())
        return flow.plan()

    plan = plan_of(None)
    assert [op.kind for op in plan.ops] == ["source", "exchange", "process", "chain", "sink"]
    assert plan.op("from_polars").params["columns"] is None, (
        "a process function may read any column"
    )
    text = plan.explain()
    assert "keyed process function running_count by ['user']; ValueState('count', Int64)" in text
    assert plan.fingerprint != plan_of("2h").fingerprint


@pytest.mark.parametrize("workers", [0, 2])
def test_empty_batches_and_a_learned_schema_with_no_rows_out(workers: int) -> None:
    def nothing(batch: pl.DataFrame, ctx: af.ProcessContext) -> pl.DataFrame:
        ctx.state("seen").put(batch, True)
        return batch.filter(pl.lit(False)).select("event_id")

    got = (
        af.Flow("empty")
        .from_polars(EVENTS, splits=2)
        .key_by("event_id")
        .process(nothing, states=[af.ValueState("seen", pl.Boolean)])
        .collect(workers=workers)
    )
    assert got.schema == pl.Schema({"event_id": pl.Int64}) and got.height == 0


def src() -> af.Stream:
    return af.Flow("bad").from_polars(EVENTS)


def test_wrong_use_fails_when_the_flow_is_built() -> None:
    seen = af.ValueState("seen", pl.Boolean)
    with pytest.raises(PlanError, match="expects a function"):
        src().key_by("user").process("dedupe", states=[seen])  # type: ignore[arg-type]
    with pytest.raises(PlanError, match=r"asked for state 'seen'.*declared: \['other'\]"):
        src().key_by("event_id").process(
            dedupe, states=[af.ValueState("other", pl.Boolean)], side_outputs={"duplicates": None}
        )
    with pytest.raises(PlanError, match=r"emit\(\) to side output 'duplicates'.*not declared"):
        src().key_by("event_id").process(dedupe, states=[seen])
    with pytest.raises(SchemaError, match=r"emit.*duplicates.*does not match"):
        src().key_by("event_id").process(
            dedupe, states=[seen], side_outputs={"duplicates": {"x": pl.Int64}}
        )
    with pytest.raises(PlanError, match="must return a polars DataFrame, it returned Series"):
        src().key_by("user").process(lambda batch, ctx: batch["user"])
    with pytest.raises(SchemaError, match=r"n: expected Int32, got Int64"):
        src().key_by("user").process(
            running_count,
            states=[af.ValueState("count", pl.Int64)],
            schema={"event_id": pl.Int64, "user": pl.String, "n": pl.Int32},
        )
    with pytest.raises(SchemaError, match=r"could not be run on an empty batch.*pass schema="):
        src().key_by("user").process(
            lambda batch, ctx: batch.head(1).with_columns(x=batch["amount"][0])
        )
    with pytest.raises(PlanError, match="two states are called 'seen'"):
        src().key_by("user").process(dedupe, states=[seen, af.ValueState("seen", pl.Int64)])
    with pytest.raises(PlanError, match="states= expects a list"):
        src().key_by("user").process(dedupe, states=[pl.Boolean])  # type: ignore[list-item]
    with pytest.raises(PlanError, match=r"'user'.*also a key column"):
        src().key_by("user").process(dedupe, states=[af.ValueState("user", pl.Int64)])
    with pytest.raises(
        SchemaError, match="event_time='amount' must name a Datetime or Date column"
    ):
        src().key_by("user").process(
            recent_amounts, states=[af.ListState("recent", pl.Int64)], event_time="amount"
        )
    with pytest.raises(PlanError, match="no side output 'nope'"):
        src().key_by("event_id").process(
            dedupe, states=[seen], side_outputs={"duplicates": None}
        ).side_output("nope")


def test_wrong_state_declarations_fail_at_once() -> None:
    with pytest.raises(PlanError, match="the name must be letters"):
        af.ValueState("two words", pl.Int64)
    with pytest.raises(PlanError, match="expected a polars type"):
        af.ValueState("n", "int")
    with pytest.raises(PlanError, match="bare number 5 is ambiguous"):
        af.ValueState("n", pl.Int64, ttl=5)
    with pytest.raises(PlanError, match="list and map state cannot hold"):
        af.ListState("xs", pl.List(pl.Int64))
    with pytest.raises(PlanError, match=r"key= names the map-key columns"):
        af.MapState("m", key=pl.String, value=pl.Int64)  # type: ignore[arg-type]
    with pytest.raises(PlanError, match="reserved"):
        af.ValueState("pair", {"__x": pl.Int64})
    with pytest.raises(PlanError, match="both a map-key and a value column"):
        af.MapState("m", key={"k": pl.String}, value={"k": pl.Int64})


def test_wrong_calls_inside_the_function_fail_at_build_or_name_the_operator() -> None:
    def no_keys(batch: pl.DataFrame, ctx: af.ProcessContext) -> pl.DataFrame:
        ctx.state("n").get(batch.select("amount"))
        return batch

    with pytest.raises(SchemaError, match=r"get\(\) needs the column 'user'"):
        src().key_by("user").process(no_keys, states=[af.ValueState("n", pl.Int64)])

    def too_few_values(batch: pl.DataFrame, ctx: af.ProcessContext) -> pl.DataFrame:
        ctx.state("n").put(batch, batch.head(1).select("amount"))
        return batch

    stream = (
        src().key_by("user").process(too_few_values, states=[af.ValueState("n", pl.Int64)])
    )  # fine when empty
    with pytest.raises(
        WorkerError, match=r"operator 'process', ValueState 'n': put\(\): got 1 values for \d+ keys"
    ):
        stream.collect(workers=2)  # the worker's error crosses the process boundary

    def changing(batch: pl.DataFrame, ctx: af.ProcessContext) -> pl.DataFrame:
        return batch if batch.height == 0 else batch.drop("amount")

    stream = src().key_by("user").process(changing)
    with pytest.raises(SchemaError, match="amount: expected Int64, got missing"):
        stream.collect(workers=0)


# ---------------------------------------------------------------------------- checkpoints

JOB = textwrap.dedent("""
    import json, sys, time
    import polars as pl
    import arrowflow as af

    config = json.loads(sys.argv[1])

    def dedupe(batch, ctx):
        time.sleep(0.02)
        first = batch.unique("event_id", keep="first", maintain_order=True)
        fresh = first.filter(ctx.state("seen").get(first).is_null())
        ctx.state("seen").put(fresh, True)
        return fresh

    flow = af.Flow("dedupe")
    events = flow.read_parquet(config["input"])
    events.key_by("event_id").process(dedupe, states=[af.ValueState("seen", pl.Boolean)]).write_parquet(config["out"])
    result = flow.run(workers=config["workers"], state=config["state"], checkpoint_dir=config["checkpoints"],
                      checkpoint_every=af.every_rows(600), batch_size=300, restore="latest")
    print("RESTORED", result.restored_from, flush=True)
""")


@pytest.mark.parametrize(("state", "workers"), [("lmdb", 2), ("sql", 0)])
def test_state_survives_a_crash_and_restore(tmp_path: Path, state: str, workers: int) -> None:
    """Killed after the second checkpoint, the job resumes from it: every id is committed
    exactly once, so the de-duplication state of before the crash was restored."""
    import json
    import os

    rng = np.random.default_rng(9)
    (tmp_path / "in").mkdir()
    for part in range(3):
        ids = rng.integers(0, 1500, 2400)
        pl.DataFrame({"event_id": ids, "n": np.arange(2400) + part * 2400}).write_parquet(
            tmp_path / "in" / f"part-{part}.parquet", row_group_size=600
        )
    config = {
        "input": str(tmp_path / "in"),
        "out": str(tmp_path / "out"),
        "checkpoints": str(tmp_path / "ckpt"),
        "workers": workers,
        "state": state,
    }
    (tmp_path / "job.py").write_text(JOB)

    def run(faults: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(tmp_path / "job.py"), json.dumps(config)],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "ARROWFLOW_FAULTS": faults},
        )

    crashed = run("after_manifest@2")
    assert crashed.returncode != 0, crashed.stdout + crashed.stderr[-2000:]
    resumed = run("")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "RESTORED None" not in resumed.stdout, "the second run did not restore a checkpoint"
    files = sorted(
        p for p in (tmp_path / "out").glob("*.parquet") if not p.name.startswith(("_", "."))
    )
    got = pl.concat([pl.read_parquet(f) for f in files])
    expected = pl.read_parquet(tmp_path / "in" / "*.parquet")["event_id"].unique()
    assert got["event_id"].is_duplicated().sum() == 0, (
        "an id was emitted twice: state was lost in the restore"
    )
    assert sorted(got["event_id"].to_list()) == sorted(expected.to_list())
