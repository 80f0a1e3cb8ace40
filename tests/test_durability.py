"""Durability: what the daemon reported survives kill -9; what it did not is re-run, never lost.

The acceptance criteria of the durability issue, with real processes (conftest's `make_daemon`) killed for real:
the daemon and its workers killed -9 at random moments, every worker lost at once, a scheduled retry across a
kill -9, and the fsync of the WAL segment before a reply. What a restarted daemon does with damaged checkpoint
files or ones of another format version, and the history kept across resume and retry, is tested in
test_checkpoints.py; the framing of records in test_frames.py, `DurableStore` in process in test_durable_store.py.

Side effects are observed from outside the daemon (durability_helpers.py): every step appends a line
"run_id step attempt" to an effects file named in the run's params, with O_APPEND and fsync, before it returns.
Counting lines per (run, step) tells how often a step really ran, whatever the daemon believes.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from conftest import DaemonProcess, pid_alive, wait_until
from durability_helpers import DONE_PIPELINE, Effects, daemon_stats, pipeline_file

from tagent_client.core.state import RunStatus
from tagentd.runs import durable as checkpoint
from tagentd.runs.records import WalRecord
from tagentd.storage.records import HEADER, written_frames

pytestmark = pytest.mark.timeout(180)

CRASH_RUNS = 20
CRASH_KILLS = 12

# 10 steps: s0 -> (s1 s2 s3) -> s4 -> s5 -> (s6 s7) -> s8 -> s9; the fan-outs CONCURRENT, the rest SERIAL.
# A step finishes only when the test lets it: it takes (deletes) one token file from "<effects>.tokens" (or
# "<effects>.open" exists), and while it waits for one a file "<worker pid> <run> <step> <attempt>" in
# "<effects>.waiting" says so. So the test decides how far the work goes between kills, whatever the
# machine's speed, and kills only while a step is running.
CRASH_PIPELINE = '''
pipeline = Pipeline("crashy", max_concurrent_steps=4)

DAG = {"s0": [], "s1": ["s0"], "s2": ["s0"], "s3": ["s0"], "s4": ["s1", "s2", "s3"], "s5": ["s4"],
       "s6": ["s5"], "s7": ["s5"], "s8": ["s6", "s7"], "s9": ["s8"]}


async def take_token(ctx):
    """Wait until the test lets this step finish: take one token file, or find the gate open."""
    base = ctx.params["effects"]
    waiting = os.path.join(base + ".waiting", f"{os.getpid()} {ctx.run_id} {ctx.step_name} {ctx.attempt}")
    open(waiting, "w").close()
    while not os.path.exists(base + ".open"):
        for token in os.listdir(base + ".tokens"):
            try:
                os.unlink(os.path.join(base + ".tokens", token))
            except FileNotFoundError:
                continue  # another step took it
            os.unlink(waiting)
            return
        await asyncio.sleep(0.01)  # ok-sleep: the step (not the test) polls for a token
    os.unlink(waiting)


async def work(ctx):
    await asyncio.sleep(random.uniform(0, 0.05))
    await take_token(ctx)
    record(ctx)
    return ctx.step_name


for name, deps in DAG.items():
    mode = ExecutionMode.CONCURRENT if name in ("s1", "s2", "s3", "s6", "s7") else ExecutionMode.SERIAL
    pipeline.step(name, fn=work, depends_on=deps, execution_mode=mode, retry_delay=0.05)
'''
CRASH_STEPS = [f"s{i}" for i in range(10)]
CRASH_TOTAL = CRASH_RUNS * len(CRASH_STEPS)


def completed_steps(client: Any, run_id: str) -> set[str]:
    return {name for name, step in client.status(run_id).steps.items() if step.status == "completed"}


# -- kill -9 at random moments -----------------------------------------------------------------------------------


def test_kill9_at_random_moments_loses_no_step_and_reruns_no_reported_one(
    make_daemon: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    seed = int(os.environ.get("TAGENTD_CRASH_SEED", random.randrange(2**32)))
    print(f"\ncrash test seed {seed} (repeat with TAGENTD_CRASH_SEED={seed})")
    rng = random.Random(seed)
    effects = Effects(tmp_path / "effects.log")
    tokens, waiting = Path(f"{effects.path}.tokens"), Path(f"{effects.path}.waiting")
    tokens.mkdir()
    waiting.mkdir()
    granted = 0

    def let_finish(steps: int) -> int:
        """Let `steps` more steps finish; returns the number of trace lines to wait for."""
        nonlocal granted
        lines = len(effects.lines())
        for _ in range(steps):
            granted += 1
            (tokens / str(granted)).touch()
        return lines + steps

    def running_steps() -> int:
        """Steps of the live workers waiting for a token: each stays running until a token lets it finish."""
        return sum(pid_alive(int(f.name.split()[0])) for f in waiting.iterdir())

    # Given 20 runs of a 10-step DAG whose steps leave a durable trace outside the daemon
    daemon = make_daemon(workers=2)
    daemon.env["TAGENTD_WORKER_CONCURRENCY"] = "2"
    daemon.start()
    path = pipeline_file(tmp_path, "crashy.py", CRASH_PIPELINE)
    with daemon.client() as client:
        run_ids = [client.submit(path, {"effects": str(effects.path)}).id for _ in range(CRASH_RUNS)]

    # When the daemon and its workers are killed with SIGKILL again and again, each time a few steps after a
    # look at what it reported (often a moment after a step's trace appeared: while its completion is committed),
    # and always while a step is running (at most 11 steps finish between kills: the work outlasts the kills)
    reported: dict[tuple[str, str], int] = {}  # (run, step) -> its trace lines when the daemon first said COMPLETED
    for kill in range(CRASH_KILLS):
        if kill:
            daemon.start()
        target = let_finish(rng.randint(0, 8))
        wait_until(lambda: len(effects.lines()) >= target, timeout=30, what="steps to make progress")
        with daemon.client() as client:
            newly = {(run_id, name) for run_id in run_ids for name in completed_steps(client, run_id)}
        counts = effects.counts()  # read after the replies: every trace of a reported step is in it
        for key in newly - reported.keys():
            reported[key] = counts[key]
        finishing = rng.choice([0, 0, 1, 2, 3])  # steps that finish just before the kill; one more stays running
        wait_until(lambda: running_steps() > finishing, timeout=30, what=f"{finishing + 1} step(s) to be running")
        target = let_finish(finishing)
        wait_until(lambda: len(effects.lines()) >= target, timeout=30, what="a step to complete before the kill")
        daemon.kill9()
    assert len(effects.counts()) < CRASH_TOTAL  # work was left at every kill

    # Then after a last restart (every step may finish now) every run completes
    Path(f"{effects.path}.open").touch()
    daemon.start()
    with daemon.client(timeout=30) as client:
        for run_id in run_ids:
            result = client.wait(run_id, timeout=60)
            assert result.status == "completed", f"run {run_id} ended {result.status}; log:\n{daemon.log()}"
    counts = effects.counts()
    reruns = {key: n for key, n in counts.items() if n > 1}
    print(f"{CRASH_KILLS} kills (each with a step running), {len(reported)} steps reported completed "
          f"before a kill, {sum(counts.values())} step executions, {len(reruns)} steps ran more than once")
    # and every step's side effect happened at least once
    missing = [(r, s) for r in run_ids for s in CRASH_STEPS if counts[(r, s)] == 0]
    assert not missing, f"steps that never ran: {missing[:10]}"
    # and no step the daemon had reported COMPLETED ran again
    again = {key: (n, counts[key]) for key, n in reported.items() if counts[key] != n}
    assert not again, f"reported-completed steps that ran again ((run, step): (lines then, lines now)): {again}"


# -- losing every worker -------------------------------------------------------------------------------------------

HOLD_PIPELINE = '''
pipeline = Pipeline("hold")


async def hold(ctx):
    record(ctx)
    if ctx.attempt == 1:
        await asyncio.sleep(60)  # its worker is killed long before this ends
    return ctx.attempt


def join(ctx, a, b):
    record(ctx)
    return a + b


pipeline.step("a", fn=hold, execution_mode=ExecutionMode.CONCURRENT, retry_delay=0.1)
pipeline.step("b", fn=hold, execution_mode=ExecutionMode.CONCURRENT, retry_delay=0.1)
pipeline.step("join", fn=join, depends_on=["a", "b"])
'''


def kill_all_at_once(pids: list[int]) -> None:
    """SIGKILL `pids` as if at one instant: each is stopped (SIGSTOP) before the first is killed."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)


@pytest.mark.timeout(60)
def test_killing_every_worker_at_once_mid_run_retries_its_steps_and_the_run_completes(
    make_daemon: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    # Given a run with two steps running at once, on a daemon with two workers
    daemon = make_daemon(workers=2).start()
    effects = Effects(tmp_path / "effects.log")
    with daemon.client() as client:
        run_id = client.submit(pipeline_file(tmp_path, "hold.py", HOLD_PIPELINE), {"effects": str(effects.path)}).id
        wait_until(lambda: {s for _, s, _, _ in effects.lines()} == {"a", "b"}, what="steps a and b to start")
        workers = daemon.worker_pids()
        assert len(workers) == 2

        # When every worker is killed at once (the daemon stays up): all stopped first, so none runs anything
        # between the kills (killed one by one, the second could start the retry the daemon sends it on seeing
        # the first one die, before its own kill lands: on a loaded machine it did)
        kill_all_at_once(workers)

        # Then the pool replaces them, both steps run once more without using a retry (the deaths are not theirs to
        # pay for: StepInterrupted), and the run completes. Their next attempt is 2, unless that one is lost with a
        # worker too (the daemon may offer it to the other killed worker before it sees that one exit): it is
        # then uncharged as well and never runs, and the step runs as attempt 3, alone, in a worker started for
        # it (in flight at two worker deaths: quarantined, docs/semantics.md), which stops once it is done.
        result = client.wait(run_id, timeout=30)
        assert result.status == "completed", daemon.log()
        ran = {step: effects.attempts(run_id, step) for step in ("a", "b")}
        assert all(len(attempts) == 2 and attempts[0] == 1 and attempts[1] in (2, 3) for attempts in ran.values()), ran
        assert result.step_outputs["join"] == ran["a"][1] + ran["b"][1]
        assert effects.attempts(run_id, "join") == [1]
        retries = [e for e in client.history(run_id) if e["what"] == "step.retrying"]
        assert {e["data"]["step"] for e in retries} == {"a", "b"}
        assert len(retries) == ran["a"][1] - 1 + ran["b"][1] - 1  # one per lost attempt, none for anything else
        assert all("WorkerLostError" in e["data"]["error"] and not e["data"]["charged"] for e in retries)
    assert pid_alive(daemon.pid)

    def two_workers() -> list[int] | None:
        pids = daemon.worker_pids()
        return pids if len(pids) == 2 else None

    replacements = wait_until(two_workers, 30, what="the pool to settle at 2 workers (a quarantined step's own stopped)")
    assert not set(replacements) & set(workers)
    assert daemon_stats(daemon)["workers_lost"] >= 2


# -- schedules survive a crash ---------------------------------------------------------------------------------------

LATER_PIPELINE = '''
pipeline = Pipeline("later")


def later(ctx):
    record(ctx, repr(time.time()))
    if ctx.attempt == 1:
        raise RetryableError("not yet")
    return ctx.attempt


pipeline.task(later, retry_delay=10, retry_jitter=0, max_retries=1)
'''


@pytest.mark.timeout(60)
def test_a_retry_scheduled_before_a_kill9_happens_at_its_time_after_the_restart(
    make_daemon: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    # Given a run whose step failed retryably and waits 10 s for its retry (a restart takes 1-2 s, several on a
    # loaded machine: workers come up once the worker template has imported the agent runtime)
    daemon = make_daemon().start()
    effects = Effects(tmp_path / "effects.log")
    with daemon.client() as client:
        run_id = client.submit(pipeline_file(tmp_path, "later.py", LATER_PIPELINE), {"effects": str(effects.path)}).id
        wait_until(lambda: client.status(run_id).steps["later"].status == "retrying", what="the step to wait for its retry")
        retrying = [e for e in client.events(run_id).events if e.topic == "step.retrying"]
        retry_at = retrying[0].data["retry_at"]
    # When the daemon and its workers are killed and the daemon restarts at once
    daemon.kill9()
    daemon.start()
    back = time.time()
    assert back < retry_at - 0.3, "the restart took longer than the retry delay: this machine is too slow for the test"
    # Then the retry runs once, at its scheduled time: not at the restart, and not never
    with daemon.client() as client:
        assert client.wait(run_id, timeout=20).step_outputs == {"later": 2}
    assert effects.attempts(run_id, "later") == [1, 2]
    ran_at = float(effects.notes(run_id, "later")[1])
    assert retry_at - 0.05 <= ran_at <= retry_at + 1.5, (ran_at - retry_at, daemon.log())


# -- the fsync before a reply --------------------------------------------------------------------------------------

# On PYTHONPATH as sitecustomize.py, it wraps os.fsync and os.fdatasync in every Python process started (the daemon,
# its workers): each one that returned is recorded as "<monotonic time> <pid> <fd> <bytes> <file the fd is open on>",
# <bytes> being, for a WAL segment, where its last whole record (magic, length, checksum all good) ended before the
# call began: what the call surely covered (the segment's unwritten reserve after it is zeros).
FSYNC_RECORDER = """
import os
import struct
import time
import zlib

_log = os.open(os.environ["TAGENTD_TEST_FSYNC_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
_header = struct.Struct(">2sII")


def _records_end(path):
    with open(path, "rb") as f:
        data = f.read()
    end = 0
    while end + _header.size <= len(data):
        magic, length, crc = _header.unpack_from(data, end)
        payload = data[end + _header.size:end + _header.size + length]
        if magic != b"TG" or len(payload) != length or zlib.crc32(payload) != crc:
            break
        end += _header.size + length
    return end


def _recorded(real):
    def call(fd):
        fd = fd if isinstance(fd, int) else fd.fileno()
        path = os.readlink(f"/proc/self/fd/{fd}")
        covered = _records_end(path) if path.endswith(".wal") else 0
        real(fd)
        os.write(_log, f"{time.monotonic()} {os.getpid()} {fd} {covered} {path}\\n".encode())
    return call


os.fsync, os.fdatasync = _recorded(os.fsync), _recorded(os.fdatasync)
"""


def record_ends(segment: Path, run_id: str) -> tuple[int, int]:
    """Where, in the WAL segment, the run's Created record ends and the Delta that completed it ends."""
    decoder = msgspec.msgpack.Decoder(WalRecord)
    created = completed = 0
    for offset, payload in written_frames(segment.read_bytes(), segment):
        record = decoder.decode(payload)
        end = offset + HEADER.size + len(payload)
        if isinstance(record, checkpoint.Created) and record.checkpoint.state.run_id == run_id:
            created = end
        elif isinstance(record, checkpoint.Delta) and record.run_id == run_id and record.status == RunStatus.COMPLETED:
            completed = completed or end
    assert created and completed, (created, completed)
    return created, completed


def test_a_reply_leaves_only_after_the_wal_segment_holding_its_record_was_fsynced(
    make_daemon: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    # Given a durable daemon in which every fsync is recorded: when, on which fd, the file behind it and what it covered
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(FSYNC_RECORDER)
    fsyncs = tmp_path / "fsyncs.log"
    daemon = make_daemon(workers=1)
    daemon.env["PYTHONPATH"] = os.pathsep.join([str(hook), daemon.env["PYTHONPATH"]])
    daemon.env["TAGENTD_TEST_FSYNC_LOG"] = str(fsyncs)
    daemon.start()
    path = pipeline_file(tmp_path, "done.py", DONE_PIPELINE)
    with daemon.client() as client:
        # When a run is submitted (the reply says it exists), and waited for until it has completed
        run_id = client.submit(path, {"effects": str(tmp_path / "effects")}).id
        submitted = time.monotonic()
        client.wait(run_id, timeout=30)
        finished = time.monotonic()
    # Then before each answer left, the daemon had fsynced the WAL segment itself (its own fd, not the directory's)
    # up to the end of the record the answer reports: the run's Created record, and the Delta that completed it
    (segment,) = (daemon.state_dir / "wal").glob("*.wal")
    created_end, completed_end = record_ends(segment, run_id)
    synced = [(float(t), int(size)) for t, pid, _, size, name in
              (line.split(" ", 4) for line in fsyncs.read_text().splitlines())
              if int(pid) == daemon.pid and name == os.path.realpath(segment)]
    assert any(size >= created_end and t < submitted for t, size in synced), (created_end, synced)
    assert any(size >= completed_end and t < finished for t, size in synced), (completed_end, synced)
