#!/usr/bin/env python
"""Benchmark: what tagentd adds to an agent step, against calling the same pydantic-ai agent directly.

    python bench/agent.py [--steps N] [--quick] [--no-save]

Both sides talk to the scripted OpenAI-compatible server of tests/openai_server.py
(127.0.0.1, in a process of its own, so it does not share a GIL with either side),
which answers every request at once with a valid structured output, so one agent
step = one model request.

- direct: one pydantic-ai Agent (OpenAIChatModel on the server, output type, system
  prompt), reused, `await agent.run(prompt)` N times in this process; per-run wall time.
- daemon: a real `tagentd --workers 2` whose `[endpoints.bench]` points at the server;
  a pipeline of N agent steps in a chain (each depends on the previous). Per step:
  finished_at(step i) - finished_at(step i-1) from the run's own state (daemon clock),
  i.e. dispatch, the worker building the agent, the request, the result's trip back,
  the commit and the next dispatch.
- daemon_limited: the same with `max_concurrent` set, so every request also takes a
  permit from the daemon (one more round trip to it per request).
- noop_chain: in the same (plain) daemon, the same chain of async no-op function steps returning
  the same output: what the daemon <-> worker hand-off alone costs a step, measured in this run.
- daemon_quiet: the plain daemon's agent chain again, each run waited for by asking its status every
  0.25 s instead of `client.wait` (a long poll answered at each step's events): the same step without
  the benchmark's own per-step load on the daemon.
- paired: the plain daemon's agent chain once more, each measured run right after `steps` direct runs in this
  process: overhead_paired_ms is each run's p50 minus its direct batch's p50 (both sides measured within the same
  second or two, where the direct p50 alone drifts by 1-2 ms between the start and the end of this script on a
  shared machine), overhead_paired_median_ms their median.

overhead = p50(daemon) - p50(direct); target: at most 1 ms (issue 17). agent_specific = overhead -
p50(noop_chain): what an agent step adds beyond a no-op step and the direct pydantic-ai work. CPU per
step (daemon, workers) and per direct run: steadier than wall time on a busy machine. Prints ONE JSON
line on stdout (progress on stderr) and writes it to bench/results/agent-latest.json (not with --quick or
--no-save).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
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

from harness import CLEANUP, BenchDaemon, child_env, cpu_ticks, enable_bytecode_cache, entry, say  # noqa: E402  (bench/harness.py)

TARGET_MS = 1.0  # issue 17
OUTPUT = {"name": "Acme", "founded": 1999}
RESULT_FILE = BENCH / "results" / "agent-latest.json"


def pipeline_source(steps: int) -> str:
    return textwrap.dedent(f"""
        from pydantic import BaseModel
        from tagent_client import Pipeline

        class Company(BaseModel):
            name: str
            founded: int

        pipeline = Pipeline("agent_chain", max_concurrent_steps=4)
        previous = None
        for i in range({steps}):
            name = f"s{{i:03d}}"
            pipeline.step(name, goal="Find the company's founding year", output_schema=Company,
                          model="bench:llama3", depends_on=[previous] if previous else None, max_retries=0)
            previous = name
    """)


def noop_source(steps: int) -> str:
    """The agent chain's shape with async no-op function steps returning the model's output."""
    return textwrap.dedent(f"""
        from tagent_client import Pipeline

        async def noop(ctx):
            return {OUTPUT!r}

        pipeline = Pipeline("noop_chain", max_concurrent_steps=4)
        previous = None
        for i in range({steps}):
            name = f"s{{i:03d}}"
            pipeline.step(name, fn=noop, depends_on=[previous] if previous else None, max_retries=0)
            previous = name
    """)


def p50(values: list[float]) -> float:
    return statistics.median(values)


def start_server() -> str:
    """tests/openai_server.py in its own process; returns its base URL (it stops when its stdin closes)."""
    proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "openai_server.py"), json.dumps(OUTPUT)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=child_env(), text=True,
                            start_new_session=True)
    CLEANUP.procs.append(proc)
    assert proc.stdout is not None
    return proc.stdout.readline().strip()


class DirectAgent:
    """The same agent step as pydantic-ai called directly: one Agent, reused, on an event loop of its own that
    stays open between batches (so batches can alternate with the daemon's chain runs)."""

    def __init__(self, base_url: str) -> None:
        from pydantic import BaseModel
        from pydantic_ai import Agent
        from pydantic_ai.models.openai import OpenAIChatModel
        from pydantic_ai.providers.openai import OpenAIProvider

        class Company(BaseModel):
            name: str
            founded: int

        self.loop = asyncio.new_event_loop()
        provider = OpenAIProvider(base_url=base_url, api_key="k")
        provider.client.max_retries = 0  # no SDK retries, set on the client as the worker's models do (no copy per request)
        model = OpenAIChatModel("llama3", provider=provider)
        self.agent = Agent(model, output_type=Company, system_prompt="You are one step of a pipeline. Goal: find it.")
        self.prompt = json.dumps({"inputs": {"previous": OUTPUT}, "shared": {}, "params": {}}, indent=1)
        self.run(10)  # warm-up: connections, schemas, caches

    def run(self, runs: int) -> tuple[list[float], float]:
        """Wall time of each of `runs` direct runs, and this process's CPU seconds per run."""
        async def go() -> tuple[list[float], float]:
            times = []
            cpu = time.process_time()
            for _ in range(runs):
                t0 = time.perf_counter()
                await self.agent.run(self.prompt)
                times.append(time.perf_counter() - t0)
            return times, (time.process_time() - cpu) / runs

        return self.loop.run_until_complete(go())

    def close(self) -> None:
        self.loop.close()


QUIET_POLL_S = 0.25  # how often a quiet wait asks for the run's status


def quiet_wait(client: Any, run_id: str, timeout: float) -> Any:
    """The run's result once it has finished, found by asking its status every QUIET_POLL_S seconds: unlike
    `client.wait` (a long poll the daemon answers at each step's events, then asked again), it costs the
    daemon nothing per step."""
    deadline = time.monotonic() + timeout
    while client.status(run_id).finished_at is None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"run {run_id} did not finish within {timeout}s")
        time.sleep(QUIET_POLL_S)
    return client.result(run_id)


def chain_gaps(client: Any, pipeline: Path, steps: int, reps: int, label: str, warm_up: bool = True,
               quiet: bool = False) -> list[float]:
    """Submit `pipeline` reps times (and once more first, as a warm-up: imports, model and schema caches, unless
    `warm_up` is False); the measured runs' gaps between step ends. `quiet`: wait with `quiet_wait`."""
    gaps: list[float] = []
    first = 0 if warm_up else 1
    for rep in range(first, reps + 1):
        handle = client.submit(pipeline)
        result = quiet_wait(client, handle.id, 300) if quiet else client.wait(handle.id, timeout=300)
        if not result.success:
            raise RuntimeError(f"{label} run {handle.id} ended {result.status}: {result.error}")
        ends = [result.step_metadata[f"s{i:03d}"]["finished_at"] for i in range(steps)]
        starts = [result.step_metadata["s000"]["started_at"], *ends[:-1]]
        run_gaps = [end - start for start, end in zip(starts, ends, strict=True)]
        say(f"  {label} run {rep}: p50 {p50(run_gaps) * 1000:.2f} ms/step ({'warm-up' if rep == 0 else 'measured'})")
        if rep:
            gaps += run_gaps
    return gaps


def measure_daemon(base_url: str, steps: int, reps: int, limited: bool, direct: DirectAgent | None = None
                   ) -> dict[str, Any]:
    """The agent chain's gaps, the daemon's and the workers' CPU seconds per measured step, and (plain daemon
    only) the no-op chain's gaps. With `direct`: also `paired`, each measured chain run's p50 gap minus the p50 of
    `steps` direct runs made just before it (so both sides of each difference see the machine in the same state)."""
    label = "limited" if limited else "plain"
    root = CLEANUP.tempdir(f"tagentd-bench-agent-{label}-")
    config = root / "config" / "tagentd" / "tagentd.toml"
    config.parent.mkdir(parents=True)
    extra = "max_concurrent = 8\n" if limited else ""
    config.write_text(f'[endpoints.bench]\nbase_url = "{base_url}"\n{extra}')
    pipeline = root / "chain.py"
    pipeline.write_text(pipeline_source(steps))
    noop = root / "noop_chain.py"
    noop.write_text(noop_source(steps))
    daemon = BenchDaemon(root, durable=True)
    daemon.start()
    try:
        with daemon.client() as client:
            out: dict[str, Any] = {}
            if not limited:
                out["noop"] = chain_gaps(client, noop, steps, reps, "no-op chain")
            chain_gaps(client, pipeline, steps, 0, f"daemon ({label})")  # the warm-up, outside the CPU count
            pids = daemon.pids()  # the daemon, the worker template, the workers
            before = [cpu_ticks(pid) for pid in pids]
            out["gaps"] = chain_gaps(client, pipeline, steps, reps, f"daemon ({label})", warm_up=False)
            ticks = [cpu_ticks(pid) - b for pid, b in zip(pids, before, strict=True)]
            per_step = 1 / os.sysconf("SC_CLK_TCK") / (steps * reps)
            out["daemon_cpu"], out["workers_cpu"] = ticks[0] * per_step, sum(ticks[1:]) * per_step
            if not limited:  # the same runs again, waited for without a long poll per step
                before = [cpu_ticks(pid) for pid in pids]
                out["quiet"] = chain_gaps(client, pipeline, steps, reps, f"daemon ({label}, quiet wait)", warm_up=False,
                                          quiet=True)
                ticks = [cpu_ticks(pid) - b for pid, b in zip(pids, before, strict=True)]
                out["daemon_cpu_quiet"] = ticks[0] * per_step
            if direct is not None:
                out["paired"] = []
                for rep in range(1, reps + 1):
                    direct_times, _ = direct.run(steps)
                    gaps = chain_gaps(client, pipeline, steps, 1, f"daemon ({label}, paired {rep})", warm_up=False)
                    out["paired"].append(p50(gaps) - p50(direct_times))
            return out
    finally:
        daemon.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--steps", type=int, default=100, help="agent steps per chain run (default 100)")
    parser.add_argument("--reps", type=int, default=3, help="measured chain runs per daemon (default 3)")
    parser.add_argument("--quick", action="store_true", help="30 steps, 1 measured run")
    parser.add_argument("--no-save", action="store_true", help="do not write bench/results/agent-latest.json")
    args = parser.parse_args(argv)
    steps, reps = (30, 1) if args.quick else (args.steps, args.reps)
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    try:
        enable_bytecode_cache()
        base_url = start_server()
        say(f"scripted server at {base_url}; direct pydantic-ai agent: {steps * reps} runs")
        agent = DirectAgent(base_url)
        try:
            direct, direct_cpu = agent.run(steps * reps)
            say(f"  direct: p50 {p50(direct) * 1000:.2f} ms")
            plain = measure_daemon(base_url, steps, reps, limited=False, direct=agent)
            limited = measure_daemon(base_url, steps, reps, limited=True)
        finally:
            agent.close()
    finally:
        CLEANUP.run()
    out: dict[str, Any] = {
        "bench": "agent",
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "steps": steps,
        "reps": reps,
        "direct_p50_ms": round(p50(direct) * 1000, 2),
        "daemon_p50_ms": round(p50(plain["gaps"]) * 1000, 2),
        "daemon_limited_p50_ms": round(p50(limited["gaps"]) * 1000, 2),
        "overhead_p50_ms": round((p50(plain["gaps"]) - p50(direct)) * 1000, 2),
        "overhead_limited_p50_ms": round((p50(limited["gaps"]) - p50(direct)) * 1000, 2),
        "noop_chain_p50_ms": round(p50(plain["noop"]) * 1000, 2),
        "agent_specific_p50_ms": round((p50(plain["gaps"]) - p50(direct) - p50(plain["noop"])) * 1000, 2),
        "daemon_quiet_p50_ms": round(p50(plain["quiet"]) * 1000, 2),
        "overhead_quiet_p50_ms": round((p50(plain["quiet"]) - p50(direct)) * 1000, 2),
        "overhead_paired_ms": [round(d * 1000, 2) for d in plain["paired"]],
        "overhead_paired_median_ms": round(p50(plain["paired"]) * 1000, 2),
        "daemon_cpu_quiet_ms_per_step": round(plain["daemon_cpu_quiet"] * 1000, 2),
        "direct_cpu_ms": round(direct_cpu * 1000, 2),
        "workers_cpu_ms_per_step": round(plain["workers_cpu"] * 1000, 2),
        "daemon_cpu_ms_per_step": round(plain["daemon_cpu"] * 1000, 2),
        "workers_cpu_limited_ms_per_step": round(limited["workers_cpu"] * 1000, 2),
        "daemon_cpu_limited_ms_per_step": round(limited["daemon_cpu"] * 1000, 2),
        "target_overhead_ms": TARGET_MS,
        "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "bench_s": round(time.perf_counter() - started, 1),
    }
    out["met_target"] = out["overhead_p50_ms"] <= TARGET_MS and out["overhead_limited_p50_ms"] <= TARGET_MS
    line = json.dumps(out)
    print(line)
    if not args.quick and not args.no_save:
        RESULT_FILE.parent.mkdir(parents=True, exist_ok=True)
        RESULT_FILE.write_text(line + "\n")
    return 0


if __name__ == "__main__":
    entry(main)
