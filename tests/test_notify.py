"""sd_notify: READY=1 reaches a real AF_UNIX datagram socket (path and abstract namespace)."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tagentd.app.notify import notify

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def receiver() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.settimeout(10)  # a missing datagram fails the test instead of hanging it
    yield sock
    sock.close()


def test_ready_reaches_a_socket_path(tmp_path: Path, receiver: socket.socket, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given systemd's notify socket at a filesystem path
    path = tmp_path / "notify"
    receiver.bind(str(path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    # When the daemon notifies readiness
    sent = notify("READY=1")
    # Then the datagram arrives as sent
    assert sent is True
    assert receiver.recv(4096) == b"READY=1"


def test_abstract_namespace_address(receiver: socket.socket, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a notify socket in the abstract namespace ('@' prefix in NOTIFY_SOCKET)
    name = f"tagentd-test-{uuid.uuid4().hex}"
    receiver.bind("\0" + name)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    # When the daemon notifies it is stopping
    assert notify("STOPPING=1") is True
    # Then it arrives
    assert receiver.recv(4096) == b"STOPPING=1"


def test_without_notify_socket_it_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify("READY=1") is False


@pytest.mark.parametrize("address", ["/nonexistent/dir/notify", "@tagentd-nobody-listens-here", "vsock:2:1234"])
def test_unreachable_socket_never_raises(address: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a NOTIFY_SOCKET nobody listens on (or of a kind we do not speak)
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    # When notifying, Then it reports failure instead of raising
    assert notify("READY=1") is False
