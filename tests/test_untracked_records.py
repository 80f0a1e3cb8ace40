"""The records a run keeps for each of its steps are not tracked by Python's garbage collector.

The daemon holds, for every step of every run it keeps in memory, its StepState and StepSpec, two EventRecords
and two AuditEntries (and log lines): hundreds of thousands of objects for a few wide runs. Tracked, every full
collection walks all of them again, which cost a fan-out ~15 us of the daemon's CPU per step. They hold plain
data and never take part in a reference cycle, so they are declared `gc=False`; this checks it, for records made
in the daemon and for records decoded from the wire and the disk.
"""

from __future__ import annotations

import gc

import msgspec

from tagent_client.core.state import ErrorInfo, StepState, TaskState
from tagent_client.define.plan import StepKind, StepSpec
from tagent_client.wire.protocol import EventRecord, LogRecord
from tagentd.runs.run import AuditEntry


def test_per_step_records_are_untracked_when_made_and_when_decoded() -> None:
    """Given each record a run keeps per step, made with container fields filled in, when it is made and when it
    is decoded back from msgpack, then the garbage collector does not track it (its containers it still may)."""
    made = [
        StepState(name="s", output={"rows": [1, 2]}, items=[{"a": 1}], error=ErrorInfo(type="E", message="m")),
        TaskState(id="s[0]", step="s", output=[{"x": 1}]),
        StepSpec(name="s", kind=StepKind.FUNCTION, deps={"a": "hard"}, constraints=["c"], tools=["t"]),
        EventRecord(seq=1, ts=1.0, topic="step.completed", data={"run_id": "r", "result": {"n": [1]}}),
        AuditEntry(ts=1.0, who="daemon", what="step.completed", data={"result": [1]}),
        LogRecord(seq=1, ts=1.0, step="s", level="INFO", message="hello"),
    ]
    for record in made:
        assert not gc.is_tracked(record), type(record).__name__
        decoded = msgspec.msgpack.decode(msgspec.msgpack.encode(record), type=type(record))
        assert decoded == record
        assert not gc.is_tracked(decoded), f"decoded {type(record).__name__}"
