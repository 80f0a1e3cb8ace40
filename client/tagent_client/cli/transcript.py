"""`tagent transcript`: an agent step's transcript (`run/transcript.py` has its form) shown to a person."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any


def render(attempts: Sequence[Mapping[str, Any]]) -> str:
    """A readable transcript: one block per attempt, one line (or a few) per message part."""
    if not attempts:
        return "no transcript (the step has not run as an agent yet)"
    blocks = []
    for entry in attempts:
        item = f", item {entry['item']}" if entry.get("item") is not None else ""
        what = "condition check, attempt" if entry.get("phase") == "condition" else "attempt"  # a judged condition
        head = f"{what} {entry.get('attempt', '?')}{item}: {entry.get('status', '?')}"
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
