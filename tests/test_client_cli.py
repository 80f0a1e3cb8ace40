"""The `tagent` CLI and `Client`/`AsyncClient`, without a real daemon.

A `FakeDaemon` binds a real ZeroMQ ROUTER on <runtime dir>/control.sock in a
thread and answers with Reply/ErrorReply built from protocol.py, so the client
side (sockets, ids, timeouts, decoding, error mapping, exit codes) runs for real.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import click
import msgspec
import pytest
import zmq
from click.testing import CliRunner

from tagent_client.cli.live import LiveView, StepBoard
from tagent_client.cli.main import cli
from tagent_client.cli.render import age, duration, event_line
from tagent_client.cli.runs import build_params, parse_param
from tagent_client.client.aio import AsyncClient
from tagent_client.client.sync import Client
from tagent_client.define.loading import split_spec
from tagent_client.errors import DaemonUnavailable, NotFound, RequestTimeout, exit_code_for
from tagent_client.wire import protocol
from tagent_client.wire.protocol import EventBatch, EventRecord, LogBatch, RunDetail, RunSummary, StepInfo

pytestmark = pytest.mark.timeout(30)

REPO = Path(__file__).resolve().parents[1]
RUN = "0abc1def2gh3j"
Answer = Callable[[protocol.Request], list[protocol.Reply | protocol.ErrorReply]]


# -- the fake daemon ---------------------------------------------------------------------------


def ok(request: protocol.Request, result: object = None) -> list[protocol.Reply | protocol.ErrorReply]:
    return [protocol.Reply(id=request.id, result=result)]


def error(request: protocol.Request, code: str, message: str) -> list[protocol.Reply | protocol.ErrorReply]:
    return [protocol.ErrorReply(id=request.id, code=code, message=message)]


class FakeDaemon:
    """A ROUTER at <dir>/control.sock answering each request with `answer(request)` (pings are answered for it).

    Its events.sock confirms subscriptions (and publishes nothing else).
    """

    def __init__(self, runtime_dir: Path, answer: Answer) -> None:
        self.endpoint = f"ipc://{runtime_dir / 'control.sock'}"
        self.events_endpoint = f"ipc://{runtime_dir / 'events.sock'}"
        self.answer = answer
        self.requests: list[protocol.Request] = []
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> FakeDaemon:
        self._thread.start()
        assert self._ready.wait(5), "fake daemon did not bind"
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def hold(self, seconds: float) -> None:
        """Emulate a long-poll with no news (returns early when the fake stops)."""
        self._stop.wait(seconds)

    def _serve(self) -> None:
        router: zmq.Socket = zmq.Context.instance().socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        router.bind(self.endpoint)
        events: zmq.Socket = zmq.Context.instance().socket(zmq.ROUTER)
        events.setsockopt(zmq.LINGER, 0)
        events.bind(self.events_endpoint)
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        poller.register(events, zmq.POLLIN)
        self._ready.set()
        try:
            while not self._stop.is_set():
                ready = dict(poller.poll(20))
                if events in ready:
                    identity, _ = events.recv_multipart()
                    confirm = EventRecord(seq=0, ts=time.time(), topic="broker.subscribed", data={})
                    events.send_multipart([identity, msgspec.msgpack.encode([confirm])])
                if router not in ready:
                    continue
                identity, frame = router.recv_multipart()
                request = protocol.decode_request(frame)
                self.requests.append(request)
                replies = ok(request, {"pid": 1, "version": "0.1.0"}) if isinstance(request, protocol.Ping) \
                    else self.answer(request)
                for reply in replies:
                    router.send_multipart([identity, protocol.encode(reply)])
        finally:
            router.close(linger=0)
            events.close(linger=0)


@pytest.fixture
def runtime_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "rt"
    directory.mkdir(mode=0o700)
    return directory


@pytest.fixture
def pipeline_file(tmp_path: Path) -> Path:
    path = tmp_path / "hello.py"
    path.write_text("from tagent_client import Pipeline\npipeline = Pipeline('hello').step('greet', goal='hi')\n")
    return path


def invoke(runtime_dir: Path, *args: str) -> click.testing.Result:
    return CliRunner().invoke(cli, list(args), env={"TAGENTD_RUNTIME_DIR": str(runtime_dir)})


def summary(run_id: str = RUN, status: str = "running", created_at: float | None = None) -> RunSummary:
    return RunSummary(run_id=run_id, pipeline="hello", status=status, steps_done=1, steps_total=2,
                      created_at=time.time() - 5 if created_at is None else created_at)


def result_dict(status: str) -> dict[str, object]:
    return {"pipeline_name": "hello", "run_id": RUN, "status": status, "success": status == "completed",
            "step_outputs": {"greet": {"text": "hi"}} if status == "completed" else {},
            "step_metadata": {"greet": {"status": status if status != "completed" else "completed", "attempts": 1,
                                        "duration_s": 0.25, "error": None if status == "completed" else "boom"}},
            "error": None if status == "completed" else "step 'greet' failed"}


def events_script(status: str = "completed") -> list[EventRecord]:
    """The run's whole event log, as the daemon would keep it."""
    now = time.time()
    return [
        EventRecord(seq=1, ts=now, topic="run.started", data={"run_id": RUN, "pipeline": "hello"}),
        EventRecord(seq=2, ts=now, topic="step.started", data={"step": "greet", "attempt": 1}),
        EventRecord(seq=3, ts=now, topic=f"step.{'completed' if status == 'completed' else 'failed'}",
                    data={"step": "greet", "attempts": 1, "error": None if status == "completed" else "boom"}),
        EventRecord(seq=4, ts=now, topic="run.finished", data={"status": status}),
    ]


def finished_run(status: str) -> Answer:
    """Answers for a run that ends with `status`: events in two batches, then its result."""
    def answer(request: protocol.Request) -> list[protocol.Reply | protocol.ErrorReply]:
        if isinstance(request, protocol.Submit):
            return ok(request, protocol.SubmitResult(run_id=RUN, pipeline="hello", steps=["greet"]))
        if isinstance(request, protocol.GetEvents):
            log = events_script(status)
            new = [e for e in log if e.seq > request.after][:3]
            return ok(request, EventBatch(events=new, finished=request.after >= 3, status=status))
        if isinstance(request, protocol.GetLogs):
            return ok(request, LogBatch(lines=[], finished=True))
        if isinstance(request, protocol.GetResult):
            return ok(request, result_dict(status))
        return error(request, "invalid_request", f"unexpected {type(request).__name__}")
    return answer


# -- help, version, no daemon -----------------------------------------------------------------

COMMANDS = ["submit", "runs", "status", "logs", "result", "cancel", "resume", "retry", "history", "wait"]


def test_help_lists_every_command_and_version_prints() -> None:
    # Given the CLI / When asked for help and version
    help_result = CliRunner().invoke(cli, ["--help"])
    version_result = CliRunner().invoke(cli, ["--version"])
    # Then both succeed, help names every command, version names the program
    assert help_result.exit_code == 0
    for name in COMMANDS:
        assert name in help_result.output
    assert version_result.exit_code == 0 and version_result.output.startswith("tagent, version ")


@pytest.mark.parametrize("args", [
    ["submit", "{file}"], ["submit", "{file}:hello", "--follow"], ["runs"], ["runs", "--json"], ["status", RUN],
    ["status", RUN, "--json"], ["logs", RUN], ["logs", RUN, "-f"], ["result", RUN], ["cancel", RUN],
    ["resume", RUN], ["retry", RUN, "--step", "greet"], ["history", RUN], ["wait", RUN, "--timeout", "1"],
], ids=" ".join)
def test_every_command_without_a_daemon_says_how_to_start_one(args: list[str], tmp_path: Path,
                                                               pipeline_file: Path) -> None:
    # Given an empty runtime dir (no daemon)
    empty = tmp_path / "empty"
    empty.mkdir(mode=0o700)
    # When a command runs
    result = invoke(empty, *[a.replace("{file}", str(pipeline_file)) for a in args])
    # Then it prints one line naming the fix, nothing on stdout, and exits 3
    assert result.exit_code == exit_code_for("daemon_unavailable") == 3, result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("tagent: no tagentd running") and "tagentd start" in lines[0]


def test_console_script_without_a_daemon_exits_3_in_a_real_process(tmp_path: Path) -> None:
    # Given an empty runtime dir and a real interpreter
    env = {**os.environ, "TAGENTD_RUNTIME_DIR": str(tmp_path),
           "PYTHONPATH": os.pathsep.join([str(REPO / "client"), str(REPO)])}
    # When the command runs as a process
    done = subprocess.run([sys.executable, "-m", "tagent_client.cli", "runs", "--json"], env=env,
                          capture_output=True, text=True, timeout=20)
    # Then exit 3, one line on stderr, nothing on stdout
    assert done.returncode == 3, done.stderr
    assert done.stdout == ""
    assert len(done.stderr.splitlines()) == 1 and "tagentd start" in done.stderr


def test_a_socket_file_nobody_answers_on_is_reported_as_no_daemon(runtime_dir: Path) -> None:
    # Given a stale control.sock left by a dead process
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(runtime_dir / "control.sock"))
    stale.close()
    # When a client connects / Then the ping times out into DaemonUnavailable, promptly
    started = time.monotonic()
    with pytest.raises(DaemonUnavailable, match="tagentd start"):
        Client(runtime_dir, timeout=0.3)
    assert time.monotonic() - started < 5


# -- params --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("n=3", ("n", 3)), ("flag=true", ("flag", True)), ("name=alice", ("name", "alice")),
    ("topics=[\"a\", \"b\"]", ("topics", ["a", "b"])), ("cfg={\"k\": 1}", ("cfg", {"k": 1})),
    ("empty=", ("empty", "")), ("eq=a=b", ("eq", "a=b")), ("quoted=\"3\"", ("quoted", "3")),
])
def test_param_values_are_json_when_they_parse_else_strings(text: str, expected: tuple[str, object]) -> None:
    # Given KEY=VALUE / When parsed / Then VALUE is JSON if it parses, else the string
    assert parse_param(text) == expected


def test_params_json_is_overridden_by_each_param() -> None:
    # Given both forms / When combined / Then --param wins key by key
    assert build_params(["b=2"], '{"a": 1, "b": 1}') == {"a": 1, "b": 2}


@pytest.mark.parametrize("args", [["--param", "novalue"], ["--params-json", "[1]"], ["--params-json", "{bad"]])
def test_bad_params_are_usage_errors(args: list[str], runtime_dir: Path, pipeline_file: Path) -> None:
    # Given a malformed param / When submitting / Then click's usage error, exit 2, before any connection
    result = invoke(runtime_dir, "submit", str(pipeline_file), *args)
    assert result.exit_code == 2, result.output


def test_file_spec_splits_at_the_last_colon_unless_the_file_exists(tmp_path: Path) -> None:
    odd = tmp_path / "odd:name.py"
    odd.write_text("")
    assert split_spec("pipes/a.py:research") == ("pipes/a.py", "research")
    assert split_spec("pipes/a.py") == ("pipes/a.py", None)
    assert split_spec(str(odd)) == (str(odd), None)


# -- against the fake daemon --------------------------------------------------------------------


def test_client_decodes_runs_and_status_and_maps_errors(runtime_dir: Path) -> None:
    # Given a daemon that knows one run
    listed = summary()
    detail = RunDetail(run_id=RUN, pipeline="hello", status="running", created_at=time.time(),
                       steps={"greet": StepInfo(status="completed", attempts=1, duration_s=0.2)})

    def answer(request: protocol.Request) -> list[protocol.Reply | protocol.ErrorReply]:
        if isinstance(request, protocol.ListRuns):
            return ok(request, [listed])
        if isinstance(request, protocol.GetRun) and request.run_id == RUN:
            return ok(request, detail)
        if isinstance(request, protocol.GetHistory):
            return ok(request, [[1.0, "uid 1000", "submitted", {"path": "x"}]])
        return error(request, "not_found", f"no run {getattr(request, 'run_id', '?')!r}")

    with FakeDaemon(runtime_dir, answer) as daemon, Client(runtime_dir) as client:
        # When asked / Then replies decode into the protocol's result shapes
        assert client.ping()["version"] == "0.1.0"
        assert client.runs(limit=5, status="running") == [listed]
        assert client.status(RUN) == detail
        assert client.history(RUN) == [{"ts": 1.0, "who": "uid 1000", "what": "submitted", "data": {"path": "x"}}]
        # And an ErrorReply is raised as its error class
        with pytest.raises(NotFound, match="no run 'nope'"):
            client.status("nope")
    # And every request carried increasing ids and the caller's pid/uid
    ids = [r.id for r in daemon.requests]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(r.pid == os.getpid() and r.uid == os.getuid() for r in daemon.requests)
    listing = next(r for r in daemon.requests if isinstance(r, protocol.ListRuns))
    assert (listing.limit, listing.status) == (5, "running")


def test_cli_maps_an_error_reply_to_one_line_and_its_exit_code(runtime_dir: Path) -> None:
    # Given a daemon that knows no runs
    with FakeDaemon(runtime_dir, lambda r: error(r, "not_found", "no run 'nope'; see 'tagent runs'")):
        # When the CLI asks for one
        result = invoke(runtime_dir, "status", "nope", "--json")
    # Then one line on stderr, nothing on stdout, exit code of not_found
    assert result.exit_code == exit_code_for("not_found") == 6
    assert result.stdout == ""
    assert result.stderr == "tagent: no run 'nope'; see 'tagent runs'\n"


def test_cli_read_commands_print_tables_or_only_json(runtime_dir: Path) -> None:
    # Given a daemon with one run
    detail = RunDetail(run_id=RUN, pipeline="hello", status="failed", created_at=time.time() - 120,
                       steps={"greet": StepInfo(status="failed", attempts=3, error="boom")})

    def answer(request: protocol.Request) -> list[protocol.Reply | protocol.ErrorReply]:
        return ok(request, [summary()] if isinstance(request, protocol.ListRuns) else detail)

    with FakeDaemon(runtime_dir, answer):
        # When listing and showing
        table = invoke(runtime_dir, "runs")
        shown = invoke(runtime_dir, "status", RUN)
        as_json = invoke(runtime_dir, "status", RUN, "--json")
    # Then tables for people, and pure JSON with --json
    assert table.exit_code == 0 and RUN in table.stdout and "1/2" in table.stdout and " 5s" in table.stdout
    assert shown.exit_code == 0 and "created 2m ago" in shown.stdout and "boom" in shown.stdout
    data = json.loads(as_json.stdout)
    greet = data["steps"]["greet"]
    assert data["run_id"] == RUN and (greet["status"], greet["attempts"], greet["error"]) == ("failed", 3, "boom")


def test_a_request_the_daemon_never_answers_times_out(runtime_dir: Path) -> None:
    # Given a daemon that swallows `runs`
    with FakeDaemon(runtime_dir, lambda r: []), Client(runtime_dir, timeout=0.3) as client:
        # When asked / Then RequestTimeout, promptly
        started = time.monotonic()
        with pytest.raises(RequestTimeout, match="'runs' request"):
            client.runs()
        assert time.monotonic() - started < 5


def test_a_late_reply_to_a_timed_out_request_is_ignored(runtime_dir: Path) -> None:
    # Given a daemon that answers the first `runs` only after the client gave up (just before the second's answer)
    late: list[protocol.Request] = []

    def answer(request: protocol.Request) -> list[protocol.Reply | protocol.ErrorReply]:
        if not late:
            late.append(request)
            return []
        stale = ok(late[0], [summary("stale00000000")])
        return stale + ok(request, [summary("fresh00000000")])

    with FakeDaemon(runtime_dir, answer), Client(runtime_dir, timeout=0.3) as client:
        with pytest.raises(RequestTimeout):
            client.runs()
        # When the next request runs
        runs = client.runs()
    # Then it gets its own answer and the stale one is dropped and counted
    assert [r.run_id for r in runs] == ["fresh00000000"]
    assert client.stale_replies == 1


@pytest.mark.parametrize(("status", "code"), [("completed", 0), ("failed", 1)])
def test_submit_follow_prints_one_line_per_event_and_exits_by_outcome(status: str, code: int, runtime_dir: Path,
                                                                       pipeline_file: Path) -> None:
    # Given a daemon whose run ends with `status`
    with FakeDaemon(runtime_dir, finished_run(status)) as daemon:
        # When submitting with --follow (stdout is not a terminal)
        result = invoke(runtime_dir, "submit", f"{pipeline_file}:hello", "--param", "n=3", "--follow")
    # Then the run id, one plain line per event, the summary; exit by outcome
    assert result.exit_code == code, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == RUN
    assert any(line.endswith("step.started greet (attempt 1)") for line in lines)
    assert any(f"run.finished {status}" in line for line in lines)
    assert f"run {RUN} of hello: {status.upper()}" in result.stdout
    submitted = next(r for r in daemon.requests if isinstance(r, protocol.Submit))
    assert submitted.path == str(pipeline_file.resolve()) and submitted.target == "hello"
    assert submitted.params == {"n": 3} and submitted.source == pipeline_file.read_text()


def test_submit_json_sends_an_absolute_path_and_prints_only_json(runtime_dir: Path, pipeline_file: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a relative FILE:NAME
    monkeypatch.chdir(pipeline_file.parent)
    with FakeDaemon(runtime_dir, finished_run("completed")) as daemon:
        # When submitting with --json
        result = invoke(runtime_dir, "submit", "hello.py:hello", "--params-json", '{"topic": "x"}', "--json")
    # Then stdout is exactly the JSON record and the daemon got the absolute path
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {"run_id": RUN, "pipeline": "hello"}
    submitted = next(r for r in daemon.requests if isinstance(r, protocol.Submit))
    assert submitted.path == str(pipeline_file.resolve()) and submitted.params == {"topic": "x"}


def test_wait_returns_the_result_or_times_out(runtime_dir: Path) -> None:
    # Given one run that finishes and one that never does
    def answer(request: protocol.Request) -> list[protocol.Reply | protocol.ErrorReply]:
        if isinstance(request, protocol.GetEvents) and request.run_id == "forever00000":
            daemon.hold(request.wait)
            return ok(request, EventBatch(events=[], finished=False, status="running"))
        return finished_run("completed")(request)

    with FakeDaemon(runtime_dir, answer) as daemon, Client(runtime_dir) as client:
        # When waiting / Then the result, or RequestTimeout after the given time
        assert client.wait(RUN).success
        with pytest.raises(RequestTimeout, match=r"did not finish within 0\.3s"):
            client.wait("forever00000", timeout=0.3)
        assert [e.seq for e in client.follow(RUN)] == [1, 2, 3, 4]


def test_async_client_routes_concurrent_replies_and_maps_errors(runtime_dir: Path) -> None:
    # Given a daemon that answers `runs` and `status`, and reports unknown runs
    def answer(request: protocol.Request) -> list[protocol.Reply | protocol.ErrorReply]:
        if isinstance(request, protocol.ListRuns):
            return ok(request, [summary()])
        if isinstance(request, protocol.GetRun):
            return error(request, "not_found", "no run 'nope'")
        return finished_run("completed")(request)

    async def scenario() -> None:
        async with AsyncClient(runtime_dir) as client:
            # When several calls run at once / Then each gets its own reply
            pong, runs, result = await asyncio.gather(client.ping(), client.runs(), client.result(RUN))
            assert pong["pid"] == 1 and runs[0].run_id == RUN and result.success
            assert [e.seq async for e in client.follow(RUN)] == [1, 2, 3, 4]
            with pytest.raises(NotFound):
                await client.status("nope")

    with FakeDaemon(runtime_dir, answer):
        asyncio.run(scenario())


def test_async_client_without_a_daemon_raises_daemon_unavailable(tmp_path: Path) -> None:
    async def scenario() -> None:
        with pytest.raises(DaemonUnavailable, match="tagentd start"):
            await AsyncClient(tmp_path).runs()

    asyncio.run(scenario())


# -- rendering -----------------------------------------------------------------------------------


def test_ages_and_durations_read_naturally() -> None:
    assert [age(s) for s in (3, 125, 3700, 90000)] == ["3s", "2m", "1h", "1d"]
    assert [duration(s) for s in (None, 0.25, 12.34, 125, 3725)] == ["-", "250ms", "12.3s", "2m05s", "1h02m"]


def test_event_lines_and_the_step_board_follow_events() -> None:
    # Given a run's events
    board = StepBoard(RUN, "hello", ["greet", "later"])
    for record in events_script():
        board.apply(record)
    # Then the board knows each step and the lines say so
    assert board.status == "completed" and board.rows["greet"].status == "completed"
    assert board.rows["later"].status == "pending"
    text = "\n".join(board.lines(time.time(), 100, 20, {"completed": "+", "pending": "."}, color=False))
    assert "+ greet" in text and ". later" in text and "1/2 steps" in text
    assert event_line(events_script()[1]).endswith("step.started greet (attempt 1)")


def test_live_view_redraws_in_place_on_a_terminal() -> None:
    # Given a view on a terminal
    out = io.StringIO()
    view = LiveView(StepBoard(RUN, "hello", ["greet"]), out=out, tty=True)
    # When two batches arrive
    events = events_script()
    view.update(events[:2])
    first = out.getvalue()
    view.update(events[2:])
    # Then the first draw starts fresh and the second moves the cursor back up over it
    assert "\x1b[2K" in first and "A\r" not in first
    assert out.getvalue()[len(first):].startswith("\x1b[2A\r")
