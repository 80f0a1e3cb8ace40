"""Bounds on what one control request may carry, checked on both sides of the socket.

The client checks before it sends, so bad input fails at once with a clear
message; the daemon checks again when it receives (a client may be old, or
not ours). docs/protocol.md ("Limits") lists them:

- names (pipelines, steps, topics, spaces, keys, run and message ids,
  idempotency keys): at most `NAME_MAX` characters, else `NameTooLong`;
- data a request carries (run params, message payloads, space values, event
  data): nested at most `DEPTH_MAX` levels, else `InvalidRequest`;
- size: an encoded request is at most the daemon's `max_message_bytes`, else
  `RequestTooLarge` (`too_large`); the client learns the daemon's value from
  its ping.
"""

from __future__ import annotations

import itertools
from typing import Any

from .errors import InvalidRequest, NameTooLong, RequestTooLarge

NAME_MAX = 200
DEPTH_MAX = 100

#: Request fields that hold names (a str, or a list of str), and what each one is called in an error.
NAME_FIELDS: dict[str, str] = {
    "run_id": "a run id",
    "step": "a step name",
    "target": "a pipeline name",
    "to": "a pipeline name",
    "pipeline": "a pipeline name",
    "pipelines": "a pipeline name",
    "mailbox": "a mailbox (pipeline) name",
    "topic": "a topic",
    "prefix": "a prefix",
    "space": "a space name",
    "key": "a key",
    "capability": "a capability",
    "message_id": "a message id",
    "ids": "a message id",
    "idempotency_key": "an idempotency key",
    "message_type": "a message type",
    "from_pipeline": "a pipeline name",
    "event_id": "an event id",
}
#: Request fields that hold data (any JSON value), and what each one is called in an error.
DATA_FIELDS: dict[str, str] = {"params": "run params", "payload": "the message payload", "value": "the value",
                               "data": "the event data"}
_CONTAINERS = (dict, list, tuple)


def check_length(kind: str, name: str) -> str:
    """`name` if it has at most NAME_MAX characters, else NameTooLong (which shows only its start)."""
    if len(name) > NAME_MAX:
        raise NameTooLong(f"{kind} is {len(name):,} characters long, over the limit of {NAME_MAX}: "
                          f"{name[:40]!r}...; use a shorter name", limit=NAME_MAX, length=len(name))
    return name


def check_name(kind: str, name: Any) -> str:
    """A mailbox, space, key or topic name: a non-empty string of at most NAME_MAX characters."""
    if not isinstance(name, str) or not name:
        raise InvalidRequest(f"{kind} must be a non-empty string of at most {NAME_MAX} characters, got {name!r:.80}")
    return check_length(kind, name)


def check_depth(what: str, value: Any) -> Any:
    """`value` if its dicts and lists nest at most DEPTH_MAX levels, else InvalidRequest (never RecursionError)."""
    if not isinstance(value, _CONTAINERS):
        return value
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        if depth > DEPTH_MAX:
            raise InvalidRequest(f"{what}: nested more than {DEPTH_MAX} levels deep; flatten the data, or pass a file path "
                                 f"to it instead", limit=DEPTH_MAX)
        nested = [child for child in children if isinstance(child, _CONTAINERS)]
        if nested:
            stack.extend(zip(nested, itertools.repeat(depth + 1)))
    return value


def check_request(request: Any) -> None:
    """Check every name field and data field of a control request (see NAME_FIELDS, DATA_FIELDS)."""
    for field, kind in NAME_FIELDS.items():
        value = getattr(request, field, None)
        if isinstance(value, str):
            check_length(kind, value)
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, str):
                    check_length(kind, item)
    for field, what in DATA_FIELDS.items():
        check_depth(what, getattr(request, field, None))
    for topic, data in getattr(request, "events", None) or ():  # publish_many: [(topic, data)]
        if isinstance(topic, str):
            check_length("a topic", topic)
        check_depth("the event data", data)


def too_large(kind: str | None, size: int, limit: int) -> RequestTooLarge:
    """The error for a `kind` request (None: unknown) of `size` encoded bytes over the daemon's `limit`."""
    what = f"the '{kind}' request" if kind else "a request"
    details: dict[str, Any] = {"size": size, "limit": limit, **({"request": kind} if kind else {})}
    return RequestTooLarge(
        f"{what} is {size:,} bytes, over tagentd's limit of {limit:,} bytes (max_message_bytes); pass large data "
        f"by reference instead: a file path in the params or payload, or several smaller space keys", **details)
