#!/usr/bin/env python
"""Benchmark: how soon the FIRST agent step on a fresh worker starts, after `tagentd start` and after a worker
replacement; and what the idle daemon costs in memory.

    python bench/first_step.py [--reps N] [--quick]

Each repetition starts a real `tagentd start --foreground --workers 2` (private temp dirs, `[endpoints.bench]`
pointing at the scripted OpenAI-compatible server of tests/openai_server.py, run in a thread of this process):

- after_start_s: once `daemon_status` shows both workers `ready`, a one-agent-step pipeline is submitted; the
  measure is the model request's arrival at the server minus the step's `started_at` (the daemon's dispatch,
  from the run's own state). Everything a fresh worker must still do before its first model request is in it.
- after_replacement_s: then every worker is killed with SIGKILL; once both replacements are `ready`, the same
  pipeline is submitted again and measured the same way.
- workers_ready_s (informational): spawn of the daemon -> both workers `ready`.
- idle memory (first repetition): RSS, PSS and USS (Private_Clean + Private_Dirty of /proc/PID/smaps_rollup)
  of the daemon and every process under it, once they are idle (bench/harness.py's rule): `idle_*` before any
  step, `idle_after_agents_*` after both (replaced) workers ran an agent step. Forked workers share pages
  copy-on-write, which RSS counts once per process: PSS is what the machine pays.

Target: median after_start_s and after_replacement_s under 0.3 s. Prints ONE JSON line on stdout (progress on
stderr) and, unless --quick, writes it to bench/results/first-step-latest.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import signal
import statistics
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
for _p in (str(REPO), str(REPO / "client"), str(REPO / "tests"), str(BENCH)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import harness as base  # noqa: E402  (bench/harness.py)
from harness import CLEANUP, BenchDaemon, enable_bytecode_cache, entry, measure_rss, say  # noqa: E402
from openai_server import ScriptedServer, final_for  # noqa: E402  (tests/openai_server.py)

TARGET_S = 0.3
OUTPUT = {"name": "Acme", "founded": 1999}
RESULT_FILE = BENCH / "results" / "first-step-latest.json"

PIPELINE = textwrap.dedent("""
    from pydantic import BaseModel
    from tagent_client import Pipeline

    class Company(BaseModel):
        name: str
        founded: int

    pipeline = Pipeline("first_step")
    pipeline.step("find", goal="Find the company's founding year", output_schema=Company, model="bench:llama3",
                  max_retries=0)
""")

#: Two agent steps at once: one on each worker (the pool gives a step to the worker with the most free slots).
PAIR = PIPELINE.replace('"first_step"', '"pair"') + textwrap.dedent("""
    pipeline.step("also", goal="Find it too", output_schema=Company, model="bench:llama3", max_retries=0)
""")


def ready_workers(daemon: BenchDaemon, count: int, exclude: set[int], timeout: float = 60.0) -> list[int]:
    """Wait until `count` workers are ready, none of them in `exclude`; return their pids."""
    deadline = time.monotonic() + timeout
    with daemon.client(timeout=5.0) as client:
        while True:
            workers = client.daemon_status().workers
            pids = [w.pid for w in workers if w.state == "ready" and w.pid not in exclude]
            if len(pids) == count:
                return pids
            if time.monotonic() > deadline:
                raise RuntimeError(f"workers not ready after {timeout:g}s: {workers}")
            time.sleep(0.01)


def first_request_delay(daemon: BenchDaemon, server: ScriptedServer, pipeline: Path) -> float:
    """Submit the one-step agent pipeline; seconds from the step's dispatch to its model request at the server."""
    seen_before = len(server.requests)
    wall_minus_mono = time.time() - time.monotonic()
    with daemon.client() as client:
        handle = client.submit(pipeline)
        result = client.wait(handle.id, timeout=120)
        if not result.success:
            raise RuntimeError(f"run {handle.id} ended {result.status}: {result.error}")
        dispatched = result.step_metadata["find"]["started_at"]
    arrived = server.requests[seen_before].at + wall_minus_mono
    return arrived - dispatched


def one_rep(rep: int, server: ScriptedServer, out: dict[str, Any]) -> dict[str, float]:
    root = CLEANUP.tempdir(f"tagentd-bench-first-{rep}-")
    config = root / "config" / "tagentd" / "tagentd.toml"
    config.parent.mkdir(parents=True)
    config.write_text(f'[endpoints.bench]\nbase_url = "{server.base_url}"\n')
    pipeline = root / "first_step.py"
    pipeline.write_text(PIPELINE)
    daemon = BenchDaemon(root, durable=True)
    began = time.perf_counter()
    daemon.start()
    try:
        first = ready_workers(daemon, base.WORKERS, set())
        ready_s = time.perf_counter() - began
        if rep == 0:
            out.update(idle_memory(daemon))
        after_start = first_request_delay(daemon, server, pipeline)
        for pid in first:
            os.kill(pid, signal.SIGKILL)
        ready_workers(daemon, base.WORKERS, set(first))
        after_replacement = first_request_delay(daemon, server, pipeline)
        if rep == 0:
            pair = root / "pair.py"
            pair.write_text(PAIR)
            with daemon.client() as client:
                if not client.wait(client.submit(pair).id, timeout=120).success:
                    raise RuntimeError("the two-agent-step run failed")
            out.update({f"{key.replace('idle_', 'idle_after_agents_')}": value
                        for key, value in idle_memory(daemon).items()})
    finally:
        daemon.stop()
    say(f"  rep {rep}: workers ready after {ready_s:.2f} s; first agent step {after_start * 1000:.0f} ms after "
        f"dispatch; after replacing the workers {after_replacement * 1000:.0f} ms")
    return {"after_start_s": after_start, "after_replacement_s": after_replacement, "workers_ready_s": ready_s}


def idle_memory(daemon: BenchDaemon) -> dict[str, Any]:
    """RSS / PSS / USS in MB of the daemon and every process under it, once idle."""
    measure_rss(daemon)  # waits for idle (and prints per-process RSS)
    pids = daemon.pids()
    rss = sum(base.rss_kb(pid) for pid in pids)
    pss = sum(base.pss_kb(pid) for pid in pids)
    uss = sum(base.proc_kb(pid, "Private_Clean", "smaps_rollup")
              + base.proc_kb(pid, "Private_Dirty", "smaps_rollup") for pid in pids)
    say(f"  idle: {len(pids)} processes, RSS {rss / 1024:.1f} MB, PSS {pss / 1024:.1f} MB, USS {uss / 1024:.1f} MB")
    return {"idle_processes": len(pids), "idle_rss_mb": round(rss / 1024, 1), "idle_pss_mb": round(pss / 1024, 1),
            "idle_uss_mb": round(uss / 1024, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5, help="daemons started and measured (default 5)")
    parser.add_argument("--quick", action="store_true", help="2 repetitions, result not recorded")
    args = parser.parse_args(argv)
    reps = 2 if args.quick else args.reps
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    out: dict[str, Any] = {"bench": "first_step"}
    samples: list[dict[str, float]] = []
    try:
        enable_bytecode_cache()
        with ScriptedServer(default=final_for(OUTPUT)) as server:
            say(f"scripted server at {server.base_url}; {reps} daemons")
            for rep in range(reps):
                samples.append(one_rep(rep, server, out))
    finally:
        CLEANUP.run()
    for key in ("after_start_s", "after_replacement_s", "workers_ready_s"):
        out[key] = round(statistics.median(s[key] for s in samples), 3)
        out[f"{key}_max"] = round(max(s[key] for s in samples), 3)
    out.update({
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "reps": reps,
        "target_s": TARGET_S,
        "met_target": out["after_start_s"] < TARGET_S and out["after_replacement_s"] < TARGET_S,
        "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "bench_s": round(time.perf_counter() - started, 1),
    })
    line = json.dumps(out)
    print(line)
    if not args.quick:
        RESULT_FILE.parent.mkdir(parents=True, exist_ok=True)
        RESULT_FILE.write_text(line + "\n")
    return 0


if __name__ == "__main__":
    entry(main)
