#!/usr/bin/env python
"""Benchmark of a real tagentd: scheduling overhead, fan-out, I/O concurrency, CLI latency, start-up, memory, recovery.

    python bench/daemon.py [--durable both|on|off] [--quick]

Starts its own daemon(s) (`python -m tagentd start --foreground --workers 2 [--no-durable]`) in private
temp dirs, measures, stops them with SIGTERM and removes the temp dirs — also on error or Ctrl-C.
Prints ONE JSON line on stdout; progress and details go to stderr. bench/README.md explains every number.

Owns the daemon workloads: their sizes and targets, the pipeline files (`write_pipelines`), the chain, fan-out, I/O,
CLI and recovery measurements (with `generate_state`, the recovery state dir, and `LOAD_TIMER`), and this script's
main. Other scripts reuse some of them; what every script shares is in bench/harness.py, the raw round trips in
bench/raw_rtt.py.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import harness  # for harness.PYCACHE, which enable_bytecode_cache sets at run time (a from-import would copy None)
from harness import (
    CLEANUP,
    BenchDaemon,
    child_env,
    cli_argv,
    enable_bytecode_cache,
    entry,
    measure_rss,
    median,
    repeat,
    run_facts,
    running_daemon,
    say,
)
from raw_rtt import ZMQ_ROUND_TRIPS, measure_raw_unix, measure_raw_zmq

from tagent_client.client.sync import Client

CHAIN_STEPS = 200
FANOUT_WIDTH = 500
FANOUT_WIDE = 5_000
IO_STEPS = 200
IO_SLEEP = 0.5
RECOVERY_FINISHED = 10_000
RECOVERY_UNFINISHED = 100
RECOVERY_PIPELINE_STEPS = 5

TARGETS = {
    "chain_ms_per_step": {"max": 1.5},
    "chain_ms_per_step_nodurable": {"max": 1.0},
    "chain_vs_raw_rtt": {"max": 3.0},  # chain_ms_per_step / raw_zmq_rtt_us_p50 of the same run (issue 17)
    "fanout_steps_per_s": {"min": 15000},
    "fanout_steps_per_s_nodurable": {"min": 15000},
    "fanout_5000_steps_per_s": {"min": 15000},
    "fanout_5000_steps_per_s_nodurable": {"min": 15000},
    "io_wall_s": {"max": 0.51},
    "io_wall_s_nodurable": {"max": 0.51},
    "ready_s": {"max": 0.5},
    "pss_mb": {"max": 150},  # PSS, not RSS: forked workers share the worker template's pages
    "cli_runs_ms": {"max": 150},
    "cli_status_ms": {"max": 150},
    "cli_runs_ms_nodurable": {"max": 150},
    "cli_status_ms_nodurable": {"max": 150},
    "recovery_s": {"max": 2.0},
    "recovery_ready_s": {"max": 2.0},
}


# -- pipeline files (generated into the temp dir) --------------------------------------------------------


def write_pipelines(directory: Path) -> dict[str, Path]:
    header = "import asyncio\nfrom tagent_client import ExecutionMode, Pipeline\n\n"
    sources = {
        "chain_async": f"""
            async def noop():
                return None

            pipeline = Pipeline("bench_chain_async")
            for i in range({CHAIN_STEPS}):
                pipeline.step(f"s{{i:03d}}", fn=noop, depends_on=[f"s{{i - 1:03d}}"] if i else None)
        """,
        "chain_sync": f"""
            def noop():
                return None

            pipeline = Pipeline("bench_chain_sync")
            for i in range({CHAIN_STEPS}):
                pipeline.step(f"s{{i:03d}}", fn=noop, depends_on=[f"s{{i - 1:03d}}"] if i else None)
        """,
        "fanout": f"""
            async def noop():
                return None

            pipeline = Pipeline("bench_fanout", max_concurrent_steps={FANOUT_WIDTH + 12})
            pipeline.step("start", fn=noop)
            for i in range({FANOUT_WIDTH}):
                pipeline.step(f"f{{i:03d}}", fn=noop, depends_on=["start"], execution_mode=ExecutionMode.CONCURRENT)
            pipeline.step("end", fn=noop, depends_on=[f"f{{i:03d}}" for i in range({FANOUT_WIDTH})])
        """,
        "fanout_wide": f"""
            async def noop():
                return None

            pipeline = Pipeline("bench_fanout_wide", max_concurrent_steps={FANOUT_WIDE + 12})
            pipeline.step("start", fn=noop)
            for i in range({FANOUT_WIDE}):
                pipeline.step(f"f{{i:04d}}", fn=noop, depends_on=["start"], execution_mode=ExecutionMode.CONCURRENT)
            pipeline.step("end", fn=noop, depends_on=[f"f{{i:04d}}" for i in range({FANOUT_WIDE})])
        """,
        "io": f"""
            async def wait():
                await asyncio.sleep({IO_SLEEP})

            pipeline = Pipeline("bench_io", max_concurrent_steps={IO_STEPS})
            for i in range({IO_STEPS}):
                pipeline.step(f"w{{i:03d}}", fn=wait, execution_mode=ExecutionMode.CONCURRENT)
        """,
        "recovery": f"""
            def work(ctx):
                return {{"step": ctx.step_name, "text": "x" * 100}}

            pipeline = Pipeline("bench_recovery")
            for i in range({RECOVERY_PIPELINE_STEPS}):
                pipeline.step(f"r{{i}}", fn=work, depends_on=[f"r{{i - 1}}"] if i else None)
        """,
    }
    paths = {}
    for name, body in sources.items():
        path = directory / f"bench_{name}.py"
        path.write_text(header + textwrap.dedent(body).lstrip())
        paths[name] = path
    return paths


# -- measurements -----------------------------------------------------------------------------------------


def measure_chain(client: Client, files: dict[str, Path], reps: int) -> dict[str, Any]:
    run_id, times = repeat(client, files["chain_async"], reps)
    _, sync_times = repeat(client, files["chain_sync"], reps)
    return {
        "chain_ms_per_step": round(median(times) * 1000 / CHAIN_STEPS, 3),
        "chain_sync_ms_per_step": round(median(sync_times) * 1000 / CHAIN_STEPS, 3),
        "_chain_run_id": run_id,
    }


def measure_fanout(client: Client, files: dict[str, Path], reps: int) -> dict[str, Any]:
    _, times = repeat(client, files["fanout"], reps)
    _, wide = repeat(client, files["fanout_wide"], reps)
    return {"fanout_steps_per_s": round((FANOUT_WIDTH + 2) / median(times), 1),
            "fanout_5000_steps_per_s": round((FANOUT_WIDE + 2) / median(wide), 1)}


def measure_io(client: Client, files: dict[str, Path], reps: int) -> dict[str, Any]:
    _, times = repeat(client, files["io"], reps)
    return {"io_wall_s": round(median(times), 3)}


def measure_cli(daemon: BenchDaemon, run_id: str, reps: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, args in (("cli_runs_ms", ["runs"]), ("cli_status_ms", ["status", run_id])):
        times = []
        for i in range(reps + 1):
            t0 = time.perf_counter()
            proc = subprocess.run([*cli_argv(), *args], env=daemon.env, capture_output=True, text=True, timeout=60)
            elapsed = time.perf_counter() - t0
            if proc.returncode != 0:
                raise RuntimeError(f"tagent {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}")
            if i:  # the first one is the warm-up (disk cache, .pyc)
                times.append(elapsed)
        out[key] = round(median(times) * 1000, 1)
        say(f"  tagent {args[0]}: {', '.join(f'{t * 1000:.0f}' for t in times)} ms")
    return out


def measure_daemon(durable: bool, files: dict[str, Path], reps: int, cli_reps: int, out: dict[str, Any]) -> None:
    """Start one daemon and fill `out` metric by metric (what was measured before a failure is kept)."""
    label = "durable" if durable else "nodurable"
    say(f"daemon ({label}): starting")
    with running_daemon(label, durable=durable) as daemon:
        ready = daemon.start()
        say(f"  ready in {ready * 1000:.0f} ms")
        out["ready_s"] = round(ready, 3)
        out.update(measure_rss(daemon))
        with daemon.client() as client:
            chain = measure_chain(client, files, reps)
            run_id = chain.pop("_chain_run_id")
            out.update(chain)
            out.update(measure_fanout(client, files, reps))
            out.update(measure_io(client, files, reps))
        out.update(measure_cli(daemon, run_id, cli_reps))
    say(f"daemon ({label}): {out}")


# -- recovery ---------------------------------------------------------------------------------------------


def load_plan(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(f"bench_plan_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.pipeline.plan()


def generate_state(state_dir: Path, pipeline_file: Path, finished: int, unfinished: int) -> dict[str, Any]:
    """Fill `state_dir` through the store API: `finished` runs with snapshots, `unfinished` runs only in the WAL.

    Finished runs are written as the daemon writes them (Created, then Deltas; the flush that sees a run finish
    writes its .ckpt); then the WAL is dropped, as compaction would once every run in it is snapshotted. The
    unfinished runs (2 of 5 steps done, the 3rd running) go into a fresh WAL segment and nowhere else.
    """
    import hashlib

    from tagent_client.core.engine import RunMachine
    from tagent_client.core.events import Dispatch, Emit, StepSucceeded
    from tagent_client.core.state import new_run_id
    from tagentd.runs.durable import DurableStore
    from tagentd.runs.run import Run, RunSource

    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    plan = load_plan(pipeline_file)
    text = pipeline_file.read_text()
    source = RunSource(path=str(pipeline_file), source=text, source_hash=hashlib.sha256(text.encode()).hexdigest())
    store = DurableStore(state_dir)
    base = time.time() - 86_400
    counter = iter(range(10**9))

    def new_run() -> tuple[Run, list[Any]]:
        k = next(counter)
        now = base + k * 0.002  # run ids carry milliseconds: keep them distinct
        machine = RunMachine.new(plan, new_run_id(now), params={"n": k}, now=now)
        run = Run(source, plan, machine)
        run.audit(f"uid={os.getuid()} pid={os.getpid()}", "submit", path=source.path, target=None)
        store.created(run)
        return run, apply(run, machine.start(now), now)

    def apply(run: Run, actions: list[Any], now: float) -> list[Dispatch]:
        dispatched = []
        for action in actions:
            if isinstance(action, Emit):
                run.add_event(action.topic, action.data, now)
            elif isinstance(action, Dispatch):
                dispatched.append(action)
        store.changed(run)
        return dispatched

    def advance(run: Run, pending: list[Dispatch], steps: int) -> list[Dispatch]:
        for _ in range(steps):
            task = pending.pop(0)
            now = run.state.started_at + 0.01 * task.attempt
            event = StepSucceeded(task=task.task, attempt=task.attempt, output={"step": task.step, "text": "x" * 100},
                                  started_at=now)
            pending.extend(apply(run, run.machine.handle(event, now), now))
        return pending

    async def write() -> None:
        batch = 200
        for start in range(0, finished, batch):
            runs = [new_run() for _ in range(min(batch, finished - start))]
            await store.flush()  # Created records
            for run, pending in runs:
                advance(run, pending, RECOVERY_PIPELINE_STEPS)
                assert run.finished, run.state.status
            await store.flush()  # Deltas + the final snapshots
        store.close()
        for segment in (state_dir / "wal").glob("*.wal"):  # compaction: every run in them has its snapshot
            segment.unlink()
        for _ in range(unfinished):
            run, pending = new_run()
            advance(run, pending, 2)
            await store.flush()
        store.close()

    t0 = time.perf_counter()
    asyncio.run(write())
    ckpts = len(list((state_dir / "runs").glob("*.ckpt")))
    wal_bytes = sum(p.stat().st_size for p in (state_dir / "wal").glob("*.wal"))
    ckpt_bytes = sum(p.stat().st_size for p in (state_dir / "runs").glob("*.ckpt"))
    info = {"seconds": round(time.perf_counter() - t0, 1), "ckpt_files": ckpts, "ckpt_mb": round(ckpt_bytes / 2**20, 1),
            "wal_kb": round(wal_bytes / 1024, 1)}
    say(f"  generated state: {info}")
    if ckpts != finished:
        raise RuntimeError(f"expected {finished} snapshots, found {ckpts}")
    return info


LOAD_TIMER = """
import json, sys, time
t0 = time.perf_counter()
from tagentd.runs.durable import DurableStore
t1 = time.perf_counter()
recovered = DurableStore(sys.argv[1]).load()
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "runs": len(recovered.entries),
                  "unfinished": sum(1 for r in recovered.runs if not r.finished)}))
"""


def measure_recovery(files: dict[str, Path], finished: int, unfinished: int, reps: int, out: dict[str, Any]) -> None:
    """Fill `out` with recovery_s (store load in a fresh process) and then recovery_ready_s (daemon start)."""
    say(f"recovery: generating {finished} finished + {unfinished} unfinished runs")
    root = CLEANUP.tempdir("tagentd-bench-recovery-")
    state_dir = root / "state"
    generated = generate_state(state_dir, files["recovery"], finished, unfinished)
    loads = []
    for _ in range(reps):
        proc = subprocess.run([sys.executable, "-c", LOAD_TIMER, str(state_dir)], env=child_env(), capture_output=True,
                              text=True, timeout=300, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"load timer failed: {proc.stderr[-2000:]}")
        loads.append(json.loads(proc.stdout))
    if loads[0]["runs"] != finished + unfinished or loads[0]["unfinished"] != unfinished:
        raise RuntimeError(f"load found {loads[0]} instead of {finished} + {unfinished} runs")
    load_times = ", ".join(f"{x['load_s']:.2f}" for x in loads)
    say(f"  DurableStore.load(): {load_times} s (import {loads[0]['import_s']:.2f} s)")
    out["recovery_s"] = round(median([x["load_s"] for x in loads]), 3)
    out["recovery_runs"] = {"finished": finished, "unfinished": unfinished, "generate_s": generated["seconds"],
                            "ckpt_mb": generated["ckpt_mb"]}
    with running_daemon("recovery", durable=True, state_dir=state_dir) as daemon:
        ready = daemon.start(timeout=60)
        say(f"  daemon on that state dir answered in {ready:.2f} s")
    out["recovery_ready_s"] = round(ready, 3)


# -- main -------------------------------------------------------------------------------------------------


def missed(result: dict[str, Any]) -> list[str]:
    out = []
    for key, target in TARGETS.items():
        value = result.get(key)
        if value is None:
            continue
        if ("max" in target and value >= target["max"]) or ("min" in target and value <= target["min"]):
            bound = f"< {target['max']}" if "max" in target else f"> {target['min']}"
            out.append(f"{key}={value} (target {bound})")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--durable", choices=["both", "on", "off"], default="both",
                        help="measure with durability on, off, or both (default)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer repetitions, a smaller recovery set")
    parser.add_argument("--no-bytecode-cache", action="store_true",
                        help="run children as the environment says (PYTHONDONTWRITEBYTECODE=1 means no .pyc: slower starts)")
    args = parser.parse_args(argv)
    reps, cli_reps, load_reps = (1, 2, 1) if args.quick else (3, 7, 3)
    finished, unfinished = (1_000, 10) if args.quick else (RECOVERY_FINISHED, RECOVERY_UNFINISHED)

    t_start = time.perf_counter()
    load_before = os.getloadavg()[0]
    result: dict[str, Any] = {}
    errors: dict[str, str] = {}

    def section(name: str, fn: Callable[..., Any], *fn_args: Any) -> Any:
        """Run one part of the benchmark; a failure is reported and recorded, and the rest still runs."""
        try:
            return fn(*fn_args)
        except Exception as exc:  # noqa: BLE001 - one broken part must not lose the other numbers
            say(f"{name} FAILED:\n{traceback.format_exc()}")
            errors[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            return None

    try:
        if not args.no_bytecode_cache:
            section("bytecode_cache", enable_bytecode_cache)
        files = write_pipelines(CLEANUP.tempdir("tagentd-bench-pipelines-"))
        modes = {"both": [True, False], "on": [True], "off": [False]}[args.durable]
        for index, durable in enumerate(modes):
            measured: dict[str, Any] = {}
            section(f"daemon_{'durable' if durable else 'nodurable'}", measure_daemon, durable, files, reps, cli_reps,
                    measured)
            for key, value in measured.items():
                if key in ("ready_s", "rss_mb", "pss_mb"):  # the main number comes from the first daemon started
                    result[key if index == 0 else f"{key}_nodurable"] = value
                else:
                    result[key if durable else f"{key}_nodurable"] = value
        result.update(section("raw_zmq", measure_raw_zmq, ZMQ_ROUND_TRIPS) or {})
        result.update(section("raw_unix", measure_raw_unix, ZMQ_ROUND_TRIPS) or {})
        for suffix in ("", "_nodurable"):  # the chain's step in raw round trips of this same run
            for key, raw in (("chain_vs_raw_rtt", "raw_zmq_rtt_us_p50"), ("chain_vs_raw_unix_rtt", "raw_unix_rtt_us_p50")):
                if f"chain_ms_per_step{suffix}" in result and result.get(raw):
                    result[f"{key}{suffix}"] = round(result[f"chain_ms_per_step{suffix}"] * 1000 / result[raw], 2)
        section("recovery", measure_recovery, files, finished, unfinished, load_reps, result)
    finally:
        CLEANUP.run()
    result.update(run_facts(load_before, t_start, args.quick))
    result.update({
        "durable_modes": args.durable,
        "bytecode_cache": harness.PYCACHE is not None,
        "targets": {k: (f"< {v['max']}" if "max" in v else f"> {v['min']}") for k, v in TARGETS.items()},
    })
    result["missed_targets"] = missed(result)
    if errors:
        result["errors"] = errors
    print(json.dumps(result), flush=True)
    return 1 if errors else 0


if __name__ == "__main__":
    entry(main)
