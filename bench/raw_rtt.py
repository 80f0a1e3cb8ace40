"""The raw round trips under every request: an echo in another process over ZeroMQ (DEALER -> ROUTER over `ipc://`)
and over a plain Unix stream socket. Each returns its p50 and p99 in µs; they are the machine's floors the daemon's
numbers are compared with (bench/README.md, `raw_zmq_rtt_us_*`, `raw_unix_rtt_us_*`).

The echo servers are stopped by bench/harness.py's CLEANUP, also when a measurement fails.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from harness import CLEANUP, percentile, say

ZMQ_ROUND_TRIPS = 5_000


ECHO_SERVER = """
import sys, zmq
ctx = zmq.Context()
sock = ctx.socket(zmq.ROUTER)
sock.linger = 0
sock.bind(sys.argv[1])
print("ready", flush=True)
while True:
    frames = sock.recv_multipart()
    sock.send_multipart(frames)
    if frames[-1] == b"stop":
        break
"""


def start_echo_server(script: str, address: str) -> subprocess.Popen[str]:
    """Run `script` in another process, serving `address`; return once it says it is ready (stopped by CLEANUP)."""
    proc = subprocess.Popen([sys.executable, "-c", script, address], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    CLEANUP.procs.append(proc)
    assert proc.stdout is not None
    proc.stdout.readline()
    return proc


def timed_round_trips(trip: Callable[[], None], round_trips: int) -> list[float]:
    """µs of each of `round_trips` calls of `trip`, after 500 unmeasured ones (warm caches, a settled scheduler)."""
    for _ in range(500):
        trip()
    samples = []
    for _ in range(round_trips):
        t0 = time.perf_counter_ns()
        trip()
        samples.append((time.perf_counter_ns() - t0) / 1000)
    return samples


def measure_raw_zmq(round_trips: int) -> dict[str, Any]:
    """DEALER -> ROUTER echo (another process) -> DEALER over ipc: the floor under every request."""
    import zmq

    endpoint = f"ipc://{CLEANUP.tempdir('tagentd-bench-zmq-')}/echo.sock"
    proc = start_echo_server(ECHO_SERVER, endpoint)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(endpoint)
    payload = b"x" * 64

    def trip() -> None:
        sock.send(payload)
        sock.recv()

    try:
        samples = timed_round_trips(trip, round_trips)
        sock.send(b"stop")
        sock.poll(2000)
    finally:
        sock.close(linger=0)
        ctx.term()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
    out = {"raw_zmq_rtt_us_p50": round(percentile(samples, 50), 1), "raw_zmq_rtt_us_p99": round(percentile(samples, 99), 1)}
    say(f"raw zmq: {out}")
    return out


UNIX_ECHO_SERVER = """
import socket, struct, sys
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(sys.argv[1])
server.listen(1)
print("ready", flush=True)
conn, _ = server.accept()
def read(n):
    data = b""
    while len(data) < n:
        data += conn.recv(n - len(data))
    return data
while True:
    (size,) = struct.unpack(">I", read(4))
    payload = read(size)
    conn.sendall(struct.pack(">I", size) + payload)
    if payload == b"stop":
        break
"""


def measure_raw_unix(round_trips: int) -> dict[str, Any]:
    """The same echo over a plain Unix stream socket, length-prefixed frames (what workers.sock carries since
    issue 17's fourth round, tagentd/plumbing/framed.py), blocking calls on both sides: one process wake-up per
    hop, no I/O thread. The machine's floor under a daemon <-> worker hop."""
    import socket
    import struct

    path = f"{CLEANUP.tempdir('tagentd-bench-unix-')}/echo.sock"
    proc = start_echo_server(UNIX_ECHO_SERVER, path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    frame = struct.pack(">I", 64) + b"x" * 64

    def trip(data: bytes = frame) -> None:
        sock.sendall(data)
        got = 0
        while got < len(data):
            got += len(sock.recv(len(data) - got))

    try:
        samples = timed_round_trips(trip, round_trips)
        trip(struct.pack(">I", 4) + b"stop")
    finally:
        sock.close()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
    out = {"raw_unix_rtt_us_p50": round(percentile(samples, 50), 1),
           "raw_unix_rtt_us_p99": round(percentile(samples, 99), 1)}
    say(f"raw unix: {out}")
    return out
