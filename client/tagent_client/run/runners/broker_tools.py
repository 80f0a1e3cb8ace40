"""The broker as tools for agent steps: send_message, receive_message, publish_event, read_space,
write_space, list_space — the same abilities a function step has through its ctx.

They are offered only when the step's `tools_filter` names them (`tools_filter=["send_message", ...]`):
sending messages or writing shared state is a capability a pipeline author grants a model, not a
default — and an offline `test` model calls every tool it is offered, which would otherwise fill
mailboxes and spaces with test data. docs/broker.md explains the choice.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ...define.step import PipelineStep
from ...define.validation import BUILTIN_TOOLS
from ..context import StepContext

MAX_RECEIVE_WAIT = 60.0


def broker_tools(ctx: StepContext, step: PipelineStep) -> dict[str, Callable[..., Any]]:
    """The broker tools this step's tools_filter names, as functions bound to its ctx (name -> function)."""
    wanted = set(step.tools_filter or ()) & BUILTIN_TOOLS
    if not wanted:
        return {}

    async def send_message(to: str, message: Any) -> str:
        """Send `message` (any JSON value) to the pipeline named `to`; it is kept until a run of it receives it.
        Returns the message id."""
        return await ctx.send(to, message)

    async def receive_message(wait_seconds: float = 0.0) -> Any:
        """Take the oldest message sent to this pipeline, waiting up to `wait_seconds` (at most 60) for one.
        Returns {id, sender, payload}, or null when there is none."""
        message = await ctx.receive(timeout=min(max(float(wait_seconds), 0.0), MAX_RECEIVE_WAIT))
        return None if message is None else {"id": message.id, "sender": message.sender, "payload": message.payload}

    async def publish_event(topic: str, data: Any = None) -> str:
        """Publish an event on `topic` (dotted, e.g. "research.company_done") for subscribers and triggers."""
        await ctx.publish(topic, data)
        return f"published {topic}"

    async def read_space(space: str, key: str) -> Any:
        """Read `key` of the shared space `space`: {value, version}, or null if it does not exist."""
        entry = await ctx.space(space).get(key)
        return None if entry is None else {"value": entry.value, "version": entry.version}

    async def write_space(space: str, key: str, value: Any, expected_version: int | None = None) -> Any:
        """Write `value` under `key` in the shared space `space`. With `expected_version`, only if the key is
        still at that version (0: only if it does not exist). Returns {written, version}."""
        handle = ctx.space(space)
        if expected_version is None:
            return {"written": True, "version": (await handle.put(key, value)).version}
        written = await handle.cas(key, value, expected_version=expected_version)
        current = await handle.get(key)
        return {"written": written, "version": current.version if current is not None else 0}

    async def list_space(space: str, prefix: str = "") -> list[str]:
        """The keys of the shared space `space` that start with `prefix`."""
        return await ctx.space(space).keys(prefix)

    tools = {fn.__name__: fn for fn in (send_message, receive_message, publish_event, read_space, write_space, list_space)}
    return {name: fn for name, fn in tools.items() if name in wanted}
