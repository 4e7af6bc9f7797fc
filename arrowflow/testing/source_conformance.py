"""The conformance suite every source runs: the position rule of its split readers, and more.

A source's test module subclasses :class:`SourceConformance` and provides the ``case``
fixture: the source under test and what polars reads from the same input (the reference;
nothing compares a source with itself)::

    import polars as pl
    import pytest
    from arrowflow.io.files import FileSource
    from arrowflow.testing.source_conformance import SourceCase, SourceConformance

    class TestParquet(SourceConformance):
        @pytest.fixture
        def case(self, tmp_path):
            frame = pl.DataFrame({"n": range(100)})
            frame.write_parquet(tmp_path / "a.parquet")
            return SourceCase(FileSource("parquet", str(tmp_path)), pl.read_parquet(tmp_path))

What a source can do is declared in its case, not branched on: an unbounded source gives
``grow``, which adds input (appends to a tailed file, lands a new file) and returns the
rows it added.

The rules checked, each on every split and for several batch sizes:

- **position rule**: a reader opened at the position yielded after batch *k* yields exactly
  the batches after *k* (data and malformed rows), with the same positions; positions never
  repeat, survive a JSON round trip (checkpoints store them as JSON) and are the same in
  every read; a reader opened at the split's last position yields no row;
- **schema**: every data batch has exactly the declared :meth:`Source.schema`, also for the
  copy :meth:`Source.with_columns_pruned` returns, whose positions are the full source's;
- **splits**: split ids are unique and the same in every discovery and in a pickled copy
  (sources are pickled to the workers); the splits together hold every row of the input
  once (compared with polars reading the same files);
- **unbounded sources**: a reader caught up with its input yields empty batches, never a
  row twice; resumed from its last position after ``grow``, the source yields exactly the
  rows added, in new splits or after the old positions.

The suite needs ``pytest`` (``pip install 'arrowflow[dev]'``).
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from arrowflow.sources import MALFORMED_SCHEMA, Source, Split
from arrowflow.testing import assert_frame_equal_unordered

__all__ = ["Read", "SourceCase", "SourceConformance", "UnboundedSourceConformance", "read_split"]

#: Batches a reader of an unbounded split may yield before it must have caught up.
_MAX_UNBOUNDED_BATCHES = 10_000


@dataclass
class SourceCase:
    """A source under test and its reference.

    Parameters
    ----------
    source : Source
        The source under test, as a flow would hold it.
    expected : polars.DataFrame
        Every row of the input, as polars reads the same files (in any order).
    grow : callable or None
        For an unbounded source: adds input and returns the rows it added. Called with
        the number of times it was called before. None: the source is bounded.
    batch_sizes : tuple
        The batch sizes every rule is checked with (None: the source's own).
    pruned : list of str or None
        The columns the projection checks read (None: every second column).
    """

    source: Source
    expected: pl.DataFrame
    grow: Callable[[int], pl.DataFrame] | None = None
    batch_sizes: tuple[int | None, ...] = (None, 1, 7)
    pruned: list[str] | None = None


@dataclass
class Read:
    """What one reader of a split yielded: per batch its position, data and malformed rows."""

    positions: list[Any]
    data: list[pl.DataFrame]
    malformed: list[pl.DataFrame]

    def rows(self, schema: pl.Schema, start: int = 0) -> tuple[pl.DataFrame, pl.DataFrame]:
        data = [frame for frame in self.data[start:] if frame.height]
        bad = [frame for frame in self.malformed[start:] if frame.height]
        return (
            pl.concat(data) if data else pl.DataFrame(schema=schema),
            pl.concat(bad) if bad else pl.DataFrame(schema=MALFORMED_SCHEMA),
        )


def read_split(source: Source, split: Split, position: Any | None, batch_size: int | None) -> Read:
    """Read ``split`` from ``position`` to its end (an unbounded split: until it has caught up,
    the first batch without rows), closing the reader; empty trailing batches are left out."""
    schema = source.schema()
    read = Read([], [], [])
    reader = source.open_reader(split, position, batch_size=batch_size)
    try:
        for count, batch in enumerate(reader.batches()):
            if batch.data is None and batch.malformed is None:
                if source.bounded:
                    msg = f"{source.kind}: a bounded split yielded a batch without data"
                    raise AssertionError(msg)
                break  # caught up: nothing new yet
            if count > _MAX_UNBOUNDED_BATCHES:
                msg = f"{source.kind}: split {split.split_id!r} never caught up with its input"
                raise AssertionError(msg)
            data = batch.data if batch.data is not None else pl.DataFrame(schema=schema)
            if data.schema != schema:
                msg = (
                    f"{source.kind}: split {split.split_id!r} yielded a batch of schema {dict(data.schema)}, "
                    f"the source declares {dict(schema)}"
                )
                raise AssertionError(msg)
            bad = (
                batch.malformed
                if batch.malformed is not None
                else pl.DataFrame(schema=MALFORMED_SCHEMA)
            )
            read.positions.append(batch.position)
            read.data.append(data)
            read.malformed.append(bad)
    finally:
        reader.close()
    return read


def _json(position: Any) -> Any:
    try:
        return json.loads(json.dumps(position))
    except (TypeError, ValueError) as exc:
        msg = f"position {position!r} does not survive JSON (checkpoints store positions as JSON): {exc}"
        raise AssertionError(msg) from exc


def _same(got: pl.DataFrame, want: pl.DataFrame, where: str) -> None:
    try:
        assert_frame_equal(got, want, check_exact=True)
    except AssertionError as exc:
        msg = f"{where}: {exc}"
        raise AssertionError(msg) from None


def _check_position_rule(source: Source, split: Split, batch_size: int | None) -> Read:
    schema = source.schema()
    first = read_split(source, split, None, batch_size)
    positions = [_json(p) for p in first.positions]
    assert positions == first.positions, "a position changes in a JSON round trip"
    dumped = [json.dumps(p, sort_keys=True) for p in positions]
    assert len(set(dumped)) == len(dumped), (
        f"split {split.split_id!r}: a position repeats: {positions}"
    )
    again = read_split(source, split, None, batch_size)
    assert again.positions == first.positions, "positions differ between two reads of a split"
    for k, position in enumerate(positions):
        resumed = read_split(source, split, _json(position), batch_size)
        want_data, want_bad = first.rows(schema, k + 1)
        got_data, got_bad = resumed.rows(schema)
        where = f"split {split.split_id!r} resumed after batch {k} at {position!r}"
        _same(got_data, want_data, where)
        _same(got_bad, want_bad, f"{where}, malformed rows")
        assert resumed.positions == positions[k + 1 :], f"{where}: other positions"
    return first


class SourceConformance:
    """Subclass and provide the ``case`` fixture (a :class:`SourceCase`)."""

    @pytest.fixture
    def case(self) -> SourceCase:
        pytest.fail(f"{type(self).__name__}: provide a `case` fixture returning a SourceCase")

    # ------------------------------------------------------------------ the position rule

    def test_position_rule(self, case: SourceCase) -> None:
        for batch_size in case.batch_sizes:
            for split in case.source.discover_splits():
                _check_position_rule(case.source, split, batch_size)

    def test_reading_from_the_last_position_yields_nothing(self, case: SourceCase) -> None:
        schema = case.source.schema()
        for split in case.source.discover_splits():
            first = read_split(case.source, split, None, case.batch_sizes[-1])
            if not first.positions:
                continue
            rest = read_split(case.source, split, _json(first.positions[-1]), case.batch_sizes[-1])
            data, bad = rest.rows(schema)
            assert data.height == 0 and bad.height == 0, (
                f"split {split.split_id!r} read to its end and resumed yields {data.height} rows again"
            )

    # ------------------------------------------------------------------ schema and projection

    def test_every_batch_has_the_declared_schema(self, case: SourceCase) -> None:
        schema = case.source.schema()
        assert schema == case.expected.schema, "the declared schema differs from polars' reading"
        for batch_size in case.batch_sizes:
            for split in case.source.discover_splits():
                read_split(case.source, split, None, batch_size)  # checks every batch

    def test_a_pruned_copy_reads_the_same_rows_at_the_same_positions(
        self, case: SourceCase
    ) -> None:
        columns = case.pruned or case.source.schema().names()[::2]
        pruned = case.source.with_columns_pruned(columns)
        assert pruned.schema() == case.expected.select(columns).schema
        full_schema, schema = case.source.schema(), pruned.schema()
        for split in pruned.discover_splits():
            whole = read_split(case.source, split, None, case.batch_sizes[-1])
            part = _check_position_rule(pruned, split, case.batch_sizes[-1])
            assert part.positions == whole.positions, "projection changed the positions"
            data, _ = part.rows(schema)
            full, _ = whole.rows(full_schema)
            assert_frame_equal(data, full.select(columns), check_exact=True)

    # ------------------------------------------------------------------ splits

    def test_splits_are_disjoint_stable_and_cover_the_input(self, case: SourceCase) -> None:
        source = case.source
        splits = source.discover_splits()
        ids = [split.split_id for split in splits]
        assert len(ids) == len(set(ids)), f"split ids repeat: {ids}"
        assert [s.split_id for s in source.discover_splits()] == ids, "split ids changed"
        for split in splits:
            _json(split.info)
        shipped = pickle.loads(pickle.dumps(source))
        assert [s.split_id for s in shipped.discover_splits()] == ids, "a pickled copy differs"
        schema = source.schema()
        frames = [read_split(shipped, split, None, None).rows(schema)[0] for split in splits]
        got = pl.concat(frames) if frames else pl.DataFrame(schema=schema)
        assert_frame_equal_unordered(got, case.expected, check_exact=True)

    def test_declares_whether_it_grows(self, case: SourceCase) -> None:
        if case.source.bounded:
            assert case.grow is None, "a bounded source's case cannot grow it"
            assert not isinstance(self, UnboundedSourceConformance), (
                "a bounded source runs SourceConformance, not UnboundedSourceConformance"
            )
        else:
            assert case.grow is not None, "an unbounded source's case must say how to grow it"
            assert isinstance(self, UnboundedSourceConformance), (
                "an unbounded source runs UnboundedSourceConformance (its growth checks too)"
            )


class UnboundedSourceConformance(SourceConformance):
    """:class:`SourceConformance` plus the checks of an unbounded source (``case.grow`` set)."""

    def test_unbounded_resume_after_growth_yields_exactly_the_new_rows(
        self, case: SourceCase
    ) -> None:
        assert case.grow is not None, "an unbounded source's case must say how to grow it"
        source, schema = case.source, case.source.schema()
        assert not source.bounded
        # Where each split read so far ends, as a checkpoint would record it.
        positions: dict[str, Any] = {}
        seen, expected = pl.DataFrame(schema=schema), case.expected
        for round_ in range(3):
            for split in source.discover_splits():
                start = positions.get(split.split_id)
                read = read_split(source, split, None if start is None else _json(start), None)
                if read.positions:
                    positions[split.split_id] = read.positions[-1]
                    again = read_split(source, split, _json(read.positions[-1]), None)
                    assert again.rows(schema)[0].height == 0, (
                        f"split {split.split_id!r}, caught up, yielded rows again"
                    )
                seen = pl.concat([seen, read.rows(schema)[0]])
            assert_frame_equal_unordered(seen, expected, check_exact=True)
            if round_ < 2:
                expected = pl.concat([expected, case.grow(round_)])
