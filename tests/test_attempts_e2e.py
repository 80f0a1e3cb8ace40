"""One attempt number everywhere: `ctx.attempt`, `tagent status` and the run's history agree.

Across `tagent retry` of a failed step, `tagent resume` of a cancelled (interrupted)
run, and kill -9 recovery, with real daemons and workers. Each attempt of step `b`
appends its `ctx.attempt` to an effects file, so the number the step itself saw is
observed from outside the daemon.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import DaemonProcess, wait_until, write_pipeline

pytestmark = pytest.mark.timeout(120)

PIPELINE = """
    import asyncio
    import os
    from pathlib import Path

    from tagent_client import Pipeline

    pipeline = Pipeline("numbered")

    def note(ctx, line):
        fd = os.open(ctx.params["effects"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, f"{line}\\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    @pipeline.task(final=True, max_retries=0)
    async def b(ctx):
        note(ctx, f"started {ctx.attempt}")
        message = await ctx.receive(timeout=0)
        if Path(ctx.params["fail"]).exists():
            raise ValueError(f"told to fail (attempt {ctx.attempt})")
        while Path(ctx.params["hold"]).exists():
            await asyncio.sleep(0.02)  # ok-sleep: the step's own work, held open by the test
        return {"attempt": ctx.attempt, "message": message.payload if message else None}
"""


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    return {"pipeline": write_pipeline(tmp_path, "numbered.py", PIPELINE), "effects": tmp_path / "effects.txt",
            "fail": tmp_path / "fail.flag", "hold": tmp_path / "hold.flag"}


def params(files: dict[str, Path]) -> dict[str, str]:
    return {k: str(files[k]) for k in ("effects", "fail", "hold")}


def seen_attempts(files: dict[str, Path]) -> list[int]:
    """The `ctx.attempt` of every attempt of `b` that started, as the step saw it."""
    text = files["effects"].read_text() if files["effects"].exists() else ""
    return [int(line.split()[1]) for line in text.splitlines()]


def numbers_shown(client: Any, run_id: str) -> tuple[int, list[int], list[int]]:
    """(status attempts of b, attempts of its step.started events, attempts of its step.completed events)."""
    history = client.history(run_id)
    started = [e["data"]["attempt"] for e in history if e["what"] == "step.started"]
    completed = [e["data"]["attempts"] for e in history if e["what"] == "step.completed"]
    return client.status(run_id).steps["b"].attempts, started, completed


def test_a_retried_step_sees_the_attempt_number_status_and_history_show(
        daemon: DaemonProcess, files: dict[str, Path]) -> None:
    # Given a run whose only step failed on attempt 1 (holding a message, released by the failure)
    files["fail"].touch()
    with daemon.client() as client:
        client.send("numbered", {"n": 1})
        run = client.submit(files["pipeline"], params(files))
        assert client.wait(run.id, timeout=30).status == "failed"
        assert numbers_shown(client, run.id) == (1, [1], [])
        # When the step is retried with `tagent retry` and succeeds
        files["fail"].unlink()
        retried = daemon.cli("retry", run.id, "--step", "b")
        assert retried.returncode == 0, retried.stderr
        result = client.wait(run.id, timeout=30)
        # Then the step saw attempt 2, which is what status and history say
        assert result.status == "completed", result.error
        assert result.final_output["attempt"] == 2
        assert seen_attempts(files) == [1, 2]
        assert numbers_shown(client, run.id) == (2, [1, 2], [2])
        # And the retried attempt could lease the message the failed attempt gave back
        assert result.final_output["message"] == {"n": 1}


def test_a_resumed_interrupted_run_counts_on_from_its_last_attempt(
        daemon: DaemonProcess, files: dict[str, Path]) -> None:
    # Given a run cancelled while its step was running attempt 1
    files["hold"].touch()
    with daemon.client() as client:
        run = client.submit(files["pipeline"], params(files))
        wait_until(lambda: seen_attempts(files) == [1], 15, what="b to start")
        client.cancel(run.id, "interrupted by the test")
        assert client.wait(run.id, timeout=30).status == "cancelled"
        # When the run is resumed with `tagent resume` and the step may finish
        files["hold"].unlink()
        resumed = daemon.cli("resume", run.id)
        assert resumed.returncode == 0, resumed.stderr
        result = client.wait(run.id, timeout=30)
        # Then the step saw attempt 2, as status and history say
        assert result.status == "completed", result.error
        assert result.final_output["attempt"] == 2
        assert seen_attempts(files) == [1, 2]
        assert numbers_shown(client, run.id) == (2, [1, 2], [2])


def test_a_retried_step_cut_by_kill_9_goes_on_with_the_next_number(
        make_daemon: Callable[..., DaemonProcess], files: dict[str, Path]) -> None:
    # Given a failed step retried (attempt 2) and running when everything is killed -9
    daemon = make_daemon().start()
    files["fail"].touch()
    with daemon.client() as client:
        run = client.submit(files["pipeline"], params(files))
        assert client.wait(run.id, timeout=30).status == "failed"
        files["fail"].unlink()
        files["hold"].touch()
        client.retry(run.id, "b")
        wait_until(lambda: seen_attempts(files) == [1, 2], 15, what="the retried b to start")
    daemon.kill9()
    # When the daemon is started again (recovery re-runs the cut attempt) and the step may finish
    files["hold"].unlink()
    again = make_daemon(root=daemon.root).start()
    with again.client() as client:
        result = client.wait(run.id, timeout=30)
        # Then the step saw attempt 3, and status and history say 3
        assert result.status == "completed", result.error
        assert result.final_output["attempt"] == 3
        assert seen_attempts(files) == [1, 2, 3]
        status, started, completed = numbers_shown(client, run.id)
        assert (status, started[-1], completed) == (3, 3, [3])
