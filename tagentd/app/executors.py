"""Which executor the daemon runs steps with: `executor = "local"` (worker processes here) or `"ray"`.

Ray is imported only when the Ray executor is chosen: a local daemon's start time and memory do not pay for it.
"""

from __future__ import annotations

from collections.abc import Callable

from tagent_client.errors import ConfigError
from tagentd.executor.breakers import BreakerDesk
from tagentd.executor.curve import CurveGate
from tagentd.executor.interface import Executor, Report
from tagentd.executor.local import LocalExecutor
from tagentd.executor.permits import PermitDesk
from tagentd.metrics.instruments import Metrics
from tagentd.settings.config import Settings


def make_executor(settings: Settings, *, endpoint: str, send: Callable[[bytes, bytes], bool], report: Report,
                  permits: PermitDesk, breakers: BreakerDesk, log_fd: int | None, curve: CurveGate | None,
                  metrics: Metrics | None = None) -> Executor:
    """The executor the settings ask for, not started yet (ConfigError: Ray is asked for but not installed).

    `curve` is the daemon's CURVE worker endpoint (`worker_listen`), if it has one: the local pool's workers join
    over it with `local_workers_via_curve`, and the Ray executor's always (each actor with keys of its own).
    """
    common = {"size": settings.workers, "capacity": settings.worker_concurrency, "endpoint": endpoint, "send": send,
                  "on_result": report, "on_lost": report, "permits": permits, "heartbeat_interval": settings.heartbeat_interval,
                  "heartbeat_timeout": settings.heartbeat_timeout, "grace": settings.timeout_grace,
                  "recycle_after": settings.recycle_after, "load_timeout": settings.load_timeout,
                  "worker_args": [*settings.worker_llm_args(), *settings.worker_trace_args()], "breakers": breakers,
                  "metrics": metrics}
    if settings.executor == "local":
        return LocalExecutor(log_file=log_fd, use_template=settings.worker_template,  # type: ignore[arg-type]
                             curve=curve if settings.local_workers_via_curve else None, **common)
    try:
        from tagentd.executor.ray.executor import RayExecutor  # noqa: PLC0415 - only a Ray daemon imports Ray
    except ImportError as exc:
        raise ConfigError(f"config: executor: 'ray' needs Ray on this machine ({exc}); install it with "
                          "pip install 'tagentd[ray]', the same Ray version as the cluster's") from None
    return RayExecutor(address=settings.ray_address, runtime_env=settings.ray_runtime_env,  # type: ignore[arg-type]
                       state_dir=settings.state_dir, curve=curve, **common)
