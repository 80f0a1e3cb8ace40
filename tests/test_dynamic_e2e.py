"""Steps that add steps, and compensation, through a real daemon, with kill -9 (docs/semantics.md).

Each step leaves a durable trace outside the daemon (a line "step note" appended and fsynced to an
effects file named in the run's params), so counting lines tells how often it really ran. Steps
that must still be running when the daemon is killed wait for a gate file the test creates after
the restart.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import DaemonProcess, wait_until, write_pipeline

pytestmark = pytest.mark.timeout(120)

PREAMBLE = '''
import asyncio
import os

from tagent_client import Pipeline


def record(ctx, note):
    fd = os.open(ctx.params["effects"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{note}\\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)


async def gated(ctx):
    while not os.path.exists(ctx.params["gate"]):
        await asyncio.sleep(0.05)  # ok-sleep: the step's own work is waiting for the test's gate
'''

DYNAMIC = PREAMBLE + '''

def each(ctx):
    record(ctx, "each")
    return ["acme", "globex"]


async def deep(ctx):
    await gated(ctx)
    record(ctx, ctx.step_name)
    return ctx.step_name


def summary(ctx, **inputs):
    record(ctx, "summary")
    return sorted(inputs)


def plan_next(ctx, each):
    record(ctx, "plan")
    for c in each:
        ctx.add_step(f"deep_{c}", fn=deep, depends_on=["each"])
    ctx.add_step("summary", fn=summary, depends_on=[f"deep_{c}" for c in each])
    return len(each)


pipeline = Pipeline("dynamic")
pipeline.step("each", fn=each)
pipeline.step("plan", fn=plan_next, depends_on=["each"])
'''

ROLLBACK = PREAMBLE + '''

def book(ctx):
    record(ctx, "book")
    return {"booking": 7}


async def cancel_booking(ctx, output):
    await gated(ctx)
    record(ctx, f"undo book {output['booking']}")


def pay(ctx):
    record(ctx, "pay")
    return 30


def refund(ctx, output):
    record(ctx, f"undo pay {output}")


def ship(ctx):
    raise ValueError("no ship today")


pipeline = Pipeline("trip")
pipeline.step("book", fn=book, compensate=cancel_booking)
pipeline.step("pay", fn=pay, depends_on=["book"], compensate=refund)
pipeline.step("ship", fn=ship, depends_on=["pay"])
'''


def effects_of(path: Path) -> collections.Counter[str]:
    return collections.Counter(path.read_text().splitlines()) if path.exists() else collections.Counter()


def test_added_steps_survive_a_kill9_right_after_the_adding_step_completes(
        make_daemon: Callable[..., DaemonProcess], tmp_path: Path) -> None:
    # Given a step that adds three steps, two of which wait for a gate
    effects, gate = tmp_path / "effects.log", tmp_path / "gate"
    path = write_pipeline(tmp_path, "dynamic.py", DYNAMIC)
    daemon = make_daemon().start()
    with daemon.client() as client:
        run_id = client.submit(path, {"effects": str(effects), "gate": str(gate)}).id
        # When the daemon reports the adding step completed (with its additions), it is killed at once
        detail = wait_until(lambda: (d := client.status(run_id)).steps.get("plan") and
                            d.steps["plan"].status == "completed" and d, what="plan to complete")
    daemon.kill9()
    assert set(detail.steps) == {"each", "plan", "deep_acme", "deep_globex", "summary"}
    # Then after a restart the added steps are still there, run once each, and the run completes
    daemon.start()
    gate.touch()
    with daemon.client(timeout=30) as client:
        result = client.wait(run_id, timeout=60)
        detail = client.status(run_id)
        history = client.history(run_id)
    assert result.status == "completed", daemon.log()
    assert result.step_outputs["summary"] == ["deep_acme", "deep_globex"]
    assert effects_of(effects) == {"each": 1, "plan": 1, "deep_acme": 1, "deep_globex": 1, "summary": 1}
    assert {n: s.added_by for n, s in detail.steps.items()} == {
        "each": None, "plan": None, "deep_acme": "plan", "deep_globex": "plan", "summary": "plan"}
    assert [e for e in history if e["what"] == "steps.added"][0]["data"]["added"] == ["deep_acme", "deep_globex", "summary"]
    status = daemon.cli("status", run_id)
    assert "(added by plan)" in status.stdout


def test_a_bad_addition_fails_the_adding_step_with_a_clear_error(daemon: DaemonProcess, tmp_path: Path) -> None:
    # Given a step that adds a step depending on a step the run does not have
    path = write_pipeline(tmp_path, "bad.py", PREAMBLE + '''

def deep(ctx):
    return 1


def plan_next(ctx):
    ctx.add_step("deep", fn=deep, depends_on=["nowhere"])
    ctx.add_step("lam", fn=lambda ctx: 1)


pipeline = Pipeline("bad")
pipeline.step("plan", fn=plan_next)
''')
    # When it runs
    with daemon.client() as client:
        run_id = client.submit(path, {}).id
        result = client.wait(run_id, timeout=30)
    # Then the call site's error fails the step, naming the lambda, and nothing was added
    assert result.status == "failed"
    assert result.step_metadata["plan"]["error_type"] == "DynamicStepError"
    assert "fn='<lambda>' is a lambda" in result.error_details["plan"]
    assert set(result.step_metadata) == {"plan"}
    # and a run without compensations cannot be rolled back: the CLI says so
    refused = daemon.cli("rollback", run_id)
    assert refused.returncode == 7
    assert "has no completed step with a compensation left to run; nothing to roll back" in refused.stderr


def test_a_kill9_during_a_rollback_resumes_it_without_rerunning_a_finished_compensation(
        make_daemon: Callable[..., DaemonProcess], tmp_path: Path) -> None:
    # Given a run whose third step fails after two steps with compensations completed
    effects, gate = tmp_path / "effects.log", tmp_path / "gate"
    path = write_pipeline(tmp_path, "trip.py", ROLLBACK)
    daemon = make_daemon().start()
    with daemon.client() as client:
        run_id = client.submit(path, {"effects": str(effects), "gate": str(gate)}).id
        # When the latest completion's compensation (pay's) is reported done and the next one (book's) runs,
        # the daemon is killed
        wait_until(lambda: (d := client.status(run_id)).status == "rolling_back"
                   and d.steps["pay"].compensation == "succeeded", what="pay's compensation to be recorded")
    daemon.kill9()
    assert effects_of(effects) == {"book": 1, "pay": 1, "undo pay 30": 1}
    # Then after a restart the rollback goes on with book's compensation only, and the run ends rolled back
    daemon.start()
    gate.touch()
    with daemon.client(timeout=30) as client:
        result = client.wait(run_id, timeout=60)
        history = [e["what"] for e in client.history(run_id)]
    assert result.status == "rolled_back", daemon.log()
    assert "ship (ValueError: no ship today)" in (result.error or "")
    assert result.compensations == {"book": "succeeded", "pay": "succeeded"}
    assert effects_of(effects) == {"book": 1, "pay": 1, "undo pay 30": 1, "undo book 7": 1}
    assert history.count("step.compensated") == 2 and "run.rolling_back" in history


def test_tagent_rollback_undoes_a_completed_run_and_a_failing_compensation_is_reported(
        daemon: DaemonProcess, tmp_path: Path) -> None:
    # Given a completed run of two steps with compensations, the later one's compensation failing
    effects = tmp_path / "effects.log"
    path = write_pipeline(tmp_path, "undo.py", PREAMBLE + '''

def book(ctx):
    return "b1"


def cancel(ctx, output):
    record(ctx, f"undo {output}")


def pay(ctx):
    return "p1"


def refund(ctx, output):
    raise ValueError(f"bank closed, cannot refund {output}")


pipeline = Pipeline("undo")
pipeline.step("book", fn=book, compensate=cancel)
pipeline.step("pay", fn=pay, depends_on=["book"], compensate=refund, compensate_retries=0)
''')
    with daemon.client() as client:
        run_id = client.submit(path, {"effects": str(effects)}).id
        assert client.wait(run_id, timeout=30).status == "completed"
    # When `tagent rollback RUN` is run
    out = daemon.cli("rollback", run_id)
    assert out.returncode == 0, out.stderr
    assert "compensating: pay, book" in out.stdout
    # Then every compensation ran, the failing one is reported with its reason, and the run is rollback_failed
    with daemon.client() as client:
        result = client.wait(run_id, timeout=30)
    assert result.status == "rollback_failed"
    assert result.compensations["book"] == "succeeded"
    assert result.compensations["pay"] == "failed: ValueError: bank closed, cannot refund p1"
    assert "rollback failed: compensation of pay" in (result.error or "")
    assert effects_of(effects) == {"undo b1": 1}
    # and rolling back again tries only the failed compensation: book's, which succeeded, does not run again
    again = daemon.cli("rollback", run_id)
    assert again.returncode == 0, again.stderr
    assert "compensating: pay " in again.stdout
    with daemon.client() as client:
        assert client.wait(run_id, timeout=30).status == "rollback_failed"
    assert effects_of(effects) == {"undo b1": 1}
