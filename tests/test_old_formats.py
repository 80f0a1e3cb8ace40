"""On-disk compatibility: a state dir written by tagentd 0.1 (format 1) loads in every later version.

`tests/fixtures/state-v1/` was written by the daemon of 2026-11 (format 1 of every
record) and left by a kill -9, so it holds what a crash leaves: run snapshots, a
write-ahead log with deltas not yet snapshotted, the broker's log (mailbox
messages, a space with a version history and a tombstone, a registered triggered
pipeline) and the watcher's seen-file. `state-v1.json` names its runs. The files
are never regenerated: they stay as they are, the way pueue keeps an old state
file in its tests, so a change that cannot read yesterday's state fails here.

What the fixture holds:
- `fixture_done`: completed; `fetch` saved memory and logged a line; `report` failed
  once (retryable) and succeeded on its second attempt.
- `fixture_failed`: failed (`boom` raised ValueError, `after` skipped).
- `fixture_gated`: unfinished; `first` completed, `gate` in flight until the file named by
  `$FIXTURE_GATE` exists.
- `fixture_watched`: ran from the watched folder (the seen-file remembers it).
- mailbox `fixture_inbox`: messages `m-1`, `m-2`; space `fixture_space`: `alpha` at
  version 2 (`{"v": 2}`), `beta` deleted at version 1; `fixture_listener` registered for
  `fixture.ping`.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import REPO, DaemonProcess, wait_until

FIXTURE = REPO / "tests" / "fixtures" / "state-v1"
MANIFEST = json.loads((REPO / "tests" / "fixtures" / "state-v1.json").read_text())
RUNS = MANIFEST["runs"]

pytestmark = pytest.mark.timeout(90)


def private_copy(source: Path, target: Path) -> None:
    """Copy the fixture as a daemon would have left it: dirs 0700, files 0600 (git keeps no modes)."""
    shutil.copytree(source, target)
    for path in [target, *target.rglob("*")]:
        path.chmod(0o700 if path.is_dir() else 0o600)


@pytest.fixture
def old_daemon(make_daemon: Callable[..., DaemonProcess], tmp_path: Path) -> Iterator[DaemonProcess]:
    """Given a daemon started on a copy of the format-1 state dir (its gated step is let go at the end, so the
    daemon stops at once instead of waiting out its stop timeout for it)."""
    daemon = make_daemon(workers=1)
    private_copy(FIXTURE, daemon.state_dir)
    daemon.env["FIXTURE_GATE"] = str(tmp_path / "gate")
    yield daemon.start()
    (tmp_path / "gate").touch()


def test_finished_runs_of_format_1_keep_status_outputs_history_and_logs(old_daemon: DaemonProcess) -> None:
    # When the finished runs are read back
    with old_daemon.client() as client:
        done = client.result(RUNS["done"])
        failed = client.result(RUNS["failed"])
        status = client.status(RUNS["done"])
        history = client.history(RUNS["done"])
        logs = list(client.logs(RUNS["done"]))
    # Then everything the old daemon recorded is there
    assert done.status == "completed"
    assert done.step_outputs["fetch"] == {"company": "Acme", "score": 4.5}
    assert done.step_outputs["report"] == "report on Acme"
    assert status.steps["report"].attempts == 2
    assert any(entry.get("what") == "step.completed" for entry in history)
    assert any("fetched Acme" in line.message for line in logs)
    assert failed.status == "failed"
    assert "bad input on purpose" in failed.error_details["boom"]
    assert "after" in failed.skipped_steps


def test_unfinished_run_of_format_1_continues_without_rerunning_its_completed_step(
    old_daemon: DaemonProcess, tmp_path: Path
) -> None:
    # When the step it was waiting in may go on
    (tmp_path / "gate").touch()
    with old_daemon.client() as client:
        result = client.wait(RUNS["gated"], timeout=30)
        first = client.status(RUNS["gated"]).steps["first"]
    # Then the run completes with the output its completed step had before the crash
    assert result.status == "completed"
    assert result.step_outputs["gate"] == "first done, gate passed"
    assert first.attempts == 1


def test_broker_state_of_format_1_keeps_messages_spaces_and_registrations(old_daemon: DaemonProcess) -> None:
    with old_daemon.client() as client:
        # Then the queued messages wait in their mailbox, in order
        inbox = {box.name: box for box in client.mailboxes(peek=10)}["fixture_inbox"]
        assert inbox.messages == 2
        assert [(m.id, m.payload) for m in inbox.peek] == [("m-1", {"hello": "world"}), ("m-2", {"hello": "again"})]
        # and the space keeps its versions and its tombstone
        space = client.space("fixture_space")
        alpha = space.get("alpha")
        assert alpha is not None and (alpha.value, alpha.version) == ({"v": 2}, 2)
        assert space.get("beta") is None
        assert space.put("beta", "again").version == 2  # continues from the tombstone
        # and the registered pipeline still starts a run per event
        client.publish("fixture.ping", {"n": 7})
        wait_until(lambda: [r for r in client.runs() if r.pipeline == "fixture_listener"], 20,
                   what="a triggered run of fixture_listener")
        run = next(r for r in client.runs() if r.pipeline == "fixture_listener")
        assert client.wait(run.run_id, timeout=30).step_outputs["hear"] == {"n": 7}


def test_seen_file_of_format_1_is_read() -> None:
    from tagentd.watch.seen import SeenFiles

    # When the watcher's memory is loaded
    seen = SeenFiles.load(FIXTURE)
    # Then it remembers the watched file and the run it started
    assert not seen.problems
    assert len(seen) == 1
    entry = seen.get(MANIFEST["watched"]["path"], MANIFEST["watched"]["sha256"])
    assert entry is not None and entry.run_id == RUNS["watched"]
