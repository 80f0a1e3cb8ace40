"""Agent steps through a real tagentd: workers, endpoints from tagentd.toml, daemon-wide limits, transcripts.

The LLM is the scripted OpenAI-compatible server of tests/openai_server.py, on
127.0.0.1 in this test process; the daemon's workers reach it by the base URL
configured in `[endpoints.local]`, with the API key taken from $LOCAL_API_KEY.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, DaemonProcess, write_pipeline
from openai_server import Reply, ScriptedServer, final_for

from tagent_client import TokenUsage

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("no_process_left_behind")]

SECRET = "sk-daemon-test-5e8d2a91"
RESEARCH = REPO / "pipelines" / "examples" / "research.py"

FIND = """
    import os
    from pydantic import BaseModel
    from tagent_client import Pipeline


    class Company(BaseModel):
        name: str
        founded: int


    def lookup(company: str) -> str:
        \"\"\"Look up what is known about a company.\"\"\"
        return f"{company} was founded in 1999; key {os.environ.get('LOCAL_API_KEY')}"


    def internal_only() -> str:
        \"\"\"Not for the model.\"\"\"
        return "x"


    pipeline = Pipeline("find", tools=[lookup, internal_only])
    pipeline.step("find", goal="Find the founding year", output_schema=Company, model="local:llama3",
                  tools_filter=["lookup"], retry_delay=0.05)
"""



@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer(default=final_for({"name": "Acme", "founded": 1999})) as s:
        yield s


@pytest.fixture
def llm_daemon(make_daemon: Callable[..., DaemonProcess], tmp_path: Path,
               server: ScriptedServer) -> Callable[..., DaemonProcess]:
    """A daemon whose tagentd.toml points [endpoints.local] at the scripted server (extra endpoint keys as kwargs)."""

    def start(workers: int = 2, env: dict[str, str] | None = None, **endpoint: Any) -> DaemonProcess:
        settings = {"base_url": server.base_url, "api_key_env": "LOCAL_API_KEY", **endpoint}
        lines = ["[endpoints.local]"] + [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
        lines += ['[price_overrides."local:llama3"]', "input_per_mtok = 1.0", "output_per_mtok = 2.0"]
        config = tmp_path / "config" / "tagentd" / "tagentd.toml"
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text("\n".join(lines) + "\n")
        daemon = make_daemon(workers=workers)
        daemon.env.update(LOCAL_API_KEY=SECRET, **(env or {}))
        return daemon.start()

    return start


def submit(daemon: DaemonProcess, path: Path, *args: str) -> str:
    done = daemon.cli("submit", str(path), *args)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[0]


def test_offline_research_example_runs_on_the_test_model_with_typed_outputs_and_usage(
        make_daemon: Callable[..., DaemonProcess]) -> None:
    """Given the research example (web search -> reputation & social concurrently -> score -> report) on the
    `test` model, when submitted to the daemon, then every step completes, the outputs validate as their schemas,
    every agent step used tokens, and its transcript is kept."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("research_example", RESEARCH)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    daemon = make_daemon().start()
    run_id = submit(daemon, RESEARCH, "--param", "company=Acme")

    with daemon.client() as client:
        schemas = {"web_search": module.CompanyInfo, "reputation": module.Reputation,
                   "social": module.SocialPresence, "score": module.Scorecard, "final_report": module.Report}
        result = client.wait(run_id, timeout=60, schemas=schemas)
        detail = client.status(run_id)
        transcript = client.transcript(run_id, "web_search")

    assert result.success, result.summary()
    for step, schema in schemas.items():
        assert isinstance(result.step_outputs[step], schema), step
    agent_steps = ("web_search", "reputation", "social", "final_report")
    assert all(detail.steps[s].tokens > 0 for s in agent_steps) and detail.steps["score"].tokens == 0
    assert result.total_usage.requests >= 4 and result.total_cost == 0.0
    assert transcript["attempts"][0]["model"] == "test" and transcript["attempts"][0]["status"] == "succeeded"


def test_agent_step_on_a_configured_endpoint_calls_a_tool_and_records_usage_cost_and_transcript(
        llm_daemon: Callable[..., DaemonProcess], server: ScriptedServer, tmp_path: Path) -> None:
    """Given [endpoints.local] at the scripted server and a price override, when a step that calls a tool runs,
    then it returns a schema-valid object, the filtered-out tool was never offered, usage and cost are recorded
    and shown by `tagent status`, and `tagent transcript` shows the exchange without the API key."""
    daemon = llm_daemon()
    server.script(Reply.tool("lookup", {"company": "acme"}, prompt_tokens=1000, completion_tokens=100),
                  Reply.final({"name": "Acme", "founded": 1999}, prompt_tokens=1500, completion_tokens=50))
    run_id = submit(daemon, write_pipeline(tmp_path, "find.py", FIND))

    with daemon.client() as client:
        result = client.wait(run_id, timeout=60)

    assert result.success, result.summary()
    assert result.step_outputs["find"] == {"name": "Acme", "founded": 1999}
    expected = TokenUsage(input_tokens=2500, output_tokens=150, total_tokens=2650, requests=2, tool_calls=1,
                          cost=result.total_cost)
    assert result.token_usage == {"find": expected} and result.total_usage == expected
    assert result.total_cost == pytest.approx((2500 * 1.0 + 150 * 2.0) / 1e6)
    assert result.cost_per_step["find"] == pytest.approx(result.total_cost)
    assert all(r.tool_names == ["lookup", "final_result"] for r in server.requests)
    assert server.requests[0].headers["authorization"] == f"Bearer {SECRET}"

    status = daemon.cli("status", run_id)
    assert re.search(r"find\s+completed\s+1\s+\S+\s+2650\s+\$0\.002800", status.stdout), status.stdout
    shown = daemon.cli("transcript", run_id, "find")
    assert shown.returncode == 0, shown.stderr
    assert "assistant -> lookup" in shown.stdout and "founded in 1999" in shown.stdout
    assert SECRET not in shown.stdout and "[REDACTED]" in shown.stdout
    as_json = daemon.cli("transcript", run_id, "find", "--json")
    assert SECRET not in as_json.stdout and json.loads(as_json.stdout)["attempts"][0]["status"] == "succeeded"


def test_429_with_retry_after_then_500_are_retried_until_the_step_succeeds(
        llm_daemon: Callable[..., DaemonProcess], server: ScriptedServer, tmp_path: Path) -> None:
    """Given a server that answers 429 (Retry-After: 1), then 500, then a good answer, and an endpoint that does
    not retry requests itself, when the step runs, then the step retry policy runs it again until it succeeds,
    the 429's pause is honored, and each failed attempt is in the transcript."""
    daemon = llm_daemon(max_concurrent=2, request_retries=0)
    server.script(Reply.error(429, headers={"Retry-After": "1"}), Reply.error(500))
    run_id = submit(daemon, write_pipeline(tmp_path, "find.py", FIND))

    with daemon.client() as client:
        result = client.wait(run_id, timeout=60)
        transcript = client.transcript(run_id, "find")

    assert result.success, result.summary()
    assert result.step_metadata["find"]["attempts"] == 3
    assert server.requests[1].at - server.requests[0].at >= 0.95
    assert [a["status"] for a in transcript["attempts"]] == ["failed", "failed", "succeeded"]


def test_invalid_output_is_retried_by_the_agent_through_the_daemon(
        llm_daemon: Callable[..., DaemonProcess], server: ScriptedServer, tmp_path: Path) -> None:
    """Given a first answer that fails the schema, when the step runs, then the model is asked again and the
    step succeeds in its first attempt."""
    daemon = llm_daemon()
    server.script(Reply.final({"name": "Acme", "founded": "long ago"}))
    run_id = submit(daemon, write_pipeline(tmp_path, "find.py", FIND))

    with daemon.client() as client:
        result = client.wait(run_id, timeout=60)

    assert result.success, result.summary()
    assert result.step_metadata["find"]["attempts"] == 1 and len(server.requests) == 2
    assert "founded" in str(server.requests[1].messages[-1]["content"])


def test_thirty_agent_steps_on_two_workers_never_exceed_three_requests_in_flight(
        llm_daemon: Callable[..., DaemonProcess], tmp_path: Path) -> None:
    """Given max_concurrent = 3 for the endpoint and a slow server, when 30 concurrent agent steps run across 2
    workers, then the server never has more than 3 requests in flight (and does reach 3)."""
    with ScriptedServer(default=final_for({"name": "A", "founded": 1}, delay=0.05)) as slow:
        daemon = llm_daemon(workers=2, base_url=slow.base_url, max_concurrent=3)
        source = """
            from pydantic import BaseModel
            from tagent_client import ExecutionMode, Pipeline

            class Company(BaseModel):
                name: str
                founded: int

            pipeline = Pipeline("wide", max_concurrent_steps=30)
            for i in range(30):
                pipeline.step(f"s{i}", goal="find", output_schema=Company, model="local:llama3",
                              execution_mode=ExecutionMode.CONCURRENT)
        """
        run_id = submit(daemon, write_pipeline(tmp_path, "wide.py", source))
        with daemon.client() as client:
            result = client.wait(run_id, timeout=90)
            info = client.daemon_status()

    assert result.success, result.summary()
    assert len(slow.requests) == 30
    assert slow.max_in_flight == 3
    assert info.stats["llm_permits_granted"] >= 30
    assert info.stats["llm_endpoints"]["local"]["in_flight"] == 0


def test_model_precedence_step_over_pipeline_over_submit_over_config(
        llm_daemon: Callable[..., DaemonProcess], server: ScriptedServer, tmp_path: Path) -> None:
    """Given steps naming their own model, the pipeline's, neither (with and without --model), and TAGENT_MODEL
    in the daemon's environment, then each request goes out with the model the precedence rule picks."""
    daemon = llm_daemon(env={"TAGENT_MODEL": "local:from-config"})
    server.default = lambda seen: Reply.say("ok")
    own = write_pipeline(tmp_path, "own.py", """
        from tagent_client import Pipeline
        pipeline = Pipeline("own", model="local:from-pipeline")
        pipeline.step("mine", goal="g", model="local:from-step")
        pipeline.step("inherits", goal="g", depends_on=["mine"])
    """)
    bare = write_pipeline(tmp_path, "bare.py", """
        from tagent_client import Pipeline
        pipeline = Pipeline("bare")
        pipeline.step("only", goal="g")
    """)

    with daemon.client() as client:
        for path, args in ((own, ["--model", "local:from-submit"]), (bare, ["--model", "local:from-submit"]), (bare, [])):
            assert client.wait(submit(daemon, path, *args), timeout=60).success

    assert [r.body["model"] for r in server.requests] == ["from-step", "from-pipeline", "from-submit", "from-config"]


def test_runner_tagent_without_the_library_fails_with_how_to_install_it(
        make_daemon: Callable[..., DaemonProcess], tmp_path: Path) -> None:
    """Given a runner='tagent' step and no `tagent` package installed, when it runs in the daemon, then it fails
    once (not retried) saying to install the extra."""
    hidden = tmp_path / "no_tagent" / "tagent"  # `make test` installs TAgent: shadow it with one that is missing
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'tagent'\", name='tagent')\n")
    daemon = make_daemon()
    daemon.env["PYTHONPATH"] = os.pathsep.join([str(hidden.parent), daemon.env["PYTHONPATH"]])
    daemon.start()
    path = write_pipeline(tmp_path, "ta.py", """
        from tagent_client import Pipeline
        pipeline = Pipeline("ta", model="openai:gpt-4o-mini")
        pipeline.step("plan", goal="Plan a trip", runner="tagent")
    """)
    run_id = submit(daemon, path)

    with daemon.client() as client:
        result = client.wait(run_id, timeout=60)

    assert not result.success
    assert result.step_metadata["plan"]["attempts"] == 1
    assert "runner='tagent' needs the TAgent library: pip install 'tagentd[tagent]'" in result.error_details["plan"]
