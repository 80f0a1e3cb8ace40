"""A submit waits as long as the daemon may take to import the file; one idempotency key starts one run.

Real daemons with a short `load_timeout` and clients with a shorter timeout
than the import takes: the client used to give up after its own timeout while
the daemon still imported (and then started) the run, so a retry started a
second one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import DaemonProcess, write_pipeline

from tagent_client.client.aio import AsyncClient
from tagent_client.client.calls import RunHandle
from tagent_client.client.sync import Client
from tagent_client.errors import InvalidRequest

IMPORT_S = 2.5  # how long the slow pipeline's import takes
CLIENT_TIMEOUT = 1.0  # shorter than the import: the old client gave up here
LOAD_TIMEOUT = "10"  # the daemon's: how long it lets an import take


@pytest.fixture
def daemon(make_daemon: Callable[..., DaemonProcess]) -> DaemonProcess:
    daemon = make_daemon(workers=1)
    daemon.env["TAGENTD_LOAD_TIMEOUT"] = LOAD_TIMEOUT
    return daemon.start()


def slow_import(directory: Path) -> Path:
    return write_pipeline(directory, "slow.py", f"""
        import time
        from tagent_client import Pipeline

        time.sleep({IMPORT_S})  # ok-sleep: the import's own slow work
        pipeline = Pipeline("slow")

        @pipeline.task
        def only():
            return 1
    """)


def quick(directory: Path, name: str = "quick") -> Path:
    return write_pipeline(directory, f"{name}.py", f"""
        from tagent_client import Pipeline
        pipeline = Pipeline("{name}")

        @pipeline.task
        def only():
            return 1
    """)


def test_a_submit_waits_for_an_import_longer_than_the_client_timeout_and_starts_one_run(
        daemon: DaemonProcess, tmp_path: Path) -> None:
    # Given a pipeline whose import takes longer than the client's timeout (but less than the daemon's load_timeout)
    path = slow_import(tmp_path)
    with Client(daemon.runtime_dir, timeout=CLIENT_TIMEOUT) as client:
        # When it is submitted with an idempotency key
        began = time.monotonic()
        handle = client.submit(path, idempotency_key="nightly-1")

        # Then the submit waited for the import and returned the run: the only one
        assert time.monotonic() - began >= IMPORT_S
        assert handle.id and not handle.duplicate
        assert [r.run_id for r in client.runs()] == [handle.id]

        # When it is submitted again with the same key
        again = client.submit(path, idempotency_key="nightly-1")

        # Then the same run comes back and no second run starts
        assert again.id == handle.id and again.duplicate
        assert [r.run_id for r in client.runs()] == [handle.id]


def test_two_submits_with_one_key_at_once_start_one_run(daemon: DaemonProcess, tmp_path: Path) -> None:
    # Given a slow-importing pipeline
    path = slow_import(tmp_path)

    async def twice() -> list[RunHandle]:
        async with AsyncClient(daemon.runtime_dir, timeout=CLIENT_TIMEOUT) as client:
            # When two submits with the same key arrive while the first one still imports the file
            return list(await asyncio.gather(client.submit(path, idempotency_key="k"),
                                             client.submit(path, idempotency_key="k")))

    first, second = asyncio.run(twice())

    # Then both name the same run, one of them as a duplicate, and only one run exists
    assert first.id == second.id and sorted([first.duplicate, second.duplicate]) == [False, True]
    with daemon.client() as client:
        assert len(client.runs()) == 1
        # And the key cannot start a run of another file
        with pytest.raises(InvalidRequest, match="idempotency key 'k' was used for run"):
            client.submit(quick(tmp_path), idempotency_key="k")


@pytest.mark.timeout(90)
def test_an_idempotency_key_outlives_a_crash_of_the_daemon(daemon: DaemonProcess, tmp_path: Path) -> None:
    # Given a run submitted with `tagent submit --idempotency-key`
    path = quick(tmp_path)
    first = daemon.cli("submit", str(path), "--idempotency-key", "deploy-42")
    assert first.returncode == 0, first.stderr
    run_id = first.stdout.strip()

    # When the daemon is killed (-9) and started again, and the same submit is repeated
    daemon.kill9()
    daemon.start()
    again = daemon.cli("submit", str(path), "--idempotency-key", "deploy-42")

    # Then it prints the same run, and there is still only that one
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == run_id
    with daemon.client() as client:
        assert [r.run_id for r in client.runs()] == [run_id]
