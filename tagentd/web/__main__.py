"""`python -m tagentd.web`: the dashboard's process, started and supervised by the daemon (tagentd/app/web.py).

It binds its address, writes where it listens to `<runtime dir>/web.json` (0600; the login token stays in the
state dir, `web-token`), serves until SIGTERM, and removes the file when it ends. Started by a daemon
(`--parent-pid`), it dies with it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import sys
from pathlib import Path

from tagent_client.errors import TagentError
from tagent_client.wire import paths
from tagentd.plumbing import lifeline

log = logging.getLogger("tagentd.web")

EXIT_BAD_SETUP = 2


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tagentd.web", description="tagentd's dashboard")
    parser.add_argument("--runtime-dir", type=Path, required=True)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--parent-pid", type=int, default=0, help="die with this process (the daemon)")
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    return sock


def url_for(host: str, port: int) -> str:
    """The address a browser on this machine opens: a wildcard bind is reached on loopback."""
    shown = {"0.0.0.0": "127.0.0.1", "::": "[::1]", "": "127.0.0.1"}.get(host, f"[{host}]" if ":" in host else host)
    return f"http://{shown}:{port}/"


def write_web_file(runtime_dir: Path, data: dict[str, object]) -> None:
    """web.json, written whole (a reader never sees half of it), mode 0600."""
    target = runtime_dir / paths.WEB_FILE
    temp = runtime_dir / f".{paths.WEB_FILE}.{os.getpid()}"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f)
    os.replace(temp, target)


def remove_web_file(runtime_dir: Path) -> None:
    """Remove web.json if this process wrote it (a successor's stays)."""
    info = paths.read_web_file(runtime_dir)
    if info is not None and info.get("pid") == os.getpid():
        (runtime_dir / paths.WEB_FILE).unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.parent_pid:
        lifeline.die_with_parent(args.parent_pid, log)
    lifeline.set_name("tagentd-web")
    import uvicorn  # after the lifeline: a daemon that died meanwhile leaves no orphan importing

    from tagentd.web.app import create_app
    from tagentd.web.auth import load_token

    try:
        paths.check_private_dir(args.runtime_dir, "runtime dir")
        paths.check_private_dir(args.state_dir, "state dir")
        token, token_file = load_token(args.state_dir)
    except TagentError as exc:
        log.error("the dashboard cannot start: %s", exc.message)
        return EXIT_BAD_SETUP
    try:
        sock = bind(args.host, args.port)
    except OSError as exc:
        log.error("the dashboard cannot listen on %s:%d: %s; set web_host/web_port (0 = any free port)",
                  args.host, args.port, exc.strerror)
        return EXIT_BAD_SETUP
    port = sock.getsockname()[1]
    url = url_for(args.host, port)
    config = uvicorn.Config(create_app(args.runtime_dir, token, token_file, port), log_level="warning",
                            access_log=False, lifespan="on", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    write_web_file(args.runtime_dir, {"url": url, "port": port, "host": args.host, "token_file": str(token_file),
                                      "pid": os.getpid()})
    log.info("dashboard at %s (pid %d); 'tagent ui' prints it with its login token", url, os.getpid())
    try:
        asyncio.run(server.serve(sockets=[sock]))
    finally:
        remove_web_file(args.runtime_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
