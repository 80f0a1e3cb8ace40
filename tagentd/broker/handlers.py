"""Handlers for broker requests, from clients (control.sock) and from steps (workers.sock).

One function per request type, like tagentd/control/handlers.py:
`handler(shell, req, caller)` where `caller` is the calling step's `StepRef`, or
None for a client — a client is the owner and no allow-list applies to it. A
handler returns the result (plain data or a result Struct) or raises a
TagentError; tagentd/control/router.py turns either into the reply, for a client
(tagentd/control/handlers.py's `route`) and for a step
(tagentd/control/broker_calls.py) alike. `receive` returns a `Parked` (answered
inside the send that fills it) and `wait_event` is a coroutine: both may wait
until something arrives. Every reply leaves after the daemon's next commit, so
what it reports is on disk — but for what `StepReplies.answered_at_once` (replies.py) names:
a non-durable send (`durable=False`) and a receive of such a message, which
promise nothing a crash could break.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tagent_client.bounds import check_depth, check_name
from tagent_client.core.broker_records import AccessEntry, DeadLetter, Entry, Lease
from tagent_client.errors import InvalidRequest, NotFound, PermissionDenied
from tagent_client.wire import protocol_broker as b
from tagentd.broker import views
from tagentd.plumbing import peers
from tagentd.plumbing.longpoll import Parked, wait_limit

if TYPE_CHECKING:
    from tagentd.broker.service import BrokerShell

Caller = b.StepRef | None


def owner_only(caller: Caller, what: str) -> None:
    if caller is not None:
        raise PermissionDenied(f"step {caller.step!r} of pipeline {caller.pipeline!r} may not {what}; only a client "
                               f"(the daemon's owner, e.g. the tagent command) may")


# -- mailboxes -----------------------------------------------------------------------------------------


def send(shell: BrokerShell, req: b.SendMessage, caller: Caller) -> dict[str, Any]:
    message_id = req.message_id or uuid.uuid4().hex
    check_name("a message type", req.message_type)
    return shell.send(req.to, message_id, peers.who(req, caller), req.payload, message_type=req.message_type,
                      from_pipeline=source_of(req.from_pipeline, caller), durable=req.durable)


def source_of(claimed: str | None, caller: Caller) -> str:
    """The pipeline a message or event comes from: a step's own (whatever it claims), else what the client names."""
    if caller is not None:
        return caller.pipeline
    return check_name("a pipeline name", claimed) if claimed else ""


def receive(shell: BrokerShell, req: b.ReceiveMessage, caller: Caller) -> Parked:
    if caller is None:
        raise InvalidRequest("only a step can receive messages (they are leased to its attempt); "
                             "look into a mailbox with 'tagent mailbox ls --peek N'")
    return shell.receive(caller, wait_limit(req.wait, b.MAX_WAIT))


def ack_messages(shell: BrokerShell, req: b.AckMessages, caller: Caller) -> dict[str, Any]:
    mailbox = req.mailbox or (caller.pipeline if caller is not None else None)
    if mailbox is None:
        raise InvalidRequest("ack needs the mailbox (pipeline) the messages are in")
    if caller is not None and mailbox != caller.pipeline:
        raise PermissionDenied(f"step {caller.step!r} of pipeline {caller.pipeline!r} may only acknowledge messages "
                               f"of its own mailbox, not of {mailbox!r}")
    acked = shell.broker.core.ack(mailbox, [str(i) for i in req.ids])
    shell.broker.stats["messages_acked"] += len(acked)
    return {"acked": acked}


def list_mailboxes(shell: BrokerShell, req: b.ListMailboxes, caller: Caller) -> list[b.MailboxInfo]:
    return views.mailboxes(shell, req.pipeline, max(0, min(req.peek, 1000)))


def dead_letters(shell: BrokerShell, req: b.DeadLetters, caller: Caller) -> list[DeadLetter]:
    return shell.broker.core.dead_letters(check_name("a mailbox (pipeline) name", req.mailbox))


def requeue_dead(shell: BrokerShell, req: b.RequeueDead, caller: Caller) -> dict[str, Any]:
    owner_only(caller, f"requeue dead letters of mailbox {req.mailbox!r}")
    needs_ids(req)
    return {"requeued": shell.requeue(req.mailbox, [str(i) for i in req.ids], req.all)}


def drop_dead(shell: BrokerShell, req: b.DropDead, caller: Caller) -> dict[str, Any]:
    owner_only(caller, f"drop dead letters of mailbox {req.mailbox!r}")
    needs_ids(req)
    dropped = shell.broker.core.drop_dead(req.mailbox, [str(i) for i in req.ids], req.all)
    shell.broker.stats["messages_dropped"] += len(dropped)
    return {"dropped": dropped}


def needs_ids(req: b.RequeueDead | b.DropDead) -> None:
    check_name("a mailbox (pipeline) name", req.mailbox)
    if not req.ids and not req.all:
        raise InvalidRequest(f"name the dead letters of mailbox {req.mailbox!r} by id, or ask for all of them; "
                             f"list them with 'tagent mailbox dead {req.mailbox}'")


# -- topics ----------------------------------------------------------------------------------------------------


def publish(shell: BrokerShell, req: b.Publish, caller: Caller) -> dict[str, Any]:
    check_name("a topic", req.topic)
    if req.event_id:
        check_name("an event id", req.event_id)
    record, triggered = shell.publish(req.topic, req.data, source_of(req.source, caller) or None, req.event_id or "")
    return {"seq": record.seq, "id": record.id, "triggered": triggered}


def publish_many(shell: BrokerShell, req: b.PublishMany, caller: Caller) -> dict[str, Any]:
    for topic, _ in req.events:
        check_name("a topic", topic)
    triggered = shell.publish_many(req.events, caller.pipeline if caller is not None else None)
    return {"published": len(req.events), "triggered": triggered}


async def wait_event(shell: BrokerShell, req: b.WaitEvent, caller: Caller) -> Any:
    return await shell.wait_event(req.prefix, wait_limit(req.wait, b.MAX_WAIT))


# -- spaces ------------------------------------------------------------------------------------------------------


def space_get(shell: BrokerShell, req: b.SpaceGet, caller: Caller) -> Entry | None:
    shell.broker.check_access(req.space, caller, "get", req.key)
    shell.broker.stats["space_reads"] += 1
    return shell.broker.core.get(req.space, req.key, peers.who(req, caller), time.time())


def space_put(shell: BrokerShell, req: b.SpacePut, caller: Caller) -> Entry:
    shell.broker.check_access(req.space, caller, "put", req.key)
    by = peers.who(req, caller)
    entry = shell.broker.core.put(req.space, req.key, req.value, by, time.time(), b.fence_of(req))
    shell.space_changed(req.space, "put", entry, by, caller)
    return entry


def space_cas(shell: BrokerShell, req: b.SpaceCas, caller: Caller) -> dict[str, Any]:
    shell.broker.check_access(req.space, caller, "cas", req.key)
    by = peers.who(req, caller)
    ok, entry = shell.broker.core.cas(req.space, req.key, req.value, req.expected_version, by, time.time(),
                                      b.fence_of(req))
    if ok and entry is not None:
        shell.space_changed(req.space, "cas", entry, by, caller)
    else:
        shell.broker.stats["cas_conflicts"] += 1
    return {"ok": ok, "entry": entry}


def space_delete(shell: BrokerShell, req: b.SpaceDelete, caller: Caller) -> dict[str, Any]:
    shell.broker.check_access(req.space, caller, "delete", req.key)
    by = peers.who(req, caller)
    gone = shell.broker.core.delete(req.space, req.key, by, time.time(), req.expected_version, b.fence_of(req))
    if gone is not None:
        shell.space_changed(req.space, "delete", Entry(key=req.key, value=None, version=gone.version), by, caller)
    return {"deleted": gone is not None}


def space_keys(shell: BrokerShell, req: b.SpaceKeys, caller: Caller) -> list[Any]:
    shell.broker.check_access(req.space, caller, "keys", req.prefix)
    space = shell.broker.core.spaces.get(req.space)
    if space is None:
        return []
    keys = space.keys(req.prefix)
    return [[k, space.entries[k].version, space.sizes.get(k, 0)] for k in keys] if req.versions else keys


def space_log(shell: BrokerShell, req: b.SpaceLog, caller: Caller) -> list[AccessEntry]:
    shell.broker.check_access(req.space, caller, "log")
    space = shell.broker.core.spaces.get(req.space)
    return list(space.log)[-max(1, min(req.limit, 10_000)):] if space is not None else []


async def space_lock(shell: BrokerShell, req: b.SpaceLock, caller: Caller) -> Lease | None:
    if caller is None:
        raise InvalidRequest("only a step can hold a lock on a space's key (its lease ends with its attempt)")
    shell.broker.check_access(req.space, caller, "lock", req.key)
    return await shell.lock(caller, req.space, req.key, b.lease_ttl(req.ttl), wait_limit(req.wait, b.MAX_WAIT))


def space_unlock(shell: BrokerShell, req: b.SpaceUnlock, caller: Caller) -> dict[str, Any]:
    shell.broker.check_access(req.space, caller, "unlock", req.key)
    return {"released": shell.locks.release(req.space, req.key, req.token) is not None}


def space_renew(shell: BrokerShell, req: b.SpaceRenew, caller: Caller) -> Lease:
    shell.broker.check_access(req.space, caller, "renew", req.key)
    return shell.locks.renew(req.space, req.key, req.token, b.lease_ttl(req.ttl), peers.who(req, caller))


def space_allow(shell: BrokerShell, req: b.SpaceAllow, caller: Caller) -> dict[str, Any]:
    owner_only(caller, f"change who may use space {req.space!r}")
    check_name("a space name", req.space)
    allowed = shell.broker.grant(req.space, [check_name("a pipeline name", p) for p in req.pipelines], req.replace)
    return {"space": req.space, "allow": sorted(allowed) if allowed is not None else None}


# -- registry, triggers, stats --------------------------------------------------------------------------------------


def list_pipelines(shell: BrokerShell, req: b.ListPipelines, caller: Caller) -> list[b.RegistryEntry]:
    return views.registry(shell, req.capability)


def register_pipeline(shell: BrokerShell, req: b.RegisterPipeline, caller: Caller) -> b.RegistryEntry:
    """Enter a pipeline in the registry with what it says of itself; returns its registry entry."""
    check_name("a pipeline name", req.pipeline)
    for capability in req.info.capabilities:
        check_name("a capability", capability)
    check_depth("the pipeline's metadata", req.info.metadata)
    info = b.PipelineInfo(description=req.info.description, capabilities=list(req.info.capabilities),
                          metadata=req.info.metadata, registered_at=time.time(), by=peers.who(req, caller))
    shell.broker.describe(req.pipeline, info)
    shell.mark_dirty()
    return next(e for e in views.registry(shell, None) if e.pipeline == req.pipeline)


def unregister(shell: BrokerShell, req: b.Unregister, caller: Caller) -> dict[str, Any]:
    owner_only(caller, "unregister pipelines")
    if req.pipeline not in shell.broker.registrations and req.pipeline not in shell.broker.infos:
        registered = ", ".join(sorted({*shell.broker.registrations, *shell.broker.infos})) or "none"
        raise NotFound(f"pipeline {req.pipeline!r} is not registered (registered: {registered})")
    dropped = shell.broker.unregister(req.pipeline)
    return {"pipeline": req.pipeline, "dropped_queued": dropped}


def stats(shell: BrokerShell, req: b.BrokerStatsRequest, caller: Caller) -> b.BrokerStats:
    return views.stats(shell)


HANDLERS: dict[type, Callable[..., Any]] = {
    b.SendMessage: send,
    b.ReceiveMessage: receive,
    b.AckMessages: ack_messages,
    b.ListMailboxes: list_mailboxes,
    b.DeadLetters: dead_letters,
    b.RequeueDead: requeue_dead,
    b.DropDead: drop_dead,
    b.Publish: publish,
    b.PublishMany: publish_many,
    b.WaitEvent: wait_event,
    b.SpaceGet: space_get,
    b.SpacePut: space_put,
    b.SpaceCas: space_cas,
    b.SpaceDelete: space_delete,
    b.SpaceKeys: space_keys,
    b.SpaceLog: space_log,
    b.SpaceAllow: space_allow,
    b.SpaceLock: space_lock,
    b.SpaceUnlock: space_unlock,
    b.SpaceRenew: space_renew,
    b.ListPipelines: list_pipelines,
    b.RegisterPipeline: register_pipeline,
    b.Unregister: unregister,
    b.BrokerStatsRequest: stats,
}

