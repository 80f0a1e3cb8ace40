"""The live view of a followed run (`tagent submit --follow`): its steps, progress notes and log lines.

`StepBoard` is the run's per-step state, rebuilt from its lifecycle events and the progress notes
its steps publish (pure: no I/O, no clock). `LiveView` shows it: on a terminal the board is
redrawn in place, with the step's latest progress note on its line and new log lines scrolling
above it; anywhere else each event, progress note and log line is one plain line, in time order.
`Follower` feeds a view from the daemon until the run ends.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

import click

from ..client.base import FOLLOW_WAIT
from ..wire.protocol import EventRecord, LogRecord
from .common import EXIT_INTERRUPTED
from .render import duration, event_line, is_terminal, log_event_line, log_line

if TYPE_CHECKING:
    from ..client.subscription import Subscription
    from ..client.sync import Client
    from ..core.result import PipelineResult

SYMBOLS = {"pending": "·", "running": "▶", "retrying": "↻", "completed": "✓", "failed": "✗",
           "skipped": "↷", "cancelled": "⊘"}
ASCII_SYMBOLS = {"pending": ".", "running": ">", "retrying": "~", "completed": "+", "failed": "x",
                 "skipped": "-", "cancelled": "!"}
COLORS = {"running": "cyan", "retrying": "yellow", "completed": "green", "failed": "red",
          "skipped": "bright_black", "cancelled": "magenta"}
ACTIVE = ("running", "retrying", "failed")
PROGRESS_TOPIC = "step.progress"  # published on the event bus by ctx.progress(); never stored with the run
FOLLOW_POLL = 0.5  # the events long-poll while showing: new log lines and progress notes wait at most this long


# -- the board ----------------------------------------------------------------------------------


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


# -- showing it ---------------------------------------------------------------------------------


def _encodable(stream: TextIO, text: str) -> bool:
    try:
        text.encode(getattr(stream, "encoding", None) or "ascii")
    except (UnicodeEncodeError, LookupError):
        return False
    return True


class LiveView:
    """A run's progress as it happens: redrawn in place on a terminal, one plain line per item otherwise."""

    def __init__(self, board: StepBoard, out: TextIO | None = None, tty: bool | None = None) -> None:
        self.board = board
        self.out = out if out is not None else sys.stdout
        self.tty = is_terminal(self.out) if tty is None else tty
        self.symbols = SYMBOLS if _encodable(self.out, "".join(SYMBOLS.values())) else ASCII_SYMBOLS
        self._drawn = 0
        self._held: list[LogRecord] = []

    def update(self, records: Sequence[EventRecord], lines: Sequence[LogRecord] = ()) -> None:
        """Apply new events and progress notes (in time order) and show new log lines.

        On a terminal the log lines are printed above the board, which is then redrawn (also with
        nothing new: running durations tick); elsewhere every event, note and log line is one line,
        and a step's log line never comes before the event that says the step started.
        """
        for record in records:
            self.board.apply(record)
        if self.tty:
            self._redraw([log_line(line) for line in lines])
        else:
            shown = [(r.ts, event_line(r)) for r in records] + self._after_start([*self._held, *lines])
            for _, text in sorted(shown, key=lambda item: item[0]):
                self.out.write(text + "\n")
        self.out.flush()

    def _after_start(self, lines: Sequence[LogRecord]) -> list[tuple[float, str]]:
        """(when, text) of the log lines whose step has started, none before its start; the others are held.

        A worker stamps a log line when the step logs it, the daemon its step.started event when it records
        it, which can be a little later: by time alone the line would come first.
        """
        shown, self._held = [], []
        for line in lines:
            row = self.board.rows.get(line.step)
            if row is not None and row.started_at is None:
                self._held.append(line)
            else:
                start = row.started_at if row is not None and row.started_at is not None else line.ts
                shown.append((max(line.ts, start), log_event_line(line)))
        return shown

    def finish(self, status: str, metadata: Mapping[str, Mapping[str, Any]]) -> None:
        if not self.tty and self._held:  # a step whose started event was never seen: its lines still show
            for line in self._held:
                self.out.write(log_event_line(line) + "\n")
            self._held = []
        self.board.settle(status, metadata)
        if self.tty:
            self._redraw()
        self.out.flush()

    def _redraw(self, above: Sequence[str] = ()) -> None:
        size = shutil.get_terminal_size((100, 24))
        lines = self.board.lines(time.time(), size.columns - 1, size.lines - 1, self.symbols, color=True)
        parts = [f"\x1b[{self._drawn}A\r"] if self._drawn else []
        if above:  # they take the old board's place and scroll up with the terminal; the board goes below them
            parts.append("\x1b[J")
            parts += [f"{text}\n" for text in above]
        parts += [f"\x1b[2K{line}\n" for line in lines]
        parts.append("\x1b[J")
        self.out.write("".join(parts))
        self._drawn = len(lines)


class Follower:
    """Follows one run for `tagent submit --follow` until it ends.

    Make it before submitting: when it shows progress (`show`), it subscribes to progress notes
    at once, so the first notes of a fast step are not missed. Each round it takes the notes that
    came, then the run's new events (a long poll of FOLLOW_POLL s; FOLLOW_WAIT when nothing is
    shown), then its new log lines; a note's `step.started` event is therefore never behind it.
    Notes are best effort: one the event bus drops for a slow reader is not shown.
    """

    def __init__(self, client: Client, *, show: bool, out: TextIO | None = None) -> None:
        self.client = client
        self.show = show
        self.out = out
        self._notes: Subscription | None = client.subscribe(PROGRESS_TOPIC) if show else None

    def follow(self, run_id: str, pipeline: str, steps: Iterable[str]) -> PipelineResult:
        """Show the run until it finishes (nothing unless `show`), then return its result."""
        view = LiveView(StepBoard(run_id, pipeline, steps), out=self.out) if self.show else None
        wait = FOLLOW_POLL if view is not None else FOLLOW_WAIT
        after = logged = 0
        try:
            while True:
                notes = self._progress_notes(run_id)
                batch = self.client.events(run_id, after=after, wait=wait)
                lines = list(self.client.logs(run_id, after=logged)) if view is not None else []
                if view is not None:
                    view.update(sorted([*batch.events, *notes], key=lambda record: record.ts), lines)
                if lines:
                    logged = lines[-1].seq
                if batch.events:
                    after = batch.events[-1].seq
                elif batch.finished:
                    break
        except KeyboardInterrupt:
            click.echo(f"\ntagent: stopped following; run {run_id} keeps running ('tagent cancel {run_id}' stops it)",
                       err=True)
            raise click.exceptions.Exit(EXIT_INTERRUPTED) from None
        finally:
            self.close()
        result = self.client.result(run_id)
        if view is not None:
            view.finish(result.status, result.step_metadata)
        return result

    def _progress_notes(self, run_id: str) -> list[EventRecord]:
        """The progress notes of this run that arrived since the last call (without waiting)."""
        notes = []
        while self._notes is not None and (record := self._notes.get(0)) is not None:
            if record.topic == PROGRESS_TOPIC and record.data.get("run_id") == run_id:
                notes.append(record)
        return notes

    def close(self) -> None:
        if self._notes is not None:
            self._notes.close()
            self._notes = None
