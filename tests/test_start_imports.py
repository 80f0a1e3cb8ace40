"""What the daemon has loaded when it first answers, and when it has loaded: guards on its start-up time (issue 17).

Nearly all of the time from `tagentd start --foreground` to the first answered ping is imports. The daemon
answers pings from the moment control.sock is bound, while it loads the rest (tagentd/app/launch.py): by then it
must have loaded no more than a ping needs (BEFORE_LOAD: no asyncio, no engine, no stores, no executor). Once
loaded (its sd_notify READY=1), pydantic (the settings used to be pydantic models), prometheus-client (with its
HTTP and WSGI exposition modules) and watchdog are still not loaded: the settings are msgspec Structs, and the
metrics and the folder watcher are made once the daemon has answered (tagentd/app/daemon.py). A real daemon
starts here, in temp dirs, and reports `sys.modules` at each of those moments; the tests fail when a module
named here was loaded by then.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DaemonProcess

pytestmark = pytest.mark.timeout(60)

#: Modules the daemon must not have loaded before its first answer.
LATER = ("pydantic", "pydantic_core", "pydantic_ai", "prometheus_client", "watchdog", "tomllib", "starlette",
         "uvicorn", "ray", "opentelemetry", "tagent_client.define.validation")


def probe(hook: str) -> str:
    """A script that runs `tagentd start --foreground` as its console script does, with `hook` installed first; the
    hook calls `report()` at its moment, which writes the loaded modules and the GC's state to argv[1] and exits."""
    return f"""
import gc, json, os, sys
out = sys.argv[1]

def report():
    with open(out, "w") as f:
        json.dump({{"modules": sorted(sys.modules), "gc_enabled": gc.isenabled()}}, f)
    os._exit(0)
{hook}
sys.argv = ["tagentd", "start", "--foreground", "--workers", "1"]
from tagent_client.entry import start
start("tagentd.cli.main")
"""


#: At READY=1 (the daemon has loaded and answers every request).
PROBE = probe("""
import tagentd.app.daemon as daemon

def notify(state):
    if state.startswith("READY"):
        report()

daemon.notify = notify
""")


#: Modules (and their submodules) the daemon must not have loaded when control.sock starts answering pings.
BEFORE_LOAD = (*LATER, "asyncio", "tagentd.app.daemon", "tagentd.runs", "tagentd.broker", "tagentd.executor",
               "tagentd.worker", "tagent_client.core.engine", "tagent_client.define")

#: Once control.sock is bound and its porter answers pings.
DOOR_PROBE = probe("""
import tagentd.app.launch as launch

open_door = launch.open_door

def opened(*args, **kwargs):
    open_door(*args, **kwargs)
    report()

launch.open_door = opened
""")


def loaded_at_ready(tmp_path: Path, script: str = PROBE) -> dict[str, object]:
    env = DaemonProcess(tmp_path).env  # private runtime, state, config and data dirs
    out = tmp_path / "ready.json"
    done = subprocess.run([sys.executable, "-c", script, str(out)], env=env, capture_output=True, text=True, timeout=50)
    assert done.returncode == 0 and out.exists(), done.stderr[-2000:]
    return json.loads(out.read_text())


def test_the_daemon_answers_pings_before_loading_what_only_other_requests_need(tmp_path: Path) -> None:
    # Given a daemon started in the foreground with no config file
    # When control.sock starts answering pings (its porter; the rest of the daemon loads meanwhile)
    state = loaded_at_ready(tmp_path, DOOR_PROBE)
    # Then nothing a ping does not need is loaded yet
    early = sorted(name for name in state["modules"]  # type: ignore[union-attr]
                   if any(name == m or name.startswith(m + ".") for m in BEFORE_LOAD))
    assert not early, f"loaded before control.sock answers pings: {early}"


def test_the_daemon_answers_before_loading_what_answering_does_not_need(tmp_path: Path) -> None:
    # Given a daemon started in the foreground with no config file
    # When it is about to answer its first request
    state = loaded_at_ready(tmp_path)
    # Then none of LATER is loaded (the settings, metrics and watcher do without them until then)
    modules = set(state["modules"])  # type: ignore[arg-type]
    early = sorted(name for name in LATER if name in modules)
    assert not early, f"loaded before the daemon answers: {early}"
    # And the garbage collector is still off (it comes back, after one collection, once the daemon answers)
    assert state["gc_enabled"] is False
