"""A run's configuration from what callers pass: a `RunConfig`, a dict, or a TAgent-style config object.

The design's "Configuration Inheritance": the `config` a caller passes is the base, keyword arguments
override it (`run_config`), and a step's own `model=` overrides the run's (runners/agent.py).
TAgent's `TAgentConfig` (anything with `to_dict()`) carries more settings than this engine uses; those
are left out. A plain dict is checked: a key that is neither a RunConfig field nor one of TAgent's
`run_agent` arguments is an error, so that a misspelt key, or params passed as config, is not ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import ConfigError
from .breakers import BreakerSettings
from .llm import EndpointSettings, PriceOverride


class RunConfig(BaseModel):
    """Run-wide settings; keyword arguments to `run_pipeline` / `run_agent` override these, and a step's
    own `model=` overrides the run's (the design's "Configuration Inheritance").

    `model` also takes TAgent's litellm form `provider/model` ("openai/gpt-4o-mini"). `api_key` is the key
    for an `openai:` model of this run (in-process only: the daemon never takes keys, see docs/agents.md).
    `max_iterations` bounds the model requests each agent step's attempt may make.
    """

    model_config = ConfigDict(extra="forbid", defer_build=True)  # built on first use: keeps `import` fast

    model: str | None = None
    api_key: str | None = Field(None, repr=False)
    max_iterations: int | None = Field(None, ge=1)
    max_concurrent_steps: int | None = None
    fail_fast: bool | None = None
    endpoints: dict[str, EndpointSettings] = {}
    price_overrides: dict[str, PriceOverride] = {}
    #: Circuit breakers of this process's runs: the defaults, and `ctx.breaker(NAME)`'s own (docs/agents.md).
    breaker: BreakerSettings | None = None
    breakers: dict[str, BreakerSettings] = {}

#: TAgent `run_agent` arguments that are not run settings: they shape the one-step agent of `run_agent(goal)`.
AGENT_KEYS = frozenset({"tools", "output_format", "verbose", "crash_if_over_iterations"})


def config_dict(config: Any) -> dict[str, Any]:
    """The settings `config` sets (None values left out); ConfigError for an unknown key of a plain dict."""
    if config is None:
        return {}
    if isinstance(config, RunConfig):
        return config.model_dump(exclude_unset=True)
    run_keys = set(RunConfig.model_fields)
    if isinstance(config, Mapping):
        unknown = sorted(str(k) for k in config if k not in run_keys and k not in AGENT_KEYS)
        if unknown:
            raise ConfigError(
                f"config has unknown key(s) {', '.join(map(repr, unknown))}; known: "
                f"{', '.join(sorted(run_keys | AGENT_KEYS))} (a run's params go by keyword: params={{...}})")
        data = dict(config)
    elif callable(getattr(config, "to_dict", None)):
        data = dict(config.to_dict())
    else:
        raise ConfigError(f"config must be a RunConfig, a dict or a TAgent config (with to_dict()), "
                          f"got {type(config).__name__}")
    return {k: v for k, v in data.items() if v is not None and (k in run_keys or k in AGENT_KEYS)}


def run_config(config: Any, **overrides: Any) -> RunConfig:
    """`config`'s run settings with every not-None override on top; ConfigError (one line) when invalid."""
    data = {k: v for k, v in config_dict(config).items() if k not in AGENT_KEYS}
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "config"
        raise ConfigError(f"config {where}: {first['msg']}") from None
