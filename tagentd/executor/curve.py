"""`CurveGate`: the daemon's worker endpoint for other machines — a ROUTER on tcp with ZeroMQ CURVE — and its keys.

Workers on this machine use workers.sock (ipc, 0600). A worker elsewhere (a Ray actor) joins through this gate
with `WorkerCredentials` that the gate issued; after the handshake it speaks the same tagentd.worker.wire
stream, so tasks, results, heartbeats, logs, memory, broker calls, permits, breakers and dependency waits work
unchanged. tagentd.plumbing.worker_sockets routes each reply to the socket its worker spoke on.

Guarantees:
- Nothing crosses the network in the clear: the socket is a CURVE server (Curve25519 keys, every frame
  encrypted and authenticated). Its keypair is made at each start and kept in memory only, so credentials
  end with the daemon's start: after a restart, workers of the old start cannot connect (no key on disk to steal).
- Only issued keys connect: a ZAP handler (pyzmq's AsyncioAuthenticator on the daemon's loop) admits a
  handshake only if the client's public key was issued and not revoked, and names the connection after its
  credential (ZeroMQ's "User-Id" of each message). A handshake without CURVE, or with another key, never
  reaches the daemon's handlers; the daemon logs one line per refused key or, for peers without CURVE, once a minute.
- `revoke(name)` refuses new handshakes with that key at once, and from then on every message of a connection
  made with it is dropped (`admits`).
- On top, a worker must still say this daemon's token in its identity and Hello (admission.py), as on ipc.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any
from urllib.parse import urlsplit

import zmq
from zmq.auth.asyncio import AsyncioAuthenticator
from zmq.utils import monitor, z85

from tagent_client.errors import ConfigError
from tagentd.plumbing.channel import Channel
from tagentd.worker.credentials import WorkerCredentials

log = logging.getLogger("tagentd.curve")

ZAP_DOMAIN = "tagentd-workers"
WILDCARD_HOSTS = ("0.0.0.0", "*", "::", "[::]")  # noqa: S104 - a bound address, not an address to connect to
HANDSHAKE_FAILURES = zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
#: libzmq's handshake errors (zmq.h ZMQ_PROTOCOL_ERROR_ZMTP_*) as a reason in the log
HANDSHAKE_ERRORS = {0x11000001: "a CURVE hello this start cannot decrypt (keys of another daemon, or of an earlier "
                                "start)",
                    0x11000002: "no CURVE (a plain ZeroMQ peer)"}
FAILURE_LOG_EVERY = 60.0  # seconds between two log lines about peers that failed the handshake without a key


class _Authenticator(AsyncioAuthenticator):
    """pyzmq's ZAP handler, naming each admitted connection after its credential and remembering the peer address."""

    def __init__(self, context: zmq.Context, gate: CurveGate) -> None:
        super().__init__(context, log=logging.getLogger("tagentd.curve.zap"))
        self.gate = gate
        self.address = "?"

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        if len(msg) > 3:
            self.address = msg[3].decode(errors="replace")
        await super().handle_zap_message(msg)

    def curve_user_id(self, client_public_key: bytes) -> str:
        return self.gate.name_of(z85.encode(client_public_key).decode()) or ""


class CurveGate:
    """The CURVE ROUTER bound to `listen`, the server keys of this start, and the client keys it issued."""

    def __init__(self, zctx: zmq.Context, listen: str, stats: dict[str, int], advertise: str | None = None) -> None:
        """Bind `listen` as a CURVE server and start the ZAP handler (on the running loop).

        Raises ConfigError (one line) when the endpoint cannot be bound (in use, no such address).
        """
        self.stats = stats
        self.advertise = advertise  # what workers are told to connect to, when not the bound address
        public, secret = zmq.curve_keypair()
        self.server_key = public.decode()
        self._issued: dict[str, str] = {}  # client public key (Z85) -> credential name
        self._keys: dict[str, str] = {}  # credential name -> its public key (one per name)
        self._refused_keys: set[str] = set()  # logged once each
        self._last_failure_log = 0.0
        self.sock = zctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.sock.sndhwm = 0
        self.sock.rcvhwm = 0
        self.sock.linger = 0
        self.sock.curve_server = True
        self.sock.curve_secretkey = secret
        self.sock.zap_domain = ZAP_DOMAIN.encode()
        self.auth = _Authenticator(zctx, self)
        self.auth.configure_curve_callback(ZAP_DOMAIN, self)
        self.auth.start()
        self._monitor = self.sock.get_monitor_socket(HANDSHAKE_FAILURES)
        self.monitor = Channel(self._monitor, name="worker endpoint monitor")
        try:
            self.sock.bind(listen)
        except zmq.ZMQError as exc:
            self.close()
            self.sock.close(linger=0)
            raise ConfigError(f"worker_listen {listen}: cannot bind it: {os.strerror(exc.errno)}; choose another address or "
                              "port (port 0: any free one), or unset worker_listen") from None
        self.bound = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        #: the channel the daemon's WorkerSockets reads: each message carries its connection's credential name
        self.channel = Channel(self.sock, peers=True, peer_property="User-Id", name="workers (tcp)")
        log.info("worker endpoint %s: ZeroMQ CURVE, server key %s", self.bound, self.server_key)

    def start(self) -> None:
        """Log handshakes that fail before ZAP (peers without CURVE); call on the running loop."""
        self.monitor.start(self._on_monitor)

    # -- keys ------------------------------------------------------------------------------------

    def issue(self, name: str, *, token: str, host: str | None = None) -> WorkerCredentials:
        """New client keys named `name` (issuing a name again revokes its older keys), for a worker on `host`.

        `token` is the worker token of the executor the worker will belong to. The endpoint in the credentials is
        `advertise` if the daemon has one (the address the endpoint is reached by: NAT, port forward, proxy), else the
        bound one, its address replaced by `host` if given, or by this machine's name if it is a wildcard
        (tcp://0.0.0.0:PORT).
        """
        self.revoke(name)
        public, secret = zmq.curve_keypair()
        self._issued[public.decode()] = name
        self._keys[name] = public.decode()
        return WorkerCredentials(name=name, endpoint=self.endpoint_for(host), server_key=self.server_key,
                                 public_key=public.decode(), secret_key=secret.decode(), token=token)

    def revoke(self, name: str) -> bool:
        """Refuse `name`'s keys from now on (new handshakes, and messages of its open connections); False if unknown."""
        key = self._keys.pop(name, None)
        if key is None:
            return False
        del self._issued[key]
        return True

    def name_of(self, public_key: str) -> str | None:
        """The credential name of an issued, unrevoked public key (Z85); None for any other key."""
        return self._issued.get(public_key)

    def admits(self, user_id: str | None) -> bool:
        """Whether a message whose connection was admitted as `user_id` may still be used (not revoked since)."""
        return user_id is not None and user_id in self._keys

    def endpoint_for(self, host: str | None) -> str:
        """The endpoint a worker on `host` connects to (see `issue`)."""
        if self.advertise is not None:
            return self.advertise
        parts = urlsplit(self.bound)
        bound_host = parts.hostname or ""
        if bound_host in {h.strip("[]") for h in WILDCARD_HOSTS} or host is not None:
            name = host or socket.getfqdn()
            return f"tcp://{f'[{name}]' if ':' in name else name}:{parts.port}"
        return self.bound

    # -- the ZAP handler's credentials provider (pyzmq calls `callback`) --------------------------------------

    def callback(self, domain: str, key: bytes) -> bool:
        """Admit a CURVE handshake only with an issued key; log one line the first time another key is refused."""
        z85_key = key.decode(errors="replace")
        if z85_key in self._issued:
            return True
        self.stats["worker_connections_refused"] = self.stats.get("worker_connections_refused", 0) + 1
        if z85_key not in self._refused_keys and len(self._refused_keys) < 1024:
            self._refused_keys.add(z85_key)
            log.warning("refused a worker connection from %s on %s: its CURVE key %s was not issued by this daemon "
                        "(or was revoked)", self.auth.address, self.bound, z85_key)
        return False

    def _on_monitor(self, batch: list[Any]) -> None:
        for frames in batch:
            event = monitor.parse_monitor_message(frames)
            self.stats["worker_handshakes_failed"] = self.stats.get("worker_handshakes_failed", 0) + 1
            now = time.monotonic()
            if now - self._last_failure_log >= FAILURE_LOG_EVERY:
                self._last_failure_log = now
                why = (HANDSHAKE_ERRORS.get(event["value"], f"protocol error {event['value']:#x}")
                       if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                       else f"the peer left during it ({os.strerror(event['value'])}; a plain ZeroMQ peer?)")
                log.warning("refused a connection on %s: its handshake failed: %s; %d so far (logged at most once "
                            "a minute)", self.bound, why, self.stats["worker_handshakes_failed"])

    def close(self) -> None:
        """Stop the ZAP handler and the monitor; the ROUTER itself is closed with the daemon's worker sockets."""
        self.auth.stop()
        self.sock.disable_monitor()
        self.monitor.close()
