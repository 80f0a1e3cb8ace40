"""runner="tagent" on the real TAgent 0.7.1 (the tagent extra, installed by `make test`), in-process and through a
real daemon, against the scripted OpenAI-compatible server of tests/openai_server.py on 127.0.0.1.

TAgent reaches the server through LiteLLM as any LiteLLM user reaches an OpenAI-compatible server: with
OPENAI_BASE_URL and OPENAI_API_KEY in the environment, and the step's model "openai:gpt-4o-mini" (LiteLLM's
"openai/gpt-4o-mini", which LiteLLM's bundled price map prices at $0.15 / $0.60 per million tokens).

Offline: the network guard (tests/network_guard/sitecustomize.py) refuses and reports every connection and name
lookup for a host other than the loopback, in this process while these tests run and in the daemon and its
workers for their whole life.

Importing TAgent costs about 6.5 s of CPU (15-35 s on a loaded 2-core machine): the session fixture `tagent`
imports it once for this process, and each test has a generous timeout that includes it; a daemon's worker
imports it again, once, when its first runner="tagent" step runs.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import re
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import msgspec
import pytest
from conftest import REPO, DaemonProcess, write_pipeline
from openai_server import Reply, ScriptedServer, tagent_phase, tagent_script, tagent_task

from tagent_client import TokenUsage, run_agent

pytestmark = [pytest.mark.timeout(240), pytest.mark.usefixtures("no_process_left_behind")]

GUARD_DIR = REPO / "tests" / "network_guard"
API_KEY = "sk-tagent-test"
PRICE_IN, PRICE_OUT = 0.15 / 1e6, 0.60 / 1e6  # gpt-4o-mini in LiteLLM's bundled map, dollars per token
#: What TAgent's console UI and LiteLLM's notes look like: ANSI colours, the spinner's carriage returns, banners.
CONSOLE_MARKS = ("\x1b[", "\r", "T-AGENT", "TAgent v", "MISSION", "Give Feedback", "LiteLLM", "Provider List",
                 "network guard")

WEATHER = """
    from __future__ import annotations  # string annotations: the adapter still hands TAgent tools it can call

    from pydantic import BaseModel
    from tagent_client import Pipeline


    class Weather(BaseModel):
        city: str
        forecast: str


    def get_weather(city: str) -> str:
        \"\"\"The weather forecast for a city.\"\"\"
        return f"sunny in {city}"


    class Station(BaseModel):
        city: str


    def station(query: Station) -> str:
        \"\"\"The weather station of a city (TAgent builds `query` from the model's arguments).\"\"\"
        return f"station {query.city.upper()}"


    def remember(state: dict, args: dict) -> tuple[str, dict]:
        \"\"\"Keep a note (a TAgent-style tool). args: {"text": str}\"\"\"
        return "note", {"text": args["text"], "seen": sorted(state)}


    pipeline = Pipeline("weather", tools=[get_weather, station, remember])
    pipeline.step("forecast", goal="Get the weather for Lisbon", runner="tagent", output_schema=Weather,
                  model="openai:gpt-4o-mini", max_retries=0)
"""

#: The run of WEATHER that reaches the goal: plan four tasks (three tools, which run locally, and an llm_task,
#: one more request), then evaluate, then finalize. 4 requests of 1000 + 100 tokens each.
TASKS = (tagent_task("get_weather", city="Lisbon"), tagent_task("station", city="Lisbon"),
         tagent_task("remember", text="pack sunglasses"), tagent_task("llm_task", prompt="Say hello"))
FINAL = {"city": "Lisbon", "forecast": "sunny"}
COST = 4000 * PRICE_IN + 400 * PRICE_OUT
USAGE = TokenUsage(input_tokens=4000, output_tokens=400, total_tokens=4400, requests=4, tool_calls=3)


def tokens(usage: TokenUsage) -> TokenUsage:
    """The usage without its cost (tests check the cost with pytest.approx)."""
    return msgspec.structs.replace(usage, cost=0.0)


def guard_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("network_guard", GUARD_DIR / "sitecustomize.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.install()
    return module


@pytest.fixture(scope="session")
def guard() -> ModuleType:
    """The network guard of this process (armed by `tagent` and `offline`)."""
    return guard_module()


@pytest.fixture(scope="session")
def tagent(guard: ModuleType) -> ModuleType:
    """TAgent, imported once for the session by the adapter's own loader, with the network guard armed."""
    from tagent_client.run.runners import tagent_library

    guard.armed = True
    try:
        return tagent_library.load()
    finally:
        guard.armed = False


@pytest.fixture
def offline(guard: ModuleType, tagent: ModuleType) -> Iterator[ModuleType]:
    """The guard armed for one test; it fails the test if anything was refused (during the import too)."""
    guard.armed = True
    try:
        yield guard
    finally:
        guard.armed = False
    assert guard.refused == [], guard.refused


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[ScriptedServer]:
    """The scripted server, with LiteLLM in this process pointed at it; a request beyond the script is an error."""
    with ScriptedServer(default=Reply.error(400, "a request beyond the test's script")) as s:
        monkeypatch.setenv("OPENAI_BASE_URL", s.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
        yield s



def load_pipeline_module(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"pipeline_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # pydantic resolves the schema's string annotations through it
    spec.loader.exec_module(module)
    return module


def console_marks(text: str) -> list[str]:
    return [mark for mark in CONSOLE_MARKS if mark in text]


def spinner_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if "_animate" in t.name]


def test_make_test_installs_tagent_0_7_1_and_keeps_the_tagent_command_tagentds() -> None:
    """Given the test environment `make test` builds, then TAgent 0.7.1 is installed (the tagent extra), and the
    `tagent` command beside this Python, which TAgent installs too, is still tagentd's CLI."""
    assert importlib.metadata.version("tagent") == "0.7.1"
    command = Path(sys.executable).parent / "tagent"
    if command.exists():  # an environment with console scripts (make's .venv)
        assert "tagent_client" in command.read_text(), command.read_text()


def test_a_tagent_step_reaches_its_goal_in_process_with_exact_usage_and_nothing_on_the_console(
        offline: ModuleType, server: ScriptedServer, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """Given a runner="tagent" step with a plain tool, one taking a pydantic model and a TAgent-style (state, args)
    one, all under string annotations, when TAgent plans the three tools and an llm_task, evaluates and
    finalizes, then the step's output is the schema's instance, each tool ran with its arguments, usage counts
    each response once (TAgent 0.7.1 counts an llm_task's twice) with LiteLLM's offline price, and nothing
    reached stdout or stderr."""
    module = load_pipeline_module(write_pipeline(tmp_path, "weather.py", WEATHER))
    server.script(*tagent_script(FINAL, *TASKS, prompt_tokens=1000, completion_tokens=100))

    result = run_agent(module.pipeline)

    assert result.success, result.summary()
    assert result.step_outputs["forecast"] == module.Weather(city="Lisbon", forecast="sunny")
    assert [tagent_phase(seen) for seen in server.requests] == ["plan", "llm_task", "evaluate", "finalize"]
    assert all(seen.headers["authorization"] == f"Bearer {API_KEY}" for seen in server.requests)
    evaluated = server.requests[2].messages[-1]["content"]
    assert "sunny in Lisbon" in evaluated, evaluated  # get_weather(city="Lisbon")
    assert "station LISBON" in evaluated, evaluated  # station(Station(city="Lisbon"))
    assert "pack sunglasses" in evaluated and "get_weather_output" in evaluated, evaluated  # remember(state, args)
    assert set(result.token_usage) == {"forecast"} and tokens(result.token_usage["forecast"]) == USAGE
    assert tokens(result.total_usage) == USAGE and result.total_usage.cost == pytest.approx(COST)
    assert result.total_cost == pytest.approx(COST) and result.cost_per_step["forecast"] == pytest.approx(COST)
    assert result.step_metadata["forecast"]["usage"]["requests"] == 4
    assert capfd.readouterr() == ("", "")


def test_a_failing_llm_leaves_no_spinner_and_says_why_in_process(
        offline: ModuleType, server: ScriptedServer, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """Given a server that answers HTTP 500 (where TAgent 0.7.1 never stops its console spinner), when the step
    runs, then it fails as retryable naming the LLM error, with no usage; no spinner thread is left, and nothing
    reaches stdout or stderr, during that run or the successful run after it."""
    module = load_pipeline_module(write_pipeline(tmp_path, "weather.py", WEATHER))
    server.script(*[Reply.error(500, "scripted outage")] * 3)  # the OpenAI SDK tries 3 times

    failed = run_agent(module.pipeline)

    assert not failed.success
    assert "TAgentGoalNotAchieved" in failed.error_details["forecast"]
    assert "its last LLM call failed: InternalServerError" in failed.error_details["forecast"]
    assert failed.total_usage.requests == 0 and failed.total_cost == 0.0
    assert spinner_threads() == []
    server.script(*tagent_script(FINAL, *TASKS))
    assert run_agent(module.pipeline).success  # time for a leaked spinner to write
    assert capfd.readouterr() == ("", "")


TOOLS = """
    import asyncio

    from tagent_client import Pipeline


    def get_weather(city: str) -> str:
        \"\"\"The weather forecast for a city.\"\"\"
        raise LookupError(f"no station in {city}")


    async def slow_echo(text: str) -> str:
        \"\"\"Echo the text, asynchronously.\"\"\"
        await asyncio.sleep(0)  # ok-sleep: yields to the loop, as an async tool does
        return f"echo {text} on {type(asyncio.get_running_loop()).__name__}"


    def undocumented(n: int) -> int:
        return n + 1


    pipeline = Pipeline("tools", tools=[get_weather, slow_echo, undocumented])
    pipeline.step("use", goal="Use the tools", runner="tagent", model="openai:gpt-4o-mini", max_retries=0)
"""

DEFAULT_FINAL = {"result": "done", "summary": "used them", "achievements": ["all"], "challenges": [],
                 "data_collected": {}}


@pytest.fixture
def step_lines() -> Iterator[list[str]]:
    """The lines steps log through `ctx.log` in this process (their logger is tagent.step.<name>)."""
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(f"{record.name}: {record.getMessage()}")

    root = logging.getLogger("tagent.step")
    root.addHandler(keep := Keep())
    try:
        yield lines
    finally:
        root.removeHandler(keep)


def test_tools_that_raise_are_async_or_undocumented_and_the_default_final_answer(
        offline: ModuleType, server: ScriptedServer, tmp_path: Path, step_lines: list[str],
        capfd: pytest.CaptureFixture[str]) -> None:
    """Given a tool that raises, an async one and one without a docstring, and no output_schema, when TAgent
    calls all three, then the raising one is logged on the step's log (TAgent only records it as the task's
    result), the async one ran on the step's event loop, the undocumented one was offered by name, each call
    is counted, and the step's output is TAgent's default final answer as plain data."""
    module = load_pipeline_module(write_pipeline(tmp_path, "tools.py", TOOLS))
    server.script(*tagent_script(DEFAULT_FINAL, tagent_task("get_weather", city="Lisbon"),
                                 tagent_task("slow_echo", text="hi"), tagent_task("undocumented", n=41)))

    result = run_agent(module.pipeline)

    assert result.success, result.summary()
    assert result.step_outputs["use"] == DEFAULT_FINAL
    assert result.total_usage.tool_calls == 3
    planned = server.requests[0].messages[-1]["content"]
    assert "Tool: undocumented(n: int) -> int\nDescription: The tool undocumented." in planned, planned
    evaluated = server.requests[1].messages[-1]["content"]
    assert "echo hi on _UnixSelectorEventLoop" in evaluated and "undocumented_output: 42" in evaluated, evaluated
    assert step_lines == ["tagent.step.use: TAgent tool 'get_weather' failed: LookupError: no station in Lisbon"]
    assert capfd.readouterr().out == ""


def test_a_final_answer_that_never_validates_fails_the_attempt_as_retryable(
        offline: ModuleType, server: ScriptedServer, tmp_path: Path) -> None:
    """Given a model whose final answer never fits the output_schema, when TAgent has asked 3 times, then the
    attempt fails saying so (TAgent itself reports the goal achieved, with no output) and is retried, and the
    usage counts every response of both attempts."""
    source = WEATHER.replace("max_retries=0)", "max_retries=1, retry_delay=0)")
    module = load_pipeline_module(write_pipeline(tmp_path, "weather.py", source))
    plan, evaluation, _ = tagent_script(FINAL)
    server.script(*[plan, evaluation, *[Reply.json({"city": "Lisbon"})] * 3] * 2)

    result = run_agent(module.pipeline)

    assert not result.success and result.step_metadata["forecast"]["attempts"] == 2
    assert result.error_details["forecast"] == (
        "TAgentGoalNotAchieved: step 'forecast': TAgent achieved the goal but could not produce Weather (its final "
        "answer did not validate 3 times)")
    assert result.total_usage.requests == 10 == len(server.requests)


def test_a_timed_out_step_stops_tagent_at_its_next_llm_call(
        offline: ModuleType, server: ScriptedServer, tmp_path: Path) -> None:
    """Given a step with a 2 s timeout and a model that takes 4 s to plan, when the step times out, then TAgent's
    thread (which cannot be interrupted) makes no request after that: not even its plan request if it had not
    sent it yet (a loaded machine), and nothing more once its plan arrives."""
    source = WEATHER.replace("max_retries=0)", "max_retries=0, timeout=2)")
    module = load_pipeline_module(write_pipeline(tmp_path, "slow.py", source))
    plan, *rest = tagent_script(FINAL, tagent_task("get_weather", city="Lisbon"))
    plan.delay = 4.0
    server.script(plan, *rest)

    result = run_agent(module.pipeline)  # returns once TAgent's thread has ended (asyncio.run joins it)

    assert result.step_metadata["forecast"]["status"] == "failed", result.summary()
    assert "timed out after 2s" in result.error_details["forecast"], result.error_details
    assert [tagent_phase(seen) for seen in server.requests] in ([], ["plan"])


def test_a_price_override_prices_tagents_responses(offline: ModuleType, server: ScriptedServer, tmp_path: Path) -> None:
    """Given price_overrides for the step's model string, then the step's cost comes from it, not LiteLLM's map."""
    from tagent_client.run.local import RunConfig

    module = load_pipeline_module(write_pipeline(tmp_path, "weather.py", WEATHER))
    server.script(*tagent_script(FINAL, prompt_tokens=1000, completion_tokens=100))
    prices = {"openai:gpt-4o-mini": {"input_per_mtok": 1000.0, "output_per_mtok": 2000.0}}

    result = run_agent(module.pipeline, config=RunConfig(price_overrides=prices))

    assert result.success, result.summary()
    assert result.total_cost == pytest.approx(3 * (1000 * 1000.0 + 100 * 2000.0) / 1e6)


@pytest.fixture
def tagent_daemon(make_daemon: Callable[..., DaemonProcess], server: ScriptedServer) -> DaemonProcess:
    """A daemon with one worker whose processes reach the scripted server through LiteLLM and run under the
    network guard."""
    daemon = make_daemon(workers=1)
    daemon.env.update(OPENAI_BASE_URL=server.base_url, OPENAI_API_KEY=API_KEY,
                      PYTHONPATH=os.pathsep.join([str(GUARD_DIR), daemon.env["PYTHONPATH"]]))
    daemon.env.pop("LITELLM_LOCAL_MODEL_COST_MAP", None)  # the adapter sets it
    return daemon.start()


def test_through_the_daemon_the_result_equals_the_in_process_one_and_the_logs_stay_clean(
        offline: ModuleType, server: ScriptedServer, tagent_daemon: DaemonProcess, tmp_path: Path) -> None:
    """Given the same pipeline run in-process, then submitted to a daemon after a run that met HTTP 500s, then
    the daemon's result equals the in-process one (output, usage, cost); its worker imported TAgent without
    missing a heartbeat (it was not replaced) and without touching the network; and neither the daemon's log
    (the workers' stdout and stderr) nor the runs' log lines hold any of TAgent's console output."""
    path = write_pipeline(tmp_path, "weather.py", WEATHER)
    module = load_pipeline_module(path)
    server.script(*tagent_script(FINAL, *TASKS, prompt_tokens=1000, completion_tokens=100))
    local = run_agent(module.pipeline)
    assert local.success, local.summary()
    daemon = tagent_daemon
    with daemon.client(timeout=30) as client:
        (worker,) = client.daemon_status().workers
        server.script(*[Reply.error(500, "scripted outage")] * 3)
        failed = client.wait(client.submit(path).id, timeout=200)
        server.script(*tagent_script(FINAL, *TASKS, prompt_tokens=1000, completion_tokens=100))
        handle = client.submit(path)
        remote = client.wait(handle.id, timeout=120, schemas={"forecast": module.Weather})
        logs = [*client.logs(failed.run_id), *client.logs(handle.id)]
        (after,) = client.daemon_status().workers

    assert not failed.success and "its last LLM call failed: InternalServerError" in failed.error_details["forecast"]
    assert remote.success, remote.summary()
    assert remote.step_outputs == local.step_outputs == {"forecast": module.Weather(city="Lisbon", forecast="sunny")}
    assert set(remote.token_usage) == set(local.token_usage) == {"forecast"}
    assert tokens(remote.token_usage["forecast"]) == tokens(local.token_usage["forecast"]) == USAGE
    assert remote.total_cost == pytest.approx(local.total_cost) and remote.cost_per_step == pytest.approx(local.cost_per_step)
    assert remote.step_metadata["forecast"]["usage"] == local.step_metadata["forecast"]["usage"]
    assert after.pid == worker.pid, "the worker was replaced (a missed heartbeat?)"
    log = (daemon.state_dir / "tagentd.log").read_text(errors="replace")
    assert console_marks(log) == [], log[-3000:]
    assert not re.search(r"no heartbeat|killed worker", log), log[-3000:]
    assert [line.message for line in logs if console_marks(line.message)] == []
