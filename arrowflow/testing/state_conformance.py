"""The conformance suite every state backend runs, ``memory`` included, against a reference.

A backend's test module subclasses :class:`StateConformance` and says which backend to test;
pytest then runs every test below against it::

    from arrowflow.testing.state_conformance import StateConformance
    from mypkg.store import MyBackend

    class TestMyBackend(StateConformance):
        backend = MyBackend()

A backend known by name (built in, or registered through :mod:`arrowflow.registry`) can be
named instead, which also checks that its registration resolves::

    from arrowflow.state import resolve_backend

    class TestLmdb(StateConformance):
        backend = resolve_backend("lmdb")

A backend that needs a live service overrides the ``state_backend`` fixture instead (see
:func:`temporary_postgres`). What a backend cannot store is declared, not branched on: set
``capabilities = Capabilities(nan=False)`` and the generated data leaves NaN out.

Every test drives the backend under test and a :class:`ReferenceStore` with the same
operations — puts, gets, deletes, scans, counts, snapshots, restores, including restores onto
another split of the key groups (rescaling) — and requires the same answers. The reference
is no backend: it keeps the log of the puts and deletes applied to it and answers every
question with polars over that log (a key's entry is its last logged put, unless a delete
came after it). So the ``memory`` backend runs this suite like any other, and nothing
compares a backend with itself or with another backend. The property tests draw the key and
value schemas (strings, several key columns, temporal types, nulls) and the operation
sequences with hypothesis.

The suite needs ``pytest`` and ``hypothesis`` (``pip install 'arrowflow[dev]'``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import fsspec
import hypothesis.strategies as st
import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from polars.testing import assert_frame_equal

from arrowflow._foundation.keygroups import key_group_range, key_groups
from arrowflow.errors import StateError
from arrowflow.state import FOUND, KeyedStore, StateBackend, StateFile, StoreContext, StoreSpec

__all__ = [
    "Capabilities",
    "ReferenceStore",
    "StateConformance",
    "assert_same_contents",
    "temporary_postgres",
]

ALL_GROUPS = range(0, 128)


@dataclass(frozen=True)
class Capabilities:
    """What a backend can hold; the generated data stays inside it."""

    nan: bool = True  # float NaN survives a round trip (SQLite turns NaN into NULL)
    nested: bool = True  # list and struct value columns
    nul_in_text: bool = True  # a string may hold "\x00" (PostgreSQL's text cannot)


# ---------------------------------------------------------------------------- helpers


def _sorted(frame: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    return frame.sort(keys, nulls_last=True) if frame.height > 1 else frame


def _scan(store: KeyedStore | ReferenceStore) -> pl.DataFrame:
    spec = store.spec
    frames = list(store.scan())
    schema = {**spec.key_schema, **spec.value_schema}
    if not frames:
        return pl.DataFrame(schema=schema)
    return pl.concat(frames).select(list(schema))


_SEQ, _PUT, _PROBE = "__reference.seq", "__reference.put", "__reference.probe"


class ReferenceStore:
    """What a store must hold after a sequence of puts and deletes, computed by polars from
    the log of those operations: no join of keys, no backend code.

    A key is identified by ``group_by``/``over`` partitioning (null equals null and NaN equals
    NaN, as in polars' ``group_by``); its entry is the values of its last logged operation
    when that was a put. ``get`` finds, for each probed key, the sequence number of the key's
    last logged operation (``max().over(keys)`` over the log and the probe together) and
    takes that log row by its number.
    """

    def __init__(self, spec: StoreSpec) -> None:
        self.spec = spec
        self._log: list[pl.DataFrame] = []
        self._next = 0

    def _append(self, keys: pl.DataFrame, values: pl.DataFrame | None, *, put: bool) -> None:
        height = keys.height
        if values is None:  # a delete: logged with null values
            values = pl.DataFrame(
                [
                    pl.Series(name, [None] * height, dtype=dtype)
                    for name, dtype in self.spec.value_schema.items()
                ]
            )
        frame = pl.concat(
            [keys.select(self.spec.key_columns), values.select(self.spec.value_columns)],
            how="horizontal",
        )
        self._log.append(
            frame.with_columns(
                pl.int_range(self._next, self._next + height, dtype=pl.Int64).alias(_SEQ),
                pl.lit(put, dtype=pl.Boolean).alias(_PUT),
            )
        )
        self._next += height

    def put(self, keys: pl.DataFrame, values: pl.DataFrame) -> None:
        self._append(keys, values, put=True)

    def delete(self, keys: pl.DataFrame) -> None:
        self._append(keys, None, put=False)

    def log(self) -> pl.DataFrame:
        schema = {
            **self.spec.key_schema,
            **self.spec.value_schema,
            _SEQ: pl.Int64(),
            _PUT: pl.Boolean(),
        }
        frames = [f for f in self._log if f.height]
        return pl.concat(frames, how="vertical") if frames else pl.DataFrame(schema=schema)

    def entries(self) -> pl.DataFrame:
        keys = self.spec.key_columns
        log = self.log()
        if log.height == 0:
            return log.drop(_SEQ, _PUT)
        last = log.filter(pl.col(_SEQ) == pl.col(_SEQ).max().over(keys))
        return last.filter(pl.col(_PUT)).sort(_SEQ).drop(_SEQ, _PUT)

    def scan(self) -> Iterator[pl.DataFrame]:
        entries = self.entries()
        if entries.height:
            yield entries

    def count(self) -> int:
        return self.entries().height

    def get(self, probe: pl.DataFrame) -> pl.DataFrame:
        keys = self.spec.key_columns
        log = self.log()
        both = pl.concat(
            [
                log.select(*keys, _SEQ, pl.lit(None, dtype=pl.Int64).alias(_PROBE)),
                probe.select(keys).with_columns(
                    pl.lit(None, dtype=pl.Int64).alias(_SEQ),
                    pl.int_range(probe.height, dtype=pl.Int64).alias(_PROBE),
                ),
            ],
            how="vertical",
        )
        latest = (
            both.with_columns(pl.col(_SEQ).max().over(keys).alias(_SEQ))
            .filter(pl.col(_PROBE).is_not_null())
            .sort(_PROBE)
            .select(_SEQ)
        )
        found = latest.join(log.drop(keys), on=_SEQ, how="left", maintain_order="left")
        is_entry = pl.col(_PUT).fill_null(False)
        return found.select(
            *(pl.when(is_entry).then(pl.col(c)).alias(c) for c in self.spec.value_columns),
            is_entry.alias(FOUND),
        )


class _References:
    """Reference stores, opened like the stores of a backend (the owned key groups do not
    matter: a reference holds what it was given)."""

    def open(self, spec: StoreSpec, groups: range = ALL_GROUPS, **_: Any) -> ReferenceStore:
        return ReferenceStore(spec)

    def close(self) -> None:
        pass


def assert_same_contents(
    actual: KeyedStore, expected: KeyedStore | ReferenceStore, *, groups: range | None = None
) -> None:
    """``actual`` holds exactly the entries of ``expected`` (restricted to ``groups``)."""
    keys = actual.spec.key_columns
    want = _scan(expected)
    if groups is not None and want.height:
        owned = key_groups(want.select(keys), expected.spec.max_parallelism)
        want = want.filter(pl.Series((owned >= groups.start) & (owned < groups.stop)))
    got = _scan(actual)
    assert got.height == actual.count(), (
        f"scan returned {got.height} rows but count() says {actual.count()}"
    )
    assert_frame_equal(_sorted(got, keys), _sorted(want, keys), check_exact=True)


class _Stores:
    """Opens stores of one backend in private local directories, and closes them all."""

    def __init__(self, backend: StateBackend) -> None:
        self.backend = backend
        self.opened: list[KeyedStore] = []
        self.dirs: list[str] = []
        self.base = tempfile.mkdtemp(prefix="arrowflow-conformance-")

    def open(
        self,
        spec: StoreSpec,
        groups: range = ALL_GROUPS,
        *,
        worker: int = 0,
        parallelism: int = 1,
        local_dir: str | None = None,
    ) -> KeyedStore:
        if local_dir is None:
            local_dir = tempfile.mkdtemp(dir=self.base)
        store = self.backend.open_store(spec, groups, StoreContext(local_dir, worker, parallelism))
        self.opened.append(store)
        return store

    def close(self) -> None:
        for store in self.opened:
            with contextlib.suppress(Exception):
                store.close()
        shutil.rmtree(self.base, ignore_errors=True)


class _Storage:
    """A checkpoint root on an fsspec file system (local disk or fsspec's in-memory one)."""

    def __init__(self, protocol: str) -> None:
        self.fs = fsspec.filesystem(protocol)
        self.protocol = protocol
        if protocol == "memory":
            self.base = f"/conformance-{uuid.uuid4().hex}"
        else:
            self.base = tempfile.mkdtemp(prefix="arrowflow-checkpoints-")

    def root(self) -> str:
        return f"{self.base}/job-{uuid.uuid4().hex[:8]}"

    def flip_byte(self, root: str, state_file: StateFile) -> None:
        path = f"{root}/{state_file.path}"
        payload = bytearray(self.fs.cat_file(path))
        payload[len(payload) // 2] ^= 0x5A
        self.fs.pipe_file(path, bytes(payload))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.fs.rm(self.base, recursive=True)


def _split(parts: int) -> list[range]:
    return [key_group_range(worker, parts, 128) for worker in range(parts)]


# ---------------------------------------------------------------------------- data


_SCALARS: dict[str, tuple[pl.DataType, st.SearchStrategy[Any]]] = {
    "int64": (pl.Int64(), st.integers(-(2**63), 2**63 - 1)),
    "int32": (pl.Int32(), st.integers(-(2**31), 2**31 - 1)),
    "int8": (pl.Int8(), st.integers(-128, 127)),
    "uint64": (pl.UInt64(), st.integers(0, 2**64 - 1)),
    "string": (pl.String(), st.text(max_size=12)),
    "binary": (pl.Binary(), st.binary(max_size=12)),
    "bool": (pl.Boolean(), st.booleans()),
    "date": (pl.Date(), st.dates(dt.date(1900, 1, 1), dt.date(2200, 12, 31))),
    "datetime": (pl.Datetime("us"), st.datetimes(dt.datetime(1900, 1, 1), dt.datetime(2200, 1, 1))),
    "datetime_ns_utc": (
        pl.Datetime("ns", "UTC"),
        st.datetimes(dt.datetime(1900, 1, 1), dt.datetime(2200, 1, 1)),
    ),
    "float64": (pl.Float64(), st.floats(allow_nan=False, width=64)),
    "duration": (
        pl.Duration("us"),
        st.timedeltas(dt.timedelta(days=-9999), dt.timedelta(days=9999)),
    ),
    "time": (pl.Time(), st.times()),
    "decimal": (
        pl.Decimal(12, 3),
        st.decimals(Decimal("-99999999.999"), Decimal("99999999.999"), places=3),
    ),
}
_KEY_KINDS = ["int64", "int32", "uint64", "string", "binary", "bool", "date", "datetime", "float64"]
_VALUE_KINDS = list(_SCALARS)


def _values_strategy(kind: str, capabilities: Capabilities, *, key: bool) -> st.SearchStrategy[Any]:
    values = _SCALARS[kind][1]
    if kind == "float64":
        # NaN keys are left out of the generated sequences; NaN keys are covered by
        # test_every_type_round_trips and, one key per store call (where polars' join needs
        # arrowflow.state.join_on_keys), on every backend by tests/arrowflow/test_aggregation.py.
        values = st.floats(allow_nan=capabilities.nan and not key, width=64)
        if key:  # polars joins treat -0.0 and 0.0 as one key: generate one of them
            values = values.map(lambda x: 0.0 if x == 0 else x)
    if kind == "string" and not capabilities.nul_in_text:
        values = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12)
    if kind == "datetime_ns_utc":
        values = values.map(lambda x: x.replace(tzinfo=dt.timezone.utc))
    return st.one_of(st.none(), values)


def _series(name: str, kind: str, items: list[Any]) -> pl.Series:
    dtype, _ = _SCALARS[kind]
    if kind == "datetime_ns_utc":
        return pl.Series(name, items, dtype=pl.Datetime("us", "UTC")).cast(dtype)
    return pl.Series(name, items, dtype=dtype)


@st.composite
def schemas(draw: st.DrawFn, capabilities: Capabilities) -> tuple[dict[str, str], dict[str, str]]:
    """(key column -> kind, value column -> kind), column names included in the draw."""
    key_kinds = draw(st.lists(st.sampled_from(_KEY_KINDS), min_size=1, max_size=3))
    value_kinds = draw(st.lists(st.sampled_from(_VALUE_KINDS), min_size=1, max_size=4))
    keys = {f"k{i}" if i else "user id": kind for i, kind in enumerate(key_kinds)}
    values = {f"v{i}" if i else 'total "sum"': kind for i, kind in enumerate(value_kinds)}
    return keys, values


def _spec(keys: dict[str, str], values: dict[str, str], name: str = "agg-1") -> StoreSpec:
    return StoreSpec(
        name,
        pl.Schema({column: _SCALARS[kind][0] for column, kind in keys.items()}),
        pl.Schema({column: _SCALARS[kind][0] for column, kind in values.items()}),
    )


@st.composite
def key_pool(draw: st.DrawFn, keys: dict[str, str], capabilities: Capabilities) -> pl.DataFrame:
    """Distinct keys (null counts as a value, as in polars joins)."""
    size = draw(st.integers(1, 40))
    columns = [
        _series(
            name,
            kind,
            draw(
                st.lists(
                    _values_strategy(kind, capabilities, key=True), min_size=size, max_size=size
                )
            ),
        )
        for name, kind in keys.items()
    ]
    return pl.DataFrame(columns).unique(maintain_order=True)


@st.composite
def value_rows(
    draw: st.DrawFn, values: dict[str, str], height: int, capabilities: Capabilities
) -> pl.DataFrame:
    columns = [
        _series(
            name,
            kind,
            draw(
                st.lists(
                    _values_strategy(kind, capabilities, key=False),
                    min_size=height,
                    max_size=height,
                )
            ),
        )
        for name, kind in values.items()
    ]
    return pl.DataFrame(columns)


def _deterministic_data(n: int, seed: int = 7) -> tuple[pl.DataFrame, pl.DataFrame]:
    """``n`` distinct two-column keys (a string and an integer, some null) and values with nulls."""
    rng = np.random.default_rng(seed)
    ids = rng.permutation(n * 3)[:n]
    keys = pl.DataFrame(
        {
            "user": pl.Series([f"user-{i % 997}" for i in ids]).set(
                pl.Series(ids % 101 == 0), None
            ),
            "session": pl.Series(ids // 997, dtype=pl.Int64).set(pl.Series(ids % 89 == 0), None),
        }
    ).unique(maintain_order=True)
    height = keys.height
    values = pl.DataFrame(
        {
            "n": pl.Series(rng.integers(0, 1000, height), dtype=pl.Int64),
            "total": pl.Series(rng.normal(size=height)).set(
                pl.Series(rng.random(height) < 0.1), None
            ),
            "last_page": pl.Series([f"/p/{i}" for i in rng.integers(0, 50, height)]).set(
                pl.Series(rng.random(height) < 0.1), None
            ),
            "first_seen": pl.Series(rng.integers(0, 10**12, height)).cast(pl.Datetime("ms")),
        }
    )
    return keys, values


DETERMINISTIC_SPEC = StoreSpec(
    "keyed-agg",
    pl.Schema({"user": pl.String, "session": pl.Int64}),
    pl.Schema(
        {
            "n": pl.Int64(),
            "total": pl.Float64(),
            "last_page": pl.String(),
            "first_seen": pl.Datetime("ms"),
        }
    ),
)


# ---------------------------------------------------------------------------- PostgreSQL


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pg_tool(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(
        Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=lambda p: int(p.parts[-3])
    )
    if candidates:
        return str(candidates[-1])
    msg = f"PostgreSQL's {name!r} is not on the PATH nor under /usr/lib/postgresql/*/bin; apt-get install postgresql"
    raise FileNotFoundError(msg)


@contextlib.contextmanager
def temporary_postgres() -> Iterator[str]:
    """Start a throwaway PostgreSQL server on loopback and yield a ``postgresql://`` URL.

    Runs ``initdb`` and ``pg_ctl`` as the ``postgres`` user when the caller is root (the
    server refuses to run as root), in a temporary directory that is removed afterwards.
    """
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    base = tempfile.mkdtemp(prefix="arrowflow-pg-")
    if as_postgres:
        shutil.chown(base, user="postgres")
    data, log, port = f"{base}/data", f"{base}/server.log", _free_port()
    pg_ctl = _pg_tool("pg_ctl")
    try:
        subprocess.run(
            [
                *as_postgres,
                _pg_tool("initdb"),
                "-D",
                data,
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
            ],
            check=True,
            capture_output=True,
        )
        options = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
        subprocess.run(
            [*as_postgres, pg_ctl, "-D", data, "-o", options, "-l", log, "-w", "-t", "60", "start"],
            check=True,
            capture_output=True,
        )
    except subprocess.CalledProcessError as exc:
        server_log = Path(log).read_text() if Path(log).exists() else ""
        shutil.rmtree(base, ignore_errors=True)
        msg = f"PostgreSQL did not start: {exc.stderr.decode(errors='replace')}\n{server_log}"
        raise RuntimeError(msg) from exc
    try:
        import adbc_driver_postgresql.dbapi as pg

        with pg.connect(
            f"postgresql://postgres@127.0.0.1:{port}/postgres", autocommit=True
        ) as admin:
            with admin.cursor() as cursor:
                cursor.execute("CREATE DATABASE arrowflow")
        yield f"postgresql://postgres@127.0.0.1:{port}/arrowflow"
    finally:
        subprocess.run(
            [*as_postgres, pg_ctl, "-D", data, "-m", "immediate", "-w", "stop"], capture_output=True
        )
        shutil.rmtree(base, ignore_errors=True)


# ---------------------------------------------------------------------------- the suite

_PROPERTY = settings(
    max_examples=int(os.environ.get("ARROWFLOW_CONFORMANCE_EXAMPLES", "20")),
    deadline=None,
    # one test method, run by each backend subclass: "differing executors" is the design here
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.differing_executors,
    ],
)


class StateConformance:
    """Subclass and set ``backend`` (or override the ``state_backend`` fixture)."""

    backend: StateBackend | None = None
    capabilities: Capabilities = Capabilities()
    #: hypothesis examples for the property test (None: ARROWFLOW_CONFORMANCE_EXAMPLES, or 20)
    property_examples: int | None = None

    @pytest.fixture
    def state_backend(self) -> StateBackend:
        if self.backend is None:
            pytest.fail(
                f"{type(self).__name__}: set `backend = SomeBackend()` or override the state_backend fixture"
            )
        return self.backend

    @pytest.fixture
    def stores(self, state_backend: StateBackend) -> Iterator[_Stores]:
        opened = _Stores(state_backend)
        yield opened
        opened.close()

    @pytest.fixture
    def oracle(self) -> _References:
        return _References()

    @pytest.fixture
    def storage(self) -> Iterator[_Storage]:
        storage = _Storage("file")
        yield storage
        storage.close()

    @pytest.fixture(params=["file", "memory"])
    def any_storage(self, request: pytest.FixtureRequest) -> Iterator[_Storage]:
        """Local disk, and fsspec's in-memory file system (no local paths, like an object store)."""
        storage = _Storage(request.param)
        yield storage
        storage.close()

    # ------------------------------------------------------------------ basic contract

    def test_empty_store(self, stores: _Stores) -> None:
        store = stores.open(DETERMINISTIC_SPEC)
        assert store.count() == 0
        assert _scan(store).height == 0
        got = store.get(pl.DataFrame({"user": ["a", None], "session": [1, None]}))
        assert_frame_equal(got, DETERMINISTIC_SPEC.empty_values(2))

    def test_empty_batches(self, stores: _Stores, oracle: _References) -> None:
        store, reference = stores.open(DETERMINISTIC_SPEC), oracle.open(DETERMINISTIC_SPEC)
        keys, values = _deterministic_data(10)
        for target in (store, reference):
            target.put(keys.head(0), values.head(0))
            target.put(keys, values)
            target.delete(keys.head(0))
        assert_frame_equal(store.get(keys.head(0)), reference.get(keys.head(0)))
        assert_same_contents(store, reference)

    def test_put_get_delete_scan_count(self, stores: _Stores, oracle: _References) -> None:
        store, reference = stores.open(DETERMINISTIC_SPEC), oracle.open(DETERMINISTIC_SPEC)
        keys, values = _deterministic_data(5000)
        rng = np.random.default_rng(3)
        steps = [
            ("put", slice(0, 3000)),
            ("put", slice(2000, 5000)),
            ("delete", slice(100, 900)),
            ("put", slice(500, 700)),
            ("delete", slice(4900, 6000)),
            ("put", slice(0, 10)),
        ]
        for number, (operation, rows) in enumerate(steps):
            batch = keys[rows]
            for target in (store, reference):
                if operation == "put":
                    target.put(batch, values[rows].with_columns(pl.col("n") + number))
                else:
                    target.delete(batch)
            probe = keys.sample(2000, with_replacement=True, seed=int(rng.integers(1 << 30)))
            assert_frame_equal(store.get(probe), reference.get(probe), check_exact=True)
            assert store.count() == reference.count()
        assert_same_contents(store, reference)

    def test_get_keeps_order_and_repeats(self, stores: _Stores, oracle: _References) -> None:
        store, reference = stores.open(DETERMINISTIC_SPEC), oracle.open(DETERMINISTIC_SPEC)
        keys, values = _deterministic_data(300)
        for target in (store, reference):
            target.put(keys[::2], values[::2])
        probe = pl.concat(
            [
                keys[::-1],
                keys[:50],
                pl.DataFrame({"user": ["absent"], "session": [None]}, schema=keys.schema),
            ]
        )
        got, want = store.get(probe), reference.get(probe)
        assert got.columns == [*DETERMINISTIC_SPEC.value_columns, FOUND]
        assert_frame_equal(got, want, check_exact=True)

    def test_stores_are_isolated(self, stores: _Stores, oracle: _References) -> None:
        """Two stores of one worker (same local directory) and of two key ranges never mix."""
        local_dir = tempfile.mkdtemp(dir=stores.base)
        other_spec = StoreSpec(
            "agg-2/seen", DETERMINISTIC_SPEC.key_schema, DETERMINISTIC_SPEC.value_schema
        )
        first = stores.open(DETERMINISTIC_SPEC, range(0, 64), local_dir=local_dir)
        second = stores.open(other_spec, range(0, 64), local_dir=local_dir)
        third = stores.open(
            DETERMINISTIC_SPEC, range(64, 128), worker=1, parallelism=2, local_dir=local_dir
        )
        keys, values = _deterministic_data(200)
        first.put(keys, values)
        second.put(keys[:10], values[:10])
        expected_first, expected_second = oracle.open(DETERMINISTIC_SPEC), oracle.open(other_spec)
        expected_first.put(keys, values)
        expected_second.put(keys[:10], values[:10])
        assert_same_contents(first, expected_first)
        assert_same_contents(second, expected_second)
        assert third.count() == 0

    def test_reopened_store_starts_empty(self, stores: _Stores) -> None:
        local_dir = tempfile.mkdtemp(dir=stores.base)
        store = stores.open(DETERMINISTIC_SPEC, local_dir=local_dir)
        keys, values = _deterministic_data(100)
        store.put(keys, values)
        store.close()
        again = stores.open(DETERMINISTIC_SPEC, local_dir=local_dir)
        assert again.count() == 0 and _scan(again).height == 0

    def test_large_batch(self, stores: _Stores, oracle: _References) -> None:
        spec = StoreSpec(
            "big", pl.Schema({"id": pl.Int64}), pl.Schema({"n": pl.Int64, "sum": pl.Float64})
        )
        store, reference = stores.open(spec), oracle.open(spec)
        ids = np.random.default_rng(1).permutation(200_000)[:80_000]
        keys = pl.DataFrame({"id": ids})
        values = pl.DataFrame({"n": np.arange(len(ids)), "sum": ids * 0.5})
        for target in (store, reference):
            target.put(keys, values)
            target.put(keys[::3], values[::3].with_columns(pl.col("n") * 2))
        probe = pl.DataFrame({"id": np.arange(0, 200_000, 2)})
        assert_frame_equal(store.get(probe), reference.get(probe), check_exact=True)
        assert_same_contents(store, reference)

    # ------------------------------------------------------------------ snapshots

    def test_snapshot_restore_same_split(
        self, stores: _Stores, oracle: _References, any_storage: _Storage
    ) -> None:
        storage = any_storage
        store, reference = stores.open(DETERMINISTIC_SPEC), oracle.open(DETERMINISTIC_SPEC)
        keys, values = _deterministic_data(3000)
        for target in (store, reference):
            target.put(keys, values)
            target.delete(keys[:500])
        root = storage.root()
        files = store.snapshot(storage.fs, root, 1)
        assert files and all(f.store == DETERMINISTIC_SPEC.name for f in files)
        assert all(not f.path.startswith("/") for f in files), (
            "StateFile paths are relative to the root"
        )
        restored = stores.open(DETERMINISTIC_SPEC)
        restored.restore(storage.fs, root, files)
        assert_same_contents(restored, reference)
        assert_same_contents(store, reference)  # the snapshot left the store as it was

    def test_snapshot_of_empty_store(self, stores: _Stores, storage: _Storage) -> None:
        store = stores.open(DETERMINISTIC_SPEC)
        root = storage.root()
        files = store.snapshot(storage.fs, root, 1)
        restored = stores.open(DETERMINISTIC_SPEC)
        keys, values = _deterministic_data(10)
        restored.put(keys, values)
        restored.restore(storage.fs, root, files)
        assert restored.count() == 0

    @pytest.mark.parametrize("parts", [1, 3])
    def test_restore_onto_another_split(
        self, stores: _Stores, oracle: _References, storage: _Storage, parts: int
    ) -> None:
        """Snapshot two stores ([0,64), [64,128)); restore into ``parts`` stores (rescaling)."""
        keys, values = _deterministic_data(4000)
        groups = key_groups(keys, 128)
        reference = oracle.open(DETERMINISTIC_SPEC)
        reference.put(keys, values)
        root = storage.root()
        files: list[StateFile] = []
        for worker, owned in enumerate(_split(2)):
            store = stores.open(DETERMINISTIC_SPEC, owned, worker=worker, parallelism=2)
            mine = pl.Series((groups >= owned.start) & (groups < owned.stop))
            store.put(keys.filter(mine), values.filter(mine))
            files += store.snapshot(storage.fs, root, 7)
        total = 0
        for worker, owned in enumerate(_split(parts)):
            restored = stores.open(DETERMINISTIC_SPEC, owned, worker=worker, parallelism=parts)
            restored.restore(storage.fs, root, files)
            assert_same_contents(restored, reference, groups=owned)
            total += restored.count()
        assert total == reference.count()

    def test_restore_replaces_contents(
        self, stores: _Stores, oracle: _References, storage: _Storage
    ) -> None:
        keys, values = _deterministic_data(1000)
        store, reference = stores.open(DETERMINISTIC_SPEC), oracle.open(DETERMINISTIC_SPEC)
        for target in (store, reference):
            target.put(keys[:600], values[:600])
        root = storage.root()
        files = store.snapshot(storage.fs, root, 1)
        store.put(keys[400:], values[400:].with_columns(pl.col("n") + 1))
        store.delete(keys[:100])
        store.restore(storage.fs, root, files)
        assert_same_contents(store, reference)

    def test_later_snapshots_do_not_change_earlier_ones(
        self, stores: _Stores, oracle: _References, storage: _Storage
    ) -> None:
        """Checkpoints 1..4 interleaved with updates; each restores to its own moment."""
        keys, values = _deterministic_data(2000)
        store = stores.open(DETERMINISTIC_SPEC)
        reference = oracle.open(DETERMINISTIC_SPEC)
        root = storage.root()
        taken: list[tuple[list[StateFile], pl.DataFrame]] = []
        batches = [slice(0, 1000), slice(900, 1000), slice(10, 11), slice(1000, 2000)]
        for checkpoint, rows in enumerate(batches, start=1):
            for target in (store, reference):
                target.put(keys[rows], values[rows].with_columns(pl.col("n") + checkpoint))
            if checkpoint == 3:
                for target in (store, reference):
                    target.delete(keys[0:300])
            taken.append((store.snapshot(storage.fs, root, checkpoint), _scan(reference)))
        for files, expected in taken:
            restored = stores.open(DETERMINISTIC_SPEC)
            restored.restore(storage.fs, root, files)
            snapshot_oracle = oracle.open(DETERMINISTIC_SPEC)
            if expected.height:
                snapshot_oracle.put(
                    expected.select(DETERMINISTIC_SPEC.key_columns),
                    expected.select(DETERMINISTIC_SPEC.value_columns),
                )
            assert_same_contents(restored, snapshot_oracle)

    def test_restored_store_keeps_working(
        self, stores: _Stores, oracle: _References, storage: _Storage
    ) -> None:
        keys, values = _deterministic_data(1500)
        store, reference = stores.open(DETERMINISTIC_SPEC), oracle.open(DETERMINISTIC_SPEC)
        for target in (store, reference):
            target.put(keys[:1000], values[:1000])
        root = storage.root()
        restored = stores.open(DETERMINISTIC_SPEC)
        restored.restore(storage.fs, root, store.snapshot(storage.fs, root, 1))
        for target in (restored, reference):
            target.put(keys[800:], values[800:].with_columns(pl.col("n") - 1))
            target.delete(keys[:50])
        assert_frame_equal(restored.get(keys), reference.get(keys), check_exact=True)
        again = stores.open(DETERMINISTIC_SPEC)
        again.restore(storage.fs, root, restored.snapshot(storage.fs, root, 2))
        assert_same_contents(again, reference)

    def test_flipped_byte_is_a_state_error(self, stores: _Stores, storage: _Storage) -> None:
        keys, values = _deterministic_data(500)
        store = stores.open(DETERMINISTIC_SPEC)
        store.put(keys, values)
        root = storage.root()
        files = store.snapshot(storage.fs, root, 1)
        storage.flip_byte(root, files[0])
        restored = stores.open(DETERMINISTIC_SPEC)
        with pytest.raises(StateError, match="does not match its manifest"):
            restored.restore(storage.fs, root, files)

    def test_missing_file_is_a_state_error(self, stores: _Stores, storage: _Storage) -> None:
        keys, values = _deterministic_data(200)
        store = stores.open(DETERMINISTIC_SPEC)
        store.put(keys, values)
        root = storage.root()
        files = store.snapshot(storage.fs, root, 1)
        storage.fs.rm(f"{root}/{files[0].path}")
        with pytest.raises(StateError, match="cannot be read"):
            stores.open(DETERMINISTIC_SPEC).restore(storage.fs, root, files)

    # ------------------------------------------------------------------ types

    def test_every_type_round_trips(
        self, stores: _Stores, oracle: _References, storage: _Storage
    ) -> None:
        """Edge values of every supported flat type, as keys and as values."""
        nan = float("nan") if self.capabilities.nan else 2.5
        text = "x\x00y" if self.capabilities.nul_in_text else "xy"
        frame = pl.DataFrame(
            [
                pl.Series("i64", [-(2**63), 2**63 - 1, 0, None, 5, 6], dtype=pl.Int64),
                pl.Series("u64", [2**64 - 1, 0, 2**63, None, 1, 2], dtype=pl.UInt64),
                pl.Series("i8", [-128, 127, 0, None, 1, 2], dtype=pl.Int8),
                pl.Series("u16", [65535, 0, 1, None, 2, 3], dtype=pl.UInt16),
                pl.Series("f32", [1.5, -0.0, 3.4e38, None, 1e-40, 2.0], dtype=pl.Float32),
                pl.Series("f64", [nan, 1e308, -5e-324, None, 0.1, float("inf")], dtype=pl.Float64),
                pl.Series("s", ["", "ünï ☃", "a" * 300, None, text, "'; DROP TABLE t; --"]),
                pl.Series("bin", [b"", b"\x00\xff", b"x" * 70, None, b"\x00", b"z"]),
                pl.Series("b", [True, False, None, True, False, True]),
                pl.Series(
                    "d",
                    [
                        dt.date(1900, 1, 1),
                        dt.date(1969, 12, 31),
                        dt.date(9999, 12, 31),
                        None,
                        dt.date(2024, 2, 29),
                        dt.date(1970, 1, 1),
                    ],
                ),
                pl.Series(
                    "ts_ms",
                    [
                        dt.datetime(1969, 7, 20, 20, 17, 40, 123000),
                        None,
                        dt.datetime(2200, 1, 1),
                        dt.datetime(1970, 1, 1),
                        dt.datetime(2000, 1, 1),
                        dt.datetime(1901, 1, 1),
                    ],
                    dtype=pl.Datetime("ms"),
                ),
                pl.Series("ts_ns", [1_700_000_000_123_456_789, -1, None, 0, 12, 10**18]).cast(
                    pl.Datetime("ns")
                ),
                pl.Series(
                    "ts_tz",
                    [
                        dt.datetime(2021, 3, 28, 1, 30),
                        None,
                        dt.datetime(1950, 6, 1),
                        dt.datetime(2021, 10, 31, 1, 30),
                        dt.datetime(2000, 1, 1),
                        dt.datetime(1999, 1, 1),
                    ],
                    dtype=pl.Datetime("us"),
                )
                .dt.replace_time_zone("UTC")
                .dt.convert_time_zone("Europe/Paris"),
                pl.Series(
                    "dur",
                    [
                        dt.timedelta(microseconds=-1),
                        dt.timedelta(days=10**5),
                        None,
                        dt.timedelta(0),
                        dt.timedelta(seconds=1),
                        dt.timedelta(hours=-3),
                    ],
                    dtype=pl.Duration("us"),
                ),
                pl.Series("dur_ns", [-1, 10**15, None, 0, 7, 8]).cast(pl.Duration("ns")),
                pl.Series(
                    "t",
                    [
                        dt.time(0),
                        dt.time(23, 59, 59, 999999),
                        None,
                        dt.time(12),
                        dt.time(1, 2, 3),
                        dt.time(4),
                    ],
                ),
                pl.Series(
                    "dec",
                    [
                        Decimal("-99999999.999"),
                        Decimal("0.001"),
                        None,
                        Decimal("0"),
                        Decimal("1.5"),
                        Decimal("12345678.9"),
                    ],
                    dtype=pl.Decimal(12, 3),
                ),
                pl.Series("cat", ["a", "b", None, "a", "c", "d"], dtype=pl.Categorical),
            ]
        )
        for key_column in ["i64", "u64", "s", "bin", "d", "ts_ns", "ts_tz", "dec", "f64", "b"]:
            rows = frame.unique(subset=[key_column, "i8"], keep="first", maintain_order=True)
            keys, values = rows.select(key_column, "i8"), rows.drop(key_column, "i8")
            spec = StoreSpec(f"types-{key_column}", keys.schema, values.schema)
            store, reference = stores.open(spec), oracle.open(spec)
            for target in (store, reference):
                target.put(keys, values)
            assert_frame_equal(store.get(keys), reference.get(keys), check_exact=True)
            assert_same_contents(store, reference)
            root = storage.root()
            restored = stores.open(spec)
            restored.restore(storage.fs, root, store.snapshot(storage.fs, root, 1))
            assert_same_contents(restored, reference)

    def test_nested_values_round_trip_or_are_refused_at_open(
        self, stores: _Stores, oracle: _References, storage: _Storage
    ) -> None:
        """A backend either keeps list and struct values exactly, or refuses them up front."""
        spec = StoreSpec(
            "nested",
            pl.Schema({"id": pl.Int64}),
            pl.Schema(
                {
                    "pages": pl.List(pl.String),
                    "last": pl.Struct({"at": pl.Datetime("ms"), "amount": pl.Float64}),
                }
            ),
        )
        if not self.capabilities.nested:
            with pytest.raises(StateError, match=r"column 'pages' has type List\(String\)"):
                stores.open(spec)
            return
        keys = pl.DataFrame({"id": [1, 2, 3]})
        values = pl.DataFrame(
            {
                "pages": [["/a", "/b"], [], None],
                "last": [
                    {"at": dt.datetime(2024, 1, 1), "amount": 2.5},
                    None,
                    {"at": None, "amount": 1.0},
                ],
            },
            schema=dict(spec.value_schema),
        )
        store, reference = stores.open(spec), oracle.open(spec)
        for target in (store, reference):
            target.put(keys, values)
        assert_frame_equal(store.get(keys), reference.get(keys), check_exact=True)
        root = storage.root()
        restored = stores.open(spec)
        restored.restore(storage.fs, root, store.snapshot(storage.fs, root, 1))
        assert_frame_equal(restored.get(keys), reference.get(keys), check_exact=True)

    # ------------------------------------------------------------------ properties

    def test_random_operations_match_the_reference(self, state_backend: StateBackend) -> None:
        """Random schemas, keys (with nulls, several columns) and operation sequences."""

        @settings(_PROPERTY, max_examples=self.property_examples or _PROPERTY.max_examples)
        @given(data=st.data())
        def check(data: st.DataObject) -> None:
            self._random_operations(state_backend, data)

        check()

    def _random_operations(self, state_backend: StateBackend, data: st.DataObject) -> None:
        capabilities = self.capabilities
        key_kinds, value_kinds = data.draw(schemas(capabilities), label="schema")
        spec = _spec(key_kinds, value_kinds)
        pool = data.draw(key_pool(key_kinds, capabilities), label="keys")
        stores, oracle = _Stores(state_backend), _References()
        storage = _Storage("file")
        try:
            store, reference = stores.open(spec), oracle.open(spec)
            operations = data.draw(
                st.lists(
                    st.sampled_from(
                        ["put", "put", "get", "delete", "check", "snapshot", "rescale"]
                    ),
                    min_size=1,
                    max_size=10,
                )
            )
            indices = st.lists(st.integers(0, pool.height - 1), unique=True, max_size=pool.height)
            for checkpoint, operation in enumerate(operations, start=1):
                if operation == "put":
                    rows = pool[data.draw(indices)]
                    values = data.draw(value_rows(value_kinds, rows.height, capabilities))
                    store.put(rows, values)
                    reference.put(rows, values)
                elif operation == "delete":
                    rows = pool[data.draw(indices)]
                    store.delete(rows)
                    reference.delete(rows)
                elif operation == "get":
                    probe = pool[
                        data.draw(
                            st.lists(st.integers(0, pool.height - 1), max_size=2 * pool.height)
                        )
                    ]
                    assert_frame_equal(store.get(probe), reference.get(probe), check_exact=True)
                elif operation == "check":
                    assert store.count() == reference.count()
                    assert_same_contents(store, reference)
                elif operation == "snapshot":  # continue on the restored store
                    root = storage.root()
                    files = store.snapshot(storage.fs, root, checkpoint)
                    store = stores.open(spec)
                    store.restore(storage.fs, root, files)
                else:  # rescale: snapshot in 2 parts, restore in 1..3 parts, compare each
                    root = storage.root()
                    parts = data.draw(st.integers(1, 3))
                    files = store.snapshot(storage.fs, root, checkpoint)
                    for worker, owned in enumerate(_split(parts)):
                        restored = stores.open(spec, owned, worker=worker, parallelism=parts)
                        restored.restore(storage.fs, root, files)
                        assert_same_contents(restored, reference, groups=owned)
            assert store.count() == reference.count()
            assert_same_contents(store, reference)
            assert_frame_equal(store.get(pool), reference.get(pool), check_exact=True)
        finally:
            stores.close()
            oracle.close()
            storage.close()
