#!/usr/bin/env python
"""The same workloads on tagentd and on Ray local, in one run: the README's comparison, reproducible.

    python bench/peers.py [--reps 3] [--quick]

Workloads (client wall time, submit -> result, warm: one warm-up run each, then the median of `--reps`):

- `chain_s`: 200 steps, each depending on the previous one (tagentd: a durable daemon's pipeline of async
  no-op steps; Ray: 200 tasks, each taking the previous one's result);
- `fanout_s`: 1 -> 500 -> 1 (one step, 500 depending on it, one depending on all 500);
- `io_s`: 200 steps that each wait 0.5 s (tagentd: async steps run concurrently by the workers; Ray: an
  async actor with max_concurrency 200, since a task per wait would hold one of the 2 CPUs each);
- `ready_s`: a fresh process spawned -> first answered request (tagentd: `tagentd start --foreground`
  answering a ping; Ray: a script's `ray.init()` and a no-op task's result, on a new local cluster).

Both get 2 CPUs (tagentd: 2 workers; Ray: `num_cpus=2`, a new local cluster of its own: `address="local"`, so a
Ray cluster already running on the machine is neither used nor disturbed). Ray runs only if it is importable (`pip install ray`,
or the project's `ray` extra); otherwise its side is skipped and said so. Prints ONE JSON line (progress on
stderr) with each side's numbers and `ray_over_tagentd` (> 1: tagentd is faster).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))
import harness as base  # noqa: E402  (bench/harness.py: Cleanup, running_daemon)
from daemon import CHAIN_STEPS, FANOUT_WIDTH, IO_SLEEP, IO_STEPS, write_pipelines  # noqa: E402  (its workloads)

say, CLEANUP, median = base.say, base.CLEANUP, base.median
CHAIN, WIDTH, WAITS, WAIT_S = CHAIN_STEPS, FANOUT_WIDTH, IO_STEPS, IO_SLEEP

RAY_READY = """
import sys, time
import ray
ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
@ray.remote
def noop():
    return None
ray.get(noop.remote())
print("ready", flush=True)
sys.stdin.read()  # until the bench is done with us
ray.shutdown()
"""


def timed(fn: Any, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return round(median(times), 4)


def ready_of(argv: list[str], env: dict[str, str] | None = None) -> float:
    """Spawn `argv`, wait for its 'ready' line on stdout; seconds from the spawn."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
                            text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        took = time.perf_counter() - t0
        if line.strip() != "ready":
            raise RuntimeError(f"{argv[:3]} did not get ready (exit {proc.poll()})")
        return took
    finally:
        proc.communicate(timeout=60)


def tagentd_side(reps: int) -> dict[str, Any]:
    files = write_pipelines(CLEANUP.tempdir("tagentd-peers-pipelines-"))
    readies = []
    for i in range(reps):
        with base.running_daemon(f"peers-ready{i}", durable=True) as daemon:
            readies.append(daemon.start())
    out: dict[str, Any] = {"ready_s": round(median(readies), 4)}
    with base.running_daemon("peers", durable=True) as daemon:
        daemon.start()
        with daemon.client(timeout=120) as client:
            def run(name: str) -> Any:
                return lambda: client.wait(client.submit(files[name]).id, timeout=120)

            out["chain_s"] = timed(run("chain_async"), reps)
            out["fanout_s"] = timed(run("fanout"), reps)
            out["io_s"] = timed(run("io"), reps)
    say(f"tagentd: {out}")
    return out


def ray_side(reps: int) -> dict[str, Any]:
    import asyncio

    import ray

    readies = [ready_of([sys.executable, "-c", RAY_READY]) for _ in range(reps)]
    out: dict[str, Any] = {"ready_s": round(median(readies), 4), "version": ray.__version__}
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        @ray.remote
        def step(previous: Any = None) -> None:
            return None

        @ray.remote
        def join(*previous: Any) -> None:
            return None

        @ray.remote(max_concurrency=WAITS)
        class Waiter:
            async def wait(self) -> None:
                await asyncio.sleep(WAIT_S)

        def chain() -> None:
            ref = step.remote()
            for _ in range(CHAIN - 1):
                ref = step.remote(ref)
            ray.get(ref)

        def fanout() -> None:
            start = step.remote()
            ray.get(join.remote(*[step.remote(start) for _ in range(WIDTH)]))

        waiter = Waiter.remote()  # type: ignore[attr-defined]

        def io() -> None:
            ray.get([waiter.wait.remote() for _ in range(WAITS)])

        out["chain_s"] = timed(chain, reps)
        out["fanout_s"] = timed(fanout, reps)
        out["io_s"] = timed(io, reps)
    finally:
        ray.shutdown()
    say(f"ray: {out}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1 measured repetition")
    args = parser.parse_args(argv)
    reps = 1 if args.quick else args.reps
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    result: dict[str, Any] = {"bench": "peers", "workloads": {"chain": CHAIN, "fanout": WIDTH, "waits": WAITS}}
    try:
        base.enable_bytecode_cache()
        result["tagentd"] = tagentd_side(reps)
    finally:
        CLEANUP.run()
    if importlib.util.find_spec("ray") is None:
        say("ray is not installed: its side is skipped ('pip install ray' to compare)")
        result["ray"] = None
        result["skipped"] = "ray is not installed"
    else:
        result["ray"] = ray_side(reps)
        result["ray_over_tagentd"] = {k: round(result["ray"][k] / result["tagentd"][k], 2)
                                      for k in ("chain_s", "fanout_s", "io_s", "ready_s")}
    result.update(base.run_facts(load_before, started, args.quick))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    base.entry(main)
