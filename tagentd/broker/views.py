"""Read-only views of the broker for clients and `tagentd status`: mailboxes, the registry, stats.

Functions of the daemon's `BrokerShell`; they change nothing. The registry is
derived: the run table's unfinished runs (with the workers running their steps
right now), plus the pipelines registered for events, plus what pipelines said
of themselves with `register_pipeline` (the last two are stored by the broker).
"""

from __future__ import annotations

import itertools
import time
from typing import TYPE_CHECKING, Any

from tagent_client.wire import protocol_broker as b

if TYPE_CHECKING:
    from tagentd.broker.service import BrokerShell


def mailboxes(shell: BrokerShell, pipeline: str | None, peek: int) -> list[b.MailboxInfo]:
    """Each mailbox (or `pipeline`'s): depth, leased, dead letters, oldest message, and its first `peek` messages."""
    out = []
    for name, box in sorted(shell.broker.core.mailboxes.items()):
        if pipeline is not None and name != pipeline:
            continue
        oldest = box.oldest()
        shown = list(itertools.islice(shell.broker.core.iter_messages(name), peek)) if peek else []
        out.append(b.MailboxInfo(name=name, messages=len(box), leased=len(box.leases),
                                 oldest_ts=oldest.ts if oldest else None, peek=shown, dead=len(box.dead),
                                 max_deliveries=box.max_deliveries))
    return out


def registry(shell: BrokerShell, capability: str | None) -> list[b.RegistryEntry]:
    """Running pipelines (their unfinished runs and the workers on them) and registered ones, by name."""
    entries: dict[str, b.RegistryEntry] = {}
    for run in shell.ops.runs.active():
        entry = entries.get(run.plan.name)
        if entry is None:
            entry = entries[run.plan.name] = b.RegistryEntry(
                pipeline=run.plan.name, capabilities=list(run.plan.capabilities), triggers=list(run.plan.triggers))
        entry.run_ids.append(run.id)
    by_run = {run_id: name for name, e in entries.items() for run_id in e.run_ids}
    for running in shell.steps_in_flight():
        name = by_run.get(running.run_id)
        if name is not None and running.worker not in entries[name].workers:
            entries[name].workers.append(running.worker)
    for name, reg in shell.broker.registrations.items():
        entry = entries.setdefault(name, b.RegistryEntry(pipeline=name, capabilities=list(reg.plan.capabilities)))
        entry.registered, entry.triggers = True, list(reg.triggers)
        entry.queued_triggers = len(shell.broker.queue.get(name, ()))
    for name, info in shell.broker.infos.items():
        entry = entries.setdefault(name, b.RegistryEntry(pipeline=name))
        entry.info = info
        entry.capabilities += [c for c in info.capabilities if c not in entry.capabilities]
    found = [e for e in entries.values() if capability is None or capability in e.capabilities]
    return sorted(found, key=lambda e: e.pipeline)


def rates(shell: BrokerShell, now: float, totals: dict[str, int]) -> dict[str, float]:
    """Per-second rates over the last RATE_WINDOW seconds of samples."""
    if not shell.samples:
        return {}
    then, old = shell.samples[0]
    span = max(now - then, 1e-6)
    return {k: round((v - old.get(k, 0)) / span, 1) for k, v in totals.items()
            if k in ("messages_sent", "messages_delivered", "messages_acked", "events_published",
                     "events_delivered", "events_dropped", "space_writes", "space_reads")}


def stats(shell: BrokerShell) -> b.BrokerStats:
    """The `stats` request: counters, rates, queue depths, subscribers and their drops, spaces, triggers."""
    now = time.monotonic()
    totals = shell.counters()
    core = shell.broker.core
    spaces = [b.SpaceInfo(name=s.name, keys=len(s.entries), bytes=s.bytes, log_entries=len(s.log),
                          allow=sorted(a) if (a := shell.broker.allowed(s.name)) is not None else None)
              for s in core.spaces.values()]
    triggers = {name: {"queued": len(shell.broker.queue.get(name, ())),
                       "running": len(shell.broker.triggered_running.get(name, ()))}
                for name in shell.broker.registrations}
    return b.BrokerStats(counters=totals, rates=rates(shell, now, totals), mailboxes=mailboxes(shell, None, 0),
                         subscribers=shell.bus.info(now) if shell.bus is not None else [], spaces=spaces,
                         triggers=triggers, store=dict(shell.store.stats, problems=list(shell.store.problems)))


def summary(shell: BrokerShell) -> dict[str, Any]:
    """A few numbers for `tagentd status`."""
    core = shell.broker.core
    totals = shell.counters()
    per_s = rates(shell, time.monotonic(), totals)
    return {
        "messages_per_s": per_s.get("messages_sent", 0.0), "events_per_s": per_s.get("events_published", 0.0),
        "mailboxes": len(core.mailboxes), "messages_queued": sum(len(m) for m in core.mailboxes.values()),
        "messages_leased": sum(len(m.leases) for m in core.mailboxes.values()),
        "messages_dead": sum(len(m.dead) for m in core.mailboxes.values()),
        "subscribers": len(shell.bus.subscribers) if shell.bus is not None else 0,
        "events_dropped": totals.get("events_dropped", 0), "spaces": len(core.spaces),
        "space_bytes": sum(space.bytes for space in core.spaces.values()),
        "registered": len(shell.broker.registrations),
        "triggers_queued": sum(len(q) for q in shell.broker.queue.values()),
    }
