"""The watchdog side of the folder watcher: its observer, the hand-off of its events to the loop, their kinds.

A module of its own so that watchdog (and the ctypes, shutil and tempfile modules its inotify observer imports)
loads when the watcher starts, which the daemon does once its control socket answers, not with the daemon.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from watchdog import events as wd
from watchdog.observers.api import BaseObserver

from tagentd.watch.rules import CLOSED, CREATED, GONE, MODIFIED, MOVED_IN, TOUCHED

log = logging.getLogger("tagentd.watcher")

_KINDS: dict[type, str] = {
    wd.FileCreatedEvent: CREATED, wd.FileModifiedEvent: MODIFIED, wd.FileClosedEvent: CLOSED, wd.FileDeletedEvent: GONE,
}
if hasattr(wd, "FileAttribEvent"):  # watchdog >= 5; older ones report chmod as a modification
    _KINDS[wd.FileAttribEvent] = TOUCHED


def classify(event: wd.FileSystemEvent) -> list[tuple[str, str]]:
    """(path, kind) pairs for one watchdog event. Directory events, opens and read-only closes give none."""
    if event.is_directory:
        return []
    src = os.fsdecode(event.src_path)
    if isinstance(event, wd.FileMovedEvent):  # with full events, "" marks the side outside the watched folders
        dest = os.fsdecode(event.dest_path)
        return [pair for pair in ((src, GONE), (dest, MOVED_IN)) if pair[0]]
    kind = _KINDS.get(type(event))
    return [(src, kind)] if kind else []



def folder_gone(event: wd.FileSystemEvent) -> bool:
    """A directory deleted or moved away (maybe a watched folder)."""
    return isinstance(event, (wd.DirDeletedEvent, wd.DirMovedEvent))


class Handoff(wd.FileSystemEventHandler):
    """Runs in watchdog's thread: hands every event to the loop and touches nothing else."""

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Any) -> None:
        self._loop = loop
        self._callback = callback

    def dispatch(self, event: wd.FileSystemEvent) -> None:
        try:
            self._loop.call_soon_threadsafe(self._callback, event)
        except RuntimeError:  # the loop is closed: the daemon is stopping
            pass


def make_observer() -> BaseObserver:
    """inotify, asked to report renames from outside as moves (complete files), not creations; else polling."""
    try:
        from watchdog.observers.inotify import InotifyObserver  # noqa: PLC0415

        try:
            return InotifyObserver(generate_full_events=True)
        except TypeError:  # an old watchdog: moves in look like creations, settled by the stall rule
            return InotifyObserver()
    except (ImportError, OSError) as exc:
        from watchdog.observers.polling import PollingObserver  # noqa: PLC0415

        log.warning("watch: inotify is not available (%s); polling the watched folders instead", exc)
        return PollingObserver(timeout=0.5)
