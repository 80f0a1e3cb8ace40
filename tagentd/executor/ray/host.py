"""`WorkerHost`: the Ray actor that hosts one tagentd worker (tagentd/worker/process.py) on a cluster node.

The actor starts `python -m tagentd.worker` as its child process, with the argv and token the daemon gave it,
and answers for it: `info` (the worker's pid, the node it runs on), `wait` (its exit status, when it ends),
`signal`. The worker is the same program as a local worker, so every step capability works unchanged: it
speaks tagentd.worker.wire to the daemon's workers socket, runs up to K steps at once, heartbeats, and exits
on its own when a timed-out step will not stop (then `wait` answers and the daemon replaces the actor).

Guarantees:
- the worker does not outlive its actor: it is started from a thread that lives as long as the worker, with
  --parent-pid the actor's pid, so the kernel kills it when the actor dies (PR_SET_PDEATHSIG) and it checks
  its parent every tick besides; so killing the actor (`ray.kill`, its node dying) kills the worker;
- the worker learns the Ray node it runs on from $TAGENTD_RAY_NODE_ID (a step may read it);
- what the daemon gives it for the worker (`secrets`: its token, and its CURVE credentials when it joins over
  the daemon's CURVE endpoint) reaches the worker in its environment only, which the worker empties at start.

This module imports Ray only inside the actor: the daemon makes it an actor class (`ray.remote(WorkerHost)`),
and a node runs it with the tagentd installed there.
"""

from __future__ import annotations

import os
import signal as signals
import socket
import subprocess
import sys
import threading

NODE_ENV = "TAGENTD_RAY_NODE_ID"


class WorkerHost:
    """One worker process on a node, as a Ray actor (made with `max_restarts=0`: the daemon replaces it)."""

    def __init__(self, argv: list[str], secrets: dict[str, str]) -> None:
        import ray  # noqa: PLC0415 - this runs in the actor, where Ray is loaded; the daemon imports the module bare

        node_id = ray.get_runtime_context().get_node_id()
        self._started = threading.Event()
        self._ended = threading.Event()
        self._code: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._error: str | None = None
        self._node_id = node_id
        env = {**os.environ, **secrets, NODE_ENV: node_id}
        argv = [sys.executable, "-m", "tagentd.worker", *argv, "--parent-pid", str(os.getpid())]
        keeper = threading.Thread(target=self._keep, args=(argv, env), name="tagentd-worker-keeper", daemon=True)
        keeper.start()
        self._started.wait()
        if self._error is not None:
            raise RuntimeError(f"could not start the tagentd worker on node {node_id}: {self._error}")

    def _keep(self, argv: list[str], env: dict[str, str]) -> None:
        """Start the worker and wait for it, in one thread (its death signal is tied to this thread's life)."""
        try:
            self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, env=env, close_fds=True)
        except OSError as exc:
            self._error = str(exc)
            self._started.set()
            return
        self._started.set()
        self._code = self._proc.wait()
        self._ended.set()

    def info(self) -> dict[str, object]:
        """The worker's pid, and where it runs."""
        assert self._proc is not None
        return {"pid": self._proc.pid, "node_id": self._node_id, "host": socket.gethostname()}

    def wait(self) -> int:
        """Block until the worker ends; its exit status (-N: killed by signal N)."""
        self._ended.wait()
        assert self._code is not None
        return self._code

    def signal(self, number: int) -> None:
        """Send the worker a signal (SIGTERM: stop gracefully), unless it has ended."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signals.Signals(number))
