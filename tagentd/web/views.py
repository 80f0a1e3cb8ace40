"""What the dashboard's pages show, shaped from the daemon's replies. Pure: no I/O, plain data out.

Every function takes the client library's reply Structs and returns JSON-ready dicts and lists;
api.py asks the daemon and hands the answers here.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import msgspec

from tagent_client.cli.failures import diagnose
from tagent_client.cli.graph import condition_text
from tagent_client.define.plan import Plan
from tagent_client.wire.protocol import EventRecord, LogRecord, RunDetail, RunSummary

#: Topics that end an attempt, and how.
_ATTEMPT_ENDS = {"step.completed": "completed", "step.failed": "failed", "step.retrying": "retrying",
                 "step.skipped": "skipped"}
PREVIEW = 4000  # characters of a value shown before "…"


def plain(value: Any) -> Any:
    """`value` as JSON-ready data (Structs, tuples, sets; anything else by its repr)."""
    return msgspec.to_builtins(value, enc_hook=repr, str_keys=True)


def preview(value: Any, limit: int = PREVIEW) -> str:
    """`value` as readable JSON text, cut at `limit` characters."""
    text = value if isinstance(value, str) else json.dumps(plain(value), indent=2, default=repr)
    return text if len(text) <= limit else text[:limit] + f"… ({len(text) - limit} more characters)"


def runs_list(runs: Iterable[RunSummary], pipeline: str = "", search: str = "") -> list[dict[str, Any]]:
    """The runs list: newest first, only `pipeline`'s when given, only ids containing `search` when given."""
    return [plain(r) for r in runs
            if (not pipeline or r.pipeline == pipeline) and (not search or search.lower() in r.run_id.lower())]


def plan_of(detail: RunDetail) -> Plan | None:
    if detail.plan is None:
        return None
    try:
        return msgspec.convert(detail.plan, Plan)
    except msgspec.ValidationError:
        return None


def run_page(detail: RunDetail, events: Sequence[EventRecord], now: float | None = None) -> dict[str, Any]:
    """A run: its fields, its steps in plan order (kind, dependencies, state, times, error), the timing bars
    (`gantt`) and the failure analysis (`why`: root failures first, as `tagent why` says)."""
    plan = plan_of(detail)
    specs = {spec.name: spec for spec in plan.steps} if plan is not None else {}
    order = [name for name in specs if name in detail.steps] + [n for n in detail.steps if n not in specs]
    steps = []
    for name in order:
        info = plain(detail.steps[name])
        spec = specs.get(name)
        if spec is not None:
            info.update(kind=spec.kind.value, mode=spec.mode.value, model=spec.model, goal=spec.goal,
                        deps={dep: kind.value for dep, kind in spec.deps.items()}, condition=condition_text(spec),
                        over=None if spec.over is None else preview(spec.over, 200))
        steps.append({"name": name, **info})
    run = plain(detail)
    run.pop("plan", None)
    run.pop("steps", None)
    return {"run": run, "steps": steps, "gantt": gantt(detail, events, now), "why": diagnose(detail, events).to_dict()}


def gantt(detail: RunDetail, events: Sequence[EventRecord], now: float | None = None) -> dict[str, Any]:
    """The run's timing bars: each step's attempts as [start, end] spans with how each ended.

    From the run's events (`step.started` opens an attempt; completed, failed, retrying or skipped closes it);
    an attempt still open ends `now` (outcome "running"). `start`/`end` bound the whole chart.
    """
    now = time.time() if now is None else now
    open_: dict[tuple[str, int], float] = {}
    bars: list[dict[str, Any]] = []
    for ev in sorted(events, key=lambda e: e.seq):
        data = ev.data if isinstance(ev.data, dict) else {}
        step, attempt = data.get("step"), int(data.get("attempt") or data.get("attempts") or 0)  # completed: "attempts"
        if not isinstance(step, str):
            continue
        if ev.topic == "step.started":
            open_[(step, attempt)] = ev.ts
        elif ev.topic in _ATTEMPT_ENDS and (step, attempt) in open_:
            bars.append({"step": step, "attempt": attempt, "start": open_.pop((step, attempt)), "end": ev.ts,
                         "outcome": _ATTEMPT_ENDS[ev.topic]})
    finished = detail.finished_at
    for (step, attempt), start in open_.items():
        info = detail.steps.get(step)
        outcome = "running" if finished is None else (info.status if info is not None else "ended")
        bars.append({"step": step, "attempt": attempt, "start": start, "end": finished or now, "outcome": outcome})
    bars.sort(key=lambda b: (b["start"], b["step"]))
    start = detail.started_at or detail.created_at
    end = finished or now
    if bars:
        start = min(start, bars[0]["start"])
        end = max(end, max(b["end"] for b in bars))
    return {"start": start, "end": end, "bars": bars}


def step_page(detail: RunDetail, step: str, output: Any, logs: Iterable[LogRecord],
              transcript: Mapping[str, Any] | None) -> dict[str, Any]:
    """One step: its state and error with traceback, what went in (its dependencies' states and the run's
    params), its output, its log lines, and an agent step's transcript (messages, tool calls, tokens)."""
    info = plain(detail.steps[step])
    plan = plan_of(detail)
    spec = next((s for s in plan.steps if s.name == step), None) if plan is not None else None
    deps = dict(spec.deps) if spec is not None else {}
    inputs = [{"step": dep, "type": kind.value,
               "status": detail.steps[dep].status if dep in detail.steps else "unknown"} for dep, kind in deps.items()]
    return {
        "run_id": detail.run_id, "name": step, **info,
        "kind": spec.kind.value if spec is not None else None,
        "goal": spec.goal if spec is not None else None,
        "inputs": inputs, "params": preview(detail.params, 1000) if detail.params else None,
        "output": None if output is None else preview(output),
        "logs": [{"ts": line.ts, "level": line.level, "message": line.message} for line in logs if line.step == step],
        "transcript": transcript_view(transcript),
    }


def transcript_view(transcript: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """An agent step's attempts, each a list of readable entries: who said what, tool calls and their
    results, and the tokens of each response."""
    if not transcript:
        return []
    out = []
    for entry in transcript.get("attempts") or []:
        lines: list[dict[str, Any]] = []
        for message in entry.get("messages") or []:
            for part in message.get("parts") or []:
                lines.append(_part(part))
            usage = message.get("usage")
            if message.get("kind") == "response" and usage:
                lines.append({"who": "usage", "text": f"{usage.get('input_tokens', 0)} in / "
                                                      f"{usage.get('output_tokens', 0)} out tokens"})
        out.append({"attempt": entry.get("attempt"), "status": entry.get("status"), "model": entry.get("model"),
                    "phase": entry.get("phase"), "item": entry.get("item"), "lines": lines})
    return out


def _part(part: Mapping[str, Any]) -> dict[str, Any]:
    kind = part.get("part_kind", "?")
    who = {"system-prompt": "system", "user-prompt": "user", "text": "assistant"}.get(kind)
    if who is not None:
        return {"who": who, "text": preview(part.get("content"), 2000)}
    if kind == "tool-call":
        return {"who": "tool call", "tool": part.get("tool_name"), "text": preview(part.get("args"), 1000)}
    if kind == "tool-return":
        return {"who": "tool result", "tool": part.get("tool_name"), "text": preview(part.get("content"), 1000)}
    if kind == "retry-prompt":
        return {"who": "retry", "tool": part.get("tool_name"), "text": preview(part.get("content"), 1000)}
    return {"who": kind, "text": preview(part.get("content", part), 1000)}
