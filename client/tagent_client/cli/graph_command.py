"""`tagent graph FILE|RUN`: a pipeline's DAG, or a run's with each step's status, as text, mermaid, dot or SVG.

A FILE (`path` or `path:NAME`, a path that exists) is loaded in this process, importing it as
`Pipeline.load` does; anything else is a run id (or a unique prefix) asked of the daemon, whose
`status` reply carries the run's plan when asked for it. Rendering is graph.py's, and graph_svg.py's
for SVG (loaded, with its layout library, only then).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
import msgspec

from ..define.plan import Plan
from ..errors import ProtocolError
from .common import Session, pass_session
from .graph import FORMATS, render
from .render import is_terminal


def is_file_spec(target: str) -> bool:
    """A path that exists, or `path:NAME` whose path exists."""
    path, sep, _name = target.rpartition(":")
    return Path(target).exists() or bool(sep and path and Path(path).exists())


@click.command()
@click.argument("target", metavar="FILE[:NAME]|RUN")
@click.option("--format", "-f", "fmt", type=click.Choice([*FORMATS, "svg"]), default="text", show_default=True,
              help="text: steps by layer; mermaid: a flowchart; dot: a Graphviz digraph; svg: a drawing.")
@pass_session
def graph(session: Session, target: str, fmt: str) -> None:
    """Show a pipeline's DAG: steps, kinds, modes, conditions and typed dependencies (for a RUN, each step's status).

    Text is coloured only on a terminal. SVG is laid out here, no Graphviz needed:
    `tagent graph RUN -f svg > run.svg`. Pipe mermaid or dot into a renderer of your own.
    """
    color = fmt == "text" and is_terminal(sys.stdout)
    if is_file_spec(target):
        from ..define.pipeline import Pipeline  # only a FILE needs the definition layer (and what it imports)

        click.echo(_render(Pipeline.load(target).plan(), fmt, None, color=color), nl=False)
        return
    detail = session.client().status(target, plan=True)
    if detail.plan is None:
        raise ProtocolError(f"the daemon sent run {detail.run_id} without its plan; upgrade tagentd to one that "
                            "answers `status` with `plan`")
    plan = msgspec.convert(detail.plan, Plan)
    statuses = {name: step.status for name, step in detail.steps.items()}
    if fmt == "text":
        click.echo(f"run {detail.run_id}: {detail.status}")
    click.echo(_render(plan, fmt, statuses, color=color, title=f"run {detail.run_id}: {detail.status}"), nl=False)


def _render(plan: Plan, fmt: str, statuses: dict[str, str] | None, *, color: bool, title: str | None = None) -> str:
    if fmt == "svg":
        from .graph_svg import render_svg  # loads the layout library: only for SVG

        return render_svg(plan, statuses, title)
    return render(plan, fmt, statuses, color=color)


COMMANDS = [graph]
