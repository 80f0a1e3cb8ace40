"""The folder watcher's rules without processes: names, safety checks, settling, events, the seen map, documents.

The Debouncer is driven with explicit times and a fake stat, so nothing here sleeps.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from watchdog import events as wd

from tagent_client.errors import ConfigError, PipelineLoadError, PipelineValidationError
from tagentd.storage.records import write_atomic
from tagentd.watch import seen as seen_module
from tagentd.watch.intake import SkippedFile, describe, read_document, read_file
from tagentd.watch.observer import classify
from tagentd.watch.rules import (
    CLOSED,
    CREATED,
    GONE,
    MODIFIED,
    MOVED_IN,
    SCAN,
    TOUCHED,
    Debouncer,
    default_watch_dir,
    file_problem,
    folder_problem,
    watch_folders,
    watchable,
)
from tagentd.watch.seen import SeenFiles, SeenRecord
from tagentd.watch.watcher import Folder

pytestmark = pytest.mark.timeout(30)

QUIET, RECHECK, STALL = 0.2, 0.15, 2.0


class FakeDisk:
    """What `stat` would say about each path: (size, mtime, ctime, inode, device), or missing."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[int, int, int, int, int]] = {}

    def write(self, path: str, size: int) -> None:
        self.files[path] = (size, size, size, 1, 1)

    def __call__(self, path: str) -> tuple[int, int, int, int, int] | None:
        return self.files.get(path)


def run_until(debouncer: Debouncer, disk: FakeDisk, start: float, end: float) -> list[tuple[float, str]]:
    """Call `due` at every time the debouncer asks for, from `start` to `end`; (time, path) of each settlement."""
    settled, now = [], start
    while True:
        for path in debouncer.due(now, disk):
            settled.append((round(now, 3), path))
        nxt = debouncer.next_due()
        if nxt is None or nxt > end:
            return settled
        now = max(now, nxt)


# -- names ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["research.py", "daily.toml", "plan.json", "UPPER.PY"])
def test_pipeline_files_are_watchable(name: str) -> None:
    assert watchable(name)


@pytest.mark.parametrize("name", [
    ".research.py.swp", ".hidden.py", "research.py~", ".#research.py", "#research.py#", "research.py.swp",
    "_helpers.py", "__init__.py", "notes.txt", "4913", "research.py.tmp", "data.json.part", "", "research.pyc",
])
def test_hidden_temp_backup_and_helper_files_are_not(name: str) -> None:
    assert not watchable(name)


def test_a_folder_holds_its_own_files_and_subfolder_files_only_when_recursive(tmp_path: Path) -> None:
    # Given a watched folder
    folder = Folder(tmp_path)
    # Then its own pipeline files are held, its subfolders' only when recursive, never hidden subfolders'
    assert folder.holds(str(tmp_path / "a.py"), recursive=False)
    assert not folder.holds(str(tmp_path / "team" / "a.py"), recursive=False)
    assert folder.holds(str(tmp_path / "team" / "a.py"), recursive=True)
    assert not folder.holds(str(tmp_path / ".git" / "a.py"), recursive=True)
    assert not folder.holds(str(tmp_path / "__pycache__" / "a.py"), recursive=True)
    assert not folder.holds(str(tmp_path / "a.py~"), recursive=True)
    assert not folder.holds(str(tmp_path.parent / "a.py"), recursive=True)


# -- settling ---------------------------------------------------------------------------------------------


def test_a_save_storm_becomes_one_settlement_after_the_last_event() -> None:
    # Given a file written by a storm of events 50 ms apart, closed at the end
    debouncer, disk = Debouncer(QUIET, RECHECK, STALL), FakeDisk()
    for i in range(10):
        disk.write("a.py", 10 * (i + 1))
        debouncer.note("a.py", CREATED if i == 0 else MODIFIED, i * 0.05)
    debouncer.note("a.py", CLOSED, 0.45)
    # When time passes
    settled = run_until(debouncer, disk, 0.45, 10)
    # Then it settles once: quiet after the last event, then the same at two checks
    assert settled == [(round(0.45 + QUIET + RECHECK, 3), "a.py")]
    assert "a.py" not in debouncer and debouncer.next_due() is None


def test_an_open_writer_holds_the_file_until_it_closes() -> None:
    # Given a file being written slowly in 5 chunks, 250 ms apart, by one writer
    debouncer, disk = Debouncer(QUIET, RECHECK, STALL), FakeDisk()
    settled = []
    for i in range(5):
        disk.write("slow.py", 100 * (i + 1))
        debouncer.note("slow.py", CREATED if i == 0 else MODIFIED, i * 0.25)
        settled += run_until(debouncer, disk, i * 0.25, i * 0.25 + 0.249)
    # Then nothing settles while it is open, even though each pause is longer than the quiet time
    assert settled == []
    # When the writer closes it
    debouncer.note("slow.py", CLOSED, 1.1)
    # Then it settles, once
    assert run_until(debouncer, disk, 1.1, 10) == [(round(1.1 + QUIET + RECHECK, 3), "slow.py")]


def test_a_writer_that_never_closes_counts_as_done_after_the_stall_time() -> None:
    # Given a file written once by a writer that keeps it open
    debouncer, disk = Debouncer(QUIET, RECHECK, STALL), FakeDisk()
    disk.write("open.py", 10)
    debouncer.note("open.py", MODIFIED, 0.0)
    # Then it settles only after the stall time (and a second look)
    assert run_until(debouncer, disk, 0.0, 10) == [(round(STALL + RECHECK, 3), "open.py")]


def test_a_size_change_between_the_two_checks_delays_the_settlement() -> None:
    # Given a closed file that grows between the first and the second check (another writer, no event seen)
    debouncer, disk = Debouncer(QUIET, RECHECK, STALL), FakeDisk()
    disk.write("a.py", 10)
    debouncer.note("a.py", CLOSED, 0.0)
    assert debouncer.due(QUIET, disk) == []
    disk.write("a.py", 20)
    # Then the second check does not settle it; the one after that does
    assert debouncer.due(QUIET + RECHECK, disk) == []
    assert debouncer.due(QUIET + 2 * RECHECK, disk) == ["a.py"]


def test_a_file_moved_in_by_rename_settles_at_the_first_check() -> None:
    # Given an editor's temp file renamed over the pipeline file
    debouncer, disk = Debouncer(QUIET, RECHECK, STALL), FakeDisk()
    disk.write("a.py", 10)
    debouncer.note("a.py", MOVED_IN, 0.0)
    # Then it is complete by construction: one check after the quiet time
    assert run_until(debouncer, disk, 0.0, 10) == [(QUIET, "a.py")]


def test_a_deleted_file_settles_as_gone_and_one_put_back_in_time_as_a_change() -> None:
    # Given one file deleted, and another deleted then written again (an editor's save)
    debouncer, disk = Debouncer(QUIET, RECHECK, STALL), FakeDisk()
    debouncer.note("gone.py", GONE, 0.0)
    debouncer.note("back.py", GONE, 0.0)
    disk.write("back.py", 5)
    debouncer.note("back.py", CREATED, 0.05)
    debouncer.note("back.py", CLOSED, 0.06)
    # Then the deleted one settles at once after the quiet time (the caller finds it gone), the other as a file
    assert run_until(debouncer, disk, 0.0, 10) == [(QUIET, "gone.py"), (round(0.06 + QUIET + RECHECK, 3), "back.py")]


def test_touch_and_scan_restart_the_clock_without_waiting_for_a_writer() -> None:
    debouncer, disk = Debouncer(QUIET, RECHECK, STALL), FakeDisk()
    disk.write("a.py", 1)
    disk.write("b.py", 1)
    debouncer.note("a.py", TOUCHED, 0.0)
    debouncer.note("b.py", SCAN, 0.0)
    assert sorted(p for _, p in run_until(debouncer, disk, 0.0, 10)) == ["a.py", "b.py"]


# -- events -------------------------------------------------------------------------------------------------


def test_watchdog_events_become_what_the_debouncer_needs() -> None:
    assert classify(wd.FileCreatedEvent("/w/a.py")) == [("/w/a.py", CREATED)]
    assert classify(wd.FileModifiedEvent("/w/a.py")) == [("/w/a.py", MODIFIED)]
    assert classify(wd.FileClosedEvent("/w/a.py")) == [("/w/a.py", CLOSED)]
    assert classify(wd.FileDeletedEvent("/w/a.py")) == [("/w/a.py", GONE)]
    # a rename inside the folder: the old name is gone, the new one moved in
    assert classify(wd.FileMovedEvent("/w/.a.py.swp", "/w/a.py")) == [("/w/.a.py.swp", GONE), ("/w/a.py", MOVED_IN)]
    # renames across the folder's edge (inotify full events mark the outside with "")
    assert classify(wd.FileMovedEvent("", "/w/a.py")) == [("/w/a.py", MOVED_IN)]
    assert classify(wd.FileMovedEvent("/w/a.py", "")) == [("/w/a.py", GONE)]
    # reading a file (the watcher's own reads among them) and directory events say nothing
    assert classify(wd.FileOpenedEvent("/w/a.py")) == []
    assert classify(wd.FileClosedNoWriteEvent("/w/a.py")) == []
    assert classify(wd.DirModifiedEvent("/w")) == []


# -- safety --------------------------------------------------------------------------------------------------


def test_a_folder_others_could_write_or_own_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir(mode=0o700)
    assert folder_problem(folder) is None
    folder.chmod(0o777)
    assert f"watch folder {folder} is writable by group/others (mode 0777)" in (folder_problem(folder) or "")
    assert f"chmod go-w {folder}" in (folder_problem(folder) or "")
    folder.chmod(0o770)
    assert "writable by group/others (mode 0770)" in (folder_problem(folder) or "")
    folder.chmod(0o755)
    assert folder_problem(folder) is None  # readable by others is fine: only writing matters
    assert "is owned by uid" in (folder_problem(folder, uid=os.getuid() + 1) or "")
    assert "does not exist" in (folder_problem(tmp_path / "nope") or "")
    (tmp_path / "file").write_text("")
    assert "is not a directory" in (folder_problem(tmp_path / "file") or "")


def test_a_file_others_could_write_or_own_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "a.py"
    path.write_text("x = 1\n")
    path.chmod(0o600)
    assert file_problem(path.stat()) is None
    path.chmod(0o664)
    assert "writable by group/others (mode 0664)" in (file_problem(path.stat()) or "")
    path.chmod(0o644)
    assert "owned by uid" in (file_problem(path.stat(), uid=os.getuid() + 1) or "")
    assert file_problem(tmp_path.stat()) == "not a regular file"


def test_read_file_checks_the_opened_file(tmp_path: Path) -> None:
    path = tmp_path / "a.py"
    path.write_bytes(b"x = 1\n")
    path.chmod(0o600)
    data, seen = read_file(str(path)) or (b"", None)
    assert data == b"x = 1\n" and seen is not None and seen[0] == 6
    path.chmod(0o666)
    with pytest.raises(SkippedFile, match="writable by group/others"):
        read_file(str(path))
    fifo = tmp_path / "pipe.py"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(SkippedFile, match="not a regular file"):
        read_file(str(fifo))  # opened without blocking: no writer needed
    assert read_file(str(tmp_path / "gone.py")) is None


def test_configured_folders_must_be_safe_the_default_is_created_private(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # Given no configured folder
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    # Then the default one is created, private
    (spec,) = watch_folders([])
    assert spec.path == default_watch_dir() == tmp_path / "data" / "tagentd" / "pipelines"
    assert spec.problem is None and not spec.explicit and (spec.path.stat().st_mode & 0o777) == 0o700
    # Given a configured folder anyone can write
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    # Then the daemon must not start: ConfigError saying which folder, why, and what to do
    with pytest.raises(ConfigError, match=r"watch folder .*shared is writable by group/others \(mode 0777\).*chmod go-w"):
        watch_folders([shared])
    # Given the default folder became unsafe
    spec.path.chmod(0o777)
    # Then the daemon starts without it, saying why
    (spec,) = watch_folders([])
    assert "writable by group/others" in (spec.problem or "")
    # And a configured folder that is missing is created, private
    (made,) = watch_folders([tmp_path / "new" / "in"])
    assert made.problem is None and made.explicit and (made.path.stat().st_mode & 0o777) == 0o700


# -- the seen map -----------------------------------------------------------------------------------------------


def test_the_seen_map_survives_a_reload_and_a_corrupt_one_is_moved_aside(tmp_path: Path) -> None:
    # Given a seen map with one started file version, saved
    seen = SeenFiles.load(tmp_path)
    seen.add("/w/a.py", "h1", "run1", at=1.0)
    seen.add("/w/a.py", "h1", "run-later")  # the first run wins
    asyncio.run(seen.save())
    # When it is loaded again
    again = SeenFiles.load(tmp_path)
    # Then it knows that version and nothing else
    entry = again.get("/w/a.py", "h1")
    assert entry is not None and (entry.run_id, entry.at) == ("run1", 1.0)
    assert again.get("/w/a.py", "h2") is None and again.problems == []
    # When the file is damaged
    path = tmp_path / seen_module.FILE_NAME
    path.write_bytes(path.read_bytes()[:-3])
    # Then loading moves it aside, reports it and starts empty
    broken = SeenFiles.load(tmp_path)
    assert len(broken) == 0 and "moved it to" in broken.problems[0]
    assert not path.exists() and list((tmp_path / "corrupt").iterdir())


def test_a_seen_map_from_a_newer_tagentd_is_refused(tmp_path: Path) -> None:
    import msgspec

    write_atomic(tmp_path / seen_module.FILE_NAME, msgspec.msgpack.encode(SeenRecord(format=seen_module.FORMAT + 1)))
    with pytest.raises(ConfigError, match="written by a newer tagentd"):
        SeenFiles.load(tmp_path)


def test_the_seen_map_keeps_the_newest_entries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(seen_module, "MAX_ENTRIES", 3)
    seen = SeenFiles()
    for i in range(5):
        seen.add("/w/a.py", f"h{i}", f"run{i}")
    assert len(seen) == 3 and seen.get("/w/a.py", "h1") is None and seen.get("/w/a.py", "h4") is not None


# -- declarative documents ----------------------------------------------------------------------------------------

GOAL_TOML = """\
name = "summary"
model = "test"

[[steps]]
name = "summarize"
goal = "Summarize the topic"
final = true
"""


def test_a_goal_only_document_is_read_as_data() -> None:
    plan = read_document("/w/summary.toml", GOAL_TOML)
    assert plan.name == "summary" and plan.model == "test" and [s.name for s in plan.steps] == ["summarize"]
    doc = '{"name": "j", "steps": [{"name": "s", "goal": "say hi"}], "triggers": ["news."]}'
    assert read_document("/w/j.json", doc).triggers == ["news."]


def test_a_bad_document_is_one_line_with_its_line_number() -> None:
    with pytest.raises(PipelineLoadError) as toml_error:
        read_document("/w/x.toml", 'name = "x"\n[[steps]\n')
    message, line = describe("/w/x.toml", toml_error.value)
    assert line == 2 and message.startswith("/w/x.toml:2: not valid TOML: ") and "\n" not in message
    with pytest.raises(PipelineLoadError) as json_error:
        read_document("/w/x.json", '{\n  "name": "x",\n  "steps": [\n}')
    message, line = describe("/w/x.json", json_error.value)
    assert line == 4 and message.startswith("/w/x.json:4: not valid JSON: ")


def test_a_document_that_needs_python_or_is_invalid_is_refused() -> None:
    with pytest.raises(PipelineLoadError, match="function step"):
        read_document("/w/f.toml", 'name = "f"\n[[steps]]\nname = "s"\nfunction = "os:getcwd"\n')
    cyclic = ('name = "c"\n[[steps]]\nname = "a"\ngoal = "x"\ndeps = { b = "hard" }\n'
              '[[steps]]\nname = "b"\ngoal = "y"\ndeps = { a = "hard" }\n')
    with pytest.raises(PipelineValidationError) as invalid:
        read_document("/w/c.toml", cyclic)
    message, line = describe("/w/c.toml", invalid.value)
    assert message.startswith("/w/c.toml: pipeline 'c' is invalid: ") and "\n" not in message and line is None


def test_a_worker_load_error_keeps_its_line_number() -> None:
    error = PipelineLoadError("/w/bad.py:3: syntax error: invalid syntax")
    assert describe("/w/bad.py", error) == ("/w/bad.py:3: syntax error: invalid syntax", 3)
