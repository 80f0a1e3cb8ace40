# A TAgent 0.7.1 script (docs/research/tagent-0.7.1.md, 2.3, scenario `tool_output_format`), unchanged but for
# its import line: `from tagent_client import run_agent` instead of `from tagent import run_agent`.
# tests/test_tagent_compat.py runs it against the scripted OpenAI-compatible server (OPENAI_BASE_URL) and
# offline (WEATHER_MODEL=test).
import os

from pydantic import BaseModel

from tagent_client import run_agent


class Weather(BaseModel):
    city: str
    forecast: str


def get_weather(city: str) -> str:
    """Today's weather in a city."""
    return f"sunny in {city}"


result = run_agent(
    "Get the weather for Lisbon.",
    model=os.environ.get("WEATHER_MODEL", "openai/gpt-4o-mini"),
    api_key="sk-test",
    tools=[get_weather],
    max_iterations=3,
    output_format=Weather,
)
print(result.goal_achieved, result.output, result.iterations_used, result.stats.total.total_tokens)
