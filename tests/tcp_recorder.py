"""`TcpRecorder`: a TCP proxy for tests that forwards every connection to a target and records the bytes.

It runs one thread with a selector; `close()` stops it and closes every socket. What crossed it, both ways
and across all connections, is `captured()`.
"""

from __future__ import annotations

import selectors
import socket
import threading


class TcpRecorder:
    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self._bytes = bytearray()
        self._lock = threading.Lock()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.listener, selectors.EVENT_READ)
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._pairs: dict[socket.socket, socket.socket] = {}
        self._stop = False
        self._thread = threading.Thread(target=self._serve, name="tcp-recorder", daemon=True)
        self._thread.start()

    def captured(self) -> bytes:
        with self._lock:
            return bytes(self._bytes)

    def _serve(self) -> None:
        while not self._stop:
            for key, _ in self._selector.select(timeout=1.0):
                sock = key.fileobj
                if sock is self._wake_r:
                    return
                if sock is self.listener:
                    self._accept()
                else:
                    self._forward(sock)

    def _accept(self) -> None:
        client, _ = self.listener.accept()
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:  # the target is not listening yet: the peer reconnects later
            client.close()
            return
        self.connections += 1
        for sock in (client, upstream):
            sock.setblocking(False)
            self._selector.register(sock, selectors.EVENT_READ)
        self._pairs[client], self._pairs[upstream] = upstream, client

    def _forward(self, sock: socket.socket) -> None:
        other = self._pairs.get(sock)
        try:
            data = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data or other is None:
            self._drop(sock)
            return
        with self._lock:
            self._bytes += data
        try:
            other.setblocking(True)
            other.sendall(data)
            other.setblocking(False)
        except OSError:
            self._drop(sock)

    def _drop(self, sock: socket.socket) -> None:
        for one in (sock, self._pairs.pop(sock, None)):
            if one is not None:
                self._pairs.pop(one, None)
                try:
                    self._selector.unregister(one)
                except (KeyError, ValueError):
                    pass
                one.close()

    def close(self) -> None:
        self._stop = True
        self._wake_w.send(b"x")
        self._thread.join(timeout=5)
        for sock in list(self._pairs):
            sock.close()
        self._pairs.clear()
        for sock in (self.listener, self._wake_r, self._wake_w):
            sock.close()
        self._selector.close()
