"""File sinks: only committed files are visible, staging is hidden, modes, idempotent commit,
recovery after a crash. The sink protocol is driven by hand here, as the coordinator and the
workers drive it, so each step can be checked."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

import arrowflow as af
from arrowflow.errors import SinkError
from arrowflow.io._fs import is_hidden
from arrowflow.io.filesinks import FileSink, part_checkpoint
from arrowflow.sinks import SinkWriter

FRAME = pl.DataFrame({"k": list(range(10)), "s": [f"row {i}" for i in range(10)]})


def visible(folder: Path) -> list[str]:
    return sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.is_file() and not is_hidden(str(p), str(folder))
    )


def staged(folder: Path) -> list[str]:
    return (
        sorted(p.name for p in (folder / ".staging").iterdir())
        if (folder / ".staging").exists()
        else []
    )


def read_committed(folder: Path) -> pl.DataFrame:
    files = sorted(folder.glob("*.parquet"))
    return (
        pl.concat([pl.read_parquet(p) for p in files])
        if files
        else pl.DataFrame(schema=FRAME.schema)
    )


def test_nothing_is_visible_before_commit(tmp_path: Path, same_rows) -> None:
    out = tmp_path / "out"
    sink = FileSink("parquet", str(out))
    sink.begin()
    writer = sink.open_writer(0, 1, "write_parquet")
    writer.write(FRAME.slice(0, 6))
    writer.write(FRAME.slice(6, 4))
    names = writer.prepare_commit(1)

    assert visible(out) == []
    assert staged(out) == sorted(names) and len(names) == 1
    assert all(is_hidden(str(out / ".staging" / n), str(out)) for n in names)
    with pytest.raises(af.errors.SourceError, match="holds no visible file"):
        af.Flow("early").read_parquet(str(out)).collect()

    sink.commit(1, [names])
    assert visible(out) == sorted(names) and staged(out) == []
    same_rows(af.Flow("late").read_parquet(str(out)).collect(), FRAME)
    same_rows(read_committed(out), FRAME)


def test_commit_is_idempotent(tmp_path: Path, same_rows) -> None:
    out = tmp_path / "out"
    sink = FileSink("parquet", str(out), rows_per_file=3)
    sink.begin()
    writer = sink.open_writer(0, 1, "w")
    writer.write(FRAME)
    names = writer.prepare_commit(1)
    assert len(names) == 4  # 10 rows, 3 per file
    # A crash in the middle of a commit: one file moved, the others not yet.
    (out / ".staging" / names[0]).rename(out / names[0])
    sink.commit(1, [names])
    sink.commit(1, [names])  # re-run from the manifest after another crash
    assert visible(out) == sorted(names)
    same_rows(read_committed(out), FRAME)


def test_commit_of_a_vanished_file_fails_clearly(tmp_path: Path) -> None:
    out = tmp_path / "out"
    sink = FileSink("parquet", str(out))
    sink.begin()
    writer = sink.open_writer(0, 1, "w")
    writer.write(FRAME)
    names = writer.prepare_commit(1)
    (out / ".staging" / names[0]).unlink()
    with pytest.raises(
        SinkError, match=r"staged file .* of checkpoint 1 is missing and was never committed"
    ):
        sink.commit(1, [names])


def test_restore_recommits_then_drops_staging_of_later_checkpoints(
    tmp_path: Path, same_rows
) -> None:
    out = tmp_path / "out"
    sink = FileSink("parquet", str(out))
    sink.begin()
    writer = sink.open_writer(0, 1, "w")
    per_checkpoint = {}
    for checkpoint, part in enumerate(
        [FRAME.slice(0, 3), FRAME.slice(3, 3), FRAME.slice(6, 4)], start=1
    ):
        writer.write(part)
        per_checkpoint[checkpoint] = writer.prepare_commit(checkpoint)
    sink.commit(1, [per_checkpoint[1]])
    # Crash after checkpoint 2's manifest but before its commit; checkpoint 3 never completed.
    # The runtime restores from 2: it commits 2 again from the manifest, then recovers.
    sink.commit(2, [per_checkpoint[2]])
    sink.recover(2)
    assert staged(out) == []
    sink.commit(2, [per_checkpoint[2]])  # commit stays idempotent after recovery
    assert visible(out) == sorted(per_checkpoint[1] + per_checkpoint[2])
    same_rows(read_committed(out), FRAME.slice(0, 6))

    # The restored run's writer stages for checkpoint 3 under a name never used before.
    again = sink.open_writer(0, 1, "w")
    again.write(FRAME.slice(6, 4))
    redo = again.prepare_commit(3)
    assert [part_checkpoint(n) for n in redo] == [3] and not set(redo) & set(per_checkpoint[3])
    sink.commit(3, [redo])
    same_rows(read_committed(out), FRAME)


def test_writer_flushed_early_names_the_next_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "out"
    sink = FileSink("ndjson", str(out), rows_per_file=4)
    sink.begin()
    sink.recover(7)  # a restored run: the next checkpoint is 8
    writer = sink.open_writer(3, 4, "w")
    writer.write(FRAME.slice(0, 5))  # flushes 4 rows before any checkpoint
    names = writer.prepare_commit(8)
    assert [part_checkpoint(n) for n in names] == [8, 8]
    assert all(n.startswith("part-00000008-0003-") and n.endswith(".ndjson") for n in names)


def test_mode_overwrite_replaces_only_part_files(tmp_path: Path, same_rows) -> None:
    out = tmp_path / "out"
    first = af.Flow("over")
    first.from_polars(FRAME.slice(0, 4), splits=2).write_parquet(str(out), rows_per_file=1)
    first.run(workers=0)
    old_parts = visible(out)
    assert len(old_parts) == 4
    (out / "_SUCCESS").write_bytes(b"")
    (out / ".staging").mkdir(exist_ok=True)
    (out / ".staging" / "part-00000009-0000-00000-deadbeef.parquet").write_bytes(
        b"left by a dead run"
    )
    # Part files of another file sink format are of the family too.
    (out / "part-00000003-0001-00000-0123abcd.csv").write_text("k\n1\n")
    flow = af.Flow("over")
    flow.from_polars(FRAME).write_parquet(str(out))
    flow.run(workers=0)
    names = visible(out)
    assert len(names) == 1 and names[0].startswith("part-00000001-") and names[0] not in old_parts
    same_rows(read_committed(out), FRAME)
    assert (out / "_SUCCESS").exists()
    assert staged(out) == []


def test_mode_overwrite_refuses_a_folder_holding_other_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = af.Flow("mine")
    first.from_polars(FRAME).write_parquet(str(out))
    first.run(workers=0)
    mine = visible(out)
    (out / "notes.txt").write_text("my notes")
    old = FRAME.slice(0, 3)
    old.write_parquet(out / "old.parquet")
    (out / "sub").mkdir()
    (out / "sub" / "part-00000001-0000-00000-deadbeef.parquet").write_bytes(b"not at the top")
    flow = af.Flow("over")
    flow.from_polars(FRAME.slice(3)).write_parquet(str(out))  # mode="overwrite" by default
    with pytest.raises(
        SinkError,
        match=r"holds 3 files that no arrowflow file sink wrote .*'notes\.txt'.*"
        r"'old\.parquet'.*mode='append'",
    ) as caught:
        flow.run(workers=0)
    assert "sub/part-00000001" in str(caught.value)
    # Nothing was deleted or written: the user's files, and the earlier part files, are all there.
    assert (out / "notes.txt").read_text() == "my notes"
    assert pl.read_parquet(out / "old.parquet").equals(old)
    assert visible(out) == sorted(
        [*mine, "notes.txt", "old.parquet", "sub/part-00000001-0000-00000-deadbeef.parquet"]
    )


def test_mode_append_keeps_and_adds(tmp_path: Path, same_rows) -> None:
    out = tmp_path / "out"
    for _ in range(2):  # the same flow twice: names never collide
        flow = af.Flow("append")
        flow.from_polars(FRAME, splits=2).write_parquet(str(out), mode="append", rows_per_file=4)
        flow.run(workers=0)
    same_rows(read_committed(out), pl.concat([FRAME, FRAME]))


def test_mode_error_refuses_a_directory_with_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    flow = af.Flow("err")
    flow.from_polars(FRAME).write_csv(str(out), mode="error")
    flow.run(workers=0)  # a missing directory is fine
    with pytest.raises(SinkError, match=r"already holds 1 files .*mode='overwrite'.*mode='append'"):
        flow.run(workers=0)
    assert len(visible(out)) == 1


@pytest.mark.parametrize("count", [3, 5])
def test_mode_error_names_the_first_three_files(tmp_path: Path, count: int) -> None:
    out = tmp_path / "out"
    out.mkdir()
    names = [f"{letter}.csv" for letter in "abcde"[:count]]
    for name in names:
        (out / name).write_text("x\n1\n")
    flow = af.Flow("err")
    flow.from_polars(FRAME).write_csv(str(out), mode="error")
    with pytest.raises(SinkError) as caught:
        flow.run(workers=0)
    more = ", ..." if count > 3 else ""
    assert f"already holds {count} files (a.csv, b.csv, c.csv{more}); " in str(caught.value)
    assert visible(out) == names


def test_mode_overwrite_names_at_most_five_foreign_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    for i in range(7):
        (out / f"note{i}.txt").write_text("mine")
    flow = af.Flow("over")
    flow.from_polars(FRAME).write_parquet(str(out))
    with pytest.raises(SinkError) as caught:
        flow.run(workers=0)
    shown = ", ".join(repr(f"note{i}.txt") for i in range(5))
    assert f"holds 7 files that no arrowflow file sink wrote ({shown}, ...); " in str(caught.value)


def test_mode_append_writes_beside_other_files(tmp_path: Path, same_rows) -> None:
    """append keeps whatever the folder holds, part files of its own or not."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    FRAME.slice(0, 3).write_parquet(out / "old.parquet")
    flow = af.Flow("append")
    flow.from_polars(FRAME.slice(3)).write_parquet(str(out), mode="append")
    flow.run(workers=0)
    assert (out / "notes.txt").read_text() == "my notes"
    same_rows(read_committed(out), FRAME)


def test_a_file_where_the_directory_should_be(tmp_path: Path) -> None:
    (tmp_path / "out").write_text("x")
    flow = af.Flow("file")
    flow.from_polars(FRAME).write_parquet(str(tmp_path / "out"))
    with pytest.raises(SinkError, match="is a file, not a directory; give a directory"):
        flow.run(workers=0)


def test_every_worker_writes_its_own_parts(tmp_path: Path, workers: int, same_rows) -> None:
    out = tmp_path / "out"
    flow = af.Flow("parts")
    flow.from_polars(FRAME, splits=4).filter(pl.col("k") >= 0).write_parquet(
        str(out), rows_per_file=2
    )
    flow.run(workers=workers, batch_size=3)
    names = visible(out)
    assert len(names) == len(set(names)) >= 5
    assert staged(out) == []
    assert {n.split("-")[2] for n in names} <= {f"{w:04d}" for w in range(max(workers, 1))}
    same_rows(read_committed(out), FRAME)


def test_memory_filesystem_round_trip(same_rows) -> None:
    import fsspec

    flow = af.Flow("mem")
    flow.from_polars(FRAME, splits=2).write_ipc("memory://af-sinks/out", rows_per_file=4)
    flow.run(workers=0)
    fs = fsspec.filesystem("memory")
    assert all(p.rsplit("/", 1)[-1].startswith("part-") for p in fs.find("/af-sinks/out"))
    same_rows(af.Flow("back").read_ipc("memory://af-sinks/out").collect(), FRAME)


@pytest.mark.parametrize(
    ("compression", "codec"),
    [
        (None, "ZSTD"),
        ("lz4", "LZ4"),
        ("snappy", "SNAPPY"),
        ("uncompressed", "UNCOMPRESSED"),
    ],
)
def test_parquet_parts_are_written_with_the_compression_asked_for(
    tmp_path: Path, workers: int, same_rows, compression: str | None, codec: str
) -> None:
    import pyarrow.parquet

    out = tmp_path / "out"
    flow = af.Flow("codecs")
    options = {} if compression is None else {"compression": compression}
    flow.from_polars(FRAME, splits=2).write_parquet(str(out), **options)
    flow.run(workers=workers, batch_size=4)
    files = sorted(out.glob("*.parquet"))
    assert files
    for path in files:
        meta = pyarrow.parquet.ParquetFile(path).metadata
        assert {
            meta.row_group(g).column(c).compression
            for g in range(meta.num_row_groups)
            for c in range(meta.num_columns)
        } == {codec}
    same_rows(read_committed(out), FRAME)


def test_ipc_parts_compressed_with_zstd_are_smaller_and_read_back(
    tmp_path: Path, same_rows
) -> None:
    repetitive = pl.DataFrame({"k": [1] * 50_000, "s": ["the same text"] * 50_000})
    sizes = {}
    for compression in ("uncompressed", "zstd"):
        flow = af.Flow("ipc-codecs")
        flow.from_polars(repetitive).write_ipc(str(tmp_path / compression), compression=compression)
        flow.run(workers=0)
        files = [p for p in (tmp_path / compression).iterdir() if p.is_file()]
        sizes[compression] = sum(p.stat().st_size for p in files)
        same_rows(pl.concat([pl.read_ipc(p) for p in files]), repetitive)
    assert sizes["zstd"] * 20 < sizes["uncompressed"], sizes


def test_unknown_compression_is_refused_when_the_flow_is_built(tmp_path: Path) -> None:
    flow = af.Flow("bad-codec")
    with pytest.raises(SinkError, match=r"compression=\.\.\.\) must be one of .*'zstd'.*got 'zip'"):
        flow.from_polars(FRAME).write_parquet(str(tmp_path / "a"), compression="zip")
    with pytest.raises(SinkError, match="compression_level"):
        flow.from_polars(FRAME).write_parquet(str(tmp_path / "b"), compression_level="high")  # type: ignore[arg-type]
    with pytest.raises(
        SinkError, match=r"zstd 1-22.*got 30"
    ):  # polars would refuse it only when writing
        flow.from_polars(FRAME).write_parquet(str(tmp_path / "b"), compression_level=30)
    with pytest.raises(
        SinkError, match="compression='snappy'"
    ):  # a level snappy would silently ignore
        flow.from_polars(FRAME).write_parquet(
            str(tmp_path / "b"), compression="snappy", compression_level=3
        )
    flow.from_polars(FRAME).write_parquet(
        str(tmp_path / "b"), compression="gzip", compression_level=9
    )
    with pytest.raises(SinkError, match="must be one of"):
        flow.from_polars(FRAME).write_ipc(str(tmp_path / "c"), compression="snappy")


# ---------------------------------------------------------------- the writer and the protocol
# Each test below is the reason a planted bug in io/filesinks.py fails (docs/mutation.md).


def started(
    out: Path, fmt: str = "parquet", worker: int = 0, **options: int
) -> tuple[FileSink, SinkWriter]:
    """A sink on ``out`` after ``begin()`` and the writer of ``worker``."""
    sink = FileSink(fmt, str(out), **options)
    sink.begin()
    return sink, sink.open_writer(worker, worker + 1, "w")


def name_fields(name: str) -> tuple[int, int, int]:
    """(checkpoint, worker, sequence) of a part file name, read without the module's parser."""
    _, checkpoint, worker, seq, *_ = name.split("-")
    return int(checkpoint), int(worker), int(seq)


def test_a_writer_writes_a_file_as_soon_as_it_holds_rows_per_file_rows(tmp_path: Path) -> None:
    out = tmp_path / "out"
    sink, writer = started(out, rows_per_file=4)
    writer.write(FRAME.slice(0, 2))
    assert staged(out) == []  # 2 rows of 4: still buffered
    writer.write(FRAME.slice(2, 2))
    first = staged(out)
    assert len(first) == 1  # exactly 4 rows: written now, not at the checkpoint
    assert pl.read_parquet(out / ".staging" / first[0]).equals(FRAME.slice(0, 4))
    writer.write(FRAME.slice(4, 3))
    assert staged(out) == first  # 3 rows buffered
    writer.write(FRAME.slice(7, 3))
    assert len(staged(out)) == 3  # 6 buffered rows reached 4: all written, as 4 + 2
    names = writer.prepare_commit(1)
    assert names == staged(out)  # nothing was left buffered
    heights = [pl.read_parquet(out / ".staging" / n).height for n in names]
    assert heights == [4, 4, 2]
    sink.commit(1, [names])
    assert pl.concat([pl.read_parquet(out / n) for n in names]).equals(FRAME)


def test_part_names_number_a_checkpoints_files_from_zero_in_write_order(tmp_path: Path) -> None:
    out = tmp_path / "out"
    sink, writer = started(out, "ipc", worker=2, rows_per_file=3)
    writer.write(FRAME.slice(0, 8))
    first = writer.prepare_commit(1)
    writer.write(FRAME.slice(8, 2))
    second = writer.prepare_commit(2)
    assert [name_fields(n) for n in first] == [(1, 2, 0), (1, 2, 1), (1, 2, 2)]
    assert [name_fields(n) for n in second] == [(2, 2, 0)]
    assert sorted(first) == first  # names sort in the order the rows were written
    sink.commit(1, [first])
    sink.commit(2, [second])
    written = pl.concat([pl.read_ipc(out / n) for n in sorted(visible(out))])
    assert written.equals(FRAME)


def test_a_fresh_run_flushes_early_into_checkpoint_one_even_after_an_earlier_recover(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    sink, writer = started(out, rows_per_file=4)
    writer.write(FRAME.slice(0, 4))  # no checkpoint yet: the file belongs to checkpoint 1
    assert [part_checkpoint(n) for n in staged(out)] == [1]
    sink.recover(7)
    sink.begin()  # the same sink object starting over: it resumes after nothing
    again = sink.open_writer(0, 1, "w")
    again.write(FRAME.slice(0, 4))
    assert [part_checkpoint(n) for n in staged(out)] == [1]


def test_an_attempt_names_early_files_after_its_first_checkpoint(tmp_path: Path) -> None:
    from arrowflow.sinks import JobIdentity

    out = tmp_path / "out"
    sink = FileSink("parquet", str(out), rows_per_file=4)
    # ids 1-4 were taken by earlier attempts on this checkpoint directory
    sink.attach(JobIdentity(tag="0123abcd", first_checkpoint=5, checkpointed=True))
    sink.begin()
    writer = sink.open_writer(1, 2, "w")
    writer.write(FRAME.slice(0, 3))
    writer.write(FRAME.slice(3, 2))  # 5 rows reached 4: written as 4 + 1 before any checkpoint
    early = staged(out)
    assert [name_fields(n) for n in early] == [(5, 1, 0), (5, 1, 1)]
    assert all("-0123abcd-" in n for n in early)
    writer.write(FRAME.slice(5, 2))
    names = writer.prepare_commit(5)
    assert [name_fields(n) for n in names] == [(5, 1, 0), (5, 1, 1), (5, 1, 2)]


def test_a_writer_recreates_the_staging_folder_it_needs(tmp_path: Path, same_rows) -> None:
    # A worker on another machine (or after the folder was cleaned) finds no .staging yet.
    import shutil

    out = tmp_path / "out"
    sink = FileSink("parquet", str(out))
    sink.begin()
    shutil.rmtree(out / ".staging")
    writer = sink.open_writer(0, 1, "w")
    writer.write(FRAME)
    names = writer.prepare_commit(1)
    sink.commit(1, [names])
    same_rows(read_committed(out), FRAME)


def test_a_failed_run_discards_what_it_staged_and_keeps_what_it_committed(
    tmp_path: Path, same_rows
) -> None:
    out = tmp_path / "out"
    sink, writer = started(out, rows_per_file=3)
    writer.write(FRAME.slice(0, 4))
    sink.commit(1, [writer.prepare_commit(1)])
    writer.write(FRAME.slice(4, 6))
    writer.prepare_commit(2)  # checkpoint 2 never completes
    assert len(staged(out)) == 2
    (out / ".staging" / "notes.txt").write_text("not a part file")
    sink.discard_staged()
    assert staged(out) == ["notes.txt"]  # only part files are the sink's to delete
    same_rows(read_committed(out), FRAME.slice(0, 4))


@pytest.mark.parametrize("name", ["notes.txt", "../part-00000001-0000-00000-abcd.parquet", 7])
def test_commit_refuses_a_staged_name_that_is_no_part_file(tmp_path: Path, name: object) -> None:
    # A damaged or crafted manifest must not make the sink move other files.
    out = tmp_path / "out"
    sink = FileSink("parquet", str(out))
    sink.begin()
    (out / ".staging" / "notes.txt").write_text("x")
    with pytest.raises(SinkError, match="which is not one of its part file names"):
        sink.commit(1, [[name]])
    assert (out / ".staging" / "notes.txt").exists() and visible(out) == []


def test_a_file_that_fails_to_write_leaves_no_partial_file(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _, writer = started(out, rows_per_file=1)
    unwritable = pl.DataFrame({"o": pl.Series([object()], dtype=pl.Object)})
    with pytest.raises(SinkError, match=r"cannot write .*ComputeError"):
        writer.write(unwritable)  # the file was opened before parquet refused the column
    assert staged(out) == []
