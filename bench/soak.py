#!/usr/bin/env python
"""Soak: many trivial runs through one durable tagentd, with the daemon's memory sampled as they finish.

    python bench/soak.py [--runs 100000] [--every 5000] [--concurrency 64] [--max-runs N] [--cache-size N]

Starts its own durable daemon (`python -m tagentd start --foreground --workers 2`) in private temp dirs
(bench/harness.py's helpers), submits `--runs` runs of a one-step pipeline from one AsyncClient keeping
`--concurrency` runs in flight, and every `--every` finished runs records the daemon's RSS and what
`daemon_status` says it holds. It times listing runs (`runs(limit=50)`) after 100 runs and on the full
table, then stops the daemon and starts it again on the same state dir (ready time and RSS after recovery). `--max-runs` /
`--cache-size` set `retention_max_runs` / `run_cache_size` (default: the daemon's defaults; `--max-runs 0`
keeps every run, so the index grows by one entry per run). Prints ONE JSON line on stdout (progress on
stderr) and, for a full default run, saves it to bench/results/soak-latest.json. bench/README.md explains
the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))
import harness as base  # noqa: E402  (bench/harness.py: Cleanup, running_daemon, /proc readers)

from tagent_client.client.aio import AsyncClient  # noqa: E402

say, CLEANUP = base.say, base.CLEANUP

PIPELINE = '''
from tagent_client import Pipeline

pipeline = Pipeline("soak")


@pipeline.task(final=True)
async def one(ctx):
    return ctx.params["n"]
'''


def daemon_rss_mb(daemon: Any) -> float:
    return round(base.rss_kb(daemon.proc.pid) / 1024, 1)


def tree_mb(daemon: Any) -> dict[str, float]:
    """RSS and PSS of the daemon and every process under it (the worker template and the workers), summed."""
    pids = daemon.pids()
    return {"tree_rss_mb": round(sum(base.rss_kb(p) for p in pids) / 1024, 1),
            "tree_pss_mb": round(sum(base.pss_kb(p) for p in pids) / 1024, 1)}


async def list_ms(client: AsyncClient, status: str | None = None, reps: int = 20) -> float:
    """Median ms of one `runs(limit=50)` request (the CLI's default page; `status` filters) on an idle daemon."""
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        await client.runs(limit=50, status=status)
        times.append((time.perf_counter() - t0) * 1000)
    return round(base.median(times), 2)


async def drive(daemon: Any, path: Path, runs: int, every: int, concurrency: int) -> dict[str, Any]:
    """Push `runs` runs through, `concurrency` at a time; sample memory every `every` finished runs.

    Listing is timed on the idle daemon after the first 100 runs and after the last one: the default page, and
    a `--status failed` page, which matches no run here and so looks at every one.
    """
    samples: list[dict[str, Any]] = []
    out: dict[str, Any] = {}
    async with AsyncClient(runtime_dir=daemon.runtime_dir, timeout=120) as client:
        finished = 0
        next_sample = every
        t0 = time.perf_counter()

        async def sample(count: int) -> None:
            info = await client.daemon_status()
            held = info.stats.get("runs", {})
            samples.append({"runs": count, "s": round(time.perf_counter() - t0, 1), "rss_mb": daemon_rss_mb(daemon),
                            **tree_mb(daemon), "runs_total": info.runs_total, "in_memory": held.get("in_memory")})
            say(f"  {samples[-1]}")

        async def lane(numbers: Any) -> None:
            nonlocal finished, next_sample
            for n in numbers:
                handle = await client.submit(str(path), {"n": n})
                result = await client.wait(handle.id, timeout=120)
                if result.status != "completed":
                    raise RuntimeError(f"run {handle.id} ended {result.status}: {result.error}")
                finished += 1
                if finished >= next_sample:
                    next_sample += every
                    await sample(finished)

        async def push(numbers: range) -> None:
            shared = iter(numbers)
            await asyncio.gather(*(lane(shared) for _ in range(concurrency)))

        await sample(0)
        await push(range(min(100, runs)))
        out["list_ms_at_100_runs"] = await list_ms(client)
        out["list_failed_ms_at_100_runs"] = await list_ms(client, "failed")
        await push(range(min(100, runs), runs))
        out["wall_s"] = round(time.perf_counter() - t0, 1)
        out["runs_per_s"] = round(runs / out["wall_s"], 1)
        if samples[-1]["runs"] != runs:
            await sample(runs)
        out["list_ms_at_end"] = await list_ms(client)
        out["list_failed_ms_at_end"] = await list_ms(client, "failed")
    out["samples"] = samples
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100_000, help="runs to push through (default 100,000)")
    parser.add_argument("--every", type=int, default=0, help="sample memory every N finished runs (default runs/20)")
    parser.add_argument("--concurrency", type=int, default=64, help="runs in flight at once (default 64)")
    parser.add_argument("--max-runs", type=int, default=None, help="retention_max_runs (default: the daemon's)")
    parser.add_argument("--cache-size", type=int, default=None, help="run_cache_size (default: the daemon's)")
    parser.add_argument("--no-save", action="store_true", help="do not write bench/results/soak-latest.json")
    args = parser.parse_args(argv)
    every = args.every or max(1, args.runs // 20)
    started = time.perf_counter()
    result: dict[str, Any] = {
        "bench": "soak", "python": platform.python_version(), "cpu_count": os.cpu_count(),
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "runs": args.runs, "every": every,
        "concurrency": args.concurrency, "retention_max_runs": args.max_runs, "run_cache_size": args.cache_size,
        "load_avg_1m_before": round(os.getloadavg()[0], 2),
    }
    try:
        base.enable_bytecode_cache()
        with base.running_daemon("soak", durable=True) as daemon:
            for name, value in (("RETENTION_MAX_RUNS", args.max_runs), ("RUN_CACHE_SIZE", args.cache_size)):
                if value is not None:
                    daemon.env[f"TAGENTD_{name}"] = str(value)
            daemon.start()
            path = daemon.root / "soak.py"
            path.write_text(PIPELINE)
            say(f"soak: {args.runs} runs, {args.concurrency} in flight, sampling every {every}")
            result.update(asyncio.run(drive(daemon, path, args.runs, every, args.concurrency)))
            daemon.stop()
            result["restart_ready_s"] = round(daemon.start(timeout=300), 3)
            result["restart_rss_mb"] = daemon_rss_mb(daemon)
            with daemon.client() as client:
                result["restart_runs_total"] = client.daemon_status().runs_total
    finally:
        CLEANUP.run()
    rss = [s["rss_mb"] for s in result.get("samples", [])]
    if len(rss) > 2:
        tenth = rss[max(1, len(rss) // 10)]
        result["rss_mb_max"] = max(rss)
        result["rss_growth_mb_after_first_tenth"] = round(max(rss[len(rss) // 10:]) - tenth, 1)
        pss = [s["tree_pss_mb"] for s in result["samples"]]
        result["tree_pss_mb_max"] = max(pss)
        result["tree_pss_growth_mb_after_first_tenth"] = round(max(pss[len(pss) // 10:]) - pss[max(1, len(pss) // 10)], 1)
    result["load_avg_1m_after"] = round(os.getloadavg()[0], 2)
    result["bench_s"] = round(time.perf_counter() - started, 1)
    line = json.dumps(result)
    print(line, flush=True)
    if not args.no_save and args.runs == 100_000 and args.max_runs is None and args.cache_size is None:
        out = BENCH / "results" / "soak-latest.json"
        out.write_text(line + "\n")
    return 0


if __name__ == "__main__":
    base.entry(main)
