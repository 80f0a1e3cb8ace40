"""Which modules each command of `tagent` and `tagentd` loads: a guard on their start-up time.

Nearly all of a command's wall time is imports (issue 11, finding 2). pydantic, pydantic-ai,
asyncio and the daemon's settings (tagentd.settings.config, which pulls asyncio and the LLM settings) each
cost a multiple of the interpreter's own start, and printing a table needs none of them. Each
command below runs in a real process against a real daemon; an `atexit` hook writes the names in
sys.modules when it ends. A command fails the guard when it loaded a HEAVY module it is not listed
as needing. New commands go into COMMANDS (with what they may load, if anything).
"""

from __future__ import annotations

import gc
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import DaemonProcess, wait_until, write_pipeline

from tagent_client.entry import start

pytestmark = pytest.mark.timeout(120)

HEAVY = ("pydantic", "pydantic_ai", "asyncio", "tagentd.settings.config", "grandalf", "starlette", "uvicorn",
         "prometheus_client", "opentelemetry", "ray")  # the metrics, traces and Ray executor came after the guard

#: (program, arguments, HEAVY modules the command may load); {run}, {file}, {pipeline}, {checkpoint}, {new} are filled in.
#: `tagentd stop` stops the daemon, so it comes last.
COMMANDS: list[tuple[str, list[str], tuple[str, ...]]] = [
    ("tagent", ["--help"], ()),
    ("tagent", ["runs"], ()),
    ("tagent", ["status", "{run}"], ()),
    ("tagent", ["logs", "{run}"], ()),
    ("tagent", ["result", "{run}"], ()),
    ("tagent", ["history", "{run}"], ()),
    ("tagent", ["graph", "{run}", "--format", "mermaid"], ()),
    ("tagent", ["graph", "{run}", "--format", "svg"], ("grandalf",)),  # the SVG layout library
    ("tagent", ["wait", "{run}"], ()),
    ("tagent", ["submit", "{file}", "--follow"], ()),
    ("tagent", ["send", "{pipeline}", '{"n": 1}'], ()),
    ("tagent", ["publish", "imports.check", '{"n": 1}'], ()),
    ("tagent", ["space", "put", "imports", "k", "1"], ()),
    ("tagent", ["space", "get", "imports", "k"], ()),
    ("tagent", ["space", "ls"], ()),
    ("tagent", ["space", "ls", "imports"], ()),
    ("tagent", ["space", "log", "imports"], ()),
    ("tagent", ["transcript", "{run}", "hello"], ()),
    ("tagent", ["pipelines"], ()),
    ("tagent", ["mailbox", "ls"], ()),
    ("tagent", ["mailbox", "dead", "{pipeline}"], ()),
    ("tagent", ["watch"], ()),
    ("tagent", ["templates"], ()),
    ("tagent", ["templates", "--json"], ()),
    ("tagent", ["new", "{new}", "--template", "company-research"], ()),
    ("tagentd", ["--help"], ()),
    ("tagentd", ["version"], ()),
    ("tagentd", ["status"], ()),
    ("tagentd", ["status", "--json"], ()),
    ("tagentd", ["gc", "--dry-run"], ()),
    ("tagentd", ["inspect", "{checkpoint}"], ("asyncio",)),  # the checkpoint module is the daemon's store
    ("tagentd", ["stop", "--timeout", "5"], ()),
]

#: Runs a command as its console script does and, at exit, writes sorted sys.modules to argv[1].
PROBE = """
import atexit, sys
out, program = sys.argv[1], sys.argv[2]
atexit.register(lambda: open(out, "w").write("\\n".join(sorted(sys.modules))))
sys.argv = [program, *sys.argv[3:]]
from tagent_client.entry import start
start("tagent_client.cli.main" if program == "tagent" else "tagentd.cli.main")
"""

PIPELINE = """
from tagent_client import Pipeline

pipeline = Pipeline("imports_check")

@pipeline.task(final=True)
def hello(ctx):
    ctx.log.info("hello")
    return "hi"
"""


def loaded_modules(daemon: DaemonProcess, program: str, args: list[str], out: Path) -> set[str]:
    done = subprocess.run([sys.executable, "-c", PROBE, str(out), program, *args], env=daemon.env, text=True,
                          capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, f"{program} {' '.join(args)} exited {done.returncode}: {done.stderr.strip()}"
    return set(out.read_text().split())


def heavy_in(modules: set[str]) -> list[str]:
    return [h for h in HEAVY if any(m == h or m.startswith(h + ".") for m in modules)]


def test_no_command_loads_heavy_modules_it_does_not_need(daemon: DaemonProcess, tmp_path: Path) -> None:
    # Given a daemon with one finished run of a function pipeline
    path = write_pipeline(tmp_path, "imports_check.py", PIPELINE)
    with daemon.client() as client:
        run_id = client.submit(path).id
        client.wait(run_id, timeout=30)
    checkpoint = wait_until(lambda: next(iter(sorted((daemon.state_dir / "wal").glob("*.wal"))), None), 10,
                            what="a WAL segment")
    fill = {"{run}": run_id, "{file}": str(path), "{pipeline}": "imports_check", "{checkpoint}": str(checkpoint),
            "{new}": str(tmp_path / "from_template.py")}
    # When each command runs to its end in a process of its own
    problems = []
    for index, (program, template, allowed) in enumerate(COMMANDS):
        args = [fill.get(arg, arg) for arg in template]
        modules = loaded_modules(daemon, program, args, tmp_path / f"modules-{index}.txt")
        extra = [name for name in heavy_in(modules) if name not in allowed]
        if extra:
            problems.append(f"'{program} {' '.join(template)}' loaded {', '.join(extra)}")
    # Then none loaded a heavy module it does not need
    assert not problems, ("commands loaded modules that slow their start (import them only on the path that needs "
                          "them, or list them in COMMANDS):\n  " + "\n  ".join(problems))


#: The commands with a start-time target (issue 11, finding 2: <= 3x a bare start) and what they may load beyond
#: FLOOR, the imports every command that talks to the daemon needs, besides the client's own modules.
TARGETED = [["runs"], ["status", "{run}"], ["logs", "{run}"], ["send", "{pipeline}", '{"n": 2}']]
FLOOR = "import click, msgspec, zmq"
BEYOND_FLOOR = {"gc", "copy", "dataclasses", "locale", "_locale"}  # gc: built in, the console scripts' start


def test_targeted_commands_load_little_beyond_click_msgspec_and_zmq(daemon: DaemonProcess, tmp_path: Path) -> None:
    """Small standard modules add up too: templates (difflib, shutil) and pipeline loading (hashlib,
    traceback) once crept into every command this way, ~10% of `tagent runs`."""
    # Given a daemon with one finished run, and what importing click, msgspec and zmq alone loads
    path = write_pipeline(tmp_path, "imports_check.py", PIPELINE)
    with daemon.client() as client:
        run_id = client.submit(path).id
        client.wait(run_id, timeout=30)
    floor = tmp_path / "floor.txt"
    subprocess.run([sys.executable, "-c", f"{FLOOR}\nimport sys\nopen({str(floor)!r}, 'w').write('\\n'.join(sys.modules))"],
                   check=True, timeout=60)
    floor_modules = set(floor.read_text().split())
    # When each targeted command runs to its end
    problems = []
    for index, template in enumerate(TARGETED):
        args = [{"{run}": run_id, "{pipeline}": "imports_check"}.get(arg, arg) for arg in template]
        modules = loaded_modules(daemon, "tagent", args, tmp_path / f"targeted-{index}.txt")
        extra = sorted(m for m in modules - floor_modules - BEYOND_FLOOR
                       if m != "tagent_client" and not m.startswith("tagent_client."))
        if extra:
            problems.append(f"'tagent {' '.join(template)}' loaded {', '.join(extra)}")
    # Then each loaded nothing beyond the floor but the client's modules and the few listed
    assert not problems, ("commands with a start-time target loaded more than they need (import it on the path "
                          "that needs it):\n  " + "\n  ".join(problems))


def test_tagent_ui_loads_neither_the_web_server_nor_anything_heavy(make_daemon: Any, tmp_path: Path) -> None:
    # Given a daemon serving the dashboard
    daemon = make_daemon(workers=1, extra=["--web"]).start()
    # When `tagent ui` prints its address
    modules = loaded_modules(daemon, "tagent", ["ui"], tmp_path / "modules-ui.txt")
    # Then it loaded no heavy module: the web server lives in the dashboard's process only
    assert heavy_in(modules) == []


def test_the_guard_sees_a_heavy_import(daemon: DaemonProcess, tmp_path: Path) -> None:
    # Given the probe / When a command that needs the daemon's settings runs (config show loads tagentd.settings.config)
    modules = loaded_modules(daemon, "tagentd", ["config", "show"], tmp_path / "modules.txt")
    # Then the guard notices it (so an empty finding above means something); the settings no longer bring asyncio
    assert "tagentd.settings.config" in heavy_in(modules) and "asyncio" not in heavy_in(modules)


def test_a_console_script_loads_its_program_with_collection_off_and_runs_it_with_collection_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a program that notes whether the garbage collector ran while it loaded and while it runs
    (tmp_path / "probe_program.py").write_text(
        "import gc\nLOADING = gc.isenabled()\nRUNNING = []\n\ndef main():\n    RUNNING.append(gc.isenabled())\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    # When the console scripts' start runs it
    try:
        start("probe_program")
    finally:
        gc.unfreeze()  # start() froze this test process's objects; give them back to the collector
    # Then it loaded with collection off and ran with it on, as it is now
    import probe_program

    assert probe_program.LOADING is False and probe_program.RUNNING == [True] and gc.isenabled()


def test_ctrl_c_while_a_command_loads_ends_it_quietly_with_130(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a program whose import is interrupted by Ctrl-C (as `tagent` is when Ctrl-C comes in its first 0.1 s,
    # e.g. in `make demo`)
    (tmp_path / "interrupted_program.py").write_text("raise KeyboardInterrupt\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    # When the console scripts' start loads it
    with pytest.raises(SystemExit) as ended:
        try:
            start("interrupted_program")
        finally:
            gc.unfreeze()
    # Then it ends with the status of an interrupted command, not with a KeyboardInterrupt traceback
    assert ended.value.code == 130
