"""End-to-end: a real tagentd with real worker processes, driven by `tagent`, `tagentd` and `Client`.

Each test starts its own daemon in private temp dirs (conftest `daemon` / `make_daemon`),
so they can run in any order. One daemon per runtime dir, private dirs, stopping and a daemon that
is not there are in test_daemon_lifecycle.py. Nothing sleeps to wait: tests long-poll the daemon
(`Client.wait`) or poll with a deadline (`wait_until`).
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import DaemonProcess, pid_alive, processes_using, wait_until, write_pipeline
from e2e_helpers import ECHO, RESEARCH, step_status

from tagent_client.errors import exit_code_for
from tagent_client.wire.paths import CONTROL_SOCKET

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("no_process_left_behind")]

RUN_ID = re.compile(r"^[0-9a-z]{8,32}$")
EXIT_INVALID = exit_code_for("load_failed")

SLOW = """
    import asyncio
    from tagent_client import Pipeline

    pipeline = Pipeline("slow")

    @pipeline.task(timeout=60, max_retries=0)
    async def nap(ctx):
        await asyncio.sleep(60)  # ok-sleep: the step's own work (or a yield), not a wait for something
"""


def as_json(proc: Any) -> Any:
    assert proc.returncode == 0, f"exit {proc.returncode}; stderr: {proc.stderr}"
    return json.loads(proc.stdout)


def worker_states(daemon: DaemonProcess) -> list[tuple[int, str]]:
    info = as_json(daemon.admin("status", "--json"))
    return [(w["pid"], w["state"]) for w in info["workers"]]


# -- the CLI, start to stop -------------------------------------------------------------------------


@pytest.fixture
def background(make_daemon: Callable[..., DaemonProcess]) -> Iterator[DaemonProcess]:
    """A DaemonProcess whose daemon the test starts with `tagentd start` (detached); killed at teardown if left."""
    daemon = make_daemon()
    yield daemon
    if processes_using(daemon.root):
        daemon.admin("stop", "--fast", "--timeout", "10")
        for pid in processes_using(daemon.root):
            os.kill(pid, signal.SIGKILL)


def test_cli_drives_a_background_daemon_from_start_to_stop(background: DaemonProcess, tmp_path: Path) -> None:
    # Given a daemon started in the background by `tagentd start`
    started = background.admin("start", "--workers", "2", timeout=30)
    assert started.returncode == 0, started.stderr
    assert "tagentd started" in started.stdout
    # (its workers come once the worker template has imported the agent runtime, a second or more later)
    info = wait_until(lambda: (i := as_json(background.admin("status", "--json")))["workers"] and i, 60,
                      what="the workers to be listed")
    daemon_pid, worker_pids = info["pid"], [w["pid"] for w in info["workers"]]
    assert len(worker_pids) == 2 and all(pid_alive(p) for p in [daemon_pid, *worker_pids])

    # When the offline example is submitted and followed
    follow = background.cli("submit", str(RESEARCH), "--param", "company=Acme", "--follow")

    # Then it exits 0, printing the run id and a line per step
    assert follow.returncode == 0, follow.stderr
    run_id = follow.stdout.splitlines()[0].strip()
    assert RUN_ID.match(run_id)
    for step in ("web_search", "reputation", "social", "score", "final_report"):
        assert re.search(rf"step\.completed {step}\b", follow.stdout), follow.stdout

    # And the read commands show it
    listed = as_json(background.cli("runs", "--json"))
    assert [r["run_id"] for r in listed] == [run_id] and listed[0]["status"] == "completed"
    detail = as_json(background.cli("status", run_id, "--json"))
    assert detail["status"] == "completed"
    assert set(detail["steps"]) == {"web_search", "reputation", "social", "score", "final_report"}
    for step in detail["steps"].values():
        assert step["status"] == "completed" and step["attempts"] == 1 and step["error"] is None
    result = as_json(background.cli("result", run_id, "--json"))
    assert result["status"] == "completed" and result["success"] is True
    assert all(isinstance(out, dict) for out in result["step_outputs"].values())
    assert result["step_outputs"]["score"]["company"] == "Acme"
    assert set(result["final_output"]) == {"title", "summary", "recommendation"}
    assert result["total_usage"]["total_tokens"] > 0
    assert set(result["token_usage"]) == set(result["step_outputs"])
    logs = background.cli("logs", run_id)
    assert logs.returncode == 0 and "scored" in logs.stdout

    # When a long-running run is cancelled with `tagent cancel`
    slow = write_pipeline(tmp_path, "slow.py", SLOW)
    submitted = background.cli("submit", str(slow))
    assert submitted.returncode == 0, submitted.stderr
    slow_id = submitted.stdout.strip()
    with background.client() as client:
        wait_until(lambda: step_status(client, slow_id, "nap") == "running", 10, what="nap to start")
        cancelled = background.cli("cancel", slow_id)
        assert cancelled.returncode == 0, cancelled.stderr
        # Then the run ends cancelled
        wait_until(lambda: client.status(slow_id).status == "cancelled", 10, what="the run to be cancelled")
    assert as_json(background.cli("status", slow_id, "--json"))["status"] == "cancelled"

    # When the daemon is stopped with `tagentd stop`
    stopped = background.admin("stop", timeout=30)

    # Then it and its workers are gone, and so are its sockets
    assert stopped.returncode == 0, stopped.stderr
    wait_until(lambda: not any(pid_alive(p) for p in [daemon_pid, *worker_pids]), 10, what="every process to exit")
    assert not (background.runtime_dir / CONTROL_SOCKET).exists()


# -- submit ---------------------------------------------------------------------------------------------


def test_submit_prints_the_run_id_picks_a_pipeline_and_passes_params(daemon: DaemonProcess, tmp_path: Path) -> None:
    # Given a file with two pipelines
    path = write_pipeline(tmp_path, "two.py", """
        from tagent_client import Pipeline

        alpha = Pipeline("alpha")
        beta = Pipeline("beta")

        @alpha.task
        def a(ctx):
            return {"pipeline": "alpha"}

        @beta.task
        def b(ctx):
            return {"pipeline": "beta", "params": dict(ctx.params)}
    """)

    # When one is picked by name, with params
    plain = daemon.cli("submit", f"{path}:beta", "--param", "who=ann", "--param", "n=3")
    as_doc = daemon.cli("submit", f"{path}:alpha", "--json")

    # Then plain output is the run id alone, --json is {run_id, pipeline}
    assert plain.returncode == 0, plain.stderr
    assert RUN_ID.match(plain.stdout.strip()) and plain.stdout.count("\n") == 1
    doc = as_json(as_doc)
    assert set(doc) == {"run_id", "pipeline"} and doc["pipeline"] == "alpha"
    # And each run used the pipeline picked, and the params reached ctx.params (JSON-parsed)
    with daemon.client() as client:
        beta = client.wait(plain.stdout.strip(), timeout=10)
        alpha = client.wait(doc["run_id"], timeout=10)
    assert beta.step_outputs == {"b": {"pipeline": "beta", "params": {"who": "ann", "n": 3}}}
    assert alpha.step_outputs == {"a": {"pipeline": "alpha"}}


BAD_FILES = {
    "syntax": ("""
        from tagent_client import Pipeline
        pipeline = Pipeline("bad"
        x = = 1
    """, r"bad\.py:\d+: syntax error"),
    "import": ("""
        from tagent_client import Pipeline
        import no_such_module_here
        pipeline = Pipeline("bad")
    """, r"bad\.py:3: ModuleNotFoundError: .*no_such_module_here"),
    "cycle": ("""
        from tagent_client import Pipeline
        pipeline = Pipeline("bad")

        @pipeline.task(depends_on=["b"])
        def a(ctx):
            return 1

        @pipeline.task(depends_on=["a", "nowhere"])
        def b(ctx):
            return 2
    """, r"bad\.py: pipeline 'bad' is invalid: step 'b': depends on unknown step 'nowhere'; "
         r"dependency cycle: (a -> b -> a|b -> a -> b)$"),
}


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_a_bad_pipeline_file_is_refused_in_one_line_and_the_daemon_carries_on(
        kind: str, daemon: DaemonProcess, tmp_path: Path) -> None:
    # Given a pipeline file with a problem
    source, expected = BAD_FILES[kind]
    bad = write_pipeline(tmp_path, "bad.py", source)

    # When it is submitted
    proc = daemon.cli("submit", str(bad))

    # Then submit fails with exit 4 and one line naming the file (and line) or the problems
    assert proc.returncode == EXIT_INVALID, (proc.returncode, proc.stderr)
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("tagent: ") and re.search(expected, lines[0]), lines[0]
    assert lines[0].startswith(f"tagent: {bad}:")

    # And the daemon keeps serving: the next submit runs to completion
    good = write_pipeline(tmp_path, "good.py", ECHO)
    with daemon.client() as client:
        run = client.submit(good, {"k": kind})
        assert client.wait(run.id, timeout=10).step_outputs["echo"]["params"] == {"k": kind}


# -- workers that crash or hang ---------------------------------------------------------------------------


def test_a_step_that_kills_its_worker_is_retried_on_a_replacement(daemon: DaemonProcess, tmp_path: Path) -> None:
    # Given a step that ends its worker process on its first attempt
    path = write_pipeline(tmp_path, "crash.py", """
        import os
        from pathlib import Path
        from tagent_client import Pipeline

        pipeline = Pipeline("crash")

        @pipeline.task(max_retries=2, retry_delay=0.05)
        def boom(ctx):
            if ctx.attempt == 1:
                Path(ctx.params["pidfile"]).write_text(str(os.getpid()))
                os._exit(1)
            return {"attempt": ctx.attempt, "pid": os.getpid()}
    """)
    pidfile = tmp_path / "crashed.pid"
    before = {pid for pid, _ in worker_states(daemon)}

    # When it runs
    with daemon.client() as client:
        run = client.submit(path, {"pidfile": str(pidfile)})
        result = client.wait(run.id, timeout=20)
        detail = client.status(run.id)

    # Then the run completes on a second attempt, in another process
    crashed = int(pidfile.read_text())
    assert result.status == "completed", result.error
    assert detail.steps["boom"].attempts == 2
    assert result.step_outputs["boom"]["attempt"] == 2 and result.step_outputs["boom"]["pid"] != crashed
    # And the dead worker was replaced: two ready workers again, one of them new
    assert crashed in before
    wait_until(lambda: not pid_alive(crashed), 5, what="the crashed worker to be gone")
    def two_ready() -> list[tuple[int, str]] | None:
        states = worker_states(daemon)
        return states if len(states) == 2 and all(state == "ready" for _, state in states) else None

    states = wait_until(two_ready, 10, what="two ready workers")
    now = {pid for pid, _ in states}
    assert crashed not in now and now - before
    assert sorted(now) == sorted(daemon.worker_pids())


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_step_stuck_in_a_cpu_loop_times_out_and_its_worker_is_replaced(
        kind: str, make_daemon: Callable[..., DaemonProcess], tmp_path: Path) -> None:
    # Given a daemon with a short kill grace, and a step that spins forever (in a thread, or on the worker's loop)
    daemon = make_daemon()
    daemon.env["TAGENTD_TIMEOUT_GRACE"] = "0.5"
    daemon.start()
    prefix = "async " if kind == "async" else ""
    path = write_pipeline(tmp_path, "spin.py", f"""
        from tagent_client import Pipeline

        pipeline = Pipeline("spin")

        @pipeline.task(timeout=1, max_retries=0)
        {prefix}def spin(ctx):
            while True:
                pass
    """)
    before = set(daemon.worker_pids())

    # When it runs
    with daemon.client() as client:
        run = client.submit(path)
        began = time.monotonic()
        result = client.wait(run.id, timeout=20)
        took = time.monotonic() - began

        # Then the run fails, reporting the timeout
        assert result.status == "failed"
        assert "timed out" in (client.status(run.id).steps["spin"].error or ""), client.status(run.id)
        assert took < 8, f"the timeout took {took:.1f}s to be reported"
        # And the spinning worker is killed and replaced
        # (a sync step's worker exits by itself once the grace is over; a blocked loop is killed by the supervisor)
        wait_until(lambda: not all(pid_alive(p) for p in before), 10, what="the spinning worker to end")
        why = "exiting with status 70" if kind == "sync" else "would not stop at its timeout"
        wait_until(lambda: why in daemon.log(), 5, what=f"{why!r} in the daemon log")
        wait_until(lambda: len(daemon.worker_pids()) == 2 and set(daemon.worker_pids()) != before
                   and all(st == "ready" for _, st in worker_states(daemon)), 10, what="a replacement worker")
        # And the daemon keeps working
        echo = write_pipeline(tmp_path, "echo.py", ECHO)
        again = client.submit(echo, {"after": kind})
        assert client.wait(again.id, timeout=10).status == "completed"


# -- throughput and concurrency --------------------------------------------------------------------------


def test_two_hundred_concurrent_half_second_waits_finish_in_under_two_seconds(daemon: DaemonProcess, tmp_path: Path) -> None:
    # Given a pipeline of 200 independent steps that each wait 0.5 s
    path = write_pipeline(tmp_path, "fan.py", """
        import asyncio
        from tagent_client import ExecutionMode, Pipeline

        pipeline = Pipeline("fan", max_concurrent_steps=200)

        async def pause(ctx):
            await asyncio.sleep(0.5)  # ok-sleep: the step's own work (or a yield), not a wait for something
            return ctx.step_name

        for i in range(200):
            pipeline.step(f"s{i:03d}", fn=pause, execution_mode=ExecutionMode.CONCURRENT, timeout=30)
    """)

    # When it runs on 2 workers
    with daemon.client(timeout=30) as client:
        run = client.submit(path)
        result = client.wait(run.id, timeout=30)

    # Then every step completes, and the run takes under 2 s (the acceptance bound)
    assert result.status == "completed", result.error
    assert len(result.step_outputs) == 200
    assert result.step_outputs["s123"] == "s123"
    assert result.end_time - result.start_time < 2.0, f"run took {result.end_time - result.start_time:.2f}s"


def test_two_clients_submitting_fifty_runs_each_all_complete_correctly(daemon: DaemonProcess, tmp_path: Path) -> None:
    # Given a pipeline that echoes its params, and two clients in two threads
    path = write_pipeline(tmp_path, "echo.py", ECHO)
    outcomes: dict[str, dict[int, Any]] = {}
    errors: list[BaseException] = []
    go = threading.Barrier(2)

    def client_thread(name: str) -> None:
        try:
            with daemon.client(timeout=30) as client:
                go.wait(10)
                runs = [(i, client.submit(path, {"client": name, "i": i}).id) for i in range(50)]
                outcomes[name] = {i: client.wait(run_id, timeout=60) for i, run_id in runs}
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    # When both submit 50 runs at once
    threads = [threading.Thread(target=client_thread, args=(name,)) for name in ("left", "right")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)

    # Then all 100 runs complete, each with its own params echoed back
    assert not errors, errors
    for name in ("left", "right"):
        assert len(outcomes[name]) == 50
        for i, result in outcomes[name].items():
            assert result.status == "completed"
            assert result.step_outputs["echo"] == {"params": {"client": name, "i": i}, "attempt": 1}
    with daemon.client() as client:
        assert len(client.runs(limit=1000)) == 100
