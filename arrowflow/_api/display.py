"""Rich display of flows, streams and plans: self-contained HTML with an inline SVG graph.

``Flow._repr_html_``, ``Stream._repr_html_``, ``KeyedStream._repr_html_`` and
``Plan._repr_html_`` call the functions here, so a notebook shows the graph of operators
with their ids, kinds and output schemas. ``explain()`` stays the plain-text view.

The output is one ``<div class="arrowflow-...">`` with a scoped ``<style>`` and an inline
``<svg>``: no JavaScript, no external CSS, fonts or network. Every piece of user text
(operator ids, column names, expressions) goes through :func:`html.escape`.

Showing a flow computes its schemas, as ``explain()`` does: a file source may read its
metadata. Nothing here raises: an operator whose schema cannot be known before the run
shows "schema unknown until run", and a plan that cannot be built shows its error.

Layout, computed here in Python (a small Sugiyama-style layering):

1. layers by longest path from the sources (top to bottom);
2. an edge that skips layers passes through invisible points in the layers between, so it
   never crosses a box;
3. order within a layer by the barycenter of the neighbours in the layer above, then below;
4. x positions: each box as close as possible to the mean of its neighbours, without
   overlapping (an isotonic regression per layer, a few sweeps down and up).

Example::

    >>> import arrowflow as af, polars as pl
    >>> stream = af.Flow("shown").from_polars(pl.DataFrame({"k": [1]})).filter(pl.col("k") > 0)
    >>> html = stream._repr_html_()
    >>> "from_polars" in html and "k: Int64" in html
    True
"""

from __future__ import annotations

import html
import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import polars as pl

from arrowflow._graph.kinds import kind_of
from arrowflow._graph.nodes import Node
from arrowflow._plan import MAIN, Plan, build_plan, describe_op, kind_named, set_html_renderer

if TYPE_CHECKING:
    from arrowflow._api.flow import Flow, Stream

SCHEMA_LINES = 8  # columns shown per box; the rest as "+N more"
UNKNOWN_SCHEMA = "schema unknown until run"

# Box geometry (px). Text is monospace, so a character count gives its width.
BOX_W = 300
CHAR_W = 6.7  # DejaVu Sans Mono / Menlo at 11px
TEXT_CHARS = int((BOX_W - 16) / CHAR_W)
HEAD_H = 22
LINE_H = 14
LAYER_GAP = 72
BOX_GAP = 28
DUMMY_W = 12
MARGIN = 16
FONT = "DejaVu Sans Mono, Menlo, Consolas, monospace"

# category -> (fill, stroke, legend text)
COLORS = {
    "source": ("#e0f2fe", "#0369a1", "source"),
    "stateless": ("#ecfdf5", "#047857", "stateless"),
    "exchange": ("#fff7ed", "#c2410c", "exchange"),
    "keyed": ("#f5f3ff", "#6d28d9", "keyed / stateful"),
    "sink": ("#f1f5f9", "#334155", "sink"),
}
EDGE_COLORS = {"main": "#64748b", "exchange": "#c2410c", "side": "#b91c1c"}
HIGHLIGHT = "#d97706"

_svg_ids = itertools.count(1)  # distinct marker ids when several graphs share a page


def category(kind: str) -> str:
    """Color family of an operator kind (logical or physical): its kind's ``category``."""
    found = kind_named(kind)
    return found.category if found is not None else "stateless"


# ---------------------------------------------------------------- graph model


@dataclass
class _Box:
    key: str
    label: str
    kind: str
    description: str
    schema: pl.Schema | None  # None: unknown until the flow runs
    highlight: bool = False
    # layout
    layer: int = 0
    x: float = 0.0
    y: float = 0.0
    w: float = BOX_W
    h: float = 0.0
    floor: float = 0.0  # bottom of the box's layer: edges leave from there
    dummy: bool = False


@dataclass
class _Link:
    src: str
    dst: str
    style: str = "main"  # main | exchange | side
    start_label: str | None = None  # near the upstream end: a side output's name
    end_label: str | None = None  # near the downstream end: the exchange keys
    path: list[str] = field(default_factory=list)  # keys of the layout's pass-through points


def _short_dtype(dtype: Any) -> str:
    if isinstance(dtype, pl.Datetime):
        return f"Datetime[{dtype.time_unit}{', ' + dtype.time_zone if dtype.time_zone else ''}]"
    if isinstance(dtype, pl.Duration):
        return f"Duration[{dtype.time_unit}]"
    if isinstance(dtype, pl.List):
        return f"List[{_short_dtype(dtype.inner)}]"
    if isinstance(dtype, pl.Struct):
        return f"Struct[{len(dtype.fields)} fields]"
    return str(dtype)


def _clip(text: str, chars: int) -> str:
    return text if len(text) <= chars else text[: max(chars - 1, 0)] + "…"


def _wrap(text: str, chars: int, lines: int) -> list[str]:
    """Up to ``lines`` lines of ``chars``, cut at spaces where possible; the last one clipped."""
    out: list[str] = []
    rest = text.strip()
    while rest and len(out) < lines - 1 and len(rest) > chars:
        cut = rest.rfind(" ", 0, chars + 1)
        cut = cut if cut > chars // 2 else chars
        out.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    if rest:
        out.append(_clip(rest, chars))
    return out


def _schema_lines(schema: pl.Schema | None) -> list[str]:
    if schema is None:
        return [UNKNOWN_SCHEMA]
    items = [f"{name}: {_short_dtype(dtype)}" for name, dtype in schema.items()]
    if len(items) > SCHEMA_LINES:
        items = [*items[: SCHEMA_LINES - 1], f"+{len(items) - SCHEMA_LINES + 1} more"]
    return [_clip(item, TEXT_CHARS) for item in items] or ["(no columns)"]


# ---------------------------------------------------------------- layout


def _isotonic(values: list[float]) -> list[float]:
    """Non-decreasing sequence closest to ``values`` (least squares, pool adjacent violators)."""
    blocks: list[list[float]] = []  # [mean, count]
    for value in values:
        blocks.append([value, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            mean, count = blocks.pop()
            blocks[-1] = [
                (blocks[-1][0] * blocks[-1][1] + mean * count) / (blocks[-1][1] + count),
                blocks[-1][1] + count,
            ]
    return [mean for mean, count in blocks for _ in range(int(count))]


def _place(row: list[_Box], desired: dict[str, float]) -> None:
    """Set x of every box of ``row`` (in order) near its desired center, keeping gaps."""
    offsets, total = [], 0.0
    for box in row:
        offsets.append(total)
        total += box.w + BOX_GAP
    wanted = [
        desired.get(box.key, box.x + box.w / 2) - box.w / 2 - off
        for box, off in zip(row, offsets, strict=True)
    ]
    for box, base, off in zip(row, _isotonic(wanted), offsets, strict=True):
        box.x = base + off


def _layout(
    boxes: list[_Box], links: list[_Link]
) -> tuple[list[list[_Box]], dict[str, _Box], float, float]:
    by_key = {box.key: box for box in boxes}
    parents: dict[str, list[str]] = {box.key: [] for box in boxes}
    for link in links:
        parents[link.dst].append(link.src)

    layer: dict[str, int] = {}

    def depth(key: str, seen: frozenset[str] = frozenset()) -> int:
        if key not in layer:
            ups = [p for p in parents[key] if p not in seen]  # a cycle cannot happen; stay safe
            layer[key] = 1 + max((depth(p, seen | {key}) for p in ups), default=-1)
        return layer[key]

    for box in boxes:
        box.layer = depth(box.key)
    rows: list[list[_Box]] = [[] for _ in range(max((b.layer for b in boxes), default=-1) + 1)]
    for box in boxes:
        rows[box.layer].append(box)

    # Long edges pass through one invisible point per layer in between.
    up: dict[str, list[str]] = {box.key: [] for box in boxes}
    down: dict[str, list[str]] = {box.key: [] for box in boxes}
    for index, link in enumerate(links):
        previous = link.src
        for level in range(by_key[link.src].layer + 1, by_key[link.dst].layer):
            point = _Box(f"\0{index}.{level}", "", "", "", None, layer=level, w=DUMMY_W, dummy=True)
            by_key[point.key] = point
            rows[level].append(point)
            up[point.key], down[point.key] = [], []
            link.path.append(point.key)
            down[previous].append(point.key)
            up[point.key].append(previous)
            previous = point.key
        down[previous].append(link.dst)
        up[link.dst].append(previous)

    def order_by(
        row: list[_Box], neighbours: dict[str, list[str]], position: dict[str, int]
    ) -> list[_Box]:
        def barycenter(item: tuple[int, _Box]) -> tuple[float, int]:
            index, box = item
            near = [position[n] for n in neighbours[box.key] if n in position]
            return (sum(near) / len(near) if near else index, index)

        return [box for _, box in sorted(enumerate(row), key=barycenter)]

    for _ in range(2):
        for level in range(1, len(rows)):
            position = {b.key: i for i, b in enumerate(rows[level - 1])}
            rows[level] = order_by(rows[level], up, position)
        for level in range(len(rows) - 2, -1, -1):
            position = {b.key: i for i, b in enumerate(rows[level + 1])}
            rows[level] = order_by(rows[level], down, position)

    for row in rows:  # start packed left to right
        x = 0.0
        for box in row:
            box.x, x = x, x + box.w + BOX_GAP

    def center(key: str) -> float:
        return by_key[key].x + by_key[key].w / 2

    for _ in range(3):
        for level in range(1, len(rows)):
            _place(
                rows[level],
                {
                    b.key: sum(map(center, up[b.key])) / len(up[b.key])
                    for b in rows[level]
                    if up[b.key]
                },
            )
        for level in range(len(rows) - 2, -1, -1):
            _place(
                rows[level],
                {
                    b.key: sum(map(center, down[b.key])) / len(down[b.key])
                    for b in rows[level]
                    if down[b.key]
                },
            )
    for level in range(1, len(rows)):
        _place(
            rows[level],
            {b.key: sum(map(center, up[b.key])) / len(up[b.key]) for b in rows[level] if up[b.key]},
        )

    left = min((b.x for row in rows for b in row), default=0.0)
    width = 0.0
    y: float = MARGIN
    for row in rows:
        height = max((b.h for b in row if not b.dummy), default=0.0)
        for box in row:
            box.x += MARGIN - left
            box.y = y
            box.floor = y + height
            if box.dummy:
                box.h = height
            width = max(width, box.x + box.w + MARGIN)
        y += height + LAYER_GAP
    return rows, by_key, width, y - LAYER_GAP + MARGIN


# ---------------------------------------------------------------- SVG


def _attr(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def _box_height(box: _Box) -> float:
    desc = _wrap(box.description, TEXT_CHARS, 2) if box.description else []
    return HEAD_H + 6 + LINE_H * len(desc) + 6 + (LINE_H - 1) * len(_schema_lines(box.schema)) + 6


def _svg_box(box: _Box) -> list[str]:
    fill, stroke, _ = COLORS[category(box.kind)]
    x, y, w, h = box.x, box.y, box.w, box.h
    tooltip = f"{box.label} ({box.kind})\n{box.description}"
    if box.schema is not None:
        tooltip += "\n" + "\n".join(f"{k}: {v}" for k, v in box.schema.items())
    out = [f'<g class="op" data-op="{_attr(box.label)}"><title>{_attr(tooltip)}</title>']
    if box.highlight:
        out.append(
            f'<rect x="{_fmt(x - 5)}" y="{_fmt(y - 5)}" width="{_fmt(w + 10)}" height="{_fmt(h + 10)}" '
            f'rx="9" fill="none" stroke="{HIGHLIGHT}" stroke-width="3"/>'
        )
    out.append(
        f'<rect x="{_fmt(x)}" y="{_fmt(y)}" width="{_fmt(w)}" height="{_fmt(h)}" rx="5" '
        f'fill="{fill}" stroke="{stroke}" stroke-width="{2 if box.highlight else 1.2}"/>'
    )
    out.append(
        f'<path d="M{_fmt(x)},{_fmt(y + HEAD_H)} h{_fmt(w)}" stroke="{stroke}" stroke-width="0.8"/>'
    )
    kind = _clip(box.kind, 14)
    label_chars = int((w - 16) / (CHAR_W * 1.1)) - len(kind) - 1
    out.append(
        f'<text x="{_fmt(x + 8)}" y="{_fmt(y + 15)}" font-size="12" font-weight="bold" '
        f'fill="#0f172a">{_attr(_clip(box.label, label_chars))}</text>'
    )
    out.append(
        f'<text x="{_fmt(x + w - 8)}" y="{_fmt(y + 15)}" font-size="11" text-anchor="end" '
        f'fill="{stroke}">{_attr(kind)}</text>'
    )
    line_y = y + HEAD_H + 6
    for line in _wrap(box.description, TEXT_CHARS, 2) if box.description else []:
        line_y += LINE_H
        out.append(
            f'<text x="{_fmt(x + 8)}" y="{_fmt(line_y - 3)}" font-size="11" fill="#334155">{_attr(line)}</text>'
        )
    line_y += 6
    out.append(
        f'<path d="M{_fmt(x + 6)},{_fmt(line_y - 3)} h{_fmt(w - 12)}" stroke="{stroke}" '
        f'stroke-width="0.5" stroke-dasharray="2 2"/>'
    )
    for line in _schema_lines(box.schema):
        line_y += LINE_H - 1
        style = ' font-style="italic" fill="#92400e"' if box.schema is None else ' fill="#0f172a"'
        out.append(
            f'<text x="{_fmt(x + 8)}" y="{_fmt(line_y - 1)}" font-size="11"{style}>{_attr(line)}</text>'
        )
    out.append("</g>")
    return out


def _svg_label(text: str, x: float, y: float, color: str) -> str:
    text = _clip(text, 36)
    width = len(text) * CHAR_W * 0.92 + 8
    return (
        f'<rect x="{_fmt(x - width / 2)}" y="{_fmt(y - 8)}" width="{_fmt(width)}" height="15" rx="3" '
        f'fill="#ffffff" stroke="{color}" stroke-width="0.6"/>'
        f'<text x="{_fmt(x)}" y="{_fmt(y + 3)}" font-size="10" text-anchor="middle" fill="{color}">'
        f"{_attr(text)}</text>"
    )


def _render_svg(boxes: list[_Box], links: list[_Link], title: str) -> str:
    for box in boxes:
        box.h = _box_height(box)
    if not boxes:
        return (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="240" height="40" role="img">'
            f'<title>{_attr(title)}</title><text x="10" y="24" font-family="{_attr(FONT)}" '
            f'font-size="12" fill="#475569">(no operators)</text></svg>'
        )
    _, by_key, width, height = _layout(boxes, links)
    marker = f"arrowflow-arrow-{next(_svg_ids)}"

    # Ports: edges leave a box's bottom and enter a box's top spread out, in x order of the
    # other end, so they do not cross right at the box.
    outgoing: dict[str, list[tuple[float, int]]] = {}
    incoming: dict[str, list[tuple[float, int]]] = {}
    for index, link in enumerate(links):
        first = by_key[link.path[0]] if link.path else by_key[link.dst]
        last = by_key[link.path[-1]] if link.path else by_key[link.src]
        outgoing.setdefault(link.src, []).append((first.x + first.w / 2, index))
        incoming.setdefault(link.dst, []).append((last.x + last.w / 2, index))
    port_out: dict[int, float] = {}
    port_in: dict[int, float] = {}
    for ports, found in ((port_out, outgoing), (port_in, incoming)):
        for key, ends in found.items():
            box = by_key[key]
            for rank, (_, index) in enumerate(sorted(ends)):
                ports[index] = box.x + box.w * (rank + 1) / (len(ends) + 1)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_fmt(width)}" height="{_fmt(height)}" '
        f'viewBox="0 0 {_fmt(width)} {_fmt(height)}" font-family="{_attr(FONT)}" role="img">',
        f"<title>{_attr(title)}</title>",
        "<defs>",
    ]
    for style, color in EDGE_COLORS.items():
        parts.append(
            f'<marker id="{marker}-{style}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
            f'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="{color}"/>'
            f"</marker>"
        )
    parts.append("</defs>")
    labels: list[str] = []
    for index, link in enumerate(links):
        src, dst = by_key[link.src], by_key[link.dst]
        # Straight down to the bottom of the layer, so an edge from a short box does not
        # cut through a taller neighbour; then curves, straight through pass-through points.
        points = [(port_out[index], src.y + src.h), (port_out[index], src.floor)]
        for key in link.path:
            point = by_key[key]
            points += [(point.x + point.w / 2, point.y), (point.x + point.w / 2, point.y + point.h)]
        points.append((port_in[index], dst.y - (7 if dst.highlight else 2)))
        d = [f"M{_fmt(points[0][0])},{_fmt(points[0][1])}"]
        for step, ((x1, y1), (x2, y2)) in enumerate(itertools.pairwise(points)):
            if step % 2 == 0:  # below a box or through a pass-through point: straight down
                d.append(f"L{_fmt(x2)},{_fmt(y2)}")
            else:
                mid = (y1 + y2) / 2
                d.append(f"C{_fmt(x1)},{_fmt(mid)} {_fmt(x2)},{_fmt(mid)} {_fmt(x2)},{_fmt(y2)}")
        color = EDGE_COLORS[link.style]
        dash = {"exchange": ' stroke-dasharray="7 4"', "side": ' stroke-dasharray="2 3"'}.get(
            link.style, ""
        )
        width_px = 1.8 if link.style == "exchange" else 1.4
        parts.append(
            f'<path class="edge {link.style}" d="{" ".join(d)}" fill="none" stroke="{color}" '
            f'stroke-width="{width_px}"{dash} marker-end="url(#{marker}-{link.style})">'
            f"<title>{_attr(f'{link.src} -> {link.dst}')}</title></path>"
        )
        if link.start_label:
            labels.append(_svg_label(link.start_label, points[0][0], points[0][1] + 15, color))
        if link.end_label:
            labels.append(_svg_label(link.end_label, points[-1][0], points[-1][1] - 22, color))
    for box in boxes:
        parts.extend(_svg_box(box))
    parts.extend(labels)  # on top of edges and boxes
    parts.append("</svg>")
    return "\n".join(parts)


# ---------------------------------------------------------------- HTML

_STYLE = """
.arrowflow-view{font-family:DejaVu Sans,Helvetica,Arial,sans-serif;font-size:13px;color:#0f172a;
background:#fff;border:1px solid #cbd5e1;border-radius:6px;padding:8px 10px;margin:4px 0;max-width:100%}
.arrowflow-view .af-head{font-weight:bold;margin-bottom:4px}
.arrowflow-view .af-legend{font-size:11px;color:#475569;margin-bottom:6px}
.arrowflow-view .af-chip{display:inline-block;width:10px;height:10px;border-radius:2px;margin:0 3px 0 10px;
vertical-align:-1px;border:1px solid}
.arrowflow-view .af-graph{overflow:auto;max-height:900px}
.arrowflow-view details{margin-top:6px}
.arrowflow-view summary{cursor:pointer;color:#334155}
.arrowflow-view table.af-schema{border-collapse:collapse;margin-top:6px;font-family:DejaVu Sans Mono,monospace;font-size:12px}
.arrowflow-view table.af-schema th,.arrowflow-view table.af-schema td{border:1px solid #cbd5e1;padding:2px 8px;text-align:left}
.arrowflow-view table.af-schema th{background:#f1f5f9}
.arrowflow-view .af-error{color:#b91c1c;white-space:pre-wrap;font-family:DejaVu Sans Mono,monospace;font-size:12px}
"""


def _legend() -> str:
    chips = "".join(
        f'<span class="af-chip" style="background:{fill};border-color:{stroke}"></span>{_attr(text)}'
        for fill, stroke, text in COLORS.values()
    )
    return (
        f'<div class="af-legend">{chips}<span style="margin-left:14px;color:{EDGE_COLORS["exchange"]}">'
        f'- - hash exchange</span><span style="margin-left:10px;color:{EDGE_COLORS["side"]}">'
        f"··· side output</span></div>"
    )


def _wrap_html(css_class: str, head: str, body: list[str]) -> str:
    return "\n".join(
        [
            f'<div class="arrowflow-view {css_class}">',
            f"<style>{_STYLE}</style>",
            f'<div class="af-head">{head}</div>',
            _legend(),
            *body,
            "</div>",
        ]
    )


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _schema_table(schema: pl.Schema) -> str:
    rows = "".join(
        f"<tr><td>{_attr(name)}</td><td>{_attr(dtype)}</td></tr>" for name, dtype in schema.items()
    )
    return f'<table class="af-schema"><tr><th>column</th><th>type</th></tr>{rows}</table>'


# ---------------------------------------------------------------- physical plan


def plan_svg(plan: Plan) -> str:
    """The physical plan as an inline SVG graph: one box per operator, edges top to bottom."""
    boxes = [_Box(op.id, op.id, op.kind, describe_op(op), op.schema) for op in plan.ops]
    kinds = {op.id: op for op in plan.ops}
    links = []
    for op in plan.ops:
        for edge in op.inputs:
            upstream = kinds.get(edge.op)
            exchange = upstream is not None and upstream.kind == "exchange"
            style = "exchange" if exchange else "side" if edge.port != MAIN else "main"
            links.append(
                _Link(
                    edge.op,
                    op.id,
                    style,
                    start_label=edge.port if edge.port != MAIN else None,
                    end_label=f"hash by {', '.join(upstream.params['keys'])}"
                    if exchange and upstream is not None
                    else None,
                )
            )
    return _render_svg(boxes, links, f"plan of flow {plan.flow_name!r}")


def _plan_head(plan: Plan) -> str:
    sinks = sum(op.kind == "sink" for op in plan.ops)
    exchanges = sum(op.kind == "exchange" for op in plan.ops)
    return (
        f"Plan of flow {_attr(repr(plan.flow_name))}: {_count(len(plan.ops), 'operator')}, "
        f"{_count(sinks, 'sink')}, {_count(exchanges, 'exchange')} "
        f'<span style="font-weight:normal;color:#64748b">(fingerprint {_attr(plan.fingerprint)})</span>'
    )


def plan_html(plan: Plan) -> str:
    """The physical plan as a self-contained HTML fragment (header, legend, SVG graph)."""
    return _wrap_html(
        "arrowflow-plan", _plan_head(plan), [f'<div class="af-graph">{plan_svg(plan)}</div>']
    )


# ---------------------------------------------------------------- logical graph


def describe_node(node: Node) -> str:
    """One line on what a logical operator does (its kind's ``describe``)."""
    try:
        return kind_of(node.kind).describe(node)
    except Exception:  # a display never fails on a half-built or unusual operator
        return node.kind


def _schema_or_none(flow: Flow, node: Node) -> pl.Schema | None:
    try:
        return flow.schema_of(node)
    except Exception:  # an unreadable source, a map_batches that needs data: known at run time
        return None


def _logical_svg(flow: Flow, nodes: list[Node], highlight: Node | None, title: str) -> str:
    members = {id(n) for n in nodes}
    boxes = [
        _Box(
            n.id, n.id, n.kind, describe_node(n), _schema_or_none(flow, n), highlight=n is highlight
        )
        for n in nodes
    ]
    links = []
    for node in nodes:
        for parent in node.inputs:
            if id(parent) not in members:
                continue
            if node.kind == "side_output":
                links.append(_Link(parent.id, node.id, "side", start_label=node.side))
            elif category(node.kind) == "keyed":
                keys = ", ".join(node.params.get("keys", []))
                links.append(_Link(parent.id, node.id, "exchange", end_label=f"key_by {keys}"))
            else:
                links.append(_Link(parent.id, node.id))
    return _render_svg(boxes, links, title)


def _plan_details(build: Any) -> str:
    try:
        plan = build()
    except Exception as exc:  # show why there is no plan yet instead of failing the display
        return (
            f'<details><summary>physical plan</summary><div class="af-error">'
            f"{_attr(type(exc).__name__)}: {_attr(exc)}</div></details>"
        )
    return (
        f"<details><summary>physical plan ({_count(len(plan.ops), 'operator')})</summary>"
        f"{plan_html(plan)}</details>"
    )


def flow_html(flow: Flow, highlight: Node | None = None) -> str:
    """The logical graph of every operator of ``flow``; with sinks, the physical plan below it."""
    sinks = flow.sinks()
    head = f"Flow {_attr(repr(flow.name))}: {_count(len(flow.nodes), 'operator')}, {_count(len(sinks), 'sink')}"
    body = [
        f'<div class="af-graph">{_logical_svg(flow, flow.nodes, highlight, f"flow {flow.name!r}")}</div>'
    ]
    if sinks:
        body.append(_plan_details(flow.plan))
    return _wrap_html("arrowflow-flow", head, body)


def _ancestors(node: Node, flow: Flow) -> list[Node]:
    wanted: set[int] = set()
    todo = [node]
    while todo:
        current = todo.pop()
        if id(current) not in wanted:
            wanted.add(id(current))
            todo.extend(current.inputs)
    ordered = [n for n in flow.nodes if id(n) in wanted]
    return ordered if any(n is node for n in ordered) else [*ordered, node]


def stream_html(stream: Stream, keyed_by: list[str] | None = None) -> str:
    """The operators a stream depends on, the stream highlighted, and its output schema."""
    flow, node = stream.flow, stream.node
    nodes = _ancestors(node, flow)
    keyed = f" keyed by {_attr(keyed_by)}" if keyed_by is not None else ""
    head = (
        f"Stream {_attr(repr(node.id))} ({_attr(node.kind)}){keyed} of flow {_attr(repr(flow.name))}: "
        f"{_count(len(nodes), 'operator')} up to it"
    )
    body = [f'<div class="af-graph">{_logical_svg(flow, nodes, node, f"stream {node.id!r}")}</div>']
    schema = _schema_or_none(flow, node)
    if schema is None:
        body.append(f'<div class="af-legend">output schema: {UNKNOWN_SCHEMA}</div>')
    else:
        body.append(_schema_table(schema))
    body.append(_plan_details(lambda: build_plan(flow, [node])))
    return _wrap_html("arrowflow-stream", head, body)


set_html_renderer(plan_html)

__all__ = ["describe_node", "flow_html", "plan_html", "plan_svg", "stream_html"]
