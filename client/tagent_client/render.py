"""How `tagent` shows things to a person: tables, ages, durations, event lines, the live run view.

Everything here builds strings from protocol data and does no I/O, except
`LiveView`, which owns the block of terminal lines it redraws in place.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TextIO

import click
import msgspec

from .protocol import EventRecord, LogRecord, RunDetail, RunSummary, WatchInfo

SYMBOLS = {"pending": "·", "running": "▶", "retrying": "↻", "completed": "✓", "failed": "✗",
           "skipped": "↷", "cancelled": "⊘"}
ASCII_SYMBOLS = {"pending": ".", "running": ">", "retrying": "~", "completed": "+", "failed": "x",
                 "skipped": "-", "cancelled": "!"}
COLORS = {"running": "cyan", "retrying": "yellow", "completed": "green", "failed": "red",
          "skipped": "bright_black", "cancelled": "magenta"}
ACTIVE = ("running", "retrying", "failed")


# -- small formats ---------------------------------------------------------------------------


def age(seconds: float) -> str:
    """Coarse elapsed time for lists: '3s', '2m', '1h', '4d'."""
    s = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit}"
    return f"{s}s"


def duration(seconds: float | None) -> str:
    """Precise elapsed time for steps: '250ms', '12.3s', '2m05s', '1h02m'; '-' when unknown."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def clock(ts: float) -> str:
    """Local wall-clock time of a timestamp: '12:00:01'."""
    return datetime.fromtimestamp(ts).strftime("%H:%M:%S")


def compact_json(value: Any) -> str:
    return msgspec.json.encode(value).decode()


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Left-aligned columns separated by two spaces; the last column is not padded."""
    cells = [[str(c) for c in headers]] + [[("" if c is None else str(c)) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        padded = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])] + [row[-1]]
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)


# -- read-command views ----------------------------------------------------------------------


def runs_table(runs: Sequence[RunSummary], now: float) -> str:
    if not runs:
        return "no runs"
    rows = [(r.run_id, r.pipeline, r.status, f"{r.steps_done}/{r.steps_total}", age(now - r.created_at)) for r in runs]
    return table(("RUN", "PIPELINE", "STATUS", "STEPS", "AGE"), rows)


def run_header(detail: RunDetail, now: float) -> str:
    parts = [f"created {age(now - detail.created_at)} ago"]
    if detail.started_at and detail.finished_at:
        parts.append(f"took {duration(detail.finished_at - detail.started_at)}")
    elif detail.started_at:
        parts.append(f"running for {duration(now - detail.started_at)}")
    lines = [f"run {detail.run_id} of {detail.pipeline}: {detail.status} ({', '.join(parts)})"]
    if detail.path:
        lines.append(f"  file: {detail.path}")
    if detail.error:
        lines.append(f"  error: {detail.error}")
    return "\n".join(lines)


def steps_table(detail: RunDetail, now: float) -> str:
    rows = []
    for name, step in detail.steps.items():
        took = step.duration_s
        if took is None and step.started_at and step.status in ("running", "retrying"):
            took = now - step.started_at
        rows.append((name, step.status, step.attempts, duration(took), step.error or step.skip_reason or ""))
    if not any(step.tokens or step.cost for step in detail.steps.values()):
        return table(("STEP", "STATUS", "ATTEMPTS", "DURATION", "DETAIL"), rows)
    usage = [(s.tokens or "-", f"${s.cost:.6f}" if s.cost else "-") for s in detail.steps.values()]
    rows = [(*row[:4], *used, row[4]) for row, used in zip(rows, usage, strict=True)]
    total_tokens = sum(s.tokens for s in detail.steps.values())
    total_cost = sum(s.cost for s in detail.steps.values())
    rows.append(("total", "", "", "", total_tokens, f"${total_cost:.6f}", ""))
    return table(("STEP", "STATUS", "ATTEMPTS", "DURATION", "TOKENS", "COST", "DETAIL"), rows)


def history_table(entries: Sequence[Mapping[str, Any]]) -> str:
    if not entries:
        return "no history"
    rows = [(clock(e["ts"]) if isinstance(e.get("ts"), (int, float)) else "-", e.get("who", ""), e.get("what", ""),
             compact_json(e["data"]) if e.get("data") else "") for e in entries]
    return table(("TIME", "WHO", "WHAT", "DETAILS"), rows)


def watch_view(info: WatchInfo, now: float) -> str:
    """The watched folders, then one line per known file: name, short hash, status, detail, when."""
    lines = ["watched folders:"]
    for folder in info.folders:
        note = f" ({folder.message})" if folder.message and folder.status != "watching" else ""
        lines.append(f"  {folder.path}  {folder.status}{' (with subfolders)' if folder.recursive else ''}{note}")
    if not info.folders:
        lines.append("  none")
    if info.files:
        rows = []
        for f in info.files:
            name = os.path.relpath(f.path, f.folder) if len(info.folders) == 1 else f.path
            detail = f"run {f.run_id}" if f.run_id else (f.message or "")
            if f.path in info.settling and f.status != "loading":
                detail = f"{detail}; a newer version is settling" if detail else "settling"
            rows.append((name, (f.hash or "-")[:12], f.status, detail, f"{age(now - f.at)} ago"))
        lines += ["", table(("FILE", "HASH", "STATUS", "DETAIL", "WHEN"), rows)]
    else:
        lines += ["", "no pipeline files yet: drop a .py, .toml or .json pipeline into a watched folder"]
    waiting = [path for path in info.settling if path not in {f.path for f in info.files}]
    if waiting:
        lines.append(f"settling (waiting until complete): {', '.join(waiting)}")
    for problem in info.problems:
        lines.append(f"problem: {problem}")
    return "\n".join(lines)


def event_line(record: EventRecord) -> str:
    """One plain line per event: '12:00:01 step.completed web_search (attempt 1)'."""
    data = record.data
    parts = [clock(record.ts), record.topic]
    if data.get("step"):
        parts.append(str(data["step"]))
    attempt = data.get("attempt", data.get("attempts"))
    if isinstance(attempt, int) and attempt > 0:
        parts.append(f"(attempt {attempt})")
    if record.topic == "run.finished" and data.get("status"):
        parts.append(str(data["status"]))
    detail = data.get("error") or data.get("reason") or data.get("message")
    line = " ".join(parts)
    return f"{line}: {detail}" if detail else line


def outputs_block(outputs: Mapping[str, Any]) -> str:
    """Each step's output as JSON: on one line when short, indented otherwise."""
    if not outputs:
        return "outputs: none"
    return "\n".join(["outputs:"] + [f"  {name}: {pretty_json(value, 2)}" for name, value in outputs.items()])


def pretty_json(value: Any, indent: int = 0, width: int = 100) -> str:
    """JSON that keeps whatever fits in `width` on one line and breaks only the big maps and lists."""
    text = compact_json(value)
    if indent + len(text) <= width or not isinstance(value, (dict, list)) or not value:
        return text
    pad = " " * (indent + 2)
    if isinstance(value, dict):
        items = [f"{pad}{compact_json(str(k))}: {pretty_json(v, indent + 2, width)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
    items = [pad + pretty_json(v, indent + 2, width) for v in value]
    return "[\n" + ",\n".join(items) + "\n" + " " * indent + "]"


def log_line(record: LogRecord) -> str:
    return f"{clock(record.ts)} {record.level:<7} {record.step or '-'}: {record.message}"


# -- the live view of a run ------------------------------------------------------------------


@dataclass
class StepRow:
    status: str = "pending"
    attempts: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    detail: str = ""


def _int(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


class StepBoard:
    """Per-step state of one run, rebuilt from its lifecycle events. Pure: no I/O, no clock."""

    def __init__(self, run_id: str, pipeline: str, steps: Iterable[str] = ()) -> None:
        self.run_id, self.pipeline = run_id, pipeline
        self.status = "pending"
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.error: str | None = None
        self.rows: dict[str, StepRow] = {name: StepRow() for name in steps}

    def apply(self, record: EventRecord) -> None:
        data, ts, topic = record.data, record.ts, record.topic
        if topic in ("run.started", "run.resumed"):
            self.status, self.finished_at, self.error = "running", None, None
            self.started_at = self.started_at or ts
            for name in data.get("steps") or []:
                self.rows[name] = StepRow()
            return
        if topic == "run.finished":
            self.status, self.finished_at, self.error = str(data.get("status", "finished")), ts, data.get("error")
            return
        step = data.get("step")
        if not topic.startswith("step.") or not isinstance(step, str):
            return
        row = self.rows.setdefault(step, StepRow())
        kind = topic.removeprefix("step.")
        if kind == "started":
            row.status, row.detail = "running", ""
            row.attempts = max(row.attempts, _int(data.get("attempt"), row.attempts + 1))
            row.started_at = row.started_at or ts
        elif kind == "retrying":
            row.status, row.detail = "retrying", f"retry after: {data.get('error', '')}"
        elif kind == "progress" and row.status == "running":
            fraction = data.get("fraction")
            percent = f"{fraction:.0%} " if isinstance(fraction, (int, float)) else ""
            row.detail = percent + str(data.get("message") or "")
        elif kind in ("completed", "failed", "skipped", "cancelled"):
            row.status, row.finished_at = kind, ts
            row.attempts = max(row.attempts, _int(data.get("attempts", data.get("attempt")), row.attempts))
            row.detail = str(data.get("error") or data.get("reason") or "")

    def settle(self, status: str, metadata: Mapping[str, Mapping[str, Any]]) -> None:
        """Take the final word from a PipelineResult (steps cancelled with the run emit no event)."""
        self.status = status
        for name, meta in metadata.items():
            row = self.rows.setdefault(name, StepRow())
            row.status = str(meta.get("status", row.status))
            row.attempts = _int(meta.get("attempts"), row.attempts)
            row.started_at = meta.get("started_at") or row.started_at
            row.finished_at = meta.get("finished_at") or row.finished_at
            row.detail = str(meta.get("error") or meta.get("skip_reason") or "")

    def lines(self, now: float, width: int, height: int, symbols: Mapping[str, str], color: bool) -> list[str]:
        """The view, at most `height` lines of at most `width` visible characters."""
        done = sum(1 for r in self.rows.values() if r.status in ("completed", "failed", "skipped", "cancelled"))
        end = self.finished_at or now
        elapsed = f"  {duration(end - self.started_at)}" if self.started_at else ""
        header = f"run {self.run_id} of {self.pipeline}: {self.status}  {done}/{len(self.rows)} steps{elapsed}"
        shown, more = self._visible(max(2, height - 1))
        name_width = min(32, max((len(n) for n in shown), default=0))
        out = [header[:width]]
        for name in shown:
            row = self.rows[name]
            stop = row.finished_at or (now if row.status in ("running", "retrying") else None)
            took = duration(stop - row.started_at) if row.started_at and stop else "-"
            attempt = f"attempt {row.attempts}" if row.attempts else ""
            text = f"{name[:name_width]:<{name_width}}  {row.status:<9}  {attempt:<10} {took:>7}  {row.detail}"
            symbol = symbols.get(row.status, "?")
            if color and row.status in COLORS:
                symbol = click.style(symbol, fg=COLORS[row.status])
            out.append(f"  {symbol} {text[: max(0, width - 4)]}".rstrip())
        if more:
            out.append(more[:width])
        return out

    def _visible(self, budget: int) -> tuple[list[str], str]:
        names = list(self.rows)
        if len(names) <= budget:
            return names, ""
        chosen = set([n for n in names if self.rows[n].status in ACTIVE][: budget - 1])
        for name in names:
            if len(chosen) >= budget - 1:
                break
            chosen.add(name)
        hidden = [n for n in names if n not in chosen]
        counts: dict[str, int] = {}
        for name in hidden:
            counts[self.rows[name].status] = counts.get(self.rows[name].status, 0) + 1
        summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        return [n for n in names if n in chosen], f"  ... {len(hidden)} more steps ({summary})"


def _encodable(stream: TextIO, text: str) -> bool:
    try:
        text.encode(getattr(stream, "encoding", None) or "ascii")
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def is_terminal(stream: TextIO) -> bool:
    return stream.isatty() and os.environ.get("TERM") != "dumb"


class LiveView:
    """A run's progress as events arrive: redrawn in place on a terminal, one plain line per event otherwise."""

    def __init__(self, board: StepBoard, out: TextIO | None = None, tty: bool | None = None) -> None:
        self.board = board
        self.out = out if out is not None else sys.stdout
        self.tty = is_terminal(self.out) if tty is None else tty
        self.symbols = SYMBOLS if _encodable(self.out, "".join(SYMBOLS.values())) else ASCII_SYMBOLS
        self._drawn = 0

    def update(self, records: Sequence[EventRecord]) -> None:
        """Apply new events; on a terminal redraw (also with no events: running durations tick)."""
        for record in records:
            self.board.apply(record)
            if not self.tty:
                self.out.write(event_line(record) + "\n")
        if self.tty:
            self._redraw()
        self.out.flush()

    def finish(self, status: str, metadata: Mapping[str, Mapping[str, Any]]) -> None:
        self.board.settle(status, metadata)
        if self.tty:
            self._redraw()
            self.out.flush()

    def _redraw(self) -> None:
        size = shutil.get_terminal_size((100, 24))
        lines = self.board.lines(time.time(), size.columns - 1, size.lines - 1, self.symbols, color=True)
        parts = [f"\x1b[{self._drawn}A\r"] if self._drawn else []
        parts += [f"\x1b[2K{line}\n" for line in lines]
        parts.append("\x1b[J")
        self.out.write("".join(parts))
        self._drawn = len(lines)
