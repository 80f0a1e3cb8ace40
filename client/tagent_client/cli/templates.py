"""The template commands of `tagent`: `templates` (list the template library) and `new` (start a file from one).

Neither talks to the daemon, and neither imports a template: `define/templates.py` reads them as text.
Registered on the `tagent` group by main.py; the output contract is main.py's.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from .common import emit_json, json_option


def _value(value: Any) -> str:
    import json  # noqa: PLC0415 - only to show a default that is not a plain string

    return value if isinstance(value, str) else json.dumps(value)


def params_line(params: dict[str, Any]) -> str:
    """`company=Acme Corp, depth=2`, or `-`."""
    return ", ".join(f"{name}={_value(value)}" for name, value in params.items()) or "-"


@click.command()
@json_option
def templates(as_json: bool) -> None:
    """List the pipeline templates: name, what it does, its params with their defaults.

    Start a pipeline file from one with 'tagent new FILE --template NAME'.
    """
    from ..define.templates import list_templates  # noqa: PLC0415 - only this command needs it (difflib, shutil)

    found = list_templates()
    if as_json:
        emit_json([t.to_dict() for t in found])
        return
    width = max((len(t.name) for t in found), default=4)
    click.echo(f"{'NAME':<{width}}  SUMMARY")
    for t in found:
        click.echo(f"{t.name:<{width}}  {t.summary}")
        click.echo(f"{'':<{width}}  params: {params_line(t.params)}")


@click.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--template", "-t", "name", required=True, metavar="NAME", help="The template ('tagent templates' lists them).")
@click.option("--force", is_flag=True, help="Overwrite FILE if it exists.")
def new(file: Path, name: str, force: bool) -> None:
    """Start a pipeline file FILE from a template (and copy its sample data next to it); prints what to do next."""
    from ..define.templates import copy_template, find_template  # noqa: PLC0415 - only this command needs them

    template = find_template(name)
    copied = copy_template(template, file, force=force)
    shown = os.path.relpath(copied.file) if not file.is_absolute() else str(copied.file)
    click.echo(f"created {shown} from template {template.name}")
    for path in copied.data:
        click.echo(f"  sample data: {path}")
    for path in copied.kept:
        click.echo(f"  sample data: {path} exists, kept as it is")
    names = list(template.params)
    click.echo("next:")
    click.echo(f"  edit {shown}: its docstring says what each param does and what to change first")
    click.echo(f"  tagent submit {shown} --model test --follow   # a run on the offline test model, with the defaults")
    if names:
        click.echo(f"  tagent submit {shown} --param {names[0]}=... --model MODEL --follow   # params: {', '.join(names)}")


COMMANDS = [templates, new]
