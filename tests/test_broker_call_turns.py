"""A step's broker call leaves its worker in the loop turn it is made, when it is the only one waiting.

A step that sends, then receives (a request and its answer between two steps: bench/broker.py's round trip)
has one call at a time in flight; queueing it for the link's next pass cost every hop a loop turn (issue 17).
Concurrent calls (`asyncio.gather` of sends) still share one frame. Real ZeroMQ sockets (a ROUTER as the
daemon's workers.sock, the worker's `WorkerLink`), no daemon: nothing here answers the calls.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from tagent_client.wire.protocol_broker import ReceiveMessage, SendMessage, StepRef
from tagentd.worker import wire
from tagentd.worker.link import WorkerLink
from tagentd.worker.services import WorkerServices

CALLER = StepRef(run_id="r1", pipeline="ping", step="serve", task="serve", attempt=1)


@pytest.fixture
def daemon_socket(tmp_path: Path) -> Iterator[tuple[zmq.Context, zmq.Socket, str]]:
    """The daemon's side: a ROUTER bound over ipc, as workers.sock is."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.linger = 0
    endpoint = f"ipc://{tmp_path}/workers.sock"
    router.bind(endpoint)
    yield ctx, router, endpoint
    router.close()
    ctx.term()


def calls_in(router: zmq.Socket, timeout_ms: int) -> list[str]:
    """The broker calls of the next frame the daemon's socket has within `timeout_ms`, by request type."""
    if not router.poll(timeout_ms):
        return []
    _, frame = router.recv_multipart()
    messages, _ = wire.unpack(frame, wire.from_worker_decoder)
    return [type(m.op).__name__ for m in messages if isinstance(m, wire.BrokerCall)]


def test_a_lone_broker_call_leaves_in_its_turn_and_concurrent_ones_share_the_next_frame(daemon_socket: Any) -> None:
    ctx, router, endpoint = daemon_socket

    async def converse() -> dict[str, list[str]]:
        # Given a worker's services on a link connected to the daemon's socket, nothing in flight
        link = WorkerLink(ctx, endpoint, b"w1.test")
        link.start(lambda frame: None)
        services = WorkerServices(link, asyncio.get_running_loop(), None, None)  # type: ignore[arg-type]
        seen: dict[str, list[str]] = {}
        loop = asyncio.get_running_loop()

        # When a step makes one call, and the daemon looks in the same loop turn, right after the step has awaited
        lone = loop.create_task(services.broker(CALLER, SendMessage(to="pong", payload=1, message_id="r1/serve/1"), 0))
        loop.call_soon(lambda: seen.setdefault("lone", calls_in(router, 2000)))
        await asyncio.sleep(0)  # ok-sleep: one loop turn, the one the call is made in
        await asyncio.sleep(0)  # ok-sleep: and the one the daemon looks in
        # And while it waits, two more calls are made at once, and the daemon looks the same way
        more = [loop.create_task(services.broker(CALLER, op, 0)) for op in (
            SendMessage(to="pong", payload=2, message_id="r1/serve/2"), ReceiveMessage(wait=0))]
        loop.call_soon(lambda: seen.setdefault("behind", calls_in(router, 0)))
        await asyncio.sleep(0)  # ok-sleep: one loop turn, the one the calls are made in
        await asyncio.sleep(0)  # ok-sleep: and the one the daemon looks in
        seen["next"] = calls_in(router, 2000)  # the link's next pass
        for task in (lone, *more):
            task.cancel()
        await asyncio.gather(lone, *more, return_exceptions=True)
        link.close()
        return seen

    seen = asyncio.run(converse())
    # Then the lone call had left before the loop turned again (before, it waited for the link's next pass)
    assert seen["lone"] == ["SendMessage"]
    # And calls made while another waits are not sent one by one: they leave together in the link's next frame
    assert seen["behind"] == []
    assert seen["next"] == ["SendMessage", "ReceiveMessage"]
