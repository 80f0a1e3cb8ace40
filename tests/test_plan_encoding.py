"""A run's plan is encoded once for all the records that hold it (issue 17: CPU per step of a fan-out).

Every run's Created record, and each snapshot of it, holds its whole plan: 2.7 MB for a 1 -> 5,000 -> 1 fan-out.
It was encoded again for each record, on the loop, at each run's start while its first step was already running,
and again for each snapshot. Now the runs of one file share one Plan (a worker hands back an equal plan for each
submit: `SharedPlans` keeps the first) and the run store encodes a Plan once (`records.encoded_plan`). The records
themselves are byte for byte what they were.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
from fake_executor import FakeExecutor, bare_driver
from test_together import fan_out

from tagent_client import Pipeline
from tagent_client.define.plan import Plan
from tagentd.executor.interface import PipelineCode
from tagentd.runs import records, submission
from tagentd.runs.records import Created, RunCheckpoint, checkpoint_of, encoded_plan

WHO = "uid=1000 pid=4242 (reported)"


def noop() -> None:
    return None


class FreshPlans(FakeExecutor):
    """An executor whose every load hands back a new Plan, decoded from the wire as a worker's answer is."""

    def __init__(self, plans: list[Plan]) -> None:
        super().__init__()
        self.plans = plans

    async def load(self, code: PipelineCode) -> Plan:
        return msgspec.msgpack.decode(msgspec.msgpack.encode(self.plans.pop(0)), type=Plan)


def test_the_runs_of_one_file_share_one_plan_until_the_file_gives_another(tmp_path: Path) -> None:
    async def scenario() -> None:
        # Given a run driver whose executor decodes a new Plan for every load: twice the same, then a changed one
        changed = Pipeline("fan")
        changed.step("only", fn=noop)
        plans = [fan_out(20).plan(), fan_out(20).plan(), changed.plan()]
        driver = bare_driver(tmp_path, durable=True)
        driver.executor = executor = FreshPlans(plans)
        executor.start()
        # When the same file is submitted twice, and then once more after its plan changed
        first = await driver.submit_source("/p/fan.py", "src", who=WHO)
        second = await driver.submit_source("/p/fan.py", "src", who=WHO)
        third = await driver.submit_source("/p/fan.py", "src", who=WHO)
        # Then the first two runs hold one Plan object, and the third its own, new plan
        assert second.plan is first.plan
        assert third.plan is not first.plan and [s.name for s in third.plan.steps] == ["only"]

    asyncio.run(scenario())


def test_a_plan_is_encoded_once_and_its_records_are_unchanged() -> None:
    # Given a run of a 1 -> 50 -> 1 fan-out
    run = submission.new_run(fan_out(50).plan(), path="/p/fan.py", source="src", target=None, params=None,
                             model=None, who=WHO)
    # When its Created record and a snapshot are encoded
    created = records.encoder.encode(Created(seq=1, checkpoint=checkpoint_of(run, 1)))
    snapshot = records.encoder.encode(checkpoint_of(run, 2))
    # Then both hold the plan as the one encoding kept for that Plan object
    assert encoded_plan(run.plan) is encoded_plan(run.plan)
    # And they are byte for byte the records written with the plan encoded in place, and read back the same
    whole = RunCheckpoint(wal_seq=1, source=run.source, plan=run.plan, state=run.state, memory=run.memory,
                          history=run.history, logs=run.logs, event_seq=run.event_seq)
    assert created == records.encoder.encode(Created(seq=1, checkpoint=whole))
    assert records.checkpoint_decoder.decode(snapshot).plan == run.plan
