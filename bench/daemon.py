#!/usr/bin/env python
"""Benchmark of a real tagentd: scheduling overhead, fan-out, I/O concurrency, CLI latency, start-up, memory, recovery.

    python bench/daemon.py [--durable both|on|off] [--quick]

Starts its own daemon(s) (`python -m tagentd start --foreground --workers 2 [--no-durable]`) in private
temp dirs, measures, stops them with SIGTERM and removes the temp dirs — also on error or Ctrl-C.
Prints ONE JSON line on stdout; progress and details go to stderr. bench/README.md explains every number.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import importlib.util
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
for _p in (str(REPO), str(REPO / "client")):  # runnable without PYTHONPATH
    if _p not in sys.path:
        sys.path.insert(0, _p)

from tagent_client.client.sync import Client  # noqa: E402
from tagent_client.errors import TagentError  # noqa: E402

CHAIN_STEPS = 200
FANOUT_WIDTH = 500
FANOUT_WIDE = 5_000
IO_STEPS = 200
IO_SLEEP = 0.5
ZMQ_ROUND_TRIPS = 5_000
RECOVERY_FINISHED = 10_000
RECOVERY_UNFINISHED = 100
RECOVERY_PIPELINE_STEPS = 5
WORKERS = 2

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


def say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def median(values: list[float]) -> float:
    return statistics.median(values)


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]


#: Where child processes keep their bytecode (None: as the environment says; see enable_bytecode_cache).
PYCACHE: Path | None = None


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "client"), str(REPO), env.get("PYTHONPATH", "")) if p)
    env.pop("NOTIFY_SOCKET", None)
    if PYCACHE is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(PYCACHE)
    env.update(extra or {})
    return env


def enable_bytecode_cache() -> None:
    """Give every child a warm .pyc cache in a temp dir, as an installed package has.

    Without it (PYTHONDONTWRITEBYTECODE=1, as in this repo's dev environment) every daemon, worker and
    `tagent` process compiles tagent_client/tagentd from source, which adds ~50-100 ms to each start.
    The cache lives in the bench's temp dir, so nothing is written into the source tree.
    """
    global PYCACHE
    PYCACHE = CLEANUP.tempdir("tagentd-bench-pyc-")
    code = "import tagentd.cli.main, tagentd.app.daemon, tagentd.worker, tagent_client.cli.main"
    subprocess.run([sys.executable, "-c", code], env=child_env(), check=True, timeout=120)
    # The prefix hides site-packages' own __pycache__ too; a throwaway daemon compiles whatever the daemon and
    # its workers import (the workers' agent-runtime pre-import included), so no measured process compiles.
    # Compiling leaves a process bigger for good, so skipping this would also inflate the first daemon's RSS.
    say("warming the bytecode cache with a throwaway daemon")
    with running_daemon("warmup", durable=True) as daemon:
        daemon.start()
        measure_rss(daemon)
        subprocess.run([*cli_argv(), "runs"], env=daemon.env, capture_output=True, timeout=60, check=True)


# -- cleanup: every process and temp dir this script makes ----------------------------------------------


#: The signals that end a bench script the way Ctrl-C does: its `finally` stops every daemon it started.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextmanager
def signals_ignored() -> Iterator[None]:
    """Ignore STOP_SIGNALS inside (in the main thread; elsewhere signals cannot be handled anyway)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {sig: signal.signal(sig, signal.SIG_IGN) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


class Cleanup:
    """Remembers every process group and temp dir; `run()` ends and removes them all (idempotent)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[Any]] = []
        self.dirs: list[Path] = []
        self.callbacks: list[Callable[[], None]] = []

    def tempdir(self, prefix: str) -> Path:
        path = Path(tempfile.mkdtemp(prefix=prefix))
        path.chmod(0o700)
        self.dirs.append(path)
        return path

    def run(self) -> None:
        """Stop and remove everything; a second Ctrl-C or SIGTERM meanwhile is ignored, so it cannot cut this short."""
        with signals_ignored():
            self._run()

    def _run(self) -> None:
        for callback in reversed(self.callbacks):
            try:
                callback()
            except Exception as exc:  # noqa: BLE001 - keep cleaning
                say(f"cleanup: {exc!r}")
        self.callbacks.clear()
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    proc.kill()
                proc.wait(timeout=5)
        self.procs.clear()
        for path in self.dirs:
            shutil.rmtree(path, ignore_errors=True)
        self.dirs.clear()


CLEANUP = Cleanup()


# -- /proc helpers -------------------------------------------------------------------------------------


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry.name))
    return found


def proc_kb(pid: int, field: str = "VmRSS", file: str = "status") -> int:
    """A kB field of /proc/PID/status (VmRSS) or /proc/PID/smaps_rollup (Pss); 0 if the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_kb(pid: int) -> int:
    return proc_kb(pid)


def pss_kb(pid: int) -> int:
    return proc_kb(pid, "Pss", "smaps_rollup")


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


# -- one daemon under test ----------------------------------------------------------------------------


class BenchDaemon:
    """`tagentd start --foreground` in private dirs under `root`."""

    def __init__(self, root: Path, *, durable: bool, state_dir: Path | None = None) -> None:
        self.root = root
        self.durable = durable
        self.runtime_dir = root / "run"
        self.state_dir = state_dir or root / "state"
        self.env = child_env({
            "TAGENTD_RUNTIME_DIR": str(self.runtime_dir),
            "TAGENTD_STATE_DIR": str(self.state_dir),
            "XDG_CONFIG_HOME": str(root / "config"),
            "XDG_DATA_HOME": str(root / "data"),  # the default watched pipelines folder lives here: keep it private
        })
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready_s = 0.0

    def start(self, timeout: float = 60.0) -> float:
        """Spawn the daemon; return the seconds from spawn to the first answered ping."""
        argv = [sys.executable, "-m", "tagentd", "start", "--foreground", "--workers", str(WORKERS)]
        if not self.durable:
            argv.append("--no-durable")
        t0 = time.perf_counter()
        # `python -m` puts its cwd first on sys.path: started from another checkout, the daemon (and every worker)
        # would run that checkout's tagentd with this one's client, whatever PYTHONPATH says. Its root holds none.
        self.proc = subprocess.Popen(argv, env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True, cwd=self.root)
        CLEANUP.procs.append(self.proc)
        CLEANUP.callbacks.append(self.stop)
        deadline = t0 + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tagentd exited with {self.proc.returncode}; log:\n{self.log_tail()}")
            if (self.runtime_dir / "control.sock").exists():
                try:
                    with Client(runtime_dir=self.runtime_dir, timeout=2.0) as client:
                        client.ping()
                    break
                except TagentError:
                    pass
            if time.perf_counter() > deadline:
                raise RuntimeError(f"tagentd did not answer within {timeout}s; log:\n{self.log_tail()}")
            time.sleep(0.002)
        self.ready_s = time.perf_counter() - t0
        return self.ready_s

    def client(self, timeout: float = 60.0) -> Client:
        return Client(runtime_dir=self.runtime_dir, timeout=timeout)

    def pids(self) -> list[int]:
        """The daemon and every process under it: the worker template and the workers forked from it."""
        assert self.proc is not None
        found, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo += children_of(pid)
        return found

    def log_tail(self) -> str:
        path = self.state_dir / "tagentd.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else "(no log)"

    def stop(self) -> None:
        """SIGTERM and wait; SIGKILL the whole process group if it does not end. Idempotent."""
        if self.proc is None or self.proc.poll() is not None:
            return
        workers = self.pids()[1:]
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            say("daemon ignored SIGTERM for 20 s; killing its process group")
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)
        for pid in workers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@contextmanager
def running_daemon(label: str, *, durable: bool, state_dir: Path | None = None) -> Iterator[BenchDaemon]:
    root = CLEANUP.tempdir(f"tagentd-bench-{label}-")
    daemon = BenchDaemon(root, durable=durable, state_dir=state_dir)
    try:
        yield daemon
    finally:
        daemon.stop()


# -- measurements -----------------------------------------------------------------------------------------


def run_once(client: Client, path: Path, timeout: float = 120.0) -> tuple[str, float]:
    """Submit `path`, wait for it; return (run id, run seconds from started_at to finished_at)."""
    handle = client.submit(path)
    result = client.wait(handle.id, timeout=timeout)
    if not result.success:
        raise RuntimeError(f"{path.name}: run {handle.id} ended {result.status}: {result.error}")
    assert result.start_time is not None and result.end_time is not None
    return handle.id, result.end_time - result.start_time


def repeat(client: Client, path: Path, reps: int) -> tuple[str, list[float]]:
    """One warm-up run (loads the file into the workers), then `reps` measured runs."""
    run_id, warm = run_once(client, path)
    times = []
    for _ in range(reps):
        run_id, seconds = run_once(client, path)
        times.append(seconds)
    say(f"  {path.stem}: warm-up {warm * 1000:.0f} ms, runs {', '.join(f'{t * 1000:.0f}' for t in times)} ms")
    return run_id, times


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


def cli_argv() -> list[str]:
    script = Path(sys.executable).with_name("tagent")
    return [str(script)] if script.exists() else [sys.executable, "-m", "tagent_client.cli"]


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


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process, in clock ticks (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


def measure_rss(daemon: BenchDaemon, settle_max: float = 20.0) -> dict[str, Any]:
    """Daemon + workers RSS once both workers are 'ready' and idle: RSS flat and (almost) no CPU used for 1.5 s.

    'ready' comes before the workers' background pre-import of the agent runtime (pydantic-ai, ...), which
    takes seconds; waiting for RSS *and* CPU to go flat is what tells that the pre-import is over.
    """
    with daemon.client(timeout=5.0) as client:
        deadline = time.monotonic() + 120  # the template imports the agent runtime: tens of seconds when busy
        while True:
            info = client.daemon_status()
            if len(info.workers) == WORKERS and all(w.state == "ready" for w in info.workers):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"workers not ready: {info.workers}")
            time.sleep(0.02)
    t_ready = time.monotonic()
    window, hz = 1.5, os.sysconf("SC_CLK_TCK")
    samples: list[tuple[float, int, int]] = []
    while True:
        pids = daemon.pids()
        total = sum(rss_kb(pid) for pid in pids)
        now = time.monotonic()
        samples.append((now, total, sum(cpu_ticks(pid) for pid in pids)))
        recent = [s for s in samples if now - s[0] <= window]
        flat_rss = max(s[1] for s in recent) - min(s[1] for s in recent) < 512
        idle_cpu = (recent[-1][2] - recent[0][2]) / hz < 0.05 * window  # under 5% of one CPU
        if now - t_ready >= window and len(pids) >= WORKERS + 1 and flat_rss and idle_cpu:
            break
        if now - t_ready > settle_max:
            say(f"  rss: not idle after {settle_max:g} s; taking the last sample")
            break
        time.sleep(0.1)
    per = {pid: round(rss_kb(pid) / 1024, 1) for pid in daemon.pids()}
    pss = sum(pss_kb(pid) for pid in daemon.pids())
    say(f"  rss by pid (daemon first): {per} after {time.monotonic() - t_ready:.1f} s idle; pss {pss / 1024:.1f} MB")
    return {"rss_mb": round(total / 1024, 1), "pss_mb": round(pss / 1024, 1)}


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


ECHO_SERVER = """
import sys, zmq
ctx = zmq.Context()
sock = ctx.socket(zmq.ROUTER)
sock.linger = 0
sock.bind(sys.argv[1])
print("ready", flush=True)
while True:
    frames = sock.recv_multipart()
    sock.send_multipart(frames)
    if frames[-1] == b"stop":
        break
"""


def start_echo_server(script: str, address: str) -> subprocess.Popen[str]:
    """Run `script` in another process, serving `address`; return once it says it is ready (stopped by CLEANUP)."""
    proc = subprocess.Popen([sys.executable, "-c", script, address], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    CLEANUP.procs.append(proc)
    assert proc.stdout is not None
    proc.stdout.readline()
    return proc


def timed_round_trips(trip: Callable[[], None], round_trips: int) -> list[float]:
    """µs of each of `round_trips` calls of `trip`, after 500 unmeasured ones (warm caches, a settled scheduler)."""
    for _ in range(500):
        trip()
    samples = []
    for _ in range(round_trips):
        t0 = time.perf_counter_ns()
        trip()
        samples.append((time.perf_counter_ns() - t0) / 1000)
    return samples


def measure_raw_zmq(round_trips: int) -> dict[str, Any]:
    """DEALER -> ROUTER echo (another process) -> DEALER over ipc: the floor under every request."""
    import zmq

    endpoint = f"ipc://{CLEANUP.tempdir('tagentd-bench-zmq-')}/echo.sock"
    proc = start_echo_server(ECHO_SERVER, endpoint)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(endpoint)
    payload = b"x" * 64

    def trip() -> None:
        sock.send(payload)
        sock.recv()

    try:
        samples = timed_round_trips(trip, round_trips)
        sock.send(b"stop")
        sock.poll(2000)
    finally:
        sock.close(linger=0)
        ctx.term()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
    out = {"raw_zmq_rtt_us_p50": round(percentile(samples, 50), 1), "raw_zmq_rtt_us_p99": round(percentile(samples, 99), 1)}
    say(f"raw zmq: {out}")
    return out


UNIX_ECHO_SERVER = """
import socket, struct, sys
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(sys.argv[1])
server.listen(1)
print("ready", flush=True)
conn, _ = server.accept()
def read(n):
    data = b""
    while len(data) < n:
        data += conn.recv(n - len(data))
    return data
while True:
    (size,) = struct.unpack(">I", read(4))
    payload = read(size)
    conn.sendall(struct.pack(">I", size) + payload)
    if payload == b"stop":
        break
"""


def measure_raw_unix(round_trips: int) -> dict[str, Any]:
    """The same echo over a plain Unix stream socket, length-prefixed frames (what workers.sock carries since
    issue 17's fourth round, tagentd/plumbing/framed.py), blocking calls on both sides: one process wake-up per
    hop, no I/O thread. The machine's floor under a daemon <-> worker hop."""
    import socket
    import struct

    path = f"{CLEANUP.tempdir('tagentd-bench-unix-')}/echo.sock"
    proc = start_echo_server(UNIX_ECHO_SERVER, path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    frame = struct.pack(">I", 64) + b"x" * 64

    def trip(data: bytes = frame) -> None:
        sock.sendall(data)
        got = 0
        while got < len(data):
            got += len(sock.recv(len(data) - got))

    try:
        samples = timed_round_trips(trip, round_trips)
        trip(struct.pack(">I", 4) + b"stop")
    finally:
        sock.close()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
    out = {"raw_unix_rtt_us_p50": round(percentile(samples, 50), 1),
           "raw_unix_rtt_us_p99": round(percentile(samples, 99), 1)}
    say(f"raw unix: {out}")
    return out


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
        "bytecode_cache": PYCACHE is not None,
        "targets": {k: (f"< {v['max']}" if "max" in v else f"> {v['min']}") for k, v in TARGETS.items()},
    })
    result["missed_targets"] = missed(result)
    if errors:
        result["errors"] = errors
    print(json.dumps(result), flush=True)
    return 1 if errors else 0


def run_facts(load_before: float, started: float, quick: bool) -> dict[str, Any]:
    """What every bench result line records about its run: the interpreter, the machine, when, and its load."""
    return {
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "quick": quick,
        "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],  # before, after: other load skews it
        "bench_s": round(time.perf_counter() - started, 1),
    }


def report(out: dict[str, Any], load_before: float, started: float, quick: bool, result_file: Path) -> None:
    """Print a bench script's one JSON line (with `run_facts`) and, for a full run, save it to `result_file`."""
    out.update(run_facts(load_before, started, quick))
    line = json.dumps(out)
    print(line)
    if not quick:
        result_file.parent.mkdir(parents=True, exist_ok=True)
        result_file.write_text(line + "\n")


def stop_on_signals() -> None:
    """Make SIGTERM and SIGHUP end this script as Ctrl-C does (KeyboardInterrupt), so the `finally` that runs
    CLEANUP stops every daemon it started; by default they end Python at once, and the daemons (each in a session
    of its own) run on."""

    def on_signal(sig: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signal.Signals(sig).name}")

    for sig in STOP_SIGNALS:
        if sig != signal.SIGINT:
            signal.signal(sig, on_signal)


def entry(main_fn: Callable[[], int]) -> None:
    """Run a bench script's main; Ctrl-C, SIGTERM or SIGHUP still stops every daemon it started (CLEANUP runs in
    main's finally)."""
    stop_on_signals()
    try:
        sys.exit(main_fn())
    except KeyboardInterrupt:
        say("interrupted; every daemon stopped and temp dir removed")
        sys.exit(130)


if __name__ == "__main__":
    entry(main)
