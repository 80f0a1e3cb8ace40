"""A worker inside another process (a Ray actor on another machine), joined to the daemon over the CURVE link.

    args = curve_args(credentials, ["--id", "7", "--capacity", "4", "--heartbeat", "0.5", "--grace", "2"])
    status = await run_in_process(args)   # on the actor's asyncio loop; returns when the worker ends

`credentials` are the `WorkerCredentials` the daemon issued for it (tagentd.executor.curve.CurveGate.issue);
the worker is the same as a worker process (tagentd.worker.process) and speaks the same message stream.
"""

from __future__ import annotations

import argparse
import os

from tagentd.worker.args import parse_args
from tagentd.worker.credentials import WorkerCredentials
from tagentd.worker.process import Worker


def curve_args(credentials: WorkerCredentials, argv: list[str]) -> argparse.Namespace:
    """A worker's arguments: `argv` is its command line without --endpoint (--id, --capacity, ...).

    Without --parent-pid the worker ends when the parent of the calling process does (checked every 0.1 s).
    Raises SystemExit (argparse) on bad arguments.
    """
    args = parse_args([*argv, "--endpoint", credentials.endpoint])
    args.credentials = credentials
    args.token = credentials.token
    args.parent_pid = args.parent_pid or os.getppid()
    return args


async def run_in_process(args: argparse.Namespace) -> int:
    """Run a worker on the running loop until it ends; its exit status (wire.EXIT_*), its socket closed.

    Unlike a worker process it does not end the process it runs in: a sync step still running after its
    timeout keeps its thread until that process ends (the executor should end it then, e.g. kill the actor).
    SIGTERM is handled only when this runs on the main thread.
    """
    worker = Worker(args)
    try:
        return await worker.serve()
    finally:
        worker.loader.shutdown(wait=False)
        worker.link.close(linger_ms=100)
        worker.zmq.term()
