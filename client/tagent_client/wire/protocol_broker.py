"""Broker messages of the control protocol: mailboxes, topics, shared spaces, registry, triggers.

The same request Structs travel two ways: from `Client`/`tagent` on control.sock,
and from a step's context inside a worker on workers.sock (wrapped in the worker's
`BrokerCall` with the calling step's `StepRef`). On events.sock a subscriber sends
`Subscribe` (renewed every `RENEW_EVERY` seconds, forgotten after `EXPIRE_AFTER`)
and receives `EventRecord`s. docs/protocol.md and docs/broker.md describe them.
"""

# Annotations stay real objects (no `from __future__ import annotations`): msgspec would otherwise
# eval each one as a string when the decoders are built, ~2 ms of every command's start.

from typing import Any

import msgspec

from ..core.broker_records import Message
from ..errors import InvalidRequest

PROTOCOL_VERSION = 1  # the control protocol's version (protocol.py re-checks it)
RENEW_EVERY = 2.0
EXPIRE_AFTER = 10.0
MAX_WAIT = 60.0  # longest a receive / wait_for_event / lock request is parked by the daemon; clients loop
MAX_TTL = 86_400.0  # longest a lease is granted for at once (renew to hold it longer)


class StepRef(msgspec.Struct, kw_only=True, array_like=True):
    """Which step attempt a worker's broker call comes from (its leases are settled with that attempt)."""

    run_id: str
    pipeline: str
    step: str
    task: str
    attempt: int
    item_index: int | None = None

    @property
    def holder(self) -> tuple[str, str, int]:
        return (self.run_id, self.task, self.attempt)

    def __str__(self) -> str:
        return f"{self.pipeline}/{self.run_id}/{self.task}#{self.attempt}"


# -- requests ------------------------------------------------------------------------------------


class BrokerRequest(msgspec.Struct, tag_field="type", kw_only=True, dict=True):
    """Base of every broker request (same envelope as protocol.Request, `peer` included)."""

    v: int = PROTOCOL_VERSION
    id: int = 0
    pid: int = 0
    uid: int = -1


class SendMessage(BrokerRequest, tag="send", kw_only=True):
    """Put `payload` in pipeline `to`'s mailbox; answered once durable. A repeated `message_id` is dropped.

    `message_type` labels the message for its receiver; `from_pipeline` is the pipeline a client sends as
    (a step's messages always come from its own pipeline, whatever this says). With `durable=False` the
    send is answered at once, before the commit that writes it, and so is a receive that takes it: a
    crash before that commit loses it (docs/broker.md, "Non-durable messages").
    """

    to: str
    payload: Any = None
    message_id: str | None = None
    message_type: str = "data"
    from_pipeline: str | None = None
    durable: bool = True


class ReceiveMessage(BrokerRequest, tag="receive", kw_only=True):
    """(steps only) Lease the oldest unleased message of the caller's pipeline's mailbox; wait up to `wait` s."""

    wait: float = 0.0


class AckMessages(BrokerRequest, tag="ack_messages", kw_only=True):
    """Remove messages for good (they were handled). `mailbox` defaults to the calling step's pipeline."""

    ids: list[str]
    mailbox: str | None = None


class Publish(BrokerRequest, tag="publish", kw_only=True):
    """Publish one event (best effort to subscribers; durable for the triggers it starts).

    `source` is the pipeline a client publishes as (a step's events always come from its own pipeline, and
    never trigger it); `event_id` is carried to subscribers as the event's `id`.
    """

    topic: str
    data: Any = None
    source: str | None = None
    event_id: str | None = None


class PublishMany(BrokerRequest, tag="publish_many", kw_only=True):
    """Publish a batch of (topic, data) events with one request."""

    events: list[tuple[str, Any]]


class WaitEvent(BrokerRequest, tag="wait_event", kw_only=True):
    """Answer with the next event whose topic starts with `prefix`, or null after `wait` s."""

    prefix: str
    wait: float = 0.0


class SpaceGet(BrokerRequest, tag="space_get", kw_only=True):
    space: str
    key: str


class SpacePut(BrokerRequest, tag="space_put", kw_only=True):
    """Write `value`. With `fence` (a lease's token), only while that lease on `fence_key` (default: `key`) is
    the key's current one, else `lock_lost`; the same holds for `SpaceCas` and `SpaceDelete`."""

    space: str
    key: str
    value: Any = None
    fence: int | None = None
    fence_key: str | None = None


class SpaceCas(BrokerRequest, tag="space_cas", kw_only=True):
    """Write only if the key's version is `expected_version` (0: only if the key does not exist)."""

    space: str
    key: str
    value: Any = None
    expected_version: int
    fence: int | None = None
    fence_key: str | None = None


class SpaceDelete(BrokerRequest, tag="space_delete", kw_only=True):
    space: str
    key: str
    expected_version: int | None = None
    fence: int | None = None
    fence_key: str | None = None


class SpaceLock(BrokerRequest, tag="space_lock", kw_only=True):
    """(steps only) A lease on `key` for `ttl` s with its next fencing token (a `Lease`); wait up to `wait` s
    behind earlier requests, else null. The lease ends at `SpaceUnlock`, after `ttl`, or with the attempt."""

    space: str
    key: str
    ttl: float = 30.0
    wait: float = 0.0


class SpaceUnlock(BrokerRequest, tag="space_unlock", kw_only=True):
    """End the lease `token` on `key`: {"released": bool} (false: it had ended already)."""

    space: str
    key: str
    token: int


class SpaceRenew(BrokerRequest, tag="space_renew", kw_only=True):
    """Give the lease `token` on `key` `ttl` more seconds from now (the renewed `Lease`), or `lock_lost`."""

    space: str
    key: str
    token: int
    ttl: float = 30.0


class SpaceKeys(BrokerRequest, tag="space_keys", kw_only=True):
    """Keys starting with `prefix`, sorted; with `versions`, [key, version, bytes] rows instead."""

    space: str
    prefix: str = ""
    versions: bool = False


class SpaceLog(BrokerRequest, tag="space_log", kw_only=True):
    space: str
    limit: int = 100


class SpaceAllow(BrokerRequest, tag="space_allow", kw_only=True):
    """Add pipelines to a space's allow-list (`replace`: set it; an empty list with `replace` lifts it)."""

    space: str
    pipelines: list[str] = []
    replace: bool = False


class ListPipelines(BrokerRequest, tag="pipelines", kw_only=True):
    """The registry: running and registered pipelines (only those declaring `capability`, if given)."""

    capability: str | None = None


class ListMailboxes(BrokerRequest, tag="mailboxes", kw_only=True):
    """Mailbox depths; `peek` shows the first N messages of each."""

    pipeline: str | None = None
    peek: int = 0


class DeadLetters(BrokerRequest, tag="dead_letters", kw_only=True):
    """The dead letters of pipeline `mailbox`, oldest message first."""

    mailbox: str


class RequeueDead(BrokerRequest, tag="requeue_dead", kw_only=True):
    """(clients only) Put dead letters back in their mailbox at their original position (`all`: every one)."""

    mailbox: str
    ids: list[str] = []
    all: bool = False


class DropDead(BrokerRequest, tag="drop_dead", kw_only=True):
    """(clients only) Delete dead letters for good (`all`: every one); their ids stay known as duplicates."""

    mailbox: str
    ids: list[str] = []
    all: bool = False


class PipelineInfo(msgspec.Struct, kw_only=True):
    """What a pipeline says about itself in the registry (`register_pipeline`): a description, the
    capabilities it offers, and any other JSON-like `metadata`."""

    description: str = ""
    capabilities: list[str] = []
    metadata: dict[str, Any] = {}
    registered_at: float = 0.0
    by: str = ""


class RegisterPipeline(BrokerRequest, tag="register_pipeline", kw_only=True):
    """Enter `pipeline` in the registry with `info` (replacing what it said before); durable when answered."""

    pipeline: str
    info: PipelineInfo = msgspec.field(default_factory=PipelineInfo)


class Unregister(BrokerRequest, tag="unregister", kw_only=True):
    """Forget a pipeline's registration: for events (its queued triggers are dropped, running runs go on)
    and its `register_pipeline` info."""

    pipeline: str


class BrokerStatsRequest(BrokerRequest, tag="stats", kw_only=True):
    """Message rates, queue depths, dropped events, space sizes."""


BROKER_REQUESTS = (
    SendMessage, ReceiveMessage, AckMessages, Publish, PublishMany, WaitEvent, SpaceGet, SpacePut, SpaceCas,
    SpaceDelete, SpaceKeys, SpaceLog, SpaceAllow, ListPipelines, ListMailboxes, DeadLetters, RequeueDead, DropDead,
    RegisterPipeline, Unregister, BrokerStatsRequest, SpaceLock, SpaceUnlock, SpaceRenew,
)
AnyBrokerRequest = (
    SendMessage | ReceiveMessage | AckMessages | Publish | PublishMany | WaitEvent | SpaceGet | SpacePut | SpaceCas
    | SpaceDelete | SpaceKeys | SpaceLog | SpaceAllow | ListPipelines | ListMailboxes | DeadLetters | RequeueDead
    | DropDead | RegisterPipeline | Unregister | BrokerStatsRequest | SpaceLock | SpaceUnlock | SpaceRenew
)

# -- events.sock -----------------------------------------------------------------------------------


class Subscribe(msgspec.Struct, tag="subscribe", tag_field="type", kw_only=True):
    """Subscriber -> daemon: deliver events whose topic starts with one of `prefixes` (renew to stay)."""

    v: int = PROTOCOL_VERSION
    prefixes: list[str]


class Unsubscribe(msgspec.Struct, tag="unsubscribe", tag_field="type", kw_only=True):
    v: int = PROTOCOL_VERSION


SubscriberMessage = Subscribe | Unsubscribe

# -- results --------------------------------------------------------------------------------------------


class RegistryEntry(msgspec.Struct, kw_only=True):
    """A pipeline the daemon knows as running (runs in flight), registered for events (triggers) and/or
    registered with `register_pipeline` (`info`; its capabilities are added to `capabilities`)."""

    pipeline: str
    capabilities: list[str] = []
    run_ids: list[str] = []
    workers: list[int] = []
    triggers: list[str] = []
    registered: bool = False
    queued_triggers: int = 0
    info: PipelineInfo | None = None


class MailboxInfo(msgspec.Struct, kw_only=True):
    name: str
    messages: int
    leased: int
    oldest_ts: float | None = None
    peek: list[Message] = []
    dead: int = 0
    max_deliveries: int = 0


class SubscriberInfo(msgspec.Struct, kw_only=True):
    id: str
    prefixes: list[str]
    delivered: int
    dropped: int
    age_s: float


class SpaceInfo(msgspec.Struct, kw_only=True):
    name: str
    keys: int
    bytes: int
    allow: list[str] | None = None
    log_entries: int = 0


class BrokerStats(msgspec.Struct, kw_only=True):
    counters: dict[str, int] = {}
    rates: dict[str, float] = {}
    mailboxes: list[MailboxInfo] = []
    subscribers: list[SubscriberInfo] = []
    spaces: list[SpaceInfo] = []
    triggers: dict[str, dict[str, int]] = {}
    store: dict[str, Any] = {}


_encoder = msgspec.msgpack.Encoder()
subscriber_decoder = msgspec.msgpack.Decoder(SubscriberMessage)


def encode(message: msgspec.Struct) -> bytes:
    return _encoder.encode(message)


def fence_of(req: SpacePut | SpaceCas | SpaceDelete) -> tuple[str, int] | None:
    """The (locked key, token) a write is fenced by, or None."""
    return None if req.fence is None else (req.fence_key or req.key, req.fence)


def lease_ttl(ttl: float) -> float:
    """A lease's ttl, checked: a number of seconds in (0, MAX_TTL]."""
    if not (0 < ttl <= MAX_TTL):
        raise InvalidRequest(f"a lock's ttl must be more than 0 and at most {MAX_TTL:g} seconds, not {ttl!r}; "
                             f"hold it longer by renewing it")
    return float(ttl)


def matches(topic: str, prefixes: list[str] | tuple[str, ...]) -> bool:
    """Prefix matching, the one rule for subscriptions, triggers and wait_for_event ('' matches everything)."""
    return any(topic.startswith(p) for p in prefixes)
