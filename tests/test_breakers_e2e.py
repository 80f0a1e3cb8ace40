"""Circuit breakers through a real tagentd with 2 workers, and in-process.

The LLM is the scripted OpenAI-compatible server (tests/openai_server.py), which counts the requests that
reach it; `[endpoints.local]` points at it. The breaker is the daemon's, shared by both workers.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import DaemonProcess, wait_until, write_pipeline
from openai_server import Reply, ScriptedServer

from tagent_client import Pipeline
from tagent_client.run.local import run_pipeline

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("no_process_left_behind")]

COOLDOWN = 4.0  # how long the endpoint's breaker stays open; the tests hold at any machine speed

FIRST = """
    from tagent_client import Pipeline

    pipeline = Pipeline("first")
    pipeline.step("ask", goal="Say ok", model="local:llama3", max_retries=0)
"""

MANY = """
    from tagent_client import Pipeline

    pipeline = Pipeline("many", max_concurrent_steps=20)
    for i in range(20):
        pipeline.step(f"s{i}", goal="Say ok", model="local:llama3", execution_mode="concurrent", max_retries=30,
                      retry_delay=0.1, retry_backoff=1.0)
"""

PAY = """
    from pathlib import Path
    from tagent_client import Pipeline

    pipeline = Pipeline("pay")


    @pipeline.task(max_retries=0)
    async def charge(ctx, folder, breaker):
        async with ctx.breaker(breaker):
            with open(Path(folder) / "calls", "a") as calls:
                calls.write("x")
            if (Path(folder) / "down").exists():
                raise ConnectionError("the payments service is down")
        return "charged"
"""



@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer(default=Reply.say("ok")) as s:
        yield s


def start_daemon(make_daemon: Callable[..., DaemonProcess], tmp_path: Path, toml: str,
                 template: bool = False) -> DaemonProcess:
    config = tmp_path / "config" / "tagentd" / "tagentd.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(toml)
    daemon = make_daemon(workers=2, template=template)  # template: workers start with the agent runtime imported
    daemon.env.update(LOCAL_API_KEY="sk-breaker-test")
    return daemon.start()


def breakers(daemon: DaemonProcess) -> dict[str, dict[str, Any]]:
    """The daemon's breakers by name, from `tagentd status --json`."""
    done = daemon.admin("status", "--json")
    assert done.returncode == 0, done.stderr
    return {b["name"]: b for b in json.loads(done.stdout)["stats"]["breakers"]}


def state_of(daemon: DaemonProcess, name: str) -> str | None:
    return breakers(daemon).get(name, {}).get("state")


def submit(daemon: DaemonProcess, path: Path, *args: str) -> str:
    done = daemon.cli("submit", str(path), *args)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[0]


def requests_while_open(server: ScriptedServer, changes: list[tuple[str, dict[str, Any]]]) -> list[float]:
    """Arrival times (Unix) of the server's requests that came while the breaker was open, by its events:
    each `circuit.opened` says when it half-opens (`reopens_at`), so it was open for COOLDOWN seconds before."""
    to_unix = time.time() - time.monotonic()  # the server stamps requests with this process's monotonic clock
    arrivals = [seen.at + to_unix for seen in server.requests]
    spans = [(data["reopens_at"] - COOLDOWN, data["reopens_at"]) for topic, data in changes if topic == "circuit.opened"]
    margin = 0.1  # clock reading jitter; far below COOLDOWN
    return [t for t in arrivals if any(start + margin < t < end - margin for start, end in spans)]


def test_an_endpoint_breaker_is_shared_by_both_workers_fails_fast_probes_once_and_closes(
        make_daemon: Callable[..., DaemonProcess], tmp_path: Path, server: ScriptedServer) -> None:
    """Given [endpoints.local] whose breaker opens after 3 failures (cooldown COOLDOWN s), and a server that answers
    500 until the test ends its outage: when one step's request retries fail 3 times, then the breaker opens and no
    more requests reach the server; when 20 concurrent steps then run across the 2 workers, then each fails fast
    with CircuitOpen (at least once) and the server sees no request while the breaker is open; exactly one probe
    goes per half-open (each fails and opens it again while the outage lasts); once every step was refused the
    outage ends, the next probe succeeds and closes it, and all 20 steps complete with one request each. Every
    change was an event, and `tagentd status` showed the breaker.
    The outage lasts until all 20 were refused, not a fixed number of requests: on a loaded machine the steps may
    start only after a cooldown or two, and a probe that succeeded by then would let the late ones through
    unrefused. "No request while open" is checked against the open spans the events announce."""
    outage = threading.Event()
    outage.set()
    server.default = lambda _seen: Reply.error(500, "scripted outage") if outage.is_set() else Reply.say("ok")
    daemon = start_daemon(make_daemon, tmp_path, f"""
[endpoints.local]
base_url = "{server.base_url}"
api_key_env = "LOCAL_API_KEY"
request_retries = 5
breaker = {{ failures = 3, window = 60, cooldown = {COOLDOWN} }}
""", template=True)
    with daemon.client(timeout=30) as client:
        events = client.subscribe("circuit.", "step.retrying")
        # When the first step's request fails three times (its request retries)
        first = submit(daemon, write_pipeline(tmp_path, "first.py", FIRST))
        assert not client.wait(first, timeout=60).success
        # Then the breaker is open: the 4th try of that request was refused, and 3 requests reached the server
        assert len(server.requests) == 3
        status = client.status(first)
        assert "CircuitOpen" in (status.steps["ask"].error or "") and "'llm:local' is open" in status.steps["ask"].error

        # When 20 steps run at once on the two workers while the outage lasts
        many = submit(daemon, write_pipeline(tmp_path, "many.py", MANY))
        refused: set[str] = set()
        seen: list[Any] = []

        def drain() -> None:  # reading also renews the subscription
            while (event := events.get(timeout=0.05)) is not None:
                seen.append(event)
                if event.topic == "step.retrying" and "CircuitOpen" in str(event.data.get("error")):
                    refused.add(event.data["step"])

        def every_step_refused() -> bool:
            drain()
            return len(refused) == 20

        wait_until(every_step_refused, 90, what="all 20 steps to be refused by the open breaker")
        # And then the outage ends
        outage.clear()

        def finished() -> bool:
            drain()
            return client.status(many).finished_at is not None

        wait_until(finished, 90, what="the 20 steps to finish")
        drain()
        events.close()
        # Then every step completed: the failed probes, one good probe, and one request per other step
        result = client.wait(many, timeout=10)
        assert result.success, result.summary()
        workers = client.daemon_status().workers
    changes = [(e.topic, e.data) for e in seen if e.topic.startswith("circuit.")]
    failed_probes = [t for t, _ in changes].count("circuit.opened") - 1
    assert [t for t, _ in changes] == (["circuit.opened"] + ["circuit.half_open", "circuit.opened"] * failed_probes
                                       + ["circuit.half_open", "circuit.closed"])
    assert len(server.requests) == 3 + failed_probes + 20
    assert all(data["breaker"] == "llm:local" and data["endpoint"] == "local" for _, data in changes)
    # And no request reached the server while the breaker was open (the others were the probes)
    assert requests_while_open(server, changes) == []
    assert all(w.completed > 0 for w in workers) and len(workers) == 2  # the steps ran on both workers
    assert breakers(daemon)["llm:local"] | {"reopens_in": None} == {
        "name": "llm:local", "state": "closed", "failures": 0, "reopens_in": None, "opened": 1 + failed_probes,
        "probe_out": False}


def test_ctx_breaker_in_a_function_step_opens_fails_fast_probes_and_closes_through_the_daemon(
        make_daemon: Callable[..., DaemonProcess], tmp_path: Path) -> None:
    """Given [breakers.payments] (2 failures open it, cooldown an hour: it stays open whatever the machine's speed)
    and [breakers.refunds] (2 failures, cooldown 1 s), and a step that calls a service through ctx.breaker(name):
    when the service is down for two runs through `payments`, then the breaker opens and the third run fails
    fast with CircuitOpen without calling the service, and `tagentd status` shows it open; when two runs through
    `refunds` fail, then it opens, and once it half-opens (awaited) and the service is back, the next run is the
    probe, succeeds, and closes it."""
    daemon = start_daemon(make_daemon, tmp_path, "[breakers.payments]\nfailures = 2\nwindow = 3600\ncooldown = 3600\n"
                                                 "[breakers.refunds]\nfailures = 2\nwindow = 3600\ncooldown = 1\n")
    folder = tmp_path / "service"
    folder.mkdir()
    (folder / "down").touch()
    path = write_pipeline(tmp_path, "pay.py", PAY)
    calls = folder / "calls"

    def charge(client: Any, breaker: str) -> tuple[bool, str]:
        """Run the step through `breaker`: did the run succeed, and the step's error."""
        run = submit(daemon, path, "--param", f"folder={folder}", "--param", f"breaker={breaker}")
        success = client.wait(run, timeout=60).success
        return success, client.status(run).steps["charge"].error or ""

    with daemon.client(timeout=30) as client:
        for _ in range(2):
            success, error = charge(client, "payments")
            assert not success and "ConnectionError" in error
        assert calls.read_text() == "xx" and state_of(daemon, "payments") == "open"

        success, error = charge(client, "payments")
        assert not success and "CircuitOpen" in error and "'payments' is open (2 failure(s)" in error
        assert calls.read_text() == "xx"
        shown = daemon.admin("status")
        row = next(line for line in shown.stdout.splitlines() if "payments" in line)
        assert row.split()[:3] == ["payments", "open", "2"] and "in " in row, shown.stdout

        for _ in range(2):
            success, error = charge(client, "refunds")
            assert not success and "ConnectionError" in error
        assert calls.read_text() == "xxxx" and breakers(daemon)["refunds"]["opened"] == 1
        (folder / "down").unlink()
        wait_until(lambda: state_of(daemon, "refunds") == "half_open", 30, what="the refunds breaker to half-open")
        assert charge(client, "refunds") == (True, "")
    assert calls.read_text() == "xxxxx"
    assert breakers(daemon)["refunds"] | {"reopens_in": None} == {
        "name": "refunds", "state": "closed", "failures": 0, "reopens_in": None, "opened": 1, "probe_out": False}
    assert state_of(daemon, "payments") == "open"


def test_in_process_runs_share_this_process_breaker_for_an_endpoint(server: ScriptedServer) -> None:
    """Given an in-process endpoint `flaky_inproc` whose breaker opens after 2 failures, and a server that answers
    500: when one run's request fails twice, then the next run fails fast with CircuitOpen without reaching
    the server (the breaker is this process's, shared by its runs)."""
    pipeline = Pipeline("inproc")
    pipeline.step("ask", goal="Say ok", model="flaky_inproc:llama3", max_retries=0)
    server.script(*[Reply.error(500, "scripted outage")] * 2)
    config = {"endpoints": {"flaky_inproc": {"base_url": server.base_url, "request_retries": 3,
                                             "breaker": {"failures": 2, "cooldown": 60}}}}
    first = asyncio.run(run_pipeline(pipeline, config))
    assert not first.success and "'llm:flaky_inproc' is open" in first.summary()
    assert len(server.requests) == 2
    second = asyncio.run(run_pipeline(pipeline, config))
    assert not second.success and "CircuitOpen" in second.summary()
    assert len(server.requests) == 2
