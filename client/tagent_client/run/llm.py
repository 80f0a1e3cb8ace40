"""LLM settings shared by the daemon and in-process runs: endpoints, price overrides, request limiters.

An *endpoint* is a named OpenAI-compatible server (Ollama, vLLM, llama.cpp,
LM Studio, a proxy) given by its base URL; a model string `NAME:MODEL` whose
prefix names an endpoint goes there. An endpoint without `base_url` names a
pydantic-ai provider (`openai`, `anthropic`, ...) and only sets limits for it.
API keys are never part of these settings: `api_key_env` names the environment
variable that holds the key, read by the process that makes the request.

Each endpoint (or provider) also has a circuit breaker, `llm:<endpoint>` (breakers.py):
`LLMRuntime.breakers` is asked before each model request.

`RequestLimiter` is what the agent runner asks for a permit before each model
request: the daemon's workers ask the daemon (limits shared by all workers);
in-process runs use `LocalLimiter` (concurrency and Retry-After pauses only).
"""

from __future__ import annotations

import os
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec

from .breakers import BreakerGate, BreakerRules, BreakerSettings, LocalBreakers
from .checked import Problem, above, at_least, problem, pydantic_schema

_NAME = re.compile(r"^[a-z0-9][a-z0-9_\-.]*\Z")

#: Environment variables holding the keys of the providers pydantic-ai knows; their values never enter a transcript.
PROVIDER_KEY_ENV = (
    "OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY", "GROQ_API_KEY", "MISTRAL_API_KEY",
    "CO_API_KEY", "DEEPSEEK_API_KEY", "OPENROUTER_API_KEY", "XAI_API_KEY", "TOGETHER_API_KEY", "FIREWORKS_API_KEY",
    "HF_TOKEN", "AZURE_OPENAI_API_KEY", "CEREBRAS_API_KEY", "MOONSHOTAI_API_KEY", "LITELLM_API_KEY",
)


def model_name(name: str | None) -> str | None:
    """A model string in this project's `provider:model` form; TAgent's litellm form `provider/model` is translated."""
    if name and ":" not in name and "/" in name:
        provider, _, rest = name.partition("/")
        return f"{provider}:{rest}"
    return name


class EndpointSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """One `[endpoints.NAME]` table of tagentd.toml (or `RunConfig.endpoints[NAME]`).

    - `base_url`: OpenAI-compatible base URL, e.g. http://127.0.0.1:11434/v1;
    - `api_key_env`: the environment variable holding the API key (never the key itself);
    - `max_concurrent`: requests in flight at once, all workers together; `requests_per_minute`,
      `tokens_per_minute` (input + output tokens): 0 = no limit;
    - `request_retries`: retries of one request on 429, 5xx, connection errors;
    - `timeout`: seconds per HTTP request; `breaker`: this endpoint's circuit breaker (over `[breaker]`).
    """

    base_url: str | None = None
    api_key_env: str | None = None
    max_concurrent: int = 0
    requests_per_minute: float = 0
    tokens_per_minute: float = 0
    request_retries: int = 3
    timeout: float | None = None
    breaker: BreakerSettings | None = None

    def __post_init__(self) -> None:
        if self.base_url is not None and not self.base_url.startswith(("http://", "https://")):
            raise Problem("base_url", f"must start with http:// or https://, got {self.base_url!r}")
        for name in ("max_concurrent", "requests_per_minute", "tokens_per_minute", "request_retries"):
            at_least(self, name, 0)
        above(self, "timeout", 0)

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> Any:
        return pydantic_schema(cls)

    @property
    def limited(self) -> bool:
        """Whether requests to this endpoint need a permit."""
        return bool(self.max_concurrent or self.requests_per_minute or self.tokens_per_minute)


class PriceOverride(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The price of a model in dollars per million tokens; wins over the genai-prices table."""

    input_per_mtok: float
    output_per_mtok: float

    def __post_init__(self) -> None:
        at_least(self, "input_per_mtok", 0)
        at_least(self, "output_per_mtok", 0)

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> Any:
        return pydantic_schema(cls)

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return (input_tokens * self.input_per_mtok + output_tokens * self.output_per_mtok) / 1_000_000


class LLMConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """Endpoints and price overrides; plain data that crosses to workers as JSON (no keys in it)."""

    endpoints: dict[str, EndpointSettings] = msgspec.field(default_factory=dict)
    price_overrides: dict[str, PriceOverride] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in self.endpoints:
            check_endpoint_name(name)

    @classmethod
    def from_json(cls, text: str | bytes) -> LLMConfig:
        """The `--llm` flag a worker is given (`to_json`): ValueError when it is not one."""
        try:
            return msgspec.json.decode(text, type=cls)
        except msgspec.ValidationError as exc:
            raise problem(exc, None) from None

    def to_json(self) -> str:
        """Only what differs from the defaults, as JSON (the names of key variables, never keys)."""
        return msgspec.json.encode(self).decode()

    def secrets(self) -> list[str]:
        """The values of every API key this process could send (to scrub from transcripts), longest first."""
        names = {*PROVIDER_KEY_ENV, *(e.api_key_env for e in self.endpoints.values() if e.api_key_env)}
        # Read afresh each time (a step may set one), but only the ones set: os.environ.get of an absent name
        # raises and catches a KeyError twice (~2 us, ~40 us for all of them on every agent attempt).
        values = {os.environ[n].strip() for n in names.intersection(os.environ)}
        return sorted((v for v in values if len(v) >= 6), key=len, reverse=True)


def check_endpoint_name(name: str) -> str:
    """An endpoint's name: lower-case letters, digits, '_', '-' or '.' (it prefixes model strings)."""
    if not _NAME.match(name):
        raise Problem("", f"endpoint name {name!r} must be lower-case letters, digits, '_', '-' or '.'")
    return name


class RequestLimiter(Protocol):
    """Hands out permits for model requests to a limited endpoint."""

    async def acquire(self, endpoint: str, tokens: int) -> Any:
        """Wait for a permit to send one request of about `tokens` tokens; returns the permit."""

    def release(self, permit: Any, *, tokens: int, retry_after: float | None) -> None:
        """The request is over: it used `tokens` (0 if unknown); `retry_after` pauses the endpoint for everyone."""


class LocalLimiter:
    """In-process limits: `max_concurrent` per endpoint and Retry-After pauses (rates are the daemon's job)."""

    def __init__(self, endpoints: Mapping[str, EndpointSettings]) -> None:
        import asyncio  # noqa: PLC0415 - the daemon's settings import this module, and need no asyncio to answer

        self._gates = {n: asyncio.Semaphore(e.max_concurrent) for n, e in endpoints.items() if e.max_concurrent}
        self._paused_until: dict[str, float] = {}

    async def acquire(self, endpoint: str, tokens: int) -> Any:
        gate = self._gates.get(endpoint)
        if gate is not None:
            await gate.acquire()
        while (wait := self._paused_until.get(endpoint, 0.0) - time.monotonic()) > 0:
            import asyncio  # noqa: PLC0415 - see __init__

            await asyncio.sleep(wait)
        return endpoint

    def release(self, permit: Any, *, tokens: int, retry_after: float | None) -> None:
        if retry_after:
            until = time.monotonic() + min(retry_after, MAX_PAUSE)
            self._paused_until[permit] = max(self._paused_until.get(permit, 0.0), until)
        gate = self._gates.get(permit)
        if gate is not None:
            gate.release()


MAX_PAUSE = 300.0  # a Retry-After longer than this is taken as this


class AgentCache(OrderedDict[Any, Any]):
    """pydantic-ai Agents built for steps, by everything that defines each (the runners make the keys); the
    least recently used beyond `limit` are dropped, so a process that meets many steps (a long-lived worker,
    steps added at run time) keeps a bounded number. Building an Agent costs ~1 ms (its output schema)."""

    def __init__(self, limit: int = 256) -> None:
        super().__init__()
        self.limit = limit

    def get(self, key: Any, default: Any = None) -> Any:
        agent = super().get(key, default)
        if agent is not default:
            self.move_to_end(key)
        return agent

    def __setitem__(self, key: Any, agent: Any) -> None:
        super().__setitem__(key, agent)
        self.move_to_end(key)
        while len(self) > self.limit:
            self.popitem(last=False)


@dataclass
class LLMRuntime:
    """What agent steps of one process (a worker, or one in-process run) share: settings, limiter, built models.

    `builtin_tools` is where the broker's communication tools (send_message, ...) plug in: name -> function,
    offered to every agent step and narrowed by its tools_filter.
    """

    config: LLMConfig = field(default_factory=LLMConfig)
    limiter: RequestLimiter | None = None
    builtin_tools: Mapping[str, Callable[..., Any]] = field(default_factory=dict)
    models: dict[str, Any] = field(default_factory=dict)  # model string -> BuiltModel
    agents: AgentCache = field(default_factory=lambda: AgentCache())  # what defines an Agent -> the reusable Agent
    #: In-process runs only (`run_agent(api_key=...)`): the key for `openai:` models; never sent to a daemon.
    api_key: str | None = field(default=None, repr=False)
    #: Model requests one agent attempt may make (`max_iterations`); None: pydantic-ai's default.
    request_limit: int | None = None
    #: The endpoints' circuit breakers (`llm:<endpoint>`): the daemon's in a worker, this process's in-process.
    breakers: BreakerGate | None = None
    #: The OpenTelemetry tracer provider when traces are on (tracing.py): agent runs make LLM call spans.
    tracer_provider: Any = None
    _instrumentation: Any = field(default=None, repr=False)

    def instrumentation(self) -> Any:
        """pydantic-ai's InstrumentationSettings for agent runs when traces are on (made once); else None."""
        if self.tracer_provider is not None and self._instrumentation is None:
            from .tracing import instrumentation

            self._instrumentation = instrumentation(self.tracer_provider)
        return self._instrumentation

    def agent_name(self, name: str) -> str | None:
        """The name a step's pydantic-ai Agent gets: `name` when traces are on (its spans are named after it,
        `invoke_agent STEP`), else none. pydantic-ai builds a run graph per agent name and keeps the last 128, so
        naming every Agent after its step made a process that meets more step names than that (a long-lived
        worker, a long pipeline) build one on every run, ~1.5-3 ms each; unnamed, they all share one."""
        return name if self.tracer_provider is not None else None

    @classmethod
    def local(cls, config: LLMConfig | None = None, *, api_key: str | None = None,
              request_limit: int | None = None, breakers: BreakerGate | None = None) -> LLMRuntime:
        config = config or LLMConfig()
        breakers = breakers or LocalBreakers(BreakerRules(endpoints=config.endpoints))
        return cls(config=config, limiter=LocalLimiter(config.endpoints), api_key=api_key, request_limit=request_limit,
                   breakers=breakers)
