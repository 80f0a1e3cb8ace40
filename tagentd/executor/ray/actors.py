"""A worker's Ray actor, as the pool sees a worker process: `ActorProcess` and `ActorStarter`.

The local executor's pool (tagentd.executor.workers) supervises anything that has a pid, `poll`, `kill`,
`terminate` and `wait` (spawner.WorkerProcess). `ActorStarter` makes, for each worker the pool starts, a
`WorkerHost` actor (host.py) of one resource shape, named `<incarnation>-w<worker id>` in the daemon's Ray
namespace; `ActorProcess` answers for it.

Guarantees:
- `poll` never blocks: it reads the result of the actor's `wait` call, which Ray completes when the worker
  exits (its status) or when the actor dies (-SIGKILL: a killed actor, a dead node, an actor Ray could not
  create); once it has answered, the actor is killed, so its resources go back to the cluster;
- `kill` kills the actor (and so its worker, host.py), whether it is placed yet or not; `terminate` asks the
  worker to stop gracefully; every actor is made with `max_restarts=0`: the daemon, not Ray, replaces it;
- `pid` is the worker's pid once the actor reported it (0 before), checked against the worker's Hello;
- with the daemon's CURVE endpoint (`worker_listen`), each actor's worker is issued CURVE keys of its own and
  joins over that endpoint; its keys are revoked when it ends. Without it, workers join over workers.sock,
  which only a node on the daemon's machine can open.
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import signal
import subprocess
import time
from collections.abc import Callable
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayError

from tagentd.executor.curve import CurveGate
from tagentd.executor.ray.host import WorkerHost
from tagentd.worker import wire
from tagentd.worker.credentials import CURVE_ENV

log = logging.getLogger("tagentd.ray")

#: Actor options each resource key of a step's `resources=` becomes; other keys are custom resources.
BUILTIN_OPTIONS = ("num_cpus", "num_gpus", "memory")
DEFAULT_SHAPE: dict[str, float] = {"num_cpus": 1}


def actor_options(shape: dict[str, float]) -> dict[str, Any]:
    """Ray actor options for workers of one resource shape (num_cpus 1 unless the shape says otherwise)."""
    options: dict[str, Any] = {"num_cpus": shape.get("num_cpus", DEFAULT_SHAPE["num_cpus"])}
    if "num_gpus" in shape:
        options["num_gpus"] = shape["num_gpus"]
    if "memory" in shape:
        options["memory"] = int(shape["memory"])
    custom = {k: float(v) for k, v in shape.items() if k not in BUILTIN_OPTIONS}
    if custom:
        options["resources"] = custom
    return options


class ActorProcess:
    """One worker's actor, with the methods of a worker process (spawner.WorkerProcess)."""

    def __init__(self, handle: Any, name: str, on_end: Callable[[], object] | None = None) -> None:
        self.handle = handle
        self.name = name
        self._on_end = on_end
        self.returncode: int | None = None
        self.node_id: str | None = None
        self._pid = 0
        self._info_ref = handle.info.remote()
        self._info = self._info_ref.future()
        self._exit = handle.wait.remote().future()

    @property
    def pid(self) -> int:
        """The worker's pid once its actor said it (0 until then)."""
        if not self._pid:
            try:
                info = self._info.result(timeout=0) if self._info.done() else ray.get(self._info_ref, timeout=0)
            except (GetTimeoutError, concurrent.futures.TimeoutError, RayError):
                return 0
            self._pid, self.node_id = int(info["pid"]), str(info["node_id"])
        return self._pid

    def poll(self) -> int | None:
        if self.returncode is None and self._exit.done():
            try:
                code = int(self._exit.result())
            except RayError as exc:  # the actor died (killed, its node lost, or it could not be made)
                log.info("actor %s ended: %s", self.name, str(exc).splitlines()[0][:200])
                code = -signal.SIGKILL
            self.returncode = code
            self.kill()  # the worker ended on its own: give the actor's resources back
            if self._on_end is not None:
                self._on_end()
        return self.returncode

    def kill(self) -> None:
        try:
            ray.kill(self.handle, no_restart=True)
        except (RayError, ValueError):
            pass  # already gone

    def terminate(self) -> None:
        self.handle.signal.remote(int(signal.SIGTERM))

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(self.name, timeout or 0.0)
            try:
                self._exit.exception(timeout=0.05)
            except concurrent.futures.TimeoutError:
                continue
        return self.returncode


class ActorStarter:
    """Starts workers of one resource shape as `WorkerHost` actors (spawner.ProcessStarter)."""

    def __init__(self, *, shape: dict[str, float], prefix: str, token: str, gate: CurveGate | None) -> None:
        self.shape = dict(shape)
        self.prefix = prefix  # the daemon's incarnation: actor names stay unique across restarts
        self.token = token
        self.gate = gate  # the daemon's CURVE endpoint: each actor's worker joins over it with keys of its own
        self._actor_class = ray.remote(WorkerHost)
        self._options = {**actor_options(shape), "max_restarts": 0, "max_concurrency": 4,
                         "scheduling_strategy": "SPREAD"}

    def start(self) -> None:
        """Nothing to warm up: each actor imports its worker on its node."""

    def spawn(self, argv: list[str]) -> ActorProcess:
        """A new actor hosting a worker run with `argv` (which holds `--id N`)."""
        name = f"{self.prefix}-w{argv[argv.index('--id') + 1]}"
        secrets = {wire.TOKEN_ENV: self.token}
        on_end = None
        if self.gate is not None:
            credentials = self.gate.issue(name, token=self.token)
            secrets[CURVE_ENV] = credentials.to_env()
            argv = list(argv)
            argv[argv.index("--endpoint") + 1] = credentials.endpoint
            on_end = functools.partial(self.gate.revoke, name)
        handle = self._actor_class.options(name=name, **self._options).remote(argv, secrets)
        return ActorProcess(handle, name, on_end)

    def close(self) -> None:
        """Nothing to close: the pool stopped or killed every actor."""
