"""LLM settings (endpoints, price overrides) in tagentd.toml and the environment; transcripts scrubbed and shown;
the agent-step fields of a pipeline in plans and documents."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tagent_client import Pipeline
from tagent_client.cli.transcript import render
from tagent_client.errors import ConfigError, PipelineValidationError
from tagent_client.run.checked import checked
from tagent_client.run.llm import LLMConfig
from tagent_client.run.transcript import REDACTED, scrub
from tagentd.settings.config import load_settings

pytestmark = pytest.mark.timeout(30)

TOML = """
[endpoints.local]
base_url = "http://127.0.0.1:11434/v1"
api_key_env = "LOCAL_API_KEY"
max_concurrent = 3
requests_per_minute = 600
tokens_per_minute = 0

[endpoints.openai]
max_concurrent = 8

[price_overrides."local:llama3"]
input_per_mtok = 0.5
output_per_mtok = 1.5
"""


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("TAGENTD_ENDPOINTS", "TAGENTD_PRICE_OVERRIDES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "nowhere"))


def test_endpoints_and_price_overrides_come_from_tagentd_toml(tmp_path: Path) -> None:
    """Given the issue's [endpoints.local] table and a price override, then the settings hold them, and the worker
    flag carries them as JSON with the key variable's name only."""
    path = tmp_path / "tagentd.toml"
    path.write_text(TOML)

    settings, sources = load_settings(path, {})

    local = settings.endpoints["local"]
    assert (local.base_url, local.api_key_env, local.max_concurrent, local.requests_per_minute) == (
        "http://127.0.0.1:11434/v1", "LOCAL_API_KEY", 3, 600)
    assert local.limited and settings.endpoints["openai"].base_url is None
    assert settings.price_overrides["local:llama3"].cost(1_000_000, 1_000_000) == 2.0
    assert sources["endpoints"] == f"file {path}"
    flag, value = settings.worker_llm_args()
    assert flag == "--llm" and LLMConfig.from_json(value) == settings.llm_config()


def test_endpoints_from_the_environment_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    """Given TAGENTD_ENDPOINTS as JSON, then it is read like the TOML table."""
    monkeypatch.setenv("TAGENTD_ENDPOINTS", json.dumps({"vllm": {"base_url": "http://127.0.0.1:8000/v1"}}))

    settings, sources = load_settings(None, {})

    assert settings.endpoints["vllm"].base_url == "http://127.0.0.1:8000/v1"
    assert sources["endpoints"] == "env TAGENTD_ENDPOINTS"
    assert settings.worker_llm_args()[0] == "--llm"


@pytest.mark.parametrize("table, message", [
    ('[endpoints.local]\nmax_concurrent = -1\n', "endpoints.local.max_concurrent: must be >= 0"),
    ('[endpoints.local]\nbase_url = "127.0.0.1:11434"\n', "endpoints.local.base_url"),
    ('[endpoints.local]\napi_key = "sk-inline"\n', "endpoints.local.api_key"),
    ('[endpoints.Local]\n', "lower-case"),
])
def test_bad_endpoint_settings_are_refused_with_the_setting_named(tmp_path: Path, table: str, message: str) -> None:
    """Given a negative limit, a URL without scheme, a key written inline, or a bad name, then loading fails with
    one line naming the setting (a key must come from a variable, never the file)."""
    path = tmp_path / "tagentd.toml"
    path.write_text(table)

    with pytest.raises(ConfigError, match="config: .*" + message.replace(".", r"\.")):
        load_settings(path, {})


def test_no_llm_settings_means_no_worker_flag() -> None:
    settings, _ = load_settings(None, {})
    assert settings.worker_llm_args() == []


def test_scrub_replaces_secret_values_anywhere_and_credential_fields() -> None:
    """Given a secret inside text, a list, and an authorization field, then none of it survives."""
    data = {"parts": [{"content": "use key sk-abc123456 now", "args": ["sk-abc123456"]}],
            "headers": {"Authorization": "Bearer xyz", "X-Api-Key": "k", "accept": "json"}}

    clean = scrub(data, ["sk-abc123456"])

    assert "sk-abc123456" not in json.dumps(clean)
    assert clean["parts"][0]["content"] == f"use key {REDACTED} now"
    assert clean["headers"] == {"Authorization": REDACTED, "X-Api-Key": REDACTED, "accept": "json"}


def test_llm_config_secrets_are_the_values_of_the_key_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_KEY", "sk-my-very-own")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-123")
    config = checked({"endpoints": {"mine": {"base_url": "http://x", "api_key_env": "MY_KEY"}}}, LLMConfig)

    assert {"sk-my-very-own", "sk-openai-123"} <= set(config.secrets())


def test_llm_config_secrets_look_up_only_the_key_variables_that_are_set(monkeypatch: pytest.MonkeyPatch) -> None:
    """Given one of the ~17 key variables set, when the secrets are read (once per agent attempt, on the step's
    critical path), then only that variable is looked up: asking os.environ for an absent one raises and catches
    a KeyError twice (~2 us each, ~40 us an attempt); and a variable set later (a step may set one) is still
    found the next time: nothing is cached."""
    import os

    class Counted(dict):  # type: ignore[type-arg]
        absent: list[str] = []

        def __getitem__(self, name: str) -> str:
            if name not in self:
                self.absent.append(name)
            return super().__getitem__(name)

        def get(self, name: str, default: object = None) -> object:  # type: ignore[override]
            return self[name] if name in self else (self.absent.append(name), default)[1]

    environ = Counted({"OPENAI_API_KEY": "sk-openai-123", "HOME": "/root"})
    monkeypatch.setattr(os, "environ", environ)
    config = LLMConfig()

    assert config.secrets() == ["sk-openai-123"]
    assert environ.absent == []
    environ["ANTHROPIC_API_KEY"] = "sk-ant-4567890"
    assert config.secrets() == ["sk-ant-4567890", "sk-openai-123"]


def test_render_shows_each_attempt_and_its_exchange() -> None:
    attempts = [{"attempt": 1, "status": "failed", "model": "local:m", "messages": [
        {"kind": "request", "parts": [{"part_kind": "system-prompt", "content": "Goal: x"},
                                      {"part_kind": "user-prompt", "content": "{}"}]},
        {"kind": "response", "usage": {"input_tokens": 10, "output_tokens": 2},
         "parts": [{"part_kind": "tool-call", "tool_name": "lookup", "args": '{"q": 1}'}]},
        {"kind": "request", "parts": [{"part_kind": "tool-return", "tool_name": "lookup", "content": "boom",
                                       "outcome": "failed"}]},
    ]}]

    text = render(attempts)

    assert text.splitlines()[0] == "attempt 1: failed (model local:m)"
    assert "  assistant -> lookup({\"q\": 1})" in text and "[10 in / 2 out tokens]" in text
    assert "lookup [failed] -> boom" in text
    assert render([]).startswith("no transcript")


def test_output_and_tool_retries_are_plan_fields_and_survive_export() -> None:
    """Given a step with output_retries=5 and tool_retries=0, then the plan and a JSON round trip keep them;
    a negative count is a validation problem."""
    p = Pipeline("p")
    p.step("s", goal="g", output_retries=5, tool_retries=0)

    spec = p.plan().step("s")
    back = Pipeline.from_json(p.to_json()).steps["s"]

    assert (spec.output_retries, spec.tool_retries) == (5, 0)
    assert (back.output_retries, back.tool_retries) == (5, 0)
    bad = Pipeline("p")
    bad.step("s", goal="g", output_retries=-1)
    with pytest.raises(PipelineValidationError, match="output_retries must be an integer >= 0"):
        bad.validate()
