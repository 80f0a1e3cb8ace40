"""`make demo`: run the offline example pipeline through a private tagentd, show the result, stop.

Guarantees:

- The user's own setup is never touched. The demo's daemon gets its own runtime,
  state, config and watched-folder dirs in one temporary directory, and none of the
  user's `TAGENTD_*` settings, so a daemon the user runs gets nothing (the demo says
  it is left alone) and files in the user's watched folder do not run.
- The daemon is the demo's child and is always stopped, its workers gone and the
  temporary directory removed: after the run, on an error, on Ctrl-C, SIGTERM or
  SIGHUP, and when stdout goes away (`make demo | head -3`). Killed with SIGKILL, the
  demo cannot clean up, but its daemon gets SIGTERM (PR_SET_PDEATHSIG) and stops.
- It says which daemon it uses. Every step is a real CLI command, printed before it
  runs, so the demo doubles as a tour of `tagentd` and `tagent`.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from tagent_client.client.sync import Client
from tagent_client.errors import TagentError
from tagent_client.wire.paths import CONTROL_SOCKET

EXAMPLE = Path("pipelines/examples/research.py")
START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0
POLL = 0.05
#: The signals that end the demo early; each still stops the daemon first.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
PR_SET_PDEATHSIG = 1


class Interrupted(BaseException):
    """A stop signal arrived (BaseException, like KeyboardInterrupt: nothing may swallow it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StdoutGone(Exception):
    """Whoever read the demo's output went away (`make demo | head -3`)."""


def say(text: str = "") -> None:
    """Print a line; once stdout is gone, print nothing more and raise StdoutGone."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's last flush cannot fail again
        os.close(devnull)
        raise StdoutGone from None


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def private_env(user_env: Mapping[str, str], scratch: Path) -> dict[str, str]:
    """The user's environment without their tagentd settings, with every tagentd dir inside `scratch`."""
    env = {k: v for k, v in user_env.items() if not k.startswith("TAGENTD_") and k != "NOTIFY_SOCKET"}
    env.update(
        TAGENTD_RUNTIME_DIR=str(scratch / "run"),
        TAGENTD_STATE_DIR=str(scratch / "state"),
        XDG_CONFIG_HOME=str(scratch / "config"),  # no tagentd.toml of the user's
        XDG_DATA_HOME=str(scratch / "data"),  # the default watched folder: data/tagentd/pipelines, empty
    )
    return env


def users_daemon(user_env: Mapping[str, str]) -> str | None:
    """'pid N, runtime dir D' of a daemon running with the user's own settings, if there is one."""
    done = subprocess.run([_bin("tagentd"), "status", "--json"], env=dict(user_env), capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        return None
    try:
        info = json.loads(done.stdout)
        return f"pid {info['pid']}, runtime dir {info['runtime_dir']}"
    except (ValueError, KeyError, TypeError):
        return "its pid is unknown"


def _run(argv: list[str], env: dict[str, str], capture: bool = False) -> subprocess.CompletedProcess[str]:
    """Print the command as a user would type it, then run it (its output goes to ours unless `capture`)."""
    say(f"\n$ {' '.join([Path(argv[0]).name, *argv[1:]])}")
    return subprocess.run(argv, env=env, text=True, capture_output=capture, check=False)


def _die_with_parent(parent: int) -> Callable[[], None]:
    """A preexec_fn: the child gets SIGTERM when `parent` dies (Linux), so not even kill -9 of the demo leaks it."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before fork: the child only calls it
    except (OSError, AttributeError):
        prctl = None

    def arm() -> None:
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the line above: nobody would stop us
            os.kill(os.getpid(), signal.SIGTERM)

    return arm


def _children(pid: int) -> list[int]:
    """The live child pids of `pid` (its workers), from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[1] == str(pid) and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _wait_gone(pids: list[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in pids):
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL)  # ok-sleep: polling interval of a deadline-bounded wait
    return True


class PrivateDaemon:
    """`tagentd start --foreground` as the demo's child, in `scratch`; `stop()` always leaves nothing behind."""

    def __init__(self, scratch: Path, env: dict[str, str]) -> None:
        self.scratch = scratch
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.workers: list[int] = []

    def start(self) -> None:
        argv = [_bin("tagentd"), "start", "--foreground", "--workers", "2"]
        say(f"\n$ {' '.join(['tagentd', *argv[1:]])}     # the demo's private daemon, its child; stopped at the end")
        self.proc = subprocess.Popen(argv, env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True,
                                     preexec_fn=_die_with_parent(os.getpid()))
        deadline = time.monotonic() + START_TIMEOUT
        while not self._answers():
            if self.proc.poll() is not None or time.monotonic() >= deadline:
                log = self.scratch / "state" / "tagentd.log"
                tail = log.read_text(errors="replace").splitlines()[-10:] if log.exists() else ["(no log)"]
                raise RuntimeError("the demo's daemon did not start; its log ends:\n  " + "\n  ".join(tail))
            time.sleep(POLL)  # ok-sleep: polling interval of a deadline-bounded wait

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def _answers(self) -> bool:
        """True once the daemon's control socket answers a ping."""
        runtime_dir = Path(self.env["TAGENTD_RUNTIME_DIR"])
        if not (runtime_dir / CONTROL_SOCKET).exists():
            return False
        try:
            with Client(runtime_dir=runtime_dir, timeout=1.0) as client:
                client.ping()
        except TagentError:
            return False
        return True

    def stop(self) -> None:
        """Ask it to stop (`tagentd stop --fast`: the demo's runs need not finish), then make sure it and its workers are gone."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        self.workers = _children(proc.pid)
        try:
            done = subprocess.run([_bin("tagentd"), "stop", "--fast", "--timeout", str(STOP_TIMEOUT)], env=self.env,
                                  capture_output=True, text=True, timeout=STOP_TIMEOUT + 5, check=False)
            output = (done.stdout + done.stderr).rstrip()  # captured: a closed stdout must not stop the stop
        except subprocess.TimeoutExpired:
            output = "(no answer; stopping it with signals)"
        with contextlib.suppress(StdoutGone):
            say(f"\n$ tagentd stop --fast\n{output}")
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if not _wait_gone(self.workers, 5):
            for pid in self.workers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            _wait_gone(self.workers, 5)


def raise_on_stop_signals() -> None:
    """SIGINT, SIGTERM and SIGHUP raise Interrupted, so `finally` blocks run (Python's default for SIGTERM
    and SIGHUP would end the process on the spot, leaving the daemon behind)."""

    def interrupt(signum: int, _frame: object) -> None:
        raise Interrupted(signum)

    for sig in STOP_SIGNALS:
        signal.signal(sig, interrupt)


def ignore_stop_signals() -> None:
    """While cleaning up: a second Ctrl-C must not cut the cleanup short (children started now inherit this)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def tour(example: Path, env: dict[str, str]) -> int:
    """Submit the example, follow it, show its status and result; the exit status of the run."""
    followed = _run([_bin("tagent"), "submit", str(example), "--param", "company=Acme", "--follow"], env)
    listed = _run([_bin("tagent"), "runs", "--json", "--limit", "1"], env, capture=True)
    runs = json.loads(listed.stdout) if listed.returncode == 0 else []
    if runs:
        run_id = runs[0]["run_id"]
        _run([_bin("tagent"), "status", run_id], env)
        result = _run([_bin("tagent"), "result", run_id, "--json"], env, capture=True)
        if result.returncode == 0:
            data = json.loads(result.stdout)
            say(json.dumps({"final_output": data["final_output"], "total_usage": data["total_usage"]}, indent=2))
    return followed.returncode


def main() -> int:
    example = Path(sys.argv[1]) if len(sys.argv) > 1 else EXAMPLE
    if not example.exists():
        print(f"demo: {example} not found; run 'make demo' from the repository root", file=sys.stderr)
        return 2
    user_env = dict(os.environ)
    scratch = Path(tempfile.mkdtemp(prefix="tagentd-demo-"))
    daemon = PrivateDaemon(scratch, private_env(user_env, scratch))
    raise_on_stop_signals()  # from here on, every way out goes through `finally`
    try:
        theirs = users_daemon(user_env)
        say(f"demo: starting a private tagentd: runtime, state, config and watched folder in {scratch} "
            f"(stopped and removed at the end)")
        if theirs:
            say(f"demo: your own tagentd ({theirs}) keeps running; the demo does not use it")
        daemon.start()
        say(f"demo: the private daemon runs (pid {daemon.pid}); every command below talks to it "
            f"(TAGENTD_RUNTIME_DIR={scratch / 'run'})")
        _run([_bin("tagentd"), "status"], daemon.env)
        return tour(example, daemon.env)
    except StdoutGone:
        return 1
    except RuntimeError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    except Interrupted as stop:
        print(f"\ndemo: {stop}; stopping the private daemon", file=sys.stderr)
        return 128 + stop.signum
    finally:
        ignore_stop_signals()
        daemon.stop()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
