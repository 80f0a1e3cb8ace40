"""`tagent runs` is paged (issue 17): a page starts where the previous one ended, so listing costs what it shows
however long the history is, pages stay put while runs are added, and `--all` sees every run once.

Also here: `tagentd start` returns once the control socket answers, before the workers are ready (status says
they are starting), and a step submitted right then still runs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import DaemonProcess, processes_using, wait_until, write_pipeline

from tagentd.runs.run import RunEntry
from tagentd.runs.store import MemoryStore, Recovered
from tagentd.runs.table import RunTable

ONE_STEP = """
    from tagent_client import Pipeline

    pipeline = Pipeline("paged")


    @pipeline.task(final=True)
    async def one(ctx):
        return ctx.params["n"]
"""


def submit_and_finish(daemon: DaemonProcess, path: Path, n: int) -> str:
    with daemon.client() as client:
        run_id = client.submit(str(path), {"n": n}).id
        assert client.wait(run_id, timeout=30).status == "completed"
        return run_id


def entries(count: int) -> list[RunEntry]:
    """`count` finished runs' index entries, oldest first (ids sort by creation time, as real ones do)."""
    return [RunEntry(run_id=f"r{i:06d}", pipeline="p", status="completed", steps_done=1, steps_total=1,
                     created_at=1000.0 + i, finished_at=1000.5 + i) for i in range(count)]


@pytest.mark.timeout(120)
def test_pages_stay_put_while_runs_are_added_and_all_sees_every_run_once(
    make_daemon: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    # Given a daemon with 7 finished runs
    daemon = make_daemon(workers=1).start()
    path = write_pipeline(tmp_path, "paged.py", ONE_STEP)
    made = [submit_and_finish(daemon, path, n) for n in range(7)]

    # When a client pages back 3 at a time, and a new run is added between the pages
    pages, before = [], None
    with daemon.client() as client:
        while True:
            page = [r.run_id for r in client.runs(limit=3, before=before)]
            if not page:
                break
            pages.append(page)
            before = page[-1]
            made.append(submit_and_finish(daemon, path, 100 + len(pages)))

    # Then the pages are the 7 first runs, newest first, each once: the runs added meanwhile shift nothing
    assert pages == [made[6:3:-1], made[3:0:-1], made[0:1]], pages

    # When `tagent runs` shows a page of 2
    shown = daemon.cli("runs", "-n", "2")
    # Then it shows the newest 2 and says how to see the older ones
    assert shown.returncode == 0, shown.stderr
    assert [line.split()[0] for line in shown.stdout.splitlines()[1:]] == [made[-1], made[-2]]
    assert f"tagent runs --before {made[-2]}" in shown.stderr and "--all" in shown.stderr
    older = json.loads(daemon.cli("runs", "--before", made[-2], "-n", "100", "--json").stdout)
    assert [r["run_id"] for r in older] == made[-3::-1]

    # And `tagent runs --all` lists every run exactly once, newest first (as JSON and as a table)
    every = json.loads(daemon.cli("runs", "--all", "--json").stdout)
    assert [r["run_id"] for r in every] == made[::-1]
    table = daemon.cli("runs", "--all").stdout.splitlines()
    assert [line.split()[0] for line in table[1:]] == made[::-1]


@pytest.mark.timeout(120)
def test_a_cursor_taken_before_a_kill9_pages_on_after_the_restart(
    make_daemon: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    # Given 6 finished runs on a daemon keeping 2 finished runs in memory, and a client that read the first page
    daemon = make_daemon(workers=1)
    daemon.env["TAGENTD_RUN_CACHE_SIZE"] = "2"
    daemon.start()
    path = write_pipeline(tmp_path, "paged.py", ONE_STEP)
    made = [submit_and_finish(daemon, path, n) for n in range(6)]
    with daemon.client() as client:
        first = [r.run_id for r in client.runs(limit=3)]

    # When the daemon is killed with SIGKILL and started again
    daemon.kill9()
    daemon.start()

    # Then the next page, from the cursor taken before the crash, holds the older runs (from the run index)
    with daemon.client() as client:
        second = [r.run_id for r in client.runs(limit=3, before=first[-1])]
        assert first + second == made[::-1]
        # and a run of that page answers in full, read back from its snapshot on demand
        assert client.result(second[-1]).step_outputs == {"one": 0}
        assert client.daemon_status().stats["runs"]["read_from_disk"] >= 1


def test_a_page_continues_after_its_cursor_run_was_removed() -> None:
    # Given a table of 3,000 finished runs (index entries, as after a restart)
    table = RunTable(MemoryStore(), cache_size=0)
    listed = entries(3_000)
    table.restore(Recovered(entries=listed))
    ids = [e.run_id for e in listed]

    # When a client pages back 7 at a time, and retention removes each page's last run (the cursor) and the
    # 60 oldest runs before the next page is asked for (so the table also closes its holes now and then)
    pages = 0
    before = None
    while page := [s.run_id for s in table.newest(7, before=before)]:
        # Then each page is the 7 newest runs still there that are older than the previous page's last
        assert page == [i for i in ids if before is None or i < before][-7:][::-1]
        pages += 1
        before = page[-1]
        for run_id in [before, *ids[:60]]:
            table.remove(run_id)
        ids = [i for i in ids[60:] if i != before]
    assert pages > 20 and not [i for i in ids if i < before]


def test_a_listed_page_is_the_same_however_many_runs_are_newer() -> None:
    # Given a table of 100,000 runs
    table = RunTable(MemoryStore(), cache_size=0)
    table.restore(Recovered(entries=entries(100_000)))

    # When the page after run 500 is asked for, and the page with a status that no run has
    t0 = time.perf_counter()
    page = [s.run_id for s in table.newest(50, before="r000500")]
    took = time.perf_counter() - t0

    # Then it holds the 50 runs before it, found from the cursor's place (not by walking 99,500 newer runs)
    assert page == [f"r{i:06d}" for i in range(499, 449, -1)]
    assert took < 0.05, took
    assert table.newest(50, status="failed") == []


@pytest.mark.timeout(120)
def test_start_returns_before_the_workers_are_ready_and_a_step_submitted_then_still_runs(
    make_daemon: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    # Given a daemon whose workers come from the worker template (seconds of imports before they are ready)
    daemon = make_daemon(workers=2, template=True)
    path = write_pipeline(tmp_path, "paged.py", ONE_STEP)
    try:
        # When `tagentd start` returns
        started = daemon.admin("start", "--workers", "2", timeout=30)
        assert started.returncode == 0, started.stderr
        status = daemon.admin("status", "--json")

        # Then the daemon answers while its workers are still starting, and says so
        info = json.loads(status.stdout)
        assert info["stats"]["workers_starting"] == 2, info["workers"]
        assert "2 starting" in daemon.admin("status").stdout

        # And a step submitted right then runs once a worker is ready
        submitted = daemon.cli("submit", str(path), "--param", "n=5")
        assert submitted.returncode == 0, submitted.stderr
        waited = daemon.cli("wait", submitted.stdout.strip(), "--timeout", "60", "--json")
        assert waited.returncode == 0 and json.loads(waited.stdout)["status"] == "completed", waited.stdout
        info = wait_until(lambda: (i := json.loads(daemon.admin("status", "--json").stdout))["stats"][
            "workers_starting"] == 0 and i, 60, what="the workers to be ready")
        assert len(info["workers"]) == 2
    finally:
        daemon.admin("stop", "--fast", "--timeout", "10")
        wait_until(lambda: not processes_using(daemon.root), 20, what="the daemon and its workers to exit")
