"""The effects file of the durability tests (test_durability.py, test_checkpoints.py): how a step of a test
pipeline leaves its trace outside the daemon, and how the test reads it back.

Every step calls `record(ctx)`, which appends "run_id step attempt [note]" to the effects file named in the run's
params, with O_APPEND and fsync, before the step returns: a line in the file means the step really ran, whatever
the daemon believes; counting lines per (run, step) tells how often.
"""

from __future__ import annotations

import collections
import json
import textwrap
from pathlib import Path
from typing import Any

from conftest import DaemonProcess, write_pipeline

# The preamble of every test pipeline (pipeline_file puts it first): how a step leaves its trace outside the daemon.
RECORD = '''\
import asyncio
import os
import random
import time

from tagent_client import ExecutionMode, Pipeline, RetryableError


def record(ctx, note=""):
    """Append "run_id step attempt [note]" to the effects file, durably, once per call."""
    line = f"{ctx.run_id} {ctx.step_name} {ctx.attempt} {note}".rstrip() + "\\n"
    fd = os.open(ctx.params["effects"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)

'''

# one -> two: a run that completes at once.
DONE_PIPELINE = '''
pipeline = Pipeline("done")


async def one(ctx):
    record(ctx)
    return 1


async def two(ctx, one):
    record(ctx)
    return one + 1


pipeline.task(one)
pipeline.task(two, depends_on=["one"])
'''


class Effects:
    """The effects file, read from the test: lines of (run_id, step, attempt, note)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def lines(self) -> list[tuple[str, str, int, str]]:
        if not self.path.exists():
            return []
        text = self.path.read_text()
        out = []
        for raw in text[: text.rfind("\n") + 1].splitlines():  # a line still being written is not read yet
            run_id, step, attempt, *note = raw.split(" ", 3)
            out.append((run_id, step, int(attempt), note[0] if note else ""))
        return out

    def counts(self) -> collections.Counter[tuple[str, str]]:
        return collections.Counter((run_id, step) for run_id, step, _, _ in self.lines())

    def attempts(self, run_id: str, step: str) -> list[int]:
        return [a for r, s, a, _ in self.lines() if (r, s) == (run_id, step)]

    def notes(self, run_id: str, step: str) -> list[str]:
        return [n for r, s, _, n in self.lines() if (r, s) == (run_id, step)]


def pipeline_file(directory: Path, name: str, body: str) -> Path:
    """Write `body` (dedented), after RECORD, as the pipeline file `directory`/`name`."""
    return write_pipeline(directory, name, RECORD + textwrap.dedent(body))


def daemon_stats(daemon: DaemonProcess) -> dict[str, Any]:
    """The daemon's counters, as `tagentd status --json` shows them."""
    done = daemon.admin("status", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["stats"]
