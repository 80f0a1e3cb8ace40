#!/usr/bin/env python
"""Benchmark of the command-line programs: whole-process time of each command vs a bare interpreter start.

    python bench/cli.py [--reps N] [--quick]

Starts its own durable daemon (`python -m tagentd start --foreground --workers 2`) in private temp
dirs (bench/harness.py's helpers), runs one small pipeline so there is a run to look at, then times
each command as a whole process against it, interleaved round by round with a bare `python -c pass`
of the same interpreter, so that load on the machine hits every command alike. `tagentd stop` is
timed against a daemon started for each round; how long that daemon itself takes to exit once asked
(`daemon_exit_ms`, measured in-process) is reported next to it. Prints ONE JSON line on stdout
(details on stderr) and saves it to bench/results/cli-latest.json (not with --quick);
bench/README.md explains the keys and targets.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))
import harness as base  # noqa: E402  (bench/harness.py: Cleanup, running_daemon, the bytecode cache)

from tagentd.plumbing.lock import is_locked  # noqa: E402

say, median, CLEANUP, run_facts, entry = base.say, base.median, base.CLEANUP, base.run_facts, base.entry

BARE = "python -c pass"
#: What every command that talks to the daemon must import: the floor under the ratios (no target).
FLOOR = "python -c 'import click, msgspec, zmq'"
#: Command -> its target, as a multiple of the bare interpreter start (issue 11, finding 2).
TARGETS = {
    "tagent runs": 3.0,
    "tagent status": 3.0,
    "tagent logs": 3.0,
    "tagent send": 3.0,
    "tagentd status": 4.0,
    "tagentd stop": 4.0,
}

PIPELINE = '''
from tagent_client import Pipeline

p = Pipeline("bench_cli")

@p.task(final=True)
def hello(ctx):
    ctx.log.info("hello")
    return "hi"
'''


def script(name: str) -> list[str]:
    """The venv's console script if it exists next to the interpreter, else `python -m` of its module."""
    path = Path(sys.executable).with_name(name)
    module = {"tagent": "tagent_client.cli", "tagentd": "tagentd"}[name]
    return [str(path)] if path.exists() else [sys.executable, "-m", module]


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of the whole process; fails loudly if the command fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()}")
    return wall, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def daemon_exit(daemon: Any) -> float:
    """Seconds from a shutdown request (in-process client) until the daemon has released its lock."""
    t0 = time.perf_counter()
    with daemon.client(timeout=10.0) as client:
        client.shutdown(graceful=True)
    while is_locked(daemon.runtime_dir):
        time.sleep(0.001)
    elapsed = time.perf_counter() - t0
    assert daemon.proc is not None
    daemon.proc.wait(timeout=20)
    return elapsed


def measure(reps: int) -> dict[str, Any]:
    """Median wall and CPU ms of each command and of the bare start, and each command's ratio to the bare start."""
    base.PYCACHE = CLEANUP.tempdir("tagentd-bench-cli-pyc-")  # as an installed package: compiled once, in round 0
    wall: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}

    def record(name: str, sample: tuple[float, float]) -> None:
        wall.setdefault(name, []).append(sample[0])
        cpu.setdefault(name, []).append(sample[1])

    with base.running_daemon("cli", durable=True) as daemon:
        daemon.start()
        pipeline = daemon.root / "bench_cli.py"
        pipeline.write_text(PIPELINE)
        with daemon.client() as client:
            run_id = client.submit(pipeline).id
            client.wait(run_id, timeout=60)
        commands = {
            BARE: [sys.executable, "-c", "pass"],
            FLOOR: [sys.executable, "-c", "import click, msgspec, zmq"],
            "tagent runs": [*script("tagent"), "runs"],
            "tagent status": [*script("tagent"), "status", run_id],
            "tagent logs": [*script("tagent"), "logs", run_id],
            "tagent send": [*script("tagent"), "send", "bench_cli", '{"n": 1}'],
            "tagentd status": [*script("tagentd"), "status"],
        }
        for round_ in range(reps + 1):  # round 0 fills the .pyc cache and warms the disk cache
            for name, argv in commands.items():
                sample = timed(argv, daemon.env)
                if round_:
                    record(name, sample)
    exits = []
    for round_ in range(reps + 1):  # each stop needs a running daemon of its own (its start is not timed)
        with base.running_daemon(f"stop{round_}", durable=True) as victim:
            victim.start()
            sample = timed([*script("tagentd"), "stop"], victim.env)
        with base.running_daemon(f"exit{round_}", durable=True) as victim:
            victim.start()
            exited = daemon_exit(victim)
        if round_:
            record("tagentd stop", sample)
            exits.append(exited)
    bare_wall, bare_cpu = median(wall[BARE]), median(cpu[BARE])
    out: dict[str, Any] = {"bare_python_ms": round(bare_wall * 1000, 1), "bare_python_cpu_ms": round(bare_cpu * 1000, 1),
                           "commands": {}}
    for name in wall:
        say(f"  {name}: {', '.join(f'{v * 1000:.0f}' for v in wall[name])} ms")
        if name == BARE:
            continue
        ms, cpu_ms = median(wall[name]), median(cpu[name])
        out["commands"][name] = {"ms": round(ms * 1000, 1), "x_bare": round(ms / bare_wall, 2),
                                 "cpu_ms": round(cpu_ms * 1000, 1), "x_bare_cpu": round(cpu_ms / bare_cpu, 2),
                                 "target_x": TARGETS.get(name)}
    out["daemon_exit_ms"] = round(median(exits) * 1000, 1)
    say(f"  daemon exit after a stop request: {', '.join(f'{v * 1000:.0f}' for v in exits)} ms")
    out["missed_targets"] = [name for name, v in out["commands"].items()
                             if v["target_x"] is not None and v["x_bare"] > v["target_x"]]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=15, help="measured runs of each command (default 15)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 3 measured runs of each command")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    try:
        result = measure(3 if args.quick else args.reps)
    finally:
        CLEANUP.run()
    result.update(run_facts(load_before, t0, args.quick))
    line = json.dumps(result)
    if not args.quick:
        (BENCH / "results" / "cli-latest.json").write_text(line + "\n")
    print(line, flush=True)
    return 0


if __name__ == "__main__":
    entry(main)
