"""The run commands of `tagent`: submit, runs, status, why, logs, result, cancel, resume, retry, transcript,
history, wait, watch.

Registered on the `tagent` group by main.py; the output contract is main.py's.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable
from typing import Any

import click
import msgspec

from .. import bounds
from ..core.result import PipelineResult, to_builtins
from ..core.state import RunStatus
from ..errors import InvalidRequest, exit_code_for
from .common import Session, emit_json, json_option, pass_session
from .render import (
    child_runs,
    history_table,
    is_terminal,
    log_line,
    outputs_block,
    run_header,
    runs_table,
    runs_tree,
    steps_table,
    watch_view,
)


def parse_param(text: str) -> tuple[str, Any]:
    """'KEY=VALUE' -> (KEY, VALUE parsed as JSON if it parses, else the string itself)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise click.BadParameter(f"{text!r} is not KEY=VALUE", param_hint="'--param'")
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
        value = raw
    return key.strip(), value


def build_params(pairs: Iterable[str], params_json: str | None) -> dict[str, Any]:
    """Run params from --params-json (an object) overlaid with each --param KEY=VALUE."""
    params: dict[str, Any] = {}
    if params_json:
        try:
            loaded = bounds.check_depth("run params", json.loads(params_json))
        except ValueError as exc:
            raise click.BadParameter(f"not valid JSON: {exc}", param_hint="'--params-json'") from None
        except (RecursionError, InvalidRequest):
            raise click.BadParameter(f"nested more than {bounds.DEPTH_MAX} levels deep; flatten it, or pass a file "
                                     "path in it instead", param_hint="'--params-json'") from None
        if not isinstance(loaded, dict):
            raise click.BadParameter("must be a JSON object", param_hint="'--params-json'")
        params.update(loaded)
    for pair in pairs:
        key, value = parse_param(pair)
        params[key] = value
    return params


def _record(record: msgspec.Struct) -> dict[str, Any]:
    return to_builtins(msgspec.structs.asdict(record))


run_argument = click.argument("run_id", metavar="RUN")


def report_outcome(result: PipelineResult, *, as_json: bool, line: bool = False, brief: bool = False) -> None:
    """Print a finished run's result; exit 1 unless it completed."""
    if as_json:
        emit_json(result.to_dict(), line=line)
    elif brief:  # the live view already shows every step
        click.echo(result.summary().splitlines()[0] + (f"\n  error: {result.error}" if result.error else ""))
    else:
        click.echo(result.summary())
    if not result.success:
        raise click.exceptions.Exit(exit_code_for("run_failed"))


# -- commands --------------------------------------------------------------------------------


@click.command()
@click.argument("spec", metavar="FILE[:NAME]")
@click.option("--param", "-p", "pairs", multiple=True, metavar="KEY=VALUE",
              help="A run param; VALUE is parsed as JSON if it parses, else kept as a string. Repeatable.")
@click.option("--params-json", metavar="JSON", help="Run params as one JSON object (--param entries override it).")
@click.option("--model", metavar="MODEL", help="Model for agent steps that name none (e.g. openai:gpt-4o-mini, test).")
@click.option("--follow", "-f", is_flag=True, help="Show progress until the run ends; exit 0 if it completed, else 1.")
@click.option("--run", "force_run", is_flag=True, help="Run a pipeline that declares triggers now instead of registering it.")
@click.option("--idempotency-key", metavar="KEY",
              help="Start at most one run per KEY: a repeat prints the run the first one started.")
@json_option
@pass_session
def submit(session: Session, spec: str, pairs: tuple[str, ...], params_json: str | None, model: str | None,
           follow: bool, force_run: bool, idempotency_key: str | None, as_json: bool) -> None:
    """Start a run of the pipeline in FILE (NAME picks one if FILE defines several); prints the run id.

    A pipeline that declares triggers is registered instead: each matching event starts a run of it.
    """
    params = build_params(pairs, params_json)
    client = session.client()
    if follow:
        from .live import Follower  # noqa: PLC0415 - only --follow draws a live view

        follower = session.own(Follower(client, show=not as_json))  # listens for progress notes from before the start
    handle = client.submit(spec, params, model=model, run=force_run, idempotency_key=idempotency_key)
    if handle.registered:
        if as_json:
            emit_json({"registered": True, "pipeline": handle.pipeline, "triggers": list(handle.triggers)})
        else:
            click.echo(f"registered pipeline {handle.pipeline}: each event on {', '.join(handle.triggers)} starts a run "
                       f"('tagent unregister {handle.pipeline}' stops that; 'submit --run' runs it now)")
        return
    if as_json:
        emit_json({"run_id": handle.id, "pipeline": handle.pipeline}, line=follow)
    else:
        click.echo(handle.id)
    if follow:
        result = follower.follow(handle.id, handle.pipeline, handle.steps)
        report_outcome(result, as_json=as_json, line=True, brief=not as_json and is_terminal(sys.stdout))


#: Runs per request when `tagent runs --all` pages through every run.
ALL_PAGE = 500


@click.command()
@click.option("--status", type=click.Choice([s.value for s in RunStatus]), help="Only runs in this state.")
@click.option("--limit", "-n", type=click.IntRange(min=1), default=50, show_default=True, help="At most N runs.")
@click.option("--before", metavar="RUN", help="Only runs created before RUN (the last run of the previous page).")
@click.option("--all", "every", is_flag=True, help="Every run, newest first, fetched page by page (--limit ignored).")
@click.option("--tree", is_flag=True, help="Show each child run (of a sub-pipeline step) under its parent.")
@json_option
@pass_session
def runs(session: Session, status: str | None, limit: int, before: str | None, every: bool, tree: bool,
         as_json: bool) -> None:
    """List runs, newest first: the newest page (--limit), then says how to see older ones (--before, --all)."""
    client = session.client()
    if every:
        pages = _every_page(client, status, before)
        if as_json:  # one JSON array, written as the pages arrive
            click.echo("[", nl=False)
            for n, summary in enumerate(s for page in pages for s in page):
                click.echo(("," if n else "") + "\n  " + msgspec.json.encode(summary).decode(), nl=False)
            click.echo("\n]")
        else:  # one table (its columns fit every row), drawn once every page is in
            click.echo((runs_tree if tree else runs_table)([s for page in pages for s in page], time.time()))
        return
    found = client.runs(limit=limit + 1, status=status, before=before)
    more = len(found) > limit
    found = found[:limit]
    if as_json:
        emit_json(found)
    else:
        click.echo((runs_tree if tree else runs_table)(found, time.time()))
    if more:
        hint = f"tagent runs --before {found[-1].run_id}" + (f" --status {status}" if status else "")
        click.echo(f"(newest {limit} shown; older: '{hint}', or 'tagent runs --all')", err=True)


def _every_page(client: Any, status: str | None, before: str | None) -> Iterable[list[Any]]:
    """Pages of runs, newest first, until a page comes back short (each page starts before the last one's end)."""
    while True:
        page = client.runs(limit=ALL_PAGE, status=status, before=before)
        if page:
            yield page
        if len(page) < ALL_PAGE:
            return
        before = page[-1].run_id


@click.command()
@run_argument
@click.option("--errors", is_flag=True, help="Also print each failed step's error and whole traceback.")
@json_option
@pass_session
def status(session: Session, run_id: str, errors: bool, as_json: bool) -> None:
    """Show a run and the state of each of its steps."""
    detail = session.client().status(run_id)
    if as_json:
        emit_json(detail)
        return
    now = time.time()
    click.echo(run_header(detail, now))
    if detail.steps:
        click.echo(steps_table(detail, now))
    if any(step.children for step in detail.steps.values()):
        click.echo(child_runs(detail))
    if errors:
        for name, step in detail.steps.items():
            if step.status == "failed" and step.error:
                click.echo(f"\nstep {name}: {step.error}")
                if step.traceback:
                    click.echo(step.traceback.rstrip())


@click.command()
@run_argument
@click.option("--verbose", "-v", "full", is_flag=True, help="Print whole tracebacks, not just their last frames.")
@json_option
@pass_session
def why(session: Session, run_id: str, full: bool, as_json: bool) -> None:
    """Explain why a run failed: each root failure (first first), its attempts, traceback, the steps skipped
    because of it, and what to do next. Exits 0 for a completed run, 1 for a failed one."""
    client = session.client()
    detail = client.status(run_id)
    events, after = [], 0
    while batch := client.events(detail.run_id, after=after).events:
        events += batch
        after = batch[-1].seq
    from .failures import diagnose, render  # noqa: PLC0415 - only this command needs them (tests/test_cli_imports.py)

    diagnosis = diagnose(detail, events)
    if as_json:
        emit_json(diagnosis.to_dict())
    else:
        click.echo(render(diagnosis, full=full))
    if detail.status in ("failed", "rollback_failed"):
        raise click.exceptions.Exit(exit_code_for("run_failed"))


@click.command()
@run_argument
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines until the run finishes.")
@json_option
@pass_session
def logs(session: Session, run_id: str, follow: bool, as_json: bool) -> None:
    """Print a run's log lines (--json: one JSON object per line)."""
    for line in session.client().logs(run_id, follow=follow):
        if as_json:
            emit_json(_record(line), line=True)
        else:
            click.echo(log_line(line))


@click.command()
@run_argument
@json_option
@pass_session
def result(session: Session, run_id: str, as_json: bool) -> None:
    """Show a run's result: status, time, cost, each step and its output (partial while it runs)."""
    outcome = session.client().result(run_id)
    if as_json:
        emit_json(outcome.to_dict())
    else:
        click.echo(outcome.summary())
        click.echo(outputs_block(outcome.step_outputs))


@click.command()
@run_argument
@pass_session
def cancel(session: Session, run_id: str) -> None:
    """Cancel a run: running steps are stopped, completed outputs are kept."""
    session.client().cancel(run_id)
    click.echo(f"run {run_id}: cancel requested")


@click.command()
@run_argument
@pass_session
def resume(session: Session, run_id: str) -> None:
    """Run a failed or cancelled run again from its checkpoint (completed steps are kept)."""
    again = session.client().resume(run_id).get("steps") or []
    click.echo(f"run {run_id}: resumed; running again: {', '.join(again) or 'nothing'}")


@click.command()
@run_argument
@pass_session
def rollback(session: Session, run_id: str) -> None:
    """Undo an ended run: run the compensations of its completed steps, latest first."""
    steps = session.client().rollback(run_id).get("steps") or []
    click.echo(f"run {run_id}: rolling back; compensating: {', '.join(steps)} (see tagent status {run_id})")


@click.command()
@run_argument
@click.option("--step", required=True, metavar="NAME", help="The step to run again (its dependents follow).")
@pass_session
def retry(session: Session, run_id: str, step: str) -> None:
    """Run one step of a finished run again, and every step that depends on it."""
    session.client().retry(run_id, step)
    click.echo(f"run {run_id}: retrying step {step} and its dependents")


@click.command()
@run_argument
@click.argument("step")
@json_option
@pass_session
def transcript(session: Session, run_id: str, step: str, as_json: bool) -> None:
    """Show what an agent step said and did: prompts, tool calls and results, output (last attempts)."""
    found = session.client().transcript(run_id, step)
    if as_json:
        emit_json(found)
    elif found.get("kind") == "function":
        click.echo(f"step {step!r} is a function step: only agent steps have a transcript; "
                   f"what it logged is in 'tagent logs {found.get('run_id', run_id)}'")
    else:
        from .transcript import render as render_transcript  # noqa: PLC0415 - only this command needs it

        click.echo(render_transcript(found.get("attempts") or []))


@click.command()
@run_argument
@json_option
@pass_session
def history(session: Session, run_id: str, as_json: bool) -> None:
    """Show a run's audit trail: every state change and who asked for it."""
    entries = session.client().history(run_id)
    if as_json:
        emit_json(entries)
    else:
        click.echo(history_table(entries))


@click.command()
@run_argument
@click.option("--timeout", type=click.FloatRange(min=0), metavar="S",
              help="Give up after S seconds (exit 5; the run keeps going).")
@json_option
@pass_session
def wait(session: Session, run_id: str, timeout: float | None, as_json: bool) -> None:
    """Wait for a run to finish and show its result; exit 0 if it completed, 1 if not."""
    report_outcome(session.client().wait(run_id, timeout=timeout), as_json=as_json)


@click.command()
@json_option
@pass_session
def watch(session: Session, as_json: bool) -> None:
    """Show the watched folders and each pipeline file dropped into them: hash, status (run, error, ...), when."""
    info = session.client().watch()
    if as_json:
        emit_json(info)
    else:
        click.echo(watch_view(info, time.time()))


COMMANDS = [submit, runs, status, why, logs, result, cancel, resume, rollback, retry, transcript, history, wait, watch]
