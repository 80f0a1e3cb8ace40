"""How `tagent` shows things to a person: tables, ages, durations, event and log lines.

Everything here builds strings from protocol data and does no I/O. The live view
of a followed run is in live.py.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, TextIO

import msgspec

from ..wire.protocol import EventRecord, LogRecord, RunDetail, RunSummary, WatchInfo

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


def runs_tree(runs: Sequence[RunSummary], now: float) -> str:
    """`runs_table` with each child run under the run that started it (a child whose parent is not listed
    stands at the top)."""
    if not runs:
        return "no runs"
    listed = {r.run_id for r in runs}
    children: dict[str | None, list[RunSummary]] = {}
    for r in runs:
        children.setdefault(r.parent_id if r.parent_id in listed else None, []).append(r)
    rows: list[tuple[Any, ...]] = []

    def add(run: RunSummary, depth: int) -> None:
        label = f"{'   ' * (depth - 1)}└─ {run.run_id}" if depth else run.run_id
        rows.append((label, run.pipeline, run.status, f"{run.steps_done}/{run.steps_total}", age(now - run.created_at)))
        for child in sorted(children.get(run.run_id, []), key=lambda c: c.created_at):
            add(child, depth + 1)

    for top in children.get(None, []):
        add(top, 0)
    return table(("RUN", "PIPELINE", "STATUS", "STEPS", "AGE"), rows)


def child_runs(detail: RunDetail) -> str:
    """The child runs each sub-pipeline step started, one line per step ('' when there are none)."""
    return "\n".join(f"  {name} → child runs: {', '.join(step.children)}"
                     for name, step in detail.steps.items() if step.children)


def run_header(detail: RunDetail, now: float) -> str:
    parts = [f"created {age(now - detail.created_at)} ago"]
    if detail.started_at and detail.finished_at:
        parts.append(f"took {duration(detail.finished_at - detail.started_at)}")
    elif detail.started_at:
        parts.append(f"running for {duration(now - detail.started_at)}")
    lines = [f"run {detail.run_id} of {detail.pipeline}: {detail.status} ({', '.join(parts)})"]
    if detail.path:
        lines.append(f"  file: {detail.path}")
    if detail.parent_id:
        lines.append(f"  child of run {detail.parent_id}")
    if detail.trace_id:
        lines.append(f"  trace: {detail.trace_url or detail.trace_id}")
    if detail.error:
        lines.append(f"  error: {detail.error}")
    return "\n".join(lines)


def steps_table(detail: RunDetail, now: float) -> str:
    rows = []
    for name, step in detail.steps.items():
        took = step.duration_s
        if took is None and step.started_at and step.status in ("running", "retrying"):
            took = now - step.started_at
        notes = [step.error or step.skip_reason or ""]
        if step.added_by:
            notes.append(f"(added by {step.added_by})")
        if step.compensation:
            notes.append(f"(compensation {step.compensation})")
        rows.append((name, step.status, step.attempts, duration(took), " ".join(n for n in notes if n)))
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
    """The watched folders, then one line per known file: name, short hash, status, when, detail.

    DETAIL comes last and is not padded, so one file's long error does not widen every other row
    past an 80-column terminal."""
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
            detail = f"run {f.run_id}" if f.run_id else without_path(f.message or "", f.path)
            if f.path in info.settling and f.status != "loading":
                detail = f"{detail}; a newer version is settling" if detail else "settling"
            rows.append((name, (f.hash or "-")[:12], f.status, f"{age(now - f.at)} ago", detail))
        lines += ["", table(("FILE", "HASH", "STATUS", "WHEN", "DETAIL"), rows)]
    else:
        lines += ["", "no pipeline files yet: drop a .py, .toml or .json pipeline into a watched folder"]
    waiting = [path for path in info.settling if path not in {f.path for f in info.files}]
    if waiting:
        lines.append(f"settling (waiting until complete): {', '.join(waiting)}")
    for problem in info.problems:
        lines.append(f"problem: {problem}")
    return "\n".join(lines)


def without_path(message: str, path: str) -> str:
    """A watched file's message without its own path in front (the FILE column shows it): 'line 3: reason'."""
    if not message.startswith(path):
        return message
    rest = message[len(path):].removeprefix(":")
    line, sep, reason = rest.partition(": ")
    return f"line {line}: {reason}" if sep and line.isdigit() else rest.strip()


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
    fraction = data.get("fraction")
    if record.topic == "step.progress" and isinstance(fraction, (int, float)) and not isinstance(fraction, bool):
        parts.append(f"{fraction:.0%}")
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


def log_event_line(record: LogRecord) -> str:
    """A log line among event lines: '12:00:01 step.log fetch INFO: got 3 items'."""
    return f"{clock(record.ts)} step.log {record.step or '-'} {record.level}: {record.message}"


def is_terminal(stream: TextIO) -> bool:
    return stream.isatty() and os.environ.get("TERM") != "dumb"
