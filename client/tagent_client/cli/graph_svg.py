"""A pipeline's DAG, or a run's with each step's state, as a standalone SVG document.

`render_svg(plan, statuses=None, title=None) -> str` is the entry point (`tagent graph -f svg` and
the dashboard call it). The boxes are placed by graph_layout.py (grandalf, pure Python: no system
binary). The drawing shows what the other formats of graph.py show: every step with its kind,
mode, fan-out, condition, child pipeline, `added by` and state, and every dependency as an arrow
labelled and styled by its type; a legend explains shapes, line styles and (for a run) the state
colours. Every name and text is XML-escaped; the result parses as XML.

The document is built to be embedded and recoloured live (the contract a page may rely on):

- `<svg class="tagent-graph" viewBox="0 0 W H" width="W" height="H">`, all styling in its one
  `<style>` block, so a page can override any of it with its own CSS;
- each step is `<g class="step" id="step-ID" data-step="NAME" data-kind="KIND" data-mode="MODE">`
  (ID is `step_dom_id(NAME)`), plus `data-state="STATE"` when states are given and
  `data-added-by="STEP"` for a step added at run time; its outline is the element(s) of class
  `shape`, and its state word, when states are given, is the `<text class="state">`. The colours come
  only from `[data-state="..."]` rules, so setting `data-state` (and the state text) recolours a node;
- each dependency is `<g class="edge" data-from="DEP" data-to="STEP" data-type="TYPE">` holding a
  `<path class="line">` and a `<text class="label">`;
- the legend is `<g class="legend">`; its state swatches carry `data-state` too.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from html import escape

from ..define.plan import DependencyType, Plan, StepKind, StepSpec
from .graph import notes
from .graph_layout import Box, Point, place

__all__ = ["STATE_COLORS", "TEXT_COLOR", "render_svg", "step_dom_id", "text_width"]

FONT = "'Liberation Sans', Arial, Helvetica, sans-serif"
NAME_SIZE, DETAIL_SIZE, LABEL_SIZE = 14.0, 11.5, 10.5
LINE_GAP = 1.35  # line height, in font sizes
PAD_X, PAD_Y = 14.0, 9.0
STACK = 6.0  # offset of the copy drawn behind a fan-out step
NOTE_CHARS = 44  # a note longer than this wraps (a step's name never does)
MARGIN = 16.0
TEXT_COLOR = "#1b1f24"
#: state -> (fill, outline, text of the state word); every text colour passes WCAG AA (4.5:1) on its fill.
STATE_COLORS = {
    "pending": ("#f1f3f5", "#6c757d", "#343a40"),
    "running": ("#cce5ff", "#1c5fa8", "#0b3d75"),
    "retrying": ("#fff3cd", "#b07d00", "#6b4c00"),
    "completed": ("#d4edda", "#2e7d32", "#1b5e20"),
    "failed": ("#f8d7da", "#c62828", "#8e1414"),
    "skipped": ("#e2e3e5", "#6c757d", "#3d4248"),
    "cancelled": ("#e8d7f1", "#6a1b9a", "#4a136c"),
}
EDGE_DASH = {DependencyType.HARD: "none", DependencyType.SOFT: "7 5", DependencyType.VALIDATION: "none",
             DependencyType.DATA: "2 4"}
EDGE_WIDTH = {DependencyType.HARD: 1.5, DependencyType.SOFT: 1.5, DependencyType.VALIDATION: 3.0,
              DependencyType.DATA: 2.0}
KIND_INSET = {StepKind.TAGENT: 14.0, StepKind.PIPELINE: 9.0, StepKind.AGENT: 6.0}

# Advance widths (per mille of the font size) of Arial / Helvetica / Liberation Sans; others count 1000.
_GLYPHS = {191: "'", 222: "ijl", 260: "|", 278: " !,./:;I[\\]ft", 333: "()-`r{}", 355: '"', 389: "*",
           500: "Jckszvxy^", 556: "0123456789abdeghnopqu#$?_L", 584: "+<=>~", 611: "FTZ",
           667: "ABEKPSVXY&", 722: "CDHNRUw", 778: "GOQ", 833: "mM", 889: "%", 944: "W", 1015: "@"}
_WIDTH = {char: width / 1000 for width, chars in _GLYPHS.items() for char in chars}
_SAFETY = 1.12  # a fallback sans-serif (DejaVu Sans) runs wider than Arial
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def text_width(text: str, size: float, *, bold: bool = False) -> float:
    """About how wide `text` is drawn in FONT at `size` px: Arial's advance widths, with a margin."""
    em = sum(_WIDTH.get(char, 1.0) for char in text)
    return em * size * _SAFETY * (1.1 if bold else 1.0)


def step_dom_id(name: str) -> str:
    """`step-` and the name with every character but [A-Za-z0-9_] as `-HEX-`: a valid, unique XML id."""
    return "step-" + re.sub(r"[^A-Za-z0-9_]", lambda m: f"-{ord(m.group()):x}-", name)


def _x(text: str) -> str:
    """Text or an attribute value, escaped, with characters XML cannot hold replaced by U+FFFD."""
    return escape(_NOT_XML.sub("\ufffd", text), quote=True)


def _num(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def _wrap(text: str, width: int = NOTE_CHARS) -> list[str]:
    lines: list[str] = []
    for word in text.split(" "):
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines or [""]


class _Node:
    """One step's lines of text and the size of its box."""

    def __init__(self, name: str, spec: StepSpec | None, state: str | None) -> None:
        self.name, self.spec, self.state = name, spec, state
        self.kind = spec.kind.value if spec is not None else "unknown"
        self.details = ([f"{spec.kind.value} · {spec.mode.value.upper()}"]
                        + [line for note in notes(spec) for line in _wrap(note)]) if spec else ["unknown step"]
        self.inset = KIND_INSET.get(spec.kind, 0.0) if spec is not None else 0.0
        self.stacked = spec is not None and spec.over is not None
        widths = [text_width(name, NAME_SIZE, bold=True)] + [text_width(d, DETAIL_SIZE) for d in self.details]
        if state is not None:
            widths.append(text_width(state, DETAIL_SIZE, bold=True))
        lines = len(self.details) + (state is not None)
        self.w = max(widths) + 2 * (PAD_X + self.inset) + (STACK if self.stacked else 0.0)
        self.h = NAME_SIZE * LINE_GAP + lines * DETAIL_SIZE * LINE_GAP + 2 * PAD_Y + (STACK if self.stacked else 0.0)


def _outline(kind: str, x: float, y: float, w: float, h: float, inset: float) -> str:
    """The shape of a kind: function a box, agent a rounded box, tagent a hexagon, pipeline a framed box."""
    if kind == StepKind.TAGENT.value:
        points = [(x + inset, y), (x + w - inset, y), (x + w, y + h / 2), (x + w - inset, y + h), (x + inset, y + h),
                  (x, y + h / 2)]
        return f'<polygon class="shape" points="{" ".join(f"{_num(a)},{_num(b)}" for a, b in points)}"/>'
    # An agent's corners scale with its height (at most 14), so the legend's small icon stays a rounded box.
    radius = min(14.0, h * 0.28) if kind == StepKind.AGENT.value else 3.0
    rect = (f'<rect class="shape" x="{_num(x)}" y="{_num(y)}" width="{_num(w)}" height="{_num(h)}" '
            f'rx="{_num(radius)}"/>')
    if kind == StepKind.PIPELINE.value:
        bars = "".join(f'<line class="frame" x1="{_num(bx)}" y1="{_num(y)}" x2="{_num(bx)}" y2="{_num(y + h)}"/>'
                       for bx in (x + inset - 3, x + w - inset + 3))
        return rect + bars
    return rect


def _node_svg(node: _Node, box: Box) -> str:
    attrs = f'class="step" id="{_x(step_dom_id(node.name))}" data-step="{_x(node.name)}" data-kind="{node.kind}"'
    if node.spec is not None:
        attrs += f' data-mode="{node.spec.mode.value}"'
        if node.spec.added_by:
            attrs += f' data-added-by="{_x(node.spec.added_by)}"'
    if node.state is not None:
        attrs += f' data-state="{_x(node.state)}"'
    x, y, w, h = box.x, box.y, box.w, box.h
    parts = [f"<g {attrs}>", f"<title>{_x(' | '.join([node.name, *node.details]))}</title>"]
    if node.stacked:
        w, h = w - STACK, h - STACK
        parts.append(_outline(node.kind, x + STACK, y + STACK, w, h, node.inset).replace('class="shape"',
                                                                                          'class="shape stack"'))
    parts.append(_outline(node.kind, x, y, w, h, node.inset))
    cx = x + w / 2
    baseline = y + PAD_Y + NAME_SIZE
    parts.append(f'<text class="name" x="{_num(cx)}" y="{_num(baseline)}">{_x(node.name)}</text>')
    for line in node.details:
        baseline += DETAIL_SIZE * LINE_GAP
        parts.append(f'<text class="detail" x="{_num(cx)}" y="{_num(baseline)}">{_x(line)}</text>')
    if node.state is not None:
        baseline += DETAIL_SIZE * LINE_GAP
        parts.append(f'<text class="state" x="{_num(cx)}" y="{_num(baseline)}">{_x(node.state)}</text>')
    parts.append("</g>")
    return "".join(parts)


def _midpoint(points: list[Point]) -> Point:
    """The point halfway along a polyline."""
    lengths = [((bx - ax) ** 2 + (by - ay) ** 2) ** 0.5 for (ax, ay), (bx, by) in zip(points, points[1:])]
    left = sum(lengths) / 2
    for (ax, ay), (bx, by), length in zip(points, points[1:], lengths):
        if left <= length and length > 0:
            t = left / length
            return ax + (bx - ax) * t, ay + (by - ay) * t
        left -= length
    return points[-1]


def _edge_svg(source: str, target: str, kind: DependencyType, points: list[Point]) -> str:
    path = "M" + " L".join(f"{_num(px)},{_num(py)}" for px, py in points)
    mx, my = _midpoint(points)
    return (f'<g class="edge" data-from="{_x(source)}" data-to="{_x(target)}" data-type="{kind.value}">'
            f"<title>{_x(f'{source} → {target} ({kind.value})')}</title>"
            f'<path class="line" d="{path}" marker-end="url(#tagent-arrow)"/>'
            f'<text class="label" x="{_num(mx + 4)}" y="{_num(my + 3)}">{kind.value}</text></g>')


def _style() -> str:
    rules = [
        f".tagent-graph {{ font-family: {FONT}; background: #ffffff; }}",
        f".tagent-graph text {{ fill: {TEXT_COLOR}; }}",
        ".step .shape { fill: #ffffff; stroke: #3b4a5a; stroke-width: 1.5; }",
        ".frame { stroke: #3b4a5a; stroke-width: 1.2; }",
        '.step[data-kind="unknown"] .shape { stroke-dasharray: 5 4; }',
        ".step[data-added-by] .shape { stroke-dasharray: 9 3 2 3; }",
        f".step .name {{ font-size: {_num(NAME_SIZE)}px; font-weight: bold; text-anchor: middle; }}",
        f".step .detail {{ font-size: {_num(DETAIL_SIZE)}px; text-anchor: middle; }}",
        f".step .state {{ font-size: {_num(DETAIL_SIZE)}px; font-weight: bold; text-anchor: middle; }}",
        ".edge .line { fill: none; stroke: #3f4650; }",
        f".edge .label {{ font-size: {_num(LABEL_SIZE)}px; paint-order: stroke; stroke: #ffffff; stroke-width: 3px; }}",
        "#tagent-arrow path { fill: #3f4650; }",
        ".legend .heading { font-size: 11px; font-weight: bold; }",
        ".legend .item { font-size: 11px; }",
        ".legend .shape { fill: #ffffff; stroke: #3b4a5a; stroke-width: 1.2; }",
        ".title { font-size: 15px; font-weight: bold; }",
    ]
    for kind in DependencyType:
        rules.append(f'.edge[data-type="{kind.value}"] .line, .legend [data-type="{kind.value}"] .line '
                     f"{{ stroke-dasharray: {EDGE_DASH[kind]}; stroke-width: {EDGE_WIDTH[kind]}; }}")
    for state, (fill, outline, text) in STATE_COLORS.items():
        width = 2.5 if state in ("running", "retrying", "failed") else 1.5
        rules.append(f'[data-state="{state}"] .shape {{ fill: {fill}; stroke: {outline}; stroke-width: {width}; }}')
        rules.append(f'[data-state="{state}"] .state {{ fill: {text}; }}')
    return "<style>\n" + "\n".join(rules) + "\n</style>"


def _legend(x: float, y: float, with_states: bool) -> tuple[str, float, float]:
    """The legend's SVG, its width and its height, drawn with its top-left corner at (x, y)."""
    rows: list[tuple[str, list[tuple[str, str]]]] = [
        ("step kinds", [(kind.value, f'<g data-kind="{kind.value}">'
                         f"{_outline(kind.value, 0, 0, 30, 16, min(KIND_INSET.get(kind, 0.0), 8.0))}</g>")
                        for kind in StepKind]
         + [("fan-out (over)", '<rect class="shape" x="4" y="4" width="26" height="13" rx="2"/>'
                               '<rect class="shape" x="0" y="0" width="26" height="13" rx="2"/>')]),
        ("dependencies", [(kind.value, f'<g data-type="{kind.value}"><path class="line" d="M0,8 L30,8" '
                          f'stroke="#3f4650"/></g>') for kind in DependencyType]),
    ]
    if with_states:
        rows.append(("states", [(state, f'<g data-state="{state}"><rect class="shape" x="0" y="0" width="30" '
                                        f'height="16" rx="3"/></g>') for state in STATE_COLORS]))
    parts = [f'<g class="legend" transform="translate({_num(x)},{_num(y)})">']
    width, top = 0.0, 0.0
    for heading, items in rows:
        parts.append(f'<text class="heading" x="0" y="{_num(top + 12)}">{heading}</text>')
        left = 90.0
        for label, icon in items:
            parts.append(f'<g transform="translate({_num(left)},{_num(top + 1)})">{icon}</g>'
                         f'<text class="item" x="{_num(left + 38)}" y="{_num(top + 13)}">{_x(label)}</text>')
            left += 38 + text_width(label, 11) + 18
        width, top = max(width, left), top + 24
    parts.append("</g>")
    return "".join(parts), width, top


def render_svg(plan: Plan, statuses: Mapping[str, str] | None = None, title: str | None = None) -> str:
    """The plan's DAG as an SVG document (a str starting with `<svg`), laid out top to bottom.

    `statuses` (step name -> state, e.g. from a run's `status` reply) colours each step and labels it
    with its state; a step missing from it is "pending". Without `statuses` (a pipeline file) no step
    has a state and the legend has no colours. `title` heads the drawing (default: the pipeline's name).
    A dependency on a step the plan does not hold is drawn as a node of kind "unknown".
    """
    specs = {spec.name: spec for spec in plan.steps}
    names = list(dict.fromkeys([*specs, *(dep for spec in plan.steps for dep in spec.deps)]))
    nodes = {name: _Node(name, specs.get(name),
                         None if statuses is None else statuses.get(name, "pending")) for name in names}
    deps = [(dep, spec.name, kind) for spec in plan.steps for dep, kind in spec.deps.items()]
    layout = place({name: (node.w, node.h) for name, node in nodes.items()}, [(a, b) for a, b, _ in deps])
    heading = title if title is not None else f"pipeline {plan.name}"
    top = MARGIN + 30
    legend, legend_w, legend_h = _legend(MARGIN, top + layout.height + 28, statuses is not None)
    width = max(layout.width, legend_w, text_width(heading, 15, bold=True)) + 2 * MARGIN
    height = top + layout.height + 28 + legend_h + MARGIN
    view = f"0 0 {_num(width)} {_num(height)}"
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="tagent-graph" viewBox="{view}" '
           f'width="{_num(width)}" height="{_num(height)}" role="img" aria-label="{_x(heading)}">',
           _style(),
           '<defs><marker id="tagent-arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="10" '
           'markerHeight="10" markerUnits="userSpaceOnUse" orient="auto"><path d="M0,0 L10,5 L0,10 z"/></marker></defs>',
           f'<rect x="0" y="0" width="{_num(width)}" height="{_num(height)}" fill="#ffffff"/>',
           f'<text class="title" x="{_num(MARGIN)}" y="{_num(MARGIN + 16)}">{_x(heading)}</text>',
           f'<g class="dag" transform="translate({_num(MARGIN)},{_num(top)})">']
    for source, target, kind in deps:
        out.append(_edge_svg(source, target, kind, layout.edges[(source, target)]))
    for name, node in nodes.items():
        out.append(_node_svg(node, layout.boxes[name]))
    out += ["</g>", legend, "</svg>"]
    return "\n".join(out) + "\n"
