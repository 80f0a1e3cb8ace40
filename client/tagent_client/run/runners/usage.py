"""Token usage and cost of an agent attempt, from the model responses it received.

Cost per response: a configured price override for the model (by the step's
model string, e.g. `local:llama3`, or by the name the server reported) wins;
else the price pydantic-ai computed with genai-prices (`ModelResponse.usage.cost`);
a model genai-prices does not know costs 0 (never an error).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
