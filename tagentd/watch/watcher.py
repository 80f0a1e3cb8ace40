"""The folder watcher: a pipeline file dropped into a watched folder starts a run.

This module decides *when* a file is ready; intake.py decides *what* it becomes.

Threads: watchdog's observer (inotify on Linux) runs in its own threads and only hands each raw
event to the daemon's loop (`loop.call_soon_threadsafe`); every state change happens on the loop.

Events go to the `Debouncer` (watch_rules.py): a path settles once it has been quiet for 200 ms,
nobody is writing it, and it looked the same at two checks (or was moved in by a rename). Settled
paths are handled one at a time per path; a path that changes while it is being handled is looked
at again afterwards.

Folders are checked every second: a deleted, re-created or replaced folder is re-armed and
rescanned (so is every folder at start: files dropped while the daemon was down are found), and a
folder that became unsafe stops being watched. Every 30 s a rescan catches events the kernel may
have dropped; files unchanged since they were last read are not read again.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tagent_client.wire import protocol as p
from tagentd.plumbing.ports import Publish
from tagentd.runs.ports import Register, RunOps
from tagentd.settings.config import Settings
from tagentd.watch.intake import DroppedFiles
from tagentd.watch.rules import (
    SCAN,
    Debouncer,
    FolderSpec,
    folder_problem,
    hidden_dir,
    watchable,
)
from tagentd.watch.seen import SeenFiles

if TYPE_CHECKING:
    from watchdog.events import FileSystemEvent
    from watchdog.observers.api import BaseObserver, ObservedWatch

log = logging.getLogger("tagentd.watcher")

FOLDER_CHECK_S = 1.0
RESCAN_S = 30.0
@dataclass
class Folder:
    """A watched folder and its watch: "watching", "missing" or "refused" (`message` says why)."""

    path: Path
    status: str = "missing"
    message: str | None = None
    watch: ObservedWatch | None = None
    ident: tuple[int, int] | None = None  # (device, inode) it was armed on

    def holds(self, path: str, recursive: bool) -> bool:
        """True if `path` is a pipeline file this folder watches."""
        rel = os.path.relpath(path, self.path)
        parts = rel.split(os.sep)
        if rel.startswith(os.pardir) or not watchable(parts[-1]):
            return False
        return len(parts) == 1 or (recursive and not any(hidden_dir(d) for d in parts[:-1]))


class Watcher:
    """Watches the folders and starts the pipeline files dropped into them. Lives on the daemon's loop."""

    def __init__(self, settings: Settings, specs: list[FolderSpec], *, ops: RunOps, register: Register,
                 publish: Publish, seen: SeenFiles) -> None:
        self.recursive = settings.watch_recursive
        self.folders = [Folder(s.path, "refused" if s.problem else "missing", s.problem) for s in specs]
        for spec in specs:
            if spec.problem:
                log.warning("watch: %s", spec.problem)
        self.dropped = DroppedFiles(settings, ops=ops, register=register, publish=publish, seen=seen)
        self.debouncer = Debouncer()
        self._busy: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._observer: BaseObserver | None = None
        self._events: Any = None  # the module tagentd.watch.observer, once started
        self._handoff: Any = None  # observer.Handoff, once started
        self._next_check = 0.0
        self._next_rescan = 0.0

    # -- lifecycle ----------------------------------------------------------------------------------------

    def start(self) -> None:
        """Remember what earlier daemons started, arm the folders, rescan them, and start settling."""
        self.dropped.remember_runs()
        loop = asyncio.get_running_loop()
        from tagentd.watch import observer  # noqa: PLC0415 - watchdog loads with the watcher's start (observer.py)

        self._events = observer
        self._handoff = observer.Handoff(loop, self._on_event)
        self._observer = observer.make_observer()
        self._observer.start()
        now = time.monotonic()
        self._check_folders(now)
        self._next_check, self._next_rescan = now + FOLDER_CHECK_S, now + RESCAN_S
        self._keep(loop.create_task(self._settle_loop()))

    def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=2.0)
            self._observer = None

    def _keep(self, task: asyncio.Task[None]) -> asyncio.Task[None]:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- folders ------------------------------------------------------------------------------------------

    def folder_paths(self) -> list[str]:
        return [str(f.path) for f in self.folders]

    def _check_folders(self, now: float) -> None:
        """Arm what can be armed; disarm what vanished, was replaced or became unsafe. Cheap: one stat per folder."""
        assert self._observer is not None and self._handoff is not None
        for folder in self.folders:
            problem = folder_problem(folder.path)
            try:
                st = os.stat(folder.path)
                ident: tuple[int, int] | None = (st.st_dev, st.st_ino)
            except OSError:
                ident = None
            if problem is None and folder.watch is not None and ident == folder.ident:
                continue
            if folder.watch is not None:
                self._disarm(folder, now)
            if problem is not None:
                status = "missing" if ident is None else "refused"
                if ident is None:
                    problem = f"watch folder {folder.path} does not exist; it is watched again once it is created"
                if (status, problem) != (folder.status, folder.message):
                    log.warning("watch: %s", problem)
                folder.status, folder.message = status, problem
                continue
            try:
                folder.watch = self._observer.schedule(self._handoff, str(folder.path), recursive=self.recursive)
            except OSError as exc:
                message = f"cannot watch {folder.path}: {exc.strerror or exc}"
                if message != folder.message:
                    log.warning("watch: %s", message)
                folder.status, folder.message = "refused", message
                continue
            log.info("watch: watching %s%s", folder.path, " and its subfolders" if self.recursive else "")
            folder.status, folder.message, folder.ident = "watching", None, ident
            self._rescan(folder, now)

    def _disarm(self, folder: Folder, now: float) -> None:
        assert self._observer is not None and folder.watch is not None
        try:
            self._observer.unschedule(folder.watch)
        except (KeyError, OSError):
            pass
        folder.watch, folder.ident = None, None
        for path, record in self.dropped.files.items():  # gone with the folder, or to be read again from the new one
            if record.folder == str(folder.path):
                self.debouncer.note(path, SCAN, now)

    def _rescan(self, folder: Folder, now: float) -> None:
        """Note every pipeline file that is new or changed since it was last read, and every known one that is gone."""
        found = set(self._list(folder.path))
        known = {path for path, record in self.dropped.files.items() if record.folder == str(folder.path)}
        for path in found | known:
            if path in self.debouncer or path in self._busy:
                continue
            if path not in found or not self.dropped.unchanged(path):
                self.debouncer.note(path, SCAN, now)

    def _list(self, root: Path) -> list[str]:
        out = []
        try:
            for top, dirs, names in os.walk(root):
                dirs[:] = [d for d in dirs if self.recursive and not hidden_dir(d)]
                out += [os.path.join(top, n) for n in names if watchable(n) and os.path.isfile(os.path.join(top, n))]
        except OSError:
            pass
        return out

    def _folder_of(self, path: str) -> Folder | None:
        for folder in self.folders:
            if path.startswith(str(folder.path) + os.sep) and folder.holds(path, self.recursive):
                return folder
        return None

    # -- events and settling -----------------------------------------------------------------------------------

    def _on_event(self, event: FileSystemEvent) -> None:
        """On the loop: note what the event says about each pipeline file it names."""
        if event.is_directory:
            if self._events.folder_gone(event):
                self._next_check = 0.0  # maybe a watched folder: check at once
                self._wake.set()
            return
        now = time.monotonic()
        for path, kind in self._events.classify(event):
            if self._folder_of(path) is not None:
                self.debouncer.note(path, kind, now)
                self._wake.set()

    async def _settle_loop(self) -> None:
        while True:
            try:
                now = time.monotonic()
                if now >= self._next_check:
                    self._next_check = now + FOLDER_CHECK_S
                    self._check_folders(now)
                if now >= self._next_rescan:
                    self._next_rescan = now + RESCAN_S
                    for folder in self.folders:
                        if folder.watch is not None:
                            self._rescan(folder, now)
                for path in self.debouncer.due(now):
                    self._settled(path)
            except Exception:  # noqa: BLE001 - a bug here must not stop the watcher for good
                log.exception("watch: internal error; carrying on")
            wake_at = min(self._next_check, self._next_rescan, self.debouncer.next_due() or math.inf)
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), max(0.0, wake_at - time.monotonic()))
            except TimeoutError:
                pass

    def _settled(self, path: str) -> None:
        if path in self._busy:  # still handling an earlier version: look again when that is done
            self._again.add(path)
            return
        folder = self._folder_of(path)
        if folder is None:
            return
        handling = self.dropped.handle(path, str(folder.path), watching=folder.status == "watching")
        task = self._keep(asyncio.get_running_loop().create_task(handling))
        self._busy[path] = task
        task.add_done_callback(lambda done: self._processed(path, done))

    def _processed(self, path: str, task: asyncio.Task[None]) -> None:
        self._busy.pop(path, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("watch: handling %s failed: %r", path, task.exception(), exc_info=task.exception())
            self.dropped.failed(path, task.exception())  # type: ignore[arg-type]
        if path in self._again:
            self._again.discard(path)
            self.debouncer.note(path, SCAN, time.monotonic())
            self._wake.set()

    # -- status ---------------------------------------------------------------------------------------------------

    def info(self) -> p.WatchInfo:
        folders = [p.WatchFolder(path=str(f.path), status=f.status, message=f.message, recursive=self.recursive)
                   for f in self.folders]
        dropped = self.dropped
        return p.WatchInfo(folders=folders, files=sorted(dropped.files.values(), key=lambda f: f.path),
                           settling=sorted(set(self.debouncer.paths()) | set(self._busy)),
                           on_change=dropped.on_change, on_delete=dropped.on_delete, problems=list(dropped.seen.problems))
