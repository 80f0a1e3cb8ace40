"""Chaos: a mixed workload under random kill -9 of the daemon, of its workers, of both.

Every run ends, no step the daemon reported COMPLETED runs again, no message is lost
or handled twice except across a crash (the documented at-least-once window), CAS
counters are exact, each trigger event starts exactly one run, the daemon answers
within 2 s whenever it is up, and no worker outlives the daemon that started it.

Bounded to about a minute in `make test`; `TAGENTD_CHAOS_SECONDS=600` runs it longer
(`TAGENTD_CHAOS_SEED` repeats a run). Side effects are observed from outside the
daemon, as in test_durability.py: each step appends a line to an effects file
(O_APPEND + fsync), and the test appends a `KILL n` line before every kill, so the
file is one timeline of what ran and when things died.
"""

from __future__ import annotations

import collections
import os
import random
import signal
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import DaemonProcess, pid_alive, processes_using, wait_until, write_pipeline

CHAOS_SECONDS = float(os.environ.get("TAGENTD_CHAOS_SECONDS", "45"))
pytestmark = pytest.mark.timeout(int(CHAOS_SECONDS) + 240)

CHAINS, FANS, FLAKY, PRODUCERS, SENDS, TRIGGERS = 6, 4, 4, 6, 5, 12

PREAMBLE = '''\
import asyncio
import os
import random

from tagent_client import ExecutionMode, Pipeline, RetryableError


def record(ctx, *words):
    """Append "run step attempt words..." to the effects file, durably, once per call."""
    line = " ".join([ctx.run_id, ctx.step_name, str(ctx.attempt), *map(str, words)]) + "\\n"
    fd = os.open(ctx.params.get("effects") or os.environ["CHAOS_EFFECTS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


async def work(ctx, *words):
    await asyncio.sleep(random.uniform(0.005, 0.06))  # ok-sleep: the step's own work
    record(ctx, *words)
    return ctx.step_name
'''

PIPELINES = {
    "chain.py": '''
pipeline = Pipeline("chain")
for i in range(6):
    pipeline.step(f"c{i}", fn=work, depends_on=[f"c{i-1}"] if i else [], retry_delay=0.05)
''',
    "fan.py": '''
pipeline = Pipeline("fan", max_concurrent_steps=8)
pipeline.step("head", fn=work, retry_delay=0.05)
for i in range(10):
    pipeline.step(f"f{i}", fn=work, depends_on=["head"], execution_mode=ExecutionMode.CONCURRENT, retry_delay=0.05)
pipeline.step("tail", fn=work, depends_on=[f"f{i}" for i in range(10)], retry_delay=0.05)
''',
    "flaky.py": '''
pipeline = Pipeline("flaky")


async def shaky(ctx):
    if ctx.attempt < 3:
        raise RetryableError(f"attempt {ctx.attempt} fails on purpose")
    return await work(ctx)

pipeline.step("a", fn=work, retry_delay=0.05)
pipeline.step("b", fn=shaky, depends_on=["a"], max_retries=4, retry_delay=0.05, retry_jitter=0)
pipeline.step("c", fn=work, depends_on=["b"], retry_delay=0.05)
''',
    "producer.py": f'''
pipeline = Pipeline("producer")


async def produce(ctx):
    for n in range({SENDS}):
        msg_id = await ctx.send("consumer", {{"n": n}})
        record(ctx, "sent", msg_id)
    return "sent"


async def count(ctx):
    """Add this step to the counter exactly once, however often it runs: CAS with the applied marks."""
    space = ctx.space("chaos")
    mark = ctx.run_id
    while True:
        entry = await space.get("counter")
        value = entry.value if entry else {{"n": 0, "by": []}}
        if mark in value["by"]:
            break
        new = {{"n": value["n"] + 1, "by": value["by"] + [mark]}}
        if await space.cas("counter", new, expected_version=entry.version if entry else 0):
            break
    return await work(ctx, "counted")

pipeline.step("produce", fn=produce, retry_delay=0.05)
pipeline.step("count", fn=count, depends_on=["produce"], retry_delay=0.05)
''',
    "consumer.py": f'''
pipeline = Pipeline("consumer")


async def consume(ctx):
    got = []
    while len(got) < {SENDS}:
        msg = await ctx.receive(timeout=30)
        if msg is None:
            raise RetryableError("no message within 30 s")
        record(ctx, "recv", msg.id)
        got.append(msg.id)
    return got

pipeline.step("consume", fn=consume, max_retries=20, retry_delay=0.05)
''',
    "triggered.py": '''
pipeline = Pipeline("triggered", triggers=["chaos.tick"])


async def on_tick(ctx):
    return await work(ctx, "trigger", ctx.trigger["id"])

pipeline.step("on_tick", fn=on_tick, retry_delay=0.05)
''',
}


class Timeline:
    """The effects file: step lines `run step attempt words...` and the test's own `KILL n` lines, in order."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def lines(self) -> list[list[str]]:
        if not self.path.exists():
            return []
        text = self.path.read_text()
        return [raw.split(" ") for raw in text[: text.rfind("\n") + 1].splitlines()]  # a partial line is not read yet

    def step_lines(self) -> list[list[str]]:
        return [words for words in self.lines() if words[0] != "KILL"]

    def counts(self) -> collections.Counter[tuple[str, str]]:
        return collections.Counter((words[0], words[1]) for words in self.step_lines())

    def mark_kill(self, n: int) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, f"KILL {n}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)


def answers_within(daemon: DaemonProcess, limit: float) -> float:
    """Ping and ask for the daemon's status; return how long both took (the test asserts it is under `limit`)."""
    began = time.monotonic()
    with daemon.client(timeout=limit) as client:
        client.ping()
        client.daemon_status()
    return time.monotonic() - began


def kill_workers(daemon: DaemonProcess, rng: random.Random) -> list[int]:
    pids = daemon.worker_pids()
    victims = rng.sample(pids, k=rng.randint(1, len(pids))) if pids else []
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return victims


def kill_daemon_only(daemon: DaemonProcess) -> list[int]:
    """SIGKILL the daemon alone: its workers must notice and exit by themselves."""
    assert daemon.proc is not None
    workers = daemon.worker_pids()
    os.kill(daemon.proc.pid, signal.SIGKILL)
    daemon.proc.wait(timeout=10)
    return workers


@pytest.fixture
def reaper(tmp_path: Path) -> Iterator[None]:
    """Whatever the outcome, no process of this test's dirs outlives it (a failed check may leave orphans)."""
    yield
    for pid in processes_using(tmp_path):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_mixed_workload_survives_random_kills(
    reaper: None, make_daemon: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    seed = int(os.environ.get("TAGENTD_CHAOS_SEED", random.randrange(2**32)))
    print(f"\nchaos seed {seed} (repeat with TAGENTD_CHAOS_SEED={seed}), {CHAOS_SECONDS:.0f} s of kills")
    rng = random.Random(seed)
    timeline = Timeline(tmp_path / "effects.log")

    # Given a durable daemon and a mixed workload: chains, fan-outs, retries, broker sends and receives,
    # CAS counters and triggered runs, each step leaving a durable trace outside the daemon
    daemon = make_daemon(workers=2, template=True)  # the default for users: workers forked from the template
    daemon.env["CHAOS_EFFECTS"] = str(timeline.path)
    daemon.env["TAGENTD_WORKER_CONCURRENCY"] = "4"
    daemon.start()
    files = {name: write_pipeline(tmp_path, name, PREAMBLE + textwrap.dedent(body)) for name, body in PIPELINES.items()}
    runs: dict[str, list[str]] = collections.defaultdict(list)
    with daemon.client(timeout=30) as client:
        assert client.submit(files["triggered.py"]).registered
        for name, count in [("chain.py", CHAINS), ("fan.py", FANS), ("flaky.py", FLAKY),
                            ("producer.py", PRODUCERS), ("consumer.py", PRODUCERS)]:
            for _ in range(count):
                runs[name].append(client.submit(files[name]).id)
        for n in range(TRIGGERS):
            client.publish("chaos.tick", {"n": n})

    # When for CHAOS_SECONDS the daemon, its workers, or both are killed with SIGKILL at random moments
    reported: dict[tuple[str, str], int] = {}  # (run, step) -> its trace lines when the daemon first said COMPLETED
    slowest = 0.0
    kills = collections.Counter[str]()
    deadline = time.monotonic() + CHAOS_SECONDS
    n = 0
    while time.monotonic() < deadline:
        n += 1
        target = len(timeline.step_lines()) + rng.randint(1, 12)
        try:
            wait_until(lambda: len(timeline.step_lines()) >= target, timeout=rng.uniform(0.2, 3.0), what="progress")
        except AssertionError:
            pass  # the workload may be done or between steps: kill anyway
        took = answers_within(daemon, 2.0)
        slowest = max(slowest, took)
        with daemon.client(timeout=5) as client:
            for run_id in [r for ids in runs.values() for r in ids]:
                for name, step in client.status(run_id).steps.items():
                    if step.status == "completed" and (run_id, name) not in reported:
                        reported[(run_id, name)] = -1
        counts = timeline.counts()  # read after the replies: every trace of a reported step is in it
        for key, value in reported.items():
            if value == -1:
                reported[key] = counts[key]
        timeline.mark_kill(n)
        kind = rng.choice(["daemon", "workers", "both"])
        kills[kind] += 1
        if kind == "workers":
            kill_workers(daemon, rng)
            continue
        orphans = kill_daemon_only(daemon) if kind == "daemon" else (daemon.kill9() or [])
        # Then no worker outlives the daemon that started it
        wait_until(lambda: not any(pid_alive(p) for p in orphans), timeout=10,
                   what=f"the workers {orphans} of a killed daemon to exit")
        daemon.start()

    # Then, left alone, every run ends: completed, or failed only because a step was in flight on every worker
    # the test killed around it, quarantine included (docs/semantics.md, "When a worker dies"), and then a resume
    # completes it, as docs/operations.md tells a user to do
    slowest = max(slowest, answers_within(daemon, 2.0))
    resumed = 0
    with daemon.client(timeout=30) as client:
        for run_id in [r for ids in runs.values() for r in ids]:
            result = client.wait(run_id, timeout=120)
            if result.status == "failed" and all("killed its worker" in e for e in result.error_details.values()):
                resumed += 1
                client.resume(run_id)
                result = client.wait(run_id, timeout=120)
            assert result.status == "completed", f"run {run_id} ended {result.status}: {result.error_details}\n{daemon.log()}"
        wait_until(lambda: sum(1 for w in timeline.step_lines() if w[1] == "on_tick") >= TRIGGERS, timeout=60,
                   what="every trigger event to have run")
        triggered = [r for r in client.runs(limit=1000) if r.pipeline == "triggered"]
        for summary in triggered:
            assert client.wait(summary.run_id, timeout=60).status == "completed"
        counter = client.space("chaos").get("counter")
    lines = timeline.lines()
    counts = timeline.counts()
    print(f"{n} kills ({dict(kills)}), {len(reported)} steps reported completed before a kill, "
          f"{sum(counts.values())} step executions, {resumed} runs resumed after a quarantine, "
          f"slowest answer {slowest:.2f} s")

    # and the daemon always answered within 2 s
    assert slowest < 2.0
    # and no step the daemon had reported COMPLETED ran again
    again = {key: (then, counts[key]) for key, then in reported.items() if counts[key] != then}
    assert not again, f"reported-completed steps that ran again ((run, step): (lines then, lines now)): {again}"
    # and every step of every run left its trace
    for run_id in runs["chain.py"]:
        assert all(counts[(run_id, f"c{i}")] for i in range(6))
    for run_id in runs["fan.py"]:
        assert all(counts[(run_id, s)] for s in ["head", "tail", *(f"f{i}" for i in range(10))])
    # and every message sent was received, twice only across a kill (a lease released by a crash)
    sent = [w[4] for w in lines if len(w) > 4 and w[3] == "sent"]
    assert len(set(sent)) == PRODUCERS * SENDS, f"{len(set(sent))} distinct messages sent"
    seen_at: dict[str, int] = {}
    for index, words in enumerate(lines):
        if len(words) > 4 and words[3] == "recv":
            msg_id = words[4]
            if msg_id in seen_at:
                between = lines[seen_at[msg_id]:index]
                assert any(w[0] == "KILL" for w in between), f"message {msg_id} handled twice with no crash between"
            seen_at[msg_id] = index
    assert set(sent) <= set(seen_at), f"messages never received: {sorted(set(sent) - set(seen_at))[:5]}"
    # and the CAS counter counted each producer run exactly once
    assert counter is not None
    assert counter.value["n"] == len(counter.value["by"]) == len(set(counter.value["by"])) == PRODUCERS
    assert set(counter.value["by"]) == set(runs["producer.py"])
    # and each trigger event started exactly one run
    events = collections.defaultdict(set)
    for words in lines:
        if len(words) > 4 and words[1] == "on_tick":
            events[words[4]].add(words[0])
    assert len(events) == TRIGGERS, f"{len(events)} of {TRIGGERS} events ran"
    assert all(len(run_ids) == 1 for run_ids in events.values()), f"events with several runs: {events}"
    assert len(triggered) == TRIGGERS
