"""Transcripts: an agent attempt's messages as plain data, scrubbed of secrets (`cli/transcript.py` shows them).

A transcript is a list of messages, each `{"kind": "request"|"response", "parts": [...]}`
(pydantic-ai's message format with empty and bookkeeping fields left out), so it
can be stored in the run's state like any step field. Guarantees:

- `scrub` replaces every occurrence of a known secret (the value of an API-key
  environment variable) with `[REDACTED]`, and the value of any key that names a
  credential header (`authorization`, `api-key`, ...), anywhere in the data;
- long strings are cut at MAX_CHARS so one chatty tool cannot bloat a checkpoint.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any

REDACTED = "[REDACTED]"
MAX_CHARS = 20_000
#: Keys whose values are credentials wherever they appear (compared lower-cased, '-' and '_' alike).
SECRET_KEYS = frozenset({"authorization", "proxy_authorization", "api_key", "x_api_key", "api_token", "x_goog_api_key",
                         "openai_api_key", "anthropic_api_key", "bearer", "password", "secret"})
NOISE = frozenset({"run_id", "conversation_id", "state", "provider_details", "provider_url", "canonical_system",
                    "model_id", "provider_response_id", "scope", "history_digest", "workspace_ref", "failed_attempts",
                    "tool_kind", "dynamic_ref", "context_id", "metadata", "instructions", "id", "provider_name",
                    })
USAGE_KEYS = ("input_tokens", "output_tokens", "cost")  # what a response's usage keeps (when not zero)
ZERO_COSTS = ("0", "0.0")  # a zero cost as pydantic-ai dumps it (a Decimal, as a string)


def from_messages(messages: Sequence[Any], secrets: Iterable[str] = ()) -> list[dict[str, Any]]:
    """pydantic-ai messages -> a compact, scrubbed transcript (the same as `scrub` of the compacted messages, made
    in one pass: this runs once per agent attempt, on the step's critical path).

    Each message is what `_compact` makes of pydantic-ai's own JSON-mode dump of it. A message made only of
    parts whose fields are plain (text, numbers, UTC times, a tool call's JSON arguments) is read field by
    field instead, without the dump (half the cost; `transcript_fast.py`), giving the same dict; any other is
    dumped."""
    known = _known(secrets)
    out = []
    for message in messages:
        try:
            out.append(_compact_fast(message, known))
        except _Unusual:
            out.append(_dumped(message, known))
    return out


def _dumped(message: Any, secrets: list[str]) -> dict[str, Any]:
    """One message through pydantic-ai's JSON-mode dump (which also teaches `_compact_fast` its fields)."""
    from pydantic_ai.messages import ModelMessagesTypeAdapter

    raw = ModelMessagesTypeAdapter.dump_python([message], mode="json")[0]
    _learn(message, raw, NOISE)
    return _compact(raw, secrets)


def _compact(message: dict[str, Any], secrets: list[str]) -> dict[str, Any]:  # `_compact_fast`: its twin
    """A message and its parts without bookkeeping fields, scrubbed; what the model and tools said is kept as is."""
    out: dict[str, Any] = {}
    for key, value in message.items():
        if key in NOISE or value is None or value == {} or value == []:
            continue
        if key == "parts":
            out[key] = [_fields(part, secrets) for part in value]
        elif key == "usage" and isinstance(value, dict):
            out[key] = _scrub({k: v for k, v in value.items() if k in USAGE_KEYS and v and v not in ZERO_COSTS}, secrets)
        else:
            out[key] = REDACTED if _secret_key(key) else _scrub(value, secrets)
    out.setdefault("parts", [])
    return out


def _fields(data: dict[str, Any], secrets: list[str]) -> dict[str, Any]:
    return {k: REDACTED if _secret_key(k) else _scrub(v, secrets) for k, v in data.items()
            if k not in NOISE and v is not None and v != {} and v != []}


def scrub(data: Any, secrets: Iterable[str] = ()) -> Any:
    """`data` with every secret value and every credential-named key's value replaced by REDACTED."""
    return _scrub(data, _known(secrets))


def _known(secrets: Iterable[str]) -> list[str]:
    return sorted({s for s in secrets if s}, key=len, reverse=True)


def _scrub(value: Any, secrets: list[str]) -> Any:
    kind = type(value)
    if kind is str or isinstance(value, str):
        for secret in secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        return value if len(value) <= MAX_CHARS else value[:MAX_CHARS] + f"... [{len(value) - MAX_CHARS} more chars]"
    if kind is int or kind is float or kind is bool or value is None:
        return value
    if kind is dict or isinstance(value, Mapping):
        return {k: REDACTED if _secret_key(k) else _scrub(v, secrets) for k, v in value.items()}
    if kind is list or isinstance(value, (list, tuple)):
        return [_scrub(v, secrets) for v in value]
    return value


_SECRET_KEY_SEEN: dict[str, bool] = {}  # key -> whether it names a credential (the keys of messages recur)


def _secret_key(key: Any) -> bool:
    if not isinstance(key, str):
        return False
    known = _SECRET_KEY_SEEN.get(key)
    if known is None:
        known = key.lower().replace("-", "_") in SECRET_KEYS
        if len(_SECRET_KEY_SEEN) < 4096:  # bounded: a tool's output may bring any keys
            _SECRET_KEY_SEEN[key] = known
    return known


# -- reading messages without the dump ---------------------------------------------------------------
#
# `transcript.from_messages` runs once per agent attempt, on the step's critical path, and pydantic-ai's
# JSON-mode dump of the messages is most of its cost. Most messages are made of parts whose fields are plain
# (a prompt's text, a tool call's name and JSON arguments, a tool's text result, token counts, UTC times), which
# `compact_message` reads field by field, converting each value exactly as that dump does, then compacting and
# scrubbing it as `_compact` does. Guarantees:
#
# - the fields of each message and part class are the ones pydantic-ai's dump gives it (`learn`, from the first
#   instance `from_messages` had dumped), so a field the dump leaves out or adds is never guessed at;
# - any value it does not convert exactly as the dump would (another type: files, a tool's structured result,
#   non-UTC or naive times, enums, a non-finite float, a field it has not learned) raises `Unusual`, and the
#   whole message is dumped instead;
# - `tests/test_transcript_fast.py` checks both ways give the same transcript for the parts agents produce.

_UTC = dt.UTC
#: The keys pydantic-ai's dump gives each message and part class, in its order, without the NOISE keys.
_KEYS: dict[type, tuple[str, ...]] = {}
_MISSING = object()
_JSON_ARGS = "args"  # the one field whose value may be a container: a tool call's arguments as JSON


class _Unusual(Exception):  # noqa: N818 - a signal, not an error: "dump this message instead"
    """The message holds something this module does not convert exactly as pydantic-ai's dump does."""


def _learn(message: Any, dumped: dict[str, Any], noise: Iterable[str] = NOISE) -> None:
    """Remember the keys of `message`'s class and of its parts' classes, from pydantic-ai's `dumped` form of it."""
    skip = frozenset(noise)
    _KEYS[type(message)] = tuple(k for k in dumped if k not in skip)
    parts = getattr(message, "parts", None)
    if isinstance(parts, (list, tuple)) and len(parts) == len(dumped.get("parts") or ()):
        for part, raw in zip(parts, dumped["parts"]):
            if isinstance(raw, dict):
                _KEYS[type(part)] = tuple(k for k in raw if k not in skip)


def _compact_fast(message: Any, secrets: list[str]) -> dict[str, Any]:
    """`_compact(dump(message))` without the dump; `_Unusual` when it cannot be made so."""
    keys = _KEYS.get(type(message))
    if keys is None:
        raise _Unusual
    out: dict[str, Any] = {}
    for key in keys:
        value = getattr(message, key, _MISSING)
        if key == "parts":
            if not isinstance(value, (list, tuple)):
                raise _Unusual
            if value:  # none: `_compact` adds the key last
                out[key] = [_part(part, secrets) for part in value]
        elif key == "usage":
            if value is not None:
                out[key] = _usage(value, secrets)
        elif value is _MISSING:
            raise _Unusual
        elif value is not None:
            value = _plain(value, container=False)
            out[key] = REDACTED if _secret_key(key) else _scrub(value, secrets)
    out.setdefault("parts", [])
    return out


def _part(part: Any, secrets: list[str]) -> dict[str, Any]:
    keys = _KEYS.get(type(part))
    if keys is None:
        raise _Unusual
    out: dict[str, Any] = {}
    for key in keys:
        value = getattr(part, key, _MISSING)
        if value is None:
            continue
        if type(value) is str and not secrets and len(value) <= MAX_CHARS and not _secret_key(key):
            out[key] = value  # the common case, as `_scrub` would leave it
            continue
        if value is _MISSING:
            raise _Unusual
        if (type(value) is list or type(value) is dict) and not value:
            continue  # dumped as it is, and left out
        value = _plain(value, container=key == _JSON_ARGS)
        if value == {} or value == []:
            continue
        out[key] = REDACTED if _secret_key(key) else _scrub(value, secrets)
    return out


def _usage(usage: Any, secrets: list[str]) -> dict[str, Any]:
    """A response's usage as `_compact` keeps it: the tokens and the cost (a Decimal, dumped as its str) if not 0."""
    kept: dict[str, Any] = {}
    for key in USAGE_KEYS:
        value = getattr(usage, key, _MISSING)
        if value is _MISSING:
            raise _Unusual
        if key == "cost" and value is not None:
            if type(value) is not Decimal:
                raise _Unusual
            value = str(value)  # pydantic dumps a Decimal as its str
        elif value is not None and type(value) is not int:
            raise _Unusual
        if value and value not in ZERO_COSTS:
            kept[key] = value
    return _scrub(kept, secrets)


def _plain(value: Any, *, container: bool) -> Any:
    """`value` as pydantic's JSON-mode dump gives it, for the types converted here; else `_Unusual`."""
    kind = type(value)
    if kind is str or kind is int or kind is bool:
        return value
    if kind is float:
        if not math.isfinite(value):
            raise _Unusual
        return value
    if kind is dt.datetime:
        if value.tzinfo is not _UTC:
            raise _Unusual
        return value.isoformat()[:-6] + "Z"  # "+00:00" as pydantic writes it
    if container and (kind is dict or kind is list):
        _check_json(value)
        return value
    raise _Unusual


def _check_json(value: Any, depth: int = 0) -> None:
    """A tool call's arguments must be plain JSON (str keys; str, int, bool, finite float, None leaves)."""
    if depth > 100:
        raise _Unusual
    kind = type(value)
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise _Unusual
            _check_json(item, depth + 1)
    elif kind is list:
        for item in value:
            _check_json(item, depth + 1)
    elif kind is float:
        if not math.isfinite(value):
            raise _Unusual
    elif not (value is None or kind is str or kind is int or kind is bool):
        raise _Unusual
