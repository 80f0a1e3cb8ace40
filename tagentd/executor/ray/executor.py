"""`RayExecutor`: the `Executor` (tagentd.executor.interface) that runs steps in workers on a Ray cluster.

Each worker is a `WorkerHost` actor (host.py) hosting the same worker program as a local worker, connected to
the daemon's workers socket; so everything a step can do locally works unchanged. The supervision is the local
executor's: one `LocalExecutor` per *lane* (a resource shape), each with its own workers and queues, all
sharing one admission token, one numbering of workers and the daemon's permit and breaker desks. So the
interface's guarantees hold as locally (at most once, every attempt reported, verdicts by the `DeathLedger`,
the engine decides retries, cancel and forget win, hold, stop), and in particular:

- a worker whose actor dies (killed, its node lost) has its attempts reported lost and is replaced; the
  engine runs them again, on another actor; completed steps are never re-run;
- a step past its timeout plus grace has its actor killed and replaced (it alone pays the timeout);
- the default lane keeps `workers` actors of `num_cpus: 1`, each running up to `worker_concurrency` steps;
  a step with `resources=` runs in the lane of that shape: actors placed by Ray with those resources, one
  step at a time each (the resources are the step's), at most `workers` of them, started when its steps
  wait and stopped after LANE_IDLE seconds without any;
- a shape no live node has (as last read, every OBSERVE_EVERY seconds) fails its step at once (not retried),
  with the resources it asked for, instead of waiting forever; while the cluster does not answer, nothing is sent and no actor is started (what waits
  keeps waiting), and dispatch resumes when it answers again.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray

from tagent_client.core.events import StepFailed
from tagent_client.core.state import ErrorInfo
from tagent_client.define.plan import Plan
from tagent_client.wire.protocol import ClusterInfo, ClusterNode, WorkerInfo
from tagentd.executor.admission import Admission
from tagentd.executor.breakers import BreakerDesk
from tagentd.executor.curve import CurveGate
from tagentd.executor.interface import Capacity, PipelineCode, Report, RunningAttempt, StepAttempt
from tagentd.executor.local import LocalExecutor
from tagentd.executor.permits import PermitDesk
from tagentd.executor.ray.actors import ActorStarter
from tagentd.executor.ray.cluster import ClusterView, join, namespace_for, new_incarnation, reclaim
from tagentd.metrics.instruments import Metrics
from tagentd.worker import wire

log = logging.getLogger("tagentd.ray")

LANE_IDLE = 10.0     # seconds a resource lane may have no steps before its actors are stopped
OBSERVE_EVERY = 2.0  # seconds between two reads of the cluster's nodes and resources
ShapeKey = tuple[tuple[str, float], ...]


def shape_key(shape: dict[str, float] | None) -> ShapeKey:
    return tuple(sorted((shape or {}).items()))


def retire_idle(lane: LocalExecutor, keep: int) -> int:
    """Have `lane` keep `keep` workers: tell its ready workers beyond that which run nothing to stop (gracefully: they
    end without a verdict); how many were told."""
    lane.size = keep
    told = 0
    shared = [w for w in lane.pool.by_id.values() if not w.dedicated and w.state not in ("stopping", "killed")]
    for worker in shared[keep:]:
        if worker.state == "ready" and not worker.running and worker.loading == 0:
            worker.state = "stopping"
            lane.send(worker.identity, wire.encode(wire.StopWorker(graceful=True)))
            told += 1
    return told


class RayExecutor:
    """Workers as Ray actors, in one lane per resource shape; see the module docstring."""

    def __init__(self, *, address: str | None, runtime_env: dict[str, Any], state_dir: Path, size: int,
                 capacity: int, endpoint: str, send: Callable[[bytes, bytes], bool], on_result: Report,
                 on_lost: Report, permits: PermitDesk, heartbeat_interval: float, heartbeat_timeout: float,
                 grace: float, recycle_after: int, load_timeout: float, worker_args: list[str] | None = None,
                 breakers: BreakerDesk | None = None, metrics: Metrics | None = None,
                 curve: CurveGate | None = None) -> None:
        self.address = address
        self.runtime_env = runtime_env
        self.namespace = namespace_for(state_dir)
        self.incarnation = new_incarnation()
        self.size = size
        self.on_result = on_result
        self.permits = permits
        self.counters = collections.Counter[str]()
        self.admission = Admission(send, self.counters)
        self.view = ClusterView()
        self.accepting = True
        self.joined = "?"
        self._ids = itertools.count(1)
        self._busy_at: dict[ShapeKey, float] = {}
        self._lane_args: dict[str, Any] = {
            "endpoint": endpoint, "send": send, "on_result": on_result, "on_lost": on_lost, "permits": permits,
            "heartbeat_interval": heartbeat_interval, "heartbeat_timeout": heartbeat_timeout, "grace": grace,
            "recycle_after": recycle_after, "load_timeout": load_timeout, "worker_args": worker_args, "breakers": breakers,
            "metrics": metrics,
            "admission": self.admission, "worker_ids": self._ids}
        self._capacity = capacity
        self.curve = curve
        self.lanes: dict[ShapeKey, LocalExecutor] = {}

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        """Join the cluster (or start Ray here), kill a previous run's actors, and start the default lane's."""
        handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.joined = join(self.address, self.namespace, self.runtime_env)
        except Exception as exc:  # noqa: BLE001 - any failure to join: say so in the log and in `tagentd status`
            where = self.address or "a new Ray instance on this machine"
            self.view.problem = f"could not join the Ray cluster at {where}: {str(exc).splitlines()[0][:300]}"
            log.error("%s; no step can run until the daemon is restarted with a cluster it can join", self.view.problem)
            return
        finally:  # ray.init installs its own SIGTERM handler (exit at once): the daemon's graceful stop stays
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
        reclaim(self.namespace, self.incarnation)
        self.view.refresh()
        log.info("joined the Ray cluster at %s (namespace %s, %d node(s)); workers are actors %s-w<N>, joining %s",
                 self.joined, self.namespace, len(self.view.nodes), self.incarnation,
                 f"over the CURVE endpoint {self.curve.bound}" if self.curve is not None else
                 "over workers.sock (only nodes on this machine can: set worker_listen for others)")
        self._lane(()).start()

    def _lane(self, key: ShapeKey) -> LocalExecutor:
        lane = self.lanes.get(key)
        if lane is None:
            shape = dict(key)
            spawner = ActorStarter(shape=shape, prefix=self.incarnation, token=self.admission.token, gate=self.curve)
            lane = LocalExecutor(size=self.size if not key else 0, capacity=self._capacity if not key else 1,
                                 spawner=spawner, **self._lane_args)
            lane.accepting = self.accepting
            self.lanes[key] = lane
            if key:
                log.info("resource lane %s opened", shape)
        return lane

    async def supervise(self) -> None:
        await asyncio.gather(self._watch(), self._observe(), self.permits.supervise(self._identities))

    async def _watch(self) -> None:
        while True:
            now = time.monotonic()
            for key, lane in list(self.lanes.items()):
                lane.check(now)
                if key:
                    self._size_lane(key, lane, now)
            await asyncio.sleep(0.1)

    def _size_lane(self, key: ShapeKey, lane: LocalExecutor, now: float) -> None:
        """A resource lane gets an actor per step that waits or runs (up to `size`), none once idle a while."""
        capacity = lane.capacity()
        demand = capacity.queued + capacity.in_flight
        if demand:
            self._busy_at[key] = now
            lane.size = max(lane.size, min(self.size, demand))
        elif lane.size and now - self._busy_at.get(key, now) > LANE_IDLE:
            retire_idle(lane, 0)

    async def _observe(self) -> None:
        """Read the cluster every OBSERVE_EVERY seconds; dispatch only while it answers."""
        while self.joined == "?":  # it could not join (start): there is nothing to read
            await asyncio.sleep(OBSERVE_EVERY)
        while True:
            await asyncio.to_thread(self.view.refresh)
            sending = self.accepting and self.view.connected
            for lane in self.lanes.values():
                if lane.accepting != sending:
                    log.warning("the Ray cluster %s: dispatch %s", "answers again" if sending else
                                f"does not answer ({self.view.problem})", "resumes" if sending else "paused")
                lane.accepting = sending
            await asyncio.sleep(OBSERVE_EVERY)

    def _identities(self) -> set[bytes]:
        return set().union(*(lane.pool.identities() for lane in self.lanes.values()))

    def hold(self) -> None:
        self.accepting = False
        for lane in self.lanes.values():
            lane.hold()

    async def stop(self, wait_for_steps: float) -> None:
        self.hold()
        await asyncio.gather(*(lane.stop(wait_for_steps) for lane in self.lanes.values()))
        await asyncio.to_thread(ray.shutdown)

    def kill_now(self) -> None:
        for lane in self.lanes.values():
            lane.kill_now()

    # -- work -------------------------------------------------------------------------------------

    def dispatch(self, attempt: StepAttempt) -> None:
        key = shape_key(attempt.dispatch.resources)
        if key and self.view.connected and not self.view.fits(dict(key)):
            task = attempt.dispatch
            message = (f"step {task.step!r} asks for resources {dict(key)}, which no node of the Ray cluster at "
                       f"{self.joined} has; add a node with them (ray start --resources ...) or change resources=")
            failed = StepFailed(task=task.task, attempt=task.attempt,
                                error=ErrorInfo(type="ResourcesUnavailable", message=message, retryable=False))
            self.counters["steps_unplaceable"] += 1
            asyncio.get_running_loop().call_soon(self.on_result, attempt.run_id, failed)
            return
        self._lane(key).dispatch(attempt)

    def pump(self) -> int:
        return sum(lane.pump() for lane in list(self.lanes.values()))

    def cancel(self, run_id: str, task: str, attempt: int) -> None:
        for lane in self.lanes.values():
            lane.cancel(run_id, task, attempt)

    def forget_run(self, run_id: str) -> None:
        for lane in self.lanes.values():
            lane.forget_run(run_id)

    async def load(self, code: PipelineCode) -> Plan:
        return await self._lane(()).load(code)

    def on_worker_message(self, identity: bytes, msg: wire.FromWorker) -> bool:
        """A worker's message goes to its lane; a stranger's to the default lane, which refuses it."""
        wid = self.admission.worker_id(identity)
        lane = next((lane for lane in self.lanes.values() if wid is not None and lane.pool.get(wid)), None)
        return (lane or self._lane(())).on_worker_message(identity, msg)

    # -- views ------------------------------------------------------------------------------------

    def capacity(self) -> Capacity:
        parts = [lane.capacity() for lane in self.lanes.values()]
        return Capacity(slots=sum(p.slots for p in parts), free=sum(p.free for p in parts),
                        in_flight=sum(p.in_flight for p in parts), queued=sum(p.queued for p in parts))

    def running(self) -> list[RunningAttempt]:
        return [job for lane in self.lanes.values() for job in lane.running()]

    def workers(self) -> list[WorkerInfo]:
        return sorted((w for lane in self.lanes.values() for w in lane.workers()), key=lambda w: w.id)

    def stats(self) -> dict[str, int]:
        total = collections.Counter(self.counters)
        for lane in self.lanes.values():
            total.update(lane.stats())
        return dict(total)

    def cluster(self) -> ClusterInfo:
        """The nodes with their resources, and this daemon's workers and steps on each."""
        workers: collections.Counter[str] = collections.Counter()
        steps: collections.Counter[str] = collections.Counter()
        for lane in self.lanes.values():
            for worker in lane.pool:
                node = getattr(worker.proc, "node_id", None)
                if node is not None:
                    workers[node] += 1
                    steps[node] += len(worker.running)
        nodes = [ClusterNode(node_id=n.node_id, address=n.address, alive=n.alive, resources=n.resources,
                             workers=workers[n.node_id], steps=steps[n.node_id]) for n in self.view.nodes]
        return ClusterInfo(kind="ray", address=self.joined, namespace=self.namespace, connected=self.view.connected,
                           nodes=nodes, available=self.view.available, problem=self.view.problem)
