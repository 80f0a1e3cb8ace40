"""`tagent why RUN` (the root failures of a run) and `tagent status RUN --errors`.

The analysis itself (cli/failures.py) is pure: its rules are tested on hand-built run states; the command is
tested end to end on a real daemon.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from conftest import DaemonProcess, write_pipeline

from tagent_client import Client
from tagent_client.cli.failures import diagnose, render
from tagent_client.cli.main import cli
from tagent_client.errors import exit_code_for
from tagent_client.wire.protocol import EventRecord, RunDetail, StepInfo

pytestmark = pytest.mark.timeout(90)


def tagent(daemon: DaemonProcess, *args: str) -> Result:
    return CliRunner().invoke(cli, list(args), env={"TAGENTD_RUNTIME_DIR": str(daemon.runtime_dir)})


def finished(daemon: DaemonProcess, path: Path) -> str:
    """Run the pipeline in `path` to its end; its run id."""
    with Client(daemon.runtime_dir) as client:
        handle = client.submit(str(path))
        client.wait(handle.id, timeout=60)
        return handle.id


# -- the rules, on hand-built run states ----------------------------------------------------------------


def run(status: str, **steps: StepInfo) -> RunDetail:
    return RunDetail(run_id="r1", pipeline="p", status=status, created_at=0.0, steps=steps)


def test_skipped_and_dependency_failed_steps_lead_back_to_their_root_transitively() -> None:
    # Given a root failure, a dependent skipped because of it, one skipped because of that, and one failed
    # with a DependencyError naming the root
    detail = run("failed",
                 fetch=StepInfo(status="failed", attempts=3, error="ValueError: bad page", finished_at=5.0,
                                traceback="Traceback (most recent call last):\nValueError: bad page\n"),
                 parse=StepInfo(status="skipped", attempts=0, skip_reason="upstream step 'fetch' failed"),
                 store=StepInfo(status="skipped", attempts=0, skip_reason="upstream step 'parse' skipped"),
                 check=StepInfo(status="failed", attempts=0, error="DependencyError: upstream step 'fetch' failed"),
                 other=StepInfo(status="completed", attempts=1))
    events = [EventRecord(seq=1, ts=1.0, topic="step.retrying",
                          data={"step": "fetch", "attempt": 1, "error": "ValueError: a", "retry_at": 1.5}),
              EventRecord(seq=2, ts=5.0, topic="step.failed",
                          data={"step": "fetch", "attempt": 2, "error": "ValueError: bad page"})]
    # When diagnosed
    diagnosis = diagnose(detail, events)
    # Then one root, its attempts with their delays, and every step it took down
    [root] = diagnosis.failures
    assert (root.step, root.error_type, root.message) == ("fetch", "ValueError", "bad page")
    assert [(a.number, a.error, a.retry_in_s) for a in root.attempts] == [(1, "ValueError: a", 0.5),
                                                                          (2, "ValueError: bad page", None)]
    assert root.affected == ["parse", "store", "check"]
    assert root.next == "fix the cause, then `tagent retry r1 --step fetch`"


def test_root_failures_are_ordered_by_when_they_failed_and_hints_fit_the_error() -> None:
    # Given two independent failures, the later one listed first, a timeout and a lost worker
    detail = run("failed",
                 late=StepInfo(status="failed", attempts=1, error="StepTimeoutError: ran 5s", finished_at=9.0),
                 early=StepInfo(status="failed", attempts=1, error="WorkerLostError: gone", finished_at=2.0))
    # When diagnosed
    failures = diagnose(detail).failures
    # Then first failed first, with a hint for each kind of error
    assert [f.step for f in failures] == ["early", "late"]
    assert "the worker died: see the `tagentd` log" in failures[0].next
    assert "timeout=" in failures[1].next


def test_a_fail_fast_cancellation_and_a_failed_compensation_are_attributed() -> None:
    # Given a fail_fast run that cancelled a sibling, and a compensation that failed
    detail = run("rollback_failed",
                 a=StepInfo(status="failed", attempts=1, error="KeyError: 'x'", finished_at=1.0),
                 b=StepInfo(status="cancelled", attempts=1, skip_reason="fail_fast: step 'a' failed: KeyError: 'x'"),
                 c=StepInfo(status="completed", attempts=1, compensation="failed", finished_at=0.5))
    # When diagnosed
    failures = diagnose(detail).failures
    # Then the cancellation is under the step that triggered it, and the compensation is reported too
    assert [(f.step, f.affected) for f in failures] == [("c", []), ("a", ["b"])]
    assert failures[0].error_type == "CompensationFailed"


def test_a_completed_run_has_no_root_failure_and_says_so() -> None:
    diagnosis = diagnose(run("completed", a=StepInfo(status="completed", attempts=1)))
    assert diagnosis.failures == []
    assert render(diagnosis) == "run r1: completed: nothing failed"


def test_render_keeps_the_last_frames_unless_asked_for_all() -> None:
    # Given a failure with a long traceback
    trace = "\n".join(f"frame {n}" for n in range(30))
    detail = run("failed", a=StepInfo(status="failed", attempts=1, error="E: m", finished_at=1.0, traceback=trace))
    # When rendered short and full / Then short has only the last frames, full has all
    short, full = render(diagnose(detail)), render(diagnose(detail), full=True)
    assert "frame 29" in short and "frame 0\n" not in short and "..." in short
    assert "frame 0\n" in full and "frame 29" in full


# -- end to end, on a real daemon ------------------------------------------------------------------------

RETRIED = """
    from tagent_client import Pipeline
    from tagent_client.errors import RetryableError

    pipeline = Pipeline("why_retried")

    def load_page():
        raise RetryableError("page 3 is gone")

    @pipeline.task(max_retries=2, retry_delay=0.01, retry_jitter=0.0)
    def fetch():
        load_page()

    @pipeline.task(depends_on=["fetch"])
    def parse(fetch):
        return fetch

    @pipeline.task(depends_on=["parse"])
    def store(parse):
        return parse
"""

TWO_FAILURES = """
    import time
    from tagent_client import Pipeline

    pipeline = Pipeline("why_two")

    @pipeline.task(max_retries=0)
    def first():
        raise KeyError("first")

    @pipeline.task(max_retries=0)
    def second():
        time.sleep(0.3)  # ok-sleep: the step's own work, so it fails after `first`
        raise KeyError("second")
"""

FAIL_FAST = """
    import time
    from tagent_client import Pipeline

    pipeline = Pipeline("why_fast", fail_fast=True)

    @pipeline.task(max_retries=0)
    def broken():
        raise RuntimeError("no disk")

    @pipeline.task()
    def slow():
        time.sleep(30)  # ok-sleep: the step's own work, cut short by fail_fast
"""

DONE = """
    from tagent_client import Pipeline

    pipeline = Pipeline("why_done")

    @pipeline.task()
    def ok():
        return 1
"""


def test_why_names_the_root_failure_with_its_attempts_traceback_dependents_and_retry(
        daemon: DaemonProcess, tmp_path: Path) -> None:
    # Given a run whose step failed after 2 retries, and its two dependents skipped
    run_id = finished(daemon, write_pipeline(tmp_path, "retried.py", RETRIED))
    # When asked why
    shown = tagent(daemon, "why", run_id)
    as_json = tagent(daemon, "why", run_id, "--json")
    # Then the failed step first, its 3 attempts, its traceback, the skipped dependents, the retry command
    assert shown.exit_code == exit_code_for("run_failed"), shown.output
    text = shown.stdout
    assert "1. step fetch: RetryableError: page 3 is gone" in text
    assert all(f"attempt {n}: RetryableError: page 3 is gone" in text for n in (1, 2, 3))
    assert "in load_page" in text and "because of it: parse, store" in text
    assert f"tagent retry {run_id} --step fetch" in text
    [root] = json.loads(as_json.stdout)["failures"]
    assert root["step"] == "fetch" and len(root["attempts"]) == 3 and root["affected"] == ["parse", "store"]
    assert root["attempts"][0]["retry_in_s"] is not None and root["attempts"][2]["retry_in_s"] is None


def test_why_orders_two_independent_failures_by_time(daemon: DaemonProcess, tmp_path: Path) -> None:
    # Given a run where two independent steps failed, `first` before `second`
    run_id = finished(daemon, write_pipeline(tmp_path, "two.py", TWO_FAILURES))
    # When asked why (--json)
    shown = tagent(daemon, "why", run_id, "--json")
    # Then both, first first
    assert [f["step"] for f in json.loads(shown.stdout)["failures"]] == ["first", "second"]


def test_why_attributes_a_fail_fast_cancellation(daemon: DaemonProcess, tmp_path: Path) -> None:
    # Given a fail_fast run whose failure cancelled a running sibling
    run_id = finished(daemon, write_pipeline(tmp_path, "fast.py", FAIL_FAST))
    # When asked why
    [root] = json.loads(tagent(daemon, "why", run_id, "--json").stdout)["failures"]
    # Then the cancelled step is listed under the step that failed
    assert (root["step"], root["error_type"], root["affected"]) == ("broken", "RuntimeError", ["slow"])


def test_why_of_a_completed_run_says_so_and_exits_0(daemon: DaemonProcess, tmp_path: Path) -> None:
    # Given a completed run / When asked why / Then it says nothing failed, exit 0
    run_id = finished(daemon, write_pipeline(tmp_path, "done.py", DONE))
    shown = tagent(daemon, "why", run_id)
    assert shown.exit_code == 0 and shown.stdout.strip() == f"run {run_id}: completed: nothing failed"


def test_status_errors_prints_the_traceback(daemon: DaemonProcess, tmp_path: Path) -> None:
    # Given a failed run
    run_id = finished(daemon, write_pipeline(tmp_path, "retried.py", RETRIED))
    # When its status is shown with --errors / Then each failed step's error and whole traceback follow
    shown = tagent(daemon, "status", run_id, "--errors")
    assert shown.exit_code == 0, shown.output
    assert "step fetch: RetryableError: page 3 is gone" in shown.stdout
    assert "Traceback (most recent call last):" in shown.stdout and "in load_page" in shown.stdout
