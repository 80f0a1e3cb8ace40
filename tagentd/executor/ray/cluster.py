"""The daemon's side of a Ray cluster: joining it, reclaiming a previous daemon's actors, and what it has.

Guarantees:
- `join` connects this process as a Ray driver to `address` ('auto', 'ray://head:10001', 'host:port') in the
  daemon's namespace (one per state dir, so two daemons on one cluster never touch each other's actors), or,
  with no address, starts a Ray instance on this machine (never silently joins one it finds);
- `reclaim` kills every actor in that namespace that this daemon's incarnation did not make: the actors of
  a daemon that was killed with kill -9 (Ray normally reaps them with their driver; this also covers any it
  has not reaped yet) — so a restarted daemon leaves no leaked actors;
- `ClusterView.refresh` (blocking: call it in a thread) reads the nodes and their resources; `fits` says
  whether any live node has a resource shape at all, so a step that can never be placed fails at once with
  a clear error instead of waiting forever (Ray keeps an infeasible actor pending without a word).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import RayError

from tagentd.executor.ray.actors import actor_options

log = logging.getLogger("tagentd.ray")


def namespace_for(state_dir: Path) -> str:
    """The daemon's Ray namespace: one per state dir."""
    return "tagentd-" + hashlib.sha256(str(state_dir).encode()).hexdigest()[:12]


def new_incarnation() -> str:
    """A prefix for the actor names of this start of the daemon."""
    return "d" + secrets.token_hex(4)


def join(address: str | None, namespace: str, runtime_env: dict[str, Any]) -> str:
    """Connect to the cluster (or start one here); the address joined, for messages."""
    kwargs: dict[str, Any] = {"namespace": namespace, "log_to_driver": False, "configure_logging": False}
    if runtime_env:
        kwargs["runtime_env"] = runtime_env
    if address:
        context = ray.init(address=address, **kwargs)
    else:
        context = ray.init(address="local", include_dashboard=False, **kwargs)
    return str(getattr(context, "address_info", {}).get("gcs_address") or address or "local")


def reclaim(namespace: str, incarnation: str) -> int:
    """Kill the actors of the daemon's namespace that are not this incarnation's; how many."""
    killed = 0
    for entry in ray.util.list_named_actors(all_namespaces=True):
        if entry.get("namespace") != namespace or entry["name"].startswith(incarnation + "-"):
            continue
        try:
            ray.kill(ray.get_actor(entry["name"], namespace=namespace), no_restart=True)
            killed += 1
        except (RayError, ValueError):
            continue  # it ended meanwhile
    if killed:
        log.warning("killed %d actor(s) left by an earlier run of this daemon", killed)
    return killed


@dataclass
class NodeView:
    node_id: str
    address: str
    alive: bool
    resources: dict[str, float]


@dataclass
class ClusterView:
    """The cluster's nodes and resources as last read, and whether it answered."""

    nodes: list[NodeView] = field(default_factory=list)
    available: dict[str, float] = field(default_factory=dict)
    connected: bool = False
    problem: str | None = None
    read_at: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def refresh(self) -> None:
        """Read the nodes and the free resources now (blocking; GCS calls)."""
        try:
            nodes = [NodeView(node_id=n["NodeID"], address=n.get("NodeManagerAddress", ""), alive=bool(n["Alive"]),
                              resources=dict(n.get("Resources", {}))) for n in ray.nodes()]
            available = dict(ray.available_resources())
        except Exception as exc:  # noqa: BLE001 - any failure to reach the GCS means "not connected now"
            with self._lock:
                self.connected, self.problem = False, f"the cluster does not answer: {str(exc).splitlines()[0][:200]}"
            return
        with self._lock:
            self.nodes, self.available, self.connected, self.problem = nodes, available, True, None
            self.read_at = time.monotonic()

    def fits(self, shape: dict[str, float]) -> bool:
        """Whether some live node has every resource of `shape` (in total; it may be busy now)."""
        options = actor_options(shape)
        needs = {"CPU": options.get("num_cpus", 0), "GPU": options.get("num_gpus", 0),
                 "memory": options.get("memory", 0), **options.get("resources", {})}
        with self._lock:
            nodes = list(self.nodes)
        return any(n.alive and all(n.resources.get(k, 0) >= v for k, v in needs.items() if v) for n in nodes)
