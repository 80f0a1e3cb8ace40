"""Graceful stop: nothing new starts while the daemon drains, it says what it waits for, and it can be cut short.

Real daemons and workers (conftest `make_daemon`), stopped with the real
`tagentd stop`. Every step appends "step attempt start|done" to an effects file
(O_APPEND + fsync) so how often each step really ran is counted outside the daemon.
Steps `a` and `c` hold until their "go" file exists; `d` is ready at once but waits
behind them (max_concurrent_steps=2); `b` depends on `a`.
"""

from __future__ import annotations

import collections
import datetime
import re
import signal
import subprocess
import sys
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

    from tagent_client import ExecutionMode, Pipeline

    pipeline = Pipeline("drain", max_concurrent_steps=2)
    CONCURRENT = ExecutionMode.CONCURRENT

    def note(ctx, what):
        fd = os.open(ctx.params["effects"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, f"{ctx.step_name} {ctx.attempt} {what}\\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    async def held(ctx):
        note(ctx, "start")
        while not Path(ctx.params["go_" + ctx.step_name]).exists():
            await asyncio.sleep(0.02)  # ok-sleep: the step's own work, held open by the test
        note(ctx, "done")
        return ctx.attempt

    async def quick(ctx):
        note(ctx, "start")
        note(ctx, "done")
        return ctx.attempt

    pipeline.step("a", fn=held, execution_mode=CONCURRENT)
    pipeline.step("c", fn=held, execution_mode=CONCURRENT)
    pipeline.step("d", fn=quick, execution_mode=CONCURRENT)
    pipeline.step("b", fn=quick, execution_mode=CONCURRENT, depends_on=["a"])
"""

WAITING = re.compile(r"^waiting for (\d) steps?: (.+); Ctrl-C or --fast to checkpoint and stop now$", re.MULTILINE)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    return {"pipeline": write_pipeline(tmp_path, "drain.py", PIPELINE), "effects": tmp_path / "effects.txt",
            "go_a": tmp_path / "go_a", "go_c": tmp_path / "go_c", "out": tmp_path / "stop.out"}


def submit(daemon: DaemonProcess, files: dict[str, Path]) -> str:
    """Start a run and wait until a and c are running (d and b are not)."""
    with daemon.client() as client:
        run = client.submit(files["pipeline"], {k: str(files[k]) for k in ("effects", "go_a", "go_c")})
    wait_until(lambda: sorted(effects(files)) == ["a 1 start", "c 1 start"], 15, what="a and c to start")
    return run.id


def effects(files: dict[str, Path]) -> list[str]:
    return files["effects"].read_text().splitlines() if files["effects"].exists() else []


def stop_in_background(daemon: DaemonProcess, files: dict[str, Path], *args: str) -> subprocess.Popen[str]:
    """`tagentd stop ARGS` with its stdout going to files["out"] (read while it runs)."""
    out = files["out"].open("w")
    return subprocess.Popen([sys.executable, "-m", "tagentd", "stop", *args], env=daemon.env, text=True,
                            stdout=out, stderr=subprocess.STDOUT, preexec_fn=_sigint_as_at_a_terminal)


def _sigint_as_at_a_terminal() -> None:
    """Ctrl-C reaches the command as at a terminal, even if the test process has SIGINT ignored (an ignored
    signal is inherited, and Python then installs no KeyboardInterrupt handler)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def printed(files: dict[str, Path]) -> str:
    return files["out"].read_text() if files["out"].exists() else ""


def seconds_between(log: str, first: str, last: str) -> float:
    """Seconds between the daemon's first log line containing `first` and the next one containing `last`."""
    def at(line: str) -> float:
        stamp = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
        return stamp.timestamp()

    lines = log.splitlines()
    start = next(i for i, line in enumerate(lines) if first in line)
    end = next(i for i, line in enumerate(lines) if i > start and last in line)
    return at(lines[end]) - at(lines[start])


def finish_after_restart(make_daemon: Callable[..., DaemonProcess], daemon: DaemonProcess, run_id: str) -> Any:
    """Start the daemon again on the same dirs and wait for the run to end; returns (result, history)."""
    again = make_daemon(root=daemon.root).start()
    with again.client() as client:
        result = client.wait(run_id, timeout=30)
        history = client.history(run_id)
    return result, history


def test_a_graceful_stop_starts_nothing_new_says_what_it_waits_for_and_every_step_runs_once(
        make_daemon: Callable[..., DaemonProcess], files: dict[str, Path]) -> None:
    # Given a run with a and c in flight, d queued behind them and b waiting for a
    daemon = make_daemon().start()
    run_id = submit(daemon, files)
    # When `tagentd stop` runs, it says what it waits for: both steps, with how long they have run
    stopping = stop_in_background(daemon, files, "--timeout", "60")
    shown = wait_until(lambda: WAITING.search(printed(files)), 15, what="the waiting line")
    assert shown.group(1) == "2"
    assert re.fullmatch(r"(a|c) \(\d+\.\d s\), (a|c) \(\d+\.\d s\)", shown.group(2)), shown.group(2)
    # And when a finishes during the drain, neither b (now ready) nor d (now room for it) starts
    files["go_a"].touch()
    wait_until(lambda: "a 1 done" in effects(files), 15, what="a to finish")
    wait_until(lambda: re.search(r"^waiting for 1 step: c \(", printed(files), re.MULTILINE), 15,
               what="the waiting line to drop a")
    with daemon.client() as client:
        detail = client.status(run_id)
    assert {name: (s.status, s.attempts) for name, s in detail.steps.items()} == {
        "a": ("completed", 1), "c": ("running", 1), "d": ("pending", 0), "b": ("pending", 0)}
    # (and `tagentd status` says what the stop waits for)
    assert re.search(r"stopping\s+waiting for 1 step: c \(", daemon.admin("status").stdout)
    # And once c finishes the daemon exits
    files["go_c"].touch()
    assert stopping.wait(timeout=30) == 0, printed(files)
    assert "tagentd stopped" in printed(files)
    assert sorted(effects(files)) == ["a 1 done", "a 1 start", "c 1 done", "c 1 start"]

    # Then after a restart b and d run, and every step ran exactly once, as attempt 1
    result, history = finish_after_restart(make_daemon, daemon, run_id)
    assert result.status == "completed", result.error
    assert result.step_outputs == {"a": 1, "c": 1, "d": 1, "b": 1}
    assert collections.Counter(effects(files)) == {f"{s} 1 {w}": 1 for s in "acdb" for w in ("start", "done")}
    started = [(e["data"]["step"], e["data"]["attempt"]) for e in history if e["what"] == "step.started"]
    assert sorted(started) == [("a", 1), ("b", 1), ("c", 1), ("d", 1)]


def test_stop_timeout_checkpoints_the_steps_still_running_and_they_resume_after_a_restart(
        make_daemon: Callable[..., DaemonProcess], files: dict[str, Path]) -> None:
    # Given a run with a and c held (they would run for ever)
    daemon = make_daemon().start()
    run_id = submit(daemon, files)
    # When `tagentd stop --timeout 1` runs
    stopped = daemon.admin("stop", "--timeout", "1", timeout=60)
    # Then it said what it waited for, waited about a second, checkpointed a and c and exited
    assert stopped.returncode == 0, stopped.stderr
    assert WAITING.search(stopped.stdout), stopped.stdout
    assert 1.0 <= seconds_between(daemon.log(), "stop requested by uid=", "s passed; checkpointing 2 steps") < 3.0
    # And after a restart (with the steps let go) they run again as attempt 2 and the run completes
    files["go_a"].touch()
    files["go_c"].touch()
    result, _ = finish_after_restart(make_daemon, daemon, run_id)
    assert result.status == "completed", result.error
    assert result.step_outputs == {"a": 2, "c": 2, "d": 1, "b": 1}
    assert collections.Counter(effects(files))["a 2 done"] == 1 and "a 1 done" not in effects(files)


def test_stop_fast_checkpoints_at_once(make_daemon: Callable[..., DaemonProcess], files: dict[str, Path]) -> None:
    # Given a run with a and c held
    daemon = make_daemon().start()
    run_id = submit(daemon, files)
    # When `tagentd stop --fast` runs
    stopped = daemon.admin("stop", "--fast", timeout=60)
    # Then the daemon is gone at once (not after the 10 s it would wait for the steps), and they resume later
    assert stopped.returncode == 0, stopped.stderr
    assert "checkpointing 2 steps" in stopped.stdout, stopped.stdout
    assert seconds_between(daemon.log(), "stop requested by uid=", "tagentd stopped") < 6.0
    files["go_a"].touch()
    files["go_c"].touch()
    result, _ = finish_after_restart(make_daemon, daemon, run_id)
    assert result.step_outputs == {"a": 2, "c": 2, "d": 1, "b": 1}


def test_a_second_sigterm_stops_like_fast(make_daemon: Callable[..., DaemonProcess], files: dict[str, Path]) -> None:
    # Given a run with a and c held, and a daemon draining after a first SIGTERM
    daemon = make_daemon().start()
    run_id = submit(daemon, files)
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGTERM)
    wait_until(lambda: "SIGTERM: stopping gracefully" in daemon.log(), 10, what="the drain to begin")
    # When a second SIGTERM comes
    daemon.proc.send_signal(signal.SIGTERM)
    # Then the daemon checkpoints the steps and exits at once (not after the 10 s drain), cleanly
    assert daemon.proc.wait(timeout=15) == 0
    assert seconds_between(daemon.log(), "second SIGTERM: stopping fast", "tagentd stopped") < 6.0
    files["go_a"].touch()
    files["go_c"].touch()
    result, _ = finish_after_restart(make_daemon, daemon, run_id)
    assert result.step_outputs == {"a": 2, "c": 2, "d": 1, "b": 1}


def test_ctrl_c_of_tagentd_stop_checkpoints_and_stops_now(
        make_daemon: Callable[..., DaemonProcess], files: dict[str, Path]) -> None:
    # Given `tagentd stop` waiting for two held steps
    daemon = make_daemon().start()
    run_id = submit(daemon, files)
    stopping = stop_in_background(daemon, files, "--timeout", "60")
    wait_until(lambda: WAITING.search(printed(files)), 15, what="the waiting line")
    # When it gets Ctrl-C
    stopping.send_signal(signal.SIGINT)
    # Then it turns the stop into a fast one: the daemon checkpoints them and exits at once (not after 60 s)
    assert stopping.wait(timeout=20) == 0, printed(files)
    assert seconds_between(daemon.log(), "fast stop requested by", "tagentd stopped") < 6.0
    assert "stopping now: checkpointing the steps in flight" in printed(files)
    assert "tagentd stopped" in printed(files)
    files["go_a"].touch()
    files["go_c"].touch()
    result, _ = finish_after_restart(make_daemon, daemon, run_id)
    assert result.step_outputs == {"a": 2, "c": 2, "d": 1, "b": 1}
