"""What `tagentd status` and `tagentd config show` print: key/value blocks and tables, from plain data.

No I/O beyond click.echo, nothing heavy imported: `tagentd status` must start fast.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from tagentd.cli.stop import stopping_rows
from tagentd.settings.locations import LOG_FILE


def print_status(info: Any) -> None:
    """A running daemon's DaemonInfo: pid, version, uptime, sockets, dirs, runs, broker numbers, then its workers."""
    busy = sum(1 for w in info.workers if w.running > 0)
    idle = sum(1 for w in info.workers if w.running == 0 and w.state != "starting")
    starting = info.stats.get("workers_starting")  # workers start after the daemon answers: until then, starting
    click.echo(f"tagentd is running (pid {info.pid}, version {info.version}, up {duration(info.uptime_s)})")
    rows = [(f"{name} socket", path) for name, path in info.sockets.items()]
    rows += [
        ("runtime dir", info.runtime_dir),
        ("state dir", info.state_dir),
        ("log file", str(Path(info.state_dir) / LOG_FILE)),
        ("durable", "yes" if info.durable else "no (runs are lost when the daemon stops)"),
        ("disk", disk_row(info.stats.get("state_dir_problem"))),
        ("runs", f"{info.runs_active} active, {info.runs_total} total"),
        ("watching", ", ".join(info.watch_dirs) + " (see 'tagent watch')" if info.watch_dirs else "no folder"),
        ("workers", f"{len(info.workers)} ({busy} busy, {idle} idle" + (f", {starting} starting)" if starting else ")")),
    ]
    rows += web_rows(info.stats.get("web"))
    rows += cluster_rows(info.cluster)
    rows += broker_rows(info.stats.get("broker")) + stopping_rows(info.stats.get("stopping"))
    print_pairs(rows)
    nodes = node_table(info.cluster)
    if nodes:
        click.echo()
        print_table(nodes, indent=2)
    breakers = breaker_table(info.stats.get("breakers"))
    if breakers:
        click.echo()
        print_table(breakers, indent=2)
    if info.workers:
        now = time.time()
        table = [("ID", "PID", "STATE", "STEPS", "DONE", "UP")]
        table += [
            (str(w.id), str(w.pid), w.state, f"{w.running}/{w.capacity}", str(w.completed), duration(now - w.started_at))
            for w in info.workers
        ]
        click.echo()
        print_table(table, indent=2)


def web_rows(web: dict[str, Any] | None) -> list[tuple[str, str]]:
    """The dashboard's address (never its token: 'tagent ui' prints that), when the daemon serves one."""
    if not web or not web.get("enabled"):
        return []
    if web.get("url"):
        restarts = f"; restarted {web['restarts']} times" if web.get("restarts") else ""
        return [("dashboard", f"{web['url']} ('tagent ui' prints it with the login token{restarts})")]
    return [("dashboard", "starting (see the log file if this lasts)")]


def disk_row(problem: str | None) -> str:
    """`tagentd status`: whether commits reach the state dir (see docs/operations.md, "Disk full")."""
    return f"STATE DIR {problem}" if problem else "ok"


def cluster_rows(cluster: Any) -> list[tuple[str, str]]:
    """`tagentd status` with `executor = "ray"`: which cluster, whether it answers (docs/scale-out.md)."""
    if cluster is None:
        return []
    alive = sum(1 for n in cluster.nodes if n.alive)
    state = f"{alive} node(s) alive" if cluster.connected else f"NOT ANSWERING: {cluster.problem}"
    return [("cluster", f"{cluster.kind} at {cluster.address} (namespace {cluster.namespace}), {state}")]


def node_table(cluster: Any) -> list[tuple[str, ...]]:
    """Each node of the cluster: its resources, and this daemon's workers and steps on it."""
    if cluster is None or not cluster.nodes:
        return []
    rows = [("NODE", "ADDRESS", "STATE", "WORKERS", "STEPS", "RESOURCES")]
    for n in cluster.nodes:
        shown = {k: v for k, v in n.resources.items() if not k.startswith("node:") and k != "object_store_memory"}
        resources = ", ".join(f"{k}={v / 2**30:.1f}GiB" if k == "memory" else f"{k}={v:g}" for k, v in sorted(shown.items()))
        rows.append((n.node_id[:12], n.address, "alive" if n.alive else "dead", str(n.workers), str(n.steps),
                     resources or "-"))
    return rows


def broker_rows(broker: dict[str, Any] | None) -> list[tuple[str, str]]:
    """The broker's numbers for `tagentd status` (see `tagent mailbox ls`, `tagent pipelines` for details)."""
    if not broker:
        return []
    return [
        ("messages", f"{broker['messages_queued']} queued in {broker['mailboxes']} mailbox(es), "
                     f"{broker['messages_leased']} leased, {broker.get('messages_dead', 0)} dead letter(s); "
                     f"{broker['messages_per_s']:g}/s sent"),
        ("events", f"{broker['events_per_s']:g}/s published, {broker['subscribers']} subscriber(s), "
                   f"{broker['events_dropped']} dropped for slow subscribers"),
        ("spaces", f"{broker['spaces']} ({broker['space_bytes']} bytes)"),
        ("triggers", f"{broker['registered']} pipeline(s) registered, {broker['triggers_queued']} event(s) queued"),
    ]


def breaker_table(breakers: list[dict[str, Any]] | None) -> list[tuple[str, ...]]:
    """`tagentd status`: each circuit breaker (an LLM endpoint's `llm:NAME`, or a `ctx.breaker` name)."""
    if not breakers:
        return []
    rows = [("BREAKER", "STATE", "FAILURES", "REOPENS", "OPENED")]
    for b in breakers:
        wait = b.get("reopens_in")
        reopens = f"in {wait:.1f}s" if wait is not None else "probe out" if b.get("probe_out") else "-"
        rows.append((b["name"], b["state"].replace("_", "-"), str(b["failures"]), reopens, f"{b['opened']}x"))
    return rows


def duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")]
    shown = [f"{n}{unit}" for n, unit in parts if n] or ["0s"]
    return " ".join(shown[:2])


def print_pairs(rows: list[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        click.echo(f"  {key:<{width}}  {value}")


def print_table(rows: list[tuple[str, ...]], indent: int = 0) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo(" " * indent + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def show_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "[]"
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":")) if value else "{}"
    return str(value)
