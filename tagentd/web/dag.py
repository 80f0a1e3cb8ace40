"""A run's DAG as SVG for the run page: steps left to right by layer.

Each step is `<g class="step" data-step="NAME" data-state="STATE">` (its box is the `rect`, its state
word the `<text class="state">`), each dependency a `<path class="edge" data-type="TYPE">`. The drawing is
made once per run and plan (`Graphs`; a step added at run time draws it again) with every step "pending":
the page sets each step's `data-state` from the run's steps, and again whenever the live stream reports a
change. The colours are the page's CSS (style.css), not inline, so the dashboard's Content-Security-Policy holds.
"""

from __future__ import annotations

import asyncio
import collections
from html import escape

from tagent_client.cli.graph import layers
from tagent_client.define.plan import Plan, StepSpec
from tagent_client.wire.protocol import RunDetail
from tagentd.web.views import plan_of

BOX_W, BOX_H = 168, 46
GAP_X, GAP_Y = 56, 18
MARGIN = 12
NAME_CHARS = 22
CACHED = 32  # drawings kept (a run page reloads often while its run runs)


class Graphs:
    """Each run's drawing, made once per plan (off the event loop: a big DAG takes a while), most recent kept."""

    def __init__(self, size: int = CACHED) -> None:
        self.size = size
        self._drawn: collections.OrderedDict[tuple[str, int], str] = collections.OrderedDict()

    async def svg(self, detail: RunDetail) -> str | None:
        """The run's DAG, every step "pending" (the page applies the states); None when it has no plan."""
        plan = plan_of(detail)
        if plan is None:
            return None
        key = (detail.run_id, len(plan.steps))
        svg = self._drawn.get(key)
        if svg is None:
            svg = await asyncio.to_thread(draw, plan)
            self._drawn[key] = svg
            while len(self._drawn) > self.size:
                self._drawn.popitem(last=False)
        self._drawn.move_to_end(key)
        return svg


def _x(text: str) -> str:
    return escape(text, quote=True)


def ordered(columns: list[list[StepSpec]]) -> list[list[StepSpec]]:
    """Each layer's steps sorted by the mean place of their dependencies in the layers before (the barycenter
    rule): fewer crossing edges than the plan's order, and the same drawing for the same plan."""
    place: dict[str, float] = {}
    out = []
    for column in columns:
        def weight(spec: StepSpec, index: int) -> float:
            known = [place[d] for d in spec.deps if d in place]
            return sum(known) / len(known) if known else float(index)

        column = [spec for _, spec in sorted(((weight(s, i), i), s) for i, s in enumerate(column))]
        for row, spec in enumerate(column):
            place[spec.name] = row - (len(column) - 1) / 2
        out.append(column)
    return out


def draw(plan: Plan) -> str:
    """The plan's DAG as an `<svg>` element, every step "pending"."""
    where: dict[str, tuple[float, float]] = {}
    columns = ordered(layers(plan))
    tallest = max((len(column) for column in columns), default=1)
    height = MARGIN * 2 + tallest * BOX_H + (tallest - 1) * GAP_Y
    for col, column in enumerate(columns):
        top = (height - (len(column) * BOX_H + (len(column) - 1) * GAP_Y)) / 2
        for row, spec in enumerate(column):
            where[spec.name] = (MARGIN + col * (BOX_W + GAP_X), top + row * (BOX_H + GAP_Y))
    width = MARGIN * 2 + len(columns) * BOX_W + max(0, len(columns) - 1) * GAP_X
    parts = [f'<svg class="dag" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width:.0f} {height:.0f}" '
             f'width="{width:.0f}" height="{height:.0f}" role="img" aria-label="the run\'s steps and dependencies">',
             '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
             'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" class="arrowhead"/></marker></defs>']
    for spec in plan.steps:
        x2, y2 = where[spec.name]
        for dep, kind in spec.deps.items():
            if dep not in where:
                continue
            x1, y1 = where[dep]
            sx, sy, ex, ey = x1 + BOX_W, y1 + BOX_H / 2, x2, y2 + BOX_H / 2
            mid = (sx + ex) / 2
            parts.append(f'<path class="edge" data-from="{_x(dep)}" data-to="{_x(spec.name)}" data-type="{kind.value}" '
                         f'd="M {sx:.1f} {sy:.1f} C {mid:.1f} {sy:.1f}, {mid:.1f} {ey:.1f}, {ex:.1f} {ey:.1f}" '
                         f'marker-end="url(#arrow)"/>')
    for spec in plan.steps:
        x, y = where[spec.name]
        state = "pending"
        name = spec.name if len(spec.name) <= NAME_CHARS else spec.name[:NAME_CHARS - 1] + "…"
        parts.append(
            f'<g class="step" data-step="{_x(spec.name)}" data-state="{_x(state)}" data-kind="{spec.kind.value}" '
            f'tabindex="0" transform="translate({x:.1f} {y:.1f})"><title>{_x(spec.name)} ({spec.kind.value})</title>'
            f'<rect class="shape" width="{BOX_W}" height="{BOX_H}" rx="8"/>'
            f'<text class="name" x="12" y="19">{_x(name)}</text>'
            f'<text class="state" x="12" y="36">{_x(state)}</text>'
            f'<text class="kind" x="{BOX_W - 10}" y="36">{spec.kind.value}</text></g>')
    parts.append("</svg>")
    return "".join(parts)
