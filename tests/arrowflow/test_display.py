"""Rich display: the HTML/SVG of flows, streams and plans (``_repr_html_``).

Content tests read the HTML for operator ids, kinds, schemas and edge labels, check that
every SVG is well-formed XML and that no two operator boxes overlap. One test renders the
page in headless Chromium (Debian's ``chromium`` package; ``.ci/run`` installs it) and
checks the screenshot shows the graph, and the DOM holds the operator ids.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import struct
import subprocess
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

import polars as pl
import pytest

import arrowflow as af
from arrowflow._api.display import UNKNOWN_SCHEMA, flow_html, plan_html, plan_svg, stream_html
from arrowflow.errors import SchemaError
from arrowflow.testing import CollectingSink

SVG_NS = "{http://www.w3.org/2000/svg}"
DATA = pl.DataFrame({"k": [1, 2, 1], "v": [1.0, 2.0, 3.0], "name": ["a", "b", "c"]})


def sample_flow(path: Path) -> af.Flow:
    """read_parquet -> filter -> with_columns -> key_by("k").agg(...) -> write_parquet."""
    DATA.write_parquet(path / "in.parquet")
    flow = af.Flow("sample")
    (
        flow.read_parquet(str(path / "in.parquet"))
        .filter(pl.col("v") > 0)
        .with_columns(w=pl.col("v") * 2)
        .key_by("k")
        .agg(n=pl.len(), total=pl.col("w").sum())
        .write_parquet(str(path / "out"))
    )
    return flow


def svgs(html: str) -> list[ET.Element]:
    """Every <svg> of an HTML fragment, parsed as XML (fails on anything malformed)."""
    found = re.findall(r"<svg\b.*?</svg>", html, re.S)
    assert found, "no <svg> in the HTML"
    return [ET.fromstring(svg) for svg in found]


def op_boxes(svg: ET.Element) -> dict[str, tuple[float, float, float, float]]:
    """Operator id -> (x, y, width, height) of its box."""
    boxes = {}
    for group in svg.iter(f"{SVG_NS}g"):
        if group.get("class") == "op":
            rects = group.findall(f"{SVG_NS}rect")
            rect = rects[-1]  # the box itself (a highlighted one has a halo first)
            boxes[group.get("data-op")] = tuple(
                float(rect.get(a)) for a in ("x", "y", "width", "height")
            )
    return boxes


def assert_no_overlap(boxes: dict[str, tuple[float, float, float, float]]) -> None:
    for (a, (ax, ay, aw, ah)), (b, (bx, by, bw, bh)) in itertools.combinations(boxes.items(), 2):
        apart = ax + aw <= bx or bx + bw <= ax or ay + ah <= by or by + bh <= ay
        assert apart, f"boxes {a!r} and {b!r} overlap"


# ---------------------------------------------------------------- content


def test_plan_html_shows_ids_kinds_descriptions_and_schemas(tmp_path: Path) -> None:
    plan = sample_flow(tmp_path).plan()
    html = plan_html(plan)
    assert "Plan of flow &#x27;sample&#x27;: 5 operators, 1 sink, 1 exchange" in html
    assert plan.fingerprint in html
    for op in plan.ops:
        assert f'data-op="{op.id}"' in html
        assert f">{op.id}</text>" in html
        assert f">{op.kind}</text>" in html
    assert "hash partition by [&#x27;k&#x27;]" in html
    for column in (
        "k: Int64",
        "v: Float64",
        "name: String",
        "w: Float64",
        "n: UInt32",
        "total: Float64",
    ):
        assert f">{column}</text>" in html
    assert "reads columns" in html  # the projection pushed into the source
    (svg,) = svgs(html)
    assert svg.tag == f"{SVG_NS}svg"
    assert set(op_boxes(svg)) == {op.id for op in plan.ops}


def test_repr_html_of_flow_stream_keyed_stream_and_plan(tmp_path: Path) -> None:
    flow = af.Flow("reprs")
    src = flow.from_polars(DATA)
    keyed = src.key_by("k")
    totals = keyed.agg(total=pl.col("v").sum())
    totals.write_to(CollectingSink(), name="out")

    flow_view = flow._repr_html_()
    assert flow_view.startswith('<div class="arrowflow-view arrowflow-flow">')
    assert "Flow &#x27;reprs&#x27;: 3 operators, 1 sink" in flow_view
    assert "<details><summary>physical plan (4 operators)</summary>" in flow_view
    assert 'class="arrowflow-view arrowflow-plan"' in flow_view

    stream_view = totals._repr_html_()
    assert (
        "Stream &#x27;agg&#x27; (agg) of flow &#x27;reprs&#x27;: 2 operators up to it"
        in stream_view
    )

    keyed_view = keyed._repr_html_()
    assert "keyed by [&#x27;k&#x27;]" in keyed_view
    assert 'data-op="from_polars"' in keyed_view and 'data-op="agg"' not in keyed_view

    plan_view = flow.plan()._repr_html_()
    assert plan_view.startswith('<div class="arrowflow-view arrowflow-plan">')
    assert 'data-op="agg.exchange"' in plan_view


def test_text_is_escaped_everywhere() -> None:
    nasty = "<b>x&y</b>"
    flow = af.Flow("escape")
    out = flow.from_polars(pl.DataFrame({nasty: [1], "k": [1]})).filter(pl.col(nasty) > 0)
    out.key_by("k").agg(total=pl.col(nasty).sum()).write_to(CollectingSink())
    for html in (flow_html(flow), stream_html(out), plan_html(flow.plan())):
        assert nasty not in html
        assert "&lt;b&gt;x&amp;y&lt;/b&gt;: Int64" in html
        svgs(html)  # still well-formed


def test_key_by_draws_an_exchange_edge_labelled_with_the_keys() -> None:
    flow = af.Flow("keyed")
    flow.from_polars(DATA).key_by("k", "name").agg(n=pl.len()).write_to(CollectingSink())
    logical = flow_html(flow).split("<details>")[0]
    assert 'class="edge exchange"' in logical and 'stroke-dasharray="7 4"' in logical
    assert ">key_by k, name</text>" in logical
    physical = plan_svg(flow.plan())
    assert 'data-op="agg.exchange"' in physical and ">exchange</text>" in physical
    assert 'class="edge exchange"' in physical and ">hash by k, name</text>" in physical
    # the exchange's input is an ordinary edge; only the partitioned one is dashed
    assert physical.count('class="edge exchange"') == 1


def test_side_outputs_are_drawn_as_labelled_edges() -> None:
    events = pl.DataFrame({"ts": [1, 2], "user": [1, 2], "amount": [1.0, 2.0]}).with_columns(
        pl.col("ts").cast(pl.Datetime("ms"))
    )
    flow = af.Flow("sides")
    src = flow.from_polars(events)
    windows = (
        src.with_watermark("ts", delay="5s")
        .key_by("user")
        .window(af.tumbling("60s"))
        .agg(n=pl.len())
    )
    windows.write_to(CollectingSink(), name="windows_out")
    windows.side_output("late").write_to(CollectingSink(), name="late_out")
    src.side_output("malformed").write_to(CollectingSink(), name="bad_rows")

    logical = flow_html(flow).split("<details>")[0]
    assert 'data-op="window.late"' in logical and 'data-op="from_polars.malformed"' in logical
    assert logical.count('class="edge side"') == 2
    assert ">late</text>" in logical and ">malformed</text>" in logical
    assert "Datetime[ms]" in logical and ">window_start: Datetime[ms]</text>" in logical

    physical = plan_svg(flow.plan())
    assert (
        physical.count('class="edge side"') == 2
    )  # window[late] -> late_out, source[malformed] -> bad_rows
    assert ">late</text>" in physical and ">malformed</text>" in physical
    assert "window.late -&gt;" not in physical  # side outputs are ports in the plan, not operators


def test_a_flow_without_sinks_renders_without_a_plan() -> None:
    flow = af.Flow("nosinks")
    flow.from_polars(DATA).select("k").with_columns(z=pl.col("k") + 1)
    html = flow_html(flow)
    assert "Flow &#x27;nosinks&#x27;: 3 operators, 0 sinks" in html
    assert "<details>" not in html
    assert set(op_boxes(svgs(html)[0])) == {"from_polars", "select", "with_columns"}
    assert ">z: Int64</text>" in html


def test_an_empty_flow_renders() -> None:
    html = af.Flow("empty")._repr_html_()
    assert "0 operators, 0 sinks" in html and "(no operators)" in html
    svgs(html)


def test_unknown_schemas_render_and_the_plan_error_is_shown(tmp_path: Path) -> None:
    def needs_rows(batch: pl.DataFrame) -> pl.DataFrame:
        return batch.with_columns(first=pl.lit(batch["v"][0]))  # fails on the empty probe batch

    flow = af.Flow("unknown")
    later = flow.read_parquet(
        str(tmp_path / "not-there-yet" / "*.parquet")
    )  # no files, no schema yet
    later.filter(pl.col("v") > 0).write_to(CollectingSink(), name="later_out")
    # The source's schema is known only when planning, so the probe of map_batches is left for then.
    probed = later.map_batches(needs_rows)
    probed.select("k")
    DATA.write_parquet(tmp_path / "in.parquet")
    present = flow.read_parquet(str(tmp_path / "in.parquet"), name="present")  # footer read now
    with pytest.raises(SchemaError, match="could not be run on an empty batch"):
        present.map_batches(needs_rows)  # a known schema: the probe runs as the step is added
    html = flow_html(flow)
    # read_parquet, filter, later_out (no files yet); map_batches, select (the probe fails)
    assert html.count(f">{UNKNOWN_SCHEMA}</text>") == 5
    assert ">v: Float64</text>" in html  # the present file's schema
    assert "map_batches(needs_rows)" in html
    assert 'data-op="map_batches"' in html and 'data-op="select"' in html
    assert (
        '<div class="af-error">' in html
    )  # the plan needs the missing files: its error, not a crash
    stream_view = stream_html(probed)
    assert f"output schema: {UNKNOWN_SCHEMA}" in stream_view
    svgs(html)


def test_a_big_flow_renders_every_operator_without_overlaps() -> None:
    flow = af.Flow("big")
    heads = [flow.from_polars(DATA, name=f"src{i}") for i in range(3)]
    streams = []
    for i, head in enumerate(heads):
        step = head
        for j in range(5):
            step = step.with_columns(**{f"c{i}{j}": pl.col("v") * j}, name=f"wc{i}_{j}")
        streams.append(step.select("k", "v", name=f"sel{i}"))
    merged = streams[0].union(*streams[1:], name="merged")
    merged.key_by("k").agg(total=pl.col("v").sum(), name="totals").write_to(
        CollectingSink(), name="out_totals"
    )
    merged.filter(pl.col("v") > 1, name="big_v").write_to(CollectingSink(), name="out_big")
    heads[0].filter(pl.col("k") == 1, name="early").write_to(CollectingSink(), name="out_early")
    wide = flow.from_polars(pl.DataFrame({f"col{i}": [i] for i in range(20)}), name="wide")
    wide.write_to(CollectingSink(), name="out_wide")
    assert len(flow.nodes) >= 30

    html = flow_html(flow)
    assert f"Flow &#x27;big&#x27;: {len(flow.nodes)} operators, 4 sinks" in html
    logical, physical = svgs(html)
    assert set(op_boxes(logical)) == {node.id for node in flow.nodes}
    assert set(op_boxes(physical)) == {op.id for op in flow.plan().ops}
    assert_no_overlap(op_boxes(logical))
    assert_no_overlap(op_boxes(physical))
    assert ">+13 more</text>" in html  # 20 columns: 7 shown, then the count of the rest


def test_stream_html_shows_its_ancestors_highlighted_with_a_schema_table() -> None:
    flow = af.Flow("part")
    src = flow.from_polars(DATA)
    wanted = src.filter(pl.col("v") > 1).select("k", "v")
    src.key_by("k").agg(n=pl.len()).write_to(CollectingSink())
    html = stream_html(wanted)
    (svg,) = svgs(html.split("<details>")[0])
    assert set(op_boxes(svg)) == {"from_polars", "filter", "select"}
    assert html.count('stroke="#d97706"') == 1  # one highlighted box: the stream's
    assert "<tr><td>k</td><td>Int64</td></tr><tr><td>v</td><td>Float64</td></tr>" in html
    assert "<details><summary>physical plan (2 operators)</summary>" in html


def test_html_is_self_contained() -> None:
    flow = af.Flow("offline")
    flow.from_polars(DATA).key_by("k").agg(n=pl.len()).write_to(CollectingSink())
    html = flow_html(flow)
    assert "<script" not in html and "<link" not in html and "@import" not in html
    assert re.findall(r"https?://[^\s\"']+", html) == ["http://www.w3.org/2000/svg"] * html.count(
        "<svg "
    )
    assert re.findall(r"url\((?!#)", html) == []


# ---------------------------------------------------------------- rendered in Chromium


def read_png(path: Path) -> tuple[int, int, int, list[bytes]]:
    """(width, height, bytes per pixel, rows) of an 8-bit, non-interlaced PNG: stdlib only."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    pos, idat = 8, []
    width = height = bpp = 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        chunk = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", chunk)
            assert depth == 8 and interlace == 0, "only 8-bit non-interlaced PNGs are decoded here"
            bpp = {0: 1, 2: 3, 4: 2, 6: 4}[color]
        elif kind == b"IDAT":
            idat.append(chunk)
        pos += 12 + length
    raw = zlib.decompress(b"".join(idat))
    stride = width * bpp
    prev = bytearray(stride)
    rows = []
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        if kind == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 255
        elif kind == 2:
            line = bytearray((a + b) & 255 for a, b in zip(line, prev, strict=True))
        elif kind == 3:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 255
        elif kind == 4:
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b, c = prev[i], (prev[i - bpp] if i >= bpp else 0)
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return width, height, bpp, rows


def painted_pixels(path: Path) -> tuple[int, int]:
    """(pixels that are not the white page background, all pixels) of a screenshot."""
    width, height, bpp, rows = read_png(path)
    channels = min(bpp, 3)
    painted = 0
    for row in rows:
        for x in range(0, width * bpp, bpp):
            if any(row[x + c] < 235 for c in range(channels)):
                painted += 1
    return painted, width * height


def chromium() -> str:
    found = shutil.which("chromium") or (
        "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None
    )
    if found is None:
        pytest.skip(
            "Chromium is not installed (Debian: apt-get install chromium); .ci/run installs it"
        )
    return found


def run_chromium(
    binary: str, page: Path, profile: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    command = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--window-size=1400,900",
        "--hide-scrollbars",
        *extra,
        page.as_uri(),
    ]
    env = {**os.environ, "HOME": str(profile)}
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env, check=False)
    assert done.returncode == 0, f"chromium failed ({done.returncode}): {done.stderr[-2000:]}"
    return done


def screenshots_with_and_without_svg(
    binary: str, fragment: str, tmp_path: Path, name: str
) -> tuple[Path, dict[str, tuple[int, int]]]:
    """Screenshots of the fragment's page and of the same page with its SVGs taken out (what
    paints without them is the frame and the text): painted and all pixels of each."""
    page = tmp_path / f"{name}.html"
    page.write_text(
        f"<!doctype html><html><head><meta charset='utf-8'></head><body>{fragment}</body></html>"
    )
    without = re.sub(r"<svg\b.*?</svg>", "<div></div>", fragment, flags=re.S)
    control = tmp_path / "control.html"
    control.write_text(
        f"<!doctype html><html><head><meta charset='utf-8'></head><body>{without}</body></html>"
    )
    shots = {}
    for label, source in ((name, page), ("control", control)):
        png = tmp_path / f"{label}.png"
        run_chromium(binary, source, tmp_path / f"profile-{label}", f"--screenshot={png}")
        assert png.exists(), f"chromium wrote no screenshot of {source.name}"
        shots[label] = painted_pixels(png)
    return page, shots


def test_the_flow_renders_in_headless_chromium(tmp_path: Path) -> None:
    binary = chromium()
    flow = sample_flow(tmp_path)
    fragment = flow_html(flow)
    page, shots = screenshots_with_and_without_svg(binary, fragment, tmp_path, "graph")

    painted, total = shots["graph"]
    assert total == 1400 * 900
    assert painted > 0.03 * total, f"the graph page paints only {painted} of {total} pixels"
    assert painted > 4 * shots["control"][0] + 10_000, (
        f"the graph adds too little: {painted} painted pixels with it, {shots['control'][0]} without"
    )

    dom = run_chromium(binary, page, tmp_path / "profile-dom", "--dump-dom").stdout
    for op_id in ("read_parquet", "filter", "agg", "agg.exchange", "write_parquet"):
        assert f'data-op="{op_id}"' in dom, f"{op_id!r} is not in the rendered DOM"
    assert "<svg" in dom and "k: Int64" in dom


def test_the_job_view_renders_in_headless_chromium(tmp_path: Path) -> None:
    """A finished job's HTML (what a notebook shows): its operator table and its two charts
    paint, and the page holds the operator ids and the numbers."""
    import time

    from arrowflow.testing import CollectingSink

    binary = chromium()

    def slow(batch: pl.DataFrame) -> pl.DataFrame:
        time.sleep(0.02)
        return batch

    flow = af.Flow("viewed")
    frame = pl.DataFrame({"k": [i % 13 for i in range(40_000)], "v": list(range(40_000))})
    flow.from_polars(frame, splits=60).map_batches(slow).key_by("k").agg(n=pl.len()).write_to(
        CollectingSink()
    )
    job = flow.start(workers=0, checkpoint_dir=str(tmp_path / "ckpt"), checkpoint_every="200ms")
    job.wait(120)
    assert job.history().height >= 3
    page, shots = screenshots_with_and_without_svg(binary, job._repr_html_(), tmp_path, "job")
    assert shots["control"][0] > 5_000, "the table and the header do not paint"
    assert shots["job"][0] > shots["control"][0] + 1_500, f"the charts add too little: {shots}"
    dom = run_chromium(binary, page, tmp_path / "profile-dom", "--dump-dom").stdout
    for text in (
        "from_polars",
        "map_batches",
        "agg",
        "40,000",
        "finished",
        "throughput, rows/s",
        "last checkpoint",
    ):
        assert text in dom, f"{text!r} is not in the rendered page"
