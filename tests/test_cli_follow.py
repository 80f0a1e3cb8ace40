"""`tagent submit --follow` tells the whole story: events, the steps' progress notes and their log lines.

A real daemon runs a step that logs a line, reports progress and then waits for a message, so the
test can look at the follower's output while the step is still running, then let it finish.
On a terminal (a pseudo-terminal here) the progress note is on the step's line of the live view
and log lines scroll above it; anywhere else each is one plain line among the event lines.
"""

from __future__ import annotations

import asyncio
import fcntl
import io
import os
import pty
import struct
import subprocess
import sys
import termios
import threading
from pathlib import Path

import pytest
from conftest import DaemonProcess, wait_until, write_pipeline

from tagent_client import Pipeline, run_pipeline
from tagent_client.cli.live import LiveView, StepBoard
from tagent_client.wire.protocol import EventRecord, LogRecord

pytestmark = pytest.mark.timeout(60)

STORY = """
from tagent_client import Pipeline

pipeline = Pipeline("story")

@pipeline.task(final=True)
async def work(ctx):
    ctx.log.info("fetching the feed")
    ctx.progress(0.5, "halfway there")
    await ctx.receive(timeout=30)  # the test sends 'go' once it has seen the note
    return "done"
"""


class Output:
    """Collects what a process writes to one fd, in a thread, until end of file."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.chunks: list[bytes] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:  # EIO: the pty's other side is closed
                return
            if not chunk:
                return
            self.chunks.append(chunk)

    @property
    def text(self) -> str:
        return b"".join(self.chunks).decode("utf-8", "replace").replace("\r\n", "\n")


def follow(daemon: DaemonProcess, path: Path, *, terminal: bool) -> tuple[subprocess.Popen[bytes], Output, int | None]:
    """Start `tagent submit PATH --follow` with stdout on a pipe, or on a 100x30 pseudo-terminal."""
    argv = [sys.executable, "-m", "tagent_client.cli", "submit", str(path), "--follow"]
    env = dict(daemon.env, TERM="xterm")
    if not terminal:
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert proc.stdout is not None
        return proc, Output(proc.stdout.fileno()), None
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    proc = subprocess.Popen(argv, env=env, stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    return proc, Output(master), master


def finish(daemon: DaemonProcess, proc: subprocess.Popen[bytes], out: Output, master: int | None) -> int:
    """Let the waiting step go on; wait for the follower to exit."""
    with daemon.client() as client:
        client.send("story", "go")
    code = proc.wait(timeout=30)
    out.thread.join(10)
    if master is not None:
        os.close(master)
    return code


def test_follow_without_a_terminal_prints_progress_notes_and_log_lines_as_event_lines(daemon: DaemonProcess,
                                                                                      tmp_path: Path) -> None:
    # Given a step that logs a line, reports progress and waits
    path = write_pipeline(tmp_path, "story.py", STORY)
    # When it is submitted with --follow and stdout is a pipe
    proc, out, master = follow(daemon, path, terminal=False)
    try:
        # Then its log line and its progress note are printed while it runs, as event lines
        wait_until(lambda: "halfway there" in out.text, 20, what=f"the progress note in:\n{out.text}")
        wait_until(lambda: "fetching the feed" in out.text, 5, what=f"the log line in:\n{out.text}")
    finally:
        code = finish(daemon, proc, out, master)
    lines = out.text.splitlines()
    assert any(line.endswith("step.progress work 50%: halfway there") for line in lines), out.text
    assert any(line.endswith("step.log work INFO: fetching the feed") for line in lines), out.text
    started = next(i for i, line in enumerate(lines) if "step.started work" in line)
    noted = next(i for i, line in enumerate(lines) if "step.progress work" in line)
    logged = next(i for i, line in enumerate(lines) if "step.log work" in line)
    ended = next(i for i, line in enumerate(lines) if "step.completed work" in line)
    assert started < noted < ended, out.text  # in time order among the run's events
    assert started < logged < ended, out.text  # the step's log line too, whatever the worker's clock said
    assert code == 0, out.text


def test_follow_on_a_terminal_shows_the_progress_note_on_the_steps_line_and_log_lines_above(
        daemon: DaemonProcess, tmp_path: Path) -> None:
    # Given a step that logs a line, reports progress and waits
    path = write_pipeline(tmp_path, "story.py", STORY)
    # When it is submitted with --follow on a terminal
    proc, out, master = follow(daemon, path, terminal=True)
    try:
        # Then the step's line of the live view carries the progress note while it runs
        wait_until(lambda: any("work" in line and "50% halfway there" in line for line in out.text.split("\n")), 20,
                   what=f"the progress note on the step's line in:\n{out.text!r}")
        # and the log line is printed above the view (the view's header follows it)
        wait_until(lambda: "fetching the feed" in out.text, 5, what=f"the log line in:\n{out.text!r}")
    finally:
        code = finish(daemon, proc, out, master)
    lines = out.text.split("\n")
    logged = next(i for i, line in enumerate(lines) if line.endswith("INFO    work: fetching the feed"))
    assert "run " in lines[logged + 1] and " of story:" in lines[logged + 1], lines[logged:logged + 3]
    assert code == 0, out.text


NOTES = """
from tagent_client import Pipeline

pipeline = Pipeline("notes")

@pipeline.task(final=True)
def work(ctx):
    ctx.progress("fetching the feed")  # a note alone, as a new user writes it first
    ctx.progress(1, "all fetched")
    return "done"
"""


def test_a_note_alone_and_an_integer_fraction_reach_the_follower(daemon: DaemonProcess, tmp_path: Path) -> None:
    # Given a step that reports a note without a fraction, then an int fraction (they used to be dropped by the
    # daemon as a bad worker message: only its log said so)
    path = write_pipeline(tmp_path, "notes.py", NOTES)
    # When it is submitted with --follow and stdout is a pipe
    done = daemon.cli("submit", str(path), "--follow")
    # Then both notes are among the event lines
    assert done.returncode == 0, done
    lines = done.stdout.splitlines()
    assert any(line.endswith("step.progress work: fetching the feed") for line in lines), done.stdout
    assert any(line.endswith("step.progress work 100%: all fetched") for line in lines), done.stdout


def test_a_fraction_that_is_not_a_number_fails_the_step_saying_so() -> None:
    # Given a step that passes a list as the fraction
    pipeline = Pipeline("bad_note")

    @pipeline.task(final=True, max_retries=0)
    def work(ctx):  # noqa: ANN001, ANN202
        ctx.progress([1, 2], "half")

    # When it runs in-process / Then the step fails with a TypeError that says what progress() takes
    result = asyncio.run(run_pipeline(pipeline))
    assert result.status == "failed"
    error = str(result.step_metadata["work"]["error"])
    assert "TypeError" in error and "fraction must be a number" in error, error


def test_a_log_line_stamped_before_its_steps_start_event_is_shown_after_it() -> None:
    # Given a follower's view of a run whose step logged at 10.0, a moment before the daemon recorded its start
    out = io.StringIO()
    view = LiveView(StepBoard("r1", "p", ["work"]), out=out, tty=False)
    early = LogRecord(seq=1, ts=10.0, step="work", level="INFO", message="fetching the feed")
    # When the log line comes before the events that start the step, then with them
    view.update([], [early])
    held = out.getvalue()
    view.update([EventRecord(seq=1, ts=10.1, topic="run.started", data={}),
                 EventRecord(seq=2, ts=10.2, topic="step.started", data={"step": "work", "attempt": 1})], [])
    # Then the line waited for them and follows them
    assert held == ""
    assert [line.split(" ", 1)[1] for line in out.getvalue().splitlines()] == [
        "run.started", "step.started work (attempt 1)", "step.log work INFO: fetching the feed"]
