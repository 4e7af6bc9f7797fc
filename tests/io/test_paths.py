"""Which files a path names: files, globs, directories, lists, URLs; hidden names are skipped."""

from __future__ import annotations

import os
from pathlib import Path

import fsspec
import polars as pl
import pytest

import arrowflow as af
from arrowflow.io._fs import is_hidden, resolve_files

FRAME = pl.DataFrame({"k": list(range(6)), "s": list("abcdef")})


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """data/{a.parquet, b.parquet, sub/c.parquet, notes.txt, _SUCCESS, .staging/d.parquet, _tmp/e.parquet}"""
    root = tmp_path / "data"
    for rel, part in [
        ("a.parquet", 0),
        ("b.parquet", 1),
        ("sub/c.parquet", 2),
        (".staging/d.parquet", 3),
        ("_tmp/e.parquet", 4),
    ]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        FRAME.slice(part, 1).write_parquet(root / rel)
    (root / "notes.txt").write_text("not data")
    (root / "_SUCCESS").write_text("")
    return root


def names(urls: list[str], root: Path) -> list[str]:
    return [str(Path(u).relative_to(root)) for u in urls]


def test_directory_is_every_visible_file_with_the_format_suffix(tree: Path) -> None:
    found = resolve_files(str(tree), None, suffixes=(".parquet",))
    assert names(found, tree) == ["a.parquet", "b.parquet", "sub/c.parquet"]
    assert resolve_files(str(tree) + "/", None, suffixes=(".parquet",)) == found


def test_glob_skips_hidden_folders_below_its_root(tree: Path) -> None:
    assert names(resolve_files(str(tree / "*.parquet"), None), tree) == ["a.parquet", "b.parquet"]
    assert names(resolve_files(str(tree / "**" / "*.parquet"), None), tree) == [
        "a.parquet",
        "b.parquet",
        "sub/c.parquet",
    ]


def test_hidden_folders_above_the_given_path_do_not_hide_it(tmp_path: Path) -> None:
    root = tmp_path / "_work" / ".cache"
    root.mkdir(parents=True)
    FRAME.write_parquet(root / "x.parquet")
    assert resolve_files(str(root), None) == [str(root / "x.parquet")]
    assert resolve_files(str(root / "*.parquet"), None) == [str(root / "x.parquet")]


def test_lists_relative_paths_and_file_urls(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tree)
    found = resolve_files(["b.parquet", "*.parquet", f"file://{tree}/sub/c.parquet"], None)
    assert names(found, tree) == [
        "b.parquet",
        "a.parquet",
        "sub/c.parquet",
    ]  # each file once, in order


def test_is_hidden() -> None:
    assert is_hidden("/x/out/.staging/part-1.parquet", "/x/out")
    assert is_hidden("/x/out/_SUCCESS", "/x/out")
    assert not is_hidden("/x/_out/part-1.parquet", "/x/_out")
    assert is_hidden("/x/.part-1.parquet")
    assert not is_hidden("/x/.y/part-1.parquet")


def test_flow_reads_the_visible_files(tree: Path, workers: int, same_rows) -> None:
    got = af.Flow("tree").read_parquet(str(tree)).collect(workers=workers)
    same_rows(got, FRAME.slice(0, 3))


def test_memory_urls(same_rows) -> None:
    fs = fsspec.filesystem("memory")
    for index in range(3):
        with fs.open(f"/af-paths/in/part-{index}.csv", "wb") as handle:
            FRAME.slice(2 * index, 2).write_csv(handle)
    fs.pipe("/af-paths/in/_ignored.csv", b"k,s\n99,z\n")
    flow = af.Flow("memory")
    stream = flow.read_csv("memory://af-paths/in/*.csv", schema=FRAME.schema)
    same_rows(stream.collect(), FRAME)
    assert resolve_files("memory://af-paths/in", None)[0] == "memory:///af-paths/in/part-0.csv"


def test_os_pathlike(tree: Path, same_rows) -> None:
    got = (
        af.Flow("pathlike")
        .read_parquet([tree / "a.parquet", os.fspath(tree / "b.parquet")])
        .collect()
    )
    same_rows(got, FRAME.slice(0, 2))
