"""A run's DAG for the run page, drawn by `tagent graph --format svg`'s renderer (graph_svg.py: laid out by grandalf).

Its contract (graph_svg.py's docstring): each step is `<g class="step" data-step="NAME" data-state="STATE">` with
its state word in `<text class="state">`, each dependency a `<g class="edge">`, and all its styling in one
`<style>` block. Here that block is taken out of the drawing and served as a stylesheet of its own
(`/graph.css`), so the dashboard's Content-Security-Policy (no inline style) holds and style.css can override it.

The drawing is made once per run and plan (`Graphs`; a step added at run time draws it again) with every step
"pending": the page sets each step's `data-state` from the run's steps, and again whenever the live stream
reports a change.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import re

from tagent_client.cli.graph_svg import render_svg
from tagent_client.define.plan import Plan, StepKind, StepSpec
from tagent_client.wire.protocol import RunDetail
from tagentd.web.views import plan_of

CACHED = 32  # drawings kept (a run page reloads often while its run runs)
_STYLE = re.compile(r"<style>(.*?)</style>\s*", re.S)


def draw(plan: Plan) -> str:
    """The plan's DAG as an `<svg>` element without its `<style>` block, every step "pending"."""
    return _STYLE.sub("", render_svg(plan, {}, title=f"pipeline {plan.name}"), count=1)


@functools.cache
def graph_css() -> str:
    """The drawings' stylesheet: the renderer's `<style>` block (the same for every drawing)."""
    sample = Plan(name="sample", steps=[StepSpec(name="step", kind=StepKind.FUNCTION)])
    found = _STYLE.search(render_svg(sample, {}))
    return found.group(1).strip() + "\n" if found else ""


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
