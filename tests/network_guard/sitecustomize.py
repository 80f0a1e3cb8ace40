"""A network guard for tests that must stay offline: any connection or name lookup for a host other than the
loopback is refused (OSError) and reported, on stderr and in `refused`.

- In another process: put this directory first on PYTHONPATH; Python imports this file at start-up as
  `sitecustomize`, which arms the guard for the whole life of the process (a tagentd daemon and its workers:
  their stderr is the daemon's log, where a report shows up as a line starting "network guard:").
- In the test process: load this file under another name and call `install()` once (an audit hook cannot be
  removed), then set `armed` around the code under test.

It sees what Python's `socket` module does (the audit events socket.getaddrinfo, socket.gethostbyname and
socket.connect): httpx, urllib, requests and LiteLLM all go through it.
"""

from __future__ import annotations

import os
import sys
from typing import Any

LOOPBACK = ("127.", "::1", "localhost")

armed = False
refused: list[str] = []
_installed = False


def install() -> None:
    """Add the audit hook to this process (once); it acts only while `armed`."""
    global _installed
    if not _installed:
        sys.addaudithook(_audit)
        _installed = True


def _host(event: str, args: tuple[Any, ...]) -> str | None:
    if event in ("socket.getaddrinfo", "socket.gethostbyname"):
        host = args[0] if args else None
    elif event == "socket.connect":
        address = args[1] if len(args) > 1 else None
        host = address[0] if isinstance(address, tuple) and address else None  # AF_UNIX paths are not hosts
    else:
        return None
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    return host if isinstance(host, str) and host and not host.startswith(LOOPBACK) else None


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if not armed:
        return
    host = _host(event, args)
    if host is None:
        return
    what = f"network guard: refused {event} for {host!r} in pid {os.getpid()} (only 127.0.0.1 is allowed)"
    refused.append(what)
    sys.stderr.write(what + "\n")
    raise OSError(what)


if __name__ == "sitecustomize":
    install()
    armed = True
