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

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

REDACTED = "[REDACTED]"
MAX_CHARS = 20_000
#: Keys whose values are credentials wherever they appear (compared lower-cased, '-' and '_' alike).
SECRET_KEYS = frozenset({"authorization", "proxy_authorization", "api_key", "x_api_key", "api_token", "x_goog_api_key",
                         "openai_api_key", "anthropic_api_key", "bearer", "password", "secret"})
_NOISE = frozenset({"run_id", "conversation_id", "state", "provider_details", "provider_url", "canonical_system",
                    "model_id", "provider_response_id", "scope", "history_digest", "workspace_ref", "failed_attempts",
                    "tool_kind", "dynamic_ref", "context_id", "metadata", "instructions", "id", "provider_name",
                    })
_USAGE = ("input_tokens", "output_tokens", "cost")  # what a response's usage keeps (when not zero)
_ZERO = ("0", "0.0")  # a zero cost as pydantic-ai dumps it (a Decimal, as a string)


def from_messages(messages: Sequence[Any], secrets: Iterable[str] = ()) -> list[dict[str, Any]]:
    """pydantic-ai messages -> a compact, scrubbed transcript (the same as `scrub` of the compacted messages, made
    in one pass: this runs once per agent attempt, on the step's critical path)."""
    from pydantic_ai.messages import ModelMessagesTypeAdapter

    raw = ModelMessagesTypeAdapter.dump_python(list(messages), mode="json")
    known = _known(secrets)
    return [_compact(m, known) for m in raw]


def _compact(message: dict[str, Any], secrets: list[str]) -> dict[str, Any]:
    """A message and its parts without bookkeeping fields, scrubbed; what the model and tools said is kept as is."""
    out: dict[str, Any] = {}
    for key, value in message.items():
        if key in _NOISE or value is None or value == {} or value == []:
            continue
        if key == "parts":
            out[key] = [_fields(part, secrets) for part in value]
        elif key == "usage" and isinstance(value, dict):
            out[key] = _scrub({k: v for k, v in value.items() if k in _USAGE and v and v not in _ZERO}, secrets)
        else:
            out[key] = REDACTED if _secret_key(key) else _scrub(value, secrets)
    out.setdefault("parts", [])
    return out


def _fields(data: dict[str, Any], secrets: list[str]) -> dict[str, Any]:
    return {k: REDACTED if _secret_key(k) else _scrub(v, secrets) for k, v in data.items()
            if k not in _NOISE and v is not None and v != {} and v != []}


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
