"""tagentd.executor.spawner with real processes: workers forked from the template behave like subprocess.Popen children.

No daemon: the test drives a Spawner (as the pool does), and a bare ROUTER socket stands in for workers.sock
(the workers say hello to it; nothing else is answered).
"""

from __future__ import annotations

import collections
import signal
import subprocess
from pathlib import Path

import pytest
import zmq
from conftest import pid_alive, wait_until

from tagentd.executor.spawner import Spawner
from tagentd.worker import wire

pytestmark = pytest.mark.timeout(120)


def worker_argv(tmp_path: Path, wid: int) -> list[str]:
    return ["--endpoint", f"ipc://{tmp_path}/workers.sock", "--id", str(wid), "--heartbeat", "0.2"]


def await_hello(router: zmq.Socket, wid: int) -> wire.Hello:
    """The Hello of worker `wid` (other messages are skipped), within a deadline."""
    def hello() -> wire.Hello | None:
        while router.poll(50):
            _, frame = router.recv_multipart()
            message = wire.from_worker_decoder.decode(frame)
            if isinstance(message, wire.Hello) and message.worker_id == wid:
                return message
        return None

    return wait_until(hello, 30, what=f"worker {wid} to say hello")


def test_forked_workers_report_how_they_ended_and_a_dead_template_is_replaced(tmp_path: Path) -> None:
    # Given a spawner whose template is warm
    stats: collections.Counter[str] = collections.Counter()
    spawner = Spawner(log_file=None, token="0123456789abcdef", stats=stats)
    spawner.start()
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.linger = 0
    router.bind(f"ipc://{tmp_path}/workers.sock")
    try:
        first = wait_until(lambda: spawner.spawn(worker_argv(tmp_path, 1)), 90, what="the template to fork")
        second = spawner.spawn(worker_argv(tmp_path, 2))
        assert second is not None and first.poll() is None and second.poll() is None
        assert await_hello(router, 2).pid == second.pid  # up and serving: SIGTERM now means a graceful stop

        # When one worker is killed and the other asked to stop, Then each reports its end as Popen would
        first.kill()
        assert first.wait(timeout=10) == -signal.SIGKILL
        second.terminate()
        assert second.wait(timeout=10) == 0  # SIGTERM is a graceful stop for a worker
        with pytest.raises(subprocess.TimeoutExpired):
            spawner.spawn(worker_argv(tmp_path, 3)).wait(timeout=0.2)

        # When the template itself is killed
        old_template = spawner.template
        assert old_template is not None
        orphan = next(child for child in old_template.children.values())
        old_template.proc.kill()

        # Then its remaining worker dies with it, and the next spawns start a new template that forks again
        assert orphan.wait(timeout=10) == -signal.SIGKILL and not pid_alive(orphan.pid)
        again = wait_until(lambda: spawner.spawn(worker_argv(tmp_path, 4)), 90, what="a new template to fork")
        assert spawner.template is not old_template and again.poll() is None
        assert stats["templates_started"] == 2 and stats["workers_forked"] == 4
    finally:
        spawner.close()
        router.close()
        context.term()
    # And closing the spawner ends the template, and its workers with it
    wait_until(lambda: not pid_alive(again.pid), 10, what="the last worker to die with its template")


def test_without_the_template_workers_are_started_as_processes_of_their_own(tmp_path: Path) -> None:
    # Given a spawner that may not use the template
    stats: collections.Counter[str] = collections.Counter()
    spawner = Spawner(log_file=None, token="0123456789abcdef", stats=stats, use_template=False)

    # When it starts a worker, Then it is a child process of this one, started at once
    proc = spawner.spawn(worker_argv(tmp_path, 1))
    assert isinstance(proc, subprocess.Popen) and stats["workers_execd"] == 1
    proc.kill()
    assert proc.wait(timeout=10) == -signal.SIGKILL
