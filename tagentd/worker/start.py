"""The worker process's entry point: `python -m tagentd.worker ...` (and the worker template's forks) start here.

main() sets up what the whole process needs before any user code runs: its log lines, SIGINT ignored, death
with its parent (lifeline), the collector's pace, and the daemon's token and CURVE credentials taken out of the
environment; serve() runs a `Worker` (process.py) on an event loop whose timers fire on time (plumbing/timely.py)
and leaves with os._exit, so a stuck step thread cannot keep the process alive.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from tagentd.plumbing import collector, lifeline, timely
from tagentd.worker import wire
from tagentd.worker.args import parse_args
from tagentd.worker.credentials import WorkerCredentials
from tagentd.worker.process import Worker, log


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)  # only the worker's own lines; step logs travel as LogLine
    handler.setFormatter(logging.Formatter(f"%(asctime)s tagentd-worker w{args.id} pid {os.getpid()} %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    args.parent_pid = args.parent_pid or os.getppid()
    lifeline.die_with_parent(args.parent_pid, log)
    lifeline.set_name(f"tagentd-w{args.id}")
    collector.tune()
    args.token = os.environ.pop(wire.TOKEN_ENV, "")  # user code and its subprocesses need not see it
    try:
        args.credentials = WorkerCredentials.pop_env()  # CURVE keys: as secret as the token
    except ValueError as exc:
        log.error("%s; exiting", exc)
        sys.exit(2)
    if args.credentials is not None:
        args.token = args.credentials.token
    timely.run(serve(args))  # steps' timers (asyncio.sleep) end on time, not up to 1-2 ms late


async def serve(args: argparse.Namespace) -> None:
    """Run a Worker, then leave with os._exit: a stuck step thread must not keep the process alive."""
    asyncio.get_running_loop().set_exception_handler(
        lambda _loop, context: log.error("uncaught error: %s", context.get("message"), exc_info=context.get("exception")))
    code = 1
    worker: Worker | None = None
    try:
        worker = Worker(args)
        code = await worker.serve()
    except Exception:  # noqa: BLE001 - say why, then exit 1
        log.exception("worker crashed")
    finally:
        if worker is not None and worker.traces is not None:
            worker.traces.stop()  # the last spans leave (at most a few seconds) before os._exit
        if worker is not None:
            worker.link.close(linger_ms=100)
            worker.zmq.term()  # waits up to the linger for queued messages
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

