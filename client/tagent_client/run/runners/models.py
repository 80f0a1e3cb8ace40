"""Model strings to pydantic-ai models, with permits, request retries and error classification.

`NAME:MODEL` goes to the endpoint NAME when one with a `base_url` is configured
(OpenAI chat-completions protocol); `test` is pydantic-ai's offline TestModel;
anything else is a pydantic-ai model name (`openai:...`, `anthropic:...`,
`google:...`). Every real model is wrapped in `LimitedModel`, which:

- asks the limiter for a permit before each request (tool-call turns and output
  retries included) when the endpoint or provider has limits, and returns it after;
- then asks the endpoint's circuit breaker (`llm:NAME`, breakers.py): a request it
  refuses is not sent (CircuitOpen, retryable); each request's outcome is reported
  to it (`breaker_verdict`: 5xx, timeouts and connection errors are failures);
- retries one request on 429, 5xx, connection errors and timeouts, up to the
  endpoint's `request_retries`, honoring Retry-After (a permit-managed endpoint is
  paused for every worker; otherwise this request waits);
- leaves the final error marked `retryable` (True or False) for the step's retry policy.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import msgspec
from pydantic_ai.exceptions import (
    ModelAPIError,
    ModelConnectionError,
    ModelHTTPError,
    ModelQuotaExceededError,
    ModelRateLimitError,
    ModelRequestRejectedError,
    ModelRequestTimeout,
    ModelServerError,
    ModelUnavailableError,
    UnexpectedModelBehavior,
    UsageLimitExceeded,
    UserError,
)
from pydantic_ai.messages import ModelMessage, ModelResponse
from pydantic_ai.models import Model, ModelRequestParameters, StreamedResponse, infer_model
from pydantic_ai.models.wrapper import WrapperModel
from pydantic_ai.settings import ModelSettings
from pydantic_ai.tools import RunContext

from ...errors import ConfigError
from ..breakers import BreakerGate, Ticket, llm_breaker
from ..llm import MAX_PAUSE, EndpointSettings, LLMRuntime, RequestLimiter
from .early import take_early_admission
from .usage import skip_unpriced

DEFAULT_REQUEST_RETRIES = 3
BACKOFF_BASE = 0.5
BACKOFF_MAX = 8.0
RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 529})
#: pydantic-ai provider prefix -> the tagentd extra that installs its SDK.
PROVIDER_EXTRAS = {"anthropic": "anthropic", "google-gla": "google", "google-vertex": "google", "google": "google"}


@dataclass(frozen=True)
class BuiltModel:
    """A model ready for an Agent, and the endpoint it counts against (None: unlimited)."""

    model: Model
    endpoint: str | None


def model_for(name: str, runtime: LLMRuntime) -> BuiltModel:
    """The (cached) model for a model string; ConfigError (not retryable) when it cannot be built."""
    built = runtime.models.get(name)
    if built is None:
        built = runtime.models[name] = _build(name, runtime)
    return built


def _build(name: str, runtime: LLMRuntime) -> BuiltModel:
    if name == "test":
        from pydantic_ai.models.test import TestModel

        return BuiltModel(TestModel(), None)
    prefix, sep, model_name = name.partition(":")
    endpoint = runtime.config.endpoints.get(prefix) if sep else None
    if endpoint is not None and endpoint.base_url:
        base = _endpoint_model(prefix, model_name, endpoint)
    else:
        base = _provider_model(name, prefix, runtime)
    remember_customizations(base)
    limited = prefix if endpoint is not None and endpoint.limited else None
    model = LimitedModel(base, endpoint=limited, settings=endpoint, limiter=runtime.limiter,
                         breaker=llm_breaker(prefix if sep else name), breakers=runtime.breakers,
                         sdk_retries_off=sdk_retries_off(base))
    return BuiltModel(model, limited)


def sdk_retries_off(model: Model) -> bool:
    """Turn off the SDK client's own retries (LimitedModel retries, so permits and pauses apply); True if done.

    Done on the model's client itself (an OpenAI or Anthropic SDK client, made for this model alone), not per
    request: pydantic-ai honours a request's `max_retries` setting by copying the whole SDK client for that
    request, and the copy then looks up its platform headers in a thread — ~1 ms and a thread hop per request.
    """
    client = getattr(model, "client", None)
    if isinstance(getattr(client, "max_retries", None), int):
        client.max_retries = 0  # type: ignore[union-attr]
        return True
    return False


#: Request parameters (and their customized form) a model remembers: the distinct output and tool schemas of the
#: steps a process runs on it, in practice.
REMEMBERED_CUSTOMIZATIONS = 32


class RememberedCustomizations:
    """A model's `customize_request_parameters`, answering parameters it was asked about before from memory.

    pydantic-ai customizes a request's parameters for the model (the model profile's JSON-schema transformer walks
    every tool's and the output's schema) twice per request, on parameters an agent builds alike on each of its
    runs: ~60 us each for one small output schema, on the step's critical path. The customized parameters depend
    on the model (fixed) and the parameters only, so parameters asked about before get the answer they got then;
    pydantic-ai does not change what this returns (its `prepare_request` leaves it as it is, for models that reuse
    it across requests). Guarantees:

    - parameters are told apart by their whole JSON form, taken when asked (every field, private ones included,
      dict keys in their own order, 1, 1.0 and true distinct): parameters that differ in anything the
      customization reads never share an answer, and a change to a remembered object later cannot make it match;
    - parameters with native tools (their classes are not in that form) or that msgspec cannot encode are
      customized every time, as without this;
    - the REMEMBERED_CUSTOMIZATIONS last asked about are kept.
    """

    def __init__(self, customize: Callable[[ModelRequestParameters], ModelRequestParameters],
                 size: int = REMEMBERED_CUSTOMIZATIONS) -> None:
        self.customize = customize
        self.size = size
        self._answers: OrderedDict[bytes, ModelRequestParameters] = OrderedDict()
        self._lock = threading.Lock()  # a sync step's thread may run an agent on the same model

    def __call__(self, params: ModelRequestParameters) -> ModelRequestParameters:
        if params.native_tools:
            return self.customize(params)
        try:
            key = msgspec.json.encode(params)
        except (TypeError, ValueError, msgspec.EncodeError):
            return self.customize(params)
        with self._lock:
            answer = self._answers.get(key)
            if answer is not None:
                self._answers.move_to_end(key)
                return answer
        answer = self.customize(params)
        with self._lock:
            self._answers[key] = answer
            while len(self._answers) > self.size:
                self._answers.popitem(last=False)
        return answer

    def __len__(self) -> int:
        """How many answers are remembered."""
        return len(self._answers)


def remember_customizations(model: Model) -> None:
    """Give `model` (one this module built, not shared with other code) a `RememberedCustomizations`."""
    try:
        model.customize_request_parameters = RememberedCustomizations(model.customize_request_parameters)  # type: ignore[method-assign]
    except AttributeError:  # a model class with slots: customized as usual
        pass


def _endpoint_model(prefix: str, model_name: str, endpoint: EndpointSettings) -> Model:
    import os

    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    if not model_name:
        raise ConfigError(f"model string {prefix + ':'!r} names endpoint {prefix!r} but no model; write {prefix}:MODEL")
    key = None
    if endpoint.api_key_env:
        key = os.environ.get(endpoint.api_key_env, "").strip() or None
        if key is None:
            raise ConfigError(f"endpoint {prefix!r} reads its API key from ${endpoint.api_key_env}, which is not set in "
                              f"the environment of the process running the step; export it before starting tagentd")
    settings: ModelSettings = {}
    if endpoint.timeout:
        settings["timeout"] = endpoint.timeout
    provider = OpenAIProvider(base_url=endpoint.base_url, api_key=key or "no-key")
    return OpenAIChatModel(model_name, provider=provider, settings=settings)


def _provider_model(name: str, prefix: str, runtime: LLMRuntime) -> Model:
    if runtime.api_key is not None:
        return _keyed_model(name, prefix, runtime.api_key)
    try:
        return infer_model(name)
    except ImportError as exc:
        extra = PROVIDER_EXTRAS.get(prefix, prefix)
        raise ConfigError(f"model {name!r} needs the {prefix} provider's package ({exc.name or exc}): "
                          f"pip install 'tagentd[{extra}]'") from None
    except UserError as exc:
        known = ", ".join(sorted(n for n, e in runtime.config.endpoints.items() if e.base_url)) or "none"
        raise ConfigError(f"model {name!r}: {exc}; use a pydantic-ai name like 'openai:gpt-4o-mini', 'test', or "
                          f"ENDPOINT:MODEL for an [endpoints.ENDPOINT] in tagentd.toml (configured: {known})") from None


def _keyed_model(name: str, prefix: str, api_key: str) -> Model:
    """An `openai:` model with the run's own key (`run_agent(api_key=...)`); the base URL is the openai SDK's
    (`OPENAI_BASE_URL`, else api.openai.com)."""
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    if prefix != "openai":
        raise ConfigError(f"api_key= is taken for 'openai:' models only, not {name!r}: set that provider's key "
                          f"in its environment variable instead")
    return OpenAIChatModel(name.partition(":")[2], provider=OpenAIProvider(api_key=api_key))


# -- error classification ------------------------------------------------------------------


def classify(exc: BaseException) -> bool | None:
    """True: a retry may help (rate limit, 5xx, connection, timeout); False: it will not; None: not a model error."""
    if isinstance(exc, (ModelQuotaExceededError, ModelRequestRejectedError, UsageLimitExceeded, UserError)):
        return False
    if isinstance(exc, (ModelRateLimitError, ModelUnavailableError, ModelServerError, ModelConnectionError,
                        ModelRequestTimeout)):
        return True
    if isinstance(exc, ModelHTTPError):
        return exc.status_code in RETRYABLE_STATUS or exc.status_code >= 500
    if isinstance(exc, (ModelAPIError, UnexpectedModelBehavior)):
        return False
    return None


def mark(exc: BaseException) -> BaseException:
    """Set `exc.retryable` from `classify` (errors.is_retryable reads it); returns exc."""
    verdict = classify(exc)
    if verdict is not None:
        try:
            exc.retryable = verdict  # type: ignore[attr-defined]
        except AttributeError:
            pass
    return exc


def retry_after(exc: BaseException) -> float | None:
    """The wait a 429 (or 503) asked for, in seconds, capped at MAX_PAUSE."""
    if isinstance(exc, (ModelRateLimitError, ModelUnavailableError)) or getattr(exc, "status_code", None) in (429, 503):
        wait = getattr(exc, "retry_after", None)
        if isinstance(wait, (int, float)) and wait > 0:
            return min(float(wait), MAX_PAUSE)
    return None


# -- the wrapper ---------------------------------------------------------------------------


def breaker_verdict(exc: BaseException) -> bool | None:
    """How a failed request counts for its endpoint's circuit breaker: False, a failure (5xx, 408, a timeout, a
    connection error: the service is failing); None, no verdict (a 429, which Retry-After handles; not a model
    error); True, the service answered (another 4xx: the request was wrong, not the service)."""
    status = getattr(exc, "status_code", None)
    if isinstance(exc, ModelRateLimitError) or status == 429:
        return None
    if isinstance(exc, (ModelServerError, ModelUnavailableError, ModelConnectionError, ModelRequestTimeout)):
        return False
    if isinstance(exc, ModelHTTPError):
        return not (exc.status_code >= 500 or exc.status_code == 408)
    if isinstance(exc, (ModelAPIError, UnexpectedModelBehavior)):
        return True
    return None


def estimate_tokens(messages: list[ModelMessage]) -> int:
    """A rough input size (4 characters a token), for tokens-per-minute budgets before the real count is known."""
    chars = 0
    for message in messages:
        for part in message.parts:
            content = getattr(part, "content", None) or getattr(part, "args", None)
            chars += len(content) if isinstance(content, str) else len(str(content)) if content is not None else 0
    return chars // 4 + 1


class LimitedModel(WrapperModel):
    """A model whose every request holds a permit of its endpoint, goes through its circuit breaker (`breaker`,
    asked once the permit is held: a refused request fails fast with CircuitOpen) and is retried on transient
    errors. With `sdk_retries_off` the wrapped model's SDK client no longer retries by itself (sdk_retries_off());
    else each request asks it not to (its `max_retries` setting), where the model supports that."""

    def __init__(self, wrapped: Model, *, endpoint: str | None, settings: EndpointSettings | None,
                 limiter: RequestLimiter | None, breaker: str | None = None,
                 breakers: BreakerGate | None = None, sdk_retries_off: bool = False) -> None:
        super().__init__(wrapped)
        self.endpoint = endpoint if limiter is not None else None
        self.limiter = limiter
        self.breaker = breaker if breakers is not None else None
        self.breakers = breakers
        self.retries = settings.request_retries if settings is not None else DEFAULT_REQUEST_RETRIES
        self.count_tokens_for_permit = bool(settings and settings.tokens_per_minute)
        try:
            unsupported = wrapped._unsupported_settings()  # noqa: SLF001 - skip a setting the model would warn about
        except Exception:  # noqa: BLE001
            unsupported = frozenset()
        self._own_retries = not sdk_retries_off and "max_retries" not in unsupported

    async def request(self, messages: list[ModelMessage], model_settings: ModelSettings | None,
                      model_request_parameters: ModelRequestParameters) -> ModelResponse:
        if self._own_retries:
            model_settings = {**(model_settings or {}), "max_retries": 0}  # we retry, so permits and pauses apply
        failures = 0
        early = take_early_admission(self)
        while True:
            permit, ticket = await (early or self.admission(messages))
            early = None
            try:
                response = await self.wrapped.request(messages, model_settings, model_request_parameters)
            except Exception as exc:
                wait = retry_after(exc)
                self._report(ticket, breaker_verdict(exc))
                self._release(permit, 0, wait)
                if classify(exc) is not True or failures >= self.retries:
                    mark(exc)
                    raise
                failures += 1
                await self._pause(failures, wait, permit)
                continue
            except BaseException:
                self._report(ticket, None)
                self._release(permit, 0, None)
                raise
            self._report(ticket, True)
            self._release(permit, (response.usage.input_tokens or 0) + (response.usage.output_tokens or 0), None)
            skip_unpriced(response)
            return response

    @asynccontextmanager
    async def request_stream(self, messages: list[ModelMessage], model_settings: ModelSettings | None,
                             model_request_parameters: ModelRequestParameters,
                             run_context: RunContext[Any] | None = None) -> AsyncIterator[StreamedResponse]:
        """A streamed request holds a permit while it streams (it is not retried: part of it may be consumed)."""
        permit, ticket = await (take_early_admission(self) or self.admission(messages))
        used, wait, verdict = 0, None, None
        try:
            async with self.wrapped.request_stream(messages, model_settings, model_request_parameters,
                                                   run_context) as stream:
                yield stream
            usage = stream.get().usage
            used = (usage.input_tokens or 0) + (usage.output_tokens or 0)
            verdict = True
        except Exception as exc:
            wait = retry_after(exc)
            verdict = breaker_verdict(exc)
            mark(exc)
            raise
        finally:
            self._report(ticket, verdict)
            self._release(permit, used, wait)

    @property
    def admits_ahead(self) -> bool:
        """Whether a run's first request is better admitted as the run starts (early.py): its admission may
        wait for someone (a limiter's permit; a breaker's verdict that is not answered at once, e.g. a worker
        without a lease asks the daemon), and its permit does not count the request's tokens."""
        if self.count_tokens_for_permit:
            return False
        if self.endpoint is not None and self.limiter is not None:
            return True
        return self.breaker is not None and self.breakers is not None and not self.breakers.admits_at_once(self.breaker)

    async def admission(self, messages: list[ModelMessage]) -> tuple[Any, Ticket | None]:
        """A permit (None when unlimited), then the breaker's ticket (None without a breaker) for one request.
        A refusal or a cancellation gives back what was already held."""
        permit = await self._acquire(messages)
        return permit, await self._admit(permit)

    def abandon(self, permit: Any, ticket: Ticket | None) -> None:
        """An admission that no request used: the ticket ends with no verdict, the permit goes back unused."""
        self._report(ticket, None)
        self._release(permit, 0, None)

    async def _acquire(self, messages: list[ModelMessage]) -> Any:
        if self.endpoint is None or self.limiter is None:
            return None
        tokens = estimate_tokens(messages) if self.count_tokens_for_permit else 0
        return await self.limiter.acquire(self.endpoint, tokens)

    async def _admit(self, permit: Any) -> Ticket | None:
        """Through the endpoint's breaker (the permit is given back if it refuses: CircuitOpen, retryable)."""
        if self.breaker is None or self.breakers is None:
            return None
        try:
            return await self.breakers.admit(self.breaker)
        except BaseException:
            self._release(permit, 0, None)
            raise

    def _report(self, ticket: Ticket | None, ok: bool | None) -> None:
        if ticket is not None and self.breakers is not None:
            self.breakers.report(ticket, ok)

    def _release(self, permit: Any, tokens: int, wait: float | None) -> None:
        if permit is not None and self.limiter is not None:
            self.limiter.release(permit, tokens=tokens, retry_after=wait)

    async def _pause(self, failures: int, wait: float | None, permit: Any) -> None:
        if wait is not None and permit is not None:
            return  # the limiter pauses the endpoint for everyone; the next acquire waits
        if wait is None:
            wait = min(BACKOFF_MAX, BACKOFF_BASE * 2 ** (failures - 1)) * random.uniform(0.5, 1.0)
        await asyncio.sleep(wait)

