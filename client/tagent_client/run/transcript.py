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


def from_messages(messages: Sequence[Any], secrets: Iterable[str] = ()) -> list[dict[str, Any]]:
    """pydantic-ai messages -> a compact, scrubbed transcript."""
    from pydantic_ai.messages import ModelMessagesTypeAdapter

    raw = ModelMessagesTypeAdapter.dump_python(list(messages), mode="json")
    return scrub([_compact(m) for m in raw], secrets)


def _compact(message: dict[str, Any]) -> dict[str, Any]:
    """A message and its parts without bookkeeping fields; what the model and tools said is kept as is."""
    out = _fields(message)
    out["parts"] = [_fields(p) for p in message.get("parts") or []]
    usage = out.get("usage")
    if isinstance(usage, dict):
        out["usage"] = {k: v for k, v in usage.items() if k in ("input_tokens", "output_tokens", "cost") and v}
    return out


def _fields(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in _NOISE and v is not None and v != {} and v != []}


def scrub(data: Any, secrets: Iterable[str] = ()) -> Any:
    """`data` with every secret value and every credential-named key's value replaced by REDACTED."""
    known = sorted({s for s in secrets if s}, key=len, reverse=True)
    return _scrub(data, known)


def _scrub(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, str):
        for secret in secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        return value if len(value) <= MAX_CHARS else value[:MAX_CHARS] + f"... [{len(value) - MAX_CHARS} more chars]"
    if isinstance(value, Mapping):
        return {k: REDACTED if _secret_key(k) else _scrub(v, secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_scrub(v, secrets) for v in value]
    return value


def _secret_key(key: Any) -> bool:
    return isinstance(key, str) and key.lower().replace("-", "_") in SECRET_KEYS
