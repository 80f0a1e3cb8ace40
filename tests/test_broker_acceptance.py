"""The broker's acceptance tests (issue 6), on real daemons.

- 10,000 messages between two pipelines survive two kill -9s: every one arrives, in
  per-sender order, none is processed twice;
- 20 parallel steps incrementing one counter with CAS loops 50 times each reach 1,000;
- 100 events start 100 runs of a triggered pipeline, never more than the limit at once;
- a subscriber that never reads costs a 100,000-event publish burst (almost) no daemon CPU.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zmq
from conftest import wait_until, write_pipeline

from tagent_client.wire import paths
from tagent_client.wire.protocol_broker import Subscribe, Unsubscribe

MESSAGES = 10_000
SENDERS = ("a", "b")

EXCHANGE = f'''
    import os
    from tagent_client import Pipeline

    TOTAL = {MESSAGES}
    SENDERS = {SENDERS!r}

    sender = Pipeline("sender", max_concurrent_steps=4)

    def make_sender(name):
        async def send_all(ctx):
            per = TOTAL // len(SENDERS)
            for n in range(per):
                await ctx.send("receiver", {{"from": name, "n": n}})
            return per
        sender.task(send_all, name=f"send_{{name}}", timeout=600)

    for _name in SENDERS:
        make_sender(_name)

    receiver = Pipeline("receiver")

    @receiver.task(timeout=600)
    async def take_all(ctx):
        """Dedupe by message id against the side-effect file (a message may come again after a crash)."""
        path = ctx.params["effects"]
        seen = set()
        if os.path.exists(path):
            with open(path) as f:
                seen = {{line.split()[0] for line in f if line.strip()}}
        handled = []
        with open(path, "a") as effects, open(path + ".again", "a") as again:
            while len(seen) < TOTAL:
                message = await ctx.receive(timeout=60)
                if message is None:
                    raise TimeoutError(f"no message for 60 s after {{len(seen)}}")
                if message.id in seen:
                    again.write(message.id + "\\n")
                    again.flush()
                else:
                    p = message.payload
                    effects.write(f"{{message.id}} {{p['from']}} {{p['n']}}\\n")
                    effects.flush()
                    os.fsync(effects.fileno())
                    seen.add(message.id)
                handled.append(message)
                if len(handled) == 20 or len(seen) == TOTAL:  # acknowledged in batches, once their effect is on disk
                    await ctx.ack(*handled)
                    handled = []
        return len(seen)
'''


def effect_lines(path: Path) -> list[list[str]]:
    if not path.exists():
        return []
    return [line.split() for line in path.read_text().splitlines() if line.count(" ") == 2]


@pytest.mark.timeout(600)
def test_ten_thousand_messages_survive_two_kill9s_in_order_and_once(make_daemon: Any, tmp_path: Path) -> None:
    # Given a receiver (dedupes into a side-effect file) and two senders of 5,000 messages each
    pipes = write_pipeline(tmp_path, "exchange.py", EXCHANGE)
    effects = tmp_path / "effects.log"
    daemon = make_daemon(workers=2).start()
    with daemon.client() as client:
        receiver = client.submit(f"{pipes}:receiver", {"effects": str(effects)}).id
        sender = client.submit(f"{pipes}:sender").id
    # When the daemon is killed -9 twice while they run, and restarted each time
    kills = []
    for threshold in (1_500, 5_000):
        wait_until(lambda: len(effect_lines(effects)) >= threshold, 240, interval=0.05, what=f"{threshold} messages")
        with daemon.client() as client:
            kills.append((len(effect_lines(effects)), client.status(sender).status,
                          sum(m.messages for m in client.mailboxes("receiver"))))
        daemon.kill9()
        daemon.start()
    with daemon.client(timeout=30) as client:
        finished = client.wait(receiver, timeout=400)
        sent = client.wait(sender, timeout=60)
        stats = client.broker_stats()
    # Then the receiver processed every message exactly once, each sender's in order
    lines = effect_lines(effects)
    ids = [line[0] for line in lines]
    print(f"\nkills at (processed, sender status, queued): {kills}; redelivered duplicates skipped: "
          f"{len((tmp_path / 'effects.log.again').read_text().split()) if (tmp_path / 'effects.log.again').exists() else 0}")
    assert finished.status == "completed", finished.error
    assert sent.status == "completed", sent.error
    assert len(ids) == len(set(ids)) == MESSAGES
    by_sender: dict[str, list[int]] = defaultdict(list)
    for _, name, n in lines:
        by_sender[name].append(int(n))
    for name in SENDERS:
        assert by_sender[name] == list(range(MESSAGES // len(SENDERS))), f"sender {name} out of order or incomplete"
    assert sum(m.messages for m in stats.mailboxes) == 0


COUNTER = '''
    from tagent_client import Pipeline

    pipeline = Pipeline("counter", max_concurrent_steps=20)

    @pipeline.task(execution_mode="parallel_merge", over=list(range(20)), final=True)
    async def bump(ctx, item):
        space = ctx.space("counters")
        conflicts = 0
        for _ in range(50):
            while True:
                entry = await space.get("n")
                value, version = (entry.value, entry.version) if entry is not None else (0, 0)
                if await space.cas("n", value + 1, expected_version=version):
                    break
                conflicts += 1
        return conflicts
'''


@pytest.mark.timeout(180)
def test_twenty_parallel_steps_count_to_exactly_a_thousand_with_cas(make_daemon: Any, tmp_path: Path) -> None:
    # Given 20 parallel steps that each add 1 to one counter 50 times, retrying on CAS conflicts
    pipes = write_pipeline(tmp_path, "counter.py", COUNTER)
    daemon = make_daemon(workers=2).start()
    with daemon.client(timeout=30) as client:
        result = client.wait(client.submit(pipes).id, timeout=150)
        # Then the counter is exactly 1,000 (and the steps did collide: CAS was needed)
        assert result.status == "completed", result.error
        entry = client.space("counters").get("n")
        print(f"\nCAS conflicts retried: {sum(result.final_output)}")
        assert (entry.value, entry.version) == (1000, 1000)


TRIGGERED = '''
    import asyncio
    from tagent_client import Pipeline

    pipeline = Pipeline("on_job", triggers=["jobs."], capabilities=["jobs"])

    @pipeline.task(final=True)
    async def handle(ctx):
        await asyncio.sleep(0.05)  # ok-sleep: the step's own work (or a yield), not a wait for something
        return {"i": ctx.trigger["data"]["i"], "topic": ctx.trigger["topic"]}
'''
LIMIT = 3
EVENTS = 100


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    points = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = peak = 0
    for _, delta in points:  # at equal times an end (-1) sorts before a start (+1)
        running += delta
        peak = max(peak, running)
    return peak


@pytest.mark.timeout(240)
def test_a_hundred_events_start_a_hundred_runs_never_more_than_the_limit_at_once(make_daemon: Any, tmp_path: Path) -> None:
    # Given a pipeline registered for "jobs." events, at most 3 triggered runs at once
    pipes = write_pipeline(tmp_path, "triggered.py", TRIGGERED)
    daemon = make_daemon(workers=2)
    daemon.env["TAGENTD_TRIGGER_MAX_CONCURRENT"] = str(LIMIT)
    daemon.start()
    registered = daemon.cli("submit", str(pipes))
    assert registered.returncode == 0 and registered.stdout.startswith("registered pipeline on_job"), registered
    with daemon.client(timeout=30) as client:
        # When 100 events are published (and one on another topic)
        for i in range(EVENTS):
            client.publish("jobs.new", {"i": i})
        client.publish("other.thing", {"i": -1})
        # Then 100 runs complete, one per event, never more than 3 at once
        def done() -> list[Any]:
            runs = [r for r in client.runs(limit=500) if r.pipeline == "on_job"]
            return runs if len(runs) == EVENTS and all(r.status == "completed" for r in runs) else []
        runs = wait_until(done, 180, interval=0.2, what="100 triggered runs to complete")
        details = [client.status(r.run_id) for r in runs]
        outputs = sorted(client.result(r.run_id).final_output["i"] for r in runs)
        assert outputs == list(range(EVENTS))
        peak = most_at_once([(d.created_at, d.finished_at) for d in details])
        print(f"\nmost triggered runs at once: {peak} (limit {LIMIT})")
        assert 1 <= peak <= LIMIT
        entry = client.pipelines("jobs")[0]
        assert entry.registered and entry.queued_triggers == 0 and entry.run_ids == []
        # And once unregistered, events start nothing
        assert daemon.cli("unregister", "on_job").returncode == 0
        assert client.publish("jobs.new", {"i": 999})["triggered"] == []


def cpu_seconds(pid: int) -> float:
    """The CPU seconds (user + system, all threads) process `pid` has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def publish_burst(client: Any, events: int, batch: int = 1000, daemon_pid: int | None = None) -> float:
    """Publish `events` events in batches; the seconds it took, or (with `daemon_pid`) the daemon's CPU seconds."""
    started = time.perf_counter() if daemon_pid is None else cpu_seconds(daemon_pid)
    for first in range(0, events, batch):
        client.publish_many([("burst.tick", {"i": i}) for i in range(first, min(events, first + batch))])
    return time.perf_counter() - started if daemon_pid is None else cpu_seconds(daemon_pid) - started


@pytest.mark.timeout(300)
def test_a_subscriber_that_never_reads_does_not_slow_a_publish_burst(make_daemon: Any, tmp_path: Path) -> None:
    daemon = make_daemon(workers=1).start()
    with daemon.client(timeout=60) as client:
        publish_burst(client, 100_000)  # warm-up
        # Given a subscriber to every event that never reads (a raw socket with a tiny receive queue)
        zctx = zmq.Context()
        stuck = zctx.socket(zmq.DEALER)
        stuck.rcvhwm = 10
        stuck.connect(paths.endpoint(daemon.runtime_dir, paths.EVENTS_SOCKET))
        stuck.send(msgspec.msgpack.encode(Subscribe(prefixes=[""])))
        wait_until(lambda: client.broker_stats().subscribers, 10, what="the subscriber to be registered")
        try:
            publish_burst(client, 120_000)  # it has stopped reading for a while: its queue is full
            # When 100,000 events are published with and without it (alternating, best of three each), each
            # burst measured by the daemon's CPU seconds: what the subscriber could cost it. (Wall time on a shared
            # machine measures the neighbours too: it failed under load. A daemon that waited for the subscriber
            # would not finish the burst at all.)
            with_sub, without_sub = [], []
            for _ in range(3):
                with_sub.append(publish_burst(client, 100_000, daemon_pid=daemon.pid))
                stuck.send(msgspec.msgpack.encode(Unsubscribe()))
                wait_until(lambda: not client.broker_stats().subscribers, 10, what="the subscriber to go")
                without_sub.append(publish_burst(client, 100_000, daemon_pid=daemon.pid))
                stuck.send(msgspec.msgpack.encode(Subscribe(prefixes=[""])))
                wait_until(lambda: client.broker_stats().subscribers, 10, what="the subscriber to come back")
            stats = client.broker_stats()
        finally:
            stuck.close(linger=0)
            zctx.term()
    # Then the burst costs the daemon about as much with it, and its losses are counted, not silent
    ratio = min(with_sub) / min(without_sub)
    print(f"\n100k-event burst: {min(without_sub):.2f} daemon CPU s without the stuck subscriber, {min(with_sub):.2f} "
          f"with it (x{ratio:.2f}); events dropped for it: {stats.counters['events_dropped']}")
    assert stats.counters["events_dropped"] >= 300_000
    assert ratio < 1.5

