"""The worker process's command line (`python -m tagentd.worker --help`)."""

from __future__ import annotations

import argparse

from tagent_client.run.llm import LLMConfig

LOAD_TIMEOUT = 30.0   # importing a pipeline file longer than this ends the worker (the import cannot be stopped)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tagentd.worker", description="A tagentd worker process.")
    parser.add_argument("--endpoint", required=True,
                        help="the daemon's workers socket, e.g. unix:///run/tagentd/workers.sock (with $TAGENTD_WORKER_CURVE: "
                             "its CURVE endpoint, tcp://HOST:PORT; ipc://PATH: a ZeroMQ ROUTER there)")
    parser.add_argument("--id", type=int, required=True, help="worker number; the socket identity is w<id>.<token>")
    parser.add_argument("--capacity", type=int, default=4, help="tasks run at once (default 4)")
    parser.add_argument("--heartbeat", type=float, default=1.0, help="seconds between heartbeats (default 1)")
    parser.add_argument("--grace", type=float, default=5.0, help="seconds a timed-out sync step may keep running (default 5)")
    parser.add_argument("--load-timeout", type=float, default=LOAD_TIMEOUT, help="seconds an import may take (default 30)")
    parser.add_argument("--parent-pid", type=int, default=0,
                        help="the pid this worker dies with (the daemon always passes its own; default: the parent)")
    parser.add_argument("--llm", default=None, help="endpoints and price overrides as JSON (tagent_client.run.llm.LLMConfig)")
    parser.add_argument("--otlp-endpoint", default=None,
                        help="export step and LLM call spans over OTLP/HTTP to this collector (default: no traces)")
    args = parser.parse_args(argv)
    if args.capacity < 1 or args.heartbeat <= 0 or args.grace < 0 or args.load_timeout <= 0:
        parser.error("--capacity must be >= 1, --heartbeat and --load-timeout > 0, --grace >= 0")
    if args.llm is not None:
        try:
            LLMConfig.from_json(args.llm)
        except ValueError as exc:
            parser.error(f"--llm is not a valid LLM config: {exc}")
    return args

