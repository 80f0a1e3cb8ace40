"""Checkpoint files of a real daemon: what it does at start with what it finds on disk, and what it keeps.

A damaged snapshot or a torn WAL tail is reported (log, `tagentd status --json`), set aside in corrupt/, and the
other runs go on from their checkpoints; a checkpoint from a newer tagentd stops the daemon from starting; one in
format 1 loads and its run continues; `tagent resume` and `tagent retry` rerun only what they name, and the
history that records them reads back unchanged after a kill -9. Real processes (conftest's `make_daemon`); what
survives kill -9 mid-run is tested in test_durability.py.

Side effects are observed from outside the daemon (durability_helpers.py): every step appends a line
"run_id step attempt [note]" to an effects file, so the tests count how often each step really ran.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from conftest import DaemonProcess, wait_until
from durability_helpers import DONE_PIPELINE, Effects, daemon_stats, pipeline_file

from tagent_client.core.engine import RunMachine
from tagent_client.core.events import Dispatch, StepSucceeded
from tagent_client.core.state import RunStatus, StepStatus, new_run_id
from tagentd.runs.records import FORMAT, RunCheckpoint
from tagentd.runs.run import AuditEntry, RunSource
from tagentd.storage.records import HEADER, read_single, write_atomic, written_frames

pytestmark = pytest.mark.timeout(180)


# -- corrupt checkpoint files ----------------------------------------------------------------------------------------

GATED_PIPELINE = '''
pipeline = Pipeline("gated")


async def first(ctx):
    record(ctx)
    return "first"


async def gate(ctx, first):
    record(ctx, f"memory={await ctx.memory.get('gate')}")
    while not os.path.exists(ctx.params["go"]):
        await asyncio.sleep(0.02)  # ok-sleep: the step polls until the test saw `first` committed
    await ctx.memory.save("gate", "waiting")
    record(ctx, "saved")
    while not os.path.exists(ctx.params["gate"]):
        await asyncio.sleep(0.02)  # ok-sleep: the step (not the test) polls for the gate file
    return "gate"


async def last(ctx, gate):
    record(ctx)
    return "last"


pipeline.task(first)
pipeline.task(gate, depends_on=["first"])
pipeline.task(last, depends_on=["gate"])
'''



def truncate_file(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_middle(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    for i in range(middle, middle + 8):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def last_record(path: Path) -> tuple[int, bytes]:
    """(offset, payload) of the last frame of a WAL segment."""
    return list(written_frames(path.read_bytes(), path))[-1]


@pytest.mark.timeout(90)
@pytest.mark.parametrize("damage", ["truncated snapshot", "flipped bytes in snapshot", "torn WAL tail"])
def test_a_corrupt_checkpoint_file_is_reported_and_set_aside_and_the_other_runs_go_on(
    damage: str, make_daemon: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    # Given a completed run (so it has a .ckpt snapshot) and a run waiting in its middle step, whose last act was
    # to save a memory key (so the newest WAL record is that save), and a daemon killed with SIGKILL
    daemon = make_daemon(workers=2).start()
    effects = Effects(tmp_path / "effects.log")
    gate, go = tmp_path / "gate", tmp_path / "go"
    params = {"effects": str(effects.path), "gate": str(gate), "go": str(go)}
    with daemon.client() as client:
        done = client.submit(pipeline_file(tmp_path, "done.py", DONE_PIPELINE), params).id
        assert client.wait(done, timeout=20).status == "completed"
        gated = client.submit(pipeline_file(tmp_path, "gated.py", GATED_PIPELINE), params).id
        # (a status reply leaves after the commit, so `first` is on disk in a record older than the memory save:
        # the torn-tail case below tears only the save, as a crash mid-append would)
        wait_until(lambda: client.status(gated).steps["first"].status == "completed", what="`first` to be committed")
        go.touch()
        wait_until(lambda: "saved" in effects.notes(gated, "gate"), what="the gate step to save its memory key")
    daemon.kill9()
    snapshot = daemon.state_dir / "runs" / f"{done}.ckpt"
    assert snapshot.exists()
    segments = sorted((daemon.state_dir / "wal").glob("*.wal"))
    original = segments[-1].read_bytes()
    offset, payload = last_record(segments[-1])
    newest = msgspec.msgpack.decode(payload)
    assert newest["type"] == "delta" and newest["memory"] == {"gate": "waiting"}, newest

    # When one file is damaged and the daemon starts again
    if damage == "truncated snapshot":
        damaged = snapshot
        truncate_file(snapshot)
    elif damage == "flipped bytes in snapshot":
        damaged = snapshot
        flip_middle(snapshot)
    else:
        damaged = segments[-1]
        torn = original[: offset + HEADER.size + len(payload) // 2]
        damaged.write_bytes(torn)
    daemon.start()

    # Then the damaged file is named in the log and in `tagentd status --json`, and kept in corrupt/
    wait_until(lambda: str(damaged) in daemon.log(), what=f"the log to mention {damaged}")
    problems = daemon_stats(daemon)["checkpoint_problems"]
    assert any(str(damaged) in problem for problem in problems), problems
    kept = list((daemon.state_dir / "corrupt").glob(f"{damaged.name}.*"))
    assert len(kept) == 1, kept
    if damage == "torn WAL tail":
        assert damaged.read_bytes() == original[:offset]  # cut at the last whole record
        assert kept[0].read_bytes() == torn[offset:]  # the torn bytes, kept for a look
    else:
        rewritten = msgspec.msgpack.decode(read_single(snapshot), type=RunCheckpoint)  # from the WAL, at load
        assert rewritten.state.status is RunStatus.COMPLETED
    # and both runs are still there: the finished one as it was, the waiting one goes on from its checkpoint
    with daemon.client() as client:
        assert client.status(done).status == "completed"
        assert client.result(done).step_outputs == {"one": 1, "two": 2}
        gate.touch()
        assert client.wait(gated, timeout=20).status == "completed"
    assert effects.attempts(done, "one") == [1] and effects.attempts(done, "two") == [1]
    assert effects.attempts(gated, "first") == [1]  # completed before the crash: not run again
    assert effects.attempts(gated, "gate") == [1, 1, 2, 2]  # in flight at the crash: run again, attempt + 1
    lost_memory = "memory=None" if damage == "torn WAL tail" else "memory=waiting"
    assert effects.notes(gated, "gate")[-2] == lost_memory  # a torn record is lost (only it); a bad snapshot costs nothing
    assert effects.attempts(gated, "last") == [1]


# -- resume, retry, history ------------------------------------------------------------------------------------------

FLAKY_PIPELINE = '''
pipeline = Pipeline("flaky")


def a(ctx):
    record(ctx)
    return "a"


def b(ctx, a):
    record(ctx)
    if not os.path.exists(ctx.params["marker"]):
        raise ValueError(f"no marker file {ctx.params['marker']} yet")
    return "b"


def c(ctx, b):
    record(ctx)
    return "c"


def d(ctx, a):
    record(ctx)
    return "d"


pipeline.task(a)
pipeline.task(b, depends_on=["a"], max_retries=0)
pipeline.task(c, depends_on=["b"])
pipeline.task(d, depends_on=["a"])
'''


@pytest.mark.timeout(90)
def test_resume_reruns_only_the_failed_part_and_retry_only_the_step_and_its_dependents(
    make_daemon: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    daemon = make_daemon().start()
    effects = Effects(tmp_path / "effects.log")
    marker = tmp_path / "marker"
    path = pipeline_file(tmp_path, "flaky.py", FLAKY_PIPELINE)
    with daemon.client() as client:
        # Given a run whose step b fails with a non-retryable error (a -> b -> c, a -> d)
        run_id = client.submit(path, {"effects": str(effects.path), "marker": str(marker)}).id
        failed = client.wait(run_id, timeout=20)
        assert failed.status == "failed"
        steps = client.status(run_id).steps
        assert (steps["a"].status, steps["b"].status, steps["c"].status, steps["d"].status) == (
            "completed", "failed", "skipped", "completed")
        assert effects.counts() == {(run_id, "a"): 1, (run_id, "b"): 1, (run_id, "d"): 1}

        # When the cause is fixed and the run is resumed with `tagent resume`
        marker.touch()
        resumed = daemon.cli("resume", run_id)
        assert resumed.returncode == 0, resumed.stderr
        assert "b, c" in resumed.stdout
        # Then only b and c run (b again): a and d are not run again, and the run completes
        assert client.wait(run_id, timeout=20).status == "completed"
        assert effects.counts() == {(run_id, "a"): 1, (run_id, "b"): 2, (run_id, "c"): 1, (run_id, "d"): 1}
        assert client.status(run_id).steps["b"].attempts == 2

        # When one step of the completed run is retried with `tagent retry --step b`
        retried = daemon.cli("retry", run_id, "--step", "b")
        assert retried.returncode == 0, retried.stderr
        # Then b and its dependent c run again; a and d do not
        assert client.wait(run_id, timeout=20).status == "completed"
        assert effects.counts() == {(run_id, "a"): 1, (run_id, "b"): 3, (run_id, "c"): 2, (run_id, "d"): 1}

    # And `tagent history` shows who submitted, resumed and retried, and every step transition
    shown = daemon.cli("history", run_id, "--json")
    assert shown.returncode == 0, shown.stderr
    history = json.loads(shown.stdout)
    requests = [(e["what"], e["data"]) for e in history if e["who"] != "daemon"]
    assert [what for what, _ in requests] == ["submit", "resume", "retry"]
    assert sorted(requests[1][1]["steps"]) == ["b", "c"]
    assert requests[2][1] == {"step": "b"}
    me = f"uid={os.getuid()} pid="
    assert all(e["who"].startswith(me) for e in history if e["who"] != "daemon")
    transitions = [(e["what"], e["data"].get("step")) for e in history if e["who"] == "daemon"]
    for expected in [("step.completed", "a"), ("step.failed", "b"), ("step.skipped", "c"), ("run.resumed", None),
                     ("step.completed", "b"), ("step.completed", "c"), ("run.finished", None)]:
        assert expected in transitions, f"{expected} missing from {transitions}"
    assert transitions.count(("step.completed", "b")) == 2  # after the resume and after the retry
    text = daemon.cli("history", run_id)
    assert text.returncode == 0 and "resume" in text.stdout and "retry" in text.stdout

    # And after a kill -9 the history reads back exactly as it was shown
    daemon.kill9()
    daemon.start()
    assert json.loads(daemon.cli("history", run_id, "--json").stdout) == history


# -- format versions -------------------------------------------------------------------------------------------------

VERSIONED_PIPELINE = '''
pipeline = Pipeline("versioned")


def a(ctx):
    record(ctx)
    return "a"


def b(ctx, a):
    record(ctx)
    return a + "b"


pipeline.task(a)
pipeline.task(b, depends_on=["a"])
'''


def plan_of(source: str) -> Any:
    namespace: dict[str, Any] = {}
    exec(compile(source, "<pipeline>", "exec"), namespace)  # noqa: S102 - our own test pipeline
    return namespace["pipeline"].plan()


def v1_checkpoint(path: Path, *, finish: bool, fmt: int = 1, params: dict[str, Any] | None = None) -> RunCheckpoint:
    """A run of `path`'s pipeline built with this tagentd's structs: a completed; b completed if `finish`, else running."""
    text = path.read_text()
    plan = plan_of(text)
    now = time.time() - 60
    machine = RunMachine.new(plan, new_run_id(now), params=params or {}, now=now)
    actions = machine.start(now)
    while True:
        dispatch = next((a for a in actions if isinstance(a, Dispatch)), None)
        if dispatch is None or (dispatch.step == "b" and not finish):
            break
        actions = machine.handle(StepSucceeded(task=dispatch.task, attempt=dispatch.attempt,
                                               output=dispatch.step if dispatch.step == "a" else "ab"), now)
    source = RunSource(path=str(path), source=text, source_hash=hashlib.sha256(text.encode()).hexdigest())
    history = [AuditEntry(ts=now, who=f"uid={os.getuid()} pid=1", what="submit", data={"path": str(path)})]
    return RunCheckpoint(format=fmt, wal_seq=0, source=source, plan=plan, state=machine.state, history=history)


def place_snapshot(daemon: DaemonProcess, ckpt: RunCheckpoint) -> Path:
    runs = daemon.state_dir / "runs"
    runs.mkdir(mode=0o700, parents=True, exist_ok=True)
    daemon.state_dir.chmod(0o700)
    path = runs / f"{ckpt.state.run_id}.ckpt"
    write_atomic(path, msgspec.msgpack.encode(ckpt))
    return path


@pytest.mark.timeout(60)
def test_a_checkpoint_from_a_newer_tagentd_stops_the_daemon_from_starting(
    make_daemon: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    # Given a state dir holding a snapshot written with checkpoint format 99
    daemon = make_daemon()
    path = pipeline_file(tmp_path, "versioned.py", VERSIONED_PIPELINE)
    newer = place_snapshot(daemon, v1_checkpoint(path, finish=True, fmt=99))
    # When the daemon starts
    refused = daemon.start_refused()
    # Then it refuses, naming the file and saying it is newer, and leaves the file where it is
    message = refused.stderr.strip().splitlines()[-1]
    assert str(newer) in message and "newer" in message, refused.stderr
    assert newer.exists() and not (daemon.state_dir / "corrupt").exists()


@pytest.mark.timeout(60)
def test_a_snapshot_in_format_1_loads_and_its_run_continues(
    make_daemon: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    # Given snapshots in checkpoint format 1: a completed run, and a run that completed a and was running b.
    # They are generated here from this tagentd's structs because FORMAT is still 1. When FORMAT moves to 2,
    # commit real version-1 files under tests/fixtures/ (written by this code, as below) and load those instead.
    assert FORMAT == 1, "FORMAT changed: load a committed v1 fixture from tests/fixtures/ here"
    daemon = make_daemon()
    effects = Effects(tmp_path / "effects.log")
    path = pipeline_file(tmp_path, "versioned.py", VERSIONED_PIPELINE)
    done = v1_checkpoint(path, finish=True, params={"effects": str(effects.path)})
    half = v1_checkpoint(path, finish=False, params={"effects": str(effects.path)})
    place_snapshot(daemon, done)
    place_snapshot(daemon, half)
    assert done.state.status is RunStatus.COMPLETED and half.state.steps["a"].status is StepStatus.COMPLETED
    # When the daemon starts on them
    daemon.start()
    # Then both runs are there: the completed one as stored, the other one runs its pending step (only that one)
    with daemon.client() as client:
        assert client.result(done.state.run_id).step_outputs == {"a": "a", "b": "ab"}
        assert client.wait(half.state.run_id, timeout=20).step_outputs == {"a": "a", "b": "ab"}
        assert [e["what"] for e in client.history(half.state.run_id)][0] == "submit"
    assert effects.counts() == {(half.state.run_id, "b"): 1}
    assert daemon_stats(daemon)["checkpoint_problems"] == []
