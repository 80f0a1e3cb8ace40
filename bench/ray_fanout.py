#!/usr/bin/env python
"""Benchmark: the local pool and the Ray executor on this machine, in one run — what the Ray path costs.

    python bench/ray_fanout.py [--reps R] [--quick]

Starts a Ray cluster simulated on this machine (ray.cluster_utils: a head without CPUs and two worker nodes;
every Ray socket on 127.0.0.1), then two daemons in turn in private temp dirs (bench/harness.py's helpers),
each with 2 workers: `executor = "local"` (worker processes) and `executor = "ray"` (2 actors on the
cluster, joined over the CURVE endpoint `worker_listen = tcp://127.0.0.1:0` when this tagentd has it).
Each runs bench/daemon.py's pipelines: a 200-step chain of async no-ops (`chain_ms_per_step`: the control
plane's round trip per step), a 1 -> 500 -> 1 fan-out (`fanout_steps_per_s`: the steps/s one daemon drives)
and 200 concurrent 0.5 s waits (`io_wall_s`). Each number is the median of R runs after a warm-up, the run's
own `finished_at - started_at`. `ray_ready_s` is the Ray daemon's start until it answers (joining the cluster
included), `ray_workers_ready_s` until its actors' workers said hello.

Prints ONE JSON line on stdout (progress on stderr) and writes it to bench/results/ray-latest.json;
every daemon and the cluster are stopped at the end, also on an error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
for _p in (str(REPO), str(REPO / "client"), str(BENCH)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

# before Ray is imported: every Ray socket on 127.0.0.1, no usage stats, no cluster named by the environment
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
os.environ.pop("RAY_ADDRESS", None)

from daemon import measure_chain, measure_fanout, measure_io, write_pipelines  # noqa: E402  (bench/daemon.py's workloads)
from harness import CLEANUP, WORKERS, enable_bytecode_cache, entry, report, running_daemon, say  # noqa: E402

from tagentd.settings.config import FIELDS  # noqa: E402

RESULT_FILE = BENCH / "results" / "ray-latest.json"
STORE = 80 * 2**20


def start_cluster() -> tuple[Any, float]:
    from ray.cluster_utils import Cluster

    t0 = time.perf_counter()
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False, "no_monitor": True, "include_log_monitor": False,
        "object_store_memory": STORE})
    CLEANUP.callbacks.append(cluster.shutdown)
    for _ in range(2):
        cluster.add_node(num_cpus=2, object_store_memory=STORE)
    cluster.wait_for_nodes()
    return cluster, time.perf_counter() - t0


def workers_ready(daemon: Any, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    with daemon.client(timeout=10.0) as client:
        while True:
            workers = client.daemon_status().workers
            if len(workers) == WORKERS and all(w.state == "ready" for w in workers):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{WORKERS} workers not ready within {timeout}s; log:\n{daemon.log_tail()}")
            time.sleep(0.05)


def measure(label: str, env: dict[str, str], files: dict[str, Path], reps: int, out: dict[str, Any]) -> None:
    say(f"{label}: starting a daemon")
    with running_daemon(label, durable=True) as daemon:
        daemon.env.update(env)
        out[f"{label}_ready_s"] = round(daemon.start(timeout=120.0), 3)
        t0 = time.perf_counter()
        workers_ready(daemon)
        out[f"{label}_workers_ready_s"] = round(out[f"{label}_ready_s"] + time.perf_counter() - t0, 3)
        with daemon.client(timeout=300.0) as client:
            chain = measure_chain(client, files, reps)
            chain.pop("_chain_run_id")
            for key, value in {**chain, **measure_fanout(client, files, reps), **measure_io(client, files, reps)}.items():
                out[f"{label}_{key}"] = value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1 measured run of each")
    args = parser.parse_args(argv)
    reps = 1 if args.quick else args.reps
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    enable_bytecode_cache()
    out: dict[str, Any] = {"bench": "ray_fanout", "workers": WORKERS, "reps": reps}
    try:
        files = write_pipelines(CLEANUP.tempdir("tagentd-bench-ray-files-"))
        measure("local", {"TAGENTD_EXECUTOR": "local"}, files, reps, out)
        cluster, started_in = start_cluster()
        out["cluster_start_s"] = round(started_in, 1)
        say(f"cluster of {len(cluster.list_all_nodes())} nodes up in {out['cluster_start_s']:.1f}s")
        ray_env = {"TAGENTD_EXECUTOR": "ray", "TAGENTD_RAY_ADDRESS": cluster.address}
        if "worker_listen" in FIELDS:
            ray_env["TAGENTD_WORKER_LISTEN"] = "tcp://127.0.0.1:0"
            out["ray_link"] = "curve"
        measure("ray", ray_env, files, reps, out)
        for key in ("chain_ms_per_step", "fanout_steps_per_s", "io_wall_s"):
            out[f"ray_over_local_{key}"] = round(out[f"ray_{key}"] / out[f"local_{key}"], 2)
    finally:
        CLEANUP.run()
    report(out, load_before, started, args.quick, RESULT_FILE)
    return 0


if __name__ == "__main__":
    entry(main)
