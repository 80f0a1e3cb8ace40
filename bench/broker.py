#!/usr/bin/env python
"""Benchmark of the broker on a real tagentd: message round trips, durable messages, publish fan-out, spaces.

    python bench/broker.py [--quick]

Starts its own durable daemon (`python -m tagentd start --foreground --workers 2`) in private temp dirs,
and, in the same run, a raw pyzmq DEALER/ROUTER echo for the physical floor. Prints ONE JSON line on
stdout (details on stderr) and saves it to bench/results/broker-latest.json. bench/README.md explains
every number and its target.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))
import harness as base  # noqa: E402  (bench/harness.py: Cleanup, running_daemon, percentiles)
from raw_rtt import measure_raw_zmq  # noqa: E402  (bench/raw_rtt.py)

from tagent_client.client.sync import Client  # noqa: E402

say, percentile, CLEANUP = base.say, base.percentile, base.CLEANUP

TARGETS = {
    # issue 17: the durable round trip within 2 fsyncs + 6 raw round trips, the non-durable one within 5 raw
    "rtt_budget_used": {"max": 1.0},
    "rtt_not_durable_vs_raw_p50": {"max": 5.0},
    "durable_messages_per_s": {"min": 10_000},
    "publish_events_per_s_1_sub": {"min": 50_000},
    "publish_events_per_s_each_of_10_subs": {"min": 20_000},
}

PIPELINES = '''
import asyncio
import time
from tagent_client import Pipeline

ping = Pipeline("bench_ping")

@ping.task(final=True, timeout=600)
async def serve(ctx):
    n, durable, samples = ctx.params["n"], ctx.params.get("durable", True), []
    for i in range(n + 50):
        t0 = time.perf_counter()
        await ctx.send("bench_pong", i, durable=durable)
        await ctx.receive(timeout=30)  # acknowledged when the step succeeds
        if i >= 50:
            samples.append((time.perf_counter() - t0) * 1e6)
    await ctx.send("bench_pong", "stop")
    return samples

pong = Pipeline("bench_pong")

@pong.task(final=True, timeout=600)
async def answer(ctx):
    durable = ctx.params.get("durable", True)
    while True:
        message = await ctx.receive(timeout=30)
        if message.payload == "stop":
            return "stopped"
        await ctx.send("bench_ping", message.payload, durable=durable)

flood = Pipeline("bench_flood")

@flood.task(final=True, timeout=600)
async def send_many(ctx):
    n, window = ctx.params["n"], ctx.params["window"]
    t0 = time.perf_counter()
    for first in range(0, n, window):
        await asyncio.gather(*(ctx.send("bench_sink", i) for i in range(first, min(n, first + window))))
    return time.perf_counter() - t0

spaces = Pipeline("bench_space")

@spaces.task(final=True, timeout=600)
async def use_space(ctx):
    space, n = ctx.space("bench"), ctx.params["n"]
    puts, gets = [], []
    for i in range(n):
        t0 = time.perf_counter()
        await space.put(f"k{i % 100}", {"i": i})
        t1 = time.perf_counter()
        await space.get(f"k{i % 100}")
        gets.append((time.perf_counter() - t1) * 1e6)
        puts.append((t1 - t0) * 1e6)
    return {"puts": puts, "gets": gets}
'''

SUBSCRIBER = textwrap.dedent('''
    import sys, time, json, msgspec, zmq
    endpoint, expected, deadline_s = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    from tagent_client.wire.protocol_broker import Subscribe
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.rcvhwm = 0
    sock.connect(endpoint)
    sock.send(msgspec.msgpack.encode(Subscribe(prefixes=["bench."])))
    sock.recv()  # broker.subscribed
    print("ready", flush=True)
    got, first, last, dropped = 0, None, None, 0
    deadline = time.monotonic() + deadline_s
    renew = time.monotonic() + 2
    while got < expected and time.monotonic() < deadline:
        if sock.poll(200):
            while True:
                try:
                    frame = sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                for seq, ts, topic, data, *_ in msgspec.msgpack.decode(frame):
                    if topic == "broker.dropped":
                        dropped += data["dropped"]
                    else:
                        got += 1
                last = time.time()
                first = first or last
        if time.monotonic() > renew:
            sock.send(msgspec.msgpack.encode(Subscribe(prefixes=["bench."])))
            renew = time.monotonic() + 2
    print(json.dumps({"got": got, "first": first, "last": last, "dropped": dropped}), flush=True)
''')


def run_pipeline(client: Client, path: Path, name: str, params: dict[str, Any], timeout: float = 300) -> Any:
    handle = client.submit(f"{path}:{name}", params)
    result = client.wait(handle.id, timeout=timeout)
    if result.status != "completed":
        raise RuntimeError(f"{name} ended {result.status}: {result.error}")
    return result.final_output


def stats_us(samples: list[float], key: str) -> dict[str, float]:
    return {f"{key}_p50": round(percentile(samples, 50), 1), f"{key}_p99": round(percentile(samples, 99), 1)}


def measure_round_trip(client: Client, path: Path, n: int, durable: bool = True) -> dict[str, Any]:
    """ping step --message--> pong step --message--> ping step: a send and a receive each way (durable or not)."""
    pong = client.submit(f"{path}:bench_pong", {"durable": durable})
    samples = run_pipeline(client, path, "bench_ping", {"n": n, "durable": durable})
    client.wait(pong.id, timeout=60)
    out = stats_us(samples, "step_rtt_us" if durable else "step_rtt_not_durable_us")
    say(f"step -> step -> step round trip ({n}, durable={durable}): {out}")
    return out


def daemon_fsyncs(client: Client) -> tuple[float, int]:
    """The daemon's own broker-log fsyncs so far (from its metrics): total seconds, count."""
    found = {"sum": 0.0, "count": 0}
    for line in client.metrics().splitlines():
        for kind in found:
            if line.startswith(f'tagentd_wal_fsync_duration_seconds_{kind}{{log="broker"}}'):
                found[kind] = float(line.rsplit(" ", 1)[1])
    return found["sum"], int(found["count"])


def measure_durable_round_trip(client: Client, path: Path, n: int) -> dict[str, Any]:
    """`measure_round_trip`, and the mean of the fsyncs the daemon's broker log made meanwhile (and how many)."""
    seconds, count = daemon_fsyncs(client)
    out = measure_round_trip(client, path, n)
    seconds_after, count_after = daemon_fsyncs(client)
    fsyncs = max(1, count_after - count)
    out["daemon_fsync_us_mean"] = round((seconds_after - seconds) / fsyncs * 1e6, 1)
    out["daemon_fsyncs_per_round_trip"] = round(fsyncs / (n + 51), 2)
    return out


def measure_fsync(directory: Path, n: int) -> dict[str, Any]:
    """Append 200 bytes and fsync, `n` times, in a file of `directory` (the daemon's state dir): what one commit's
    fsync costs on that filesystem now (the same call the stores make, tagentd/storage/wal.py)."""
    path = directory / "bench-fsync.probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    samples = []
    try:
        for _ in range(n):
            os.write(fd, b"x" * 200)
            t0 = time.perf_counter()
            os.fsync(fd)
            samples.append((time.perf_counter() - t0) * 1e6)
    finally:
        os.close(fd)
        path.unlink()
    out = stats_us(samples, "fsync_us")
    say(f"fsync in the state dir ({n}): {out}")
    return out


def measure_durable_messages(client: Client, path: Path, n: int) -> dict[str, Any]:
    """One step sends to a mailbox, `window` sends in flight at a time; each is durable when its send returns."""
    out = {}
    for window, key, count in ((1, "durable_messages_per_s_sequential", n // 5),
                               (100, "durable_messages_per_s_window100", n),
                               (1000, "durable_messages_per_s", n)):
        took = run_pipeline(client, path, "bench_flood", {"n": count, "window": window})
        out[key] = round(count / took)
    out["sink_depth"] = sum(m.messages for m in client.mailboxes("bench_sink"))
    say(f"durable direct messages: {out}")
    return out


def cpu_ticks(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime + stime
    return total


def settle(daemon: Any, limit_s: float = 30.0) -> float:
    """Wait until the daemon and its workers are idle (the workers pre-import pydantic-ai after starting)."""
    started = time.perf_counter()
    last = cpu_ticks(daemon.pids())
    while time.perf_counter() - started < limit_s:
        time.sleep(0.5)
        now = cpu_ticks(daemon.pids())
        if now - last <= 2:  # at most 20 ms of CPU in half a second
            break
        last = now
    return time.perf_counter() - started


def measure_publish(daemon: Any, client: Client, events: int, subscribers: int, batch: int = 1000) -> dict[str, Any]:
    endpoint = f"ipc://{daemon.runtime_dir}/events.sock"
    procs = [subprocess.Popen([sys.executable, "-c", SUBSCRIBER, endpoint, str(events), "60"], env=daemon.env,
                              stdout=subprocess.PIPE, text=True, start_new_session=True) for _ in range(subscribers)]
    CLEANUP.procs.extend(procs)
    for proc in procs:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    t0 = time.time()
    for first in range(0, events, batch):
        client.publish_many([("bench.tick", i) for i in range(first, min(events, first + batch))])
    published = time.time() - t0
    results = [json.loads(proc.communicate(timeout=120)[0].splitlines()[-1]) for proc in procs]
    slowest = max((r["last"] or t0) for r in results) - t0
    got = min(r["got"] for r in results)
    out = {
        "events": events, "subscribers": subscribers, "publish_s": round(published, 3),
        "delivered_min": got, "dropped_total": sum(r["dropped"] for r in results),
        "events_per_s_each": round(got / slowest) if slowest > 0 else 0,
    }
    say(f"publish to {subscribers} subscriber(s): {out}")
    return out


def measure_spaces(client: Client, path: Path, n: int) -> dict[str, Any]:
    step = run_pipeline(client, path, "bench_space", {"n": n})
    space = client.space("bench_client")
    puts, gets = [], []
    for i in range(n):
        t0 = time.perf_counter()
        space.put(f"k{i % 100}", {"i": i})
        t1 = time.perf_counter()
        space.get(f"k{i % 100}")
        gets.append((time.perf_counter() - t1) * 1e6)
        puts.append((t1 - t0) * 1e6)
    out = {**stats_us(step["puts"], "step_space_put_us"), **stats_us(step["gets"], "step_space_get_us"),
           **stats_us(puts, "client_space_put_us"), **stats_us(gets, "client_space_get_us")}
    say(f"spaces: {out}")
    return out


def missed(result: dict[str, Any]) -> list[str]:
    out = []
    for key, rule in TARGETS.items():
        value = result.get(key)
        if value is None or ("max" in rule and value > rule["max"]) or ("min" in rule and value < rule["min"]):
            out.append(key)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations (smoke run)")
    parser.add_argument("--no-save", action="store_true", help="do not write bench/results/broker-latest.json")
    args = parser.parse_args(argv)
    scale = 0.2 if args.quick else 1.0
    started = time.perf_counter()
    result: dict[str, Any] = {"bench": "broker", "python": platform.python_version(), "cpu_count": os.cpu_count(),
                              "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                              "quick": args.quick, "load_avg_1m_before": round(os.getloadavg()[0], 2)}
    try:
        base.enable_bytecode_cache()
        with base.running_daemon("broker", durable=True) as daemon:
            daemon.start()
            say(f"daemon idle after {settle(daemon):.1f}s")
            path = daemon.root / "bench_pipelines.py"
            path.write_text(PIPELINES)
            with daemon.client(timeout=120) as client:
                # Raw round trip, durable round trip, fsync probe (on the state dir's filesystem), non-durable
                # round trip, three times in turn so that the load of the moment weighs on each alike; medians.
                rounds: dict[str, list[float]] = {}
                for _ in range(3):
                    for part in (measure_raw_zmq(int(1500 * scale)),
                                 measure_durable_round_trip(client, path, int(700 * scale)),
                                 measure_fsync(daemon.state_dir, int(100 * scale)),
                                 measure_round_trip(client, path, int(700 * scale), durable=False)):
                        for key, value in part.items():
                            rounds.setdefault(key, []).append(value)
                result.update({key: round(base.median(values), 1) for key, values in rounds.items()})
                result.update(measure_durable_messages(client, path, int(20_000 * scale)))
                one = measure_publish(daemon, client, int(100_000 * scale), 1)
                ten = measure_publish(daemon, client, int(50_000 * scale), 10)
                result.update(measure_spaces(client, path, int(2000 * scale)))
                stats = client.broker_stats()
        result["publish_events_per_s_1_sub"] = one["events_per_s_each"]
        result["publish_events_per_s_each_of_10_subs"] = ten["events_per_s_each"]
        result["publish_detail"] = {"one": one, "ten": ten}
        raw = result["raw_zmq_rtt_us_p50"]
        result["rtt_vs_raw_p50"] = round(result["step_rtt_us_p50"] / raw, 1)
        result["rtt_not_durable_vs_raw_p50"] = round(result["step_rtt_not_durable_us_p50"] / raw, 1)
        result["rtt_budget_us"] = round(2 * result["fsync_us_p50"] + 6 * raw, 1)
        result["rtt_budget_used"] = round(result["step_rtt_us_p50"] / result["rtt_budget_us"], 2)
        result["rtt_minus_2_fsyncs_vs_raw_p50"] = round((result["step_rtt_us_p50"] - 2 * result["fsync_us_p50"]) / raw, 1)
        result["daemon_counters"] = {k: v for k, v in stats.counters.items() if v}
    finally:
        CLEANUP.run()
    result["load_avg_1m_after"] = round(os.getloadavg()[0], 2)
    result["bench_s"] = round(time.perf_counter() - started, 1)
    result["targets"] = TARGETS
    result["missed_targets"] = missed(result)
    line = json.dumps(result)
    print(line)
    if not args.no_save and not args.quick:
        out = BENCH / "results" / "broker-latest.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(line + "\n")
    return 0


if __name__ == "__main__":
    base.entry(main)
