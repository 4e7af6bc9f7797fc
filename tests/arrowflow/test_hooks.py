"""Declared hooks: every hook the engine calls is declared on its interface with a default,
and the engine calls it directly (no duck typing): a source's polling and age bound, the
enumerator's ``not_before``, a sink writer's ``bind``/``satisfied``/``flush``, an
operator's ``tick``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import polars as pl

import arrowflow as af
from arrowflow._runtime.operators import Operator
from arrowflow._runtime.splits import SplitEnumerator
from arrowflow.sinks import Sink, SinkWriter
from arrowflow.sources import Source, SourceBatch, Split, SplitReader
from arrowflow.testing import CollectingSink


def test_the_interfaces_declare_every_hook_with_its_default() -> None:
    assert Source.poll_interval_s == 1.0
    assert Source.max_split_age_s is None
    assert isinstance(Source.schema_is_static, property)
    assert isinstance(SinkWriter.satisfied, property)
    for hook in (SinkWriter.bind, SinkWriter.flush, Operator.tick):
        assert hook.__doc__ and "Called" in hook.__doc__


class _Nothing(SplitReader):
    def batches(self) -> Iterator[SourceBatch]:
        return iter(())


class AgedSource(Source):
    """An unbounded source with an age bound that records how it is asked for splits."""

    bounded = False
    max_split_age_s = 10.0

    def __init__(self) -> None:
        self.asked: list[float | None] = []

    def schema(self) -> pl.Schema:
        return pl.Schema({"n": pl.Int64})

    def discover_splits(self, *, not_before: float | None = None) -> list[Split]:
        self.asked.append(not_before)
        return [Split(f"file-{t}", {"mtime": float(t)}) for t in (100, 200)]

    def open_reader(self, split: Split, position: Any, *, batch_size: int | None) -> SplitReader:
        return _Nothing()


def test_the_enumerator_keeps_not_before_and_passes_it_to_discover_splits() -> None:
    source = AgedSource()
    flow = af.Flow("aged")
    flow.source(source, name="files").write_to(CollectingSink())
    plan = flow.plan()
    planned = plan.op("files").params["source"]
    enumerator = SplitEnumerator(plan)
    assert planned.asked == [None]  # the first poll knows no file yet
    enumerator.discover()  # the files found and not finished are kept, the oldest is 100
    for split_id in ("file-100", "file-200"):
        enumerator.split_done("files", split_id)
    enumerator.discover()
    assert planned.asked == [None, 100.0, 200.0 - 10.0]
    assert "not_before" not in vars(planned)  # the enumerator's state, not the source's


class FlushCounting(Sink):
    def __init__(self) -> None:
        self.writers: list[_FlushWriter] = []

    def open_writer(self, worker: int, parallelism: int, operator_id: str) -> SinkWriter:
        writer = _FlushWriter()
        self.writers.append(writer)
        return writer

    def commit(self, checkpoint_id: int, staged: list[Any]) -> None:
        pass


class _FlushWriter(SinkWriter):
    """Overrides only ``flush``: no ``bind``, no ``satisfied``."""

    def __init__(self) -> None:
        self.flushed = 0

    def write(self, batch: pl.DataFrame) -> None:
        pass

    def prepare_commit(self, checkpoint_id: int) -> Any:
        return None

    def flush(self) -> None:
        self.flushed += 1


def test_every_writer_is_flushed_with_the_metrics() -> None:
    sink = FlushCounting()
    flow = af.Flow("flushes")
    flow.from_polars(pl.DataFrame({"n": range(10)})).write_to(sink)
    flow.run(workers=0, progress=False)
    assert sink.writers and all(writer.flushed >= 1 for writer in sink.writers)
