"""What becomes of a pipeline file in a watched folder, once it has settled (watcher.py decides when).

`DroppedFiles.handle(path)`: read it, with ownership and mode checked on the opened file → sha256 →
- that (path, hash) already started a run, in this daemon or an earlier one (seen.py): nothing;
- `.py`: loaded in a worker (submit.load_plan) — never imported in the daemon; `.toml` / `.json`:
  read here as data (`export.plan_from_dict` imports nothing), goal-only;
- the pipeline declares triggers: registered with the broker (as `tagent submit` does), not
  started; else a run (`RunOps.submit_source`), remembered in the seen map once the commit has
  made the run durable (`SeenFiles.started`).
A bad file becomes "error" (daemon log, `watch.error` event, `tagent watch`: one line
`path:line: reason`), an unsafe one "skipped"; neither affects any other file. A deleted file
starts and stops nothing unless `on_delete = "cancel"`; a changed file starts its new version and
leaves older runs alone unless `on_change = "restart"`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
from typing import Any

from tagent_client.define.plan import Plan
from tagent_client.errors import InvalidRequest, PipelineLoadError, PipelineValidationError, TagentError
from tagent_client.wire import protocol as p
from tagentd.plumbing.ports import Publish
from tagentd.runs import submission as submit
from tagentd.runs.ports import Register, RunOps
from tagentd.runs.run import Run
from tagentd.settings.config import Settings
from tagentd.watch.rules import MAX_FILE_BYTES, Probe, file_problem, probe, stat_probe
from tagentd.watch.seen import SeenFiles
from tagentd.worker.wire import source_hash

log = logging.getLogger("tagentd.watcher")

WATCHER = submit.WATCHER  # `who` in the audit trail of the runs the watcher starts
_TOML_AT = re.compile(r"\s*\(at line (\d+), column \d+\)\s*$")


class SkippedFile(Exception):
    """The file is not run: `str()` says why; `probe` is what it looked like (None if unknown)."""

    def __init__(self, why: str, seen: Probe) -> None:
        super().__init__(why)
        self.probe = seen


def read_file(path: str) -> tuple[bytes, Probe] | None:
    """The file's bytes, checked on the opened file (ours, nobody else can write it, regular, not huge); None if gone."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SkippedFile(f"cannot open it: {exc.strerror}", probe(path)) from None
    try:
        st = os.fstat(fd)
        problem = file_problem(st)
        if problem:
            raise SkippedFile(problem, stat_probe(st))
        chunks, size = [], 0
        while chunk := os.read(fd, MAX_FILE_BYTES + 1 - size):
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_FILE_BYTES:
                raise SkippedFile(f"grew larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB while being read", None)
        return b"".join(chunks), stat_probe(st)
    finally:
        os.close(fd)


def read_document(path: str, text: str) -> Plan:
    """The Plan of a `.toml` / `.json` pipeline document, read as data; nothing is imported.

    Raises PipelineLoadError (`path:line: not valid TOML: ...`, or where in the document) or
    PipelineValidationError (a cycle, an unknown dependency, ...).
    """
    # The document reader (and the pipeline checks, which import pydantic) and the TOML parser load with the first
    # document dropped, not with the daemon: most daemons never see one, and the daemon answers sooner without them.
    import tomllib  # noqa: PLC0415

    from tagent_client.define import export  # noqa: PLC0415

    if path.lower().endswith(".toml"):
        try:
            data: Any = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            found = _TOML_AT.search(str(exc))
            line = int(found.group(1)) if found else None
            where = f"{path}:{line}" if line else path
            raise PipelineLoadError(f"{where}: not valid TOML: {_TOML_AT.sub('', str(exc))}", path=path, line=line) from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PipelineLoadError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}", path=path, line=exc.lineno) from None
    export.pipeline_from_dict(data, resolve_schemas=False, source=path)  # every problem; function steps refused
    return export.plan_from_dict(data, source=path)


def describe(path: str, exc: TagentError) -> tuple[str, int | None]:
    """One line `path[:line]: reason` for a bad file, and the line number when there is one."""
    if isinstance(exc, PipelineValidationError) and "\n" in exc.message:
        more = f" (and {len(exc.problems) - 1} more)" if len(exc.problems) > 1 else ""
        text = f"pipeline {exc.pipeline!r} is invalid: {exc.problems[0] if exc.problems else '?'}{more}"
    else:
        text = (exc.message.strip().splitlines() or [exc.code])[0]
    if not text.startswith(path):
        text = f"{path}: {text}"
    found = re.match(re.escape(path) + r":(\d+):", text)
    line = int(found.group(1)) if found else exc.details.get("line")
    return text, line if isinstance(line, int) else None


def started_by_watcher(run: Run) -> bool:
    return bool(run.history) and run.history[0].who == WATCHER and run.history[0].what == "submit"


class DroppedFiles:
    """Every pipeline file found in the watched folders, by path, and what became of its latest content.

    Given ports, not the daemon: `ops` (runs: start, cancel, list), `register` (the broker's, for a
    file that declares triggers), `publish` (watch.* events) and the durable `seen` map.
    """

    def __init__(self, settings: Settings, *, ops: RunOps, register: Register, publish: Publish,
                 seen: SeenFiles) -> None:
        self.ops = ops
        self.register = register
        self.publish = publish
        self.model = settings.model
        self.on_change = settings.on_change
        self.on_delete = settings.on_delete
        self.seen = seen
        self.files: dict[str, p.WatchedFile] = {}
        self.probes: dict[str, Probe] = {}  # each file as it was when last read: rescans skip unchanged ones

    def remember_runs(self) -> None:
        """Count the watcher's runs in the checkpoint store as seen (the seen file may lag behind them)."""
        for entry in self.ops.runs.entries():
            if entry.submitted_by == WATCHER:
                self.seen.add(entry.path, entry.source_hash, entry.run_id, entry.created_at)

    def unchanged(self, path: str) -> bool:
        """True if the file looks exactly as it did when it was last read."""
        return path in self.probes and self.probes[path] == probe(path)

    def failed(self, path: str, exc: BaseException) -> None:
        """`handle` raised (a bug): the file must not stay "loading" for ever."""
        record = self.files.get(path)
        if record is not None and record.status == "loading":
            record.status, record.message = "error", f"{path}: internal error: {exc!r}; see the daemon log"

    async def handle(self, path: str, folder: str, watching: bool) -> None:
        """Act on the settled file `path` of `folder` (which is not `watching` if it vanished or became unsafe)."""
        if not self.ops.accepting:
            return
        if not watching:  # forget what is gone, start nothing
            if probe(path) is None:
                self._deleted(path)
            return
        try:
            got = await asyncio.to_thread(read_file, path)
        except SkippedFile as skipped:
            self._skipped(path, folder, str(skipped), skipped.probe)
            return
        if got is None:
            self._deleted(path)
            return
        data, self.probes[path] = got
        digest = source_hash(data)
        record = self.files.get(path)
        if record is not None and record.hash == digest and record.status in ("started", "registered"):
            record.checked_at = time.time()
            return
        seen = self.seen.get(path, digest)
        if seen is not None:
            self._set(path, folder, digest, "started", run_id=seen.run_id, at=seen.at)
            return
        self._set(path, folder, digest, "loading")
        try:
            text, plan = await self._plan(path, data)
            if not self.ops.accepting:
                return
            run = await submit.start_or_register(self.ops, self.register, plan, path=path, source=text, who=WATCHER,
                                                 model=self.model)
            if run is None:  # as `tagent submit` does: each matching event starts a run (the broker's triggers)
                self._set(path, folder, digest, "registered")
                log.info("watch: %s declares triggers (%s): registered, not started", path, ", ".join(plan.triggers))
                self.publish("watch.registered", {"path": path, "hash": digest, "triggers": list(plan.triggers)})
                return
            if self.on_change == "restart":
                self._cancel_runs(path, f"{path} changed (on_change = restart)", keep=run.id)
        except InvalidRequest:  # the daemon began shutting down meanwhile
            return
        except TagentError as exc:  # PipelineLoadError, PipelineValidationError, ConfigError (no model)
            self._error(path, folder, digest, exc)
            return
        self._set(path, folder, digest, "started", run_id=run.id)
        log.info("watch: %s started run %s (pipeline %s, content %s)", path, run.id, plan.name, digest[:12])
        try:
            await self.seen.started(path, digest, run.id, run.state.created_at)  # once the run is on disk
        except OSError as exc:
            log.error("watch: cannot write %s: %s; the run is in the checkpoint store, so it still starts only once",
                      self.seen.file, exc.strerror or exc)
        self.publish("watch.started", {"path": path, "hash": digest, "run_id": run.id, "pipeline": plan.name})

    async def _plan(self, path: str, data: bytes) -> tuple[str, Plan]:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PipelineLoadError(f"{path}: not UTF-8 text (bad byte at offset {exc.start})") from None
        if path.lower().endswith(".py"):
            return text, await self.ops.load_plan(path, text)
        return text, read_document(path, text)

    def _cancel_runs(self, path: str, reason: str, keep: str | None = None) -> int:
        """Cancel the unfinished runs the watcher started from `path` (but `keep`); how many."""
        doomed = [run for run in self.ops.runs.active()
                  if run.source.path == path and run.id != keep and started_by_watcher(run)]
        for run in doomed:
            log.info("watch: cancelling run %s: %s", run.id, reason)
            run.audit(WATCHER, "cancel", reason=reason)
            self.ops.cancel_run(run, reason)
        return len(doomed)

    def _deleted(self, path: str) -> None:
        self.probes.pop(path, None)
        record = self.files.pop(path, None)
        if record is None:
            return
        if self.on_delete == "cancel":
            cancelled = self._cancel_runs(path, f"{path} was deleted (on_delete = cancel)")
            log.info("watch: %s was deleted; %d unfinished run(s) of it cancelled", path, cancelled)
        else:
            log.info("watch: %s was deleted%s", path, "; its runs keep going" if record.status == "started" else "")
        self.publish("watch.deleted", {"path": path})

    def _error(self, path: str, folder: str, digest: str, exc: TagentError) -> None:
        message, line = describe(path, exc)
        self._set(path, folder, digest, "error", message=message, line=line)
        log.warning("watch: %s", message)
        self.publish("watch.error", {"path": path, "line": line, "message": message, "hash": digest})

    def _skipped(self, path: str, folder: str, why: str, seen: Probe) -> None:
        message = f"{path}: skipped: {why}"
        before = self.files.get(path)
        if seen is not None:
            self.probes[path] = seen
        if before is None or before.message != message:
            log.warning("watch: %s", message)
            self.publish("watch.skipped", {"path": path, "message": message})
        self._set(path, folder, None, "skipped", message=message)

    def _set(self, path: str, folder: str, digest: str | None, status: str, *, run_id: str | None = None,
             message: str | None = None, line: int | None = None, at: float | None = None) -> None:
        now = time.time()
        self.files[path] = p.WatchedFile(path=path, folder=folder, status=status, hash=digest, run_id=run_id,
                                         message=message, line=line, at=now if at is None else at, checked_at=now)
