"""`Channel` (tagentd/plumbing/channel.py) on real ZeroMQ sockets: what one message costs the loop.

Every step hand-off between the daemon and a worker is a message each way through a `Channel`, so each loop turn
and each ZeroMQ call it spends is paid by every step of a chain (issue 17): a pass must not ask for a message that
is not there but when the FD fired for something else (pyzmq raises for that), nor read ZMQ_EVENTS more often than
the FD's edge needs (each read polls libzmq's command pipe: two syscalls), a `send_now` must not cost a pass of its
own, and a message must be handled in the loop turn its socket signals it, not one turn later.
"""

from __future__ import annotations

import asyncio
import select
from collections.abc import Iterator

import pytest
import zmq

from tagentd.plumbing.channel import Channel


class CountingSocket(zmq.Socket):
    """A ZeroMQ socket that counts the receives that found nothing (each a zmq.Again raised by pyzmq) and its
    ZMQ_EVENTS reads."""

    empty_receives = 0
    events_reads = 0

    def recv_multipart(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        try:
            return super().recv_multipart(*args, **kwargs)
        except zmq.Again:
            type(self).empty_receives += 1
            raise

    def recv(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        try:
            return super().recv(*args, **kwargs)
        except zmq.Again:
            type(self).empty_receives += 1
            raise

    def get(self, option):  # type: ignore[no-untyped-def]
        if option == zmq.EVENTS:
            type(self).events_reads += 1
        return super().get(option)


@pytest.fixture
def pair(tmp_path) -> Iterator[tuple[zmq.Socket, zmq.Socket]]:  # type: ignore[no-untyped-def]
    """A ROUTER (counting its empty receives) and a DEALER connected to it over ipc, as workers.sock is."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER, socket_class=CountingSocket)
    router.linger = 0
    endpoint = f"ipc://{tmp_path}/channel.sock"
    router.bind(endpoint)
    dealer = ctx.socket(zmq.DEALER)
    dealer.linger = 0
    dealer.setsockopt(zmq.IDENTITY, b"peer")
    dealer.connect(endpoint)
    CountingSocket.empty_receives = CountingSocket.events_reads = 0
    yield router, dealer
    dealer.close()
    router.close()
    ctx.term()


async def _until(condition, what: str, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.001)  # ok-sleep: polling interval of a deadline-bounded wait


def test_an_echo_conversation_reads_zmq_events_twice_per_message_and_rarely_asks_for_nothing(pair) -> None:  # type: ignore[no-untyped-def]
    router, dealer = pair

    async def converse() -> list[list[bytes]]:
        # Given a Channel on the ROUTER that answers each message at once with send_now, as the daemon answers
        # a worker's result with the next task
        got: list[list[bytes]] = []

        def handle(batch: list[list[bytes]]) -> None:
            for identity, payload in batch:
                got.append([identity, payload])
                channel.send_now([identity, b"re:" + payload])

        channel = Channel(router)
        channel.start(handle)
        dealer.send(b"warm-up")  # the connection's own commands arrive with the first message
        await _until(lambda: dealer.poll(0), "the answer to the warm-up")
        dealer.recv()
        got.clear()
        CountingSocket.empty_receives = CountingSocket.events_reads = 0
        # When the peer sends 50 messages, one after the other's answer
        for i in range(50):
            dealer.send(b"%d" % i)
            await _until(lambda: dealer.poll(0), f"the answer to message {i}")
            assert dealer.recv() == b"re:%d" % i
        channel.close()
        return got

    got = asyncio.run(converse())
    # Then every message was handled and answered; each pass read ZMQ_EVENTS twice (after its receive: nothing
    # more; after the answer's send: the edge re-armed), not three times, and a receive found nothing only when
    # the FD fired for something other than a message (at most a few times, never once per message)
    assert [payload for _, payload in got] == [b"%d" % i for i in range(50)]
    assert CountingSocket.events_reads <= 2 * 50
    assert CountingSocket.empty_receives <= 3


def test_a_pass_whose_handler_sends_nothing_reads_zmq_events_once(pair) -> None:  # type: ignore[no-untyped-def]
    router, dealer = pair

    async def receive_all() -> list[list[bytes]]:
        # Given a Channel on the ROUTER whose handler only takes the messages, as a worker takes its tasks
        got: list[list[bytes]] = []
        channel = Channel(router)
        channel.start(got.extend)
        dealer.send(b"warm-up")
        await _until(lambda: got, "the warm-up message")
        got.clear()
        CountingSocket.empty_receives = CountingSocket.events_reads = 0
        # When 30 messages come one at a time, each handled before the next is sent
        for i in range(30):
            dealer.send(b"%d" % i)
            await _until(lambda: len(got) > i, f"message {i}")
        channel.close()
        return got

    got = asyncio.run(receive_all())
    # Then each was handled, and each pass read ZMQ_EVENTS once: after its receive, to see that nothing more
    # waits (the FD's edge is then armed, and nothing touched the socket after it)
    assert [payload for _, payload in got] == [b"%d" % i for i in range(30)]
    assert CountingSocket.events_reads <= 30
    assert CountingSocket.empty_receives <= 3


def test_a_message_is_handled_in_the_loop_turn_its_socket_signals_it(pair) -> None:  # type: ignore[no-untyped-def]
    router, dealer = pair

    async def turns_to_handle() -> int:
        loop = asyncio.get_running_loop()
        turn = 0
        send_in_turn: list[int] = []
        sent_at: list[int] = []
        handled_at: list[int] = []
        fd = router.getsockopt(zmq.FD)

        def tick() -> None:  # runs once in each loop turn, first of that turn's callbacks: counts the turns
            nonlocal turn
            turn += 1
            if send_in_turn and not sent_at:
                # Given a message sent in this turn, and this turn held until the router's FD signals it (select
                # only looks at the FD: it does not take the signal the loop's poll will see next)
                dealer.send(b"x")
                readable, _, _ = select.select([fd], [], [], 5.0)
                assert readable, "the router's FD never signalled the message"
                sent_at.append(turn)
            loop.call_soon(tick)

        channel = Channel(router)
        channel.start(lambda batch: handled_at.extend(turn for _ in batch))
        dealer.send(b"warm-up")  # the connection's own commands arrive with the first message
        await _until(lambda: handled_at, "the warm-up message")
        handled_at.clear()
        loop.call_soon(tick)
        # When the loop polls in the next turn and finds the FD readable
        send_in_turn.append(1)
        await _until(lambda: handled_at, "the message")
        channel.close()
        return handled_at[0] - sent_at[0]

    # Then the message was handled in that very next turn (not one turn after it)
    assert asyncio.run(turns_to_handle()) == 1


def test_a_message_sent_at_once_leaves_before_the_loop_turns_again_unless_others_wait(pair) -> None:  # type: ignore[no-untyped-def]
    router, dealer = pair

    async def converse() -> tuple[bytes | None, bytes | None, list[bytes]]:
        # Given a Channel on the DEALER (as a worker's link), its peer connected
        channel = Channel(dealer, multipart=False)
        channel.start(lambda batch: None)
        dealer.send(b"hello")
        assert router.poll(5000)
        router.recv_multipart()
        got: dict[str, bytes | None] = {}

        def peer_receives() -> bytes | None:
            return router.recv_multipart()[1] if router.poll(2000) else None

        def send_in_this_turn() -> None:
            # When a message is sent at once, and the peer looks for it in the same loop turn
            channel.send([b"alone"], at_once=True)
            got["alone"] = peer_receives()
            # and another is queued first, then one sent "at once" after it
            channel.send([b"queued"])
            channel.send([b"after"], at_once=True)
            got["held"] = router.recv_multipart(zmq.NOBLOCK)[1] if router.poll(0) else None

        asyncio.get_running_loop().call_soon(send_in_this_turn)
        await _until(lambda: "held" in got, "the sends")
        later = [peer_receives(), peer_receives()]
        channel.close()
        return got["alone"], got["held"], [m for m in later if m is not None]

    alone, held, later = asyncio.run(converse())
    # Then the lone message was there at once; the one behind a queued message kept its place, and both left
    # with the next pass, in order
    assert alone == b"alone"
    assert held is None
    assert later == [b"queued", b"after"]


def test_a_message_that_arrives_while_the_handler_runs_is_served_before_callbacks_queued_meanwhile(pair) -> None:  # type: ignore[no-untyped-def]
    router, dealer = pair

    async def order_of_work() -> list[str]:
        # Given a Channel on the ROUTER whose handler answers the first message and, meanwhile, the loop gets other
        # work (as the group commit is woken by the result the handler applies), and the peer's next message
        # arrives before the handler returns (as a worker's next result does while the daemon's send is preempted)
        loop = asyncio.get_running_loop()
        log: list[str] = []

        def handle(batch: list[list[bytes]]) -> None:
            for identity, payload in batch:
                log.append(payload.decode())
                if payload == b"first":
                    loop.call_soon(log.append, "queued meanwhile")
                    channel.send_now([identity, b"re:first"])
                    dealer.send(b"second")
                    assert router.poll(5000), "the second message never arrived"

        channel = Channel(router)
        channel.start(handle)
        dealer.send(b"warm-up")
        await _until(lambda: log, "the warm-up message")
        log.clear()
        # When the first message comes
        dealer.send(b"first")
        await _until(lambda: len(log) == 3, "both messages and the queued callback")
        channel.close()
        return log

    # Then the second message was handled in the same callback, before the work queued meanwhile
    assert asyncio.run(order_of_work()) == ["first", "second", "queued meanwhile"]


def test_a_message_for_a_peer_that_is_gone_is_dropped_and_counted_and_the_next_one_still_leaves(pair) -> None:  # type: ignore[no-untyped-def]
    router, dealer = pair
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)

    async def send_to_nobody() -> tuple[bool, int, list[bytes]]:
        # Given a Channel on a ROUTER that refuses messages for peers it does not know (as workers.sock does)
        heard: list[list[bytes]] = []
        channel = Channel(router)
        channel.start(heard.extend)
        dealer.send(b"hello")  # the peer is known from its first message
        await _until(lambda: heard, "the peer's hello")
        # When a message goes at once to a peer that is gone, and two are queued: for the gone peer, then for the
        # known one
        at_once = channel.send_now([b"gone", b"a"])
        channel.send([b"gone", b"b"])
        channel.send([b"peer", b"c"])
        await _until(lambda: dealer.poll(0), "the message for the known peer")
        got = [dealer.recv()]
        channel.close()
        return at_once, channel.dropped_sends, got

    at_once, dropped, got = asyncio.run(send_to_nobody())
    # Then the send at once says it did not leave, the queued one is dropped and counted, and the next one arrived
    assert at_once is False
    assert dropped == 1
    assert got == [b"c"]
