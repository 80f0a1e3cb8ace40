"""Who sent a control request: what the OS says, and what the client says about itself.

On an ipc socket ZeroMQ reads the connecting process's credentials with
SO_PEERCRED (Linux) and hands them out as each message's "Peer-Address"
property, `<address>:<uid>:<gid>:<pid>`. The daemon attaches them to the
decoded request as `req.peer`; the request's own `uid`/`pid` fields are only
what the client reports. The audit trail records the OS's word, and marks
the client's as "reported" wherever it is all there is or says otherwise.
"""

from __future__ import annotations

import sys
from typing import Any, NamedTuple

import zmq

PEER_PROPERTY = "Peer-Address"
_READABLE = sys.platform.startswith("linux")  # BSDs put uid and groups there, without a pid


class Peer(NamedTuple):
    """A connected process as the kernel saw it when it connected."""

    uid: int
    gid: int
    pid: int


class Received(list[bytes]):
    """One received message's frames, with its sender's property (`receive`; None where there is none)."""

    peer: str | None = None


def receive(sock: zmq.Socket, peer_property: str = PEER_PROPERTY) -> Received:
    """The next message on `sock` (without blocking: zmq.Again if there is none), with its sender's `peer_property`."""
    frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
    message = Received(frame.bytes for frame in frames)
    try:
        message.peer = frames[-1].get(peer_property)
    except zmq.ZMQError:  # no such property on this transport
        pass
    return message


def parse(address: str | None) -> Peer | None:
    """The credentials in a "Peer-Address" property, or None where the transport gives none."""
    if not _READABLE or not address:
        return None
    parts = address.rsplit(":", 3)
    if len(parts) != 4:
        return None
    try:
        return Peer(uid=int(parts[1]), gid=int(parts[2]), pid=int(parts[3]))
    except ValueError:
        return None


def who(request: Any, step: Any = None) -> str:
    """The audit trail's name for a request's sender: in a run's history, a space's access log, a message's sender.

    A step's broker request (`step`, a StepRef): `pipeline/run/task#attempt`. A client's request:
    `uid=U pid=P` from the OS, followed by `(reported uid=.. pid=..)` if the request claims otherwise;
    `uid=U pid=P (reported)` when the OS could not say (then both are only the client's word).
    The one format docs/protocol.md ("Who sent it") describes.
    """
    if step is not None:
        return str(step)
    peer = getattr(request, "peer", None)
    if peer is None:
        return f"uid={request.uid} pid={request.pid} (reported)"
    name = f"uid={peer.uid} pid={peer.pid}"
    if (request.uid, request.pid) != (peer.uid, peer.pid):
        name += f" (reported uid={request.uid} pid={request.pid})"
    return name
