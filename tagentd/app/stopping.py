"""Stopping the daemon: a graceful drain that starts nothing new and says what it waits for, or a fast stop.

Guarantees:
- from the moment a stop is requested nothing new starts: every run's machine
  holds (ready steps stay queued and due retries stay waiting, in memory and in
  the checkpoint, so after the next start they run as if the stop had not
  happened), the executor sends no queued work to workers, and no run is created
  (submissions, resumes and triggers are refused);
- a graceful stop then waits for the steps in flight, at most `timeout` seconds
  (`tagentd stop --timeout`, default STOP_WAIT_GRACEFUL). Steps still running
  when it ends are checkpointed: the state on disk says they were running, so the
  next start runs them again (at-least-once). A fast stop (`tagentd stop --fast`,
  Ctrl-C of `tagentd stop`, a second SIGTERM/SIGINT) ends the wait at once, the
  same way; a third signal exits without the final commit (what a reply reported
  is on disk already);
- while it waits it says what for: a log line every LOG_EVERY seconds, and
  `info()` (in `tagentd status --json`, polled by `tagentd stop`), naming each step
  in flight and how long it has been running.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from typing import TYPE_CHECKING, Any

from tagentd.app.stop_report import STOP_WAIT_GRACEFUL, waiting_line

if TYPE_CHECKING:
    from tagentd.executor.interface import Executor
    from tagentd.runs.driver import RunDriver
    from tagentd.runs.store import RunStore

log = logging.getLogger("tagentd")

LOG_EVERY = 2.0
POLL = 0.05


class Stopper:
    """The daemon's stop: what was asked (graceful or not, by when), the drain, and the signals."""

    def __init__(self, driver: RunDriver, executor: Executor, store: RunStore) -> None:
        self.driver = driver
        self.executor = executor
        self.store = store
        self.requested = asyncio.Event()
        self.graceful = True
        self.timeout = STOP_WAIT_GRACEFUL
        self.deadline = 0.0  # time.monotonic() when a graceful drain gives up
        self.signals = 0
        self._cut = asyncio.Event()  # a fast stop: end the drain now

    def request(self, *, graceful: bool, who: str, timeout: float | None = None) -> dict[str, Any]:
        """Stop dispatching at once and start stopping (a fast stop also cuts a drain under way)."""
        if self.requested.is_set():
            if not graceful and not self._cut.is_set():
                log.info("fast stop requested by %s while draining: checkpointing the steps in flight", who)
                self.graceful = False
                self._cut.set()
            return {"stopping": True, **(self.info() or {})}
        self.graceful = graceful
        self.timeout = STOP_WAIT_GRACEFUL if timeout is None else max(0.0, timeout)
        self.deadline = time.monotonic() + (self.timeout if graceful else 0.0)
        if not graceful:
            self._cut.set()
        self._hold()
        self.requested.set()
        waiting = self.waiting()
        log.info("stop requested by %s (%s)%s", who, f"graceful, up to {self.timeout:g} s" if graceful else "fast",
                 f"; waiting for {waiting_line(waiting)}" if graceful and waiting else "")
        return {"stopping": True, **(self.info() or {})}

    def _hold(self) -> None:
        self.driver.accepting = False
        self.executor.hold()  # what the executor has queued stays queued: it is checkpointed as it is
        for run in self.driver.runs.active():
            run.machine.hold()

    def on_signal(self, sig: int) -> None:
        name = signal.Signals(sig).name
        self.signals += 1
        if self.signals == 1:
            log.info("%s: stopping gracefully (send it again to checkpoint the steps in flight and stop now)", name)
            self.request(graceful=True, who="signal")
        elif self.signals == 2:
            log.warning("second %s: stopping fast (a third one exits at once)", name)
            self.request(graceful=False, who="signal")
        else:
            log.warning("third %s: exiting at once", name)
            exit_now(self.executor, self.store)

    # -- the drain ----------------------------------------------------------------------------------

    def waiting(self) -> list[dict[str, Any]]:
        """The steps in flight on workers: run, pipeline, step, task, attempt, seconds running; longest first."""
        found = [{"run_id": job.run_id, "pipeline": job.pipeline, "step": job.step, "task": job.task,
                  "attempt": job.attempt, "elapsed_s": round(job.elapsed_s, 1)} for job in self.executor.running()]
        return sorted(found, key=lambda w: -w["elapsed_s"])

    def info(self) -> dict[str, Any] | None:
        """What a stop under way waits for (None when no stop was requested)."""
        if not self.requested.is_set():
            return None
        remaining = max(0.0, self.deadline - time.monotonic()) if not self._cut.is_set() else 0.0
        return {"graceful": self.graceful and not self._cut.is_set(), "timeout_s": self.timeout,
                "remaining_s": round(remaining, 1), "waiting": self.waiting()}

    async def drain(self) -> None:
        """Wait until no step is in flight, the deadline passes, or a fast stop cuts it; log what it waits for."""
        executor = self.executor
        began = time.monotonic()
        next_log = began + LOG_EVERY  # `request` said what it waits for
        while executor.capacity().in_flight and not self._cut.is_set():
            now = time.monotonic()
            if now >= self.deadline:
                log.warning("stop: %.1f s passed; checkpointing %s (they run again after the next start)",
                            now - began, waiting_line(self.waiting()))
                return
            if now >= next_log:
                log.info("stop: waiting for %s; %.1f s left", waiting_line(self.waiting()), self.deadline - now)
                next_log = now + LOG_EVERY
            try:
                await asyncio.wait_for(self._cut.wait(), POLL)
            except TimeoutError:
                pass
        if executor.capacity().in_flight:
            log.info("stop: checkpointing %s (they run again after the next start)", waiting_line(self.waiting()))


def exit_now(executor: Executor, store: RunStore) -> None:
    """Kill the workers and exit without a last commit (a third signal)."""
    executor.kill_now()
    store.close()
    os._exit(0)
