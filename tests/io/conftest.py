"""Fixtures for the connector tests: a real S3 (moto_server on loopback) and small helpers.

Every check compares arrowflow with polars reading or writing the same bytes; the helpers
here only put frames in a canonical row order and drive a source's readers directly. They
are fixtures (pytest runs with ``--import-mode=importlib``, so test modules cannot import
this file).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from arrowflow.sources import Source


def canonical(frame: pl.DataFrame) -> pl.DataFrame:
    """Rows sorted by every column, so frames compare whatever order the rows came in."""
    if frame.height < 2 or not frame.width:
        return frame
    return frame.sort(frame.columns, nulls_last=True, maintain_order=True)


def assert_same_rows(got: pl.DataFrame, expected: pl.DataFrame) -> None:
    assert_frame_equal(canonical(got), canonical(expected))


def read_source(
    source: Source, *, batch_size: int | None = None
) -> tuple[pl.DataFrame, pl.DataFrame | None]:
    """Every data row and every malformed row of a source, read split by split in this process."""
    data, bad = [], []
    for split in source.discover_splits():
        for batch in source.open_reader(split, None, batch_size=batch_size).batches():
            if batch.data is not None:
                data.append(batch.data)
            if batch.malformed is not None:
                bad.append(batch.malformed)
    frame = pl.concat(data, how="vertical") if data else pl.DataFrame(schema=source.schema())
    return frame, (pl.concat(bad) if bad else None)


@pytest.fixture(name="same_rows", scope="session")
def same_rows_fixture() -> Any:
    """``same_rows(got, expected)``: equal frames up to row order (polars' assert_frame_equal)."""
    return assert_same_rows


@pytest.fixture(name="read_all", scope="session")
def read_all_fixture() -> Any:
    """``read_all(source, batch_size=None) -> (data, malformed)``, read in this process."""
    return read_source


# ---------------------------------------------------------------------------- S3 (moto)
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A moto S3 server on a free loopback port for the whole session, with bucket ``arrowflow``.

    Yields the ``storage_options`` that reach it; stops the server afterwards.
    """
    pytest.importorskip("s3fs")
    executable = shutil.which("moto_server") or str(Path(sys.executable).with_name("moto_server"))
    if not Path(executable).exists():
        pytest.skip("moto_server is not installed (pip install 'moto[server]')")
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [executable, "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=out
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(endpoint, timeout=1):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"moto_server did not start: {log.read_text()[-2000:]}")
                time.sleep(0.1)
        options = {"endpoint_url": endpoint, "key": "testing", "secret": "testing"}
        import s3fs

        s3fs.S3FileSystem(**options, skip_instance_cache=True).mkdir("arrowflow")
        yield options
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@pytest.fixture
def s3(
    s3_server: dict[str, Any], request: pytest.FixtureRequest
) -> tuple[Any, str, dict[str, Any]]:
    """(filesystem, a fresh ``s3://`` folder for this test, storage_options)."""
    import s3fs

    fs = s3fs.S3FileSystem(**s3_server, skip_instance_cache=True)
    folder = f"arrowflow/{request.node.name.replace('[', '_').replace(']', '')}-{os.getpid()}-{time.time_ns()}"
    return fs, f"s3://{folder}", s3_server
