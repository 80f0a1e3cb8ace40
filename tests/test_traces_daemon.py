"""Traces through a real daemon and its workers, exported over OTLP/HTTP to a real receiver on 127.0.0.1.

The daemon makes each run's span, the workers each step attempt's span (a child across processes, by the
task's W3C traceparent) and pydantic-ai the LLM call spans under it; `tagent status RUN --json` names the
trace. With no `otlp_endpoint`, neither the daemon nor its workers import the OpenTelemetry SDK.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import DaemonProcess, wait_until, write_pipeline
from otlp_receiver import OtlpReceiver, ReceivedSpan

from tagent_client.client.sync import Client

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("no_process_left_behind")]

TRACED = """
    from tagent_client import Pipeline, StepContext

    pipeline = Pipeline("traced", model="test")
    pipeline.step("summarise", goal="Summarise the news")


    @pipeline.task(depends_on=["summarise"], max_retries=1, retry_delay=0.01)
    def publish(ctx: StepContext) -> None:
        raise ConnectionError(f"attempt {ctx.attempt}: the site is down")
"""

WAITS = """
    import os
    import time
    from tagent_client import Pipeline

    pipeline = Pipeline("waits")


    @pipeline.task()
    def hold() -> str:
        while not os.path.exists(os.environ["TRACES_GO"]):
            time.sleep(0.02)  # ok-sleep: the step's own work is waiting for the test to let it finish
        return "done"
"""

MODULES = """
    import sys
    from tagent_client import Pipeline

    pipeline = Pipeline("modules")


    @pipeline.task()
    def loaded() -> list[str]:
        return sorted(m for m in sys.modules if m.startswith("opentelemetry") or m.startswith("google.protobuf"))
"""



@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as r:
        yield r


@pytest.fixture
def traced_daemon(make_daemon: Callable[..., DaemonProcess], receiver: OtlpReceiver,
                  tmp_path: Path) -> DaemonProcess:
    """A daemon (2 workers forked from the worker template, as users run it) whose otlp_endpoint is the
    receiver; spans leave in batches every 50 ms."""
    daemon = make_daemon(workers=2, template=True)
    daemon.env.update(TAGENTD_OTLP_ENDPOINT=receiver.endpoint, OTEL_BSP_SCHEDULE_DELAY="50",
                      TAGENTD_TRACE_URL="http://127.0.0.1:16686/trace/{trace_id}", TRACES_GO=str(tmp_path / "go"))
    return daemon


def status_json(daemon: DaemonProcess, run_id: str) -> dict:
    done = daemon.cli("status", run_id, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def parent(receiver: OtlpReceiver, span: ReceivedSpan) -> ReceivedSpan:
    found = receiver.by_id(span.parent_id)
    assert found is not None, f"the parent {span.parent_id} of span {span.name!r} was not received"
    return found


def test_run_step_and_llm_spans_cross_processes_into_one_trace(traced_daemon: DaemonProcess,
                                                               receiver: OtlpReceiver, tmp_path: Path) -> None:
    # Given a daemon exporting traces, and a pipeline with an agent step and a step that fails twice
    daemon = traced_daemon.start()
    path = write_pipeline(tmp_path, "traced.py", TRACED)

    # When a run of it ends
    with Client(daemon.runtime_dir) as client:
        run_id = client.submit(str(path)).id
        client.wait(run_id, timeout=60)

    # Then the daemon's run span, the workers' step spans under it and pydantic-ai's LLM call span under the
    # agent step's span arrive, all in the trace `tagent status RUN --json` names
    wait_until(lambda: receiver.named("run traced") and len(receiver.named("step publish")) == 2
               and [s for s in receiver.spans if s.name.startswith("chat ")], 20, what="the run's spans")
    shown = status_json(daemon, run_id)
    (run,) = receiver.named("run traced")
    assert shown["trace_id"] == run.trace_id
    assert shown["trace_url"] == f"http://127.0.0.1:16686/trace/{run.trace_id}"
    assert run.service == "tagentd" and run.parent_id == ""
    assert run.attributes["tagentd.run.id"] == run_id
    assert run.attributes["tagentd.outcome"] == "failed" and run.error

    (summarise,) = receiver.named("step summarise")
    assert summarise.service == "tagentd-worker"
    assert summarise.parent_id == run.span_id
    assert summarise.attributes["tagentd.outcome"] == "succeeded"
    assert summarise.attributes["tagentd.usage.input_tokens"] > 0
    (chat,) = [s for s in receiver.spans if s.name.startswith("chat ")]
    ancestor = parent(receiver, chat)
    while ancestor.span_id != summarise.span_id:
        ancestor = parent(receiver, ancestor)
    assert chat.attributes["gen_ai.request.model"] == "test"

    publish = sorted(receiver.named("step publish"), key=lambda s: s.attributes["tagentd.attempt"])
    assert [s.attributes["tagentd.attempt"] for s in publish] == [1, 2]
    for attempt in publish:
        assert attempt.parent_id == run.span_id
        assert attempt.error and "the site is down" in attempt.status_message
    assert {s.trace_id for s in receiver.spans} == {run.trace_id}

    # And the run's history keeps the trace, and the status text shows where to open it
    history = daemon.cli("history", run_id, "--json")
    assert history.returncode == 0, history.stderr
    assert run.trace_id in history.stdout and run.span_id in history.stdout
    assert f"trace: http://127.0.0.1:16686/trace/{run.trace_id}" in daemon.cli("status", run_id).stdout


def test_a_run_keeps_its_trace_across_a_kill_9_and_restart(traced_daemon: DaemonProcess,
                                                          receiver: OtlpReceiver, tmp_path: Path) -> None:
    # Given a run whose step is running when the daemon and its workers are killed with -9
    daemon = traced_daemon.start()
    path = write_pipeline(tmp_path, "waits.py", WAITS)
    with Client(daemon.runtime_dir) as client:
        run_id = client.submit(str(path)).id
        wait_until(lambda: client.status(run_id).steps["hold"].status == "running", 20, what="the step to run")
    first_trace = status_json(daemon, run_id)["trace_id"]
    daemon.kill9()

    # When the daemon starts again and the run finishes
    daemon.start()
    (tmp_path / "go").touch()
    with Client(daemon.runtime_dir) as client:
        assert client.wait(run_id, timeout=60).status == "completed"

    # Then the second life's run span is in the same trace, a child of the first life's span (lost with the
    # kill), and the step's span of the second life hangs under it
    wait_until(lambda: receiver.named("run waits") and any(
        s.attributes["tagentd.outcome"] == "succeeded" for s in receiver.named("step hold")), 20, what="the spans")
    assert status_json(daemon, run_id)["trace_id"] == first_trace
    (run,) = receiver.named("run waits")
    assert run.trace_id == first_trace and run.attributes["tagentd.run.why"] == "recovered"
    entries = [e for e in json.loads(daemon.cli("history", run_id, "--json").stdout) if e["what"] == "trace"]
    assert [e["data"]["why"] for e in entries] == ["started", "recovered"]
    assert run.parent_id == entries[0]["data"]["span_id"] and run.span_id == entries[1]["data"]["span_id"]
    (hold,) = [s for s in receiver.named("step hold") if s.attributes["tagentd.outcome"] == "succeeded"]
    assert hold.parent_id == run.span_id and hold.trace_id == first_trace


def test_without_an_endpoint_no_process_imports_the_sdk(make_daemon: Callable[..., DaemonProcess],
                                                       tmp_path: Path) -> None:
    # Given a daemon without otlp_endpoint whose Python reports every module it imports (-X importtime)
    daemon = make_daemon(workers=1)
    daemon.env.update(PYTHONPROFILEIMPORTTIME="1")
    daemon.stderr_path = tmp_path / "daemon.stderr"
    daemon.start()
    path = write_pipeline(tmp_path, "modules.py", MODULES)

    # When a run's step reports the OpenTelemetry modules its worker has loaded
    with Client(daemon.runtime_dir) as client:
        run_id = client.submit(str(path)).id
        result = client.wait(run_id, timeout=60)
    shown = status_json(daemon, run_id)
    history = daemon.cli("history", run_id, "--json").stdout
    daemon.stop()

    # Then the worker has none, the daemon imported none (nor did the worker: its imports are in the log),
    # and the run has no trace id
    assert result.status == "completed"
    assert result.step_outputs["loaded"] == []
    imports = daemon.stderr_path.read_text() + (daemon.state_dir / "tagentd.log").read_text()
    assert "tagentd.runs.driver" in imports and "tagentd.worker.process" in imports  # the reports are there
    assert "opentelemetry" not in imports and "google.protobuf" not in imports
    assert shown["trace_id"] is None and '"trace"' not in history


def test_an_endpoint_without_the_sdk_installed_refuses_to_start(make_daemon: Callable[..., DaemonProcess],
                                                                 receiver: OtlpReceiver, tmp_path: Path) -> None:
    # Given otlp_endpoint, and a Python where the OpenTelemetry SDK cannot be imported (a shadowing package)
    shadow = tmp_path / "shadow" / "opentelemetry" / "sdk"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named opentelemetry.sdk')\n")
    daemon = make_daemon(workers=1)
    daemon.env.update(TAGENTD_OTLP_ENDPOINT=receiver.endpoint,
                      PYTHONPATH=os.pathsep.join([str(tmp_path / "shadow"), daemon.env["PYTHONPATH"]]))
    # When it starts / Then it refuses, saying what to install
    refused = daemon.start_refused()
    assert "otlp_endpoint is set" in refused.stderr and "pip install 'tagentd[otel]'" in refused.stderr
