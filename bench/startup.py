#!/usr/bin/env python
"""Start-up, recovery and idle memory of a real tagentd, optionally A/B against another checkout in the same run.

    python bench/startup.py [--reps 5] [--finished 10000] [--unfinished 100] [--against DIR] [--quick]

For each checkout (this one, and DIR when `--against` names another checkout of the repo, e.g. main made with
`git archive main | tar -x -C DIR`), round by round so that load on the machine hits both alike:

- `ready_s`: spawn of `tagentd start --foreground --workers 2` (empty state dir) -> first answered ping;
- `loaded_s`: spawn -> first answered `daemon_status` (a ping is answered while the daemon still loads; every
  other request waits until it has loaded and recovered);
- `ready_cpu_s`: the CPU time (user + system) the daemon process had used when it first answered: the work
  before answering, which other load on the machine inflates much less than `ready_s`;
- `start_cmd_s`: the whole `tagentd start` command (it daemonizes and returns once control.sock answers);
- `workers_ready_s`: spawn -> both workers `ready` (the worker template's imports and warm-up);
- `recovery_ready_s`: spawn -> first answered ping on a state dir of `--finished` finished runs (snapshots and
  index entries) and `--unfinished` unfinished runs (WAL only), copied afresh for every start;
- `recovery_loaded_s`: the same start -> first answered `daemon_status` (the state recovered);
- `recovery_load_s`: `DurableStore(state).load()` alone, in a fresh process;
- idle memory, once both workers are ready and idle (bench/harness.py's rule), per process and summed:
  RSS (shared pages counted once per process), PSS (shared pages split between sharers) and USS (private).

Medians over `--reps` rounds. Prints ONE JSON line on stdout (progress on stderr); with `--against`, also each
key's ratio this/other. bench/README.md explains the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))
import harness as base  # noqa: E402  (bench/harness.py: Cleanup, BenchDaemon, /proc readers)
from daemon import (  # noqa: E402  (bench/daemon.py's recovery state and its sizes)
    LOAD_TIMER,
    RECOVERY_FINISHED,
    RECOVERY_UNFINISHED,
    generate_state,
    write_pipelines,
)

from tagent_client.client.sync import Client  # noqa: E402

say, CLEANUP, median = base.say, base.CLEANUP, base.median
TARGETS = {"ready_s": 0.15, "recovery_ready_s": 0.3, "recovery_loaded_s": 0.3, "idle_pss_mb": 90.0}


def checkout_env(env: dict[str, str], repo: Path) -> dict[str, str]:
    """`env` with the code of `repo` first on the path (the venv's editable install comes after PYTHONPATH)."""
    rest = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and not p.startswith(str(base.REPO))]
    return {**env, "PYTHONPATH": os.pathsep.join([str(repo / "client"), str(repo), *rest])}


def uss_kb(pid: int) -> int:
    return base.proc_kb(pid, "Private_Clean", "smaps_rollup") + base.proc_kb(pid, "Private_Dirty", "smaps_rollup")


def new_daemon(repo: Path, label: str, state_dir: Path | None = None) -> Any:
    daemon = base.BenchDaemon(CLEANUP.tempdir(f"tagentd-startup-{label}-"), durable=True, state_dir=state_dir)
    daemon.env = checkout_env(daemon.env, repo)
    return daemon


def workers_ready(daemon: Any, timeout: float = 60.0) -> float:
    """Seconds until both workers are ready (polled every 10 ms); counted from the daemon's spawn by the caller."""
    deadline = time.monotonic() + timeout
    with Client(runtime_dir=daemon.runtime_dir, timeout=5.0) as client:
        while time.monotonic() < deadline:
            info = client.daemon_status()
            if len(info.workers) == base.WORKERS and all(w.state == "ready" for w in info.workers):
                return time.monotonic()
            time.sleep(0.01)
    raise RuntimeError(f"workers not ready within {timeout}s")


def idle_memory(daemon: Any) -> dict[str, Any]:
    """RSS/PSS/USS per process once idle (bench/harness.py's measure_rss decides when), and their sums."""
    base.measure_rss(daemon)
    per = []
    for pid in daemon.pids():
        comm = Path(f"/proc/{pid}/comm").read_text().strip()  # forked workers name themselves tagentd-w<id>
        role = "daemon" if pid == daemon.proc.pid else "worker" if comm.startswith("tagentd-w") else "template"
        per.append({"role": role, "rss_mb": round(base.rss_kb(pid) / 1024, 1), "pss_mb": round(base.pss_kb(pid) / 1024, 1),
                    "uss_mb": round(uss_kb(pid) / 1024, 1)})
    return {"idle_processes": per, **{f"idle_{k}": round(sum(p[k] for p in per), 1) for k in ("rss_mb", "pss_mb", "uss_mb")}}


def loaded(daemon: Any, t0: float) -> float:
    """Seconds from `t0` until the daemon answers `daemon_status`: it has loaded and recovered (a ping is answered
    while it still loads, tagentd/app/launch.py, and every other request waits for the load)."""
    with Client(runtime_dir=daemon.runtime_dir, timeout=60.0) as client:
        client.daemon_status()
    return time.monotonic() - t0


def one_round(repo: Path, label: str, state: Path | None, first: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    daemon = new_daemon(repo, label)
    t0 = time.monotonic()
    out["ready_s"] = daemon.start()
    out["ready_cpu_s"] = base.cpu_ticks(daemon.proc.pid) / os.sysconf("SC_CLK_TCK")  # steadier than wall time when busy
    out["loaded_s"] = loaded(daemon, t0)
    out["workers_ready_s"] = workers_ready(daemon) - t0
    if first:
        out.update(idle_memory(daemon))
    daemon.stop()
    # `tagentd start` (background): the command's own wall time, then `tagentd stop`
    daemon = new_daemon(repo, f"{label}-cmd")
    stop_cmd = [sys.executable, "-m", "tagentd", "stop"]
    # it runs detached, not a child of this script: an interrupted bench stops it with `tagentd stop` too
    CLEANUP.callbacks.append(lambda env=daemon.env: subprocess.run(stop_cmd, env=env, capture_output=True, timeout=60))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tagentd", "start", "--workers", str(base.WORKERS)], env=daemon.env,
                   check=True, capture_output=True, timeout=60)
    out["start_cmd_s"] = time.perf_counter() - t0
    subprocess.run(stop_cmd, env=daemon.env, check=True, capture_output=True, timeout=60)
    if state is not None:
        copy = CLEANUP.tempdir(f"tagentd-startup-state-{label}-") / "state"
        shutil.copytree(state, copy)
        daemon = new_daemon(repo, f"{label}-recovery", state_dir=copy)
        t0 = time.monotonic()
        out["recovery_ready_s"] = daemon.start()
        out["recovery_loaded_s"] = loaded(daemon, t0)
        daemon.stop()
        shutil.rmtree(copy.parent, ignore_errors=True)
    return out


def load_time(repo: Path, state: Path) -> float:
    proc = subprocess.run([sys.executable, "-c", LOAD_TIMER, str(state)], capture_output=True, text=True,
                          env=checkout_env(base.child_env(), repo), timeout=300, check=True)
    return json.loads(proc.stdout)["load_s"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--finished", type=int, default=RECOVERY_FINISHED)
    parser.add_argument("--unfinished", type=int, default=RECOVERY_UNFINISHED)
    parser.add_argument("--against", type=Path, help="another checkout of the repo, measured in the same rounds")
    parser.add_argument("--quick", action="store_true", help="2 rounds, 1,000 finished runs")
    args = parser.parse_args(argv)
    if args.quick:
        args.reps, args.finished, args.unfinished = 2, 1_000, 10
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    repos = {"this": base.REPO, **({"other": args.against.resolve()} if args.against else {})}
    # `python -m tagentd` puts its cwd first on sys.path: run every daemon from a folder holding no checkout, or
    # one started from inside this repo would run this checkout's tagentd whatever PYTHONPATH says.
    os.chdir(CLEANUP.tempdir("tagentd-startup-cwd-"))
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in repos}
    result: dict[str, Any] = {"bench": "startup", "reps": args.reps}
    try:
        base.enable_bytecode_cache()
        state = None
        if args.finished or args.unfinished:
            files = write_pipelines(CLEANUP.tempdir("tagentd-startup-pipelines-"))
            state = CLEANUP.tempdir("tagentd-startup-recovery-") / "state"
            result["recovery_runs"] = {"finished": args.finished, "unfinished": args.unfinished,
                                       **generate_state(state, files["recovery"], args.finished, args.unfinished)}
        for name, repo in repos.items():  # compile each checkout's bytecode (the cache is per source path)
            warm = new_daemon(repo, f"{name}-warm")
            warm.start()
            workers_ready(warm)
            warm.stop()
        for rnd in range(args.reps):
            for name, repo in repos.items():
                samples[name].append(one_round(repo, name, state, first=rnd == 0))
                say(f"round {rnd + 1} {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in samples[name][-1].items()
                                                              if isinstance(v, float) and k.endswith("_s")))
        for name, repo in repos.items():
            rows = samples[name]
            out = {k: round(median([r[k] for r in rows]), 3) for k in rows[0] if k.endswith("_s")}
            out.update({k: v for k, v in rows[0].items() if k.startswith("idle_")})
            if state is not None:
                out["recovery_load_s"] = round(median([load_time(repo, state) for _ in range(3)]), 3)
            result[name] = out
    finally:
        CLEANUP.run()
    if "other" in result:
        result["ratio_this_to_other"] = {k: round(v / result["other"][k], 2) for k, v in result["this"].items()
                                         if isinstance(v, float) and result["other"].get(k)}
    result["targets"] = TARGETS
    result["missed_targets"] = [k for k, limit in TARGETS.items() if result["this"].get(k, 0) > limit]
    result.update(base.run_facts(load_before, started, args.quick))
    result["load_avg_1m"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    base.entry(main)
