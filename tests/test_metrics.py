"""Prometheus metrics of a real daemon: `tagentd status --metrics`, `Client.metrics()` (get_metrics).

One daemon, two workers, its [endpoints.local] at the scripted OpenAI-compatible server (tests/openai_server.py)
with a price and a concurrency limit, runs the research example (agent steps on the `test` model), an agent
step on `local:llama3`, and a pipeline of function steps: one that burns CPU and holds 64 MiB, one that fails on
every attempt (with a dependent that is skipped), and one that parks on its mailbox (while it waits the
metrics are scraped mid-run), sends a message nobody takes and goes through a circuit breaker. The exposition
is parsed with prometheus_client's own parser and every series of docs/operations.md (Metrics) is checked.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import REPO, DaemonProcess, wait_until, write_pipeline
from openai_server import ScriptedServer, final_for
from prometheus_client.parser import text_string_to_metric_families

pytestmark = [pytest.mark.timeout(150), pytest.mark.usefixtures("no_process_left_behind")]

RESEARCH = REPO / "pipelines" / "examples" / "research.py"
MiB = 1 << 20

CHORES = """
    import time

    from tagent_client import Pipeline

    pipeline = Pipeline("chores")


    @pipeline.task(max_retries=0)
    def burn():
        ballast = b"x" * (64 << 20)  # 64 MiB resident while the step runs
        started = time.thread_time()
        while time.thread_time() - started < 0.3:  # 0.3 s of this thread's CPU, however loaded the machine is
            pass
        return len(ballast)


    @pipeline.task(max_retries=2, retry_delay=0.01)
    def flaky():
        raise ConnectionError("the service is down")


    @pipeline.task(max_retries=0, depends_on=["flaky"])
    def after_flaky(flaky):
        return flaky


    @pipeline.task(max_retries=0)
    async def hold(ctx):
        async with ctx.breaker("payments"):
            await ctx.send("outbox", {"parcel": 1})  # nobody takes it: a mailbox depth of 1
        message = await ctx.receive(timeout=60)  # parks until the test sends "go"
        await ctx.ack(message)
        return message.payload
"""

FIND = """
    from pydantic import BaseModel
    from tagent_client import Pipeline


    class Company(BaseModel):
        name: str
        founded: int


    pipeline = Pipeline("find")
    pipeline.step("find", goal="Find the founding year", output_schema=Company, model="local:llama3")
"""



@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer(default=final_for({"name": "Acme", "founded": 1999})) as s:
        yield s


@pytest.fixture
def daemon(make_daemon: Callable[..., DaemonProcess], tmp_path: Path, server: ScriptedServer) -> DaemonProcess:
    """A daemon whose [endpoints.local] is the scripted server (at most 2 requests at once), with a price for
    local:llama3 and a `payments` circuit breaker."""
    config = tmp_path / "config" / "tagentd" / "tagentd.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text("\n".join([
        "[endpoints.local]", f"base_url = {json.dumps(server.base_url)}", 'api_key_env = "LOCAL_API_KEY"',
        "max_concurrent = 2",
        '[price_overrides."local:llama3"]', "input_per_mtok = 1.0", "output_per_mtok = 2.0",
        "[breakers.payments]", "failures = 2", "cooldown = 60",
    ]) + "\n")
    made = make_daemon(workers=2)
    made.env.update(LOCAL_API_KEY="sk-metrics-test")
    return made.start()


def submit(daemon: DaemonProcess, path: Path, *args: str) -> str:
    done = daemon.cli("submit", str(path), *args)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[0]


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of an exposition, by (sample name, labels)."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    assert key in found, f"no sample {name}{labels}; samples of that name: " \
                         f"{[dict(k[1]) for k in found if k[0] == name]}"
    return found[key]


def scrape_cli(daemon: DaemonProcess) -> str:
    done = daemon.admin("status", "--metrics")
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_metrics_of_a_daemon_that_ran_agent_and_function_steps(daemon: DaemonProcess, tmp_path: Path) -> None:
    """Given a daemon running the research example (test model), an agent step on local:llama3 and the chores
    pipeline, when its metrics are scraped while `hold` waits and again once every run has ended, then every
    series is there with the values those runs imply."""
    chores = write_pipeline(tmp_path, "chores.py", CHORES)
    research_id = submit(daemon, RESEARCH, "--param", "company=Acme")
    find_id = submit(daemon, write_pipeline(tmp_path, "find.py", FIND))
    chores_id = submit(daemon, chores)

    # When: scraped mid-run, while `hold` is parked on its mailbox (it has sent to `outbox` by then)
    with daemon.client() as client:
        wait_until(lambda: client.status(chores_id).steps["hold"].status == "running"
                   and client.mailboxes("outbox"), 30, what="hold to run and fill the outbox")
        during = samples(client.metrics())
    assert value(during, "tagentd_steps", status="running") >= 1
    assert value(during, "tagentd_attempts_in_flight") >= 1
    assert value(during, "tagentd_workers", state="busy") >= 1
    assert value(during, "tagentd_runs", status="running") >= 1

    # When: every run has ended
    with daemon.client() as client:
        client.send("chores", "go")
        results = {run_id: client.wait(run_id, timeout=90) for run_id in (research_id, find_id, chores_id)}
        from_client = client.metrics()
    assert results[research_id].success and results[find_id].success
    assert not results[chores_id].success
    from_cli = scrape_cli(daemon)
    for text in (from_client, from_cli):  # both ways give the same series
        assert {f.name for f in text_string_to_metric_families(text)} \
            == {f.name for f in text_string_to_metric_families(from_client)}
    found = samples(from_cli)

    # Then: runs and steps by state
    assert value(found, "tagentd_runs", status="completed") == 2
    assert value(found, "tagentd_runs", status="failed") == 1
    assert value(found, "tagentd_runs", status="running") == 0
    completed_steps = 5 + 1 + 2  # research: 5; find: 1; chores: burn, hold
    assert value(found, "tagentd_steps", status="completed") == completed_steps
    assert value(found, "tagentd_steps", status="failed") == 1
    assert value(found, "tagentd_steps", status="skipped") == 1

    # Then: attempts, durations, CPU and memory per pipeline/step
    assert value(found, "tagentd_step_attempts_total", pipeline="chores", step="flaky", outcome="failed") == 3
    assert value(found, "tagentd_step_duration_seconds_count", pipeline="chores", step="flaky") == 3
    assert value(found, "tagentd_step_duration_seconds_count", pipeline="chores", step="burn") == 1
    assert value(found, "tagentd_step_duration_seconds_sum", pipeline="chores", step="burn") >= 0.3
    assert value(found, "tagentd_step_duration_seconds_bucket", pipeline="chores", step="burn", le="+Inf") == 1
    for step in ("web_search", "reputation", "social", "score", "final_report"):
        assert value(found, "tagentd_step_duration_seconds_count", pipeline="company_research", step=step) == 1
        assert value(found, "tagentd_step_attempts_total", pipeline="company_research", step=step,
                     outcome="succeeded") == 1
    assert value(found, "tagentd_step_cpu_seconds_total", pipeline="chores", step="burn") >= 0.3
    assert value(found, "tagentd_step_cpu_seconds_total", pipeline="chores", step="hold") < 0.3  # parked, not burning
    assert value(found, "tagentd_step_peak_rss_bytes", pipeline="chores", step="burn") >= 64 * MiB
    assert 0 < value(found, "tagentd_step_peak_rss_bytes", pipeline="chores", step="flaky") < 64 * MiB + 512 * MiB

    # Then: LLM requests, tokens and cost per model
    assert value(found, "tagentd_llm_requests_total", model="test") >= 4
    assert value(found, "tagentd_llm_tokens_total", model="test", direction="input") > 0
    assert value(found, "tagentd_llm_tokens_total", model="test", direction="output") > 0
    assert value(found, "tagentd_llm_cost_dollars_total", model="test") == 0
    assert value(found, "tagentd_llm_requests_total", model="local:llama3") == 1
    assert value(found, "tagentd_llm_tokens_total", model="local:llama3", direction="input") > 0
    assert value(found, "tagentd_llm_cost_dollars_total", model="local:llama3") > 0

    # Then: the queue, the workers, the permits, the breakers
    assert value(found, "tagentd_queue_depth") == 0
    assert value(found, "tagentd_attempts_in_flight") == 0
    assert value(found, "tagentd_workers", state="busy") + value(found, "tagentd_workers", state="idle") == 2
    assert value(found, "tagentd_worker_slots", state="busy") == 0
    assert value(found, "tagentd_worker_slots", state="free") > 0
    assert value(found, "tagentd_llm_permits_waiting", endpoint="local") == 0
    assert value(found, "tagentd_llm_permits_held", endpoint="local") == 0
    assert value(found, "tagentd_llm_permits_granted_total") >= 1
    assert value(found, "tagentd_breaker_state", breaker="payments", state="closed") == 1
    assert value(found, "tagentd_breaker_state", breaker="payments", state="open") == 0
    assert value(found, "tagentd_breaker_opened_total", breaker="payments") == 0
    assert value(found, "tagentd_breaker_asks_total", breaker="payments") == 1  # its one call, on a lease it granted
    assert value(found, "tagentd_breaker_leases_total", breaker="payments") == 1

    # Then: the broker
    assert value(found, "tagentd_broker_messages_sent_total") == 2  # hold's parcel and the test's "go"
    assert value(found, "tagentd_broker_messages_delivered_total") == 1
    assert value(found, "tagentd_broker_messages_acked_total") == 1
    assert value(found, "tagentd_broker_messages_dead_total") == 0
    assert value(found, "tagentd_broker_mailbox_messages", mailbox="outbox") == 1
    assert value(found, "tagentd_broker_mailbox_dead_letters", mailbox="outbox") == 0
    assert value(found, "tagentd_broker_mailbox_leased", mailbox="outbox") == 0
    assert value(found, "tagentd_broker_topic_events_published_total", topic="run.finished") == 3
    assert value(found, "tagentd_broker_events_published_total") > 3

    # Then: the commit and the WAL fsyncs; the daemon process itself
    assert value(found, "tagentd_commit_duration_seconds_count") > 0
    assert value(found, "tagentd_wal_fsync_duration_seconds_count", log="runs") > 0
    assert value(found, "tagentd_wal_fsync_duration_seconds_count", log="broker") > 0
    assert value(found, "tagentd_wal_fsync_duration_seconds_sum", log="runs") > 0
    assert value(found, "process_resident_memory_bytes") > 0
    assert value(found, "process_cpu_seconds_total") > 0


def test_status_metrics_without_a_daemon_says_it_is_not_running(make_daemon: Callable[..., DaemonProcess]) -> None:
    """Given no daemon, when `tagentd status --metrics` runs, then it says so in one line and exits 3."""
    daemon = make_daemon()
    done = daemon.admin("status", "--metrics")
    assert done.returncode == 3
    assert "tagentd is not running" in done.stdout and done.stdout.count("\n") == 1


TALLY_SCRIPT = """
import sys
from tagent_client.core.events import StepFailed, StepSucceeded
from tagent_client.core.state import ErrorInfo
from tagentd.metrics.instruments import Metrics

metrics = Metrics(process=False)
for seconds in (0.003, 0.02, 0.02, 7.0):
    metrics.attempt_ended("p", "s", StepSucceeded(task="s", attempt=1), 99.0, (seconds, 0.25, 1000 + int(seconds)))
metrics.attempt_ended("p", "s", StepFailed(task="s", attempt=2, error=ErrorInfo(type="E", message="m")), 0.2, None)
print("prometheus_client" in sys.modules)
print(metrics.exposition())
"""


def test_finished_attempts_are_tallied_without_prometheus_client_and_scraped_as_the_step_series() -> None:
    """Given a Metrics fed five finished attempts of one step (four with the worker's resources, one without),
    when nothing has scraped yet, then prometheus-client was not even imported (the hot path adds to plain
    tallies, a microsecond, not a labelled child's lock and bucket walk); and when scraped, the step's series
    say exactly what was fed."""
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    env = {"PYTHONPATH": f"{REPO / 'client'}:{REPO}", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", TALLY_SCRIPT], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    imported, _, text = done.stdout.partition("\n")
    assert imported == "False"
    found = samples(text)
    step = {"pipeline": "p", "step": "s"}
    assert value(found, "tagentd_step_attempts_total", outcome="succeeded", **step) == 4
    assert value(found, "tagentd_step_attempts_total", outcome="failed", **step) == 1
    assert value(found, "tagentd_step_attempts_total", outcome="timed_out", **step) == 0
    assert value(found, "tagentd_step_duration_seconds_count", **step) == 5
    assert value(found, "tagentd_step_duration_seconds_sum", **step) == pytest.approx(0.003 + 0.02 + 0.02 + 7.0 + 0.2)
    expected = {"0.005": 1, "0.01": 1, "0.025": 3, "0.25": 4, "5.0": 4, "10.0": 5, "+Inf": 5}
    for le, count in expected.items():
        assert value(found, "tagentd_step_duration_seconds_bucket", le=le, **step) == count, le
    assert value(found, "tagentd_step_cpu_seconds_total", **step) == 1.0
    assert value(found, "tagentd_step_peak_rss_bytes", **step) == 1007


MODEL_TALLY_SCRIPT = """
import sys
from tagent_client.core.events import StepFailed, StepSucceeded
from tagent_client.core.state import ErrorInfo, Usage
from tagentd.metrics.instruments import Metrics

metrics = Metrics(process=False)
used = Usage(input_tokens=100, output_tokens=20, requests=1, cost=0.25)
for attempt in (1, 2):
    metrics.attempt_ended("p", "s", StepSucceeded(task="s", attempt=attempt, usage=used,
                          transcript={"model": "local:llama3", "messages": []}), 0.01, None)
failed = StepFailed(task="s", attempt=3, error=ErrorInfo(type="E", message="m"),
                    usage=Usage(input_tokens=7, output_tokens=0, requests=2, cost=0.0))
metrics.attempt_ended("p", "s", failed, 0.01, None)
print("prometheus_client" in sys.modules)
print(metrics.exposition())
"""


def test_agent_attempts_usage_is_tallied_without_prometheus_client_and_scraped_by_model() -> None:
    """Given a Metrics fed three finished agent attempts (two on local:llama3, one failed without a transcript),
    when nothing has scraped yet, then prometheus-client was not even imported: an agent step's usage is
    counted in plain tallies on the step's critical path (the daemon handles the result before it dispatches
    the next step), not through labelled counters; and when scraped, the model series say what was fed."""
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    env = {"PYTHONPATH": f"{REPO / 'client'}:{REPO}", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", MODEL_TALLY_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    imported, _, text = done.stdout.partition("\n")
    assert imported == "False"
    found = samples(text)
    assert value(found, "tagentd_llm_requests_total", model="local:llama3") == 2
    assert value(found, "tagentd_llm_tokens_total", model="local:llama3", direction="input") == 200
    assert value(found, "tagentd_llm_tokens_total", model="local:llama3", direction="output") == 40
    assert value(found, "tagentd_llm_cost_dollars_total", model="local:llama3") == 0.5
    assert value(found, "tagentd_llm_requests_total", model="unknown") == 2
    assert value(found, "tagentd_llm_tokens_total", model="unknown", direction="input") == 7
    assert value(found, "tagentd_llm_cost_dollars_total", model="unknown") == 0
