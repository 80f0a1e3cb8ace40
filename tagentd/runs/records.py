"""The run store's records: the snapshot (`RunCheckpoint`), the WAL records, their codecs and their versions.

Pure data and functions (no files): checkpoint.py decides where and when they are
written and read. docs/checkpoints.md describes every field.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from pathlib import Path
from typing import Any

import msgspec

from tagent_client.core.engine import RunMachine
from tagent_client.core.state import RunState, RunStatus, StepState, TaskState
from tagent_client.define.plan import Plan
from tagent_client.errors import ConfigError
from tagent_client.wire.protocol import LogRecord
from tagentd.runs.run import AuditEntry, Run, RunSource

FORMAT = 1


class RunCheckpoint(msgspec.Struct, tag="run", kw_only=True):
    """A whole run: source snapshot, plan, state, memory, history and counters."""

    format: int = FORMAT
    wal_seq: int = 0
    source: RunSource
    plan: Plan
    state: RunState
    memory: dict[str, Any] = {}
    history: list[AuditEntry] = []
    logs: list[LogRecord] = []
    event_seq: int = 0


class Created(msgspec.Struct, tag="created", kw_only=True):
    format: int = FORMAT
    seq: int
    checkpoint: RunCheckpoint


class Delta(msgspec.Struct, tag="delta", kw_only=True):
    """What changed in one run since its previous record. `steps` holds steps added at run time too (their
    StepState carries their spec); `removed_steps` those taken out again (an adding step run again)."""

    format: int = FORMAT
    seq: int
    run_id: str
    status: RunStatus
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    rolled_back_from: RunStatus | None = None
    steps: dict[str, StepState] = {}
    removed_steps: list[str] = []
    tasks: dict[str, TaskState] = {}
    removed_tasks: list[str] = []
    memory: dict[str, Any] = {}
    history: list[AuditEntry] = []
    logs: list[LogRecord] = []
    event_seq: int = 0


class Removed(msgspec.Struct, tag="removed", kw_only=True):
    format: int = FORMAT
    seq: int
    run_id: str


WalRecord = Created | Delta | Removed


class _Version(msgspec.Struct):
    """Just the `format` of any record: read before the full decode, which a newer layout may fail."""

    format: int = 0


encoder = msgspec.msgpack.Encoder(enc_hook=lambda o: o.model_dump(mode="json"))
wal_decoder = msgspec.msgpack.Decoder(WalRecord)
checkpoint_decoder = msgspec.msgpack.Decoder(RunCheckpoint)
_version_decoder = msgspec.msgpack.Decoder(_Version)


def peek_format(payload: bytes) -> int:
    """The `format` field of an encoded record, or 0 if it has none (then it is simply undecodable)."""
    try:
        return _version_decoder.decode(payload).format
    except (msgspec.DecodeError, msgspec.ValidationError):
        return 0


def check_format(version: int, where: Path) -> None:
    if version > FORMAT:
        raise ConfigError(
            f"{where} was written by a newer tagentd (checkpoint format {version}, this one reads up to {FORMAT}); "
            f"upgrade tagentd or move the state dir aside"
        )


def record_run_id(record: WalRecord) -> str:
    """The run a WAL record is about."""
    return record.checkpoint.state.run_id if isinstance(record, Created) else record.run_id


def checkpoint_of(run: Run, seq: int) -> RunCheckpoint:
    """The whole run as a snapshot taken at WAL sequence `seq`, to be encoded: its `plan` is the plan's encoding
    (`encoded_plan`), which the encoder writes as it is; decoding gives a Plan back."""
    return RunCheckpoint(wal_seq=seq, source=run.source, plan=encoded_plan(run.plan), state=run.state,
                         memory=run.memory, history=run.history, logs=run.logs, event_seq=run.event_seq)


#: How many plans `encoded_plan` keeps encoded (the most recently used).
PLANS_KEPT = 16
_encoded_plans: OrderedDict[int, tuple[Plan, msgspec.Raw]] = OrderedDict()


def encoded_plan(plan: Plan) -> msgspec.Raw:
    """`plan` as `encoder` writes it, encoded once per Plan object rather than once per record that holds it.

    A run's Created record and each of its snapshots hold its plan, and the runs of one file share one Plan
    (`SharedPlans`), so a 1 -> 5,000 -> 1 fan-out's 2.7 MB plan is not encoded again on the loop when each of its
    runs starts. The bytes are the same (msgspec writes a Raw as it is), so records read back as before. Plans are
    frozen; the PLANS_KEPT most recently used are kept, each with its Plan (so its id is not reused meanwhile)."""
    key = id(plan)
    kept = _encoded_plans.get(key)
    if kept is not None and kept[0] is plan:
        _encoded_plans.move_to_end(key)
        return kept[1]
    raw = msgspec.Raw(encoder.encode(plan))
    _encoded_plans[key] = (plan, raw)
    if len(_encoded_plans) > PLANS_KEPT:
        _encoded_plans.popitem(last=False)
    return raw


def apply_delta(ckpt: RunCheckpoint, delta: Delta) -> None:
    """Bring `ckpt` forward by one Delta (replay)."""
    state = ckpt.state
    state.status, state.started_at, state.finished_at, state.error = (
        delta.status, delta.started_at, delta.finished_at, delta.error)
    state.rolled_back_from = delta.rolled_back_from
    state.steps.update(delta.steps)
    for step in delta.removed_steps:
        state.steps.pop(step, None)
    state.tasks.update(delta.tasks)
    for task in delta.removed_tasks:
        state.tasks.pop(task, None)
    ckpt.memory.update(delta.memory)
    ckpt.history.extend(delta.history)
    last_log = ckpt.logs[-1].seq if ckpt.logs else 0
    ckpt.logs.extend(line for line in delta.logs if line.seq > last_log)
    ckpt.event_seq = max(ckpt.event_seq, delta.event_seq)


def rebuild_run(ckpt: RunCheckpoint) -> Run:
    """The daemon's Run for a snapshot (a run that finished stays finished and announced)."""
    machine = RunMachine(ckpt.plan, ckpt.state, rng=random.Random())
    run = Run(ckpt.source, ckpt.plan, machine)
    run.memory = dict(ckpt.memory)
    run.history = list(ckpt.history)
    run.restore_counters(ckpt.event_seq, ckpt.logs)
    run.announced_finish = ckpt.state.status.finished
    return run


def replay(record: WalRecord, ckpts: dict[str, RunCheckpoint], applied: dict[str, int]) -> None:
    """Apply one WAL record to the checkpoints being recovered, unless a newer one (by `seq`) already was.

    `applied` is the newest sequence applied per run (a snapshot's `wal_seq` to begin with), so replaying
    records a snapshot already holds never repeats history; a Removed record drops the run.
    """
    if isinstance(record, Created):
        run_id = record.checkpoint.state.run_id
        if record.seq > applied.get(run_id, 0):
            ckpts[run_id] = record.checkpoint
            applied[run_id] = record.seq
    elif isinstance(record, Removed):
        ckpts.pop(record.run_id, None)
        applied.pop(record.run_id, None)
    else:
        ckpt = ckpts.get(record.run_id)
        if ckpt is None or record.seq <= applied.get(record.run_id, 0):
            return
        applied[record.run_id] = record.seq
        apply_delta(ckpt, record)
