"""Transcripts: an agent attempt's messages as plain data, scrubbed of secrets, and shown to a person.

A transcript is a list of messages, each `{"kind": "request"|"response", "parts": [...]}`
(pydantic-ai's message format with empty and bookkeeping fields left out), so it
can be stored in the run's state like any step field. Guarantees:

- `scrub` replaces every occurrence of a known secret (the value of an API-key
  environment variable) with `[REDACTED]`, and the value of any key that names a
  credential header (`authorization`, `api-key`, ...), anywhere in the data;
- long strings are cut at MAX_CHARS so one chatty tool cannot bloat a checkpoint.
"""

from __future__ import annotations

import json
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


# -- showing ---------------------------------------------------------------------------------


def render(attempts: Sequence[Mapping[str, Any]]) -> str:
    """A readable transcript: one block per attempt, one line (or a few) per message part."""
    if not attempts:
        return "no transcript (the step has not run as an agent yet)"
    blocks = []
    for entry in attempts:
        item = f", item {entry['item']}" if entry.get("item") is not None else ""
        head = f"attempt {entry.get('attempt', '?')}{item}: {entry.get('status', '?')}"
        if entry.get("model"):
            head += f" (model {entry['model']})"
        lines = [head]
        for message in entry.get("messages") or []:
            lines += _message_lines(message)
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _message_lines(message: Mapping[str, Any]) -> list[str]:
    lines = []
    for part in message.get("parts") or []:
        kind = part.get("part_kind", "?")
        if kind == "system-prompt":
            lines.append(_block("system", part.get("content")))
        elif kind == "user-prompt":
            lines.append(_block("user", part.get("content")))
        elif kind == "text":
            lines.append(_block("assistant", part.get("content")))
        elif kind == "tool-call":
            lines.append(f"  assistant -> {part.get('tool_name')}({_short(part.get('args'))})")
        elif kind == "tool-return":
            outcome = part.get("outcome")
            note = f" [{outcome}]" if outcome not in (None, "success") else ""
            lines.append(f"  {part.get('tool_name')}{note} -> {_short(part.get('content'))}")
        elif kind == "retry-prompt":
            target = part.get("tool_name") or "output"
            lines.append(f"  retry ({target}): {_short(part.get('content'))}")
        else:
            lines.append(f"  {kind}: {_short(part.get('content', part))}")
    usage = message.get("usage")
    if message.get("kind") == "response" and usage:
        lines.append(f"    [{usage.get('input_tokens', 0)} in / {usage.get('output_tokens', 0)} out tokens]")
    return lines


def _block(who: str, content: Any) -> str:
    text = content if isinstance(content, str) else json.dumps(content, default=str)
    body = text.strip().replace("\n", "\n    ")
    return f"  {who}: {body}"


def _short(value: Any, limit: int = 400) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[:limit] + "..."
