"""The `tagent` command: submit pipeline files to tagentd, then watch, inspect and steer their runs.

Output contract: with --json, stdout carries nothing but JSON (one document; or
one object per line for streams: `logs --json`, `submit --follow --json`), and
anything else goes to stderr. Every TagentError ends the command with one line
`tagent: <message>` on stderr and the exit status `errors.exit_code_for(code)`:
0 ok, 1 the run failed, 2 usage, 3 no daemon running, ... (errors.EXIT_CODES).
The commands are in `runs.py` (runs), `broker.py` (messages, events, spaces) and
`templates.py` (the template library), `graph_command.py` (the DAG view), `ui.py` (the dashboard).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..errors import PipelineValidationError, TagentError, exit_code_for
from ..version import __version__
from . import broker, graph_command, runs, templates, ui
from .common import EXIT_INTERRUPTED, Session


def one_line(exc: TagentError) -> str:
    """An error's message folded onto one line."""
    if isinstance(exc, PipelineValidationError):
        where = f"{exc.details['path']}: " if exc.details.get("path") else ""
        return f"{where}pipeline {exc.pipeline!r} is invalid: {'; '.join(exc.problems)}"
    parts = [part.strip(" -") for part in str(exc.message).splitlines() if part.strip()]
    return "; ".join(parts) or exc.code


class TagentGroup(click.Group):
    """Turns every TagentError into one stderr line and its exit status; Ctrl-C exits 130 quietly."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TagentError as exc:
            click.echo(f"tagent: {one_line(exc)}", err=True)
            ctx.exit(exit_code_for(exc.code))
        except KeyboardInterrupt:
            click.echo("", err=True)
            ctx.exit(EXIT_INTERRUPTED)


@click.group(cls=TagentGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--runtime-dir", type=click.Path(file_okay=False, path_type=Path), envvar="TAGENTD_RUNTIME_DIR",
              help="The daemon's runtime dir (default: $XDG_RUNTIME_DIR/tagentd, else /tmp/tagentd-UID).")
@click.version_option(__version__, "--version", prog_name="tagent")
@click.pass_context
def cli(ctx: click.Context, runtime_dir: Path | None) -> None:
    """Submit pipelines to the tagentd daemon and watch, inspect and steer their runs."""
    session = Session(runtime_dir.expanduser().absolute() if runtime_dir else None)
    ctx.obj = session
    ctx.call_on_close(session.close)


for _command in [*runs.COMMANDS, *broker.COMMANDS, *templates.COMMANDS, *graph_command.COMMANDS, *ui.COMMANDS]:
    cli.add_command(_command)


def main() -> None:
    cli(prog_name="tagent")
