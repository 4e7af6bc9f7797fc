"""Frames as Arrow IPC bytes and back, for pipes between processes."""

from __future__ import annotations

import polars as pl


def frame_to_ipc(frames: pl.DataFrame | list[pl.DataFrame], *, last: int | None = None) -> bytes:
    """Frames (of one schema) as one Arrow IPC stream, for a pipe between processes.

    With ``last``, only their last ``last`` rows.

    Not ``pickle`` (polars' own serializer), nor ``pl.concat``: those run on polars' thread
    pool while this thread holds the GIL, and a frame that maps a shared-memory ring holds
    buffers whose release needs the GIL — a pool thread dropping one there deadlocks the
    process. pyarrow does all of it in the calling thread.
    """
    import pyarrow as pa

    tables = [f.to_arrow() for f in ([frames] if isinstance(frames, pl.DataFrame) else frames)]
    table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    if last is not None and table.num_rows > last:
        table = table.slice(table.num_rows - last)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def frame_from_ipc(payload: bytes) -> pl.DataFrame:
    import pyarrow as pa

    table = pa.ipc.open_stream(pa.py_buffer(payload)).read_all()
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    return frame
