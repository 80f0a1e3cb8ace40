"""The broker commands of `tagent`: send, publish, subscribe, space, pipelines, mailbox, unregister.

Registered on the `tagent` group by main.py. Same contract as the rest of the
command: `--json` puts nothing but JSON on stdout (`subscribe --json`: one
object per line), errors are one `tagent: ...` line on stderr with the exit
status of their code. A JSON argument must be valid JSON (a usage error
otherwise); `--text` takes it as a plain string instead. `send` refuses a
pipeline name nothing has run or registered (a typo would queue messages no
step ever takes) unless `--create` says it is meant.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

from ..core.broker_records import AccessEntry, DeadLetter
from ..errors import NotFound, exit_code_for
from ..wire.protocol import EventRecord
from ..wire.protocol_broker import MailboxInfo, RegistryEntry, SpaceInfo
from .common import Session, emit_json, json_option, pass_session
from .render import age, clock, compact_json, table

if TYPE_CHECKING:
    from ..client.sync import Client


def parse_json(text: str, *, as_text: bool, param: str) -> Any:
    """The value of a JSON argument: parsed (click.BadParameter if it is not JSON), or `text` itself with --text."""
    if as_text:
        return text
    try:
        return json.loads(text)
    except RecursionError:  # nested deeper than the parser goes
        raise click.BadParameter("nested too deep to parse; flatten it", param_hint=f"'{param}'") from None
    except ValueError as exc:
        raise click.BadParameter(f"{text!r} is not valid JSON ({exc}); quote a string as JSON, e.g. '\"hello\"', "
                                 f"or pass --text to take it as plain text", param_hint=f"'{param}'") from None


def text_option(what: str) -> Any:
    return click.option("--text", "as_text", is_flag=True, help=f"Take {what} as a plain string, not as JSON.")


def check_known_pipeline(client: Client, pipeline: str) -> None:
    """NotFound unless a pipeline of that name is running, registered, has a mailbox or has run (with a close match)."""
    registry = {entry.pipeline for entry in client.pipelines()}
    if pipeline in registry or client.mailboxes(pipeline):
        return
    known = registry | {run.pipeline for run in client.runs(limit=10_000)}
    if pipeline in known:
        return
    known |= {box.name for box in client.mailboxes()}
    import difflib  # noqa: PLC0415 - only for a name nobody knows

    close = difflib.get_close_matches(pipeline, sorted(known), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise NotFound(f"no pipeline {pipeline!r} has run or registered here, so no step would take the message; "
                   f"{hint}(--create queues it anyway, for a pipeline you will start later)", pipeline=pipeline)


# -- rendering -----------------------------------------------------------------------------------------


def event_row(record: EventRecord) -> str:
    return f"{clock(record.ts)}  {record.topic}  {compact_json(record.data)}"


def pipelines_table(entries: Sequence[RegistryEntry]) -> str:
    if not entries:
        return "no running or registered pipelines"
    rows = []
    for e in entries:
        state = ", ".join(filter(None, [f"{len(e.run_ids)} running" if e.run_ids else "",
                                        f"registered ({e.queued_triggers} queued)" if e.registered else "",
                                        "registered" if e.info is not None and not e.registered else ""]))
        description = e.info.description if e.info is not None else ""
        rows.append((e.pipeline, state, ",".join(e.capabilities) or "-", ",".join(e.triggers) or "-",
                     " ".join(e.run_ids[:3]) + (" ..." if len(e.run_ids) > 3 else ""),
                     (description[:57] + "...") if len(description) > 60 else description or "-"))
    return table(("PIPELINE", "STATE", "CAPABILITIES", "TRIGGERS", "RUNS", "DESCRIPTION"), rows)


def mailboxes_table(boxes: Sequence[MailboxInfo], now: float) -> str:
    if not boxes:
        return "no mailboxes"
    lines = [table(("MAILBOX", "MESSAGES", "LEASED", "DEAD", "OLDEST"),
                   [(m.name, m.messages, m.leased, m.dead, age(now - m.oldest_ts) if m.oldest_ts else "-")
                    for m in boxes])]
    for box in boxes:
        for message in box.peek:
            lines.append(f"  {box.name} #{message.seq}  {message.id}  from {message.sender}  {compact_json(message.payload)}")
    return "\n".join(lines)


def dead_table(name: str, letters: Sequence[DeadLetter], now: float) -> str:
    if not letters:
        return f"mailbox {name!r} has no dead letters"
    rows = [(d.message.id, d.message.sender, d.message.failures, age(now - d.dead_at), d.error[:80],
             compact_json(d.message.payload)[:60]) for d in letters]
    return table(("ID", "FROM", "FAILURES", "DIED", "LAST ERROR", "PAYLOAD"), rows)


REFUSALS = {"missing": "no such key", "conflict": "version conflict", "denied": "denied (allow-list)",
            "stale": "refused: a newer lease fences it", "lost": "refused: its lease ended",
            "held": "held by another", "timeout": "timed out waiting"}


def access_table(entries: Sequence[AccessEntry]) -> str:
    if not entries:
        return "no access recorded"
    rows = [(clock(e.ts), e.who, e.op, e.key, e.version,
             (f"ok ({e.reason})" if e.reason else "ok") if e.ok else REFUSALS.get(e.reason, "refused"))
            for e in entries]  # an ok line's reason says why a lease ended (op unlock); VERSION is then its token
    return table(("TIME", "WHO", "OP", "KEY", "VERSION", "RESULT"), rows)


# -- commands --------------------------------------------------------------------------------------------


@click.command()
@click.argument("pipeline")
@click.argument("payload", metavar="JSON")
@click.option("--id", "message_id", metavar="ID", help="Message id (a repeated id is dropped as a duplicate).")
@text_option("JSON")
@click.option("--create", is_flag=True, help="Queue it even if no pipeline of that name has run or registered yet.")
@click.option("--no-durable", "not_durable", is_flag=True,
              help="Return before the message is on disk (faster; a daemon crash right after may lose it).")
@pass_session
def send(session: Session, pipeline: str, payload: str, message_id: str | None, as_text: bool, create: bool,
         not_durable: bool) -> None:
    """Put a message in PIPELINE's mailbox; its runs take it with ctx.receive(). Prints the message id."""
    value = parse_json(payload, as_text=as_text, param="JSON")
    client = session.client()
    if not create:
        check_known_pipeline(client, pipeline)
    click.echo(client.send(pipeline, value, id=message_id, durable=not not_durable))


@click.command()
@click.argument("topic")
@click.argument("data", metavar="[JSON]", required=False)
@text_option("JSON")
@json_option
@pass_session
def publish(session: Session, topic: str, data: str | None, as_text: bool, as_json: bool) -> None:
    """Publish an event on TOPIC to subscribers and to the pipelines registered for it."""
    value = parse_json(data, as_text=as_text, param="[JSON]") if data is not None else None
    result = session.client().publish(topic, value)
    if as_json:
        emit_json(result)
    elif result.get("triggered"):
        click.echo(f"published {topic}; queued a run of {', '.join(result['triggered'])}")
    else:
        click.echo(f"published {topic}")


@click.command()
@click.argument("prefixes", nargs=-1, metavar="PREFIX...")
@click.option("--count", "-n", type=click.IntRange(min=1), help="Exit after N events.")
@click.option("--timeout", type=click.FloatRange(min=0), metavar="S", help="Exit after S seconds without an event.")
@json_option
@pass_session
def subscribe(session: Session, prefixes: tuple[str, ...], count: int | None, timeout: float | None, as_json: bool) -> None:
    """Print events whose topic starts with a PREFIX (none: every event) as they come; Ctrl-C stops."""
    seen = 0
    with session.client().subscribe(*prefixes) as subscription:
        click.echo(f"subscribed to {', '.join(repr(p) for p in prefixes) or 'every topic'}", err=True)
        while count is None or seen < count:
            record = subscription.get(timeout)
            if record is None:
                break
            seen += 1
            if as_json:
                emit_json({"seq": record.seq, "ts": record.ts, "topic": record.topic, "data": record.data}, line=True)
            else:
                click.echo(event_row(record))
    if subscription.dropped:
        click.echo(f"tagent: the daemon dropped {subscription.dropped} event(s) this subscriber did not read in time",
                   err=True)


@click.group()
def space() -> None:
    """Shared spaces: versioned keys that steps and clients read and write."""


def spaces_table(spaces: Sequence[SpaceInfo]) -> str:
    if not spaces:
        return "no spaces"
    rows = [(s.name, s.keys, s.bytes, "everyone" if s.allow is None else ", ".join(s.allow) or "clients only")
            for s in spaces]
    return table(("SPACE", "KEYS", "BYTES", "ALLOWED"), rows)


@space.command("ls")
@click.argument("name", required=False)
@click.option("--prefix", default="", help="Only keys (without NAME: spaces) starting with this.")
@json_option
@pass_session
def space_ls(session: Session, name: str | None, prefix: str, as_json: bool) -> None:
    """List the spaces (no NAME), or a space's keys with their versions and sizes."""
    if name is None:
        spaces = [s for s in session.client().broker_stats().spaces if s.name.startswith(prefix)]
        if as_json:
            emit_json(spaces)
        else:
            click.echo(spaces_table(spaces))
        return
    rows = session.client().space(name).listing(prefix)
    if as_json:
        emit_json([{"key": k, "version": v, "bytes": n} for k, v, n in rows])
    else:
        click.echo(table(("KEY", "VERSION", "BYTES"), rows) if rows else f"space {name!r} has no keys{' with that prefix' if prefix else ''}")


@space.command("get")
@click.argument("name")
@click.argument("key")
@json_option
@pass_session
def space_get(session: Session, name: str, key: str, as_json: bool) -> None:
    """Print a key's value (exit 6 if it does not exist)."""
    entry = session.client().space(name).get(key)
    if entry is None:
        click.echo(f"tagent: space {name!r} has no key {key!r}; list its keys with 'tagent space ls {name}'", err=True)
        raise click.exceptions.Exit(exit_code_for(NotFound.code))
    if as_json:
        emit_json({"key": entry.key, "value": entry.value, "version": entry.version})
    else:
        click.echo(json.dumps(entry.value, indent=2, default=str))
        click.echo(f"(version {entry.version})", err=True)


@space.command("put")
@click.argument("name")
@click.argument("key")
@click.argument("value", metavar="JSON")
@click.option("--expect", "expected", type=int, metavar="VERSION", help="Write only if the key is at VERSION (0: absent).")
@text_option("JSON")
@pass_session
def space_put(session: Session, name: str, key: str, value: str, expected: int | None, as_text: bool) -> None:
    """Write a key (durable when this returns); prints its new version."""
    parsed = parse_json(value, as_text=as_text, param="JSON")
    handle = session.client().space(name)
    if expected is None:
        click.echo(f"{key}: version {handle.put(key, parsed).version}")
    elif handle.cas(key, parsed, expected):
        click.echo(f"{key}: written (was version {expected})")
    else:
        current = handle.get(key)
        click.echo(f"tagent: {name}/{key} is at version {current.version if current else 0}, not {expected}; not written",
                   err=True)
        raise click.exceptions.Exit(7)


@space.command("del")
@click.argument("name")
@click.argument("key")
@pass_session
def space_del(session: Session, name: str, key: str) -> None:
    """Delete a key (exit 6 if it does not exist)."""
    if not session.client().space(name).delete(key):
        click.echo(f"tagent: space {name!r} has no key {key!r}; list its keys with 'tagent space ls {name}'", err=True)
        raise click.exceptions.Exit(exit_code_for(NotFound.code))
    click.echo(f"{key}: deleted")


@space.command("log")
@click.argument("name")
@click.option("--limit", "-n", type=click.IntRange(min=1), default=50, show_default=True)
@json_option
@pass_session
def space_log(session: Session, name: str, limit: int, as_json: bool) -> None:
    """Who read and wrote which key of a space, and when (newest last)."""
    entries = session.client().space(name).log(limit)
    if as_json:
        emit_json([{"ts": e.ts, "who": e.who, "op": e.op, "key": e.key, "version": e.version, "ok": e.ok,
                    "reason": e.reason} for e in entries])
    else:
        click.echo(access_table(entries))


@space.command("allow")
@click.argument("name")
@click.argument("pipelines", nargs=-1)
@click.option("--replace", is_flag=True, help="Set the list to exactly PIPELINES (none: lift the list granted here).")
@pass_session
def space_allow(session: Session, name: str, pipelines: tuple[str, ...], replace: bool) -> None:
    """Let only these pipelines' steps use space NAME (on top of tagentd.toml [spaces.NAME] allow)."""
    if not pipelines and not replace:
        raise click.UsageError("name at least one PIPELINE (or --replace with none to lift the list)")
    allowed = session.client().space(name).allow(pipelines, replace=replace).get("allow")
    click.echo(f"space {name}: open to every pipeline" if allowed is None else f"space {name}: only {', '.join(allowed) or 'clients'}")


@click.command()
@click.option("--capability", metavar="X", help="Only pipelines that declare capability X.")
@json_option
@pass_session
def pipelines(session: Session, capability: str | None, as_json: bool) -> None:
    """The registry: running pipelines (capabilities, runs) and pipelines registered for events."""
    found = session.client().pipelines(capability)
    if as_json:
        emit_json(found)
    else:
        click.echo(pipelines_table(found))


@click.group()
def mailbox() -> None:
    """Pipelines' mailboxes of direct messages."""


@mailbox.command("ls")
@click.argument("pipeline", required=False)
@click.option("--peek", type=click.IntRange(min=0), default=0, help="Also show the first N messages of each.")
@json_option
@pass_session
def mailbox_ls(session: Session, pipeline: str | None, peek: int, as_json: bool) -> None:
    """Messages waiting in each mailbox (or PIPELINE's), and how many are leased to a running step."""
    boxes = session.client().mailboxes(pipeline, peek)
    if as_json:
        emit_json(boxes)
    else:
        click.echo(mailboxes_table(boxes, time.time()))


@mailbox.command("dead")
@click.argument("pipeline")
@json_option
@pass_session
def mailbox_dead(session: Session, pipeline: str, as_json: bool) -> None:
    """Dead letters of PIPELINE's mailbox: messages whose delivery failed max_deliveries times, with the last error."""
    letters = session.client().dead_letters(pipeline)
    if as_json:
        emit_json(letters)
    else:
        click.echo(dead_table(pipeline, letters, time.time()))


def _dead_ids(pipeline: str, ids: tuple[str, ...], every: bool) -> None:
    if bool(ids) == every:
        raise click.UsageError(f"name dead letter IDs or give --all (not both); list them with 'tagent mailbox dead {pipeline}'")


@mailbox.command("requeue")
@click.argument("pipeline")
@click.argument("ids", nargs=-1, metavar="ID...")
@click.option("--all", "every", is_flag=True, help="Every dead letter of the mailbox.")
@pass_session
def mailbox_requeue(session: Session, pipeline: str, ids: tuple[str, ...], every: bool) -> None:
    """Put dead letters back in PIPELINE's mailbox, at their original positions and with fresh counts."""
    _dead_ids(pipeline, ids, every)
    done = session.client().requeue_dead(pipeline, *ids, all=every)
    click.echo(f"mailbox {pipeline}: requeued {len(done)} message(s)" + (f": {' '.join(done)}" if done else ""))


@mailbox.command("drop")
@click.argument("pipeline")
@click.argument("ids", nargs=-1, metavar="ID...")
@click.option("--all", "every", is_flag=True, help="Every dead letter of the mailbox.")
@pass_session
def mailbox_drop(session: Session, pipeline: str, ids: tuple[str, ...], every: bool) -> None:
    """Delete dead letters of PIPELINE's mailbox for good (a re-send with the same id stays a duplicate)."""
    _dead_ids(pipeline, ids, every)
    done = session.client().drop_dead(pipeline, *ids, all=every)
    click.echo(f"mailbox {pipeline}: dropped {len(done)} dead letter(s)" + (f": {' '.join(done)}" if done else ""))


@click.command()
@click.argument("pipeline")
@pass_session
def unregister(session: Session, pipeline: str) -> None:
    """Stop starting runs of a pipeline registered for events (its running runs go on)."""
    dropped = session.client().unregister(pipeline).get("dropped_queued", 0)
    click.echo(f"pipeline {pipeline}: unregistered" + (f"; dropped {dropped} queued event(s)" if dropped else ""))


COMMANDS = (send, publish, subscribe, space, pipelines, mailbox, unregister)
