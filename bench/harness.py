"""What every bench script shares: a real tagentd in private temp dirs, and the machinery around it.

Owns: output (`say`; the one JSON line, `report` with `run_facts`), statistics (`median`, `percentile`), the children's
environment (`child_env`, the bytecode cache), cleanup (`CLEANUP` stops every process group and removes every temp dir
a script made, also on Ctrl-C, SIGTERM or SIGHUP when the script runs through `entry`), the /proc readers (RSS, PSS,
CPU ticks, children), the daemon under test (`BenchDaemon`, `running_daemon`, its idle memory `measure_rss`) and timed
runs (`run_once`, `repeat`).

The scripts next to it import it as a module (`import harness as base`); it runs nothing by itself. Importing it puts
the checkout's root and `client/` on sys.path, so no script needs PYTHONPATH. Beside it: bench/raw_rtt.py (the raw
ZeroMQ and Unix-socket round trips) and bench/daemon.py (the daemon workloads, their pipelines and recovery state).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
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

WORKERS = 2


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


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process, in clock ticks (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


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


# -- timed runs, the CLI, idle memory --------------------------------------------------------------------


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


def cli_argv() -> list[str]:
    script = Path(sys.executable).with_name("tagent")
    return [str(script)] if script.exists() else [sys.executable, "-m", "tagent_client.cli"]


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


# -- the result line and the script's life ------------------------------------------------------------


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


