"""systemd's sd_notify protocol, without libsystemd.

Under `Type=notify` systemd sets NOTIFY_SOCKET to an AF_UNIX datagram socket; the
daemon sends "READY=1" once its sockets are bound and "STOPPING=1" when it begins to
shut down. A leading '@' in the address means the Linux abstract namespace.
Outside systemd (no NOTIFY_SOCKET) this is a no-op. It never raises: a lost
notification must not take the daemon down (systemd will time the start out instead).
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def notify(state: str) -> bool:
    """Send `state` (e.g. "READY=1", "STOPPING=1", "STATUS=...") to NOTIFY_SOCKET.

    Returns True when the datagram was sent, False when there is no socket to send to
    or sending failed (logged at debug).
    """
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        log.debug("NOTIFY_SOCKET %r is not a unix socket path; not notifying %s", address, state)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except Exception as exc:  # noqa: BLE001 - notification is best effort by contract
        log.debug("could not send %r to NOTIFY_SOCKET %r: %s", state, address, exc)
        return False
    return True
