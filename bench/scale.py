#!/usr/bin/env python
"""Scale: does a step cost the same in a 10,000-step run as in a 200-step one?

    python bench/scale.py [--quick] [--reps N] [--steps 200,2000,10000] [--width 10000]

Starts one durable daemon (`--workers 2`, bench/harness.py's helpers), then measures, each after one
warm-up run of the same file: chains of 200, 2,000 and 10,000 steps (time per step, from the run's
`started_at` to its `finished_at`), and a 1 -> 10,000 -> 1 fan-out (steps per second; the last step
depends on all 10,000). The raw ZeroMQ round trip is measured in the same run. Prints ONE JSON line on
stdout (progress on stderr); a full run saves it to bench/results/scale-latest.json. bench/README.md
explains every number.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))
import harness as base  # noqa: E402  (bench/harness.py: Cleanup, running_daemon, report)
from raw_rtt import ZMQ_ROUND_TRIPS, measure_raw_zmq  # noqa: E402  (bench/raw_rtt.py)

say, CLEANUP = base.say, base.CLEANUP

HEADER = "from tagent_client import ExecutionMode, Pipeline\n\n\nasync def noop():\n    return None\n\n\n"


def chain_file(directory: Path, steps: int) -> Path:
    path = directory / f"scale_chain_{steps}.py"
    path.write_text(HEADER + textwrap.dedent(f"""
        pipeline = Pipeline("scale_chain_{steps}")
        for i in range({steps}):
            pipeline.step(f"s{{i}}", fn=noop, depends_on=[f"s{{i - 1}}"] if i else None)
    """).lstrip())
    return path


def fanout_file(directory: Path, width: int) -> Path:
    path = directory / f"scale_fanout_{width}.py"
    path.write_text(HEADER + textwrap.dedent(f"""
        pipeline = Pipeline("scale_fanout_{width}", max_concurrent_steps={width + 12})
        pipeline.step("start", fn=noop)
        for i in range({width}):
            pipeline.step(f"f{{i}}", fn=noop, depends_on=["start"], execution_mode=ExecutionMode.CONCURRENT)
        pipeline.step("end", fn=noop, depends_on=[f"f{{i}}" for i in range({width})])
    """).lstrip())
    return path


def timed_runs(client: Any, daemon: Any, path: Path, reps: int, timeout: float) -> tuple[list[float], list[float]]:
    """One warm-up run (the workers load the file), then `reps` measured runs: each one's run time and the daemon
    process's CPU time (user + system) from submit to result, in seconds. CPU time sways less with other load."""
    t0 = time.perf_counter()
    base.run_once(client, path, timeout)
    say(f"  {path.stem}: warm-up (submit -> result) {time.perf_counter() - t0:.1f} s")
    times, cpu = [], []
    tick = os.sysconf("SC_CLK_TCK")
    for _ in range(reps):
        before = base.cpu_ticks(daemon.proc.pid)
        times.append(base.run_once(client, path, timeout)[1])
        cpu.append((base.cpu_ticks(daemon.proc.pid) - before) / tick)
    say(f"  {path.stem}: runs {', '.join(f'{t:.2f}' for t in times)} s; daemon CPU {', '.join(f'{c:.2f}' for c in cpu)} s")
    return times, cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 measured run each, 2,000 steps at most (not saved)")
    parser.add_argument("--reps", type=int, default=5, help="measured runs of each workload (default 5)")
    parser.add_argument("--steps", default="200,2000,10000", help="chain lengths (default 200,2000,10000)")
    parser.add_argument("--width", type=int, default=10_000, help="fan-out width (default 10,000)")
    args = parser.parse_args(argv)
    steps = [int(s) for s in args.steps.split(",")]
    width, reps = args.width, args.reps
    if args.quick:
        steps, width, reps = [s for s in steps if s <= 2000], min(width, 2000), 1
    load_before, started = os.getloadavg()[0], time.perf_counter()
    out: dict[str, Any] = {"bench": "scale", "chain_steps": steps, "fanout_width": width, "reps": reps}
    try:
        base.enable_bytecode_cache()
        out.update(measure_raw_zmq(ZMQ_ROUND_TRIPS))
        with base.running_daemon("scale", durable=True) as daemon:
            daemon.start()
            files = daemon.root / "pipelines"
            files.mkdir()
            with daemon.client(timeout=600) as client:
                for n in steps:
                    times, cpu = timed_runs(client, daemon, chain_file(files, n), reps, timeout=max(120.0, n * 0.05))
                    out[f"chain_{n}_ms_per_step"] = round(base.median(times) * 1000 / n, 3)
                    out[f"chain_{n}_x_raw_rtt"] = round(out[f"chain_{n}_ms_per_step"] * 1000 / out["raw_zmq_rtt_us_p50"], 2)
                    out[f"chain_{n}_daemon_cpu_ms_per_step"] = round(base.median(cpu) * 1000 / n, 3)
                times, cpu = timed_runs(client, daemon, fanout_file(files, width), reps, timeout=600.0)
                out[f"fanout_{width}_steps_per_s"] = round((width + 2) / base.median(times), 1)
                out[f"fanout_{width}_daemon_cpu_ms_per_step"] = round(base.median(cpu) * 1000 / (width + 2), 3)
            out["daemon_rss_mb_after"] = round(base.rss_kb(daemon.proc.pid) / 1024, 1)
    finally:
        CLEANUP.run()
    first, last = f"chain_{steps[0]}_ms_per_step", f"chain_{steps[-1]}_ms_per_step"
    out["chain_flatness"] = round(out[last] / out[first], 3)  # target <= 1.2
    cpu_first, cpu_last = (key.replace("ms_per_step", "daemon_cpu_ms_per_step") for key in (first, last))
    out["chain_flatness_daemon_cpu"] = round(out[cpu_last] / out[cpu_first], 3) if out[cpu_first] else None
    base.report(out, load_before, started, args.quick, BENCH / "results" / "scale-latest.json")
    return 0


if __name__ == "__main__":
    base.entry(main)
