"""The TAgent library for runner="tagent": imported once per process off the event loop, quiet, offline, metered.

`import tagent` costs about 6.5 s of CPU (LiteLLM three quarters of it, scikit-learn most of the rest):
`library()` runs it once per process, in a thread, so an event loop waiting for it (a worker's, with its
heartbeats) keeps running. It happens when the first runner="tagent" step runs, never for other steps.

At that import, for the whole process:
- `LITELLM_LOCAL_MODEL_COST_MAP=True` is set first (unless the environment sets it): LiteLLM then prices
  responses from the map bundled with it instead of downloading one from GitHub at import.
- TAgent's console UI (banners, status lines, and a spinner thread it never stops when an LLM call fails) is
  replaced by one that prints nothing, and LiteLLM's "Give Feedback / Get Help" notes are off: nothing of
  TAgent's reaches stdout, so nothing of it reaches a worker's log or a step's log lines.
- `litellm.completion`, which TAgent calls synchronously in the thread that runs it, is wrapped: inside
  `metered(meter, ...)` (a ContextVar that `asyncio.to_thread` carries into that thread) every response
  adds its tokens, one request and its cost to the attempt's `Meter`, the last failure's text is kept, and
  once the attempt has ended (timed out, cancelled) a further call raises instead of reaching the model.
  Elsewhere the wrapper only passes the call on. TAgent's own statistics are not used: 0.7.1 counts each
  llm_task response twice and keeps only the last of a phase's retried answers (docs/agents.md).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from ...core.state import Usage
from ...errors import ConfigError
from ..llm import PriceOverride

NOT_INSTALLED = "runner='tagent' needs the TAgent library: pip install 'tagentd[tagent]'"
OFFLINE_PRICES = "LITELLM_LOCAL_MODEL_COST_MAP"


class TAgentMissing(ConfigError):
    """The step asks for the TAgent runner but the `tagent` package is not installed (not retryable)."""


class AttemptEnded(RuntimeError):
    """Raised into TAgent's thread at its next LLM call or tool call once the step's attempt has ended."""


@dataclass
class Meter:
    """What one attempt's TAgent run consumed: filled in from TAgent's thread, read once the run returns."""

    price: PriceOverride | None = None  # the step model's price_overrides entry, else LiteLLM's price
    usage: Usage = field(default_factory=Usage)
    last_error: str | None = None
    ended: bool = False

    def check(self) -> None:
        if self.ended:
            raise AttemptEnded("the step's attempt has ended (timed out or cancelled); TAgent's run is abandoned")

    def add_response(self, response: Any, litellm: ModuleType) -> None:
        used = getattr(response, "usage", None)
        tokens_in = int(getattr(used, "prompt_tokens", 0) or 0)
        tokens_out = int(getattr(used, "completion_tokens", 0) or 0)
        if self.price is not None:
            cost = self.price.cost(tokens_in, tokens_out)
        else:
            try:
                cost = float(litellm.completion_cost(completion_response=response) or 0.0)
            except Exception:  # noqa: BLE001 - a model LiteLLM has no price for costs 0, as in the agent runner
                cost = 0.0
        self.usage = self.usage.add(Usage(input_tokens=tokens_in, output_tokens=tokens_out, requests=1, cost=cost))


_meter: contextvars.ContextVar[Meter | None] = contextvars.ContextVar("tagent_meter", default=None)
_lock = threading.Lock()
_loaded: ModuleType | None = None


async def library() -> ModuleType:
    """The `tagent` module, imported (once per process, in a thread) and set up as this module says."""
    return _loaded if _loaded is not None else await asyncio.to_thread(load)


def load() -> ModuleType:
    """`library()` for synchronous callers (blocks for the import; call it off any event loop)."""
    global _loaded
    with _lock:
        if _loaded is None:
            _loaded = _import()
    return _loaded


async def metered(meter: Meter, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """`fn(*args, **kwargs)` in a thread, its LLM calls counted in `meter`; the meter ends with the call."""
    token = _meter.set(meter)
    try:
        return await asyncio.to_thread(fn, *args, **kwargs)
    finally:
        meter.ended = True  # TAgent's thread may outlive a timeout or cancellation: it stops at its next call
        _meter.reset(token)


class SilentUI:
    """TAgent's UIInterface doing nothing: no banner, no status line, no spinner thread."""

    def __getattr__(self, name: str) -> Callable[..., None]:
        return _nothing


def _nothing(*args: Any, **kwargs: Any) -> None:
    return None


def _import() -> ModuleType:
    os.environ.setdefault(OFFLINE_PRICES, "True")  # read by LiteLLM at its import
    try:
        import tagent  # first: without it, no seconds go to importing LiteLLM
        import tagent.ui
    except ImportError as exc:
        if exc.name not in (None, "tagent") and not str(exc.name or "").startswith("tagent."):
            raise TAgentMissing(f"{NOT_INSTALLED} (importing it failed: {exc})") from None
        raise TAgentMissing(NOT_INSTALLED) from None
    import litellm  # a dependency of tagent: imported by it already
    if not callable(getattr(tagent, "run_agent", None)):
        raise TAgentMissing(f"{NOT_INSTALLED} (the installed 'tagent' has no run_agent)")
    tagent.ui.UIFactory.create_ui = staticmethod(lambda style=None: SilentUI())
    tagent.ui.set_ui_style(tagent.ui.UIStyle.MODERN)  # replaces a UI made before, through the factory above
    litellm.suppress_debug_info = True
    litellm.completion = _metering(litellm.completion, litellm)
    return tagent


def _metering(completion: Callable[..., Any], litellm: ModuleType) -> Callable[..., Any]:
    @functools.wraps(completion)
    def metered_completion(*args: Any, **kwargs: Any) -> Any:
        meter = _meter.get()
        if meter is None:
            return completion(*args, **kwargs)
        meter.check()
        try:
            response = completion(*args, **kwargs)
        except Exception as exc:
            meter.last_error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            raise
        meter.add_response(response, litellm)
        return response

    return metered_completion
