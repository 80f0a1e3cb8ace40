"""Many requests in flight: every request gets exactly one reply, and a resent send is stored once.

A real tagentd, real clients. The daemon never drops a reply because a client
reads slowly (its control socket's send queue is unbounded), an AsyncClient
keeps at most `window` requests in flight, and a send keeps one message id
across every resend, the client's own and the caller's.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import DaemonProcess

from tagent_client.client.aio import AsyncClient
from tagent_client.client.sync import Client
from tagent_client.errors import RequestTimeout

SENDS = 5000


@pytest.fixture
def daemon(make_daemon: Callable[..., DaemonProcess]) -> DaemonProcess:
    return make_daemon(workers=1).start()


@pytest.fixture
def frozen(daemon: DaemonProcess) -> Iterator[Callable[[bool], None]]:
    """freeze(True) stops the daemon process (SIGSTOP), freeze(False) lets it go on; it always goes on at the end."""
    def freeze(stop: bool) -> None:
        os.kill(daemon.pid, signal.SIGSTOP if stop else signal.SIGCONT)

    yield freeze
    freeze(False)


@pytest.mark.timeout(120)
def test_five_thousand_concurrent_sends_from_one_async_client_all_get_their_reply(daemon: DaemonProcess) -> None:
    # Given one AsyncClient
    client = AsyncClient(daemon.runtime_dir)

    async def send_all() -> tuple[list[Any], int]:
        async with client:
            # When it sends 5,000 messages at once
            results = await asyncio.gather(*(client.send("inbox", {"n": n}) for n in range(SENDS)),
                                           return_exceptions=True)
            return results, (await client.mailboxes("inbox"))[0].messages

    results, stored = asyncio.run(send_all())

    # Then every send got its reply (no timeout, nothing resent), each with its own id
    failures = [r for r in results if isinstance(r, BaseException)]
    assert not failures, f"{len(failures)} sends failed, first: {failures[0]!r}"
    assert len(set(results)) == SENDS and client.resent == 0
    # And exactly 5,000 messages are stored, and the daemon dropped no reply
    assert stored == SENDS
    with daemon.client() as client:
        assert client.daemon_status().stats["replies_dropped"] == 0


def test_a_send_without_an_answer_in_time_is_resent_under_its_id_and_stored_once(
        daemon: DaemonProcess, frozen: Callable[[bool], None]) -> None:
    # Given an AsyncClient connected to a daemon that then stops answering for a while
    outcome: dict[str, Any] = {}

    async def send_once(client: AsyncClient) -> None:
        try:
            outcome["id"] = await client.send("inbox", "hello")
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            outcome["error"] = exc

    async def scenario() -> None:
        async with AsyncClient(daemon.runtime_dir, timeout=2.0) as client:
            frozen(True)
            # When a send gets no answer within its timeout
            sending = asyncio.get_running_loop().create_task(send_once(client))
            while client.resent == 0 and not sending.done():
                await asyncio.sleep(0.02)  # ok-sleep: polling interval while the send waits out its timeout
            # (the client has sent the very same frame again) and the daemon answers again
            frozen(False)
            await sending

    asyncio.run(scenario())

    # Then the send returns its id, and the message is stored once although the daemon got it twice
    assert "error" not in outcome, outcome
    with daemon.client() as client:
        box = client.mailboxes("inbox", peek=5)[0]
    assert box.messages == 1 and box.peek[0].id == outcome["id"]


def test_a_caller_retrying_a_timed_out_send_with_its_message_id_stores_it_once(
        daemon: DaemonProcess, frozen: Callable[[bool], None]) -> None:
    # Given a client that does not resend by itself, and a daemon that stops answering
    client = Client(daemon.runtime_dir, timeout=0.5, resends=0)
    try:
        frozen(True)
        # When a send times out
        with pytest.raises(RequestTimeout) as timeout:
            client.send("inbox", {"order": 1})
        # Then the error names the message's id and says how to retry it safely
        message_id = timeout.value.details["message_id"]
        assert f"id={message_id!r}" in timeout.value.message and "\n" not in timeout.value.message

        # When the daemon answers again and the caller retries with that id
        frozen(False)
        with Client(daemon.runtime_dir, timeout=10) as again:
            retried = again.send("inbox", {"order": 1}, id=message_id)
    finally:
        client.close()

    # Then the message is stored once
    assert retried == message_id
    with daemon.client() as check:
        assert check.mailboxes("inbox")[0].messages == 1
