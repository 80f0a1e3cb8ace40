"""The daemon's broker state (tagentd/broker/state.py) and its durability (tagentd/broker/store.py), without processes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import pytest

from tagent_client.core.broker_records import AccessLogged
from tagent_client.define.plan import Plan, StepKind, StepSpec
from tagent_client.errors import ConfigError, PermissionDenied
from tagent_client.wire.protocol_broker import StepRef
from tagentd.broker import store as broker_store
from tagentd.broker.state import Broker, Registration
from tagentd.broker.store import BrokerCheckpoint, BrokerStore, Logged
from tagentd.runs.run import RunSource
from tagentd.storage.records import frame, write_atomic

pytestmark = pytest.mark.timeout(60)


def new_broker(**kw: object) -> Broker:
    return Broker(mailbox_max=kw.pop("mailbox_max", 1000), trigger_max_concurrent=kw.pop("limit", 2), **kw)  # type: ignore[arg-type]


def step_of(pipeline: str) -> StepRef:
    return StepRef(run_id="r1", pipeline=pipeline, step="s", task="s", attempt=1)


def registration(name: str = "reporter", triggers: tuple[str, ...] = ("research.",)) -> Registration:
    plan = Plan(name=name, steps=[StepSpec(name="s", kind=StepKind.FUNCTION)], triggers=list(triggers))
    return Registration(pipeline=name, plan=plan, triggers=list(triggers),
                        source=RunSource(path="/p.py", source="x = 1", source_hash="h"))


def fill(broker: Broker) -> None:
    core = broker.core
    for i in range(5):
        core.send("reporter", f"m{i}", "s", {"i": i}, float(i))
    core.lease("reporter", ("r", "t", 1))
    core.settle(("r", "t", 1), succeeded=True)
    core.put("research", "acme", {"score": 4}, "w", 1.0)
    core.put("research", "gone", 1, "w", 1.0)
    core.delete("research", "gone", "w", 2.0)
    core.get("research", "acme", "reader", 3.0)
    broker.grant("secret", ["a", "b"], replace=False)
    broker.register(registration())
    broker.enqueue("reporter", "research.done", {"n": 1}, 4.0, 7)


def picture(broker: Broker) -> bytes:
    return msgspec.msgpack.encode(broker.snapshot())


def reload(state_dir: Path) -> tuple[Broker, BrokerStore]:
    fresh = new_broker()
    store = BrokerStore(state_dir, fresh)
    store.load()
    return fresh, store


# -- durability ---------------------------------------------------------------------------------------


def test_what_a_flush_wrote_comes_back_after_a_restart(tmp_path: Path) -> None:
    # Given a broker with messages, spaces, an allow-list, a registration and a queued trigger, flushed
    broker = new_broker()
    store = BrokerStore(tmp_path, broker)
    fill(broker)
    asyncio.run(store.flush())
    store.close()
    # When a new broker loads the state dir
    fresh, again = reload(tmp_path)
    # Then it is the same broker, and nothing is left to write
    assert picture(fresh) == picture(broker)
    assert again.problems == [] and fresh.journal == []
    assert [m.id for m in fresh.core.iter_messages("reporter")] == ["m1", "m2", "m3", "m4"]


def test_reads_are_logged_without_an_fsync_of_their_own(tmp_path: Path) -> None:
    broker = new_broker()
    store = BrokerStore(tmp_path, broker)
    broker.core.put("s", "k", 1, "w", 0.0)
    asyncio.run(store.flush())
    synced = store.stats["flushes"]
    # When only reads happened since
    broker.core.get("s", "k", "reader", 1.0)
    asyncio.run(store.flush())
    # Then the record was appended but not fsynced; it still loads
    assert store.stats["flushes"] == synced
    store.close()
    fresh, _ = reload(tmp_path)
    assert [e.op for e in fresh.core.spaces["s"].log] == ["put", "get"]


def flushed_broker_and_a_record(tmp_path: Path) -> tuple[Broker, Path, bytes]:
    """A filled broker flushed to `tmp_path` and closed, its last log segment, and one more framed record."""
    broker = new_broker()
    store = BrokerStore(tmp_path, broker)
    fill(broker)
    asyncio.run(store.flush())
    store.close()
    segment = sorted((tmp_path / "broker").glob("*.wal"))[-1]
    record = frame(msgspec.msgpack.encode(Logged(seq=999, record=AccessLogged(
        space="x", log=broker.core.spaces["research"].log[0]))))
    return broker, segment, record


def test_a_torn_tail_is_cut_off_and_everything_before_it_loads(tmp_path: Path) -> None:
    # Given a flushed broker whose log then got half a record appended (a crash mid-write)
    broker, segment, whole = flushed_broker_and_a_record(tmp_path)
    with segment.open("ab") as f:
        f.write(whole[: len(whole) // 2])
    # When it loads
    fresh, again = reload(tmp_path)
    # Then the torn record is gone, the rest is there, and the cut is reported
    assert picture(fresh) == picture(broker)
    assert len(again.problems) == 1 and "torn record" in again.problems[0]


def test_records_before_a_damaged_one_stay_on_disk_after_the_segment_is_moved_aside(tmp_path: Path) -> None:
    # Given a flushed broker whose log then got a damaged record followed by a whole one: a later write reached the
    # disk and the one before it did not (a power loss while two writes were in flight, docs/checkpoints.md)
    broker, segment, later = flushed_broker_and_a_record(tmp_path)
    with segment.open("ab") as f:
        f.write(b"\0" * 64 + later)
    # When it loads (the segment is moved aside, what came before the damage is kept), and then loads once more,
    # as after a second crash before anything else was written
    first, again = reload(tmp_path)
    second, _ = reload(tmp_path)
    # Then everything before the damage is there both times, and the record after it neither time; the damage was
    # reported once (before, the second load lost everything the moved segment held)
    assert picture(first) == picture(broker) == picture(second)
    assert len(again.problems) == 1 and "corrupt" in again.problems[0]


def test_a_big_log_is_snapshotted_and_its_segments_deleted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a store that rotates after 2 KiB
    monkeypatch.setattr(broker_store, "SEGMENT_BYTES", 2048)
    broker = new_broker()
    store = BrokerStore(tmp_path, broker)
    # When many writes are flushed one by one
    for i in range(100):
        broker.core.put("s", f"k{i % 7}", "x" * 50, "w", float(i))
        asyncio.run(store.flush())
    store.close()
    # Then a snapshot exists, few segments remain, and a reload gives the same state
    assert (tmp_path / "broker" / "snapshot.ckpt").exists()
    assert store.stats["snapshots"] >= 1
    assert len(list((tmp_path / "broker").glob("*.wal"))) <= 1
    fresh, _ = reload(tmp_path)
    assert picture(fresh) == picture(broker)


def test_a_snapshot_from_a_newer_tagentd_is_refused(tmp_path: Path) -> None:
    (tmp_path / "broker").mkdir()
    payload = msgspec.msgpack.encode(BrokerCheckpoint(format=99, seq=1, state=new_broker().snapshot()))
    write_atomic(tmp_path / "broker" / "snapshot.ckpt", payload)
    with pytest.raises(ConfigError, match="newer tagentd"):
        reload(tmp_path)


# -- allow-lists -------------------------------------------------------------------------------------------


def test_a_step_of_a_pipeline_not_on_the_allow_list_is_refused_clearly() -> None:
    # Given a space open (by config) to "collector" and (at run time) to "reporter"
    broker = new_broker(config_allow={"research": ["collector"]})
    broker.grant("research", ["reporter"], replace=False)
    # Then steps of those pipelines and clients pass, and a step of "intruder" gets a one-line explanation
    broker.check_access("research", step_of("collector"), "get", "k")
    broker.check_access("research", step_of("reporter"), "put", "k")
    broker.check_access("research", None, "put", "k")
    with pytest.raises(PermissionDenied) as caught:
        broker.check_access("research", step_of("intruder"), "put", "k")
    message = caught.value.message
    assert [(e.op, e.ok) for e in broker.core.spaces["research"].log] == [("put", False)]
    assert "space 'research' is restricted to pipelines collector, reporter" in message
    assert "pipeline 'intruder'" in message and "tagent space allow research intruder" in message


def test_an_open_space_stays_open_and_replace_with_nothing_lifts_a_granted_list() -> None:
    broker = new_broker()
    broker.check_access("open", step_of("anyone"), "get")
    broker.grant("s", ["a"], replace=False)
    assert broker.allowed("s") == {"a"}
    broker.grant("s", [], replace=True)
    assert broker.allowed("s") is None


# -- triggers -------------------------------------------------------------------------------------------------


def test_triggers_match_by_prefix_but_never_the_pipeline_the_event_came_from() -> None:
    broker = new_broker()
    broker.register(registration("reporter", ("research.",)))
    assert broker.match("research.company_done", None) == ["reporter"]
    assert broker.match("research.company_done", "reporter") == []
    assert broker.match("other.topic", None) == []


def test_queued_events_start_runs_only_up_to_the_concurrency_limit() -> None:
    # Given 5 queued events for a pipeline limited to 2 triggered runs at once
    broker = new_broker(limit=2)
    broker.register(registration())
    for i in range(5):
        broker.enqueue("reporter", "research.x", {"i": i}, 0.0, i)
    # When runs start for what may start
    first = broker.startable()
    for n, item in enumerate(first):
        broker.started(item, f"run{n}")
    # Then 2 start, in order; the rest wait until one ends
    assert [i.data["i"] for i in first] == [0, 1]
    assert broker.startable() == []
    broker.run_ended("reporter", "run0")
    assert [i.data["i"] for i in broker.startable()] == [2]


def test_a_trigger_whose_run_exists_is_not_started_again_after_a_crash(tmp_path: Path) -> None:
    # Given a queued event popped to start a run, whose TriggerStarted was never written (crash)
    broker = new_broker()
    store = BrokerStore(tmp_path, broker)
    broker.register(registration())
    item = broker.enqueue("reporter", "research.x", None, 0.0, 1)
    other = broker.enqueue("reporter", "research.y", None, 0.0, 2)
    asyncio.run(store.flush())
    store.close()
    # When the state is loaded and squared with the runs that exist (the run of `item` was created)
    fresh, _ = reload(tmp_path)
    assert fresh.forget_started({item.id}) == 1
    # Then only the other event is still queued
    assert [i.id for q in fresh.queue.values() for i in q] == [other.id]


def test_unregister_drops_the_registration_and_its_queue_durably(tmp_path: Path) -> None:
    broker = new_broker()
    store = BrokerStore(tmp_path, broker)
    broker.register(registration())
    broker.enqueue("reporter", "research.x", None, 0.0, 1)
    assert broker.unregister("reporter") == 1
    asyncio.run(store.flush())
    store.close()
    fresh, _ = reload(tmp_path)
    assert fresh.registrations == {} and not any(fresh.queue.values())
