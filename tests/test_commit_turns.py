"""Loop turns on the direct-message round trip (issue 17): what the group commit and the sockets do without waiting.

In process, against real parts where they are cheap (the durable run store, a ZeroMQ socket pair, the group
commit) and small fakes where a daemon would be needed. Each test names the loop turn or the task it removes;
the end-to-end promise (a reply leaves only after the commit that makes it true) is tested with real daemons in
test_broker_not_durable.py and test_durability.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import zmq
from fake_executor import bare_driver

from tagentd.app.commit import GroupCommit
from tagentd.plumbing.channel import Channel
from tagentd.runs.durable import DurableStore
from tagentd.runs.store import MemoryStore
from tagentd.storage.health import StoreHealth


class Replies:
    """A channel that tells a reply sent at once (`send_now`) from one queued for a later pass (`send`)."""

    def __init__(self) -> None:
        self.now: list[list[bytes]] = []
        self.queued: list[list[bytes]] = []

    def send(self, frames: list[bytes]) -> None:
        self.queued.append(frames)

    def send_now(self, frames: list[bytes]) -> bool:
        self.now.append(frames)
        return True


class Disk:
    """A participant whose flush is real I/O (it suspends once) and records when it is on disk."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    def prepare(self) -> str:
        return "token"

    def flush(self, token: str) -> Awaitable[None]:
        return self._flush()

    async def _flush(self) -> None:
        await asyncio.sleep(0)  # ok-sleep: the fake fsync takes one loop turn, as a real one takes at least one
        self.log.append("on disk")

    def committed(self, token: str) -> None:
        return None

    def failed(self, token: str) -> None:
        return None


def test_a_reply_parked_for_the_commit_leaves_in_the_turn_the_commit_ends(tmp_path: Path) -> None:
    async def scenario() -> None:
        # Given a group commit with one participant that writes, and a reply parked until it is on disk
        log: list[str] = []
        commit = GroupCommit(StoreHealth(tmp_path), retry_s=0.0)
        commit.join(Disk(log))
        channel = Replies()
        commit.reply_after_commit(channel, [b"w1", b"reply"])  # type: ignore[arg-type]
        # When the commit runs
        await commit.commit()
        # Then the reply was sent by the commit itself, not queued for the socket's next pass (a loop turn later)
        assert log == ["on disk"]
        assert channel.now == [[b"w1", b"reply"]]
        assert channel.queued == []

    asyncio.run(scenario())


def test_a_run_store_with_nothing_to_write_is_not_awaited_by_the_commit(tmp_path: Path) -> None:
    async def scenario() -> None:
        # Given the durable run store with nothing written since its last flush, and the run driver over it
        store = DurableStore(tmp_path)
        await store.flush()
        driver = bare_driver(tmp_path, store=store, durable=True)
        # When a commit asks the driver for its flush (the broker alone has something to write)
        flush = driver.flush([])
        # Then there is none: the commit awaits only the broker's, without tasks to gather them (two loop turns)
        assert flush is None
        assert store.pending is False
        assert MemoryStore().pending is False
        store.close()

    asyncio.run(scenario())


class FdSocket:
    """What Channel uses of a ZeroMQ socket, around a real one, counting the receive attempts."""

    def __init__(self, sock: zmq.Socket) -> None:
        self.sock = sock
        self.receives = 0

    @property
    def closed(self) -> bool:
        return self.sock.closed

    def getsockopt(self, option: int) -> Any:
        return self.sock.getsockopt(option)

    def get(self, option: int) -> Any:
        return self.sock.get(option)

    def send(self, data: bytes, flags: int = 0) -> None:
        self.sock.send(data, flags)

    def recv(self, flags: int = 0) -> bytes:
        self.receives += 1
        return self.sock.recv(flags)

    def recv_multipart(self, flags: int = 0) -> list[bytes]:
        self.receives += 1
        return self.sock.recv_multipart(flags)

    def close(self, linger: int = 0) -> None:
        self.sock.close(linger=linger)


def test_a_readable_socket_is_served_by_the_callback_that_saw_it_and_a_send_now_adds_no_pass() -> None:
    async def scenario() -> None:
        context = zmq.Context()
        peer = context.socket(zmq.PAIR)
        peer.bind("inproc://turns")
        wrapped = FdSocket(context.socket(zmq.PAIR))
        wrapped.sock.connect("inproc://turns")
        readers: list[Any] = []
        loop = asyncio.get_running_loop()
        add_reader = loop.add_reader
        loop.add_reader = lambda fd, callback, *args: readers.append(callback)  # the test plays the loop's poller
        try:
            # Given a channel on one end of a socket pair, started and idle
            got: list[list[bytes]] = []
            channel = Channel(wrapped, multipart=False)  # type: ignore[arg-type]
            channel.start(lambda batch: got.extend(batch))
            await asyncio.sleep(0)  # ok-sleep: one loop turn, for the pass start() scheduled
            # When the peer sends and the socket's FD says so
            peer.send(b"hello")
            assert wrapped.sock.poll(5000) == zmq.POLLIN
            readers[0]()
            # Then the message is handled inside that very callback, not in a pass scheduled for the next turn
            assert got == [[b"hello"]]
            # And a send_now with nothing waiting to be read schedules no pass (no receive attempt a turn later)
            before = wrapped.receives
            assert channel.send_now([b"answer"])
            for _ in range(3):
                await asyncio.sleep(0)  # ok-sleep: loop turns counted, in which no pass may come
            assert wrapped.receives == before
            assert peer.recv() == b"answer"
        finally:
            loop.add_reader = add_reader  # type: ignore[method-assign]
            channel.close()
            peer.close(linger=0)
            context.term()

    asyncio.run(scenario())
