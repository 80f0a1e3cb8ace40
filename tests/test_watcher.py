"""End-to-end: the watched pipelines folder — drop a file, it runs. Real daemons started with `--watch DIR`.

Nothing sleeps to wait: tests poll `Client.watch()` / `Client.runs()` with deadlines. A file is known to be
handled once the watcher has read it after the test's last write (`checked_at`) and nothing is left settling.
The slow-writer test sleeps between its chunks on purpose (marked `# ok-sleep`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import DaemonProcess, wait_until, write_pipeline

from tagent_client.client.sync import Client
from tagent_client.errors import exit_code_for
from tagent_client.wire.protocol import RunSummary, WatchedFile

pytestmark = pytest.mark.timeout(120)

HELLO = """
    from tagent_client import Pipeline

    pipeline = Pipeline("hello")

    @pipeline.task(final=True)
    def greet(ctx):
        return {"version": VERSION}
"""

SLOW = """
    import asyncio
    from tagent_client import Pipeline

    pipeline = Pipeline("slow")

    @pipeline.task(timeout=120, max_retries=0)
    async def nap(ctx):
        await asyncio.sleep(120)  # VERSION
"""

BROKEN = """\
from tagent_client import Pipeline

def greet(ctx:
    return 1
"""


def hello(version: int) -> str:
    return textwrap.dedent(HELLO).replace("VERSION", str(version))


def slow(version: str) -> str:
    return textwrap.dedent(SLOW).replace("VERSION", version)


def private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True)
    path.chmod(0o700)
    return path


def watching(make_daemon: Callable[..., DaemonProcess], tmp_path: Path, *extra: str,
             env: dict[str, str] | None = None) -> tuple[DaemonProcess, Path]:
    """A started daemon watching tmp_path/inbox, its workers ready and its folder armed."""
    inbox = tmp_path / "inbox" if (tmp_path / "inbox").exists() else private_dir(tmp_path / "inbox")
    daemon = make_daemon(extra=["--watch", str(inbox), *extra])
    daemon.env.update(env or {})
    daemon.start()
    with daemon.client() as client:
        wait_until(lambda: all(w.state == "ready" for w in client.daemon_status().workers)
                   and client.watch().folders[0].status == "watching", 20, what="workers ready, folder watched")
    return daemon, inbox


def runs_of(client: Client, path: Path) -> list[RunSummary]:
    return [r for r in client.runs(limit=1000) if r.path == str(path)]


def entry(client: Client, path: Path) -> WatchedFile | None:
    return next((f for f in client.watch().files if f.path == str(path)), None)


def handled(client: Client, path: Path, since: float, timeout: float = 10.0) -> WatchedFile:
    """Wait until the watcher has read `path` after `since` and has nothing left to settle; its entry."""

    def check() -> WatchedFile | None:
        info = client.watch()
        found = next((f for f in info.files if f.path == str(path)), None)
        if found is None or found.checked_at <= since or info.settling or found.status == "loading":
            return None
        return found

    return wait_until(check, timeout, what=f"the watcher to handle {path.name}")


def write(path: Path, text: str) -> float:
    """Write `text` to `path` (private) and return the time just after."""
    path.write_text(text)
    path.chmod(0o600)
    return time.time()


def result_of(client: Client, run_id: str) -> Any:
    return client.wait(run_id, timeout=60)


# -- acceptance --------------------------------------------------------------------------------------------------


def test_a_dropped_file_runs_once_the_same_content_never_again_an_edit_once_more(
        make_daemon: Callable[..., DaemonProcess], tmp_path: Path) -> None:
    daemon, inbox = watching(make_daemon, tmp_path)
    with daemon.client() as client:
        # When a valid pipeline file is dropped into the watched folder
        dropped = time.monotonic()
        path = write_pipeline(inbox, "hello.py", hello(1))
        # Then its run is listed within 1 s
        wait_until(lambda: runs_of(client, path), 1.0, what="the run of hello.py in the run list")
        visible_after = time.monotonic() - dropped
        # And exactly one run started
        first = handled(client, path, 0)
        assert first.status == "started" and len(runs_of(client, path)) == 1, (visible_after, first)
        assert str(path) in daemon.cli("runs").stdout or first.run_id in daemon.cli("runs").stdout
        assert result_of(client, first.run_id).step_outputs["greet"] == {"version": 1}

        # When the same content is written again
        since = write(path, (inbox / "hello.py").read_text())
        # Then nothing starts
        again = handled(client, path, since)
        assert again.run_id == first.run_id and len(runs_of(client, path)) == 1

        # When it is edited
        since = write(path, hello(2))
        # Then exactly one new run starts, of the new version
        wait_until(lambda: len(runs_of(client, path)) == 2, 5, what="the run of the edited file")
        edited = handled(client, path, since)
        assert edited.run_id != first.run_id and len(runs_of(client, path)) == 2
        assert result_of(client, edited.run_id).step_outputs["greet"] == {"version": 2}
        # And `tagent watch` shows the file, its short hash, its status and run
        shown = daemon.cli("watch").stdout
        assert "hello.py" in shown and edited.hash[:12] in shown and f"run {edited.run_id}" in shown, shown


def test_a_file_written_slowly_in_five_chunks_starts_one_run_of_the_whole_file(
        make_daemon: Callable[..., DaemonProcess], tmp_path: Path) -> None:
    daemon, inbox = watching(make_daemon, tmp_path)
    # Given a pipeline file whose every prefix of chunks is a valid pipeline with fewer steps
    chunks = ["from tagent_client import Pipeline\npipeline = Pipeline('slowly')\n"
              "@pipeline.task()\ndef s1(ctx):\n    return 1\n"]
    chunks += [f"@pipeline.task()\ndef s{i}(ctx):\n    return {i}\n" for i in range(2, 5)]
    chunks += ["@pipeline.task(final=True)\ndef s5(ctx):\n    return 'complete'\n"]
    path = inbox / "slowly.py"
    with daemon.client() as client:
        # When it is written in 5 chunks over about 1 s by one writer
        with open(path, "w") as f:
            os.fchmod(f.fileno(), 0o600)
            for chunk in chunks:
                f.write(chunk)
                f.flush()
                time.sleep(0.22)  # ok-sleep: a slow writer, the behaviour under test
        closed = time.time()
        # Then exactly one run starts, of the complete file
        wait_until(lambda: runs_of(client, path), 5, what="the run of slowly.py")
        done = handled(client, path, closed - 0.2)
        (run,) = runs_of(client, path)
        assert run.steps_total == 5, run
        assert done.hash == hashlib.sha256("".join(chunks).encode()).hexdigest()
        assert result_of(client, run.run_id).step_outputs["s5"] == "complete"


def test_an_editor_style_save_starts_one_run(make_daemon: Callable[..., DaemonProcess], tmp_path: Path) -> None:
    daemon, inbox = watching(make_daemon, tmp_path)
    path = inbox / "edited.py"
    with daemon.client() as client:
        # When an editor saves a new file: writes a hidden swap file and a backup, then renames the swap file over
        swap = inbox / ".edited.py.swp"
        write(swap, hello(1))
        write(inbox / "edited.py~", "# an old backup\n")
        os.replace(swap, path)
        saved = time.time()
        # Then one run starts, and the temp and backup files are not even listed
        wait_until(lambda: runs_of(client, path), 5, what="the run of edited.py")
        first = handled(client, path, saved - 0.1)
        assert len(runs_of(client, path)) == 1 and len(client.runs()) == 1
        assert [f.path for f in client.watch().files] == [str(path)]
        # When it is saved again, changed, the same way
        write(swap, hello(2))
        os.replace(swap, path)
        saved = time.time()
        # Then exactly one more run starts
        wait_until(lambda: len(runs_of(client, path)) == 2, 5, what="the run of the saved change")
        second = handled(client, path, saved - 0.1)
        assert second.run_id != first.run_id and len(client.runs()) == 2


def test_a_file_with_a_syntax_error_is_reported_with_its_line_and_nothing_else_is_affected(
        make_daemon: Callable[..., DaemonProcess], tmp_path: Path) -> None:
    daemon, inbox = watching(make_daemon, tmp_path)
    from tagent_client.client.subscription import Subscription

    with daemon.client() as client, Subscription(daemon.runtime_dir, ["watch."]) as events:
        # When a file with a syntax error on line 3 is dropped next to a good one
        bad = write_pipeline(inbox, "broken.py", BROKEN)
        good = write_pipeline(inbox, "fine.py", hello(7))
        # Then the bad one is reported as one line with its path and line: in `tagent watch` ...
        report = wait_until(lambda: (e := entry(client, bad)) is not None and e.status == "error" and e, 10,
                            what="broken.py reported")
        assert report.line == 3 and report.message.startswith(f"{bad}:3: syntax error"), report
        shown = daemon.cli("watch").stdout  # its row names the file once: the path is not repeated in DETAIL
        row = next(line for line in shown.splitlines() if line.startswith("broken.py"))
        assert "line 3: syntax error" in row and str(inbox) not in row, shown
        # ... in the daemon log ...
        wait_until(lambda: f"{bad}:3: syntax error" in daemon.log(), 5, what="the error in the daemon log")
        # ... and as a watch.error event
        def error_event() -> Any:
            record = events.get(timeout=0.2)
            return record if record is not None and record.topic == "watch.error" else None

        event = wait_until(error_event, 10, what="a watch.error event")
        assert event.data["path"] == str(bad) and event.data["line"] == 3
        # And the good file runs as if nothing happened; the bad one has no run
        wait_until(lambda: runs_of(client, good), 5, what="the run of fine.py")
        assert result_of(client, runs_of(client, good)[0].run_id).step_outputs["greet"] == {"version": 7}
        assert runs_of(client, bad) == []
        # When the bad file is fixed
        write(bad, hello(8))
        # Then it starts a run
        wait_until(lambda: runs_of(client, bad), 5, what="the run of the fixed file")
        assert result_of(client, runs_of(client, bad)[0].run_id).step_outputs["greet"] == {"version": 8}


def test_goal_only_toml_and_json_pipelines_run_on_the_test_model_and_triggered_ones_are_registered(
        make_daemon: Callable[..., DaemonProcess], tmp_path: Path) -> None:
    # Given a daemon whose default model is `test`
    daemon, inbox = watching(make_daemon, tmp_path, env={"TAGENTD_MODEL": "test"})
    with daemon.client() as client:
        # When a goal-only TOML pipeline naming the test model, and a JSON one naming none, are dropped
        toml = inbox / "summary.toml"
        write(toml, 'name = "summary"\nmodel = "test"\n\n[[steps]]\nname = "summarize"\n'
                    'goal = "Summarize the topic"\nfinal = true\n')
        doc = inbox / "greeting.json"
        write(doc, '{"name": "greeting", "steps": [{"name": "hello", "goal": "Say hello"}]}')
        # And one that declares triggers
        triggered = inbox / "on_news.toml"
        write(triggered, 'name = "on_news"\ntriggers = ["news."]\n\n[[steps]]\nname = "read"\ngoal = "Read it"\n')
        # Then the goal-only pipelines run to completion on the test model, with no Python file anywhere
        for path in (toml, doc):
            wait_until(lambda path=path: runs_of(client, path), 10, what=f"the run of {path.name}")
            result = result_of(client, runs_of(client, path)[0].run_id)
            assert result.status == "completed", result
        # And the triggered one is registered for its events (as `tagent submit` would), not started
        registered = handled(client, triggered, 0)
        assert registered.status == "registered" and runs_of(client, triggered) == []
        (on_news,) = [p for p in client.pipelines() if p.pipeline == "on_news"]
        assert on_news.triggers == ["news."]


def test_files_dropped_while_the_daemon_was_down_start_once_after_it_starts_and_never_again(
        make_daemon: Callable[..., DaemonProcess], tmp_path: Path) -> None:
    # Given a watched folder and a daemon that is not running
    inbox = private_dir(tmp_path / "inbox")
    daemon = make_daemon(extra=["--watch", str(inbox)])
    # When two pipeline files are dropped in, and then the daemon starts
    a = write_pipeline(inbox, "a.py", hello(1))
    b = write_pipeline(inbox, "b.py", hello(2))
    daemon.start()
    # Then each starts exactly once
    with daemon.client() as client:
        wait_until(lambda: runs_of(client, a) and runs_of(client, b), 10, what="runs of a.py and b.py")
        first = {p: handled(client, p, 0).run_id for p in (a, b)}
        for run_id in first.values():
            result_of(client, run_id)
        assert len(client.runs()) == 2
    # When the daemon is restarted: stopped gracefully, and then killed with SIGKILL and started again
    for restart in (daemon.stop, daemon.kill9):
        restart()
        started = time.time()
        daemon.start()
        # Then nothing starts again: each file is known as started by its first run
        with daemon.client() as client:
            for path, run_id in first.items():
                assert handled(client, path, started).run_id == run_id
            assert len(client.runs()) == 2


@pytest.mark.parametrize("damage", ["deleted", "corrupt", "stale"])
def test_after_a_crash_a_lost_or_stale_watcher_memory_falls_back_to_the_run_store(
        make_daemon: Callable[..., DaemonProcess], tmp_path: Path, damage: str) -> None:
    # Given a durable daemon that started a.py and then b.py from its watched folder, both remembered in watch-seen.bin
    daemon, inbox = watching(make_daemon, tmp_path)
    seen_file = daemon.state_dir / "watch-seen.bin"
    with daemon.client() as client:
        a = write_pipeline(inbox, "a.py", hello(1))
        first = {a: handled(client, a, 0).run_id}
        wait_until(seen_file.exists, 10, what="watch-seen.bin to remember a.py")
        stale = seen_file.read_bytes()  # the memory as it was before b.py ran
        b = write_pipeline(inbox, "b.py", hello(2))
        wait_until(lambda: runs_of(client, b), 10, what="the run of b.py")
        first[b] = handled(client, b, 0).run_id
        wait_until(lambda: seen_file.read_bytes() != stale, 10, what="watch-seen.bin to remember b.py")
        for run_id in first.values():
            result_of(client, run_id)
    # When the daemon is killed with SIGKILL and its memory of started files is deleted, corrupted, or an older copy
    daemon.kill9()
    if damage == "deleted":
        seen_file.unlink()
    elif damage == "corrupt":
        data = bytearray(seen_file.read_bytes())
        data[len(data) // 2] ^= 0xFF
        seen_file.write_bytes(bytes(data))
    else:
        seen_file.write_bytes(stale)
    started = time.time()
    daemon.start()
    # Then neither file runs again: the runs in the checkpoint store say the watcher started them
    with daemon.client() as client:
        for path, run_id in first.items():
            assert handled(client, path, started).run_id == run_id
        assert len(client.runs()) == 2
        if damage == "corrupt":  # and the damaged file is reported, not silently trusted
            assert any("watch-seen.bin" in problem for problem in client.watch().problems)


def test_without_durable_runs_the_watcher_still_remembers_what_it_started(
        make_daemon: Callable[..., DaemonProcess], tmp_path: Path) -> None:
    # Given a daemon that keeps no runs across restarts, which started a dropped file
    daemon, inbox = watching(make_daemon, tmp_path, "--no-durable")
    path = write_pipeline(inbox, "a.py", hello(1))
    with daemon.client() as client:
        wait_until(lambda: runs_of(client, path), 5, what="the run of a.py")
        run_id = handled(client, path, 0).run_id
        result_of(client, run_id)
    # When it restarts (its runs are forgotten)
    daemon.stop()
    started = time.time()
    daemon.start()
    # Then the file does not start again: the watcher's own memory (watch-seen.bin) says it ran
    with daemon.client() as client:
        assert handled(client, path, started).run_id == run_id and client.runs() == []
    assert (daemon.state_dir / "watch-seen.bin").exists()


def test_a_world_writable_watch_folder_is_refused_with_a_clear_message(
        make_daemon: Callable[..., DaemonProcess], tmp_path: Path) -> None:
    # Given a folder anyone can write to
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    daemon = make_daemon(extra=["--watch", str(shared)])
    # When the daemon is asked to watch it, in the foreground or the background
    for done in (daemon.start_refused(), daemon.admin("start", "--watch", str(shared))):
        # Then it refuses to start, with one line saying which folder, why, and what to do
        assert done.returncode == exit_code_for("config"), done
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert f"watch folder {shared} is writable by group/others (mode 0777)" in lines[0]
        assert f"chmod go-w {shared}" in lines[0]
    assert not (daemon.runtime_dir / "control.sock").exists()


# -- more behaviour ----------------------------------------------------------------------------------------------


def test_unsafe_files_are_skipped_saying_why_and_subfolders_are_ignored(
        make_daemon: Callable[..., DaemonProcess], tmp_path: Path) -> None:
    daemon, inbox = watching(make_daemon, tmp_path)
    with daemon.client() as client:
        # When a group-writable pipeline file and a file in a subfolder are dropped
        loose = write_pipeline(inbox, "loose.py", hello(1))
        loose.chmod(0o664)
        nested = write_pipeline(private_dir(inbox / "team"), "nested.py", hello(2))
        marker = write_pipeline(inbox, "marker.py", hello(3))
        # Then the group-writable one is skipped, saying why, in `tagent watch` and the log
        skipped = wait_until(lambda: (e := entry(client, loose)) is not None and e.status == "skipped" and e, 10,
                             what="loose.py skipped")
        assert "writable by group/others (mode 0664)" in (skipped.message or "")
        wait_until(lambda: f"{loose}: skipped: writable by group/others" in daemon.log(), 5, what="the skip logged")
        # And the subfolder's file is not seen at all
        handled(client, marker, 0)
        assert entry(client, nested) is None and runs_of(client, loose) == [] and runs_of(client, nested) == []
        # When the loose file is made private
        loose.chmod(0o600)
        # Then it starts
        wait_until(lambda: runs_of(client, loose), 5, what="the run of the now private file")


def test_a_recursive_watch_runs_files_in_subfolders_but_not_hidden_ones(
        make_daemon: Callable[..., DaemonProcess], tmp_path: Path) -> None:
    daemon, inbox = watching(make_daemon, tmp_path, env={"TAGENTD_WATCH_RECURSIVE": "true"})
    with daemon.client() as client:
        nested = write_pipeline(private_dir(inbox / "team" / "daily"), "nested.py", hello(1))
        hidden = write_pipeline(private_dir(inbox / ".git"), "hidden.py", hello(2))
        wait_until(lambda: runs_of(client, nested), 5, what="the run of the nested file")
        handled(client, nested, 0)
        assert entry(client, hidden) is None and len(client.runs()) == 1


def test_a_watched_folder_deleted_and_created_again_is_watched_again(
        make_daemon: Callable[..., DaemonProcess], tmp_path: Path) -> None:
    daemon, inbox = watching(make_daemon, tmp_path)
    with daemon.client() as client:
        # When the watched folder is deleted
        shutil.rmtree(inbox)
        # Then it is reported missing
        wait_until(lambda: client.watch().folders[0].status == "missing", 5, what="the folder reported missing")
        # When it is created again and a file is dropped into it
        private_dir(inbox)
        wait_until(lambda: client.watch().folders[0].status == "watching", 5, what="the folder watched again")
        path = write_pipeline(inbox, "back.py", hello(1))
        # Then the file runs
        wait_until(lambda: runs_of(client, path), 5, what="the run of back.py")
        # And `tagentd status` names the folder
        assert str(inbox) in daemon.admin("status").stdout


def test_by_default_a_change_or_deletion_leaves_running_runs_alone(
        make_daemon: Callable[..., DaemonProcess], tmp_path: Path) -> None:
    daemon, inbox = watching(make_daemon, tmp_path)
    with daemon.client() as client:
        path = write_pipeline(inbox, "slow.py", slow("v1"))
        wait_until(lambda: runs_of(client, path), 5, what="the run of v1")
        v1 = runs_of(client, path)[0].run_id
        since = write(path, slow("v2"))
        wait_until(lambda: len(runs_of(client, path)) == 2, 5, what="the run of v2")
        handled(client, path, since)
        path.unlink()
        wait_until(lambda: entry(client, path) is None, 5, what="the deletion noticed")
        assert [client.status(r.run_id).status for r in runs_of(client, path)] == ["running", "running"], v1
        for run in runs_of(client, path):
            client.cancel(run.run_id)


def test_on_change_restart_and_on_delete_cancel_stop_the_older_runs(
        make_daemon: Callable[..., DaemonProcess], tmp_path: Path) -> None:
    daemon, inbox = watching(make_daemon, tmp_path, env={"TAGENTD_ON_CHANGE": "restart", "TAGENTD_ON_DELETE": "cancel"})
    with daemon.client() as client:
        path = write_pipeline(inbox, "slow.py", slow("v1"))
        wait_until(lambda: runs_of(client, path), 5, what="the run of v1")
        v1 = runs_of(client, path)[0].run_id
        # When the file changes, the run of the old version is cancelled and the new one starts
        write(path, slow("v2"))
        wait_until(lambda: len(runs_of(client, path)) == 2, 5, what="the run of v2")
        wait_until(lambda: client.status(v1).status == "cancelled", 5, what="v1 cancelled")
        v2 = next(r.run_id for r in runs_of(client, path) if r.run_id != v1)
        assert client.status(v2).status == "running"
        assert any(e["who"] == "watcher" and e["what"] == "cancel" for e in client.history(v1))
        # When the file is deleted, its running run is cancelled
        path.unlink()
        wait_until(lambda: client.status(v2).status == "cancelled", 5, what="v2 cancelled")
