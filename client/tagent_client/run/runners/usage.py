"""Token usage and cost of an agent attempt, from the model responses it received.

Cost per response: a configured price override for the model (by the step's
model string, e.g. `local:llama3`, or by the name the server reported) wins;
else the price pydantic-ai computed with genai-prices (`ModelResponse.usage.cost`);
a model genai-prices does not know costs 0 (never an error).

pydantic-ai prices each response with genai-prices after the model returns it, and looks up a model the table
does not know again every time (~0.1-0.2 ms: the table remembers what it found, not what it did not).
`skip_unpriced` remembers, per price table, which (provider URL, provider, model) it does not know and sets
such a response's cost to 0 before pydantic-ai looks: the same cost as before, and the same transcript (which
leaves a zero cost out, as it leaves out an unknown one).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from ...core.state import Usage
from ..llm import PriceOverride


def attempt_usage(messages: Sequence[Any], model: str, prices: Mapping[str, PriceOverride],
                  tool_calls: int | None = None) -> Usage:
    """Usage of one attempt: tokens and requests summed over its responses, tool calls, cost in dollars."""
    from pydantic_ai.messages import ModelRequest, ModelResponse, ToolReturnPart

    usage = Usage()
    calls = 0
    for message in messages:
        if isinstance(message, ModelResponse):
            used = message.usage
            usage.input_tokens += used.input_tokens or 0
            usage.output_tokens += used.output_tokens or 0
            usage.requests += 1
            usage.cost += response_cost(message, model, prices)
        elif isinstance(message, ModelRequest):
            calls += sum(1 for p in message.parts if isinstance(p, ToolReturnPart) and not p.tool_name.startswith("final_result"))
    usage.tool_calls = calls if tool_calls is None else tool_calls
    return usage


def response_cost(response: Any, model: str, prices: Mapping[str, PriceOverride]) -> float:
    used = response.usage
    override = prices.get(model) or (prices.get(response.model_name) if response.model_name else None)
    if override is not None:
        return override.cost(used.input_tokens or 0, used.output_tokens or 0)
    return float(used.cost) if used.cost is not None else 0.0  # pydantic-ai's genai-prices figure; None: unknown


_UNPRICED_MAX = 1024  # (provider URL, provider, model) triples remembered; the endpoints' models, in practice
_unpriced_lock = threading.Lock()
_unpriced: dict[tuple[str | None, str | None, str], bool] = {}  # -> whether genai-prices knows the model
_unpriced_table: list[Any] = [None]  # the price table those answers are about (an update starts over)


def skip_unpriced(response: Any) -> None:
    """Set `response`'s cost to 0 when genai-prices does not know its model (see the module's docstring)."""
    if response.usage.cost is not None or not response.model_name:
        return
    from genai_prices.data_snapshot import get_snapshot

    table = get_snapshot()
    key = (response.provider_url, response.provider_name, response.model_name)
    with _unpriced_lock:
        if _unpriced_table[0] is not table:
            _unpriced.clear()
            _unpriced_table[0] = table
        known = _unpriced.get(key)
    if known is None:
        known = _priced(table, *key)
        with _unpriced_lock:
            if len(_unpriced) < _UNPRICED_MAX:
                _unpriced[key] = known
    if not known:
        response.usage.cost = Decimal(0)


def _priced(table: Any, url: str | None, provider: str | None, model: str) -> bool:
    """Whether genai-prices finds `model` the ways pydantic-ai asks it: by the provider's URL, then its name."""
    ways = [(None, url)] if url and provider != "openai-decisions" else []
    for provider_id, api_url in [*ways, (provider, None)]:
        try:
            table.find_provider_model(model, None, provider_id, api_url)
            return True
        except LookupError:
            continue
        except Exception:  # noqa: BLE001 - not sure: let pydantic-ai price it as it always did
            return True
    return False
