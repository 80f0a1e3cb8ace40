"""Small CLI inconsistencies of issue 11 (finding 7), each against a real daemon.

STEPS in `tagent runs` counts completed steps only; `space ls` lists the spaces; `space log`
says why an access was refused; `space del` of a missing key exits 6 like `space get`;
`tagentd gc` says which runs it keeps whatever the limits; `tagentd inspect` of a file that is
not a checkpoint is a bad argument, not a config error; `transcript` of a function step says so;
`tagent watch` does not repeat a file's path in DETAIL; a dropped file without a model is not
told to pass --model.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import DaemonProcess, wait_until, write_pipeline

from tagent_client.errors import exit_code_for
from tagent_client.wire.protocol import WatchedFile

pytestmark = pytest.mark.timeout(90)

PIPELINES = """
from tagent_client import Pipeline

three = Pipeline("three")

@three.task()
def first(ctx):
    return 1

@three.task(depends_on=["first"])
async def second(ctx):
    await ctx.receive(timeout=30)  # still waiting when the test cancels the run

@three.task(depends_on=["second"], final=True)
def third(ctx):
    return 3

intruder = Pipeline("intruder")

@intruder.task(final=True)
async def peek(ctx):
    return await ctx.space("notes").get("k")
"""


@pytest.fixture
def pipes(tmp_path: Path) -> Path:
    return write_pipeline(tmp_path, "pipes.py", PIPELINES)


def test_runs_counts_only_the_steps_that_completed(daemon: DaemonProcess, pipes: Path) -> None:
    # Given a run of three steps cancelled while its second step runs
    with daemon.client() as client:
        run_id = client.submit(f"{pipes}:three").id
        wait_until(lambda: client.status(run_id).steps["second"].status == "running", 20, what="the second step")
        client.cancel(run_id)
        assert client.wait(run_id, timeout=20).status == "cancelled"
    # When the runs are listed
    listed = daemon.cli("runs")
    # Then its row says one of three steps completed (not 3/3: the other two were cancelled)
    row = next(line for line in listed.stdout.splitlines() if line.startswith(run_id))
    assert row.split()[2:4] == ["cancelled", "1/3"], listed.stdout


def test_space_ls_without_a_name_lists_the_spaces(daemon: DaemonProcess) -> None:
    # Given keys in two spaces
    for space, key in (("notes", "a"), ("notes", "b"), ("cache", "x")):
        assert daemon.cli("space", "put", space, key, "1").returncode == 0
    # When listing without a NAME
    listed = daemon.cli("space", "ls")
    as_json = json.loads(daemon.cli("space", "ls", "--json").stdout)
    # Then every space is there with its number of keys
    assert listed.returncode == 0, listed
    rows = {line.split()[0]: line.split()[1] for line in listed.stdout.splitlines()[1:]}
    assert rows == {"cache": "1", "notes": "2"}, listed.stdout
    assert {s["name"]: s["keys"] for s in as_json} == {"cache": 1, "notes": 2}


def test_space_log_says_why_each_access_was_refused(daemon: DaemonProcess, pipes: Path) -> None:
    # Given a key at version 1 in a space only 'trusted' may use
    assert daemon.cli("space", "put", "notes", "k", "1").returncode == 0
    assert daemon.cli("space", "allow", "notes", "trusted").returncode == 0
    # When a missing key is read, a compare-and-set expects the wrong version, and another pipeline reads
    assert daemon.cli("space", "get", "notes", "nope").returncode == exit_code_for("not_found")
    assert daemon.cli("space", "put", "notes", "k", "2", "--expect", "5").returncode == 7
    with daemon.client() as client:
        assert client.wait(client.submit(f"{pipes}:intruder").id, timeout=30).status == "failed"
    # Then the log tells the three refusals apart
    header, *rows = daemon.cli("space", "log", "notes").stdout.splitlines()
    log = "\n".join([header, *rows])
    results = [row[header.index("RESULT"):] for row in rows]
    assert [r for r in results if r != "ok"] == ["no such key", "version conflict", "denied (allow-list)"], log
    entries = json.loads(daemon.cli("space", "log", "notes", "--json").stdout)
    assert [e["reason"] for e in entries if not e["ok"]] == ["missing", "conflict", "denied"]


def test_space_del_of_a_missing_key_exits_6_like_space_get(daemon: DaemonProcess) -> None:
    # Given a space with one key
    assert daemon.cli("space", "put", "notes", "k", "1").returncode == 0
    # When deleting a key that is not there, and then the one that is
    missing = daemon.cli("space", "del", "notes", "nope")
    present = daemon.cli("space", "del", "notes", "k")
    # Then the missing one is an error, as `space get` of it is
    assert missing.returncode == exit_code_for("not_found") == daemon.cli("space", "get", "notes", "nope").returncode
    assert missing.stderr.strip() == "tagent: space 'notes' has no key 'nope'; list its keys with 'tagent space ls notes'"
    assert present.returncode == 0 and present.stdout.strip() == "k: deleted"


def test_gc_dry_run_lists_a_run_that_just_finished_and_keeps_the_unfinished(daemon: DaemonProcess, pipes: Path) -> None:
    # Given a run that finished a moment ago and one still waiting in its second step
    with daemon.client() as client:
        done, waiting = client.submit(f"{pipes}:three").id, client.submit(f"{pipes}:three").id
        for run_id in (done, waiting):
            wait_until(lambda: client.status(run_id).steps["second"].status == "running", 20, what="the second step")
        client.cancel(done)
        finished_at = client.wait(done, timeout=20).end_time
    # When gc is asked for runs older than about 0.1 s, once that much time has passed
    assert finished_at is not None
    wait_until(lambda: time.time() - finished_at > 0.1, what="the finished run to be 0.1 s old")
    dry = daemon.admin("gc", "--dry-run", "--older-than", "0.000001")
    # Then it would remove the finished one, however recent (issue 10: limits hold at any age), not the other,
    # and says what it keeps whatever the limits
    assert dry.returncode == 0, dry
    assert dry.stdout.splitlines() == [
        "would remove 1 finished run(s)",
        f"  {done}",
        "(kept whatever the limits: unfinished runs)",
    ]
    with daemon.client() as client:
        client.cancel(waiting)  # the daemon stops at once, not after waiting out its stop timeout for the step


def test_inspect_of_a_file_that_is_not_a_checkpoint_is_a_bad_argument(tmp_path: Path) -> None:
    # Given a text file
    path = tmp_path / "passwd"
    path.write_text("root:x:0:0:root:/root:/bin/bash\n" * 3)
    # When `tagentd inspect` reads it
    done = DaemonProcess(tmp_path).admin("inspect", str(path))
    # Then the exit status is the bad-argument one (not the config error's), with one line saying what it reads
    assert done.returncode == exit_code_for("invalid_request") != exit_code_for("config"), done
    assert done.stderr.startswith(f"tagentd: {path}: not a tagentd checkpoint file (bad magic at its start);")
    assert "runs/*.ckpt" in done.stderr and done.stderr.count("\n") == 1


def test_transcript_of_a_function_step_says_it_is_one(daemon: DaemonProcess, pipes: Path) -> None:
    # Given a finished run of function steps
    with daemon.client() as client:
        run_id = client.submit(f"{pipes}:intruder").id
        client.wait(run_id, timeout=30)
    # When asking for a step's transcript
    done = daemon.cli("transcript", run_id, "peek")
    # Then it says only agent steps have one, and where the step's lines are
    assert done.returncode == 0, done
    assert done.stdout.strip() == (f"step 'peek' is a function step: only agent steps have a transcript; "
                                   f"what it logged is in 'tagent logs {run_id}'")


def watching(make_daemon: Callable[..., DaemonProcess], tmp_path: Path) -> tuple[DaemonProcess, Path]:
    """A daemon without a default model, watching tmp_path/inbox (whose path is long on purpose)."""
    inbox = tmp_path / "a-rather-long-folder-name-for-dropped-pipeline-files" / "inbox"
    inbox.mkdir(mode=0o700, parents=True)
    inbox.parent.chmod(0o700)
    daemon = make_daemon(extra=["--watch", str(inbox)])
    for name in ("TAGENT_MODEL", "TAGENTD_MODEL"):
        daemon.env.pop(name, None)
    daemon.start()
    return daemon, inbox


def dropped(daemon: DaemonProcess, path: Path, text: str) -> WatchedFile:
    """Drop `text` as `path`; wait until the watcher reports the file as an error; its entry."""
    path.write_text(text)
    path.chmod(0o600)
    with daemon.client() as client:

        def in_error() -> WatchedFile | None:
            entry = next((f for f in client.watch().files if f.path == str(path)), None)
            return entry if entry is not None and entry.status == "error" else None

        return wait_until(in_error, 20, what=f"{path.name} reported as an error")


def test_watch_shows_a_files_error_without_repeating_its_path(make_daemon: Callable[..., DaemonProcess],
                                                             tmp_path: Path) -> None:
    # Given a dropped .json file that is not JSON, in a folder with a long path
    daemon, inbox = watching(make_daemon, tmp_path)
    dropped(daemon, inbox / "broken.json", '{"name": "broken",\n "steps": [}\n')
    # When the watched folders are shown
    shown = daemon.cli("watch").stdout
    # Then the file's row names it once, and its DETAIL is only the line and the reason
    header, row = next((h, r) for h, r in zip(shown.splitlines(), shown.splitlines()[1:]) if r.startswith("broken."))
    detail = row[header.index("DETAIL"):].strip()
    assert detail == "line 2: not valid JSON: Expecting value" and str(inbox) not in row, shown


def test_watch_rows_fit_80_columns_beside_a_long_error(make_daemon: Callable[..., DaemonProcess],
                                                        tmp_path: Path) -> None:
    # Given a watched folder with a file whose error is long (a goal-only .toml without a model)
    # and a file that started a run
    daemon, inbox = watching(make_daemon, tmp_path)
    dropped(daemon, inbox / "summary.toml", 'name = "summary"\n\n[[steps]]\nname = "summarize"\ngoal = "Summarize"\n')
    started = inbox / "hello.py"
    started.write_text(HELLO)
    started.chmod(0o600)
    with daemon.client() as client:
        wait_until(lambda: any(f.path == str(started) and f.status == "started" for f in client.watch().files), 20,
                   what="hello.py to start a run")
    # When the watched folders are shown
    shown = daemon.cli("watch").stdout.splitlines()
    # Then the header and the started file's row fit 80 columns: the long error widens only its own row
    header = next(line for line in shown if line.startswith("FILE"))
    row = next(line for line in shown if line.startswith("hello.py"))
    assert header.endswith("DETAIL") and len(header) <= 80 and len(row) <= 80, "\n".join(shown)


HELLO = """
from tagent_client import Pipeline

pipeline = Pipeline("hello")

@pipeline.task(final=True)
def hello(ctx):
    return "hi"
"""


def test_a_dropped_file_without_a_model_is_told_how_to_give_it_one(make_daemon: Callable[..., DaemonProcess],
                                                                   tmp_path: Path) -> None:
    # Given a dropped goal-only .toml without a model, and a daemon without a default model
    daemon, inbox = watching(make_daemon, tmp_path)
    # When the watcher reads it
    entry = dropped(daemon, inbox / "summary.toml",
                    'name = "summary"\n\n[[steps]]\nname = "summarize"\ngoal = "Summarize"\nfinal = true\n')
    # Then the error says to name a model in the file or give the daemon one: there is no --model to pass
    message = entry.message or ""
    assert "summarize have no model" in message and "--model" not in message, message
    assert 'model = "test"' in message and "tagentd.toml" in message, message
