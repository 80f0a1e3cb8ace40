"""What the daemon has loaded when it first answers: a guard on its start-up time (issue 17).

Nearly all of the time from `tagentd start --foreground` to the first answered ping is imports. pydantic (the
settings used to be pydantic models), prometheus-client (with its HTTP and WSGI exposition modules) and watchdog
cost a third of it, and answering needs none of them: the settings are msgspec Structs, and the metrics and the
folder watcher are made once the control socket answers (tagentd/app/daemon.py). A real daemon starts here, in
temp dirs, and reports `sys.modules` at the moment it is about to answer (its sd_notify READY=1); the test
fails when one of LATER was loaded by then.
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

#: Runs `tagentd start --foreground` as its console script does; at READY=1 it writes the state to argv[1] and exits.
PROBE = """
import gc, json, os, sys
out = sys.argv[1]
import tagentd.app.daemon as daemon

def notify(state):
    if state.startswith("READY"):
        with open(out, "w") as f:
            json.dump({"modules": sorted(sys.modules), "gc_enabled": gc.isenabled()}, f)
        os._exit(0)

daemon.notify = notify
sys.argv = ["tagentd", "start", "--foreground", "--workers", "1"]
from tagent_client.entry import start
start("tagentd.cli.main")
"""


def loaded_at_ready(tmp_path: Path) -> dict[str, object]:
    env = DaemonProcess(tmp_path).env  # private runtime, state, config and data dirs
    out = tmp_path / "ready.json"
    done = subprocess.run([sys.executable, "-c", PROBE, str(out)], env=env, capture_output=True, text=True, timeout=50)
    assert done.returncode == 0 and out.exists(), done.stderr[-2000:]
    return json.loads(out.read_text())


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
