"""A pipeline's DAG for a person: a layered text listing, a mermaid flowchart, or a Graphviz digraph.

Everything here builds strings from a `Plan` (and, for a run, each step's status) and does no I/O.
Every format shows every step with its kind, execution mode, fan-out (`over`), condition (its
`when(...)` text, "callable", or "judged by model"), child pipeline, `added_by`, and status, and
every dependency as an edge labelled with its type (hard, soft, validation, data).
A dependency on a step the plan does not hold is still shown, as a node of kind "unknown".
The same content as SVG is graph_svg.py's, which builds on this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import click

from ..define.plan import DependencyType, Plan, StepKind, StepSpec

__all__ = ["FORMATS", "condition_text", "layers", "render", "to_dot", "to_mermaid", "to_text"]

FORMATS = ("text", "mermaid", "dot")
WIDTH = 80
TEXT_COLORS = {"running": "cyan", "retrying": "yellow", "completed": "green", "failed": "red",
               "skipped": "bright_black", "cancelled": "magenta"}
FILLS = {"pending": "#eeeeee", "running": "#cce5ff", "retrying": "#fff3cd", "completed": "#d4edda",
         "failed": "#f8d7da", "skipped": "#e2e3e5", "cancelled": "#e8d7f1"}
MERMAID_SHAPES = {StepKind.FUNCTION: ('["', '"]'), StepKind.AGENT: ('("', '")'), StepKind.TAGENT: ('{{"', '"}}'),
                  StepKind.PIPELINE: ('[["', '"]]')}
DOT_SHAPES = {StepKind.FUNCTION: "box", StepKind.AGENT: "ellipse", StepKind.TAGENT: "hexagon",
              StepKind.PIPELINE: "box3d"}
MERMAID_ARROWS = {DependencyType.HARD: "-->", DependencyType.SOFT: "-.->", DependencyType.VALIDATION: "==>",
                  DependencyType.DATA: "-->"}
DOT_STYLES = {DependencyType.HARD: "solid", DependencyType.SOFT: "dashed", DependencyType.VALIDATION: "bold",
              DependencyType.DATA: "dotted"}


def condition_text(spec: StepSpec) -> str | None:
    """The step's condition as a person reads it, or None when it has none."""
    if spec.condition is not None:
        from ..define.conditions import condition_from_data  # noqa: PLC0415 - only a graph with conditions needs it

        try:
            return condition_from_data(spec.condition).describe()
        except ValueError:
            return "(unreadable condition)"
    if spec.condition_is_callable:
        return "callable"
    if spec.condition_is_judged:
        return "judged by model"
    return None


def layers(plan: Plan) -> list[list[StepSpec]]:
    """The steps by topological layer: a step stands one layer below its deepest dependency in the plan."""
    known = {spec.name: spec for spec in plan.steps}
    depth: dict[str, int] = {}

    def level(name: str, seen: frozenset[str]) -> int:
        if name not in depth:
            deps = [d for d in known[name].deps if d in known and d not in seen]
            depth[name] = 1 + max((level(d, seen | {name}) for d in deps), default=-1)
        return depth[name]

    out: list[list[StepSpec]] = []
    for spec in plan.steps:
        n = level(spec.name, frozenset())
        out.extend([] for _ in range(n + 1 - len(out)))
        out[n].append(spec)
    return out


def notes(spec: StepSpec) -> list[str]:
    """What a step declares besides kind and mode, one note each."""
    found = []
    if spec.over is not None:
        found.append(f"fan-out over {_short(spec.over)}")
    cond = condition_text(spec)
    if cond:
        found.append(f"when {cond}")
    if spec.kind is StepKind.PIPELINE and spec.child is not None:
        found.append(f"child pipeline {spec.child.name}")
    if spec.added_by:
        found.append(f"added by {spec.added_by}")
    return found


def _short(value: Any) -> str:
    return value if isinstance(value, str) else repr(value)


def _fit(line: str, width: int = WIDTH) -> str:
    return line if len(line) <= width else line[: width - 1] + "…"


def _mode(spec: StepSpec) -> str:
    return spec.mode.value.upper()


def _status(statuses: Mapping[str, str] | None, name: str) -> str | None:
    return None if statuses is None else statuses.get(name, "pending")


def to_text(plan: Plan, statuses: Mapping[str, str] | None = None, *, color: bool = False) -> str:
    """Steps by layer, each with kind, mode, status and notes, then its dependencies; lines fit 80 columns."""
    lines = [_fit(f"pipeline {plan.name}: {len(plan.steps)} steps")]
    for number, layer in enumerate(layers(plan), 1):
        lines.append(f"layer {number}")
        for spec in layer:
            status = _status(statuses, spec.name)
            head = f"  {spec.name}  [{spec.kind.value}, {_mode(spec)}]"
            if status is not None:
                shown = click.style(status, fg=TEXT_COLORS[status]) if color and status in TEXT_COLORS else status
                room = WIDTH - len(status) - 2
                head = f"{_fit(head, room)}  {shown}"
            lines.append(head if status is not None else _fit(head))
            for note in notes(spec):
                lines.append(_fit(f"      {note}"))
            if spec.deps:
                needs = ", ".join(f"{dep} ({kind.value})" for dep, kind in spec.deps.items())
                lines.append(_fit(f"      needs {needs}"))
    return "\n".join(lines)


def _ids(plan: Plan) -> dict[str, str]:
    """A safe node id per step (and per dependency the plan does not hold): s0, s1, ... in definition order."""
    names = [spec.name for spec in plan.steps]
    names += [dep for spec in plan.steps for dep in spec.deps if dep not in names]
    return {name: f"s{i}" for i, name in enumerate(dict.fromkeys(names))}


def _label(spec: StepSpec | None, name: str, status: str | None, sep: str) -> str:
    if spec is None:
        return f"{name}{sep}unknown step"
    parts = [name, f"{spec.kind.value}, {_mode(spec)}", *notes(spec)]
    if status is not None:
        parts.append(status)
    return sep.join(parts)


def _mermaid_text(text: str) -> str:
    return text.replace('"', "#quot;")


def to_mermaid(plan: Plan, statuses: Mapping[str, str] | None = None) -> str:
    """A `flowchart TD`: one node per step shaped by kind, edges labelled by dependency type, a class per status."""
    ids = _ids(plan)
    specs = {spec.name: spec for spec in plan.steps}
    lines = ["flowchart TD"]
    for name, node in ids.items():
        spec = specs.get(name)
        start, end = MERMAID_SHAPES[spec.kind] if spec is not None else ('["', '"]')
        lines.append(f"    {node}{start}{_mermaid_text(_label(spec, name, _status(statuses, name), '<br/>'))}{end}")
    for spec in plan.steps:
        for dep, kind in spec.deps.items():
            lines.append(f"    {ids[dep]} {MERMAID_ARROWS[kind]}|{kind.value}| {ids[spec.name]}")
    if statuses is not None:
        used = sorted({_status(statuses, name) or "pending" for name in specs})
        for status in used:
            lines.append(f"    classDef {status} fill:{FILLS.get(status, '#ffffff')},stroke:#333")
        for name in specs:
            lines.append(f"    class {ids[name]} {_status(statuses, name)}")
    return "\n".join(lines) + "\n"


def _dot_text(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def to_dot(plan: Plan, statuses: Mapping[str, str] | None = None) -> str:
    """A Graphviz `digraph`: one node per step shaped by kind (filled by status), edges styled by dependency type."""
    ids = _ids(plan)
    specs = {spec.name: spec for spec in plan.steps}
    lines = [f'digraph "{_dot_text(plan.name)}" {{', "    rankdir=TB;", '    node [fontname="Helvetica"];']
    for name, node in ids.items():
        spec = specs.get(name)
        status = _status(statuses, name)
        attrs = [f'label="{_dot_text(_label(spec, name, status, chr(10)))}"'.replace("\n", "\\n"),
                 f"shape={DOT_SHAPES[spec.kind] if spec is not None else 'box'}"]
        if spec is None:
            attrs.append("style=dashed")
        elif status is not None:
            attrs.append(f'style=filled, fillcolor="{FILLS.get(status, "#ffffff")}"')
        lines.append(f"    {node} [{', '.join(attrs)}];")
    for spec in plan.steps:
        for dep, kind in spec.deps.items():
            lines.append(f'    {ids[dep]} -> {ids[spec.name]} [label="{kind.value}", style={DOT_STYLES[kind]}];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def render(plan: Plan, fmt: str, statuses: Mapping[str, str] | None = None, *, color: bool = False) -> str:
    """The plan in `fmt` (one of FORMATS)."""
    if fmt == "mermaid":
        return to_mermaid(plan, statuses)
    if fmt == "dot":
        return to_dot(plan, statuses)
    return to_text(plan, statuses, color=color) + "\n"
