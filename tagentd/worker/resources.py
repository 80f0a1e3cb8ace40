"""`ResourceMeter`: what each attempt used of its worker process — wall time, CPU seconds, peak RSS.

Measured in the worker, cheaply (a system call at an attempt's start, one per loop turn however many start in
it, and one at its end, a read of the RSS at most every millisecond, and at each housekeeping tick while attempts
run), and sent with the attempt's result (`wire.TaskDone.resources`). The definitions,
as docs/operations.md states them:

- **seconds**: wall time from the attempt's start (it got a slot in the worker) to its end.
- **CPU seconds**: the CPU time of the threads that ran the attempt's code. A sync step function runs in a
  thread of its own while it is called: that thread's CPU time during the call is measured in the thread
  (`time.thread_time`, through `function.SYNC_CPU`) and is exact. Everything else of an attempt (an async
  function, an agent and its model requests, binding and checking) runs on the worker's event loop, which all
  the attempts running at once share: the loop thread's CPU time is shared out equally among them at every
  sample (an attempt starting or ending, and every housekeeping tick). Attempts that start in the same loop
  turn (a fan-out's dozens, from one frame) share the first one's sample: the CPU the turn's earlier starts
  used is shared out at the next sample, among all of them. With one attempt at a time that is exactly the
  loop's CPU time while it ran (the worker's own messaging included). CPU used by other threads (a library's
  own) is not counted.
- **peak RSS**: the largest resident set size of the worker process seen during the attempt. The kernel's
  high-water mark (`getrusage().ru_maxrss`) is read at the start and at the end: when it rose during the
  attempt, that new peak is the attempt's (exact). Otherwise the attempt's peak is the largest RSS sampled
  (`/proc/self/statm`) at its start, its end and each tick in between, so a short spike between two ticks
  that stays below the process's earlier peak can be missed. A sample taken less than `RSS_FRESH` (1 ms)
  before serves as the one at a start or an end: a fan-out starts and ends its attempts by the hundred in one
  loop turn, and one read of /proc then serves them all instead of two per attempt. RSS belongs to the
  process: attempts running at the same time see the same figure.
"""

from __future__ import annotations

import asyncio
import os
import resource
import sys
import time
from dataclasses import dataclass

_PAGE = os.sysconf("SC_PAGE_SIZE")
_MAXRSS_UNIT = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
#: How old (seconds, monotonic) an RSS sample may be to count as an attempt's sample at its start or end.
RSS_FRESH = 0.001


def max_rss() -> int:
    """The process's peak resident set size so far, in bytes (the kernel's high-water mark)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * _MAXRSS_UNIT


if hasattr(resource, "RUSAGE_THREAD"):
    def thread_cpu_and_high_water() -> tuple[float, int]:
        """The calling thread's CPU seconds and the process's peak RSS in bytes: on Linux one getrusage of the
        thread gives both (its ru_maxrss is the process's high-water mark), where the thread's CPU clock and the
        process's rusage (which sums every thread) would take two system calls and twice the time."""
        used = resource.getrusage(resource.RUSAGE_THREAD)
        return used.ru_utime + used.ru_stime, used.ru_maxrss * _MAXRSS_UNIT
else:
    def thread_cpu_and_high_water() -> tuple[float, int]:
        """The calling thread's CPU seconds and the process's peak RSS in bytes."""
        return time.thread_time(), max_rss()


class ResidentSize:
    """The process's resident set size now, in bytes: one pread of /proc/<pid>/statm, kept open (the high-water
    mark where /proc is missing). Make it in the process it measures (after a fork)."""

    def __init__(self) -> None:
        try:
            self._fd: int | None = os.open(f"/proc/{os.getpid()}/statm", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self._fd = None

    def __call__(self) -> int:
        if self._fd is None:
            return max_rss()
        return int(os.pread(self._fd, 128, 0).split()[1]) * _PAGE


@dataclass
class _Use:
    started: float
    high_water: int  # the process's ru_maxrss when the attempt started
    peak: int  # the largest RSS sampled so far
    sync_cpu: list[float]  # CPU seconds of its sync calls' threads (function.SYNC_CPU adds to it)
    shares_at: float = 0.0  # the meter's `_per_attempt` when it started: its share is what that grew by since


class ResourceMeter:
    """Per attempt (any hashable key): `begin`, `sample` on each tick, `end` -> (seconds, cpu_seconds, peak_rss).

    Every method runs on the worker's event loop thread (whose CPU time it shares out). Sharing out costs the
    same however many attempts run: the meter keeps the running sum of each sample's share (loop CPU since the
    last sample / attempts running), and an attempt's share is what that sum grew by while it ran.

    With `loop` (the worker's), the attempts that start in one turn of it share one sample: the first start's
    (`begin` of a fan-out's hundred costs one system call, not a hundred). Without, every start samples."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._running: dict[object, _Use] = {}
        self._cpu_at, self._high_water = thread_cpu_and_high_water()
        self._per_attempt = 0.0  # the sum of every share handed out so far
        self._rss = ResidentSize()
        self._rss_sample = (-RSS_FRESH, 0)  # (monotonic time, RSS bytes) of the newest sample
        self._loop = loop
        self._sampled_this_turn = False  # a start sampled in this turn of `loop`: the next starts of it share that

    def begin(self, key: object) -> list[float]:
        """Start metering an attempt; returns the accumulator its sync calls add their thread CPU to (SYNC_CPU)."""
        if self._sampled_this_turn:
            high_water = self._high_water
        else:
            high_water = self._share()
            if self._loop is not None:
                self._sampled_this_turn = True
                self._loop.call_soon(self._turn_ended)  # runs after every callback this turn already holds
        now = time.monotonic()
        use = _Use(started=now, high_water=high_water, peak=self._recent_rss(now), sync_cpu=[0.0],
                   shares_at=self._per_attempt)
        self._running[key] = use
        return use.sync_cpu

    def sample(self) -> None:
        """Charge the CPU used since the last sample and note the RSS, if attempts are running (else nothing)."""
        if not self._running:
            return
        self._share()
        rss = self._recent_rss(time.monotonic(), fresh=0.0)
        for use in self._running.values():
            use.peak = max(use.peak, rss)

    def end(self, key: object) -> tuple[float, float, int] | None:
        """The attempt's (seconds, cpu_seconds, peak_rss_bytes); None if it was never begun."""
        high_water = self._share()
        use = self._running.pop(key, None)
        if use is None:
            return None
        now = time.monotonic()
        peak = high_water if high_water > use.high_water else max(use.peak, self._recent_rss(now))
        return (now - use.started, self._per_attempt - use.shares_at + use.sync_cpu[0], peak)

    def _recent_rss(self, now: float, fresh: float = RSS_FRESH) -> int:
        """The RSS: the newest sample if it is less than `fresh` seconds old, else a new one."""
        taken, rss = self._rss_sample
        if now - taken >= fresh:
            rss = self._rss()
            self._rss_sample = (now, rss)
        return rss

    def _turn_ended(self) -> None:
        self._sampled_this_turn = False

    def _share(self) -> int:
        """Share out the loop's CPU since the last sample among the attempts running; the process's peak RSS."""
        now, high_water = thread_cpu_and_high_water()
        if self._running:
            self._per_attempt += (now - self._cpu_at) / len(self._running)
        self._cpu_at, self._high_water = now, high_water
        return high_water
