"""The snapshot file writer shared by the backends: many files at once, checked as written."""

from __future__ import annotations

import hashlib
import io
import uuid

import fsspec
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.ipc
import pytest

from arrowflow.errors import StateError
from arrowflow.state import WRITE_THREADS, checked_write_many, ipc_bytes, read_ipc_bytes


@pytest.mark.parametrize("protocol", ["file", "memory"])
def test_many_files_land_whole_with_their_sizes_and_digests_in_order(
    protocol: str, tmp_path
) -> None:
    # memory:// is not local, so the writes go through the thread pool (more files than threads)
    fs = fsspec.filesystem(protocol)
    root = str(tmp_path) if protocol == "file" else f"/snap-{uuid.uuid4().hex}"
    rng = np.random.default_rng(7)
    payloads = [rng.bytes(int(rng.integers(0, 5000))) for _ in range(WRITE_THREADS * 3 + 1)]
    files = [(f"{root}/shared/s/{i % 5:03d}/{i:04d}.arrow", p) for i, p in enumerate(payloads)]
    checks = checked_write_many(fs, files)
    assert checks == [(len(p), hashlib.sha256(p).hexdigest()) for p in payloads]
    for path, payload in files:
        with fs.open(path, "rb") as handle:
            assert handle.read() == payload


def test_a_failed_write_is_a_state_error_naming_the_file() -> None:
    fs = fsspec.filesystem("memory")
    root = f"/snap-{uuid.uuid4().hex}"
    with fs.open(f"{root}/blocker", "wb") as handle:  # a file where a directory must go
        handle.write(b"x")
    files = [(f"{root}/ok/{i}.arrow", b"%d" % i) for i in range(12)]
    files.insert(5, (f"{root}/blocker/inside.arrow", b"y"))
    with pytest.raises(StateError, match=r"blocker/inside\.arrow"):
        checked_write_many(fs, files)


def test_ipc_bytes_reads_back_equal_in_polars_and_in_pyarrow() -> None:
    frame = pl.DataFrame(
        {
            "user": ["b", None, "a", "é"],
            "n": pl.Series([3, 1, None, 2], dtype=pl.UInt32),
            "x": [0.5, float("nan"), None, -0.0],
            "tag": pl.Series(["p", "q", "p", None], dtype=pl.Enum(["p", "q"])),
            "cat": pl.Series(["u", "v", "u", "w"], dtype=pl.Categorical),
            "items": [[1, 2], [], None, [3]],
            "d": pl.Series(["1.25", "2.50", None, "-3.75"]).str.to_decimal(scale=2),
            "__key_group": pl.Series([4, 0, 127, 4], dtype=pl.Int32),
        }
    )
    payload = ipc_bytes(frame)
    back = read_ipc_bytes(payload)
    assert back.schema == frame.schema
    assert back.equals(frame)
    table = pyarrow.ipc.open_file(pa.BufferReader(payload)).read_all()
    assert table.num_rows == 4
    assert table.column("user").to_pylist() == ["b", None, "a", "é"]
    assert pl.read_ipc(io.BytesIO(payload)).equals(frame)
    chunked = pl.concat([frame.head(1), frame.tail(3)], rechunk=False)
    assert read_ipc_bytes(ipc_bytes(chunked)).equals(frame)
