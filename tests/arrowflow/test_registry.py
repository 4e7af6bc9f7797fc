"""The plug-in registry: built-in names, register/load/available, the clobber rule, the errors
(an unknown name lists the registered ones; a module that cannot be imported says what to
install), and third-party plug-ins found through entry points of a real installed
distribution, used by name in a flow run by a pool of workers."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest

import arrowflow as af
import arrowflow.registry as registry
from arrowflow.sources import Source
from arrowflow.state import resolve_backend
from arrowflow.testing import assert_frame_equal_unordered

PLUGINS_MD = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"
DATA = pl.DataFrame({"k": [1, 2, 1, 3], "v": [1, 2, 3, 4]})
TOTALS = pl.DataFrame({"k": [1, 2, 3], "total": [4, 2, 4]})


@pytest.fixture(autouse=True)
def _registry_restored() -> Iterator[None]:
    """Each test's registrations are forgotten after it (the registry is process-wide)."""
    saved = (dict(registry._table), dict(registry._loaded), set(registry._entry_points_read))
    yield
    with registry._lock:
        registry._table.clear()
        registry._table.update(saved[0])
        registry._loaded.clear()
        registry._loaded.update(saved[1])
        registry._entry_points_read.clear()
        registry._entry_points_read.update(saved[2])


def test_the_built_in_plug_ins_are_listed_and_load_lazily() -> None:
    assert registry.available("state") == ["arrow", "lmdb", "memory", "sql"]
    assert {"parquet", "csv", "ndjson", "ipc", "tail", "watch", "polars", "arrow"} <= set(
        registry.available("source")
    )
    assert {"parquet", "csv", "ndjson", "ipc", "database"} <= set(registry.available("sink"))
    database = registry.entry("sink", "database")
    assert (database.target, database.extra, database.origin) == (
        "arrowflow.io.database:DatabaseSink",
        "arrowflow[sql]",
        "built-in",
    )
    from arrowflow.io.formats import read_parquet

    assert registry.load("source", "parquet") is read_parquet
    assert type(resolve_backend("lmdb")).__name__ == "LmdbBackend"


def test_a_registered_source_and_sink_are_used_by_name(tmp_path: Path) -> None:
    def numbers(count: int, *, column: str = "n") -> Source:
        source: Source = registry.load("source", "polars")(pl.DataFrame({column: range(count)}))
        return source

    registry.register("source", "numbers", numbers)  # the object itself
    registry.register("sink", "lines", "arrowflow.io.formats:write_ndjson")  # imported on use
    assert "numbers" in registry.available("source")
    assert registry.entry("sink", "lines").origin == "register()"

    flow = af.Flow("named")
    stream = flow.read("numbers", 5, column="x", name="five")
    assert stream.id == "five"
    assert stream.collect()["x"].to_list() == [0, 1, 2, 3, 4]
    stream.write("lines", str(tmp_path / "out"), mode="overwrite")
    flow.run(workers=0)
    assert sorted(pl.read_ndjson(str(tmp_path / "out" / "*.ndjson"))["x"]) == [0, 1, 2, 3, 4]


def test_read_and_write_by_built_in_name_equal_the_methods(tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text("k;v\n1;1\n2;2\n1;3\n3;4\n")
    flow = af.Flow("same")
    by_name = flow.read("csv", str(tmp_path / "in.csv"), separator=";")
    by_method = flow.read_csv(str(tmp_path / "in.csv"), separator=";")
    assert (by_name.id, by_method.id) == ("read_csv", "read_csv-2")
    assert_frame_equal_unordered(by_name.collect(), DATA)
    assert_frame_equal_unordered(by_method.collect(), DATA)
    by_name.write("parquet", str(tmp_path / "a"), compression="lz4")
    by_method.write_parquet(str(tmp_path / "b"), compression="lz4")
    flow.run(workers=0)
    for folder in ("a", "b"):
        assert_frame_equal_unordered(pl.read_parquet(str(tmp_path / folder / "*.parquet")), DATA)


def test_a_name_is_registered_once_unless_clobbered() -> None:
    with pytest.raises(
        af.PlanError,
        match=r"a sink plug-in named 'parquet' is already registered "
        r"\(built-in: 'arrowflow\.io\.formats:write_parquet'\); pass clobber=True",
    ):
        registry.register("sink", "parquet", "mypkg.fast:ParquetSink")

    def first() -> None: ...

    def second() -> None: ...

    registry.register("sink", "mine", first)
    assert registry.load("sink", "mine") is first
    with pytest.raises(af.PlanError, match=r"'mine' is already registered \(register\(\): "):
        registry.register("sink", "mine", second)
    assert registry.load("sink", "mine") is first
    registry.register("sink", "mine", second, clobber=True)
    assert registry.load("sink", "mine") is second  # the cached first one is dropped


def test_registration_checks_its_arguments() -> None:
    with pytest.raises(af.PlanError, match=r"unknown plug-in group 'sinks'; expected one of"):
        registry.register("sinks", "x", "mypkg:X")
    with pytest.raises(af.PlanError, match="unknown plug-in group 'formats'"):
        registry.available("formats")
    with pytest.raises(af.PlanError, match="must be a non-empty string"):
        registry.register("sink", "", "mypkg:X")
    with pytest.raises(af.PlanError, match=r"must be 'module:object', got 'mypkg\.X'"):
        registry.register("sink", "x", "mypkg.X")


def test_an_unknown_name_lists_the_registered_ones() -> None:
    registry.register("state", "mystore", "mypkg.store:Store")
    with pytest.raises(
        af.PlanError, match=r"no sink plug-in named 'delta'; registered: \[.*'parquet'.*\]"
    ):
        registry.load("sink", "delta")
    with pytest.raises(af.PlanError, match=r"no source plug-in named 'kafka'; registered: .*'csv'"):
        af.Flow("f").read("kafka", "localhost:9092")
    with pytest.raises(af.PlanError, match=r"no sink plug-in named 'delta'; registered: .*'ipc'"):
        af.Flow("f").from_polars(DATA).write("delta", "s3://lake/t")
    with pytest.raises(
        af.StateError, match=r"unknown state backend 'rocksdb'; expected one of \[.*'mystore'.*\]"
    ):
        af.Flow("f").from_polars(DATA).key_by("k").agg(n=pl.len()).collect(state="rocksdb")


def test_a_module_that_cannot_be_imported_says_what_to_install() -> None:
    registry.register("state", "fast", "af_no_such_module:Backend", extra="af-fast[lz4]")
    registry.register("sink", "fast", "af_no_such_module:Sink", extra="af-fast")
    registry.register("sink", "typo", "arrowflow.io.formats:write_parket")
    stream = af.Flow("f").from_polars(DATA)
    with pytest.raises(
        af.StateError,
        match=r"state backend 'fast' cannot be loaded: No module named 'af_no_such_module'; "
        r"run: pip install 'af-fast\[lz4\]'$",
    ):
        stream.key_by("k").agg(n=pl.len()).collect(state="fast")
    with pytest.raises(
        ImportError,
        match=r"the sink plug-in 'fast' \(af_no_such_module:Sink\) cannot be imported: "
        r"No module named 'af_no_such_module'; run: pip install 'af-fast'$",
    ):
        stream.write("fast", "anywhere")
    with pytest.raises(ImportError, match=r"module 'arrowflow\.io\.formats' has no 'write_parket'"):
        stream.write("typo", "anywhere")


def test_a_factory_must_build_a_source_sink_or_state_backend() -> None:
    registry.register("source", "wrong", lambda: 42)
    registry.register("sink", "wrong", lambda: "out.csv")
    registry.register("state", "wrong", dict)
    flow = af.Flow("f")
    with pytest.raises(
        af.PlanError, match=r"source format 'wrong' .* built a int, not an arrowflow"
    ):
        flow.read("wrong")
    with pytest.raises(af.PlanError, match=r"sink format 'wrong' .* built a str, not an arrowflow"):
        flow.from_polars(DATA).write("wrong")
    with pytest.raises(
        af.StateError, match=r"'wrong' \(<class 'dict'>, register\(\)\) made a dict"
    ):
        resolve_backend("wrong")


# A third-party distribution, installed the way pip installs one: a module and its
# *.dist-info folder (METADATA, entry_points.txt) in a folder on sys.path.
PLUGIN_MODULE = '''
"""A third-party arrowflow plug-in: a JSON-lines sink and a state backend that marks its use."""

import os

import polars as pl

from arrowflow.backends.memory import MemoryBackend
from arrowflow.sinks import Sink, SinkWriter


class JsonLinesSink(Sink):
    """Part files ``part-<checkpoint>-<worker>.jsonl`` in ``path``, staged in ``.staging``."""

    kind = "jsonlines"

    def __init__(self, path):
        self.path = path

    def open_writer(self, worker, parallelism, operator_id):
        return JsonLinesWriter(self.path, worker)

    def commit(self, checkpoint_id, staged):
        for names in staged:
            for name in names or []:
                staged_file = os.path.join(self.path, ".staging", name)
                if os.path.exists(staged_file):  # idempotent: a re-run finds it moved
                    os.replace(staged_file, os.path.join(self.path, name))


class JsonLinesWriter(SinkWriter):
    def __init__(self, path, worker):
        self.path, self.worker, self.frames = path, worker, []

    def write(self, batch):
        self.frames.append(batch)

    def prepare_commit(self, checkpoint_id):
        if not self.frames:
            return None
        os.makedirs(os.path.join(self.path, ".staging"), exist_ok=True)
        name = f"part-{checkpoint_id}-{self.worker}.jsonl"
        pl.concat(self.frames).write_ndjson(os.path.join(self.path, ".staging", name))
        self.frames = []
        return [name]


class MarkedBackend(MemoryBackend):
    """The memory backend, leaving a file in $AF_PLUGIN_MARKS for every store it opens."""

    name = "marked"

    def open_store(self, spec, key_groups, context):
        mark = f"{spec.name}-{key_groups.start}-{key_groups.stop}-{os.getpid()}"
        open(os.path.join(os.environ["AF_PLUGIN_MARKS"], mark), "w").close()
        return super().open_store(spec, key_groups, context)
'''

ENTRY_POINTS = """
[arrowflow.sink]
jsonlines = af_thirdparty:JsonLinesSink
parquet = af_thirdparty:JsonLinesSink

[arrowflow.state]
marked = af_thirdparty:MarkedBackend
broken = af_thirdparty_missing:Backend
"""

RUN = """
import json, sys
import polars as pl
import arrowflow as af
import arrowflow.registry as registry

flow = af.Flow("thirdparty")
data = pl.DataFrame({"k": [1, 2, 1, 3], "v": [1, 2, 3, 4]})
totals = flow.from_polars(data, splits=4).key_by("k").agg(total=pl.col("v").sum())
totals.write("jsonlines", sys.argv[1])
flow.run(workers=2, state="marked")
try:
    totals.collect(state="broken")
except af.StateError as exc:
    broken = str(exc)
print(json.dumps({
    "sinks": registry.available("sink"),
    "states": registry.available("state"),
    "jsonlines": registry.entry("sink", "jsonlines").origin,
    "parquet": registry.entry("sink", "parquet").origin,
    "broken": broken,
}))
"""


def _install_plugin(site: Path) -> None:
    (site / "af_thirdparty.py").write_text(textwrap.dedent(PLUGIN_MODULE))
    info = site / "af_thirdparty-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: af-thirdparty\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    (info / "RECORD").write_text("")


def test_a_third_party_distribution_registers_through_entry_points(tmp_path: Path) -> None:
    site, out, marks = tmp_path / "site", tmp_path / "out", tmp_path / "marks"
    site.mkdir()
    marks.mkdir()
    _install_plugin(site)
    env: dict[str, Any] = {**os.environ, "AF_PLUGIN_MARKS": str(marks)}
    env["PYTHONPATH"] = os.pathsep.join([str(site), *filter(None, [env.get("PYTHONPATH")])])
    done = subprocess.run(
        [sys.executable, "-c", RUN, str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert "jsonlines" in report["sinks"]
    assert {"marked", "broken", "memory"} <= set(report["states"])
    assert report["jsonlines"] == "entry point af-thirdparty"
    assert report["parquet"] == "built-in"  # an entry point never replaces a built-in name
    assert report["broken"] == (
        "state backend 'broken' cannot be loaded: No module named 'af_thirdparty_missing'; "
        "run: pip install 'af-thirdparty'"
    )
    # the sink wrote the rows, committed: nothing left staged
    assert_frame_equal_unordered(pl.read_ndjson(sorted(out.glob("part-*.jsonl"))), TOTALS)
    assert not list((out / ".staging").iterdir())
    # the state backend held the aggregation's state in both workers
    opened = sorted(p.name for p in marks.iterdir())
    assert len(opened) == 2 and all(name.startswith("agg-") for name in opened), opened
    assert len({name.rsplit("-", 1)[1] for name in opened}) == 2  # two worker processes


def test_the_python_blocks_of_docs_plugins_md_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/plugins.md's ```python blocks, in order, in one namespace (```py blocks are sketches)."""
    text = PLUGINS_MD.read_text()
    blocks = [
        (text.count("\n", 0, match.start()) + 2, match.group(1))
        for match in re.finditer(r"^```python\n(.*?)^```", text, re.S | re.M)
    ]
    assert len(blocks) >= 3, "docs/plugins.md shows no runnable example"
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__plugins_md__"}
    for line, code in blocks:
        exec(compile(code, f"docs/plugins.md:{line}", "exec"), namespace)
