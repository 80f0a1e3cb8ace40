#!/usr/bin/env python
"""`tagent runs` on a short and on a long history: 100 and 100,000 runs (issue 17: <= 2x).

    python bench/runs_list.py [--small 100] [--large 100000] [--reps 7] [--quick]

For each size, a state dir is made with that many finished runs (their index entries in runs.idx, each with
a snapshot file: symbolic links to one real snapshot, since listing reads only the index) and a durable daemon
(`retention_max_runs = 0`, so none is removed) is started on it. Then, on the daemon,
once its workers are ready and it is idle:

- `cli_runs_ms`: median wall time of the whole `tagent runs` process (the newest page of 50);
- `request_ms`: median of one `runs(limit=50)` request; `deep_page_ms`: one page of 50 from the middle of the
  history (`before` = the run halfway back); `failed_ms`: `runs(status="failed")`, which no run matches (every
  entry is looked at);
- `all_s`: the whole `tagent runs --all --json` (every run, page by page) and the runs it printed;
- `ready_s`, `rss_mb`: spawn -> first answered ping, and the daemon's RSS then.

Prints ONE JSON line (progress on stderr) with both sizes and `cli_ratio` = large / small.
"""

from __future__ import annotations

import argparse
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
import harness as base  # noqa: E402  (bench/harness.py: Cleanup, BenchDaemon, /proc readers)
from daemon import generate_state, write_pipelines  # noqa: E402  (bench/daemon.py's recovery state)

say, CLEANUP, median = base.say, base.CLEANUP, base.median


def make_history(state: Path, pipeline_file: Path, runs: int) -> None:
    """`runs` finished runs: one real run made through the store, then index entries and snapshot links."""
    from tagentd.runs.index import RunIndex

    generate_state(state, pipeline_file, 1, 0)
    index = RunIndex(state / "runs.idx")
    assert index.read() is None
    (model,) = index.entries.values()
    snapshot = state / "runs" / f"{model.run_id}.ckpt"
    first = model.created_at - runs * 0.01
    from tagent_client.core.state import new_run_id

    for k in range(runs - 1):
        created = first + k * 0.01
        run_id = new_run_id(created)
        os.symlink(snapshot.name, state / "runs" / f"{run_id}.ckpt")
        index.put(type(model)(run_id=run_id, pipeline=model.pipeline, status=model.status, steps_done=model.steps_done,
                              steps_total=model.steps_total, created_at=created, finished_at=created + 0.005,
                              path=model.path, source_hash=model.source_hash, submitted_by=model.submitted_by,
                              wal_seq=model.wal_seq))
    index.rewrite()
    index.close()


def measure(files: dict[str, Path], runs: int, reps: int) -> dict[str, Any]:
    root = CLEANUP.tempdir(f"tagentd-runs-list-{runs}-")
    t0 = time.perf_counter()
    make_history(root / "state", files["recovery"], runs)
    say(f"{runs} runs: made in {time.perf_counter() - t0:.1f} s")
    daemon = base.BenchDaemon(root, durable=True, state_dir=root / "state")
    daemon.env["TAGENTD_RETENTION_MAX_RUNS"] = "0"
    daemon.env["TAGENTD_RETENTION_DAYS"] = "0"
    out: dict[str, Any] = {"runs": runs, "ready_s": round(daemon.start(), 3),
                           "rss_mb": round(base.rss_kb(daemon.proc.pid) / 1024, 1)}
    try:
        base.measure_rss(daemon)  # times are taken on the idle daemon: after the worker template's imports
        with daemon.client() as client:
            newest = client.runs(limit=50)
            assert len(newest) == 50
            info = client.daemon_status()
            assert info.runs_total == runs, info.runs_total
            middle = None
            if runs > 100:
                middle = client.runs(limit=1, before=newest[-1].run_id)  # warm; then find a run halfway back
                page, before = [], None
                for _ in range(runs // 2 // 1000):
                    page = client.runs(limit=1000, before=before)
                    before = page[-1].run_id
                middle = before

            def timed(call: Any) -> float:
                times = []
                for _ in range(reps * 10):
                    t = time.perf_counter()
                    call()
                    times.append(time.perf_counter() - t)
                return round(median(times) * 1000, 3)

            out["request_ms"] = timed(lambda: client.runs(limit=50))
            out["deep_page_ms"] = timed(lambda: client.runs(limit=50, before=middle)) if middle else out["request_ms"]
            out["failed_ms"] = timed(lambda: client.runs(limit=50, status="failed"))
        cli = [*base.cli_argv(), "runs"]
        subprocess.run(cli, env=daemon.env, capture_output=True, timeout=60, check=True)  # warm
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            subprocess.run(cli, env=daemon.env, capture_output=True, timeout=60, check=True)
            times.append(time.perf_counter() - t)
        out["cli_runs_ms"] = round(median(times) * 1000, 1)
        t = time.perf_counter()
        done = subprocess.run([*cli, "--all", "--json"], env=daemon.env, capture_output=True, timeout=600, check=True)
        out["all_s"] = round(time.perf_counter() - t, 3)
        out["all_listed"] = len(json.loads(done.stdout))
    finally:
        daemon.stop()
    say(f"{runs} runs: {out}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=100)
    parser.add_argument("--large", type=int, default=100_000)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="10,000 runs for the large history, 3 reps")
    args = parser.parse_args(argv)
    if args.quick:
        args.large, args.reps = 10_000, 3
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    result: dict[str, Any] = {"bench": "runs_list"}
    try:
        base.enable_bytecode_cache()
        files = write_pipelines(CLEANUP.tempdir("tagentd-runs-list-pipelines-"))
        result["small"] = measure(files, args.small, args.reps)
        result["large"] = measure(files, args.large, args.reps)
    finally:
        CLEANUP.run()
    result["cli_ratio"] = round(result["large"]["cli_runs_ms"] / result["small"]["cli_runs_ms"], 2)
    result["request_ratio"] = round(result["large"]["request_ms"] / result["small"]["request_ms"], 2)
    result["target"] = "cli_ratio <= 2"
    result.update(base.run_facts(load_before, started, args.quick))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    base.entry(main)
