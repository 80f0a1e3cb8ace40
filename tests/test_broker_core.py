"""The broker's pure core: mailboxes with leases and shared spaces with versions, without processes."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tagent_client.core.broker import BrokerCore, CoreSnapshot
from tagent_client.core.broker_records import MessageSent
from tagent_client.errors import InvalidRequest, MailboxFull, NotFound, is_retryable

pytestmark = pytest.mark.timeout(60)

A = ("run-a", "take", 1)
B = ("run-b", "take", 1)


def sent(core: BrokerCore, n: int, to: str = "reporter", sender: str = "s") -> list[str]:
    return [core.send(to, f"{sender}-{i}", sender, {"i": i}, now=float(i)).id for i in range(n)]


# -- mailboxes ---------------------------------------------------------------------------------------


def test_messages_are_leased_oldest_first_and_each_to_one_holder() -> None:
    # Given three messages in a mailbox
    core = BrokerCore()
    ids = sent(core, 3)
    # When two holders lease in turn
    got = [core.lease("reporter", A).id, core.lease("reporter", B).id, core.lease("reporter", A).id]
    # Then they get the messages in arrival order, none twice, and then nothing
    assert got == ids
    assert core.lease("reporter", B) is None


def test_a_released_message_comes_back_in_its_original_position() -> None:
    # Given A holds the first message and B the second
    core = BrokerCore()
    ids = sent(core, 4)
    core.lease("reporter", A)
    core.lease("reporter", B)
    # When A's attempt fails
    assert core.settle(A, succeeded=False).count == 1
    # Then the next lease gets the first message again (before the third), counted as a second delivery
    again = core.lease("reporter", A)
    assert again.id == ids[0] and again.deliveries == 2
    assert core.lease("reporter", A).id == ids[2]


def test_a_succeeded_attempt_acknowledges_its_leases_for_good() -> None:
    # Given A leased two messages
    core = BrokerCore(journal=True)
    ids = sent(core, 3)
    core.lease("reporter", A)
    core.lease("reporter", A)
    core.take_journal()
    # When A's attempt succeeds
    assert core.settle(A, succeeded=True).count == 2
    # Then they are gone, the third remains, and the removal is journalled
    assert list(core.mailboxes["reporter"].messages) == [ids[2]]
    assert [type(r).__name__ for r in core.take_journal()] == ["MessagesAcked"]


def test_a_repeated_message_id_is_dropped_even_after_it_was_acknowledged() -> None:
    # Given a message that was sent, received and acknowledged
    core = BrokerCore()
    core.send("reporter", "m1", "s", 1, 0.0)
    core.lease("reporter", A)
    core.settle(A, succeeded=True)
    # When the same id is sent again (a sender re-run after a crash)
    again = core.send("reporter", "m1", "s", 1, 1.0)
    # Then it is a duplicate: nothing is queued
    assert again is None
    assert len(core.mailboxes["reporter"]) == 0


def test_the_memory_of_seen_ids_is_bounded() -> None:
    # Given a core that remembers 10 ids
    core = BrokerCore(seen_max=10)
    for i in range(30):
        core.send("r", f"m{i}", "s", i, 0.0)
        core.lease("r", A)
        core.settle(A, succeeded=True)
    # Then it keeps only the newest 10, oldest forgotten first
    assert list(core.mailboxes["r"].seen) == [f"m{i}" for i in range(20, 30)]


def test_a_full_mailbox_refuses_with_a_clear_retryable_error() -> None:
    # Given a mailbox at its limit
    core = BrokerCore(mailbox_max=3)
    sent(core, 3)
    # When one more message is sent
    with pytest.raises(MailboxFull) as caught:
        core.send("reporter", "one-more", "s", None, 0.0)
    # Then the error names the mailbox and its size and can be retried
    assert "mailbox 'reporter' is full (3 messages)" in caught.value.message
    assert is_retryable(caught.value)


def test_explicit_ack_removes_only_named_messages() -> None:
    core = BrokerCore()
    ids = sent(core, 3)
    first = core.lease("reporter", A)
    assert core.ack("reporter", [first.id, "nope"]) == [first.id]
    # A later settle of A has nothing left to acknowledge
    assert core.settle(A, succeeded=True).count == 0
    assert list(core.mailboxes["reporter"].messages) == ids[1:]


# -- dead letters ------------------------------------------------------------------------------------


def fail_attempts(core: BrokerCore, times: int, error: str = "ValueError: bad payload") -> list[str]:
    """`times` attempts in turn lease the oldest message and fail; returns the ids they got."""
    got = []
    for attempt in range(1, times + 1):
        holder = ("run-a", "take", attempt)
        got.append(core.lease("reporter", holder).id)
        core.settle(holder, succeeded=False, error=f"{error} ({attempt})", now=100.0 + attempt)
    return got


def test_a_poison_message_becomes_a_dead_letter_after_max_deliveries_and_the_next_one_is_delivered() -> None:
    # Given a poison message ahead of two good ones, in a mailbox allowing the default 5 deliveries
    core = BrokerCore(journal=True)
    ids = sent(core, 3)
    # When five attempts in turn receive it and fail
    assert fail_attempts(core, 5) == [ids[0]] * 5
    # Then it is a dead letter with its count and the last error, and the next lease gets the second message
    [letter] = core.dead_letters("reporter")
    assert (letter.message.id, letter.message.failures, letter.error, letter.dead_at) == (
        ids[0], 5, "ValueError: bad payload (5)", 105.0)
    assert core.lease("reporter", A).id == ids[1]
    assert list(core.mailboxes["reporter"].messages) == ids[1:]
    journal = [type(r).__name__ for r in core.take_journal()]
    assert journal.count("DeliveryFailed") == 5 and journal.count("MessageDead") == 1


def test_a_released_lease_without_an_error_is_not_a_failed_delivery() -> None:
    # Given a mailbox allowing 2 deliveries and a message leased and given back 3 times without an error (cancelled)
    core = BrokerCore(max_deliveries=2)
    ids = sent(core, 1)
    for attempt in range(3):
        core.lease("reporter", ("run-a", "take", attempt))
        core.settle(("run-a", "take", attempt), succeeded=False)
    # Then it is still deliverable: only failed attempts count
    assert core.dead_letters("reporter") == []
    assert core.lease("reporter", A).id == ids[0]


def test_max_deliveries_can_differ_per_mailbox() -> None:
    core = BrokerCore(max_deliveries=5, max_deliveries_of={"reporter": 1})
    ids = sent(core, 1)
    fail_attempts(core, 1)
    assert [d.message.id for d in core.dead_letters("reporter")] == ids


def test_a_requeued_dead_letter_is_offered_first_again_with_fresh_counts_and_a_dropped_one_stays_a_duplicate() -> None:
    # Given two dead letters (max 1 delivery) and one good message
    core = BrokerCore(max_deliveries=1, journal=True)
    ids = sent(core, 3)
    fail_attempts(core, 2)
    assert [d.message.id for d in core.dead_letters("reporter")] == ids[:2]
    # When the first is requeued and the second dropped
    assert core.requeue("reporter", [ids[0]]) == [ids[0]]
    assert core.drop_dead("reporter", [ids[1]]) == [ids[1]]
    # Then the first is leased before the good one, as a first delivery; the second is gone for good
    again = core.lease("reporter", A)
    assert (again.id, again.deliveries, again.failures) == (ids[0], 1, 0)
    assert core.dead_letters("reporter") == []
    assert core.send("reporter", ids[1], "s", None, 9.0) is None
    assert core.mailboxes["reporter"].oldest().id == ids[0]


def test_an_unknown_dead_letter_id_is_refused_and_nothing_changes() -> None:
    core = BrokerCore(max_deliveries=1)
    ids = sent(core, 1)
    fail_attempts(core, 1)
    with pytest.raises(NotFound) as caught:
        core.requeue("reporter", [ids[0], "nope"])
    assert caught.value.message.startswith("mailbox 'reporter' has no dead letter 'nope' (dead letters: s-0)")
    assert "tagent mailbox dead reporter" in caught.value.message
    with pytest.raises(NotFound):
        core.drop_dead("elsewhere", ["x"])
    assert [d.message.id for d in core.dead_letters("reporter")] == ids
    assert core.requeue("reporter", [], every=True) == ids


def test_dead_letters_count_against_the_mailbox_limit_and_the_error_says_so() -> None:
    core = BrokerCore(mailbox_max=2, max_deliveries=1)
    sent(core, 2)
    fail_attempts(core, 1)
    with pytest.raises(MailboxFull) as caught:
        core.send("reporter", "one-more", "s", None, 0.0)
    assert ("mailbox 'reporter' is full (2 messages, 1 of them dead letters); look at them with "
            "'tagent mailbox dead reporter'") in caught.value.message


def test_names_must_be_non_empty_strings() -> None:
    core = BrokerCore()
    with pytest.raises(InvalidRequest):
        core.send("", "m", "s", None, 0.0)
    with pytest.raises(InvalidRequest):
        core.put("s", "", 1, "w", 0.0)


# -- spaces ------------------------------------------------------------------------------------------


def test_versions_start_at_one_and_grow_with_each_write() -> None:
    core = BrokerCore()
    assert core.put("research", "acme", {"score": 1}, "w", 0.0).version == 1
    assert core.put("research", "acme", {"score": 2}, "w", 0.0).version == 2
    entry = core.get("research", "acme", "r", 0.0)
    assert (entry.value, entry.version) == ({"score": 2}, 2)
    assert core.get("research", "missing", "r", 0.0) is None


def test_cas_writes_only_at_the_expected_version() -> None:
    core = BrokerCore()
    ok, entry = core.cas("s", "counter", 1, 0, "w", 0.0)  # 0: only if absent
    assert ok and entry.version == 1
    ok, current = core.cas("s", "counter", 5, 0, "w", 0.0)
    assert not ok and current.version == 1 and current.value == 1
    ok, entry = core.cas("s", "counter", 2, 1, "w", 0.0)
    assert ok and (entry.value, entry.version) == (2, 2)


def test_a_recreated_key_continues_its_versions_so_cas_cannot_be_fooled() -> None:
    # Given a key written twice, then deleted
    core = BrokerCore()
    core.put("s", "k", "a", "w", 0.0)
    core.put("s", "k", "b", "w", 0.0)
    assert core.delete("s", "k", "w", 0.0) is not None
    # When it is written again
    entry = core.put("s", "k", "c", "w", 0.0)
    # Then its version continues, so a CAS based on the old version 2 fails
    assert entry.version == 3
    assert core.cas("s", "k", "x", 2, "w", 0.0)[0] is False


def test_keys_are_listed_sorted_by_prefix_and_every_access_is_logged() -> None:
    core = BrokerCore(log_max=3)
    for key in ("b/2", "a/1", "b/1"):
        core.put("s", key, 1, "writer", 0.0)
    core.get("s", "a/1", "reader", 1.0)
    assert core.spaces["s"].keys("b/") == ["b/1", "b/2"]
    log = list(core.spaces["s"].log)
    assert [(e.who, e.op, e.key) for e in log] == [("writer", "put", "a/1"), ("writer", "put", "b/1"), ("reader", "get", "a/1")]


# -- durability: journal replay and snapshots rebuild the same state ----------------------------------------


def state_of(core: BrokerCore) -> bytes:
    snapshot = core.snapshot()
    for box in snapshot.mailboxes:
        for message in box.messages:
            message.deliveries = 0
    return msgspec.msgpack.encode(snapshot)


operations = st.lists(
    st.one_of(
        st.tuples(st.just("send"), st.sampled_from(["x", "y"]), st.integers(0, 20)),
        st.tuples(st.just("lease"), st.sampled_from(["x", "y"]), st.sampled_from([A, B])),
        st.tuples(st.just("settle"), st.sampled_from([A, B]), st.booleans()),
        st.tuples(st.just("fail"), st.sampled_from([A, B]), st.none()),
        st.tuples(st.just("requeue"), st.sampled_from(["x", "y"]), st.booleans()),
        st.tuples(st.just("put"), st.sampled_from(["k1", "k2"]), st.integers(-1000, 1000)),
        st.tuples(st.just("cas"), st.sampled_from(["k1", "k2"]), st.integers(0, 4)),
        st.tuples(st.just("delete"), st.sampled_from(["k1", "k2"]), st.none()),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(operations)
def test_replaying_the_journal_or_restoring_a_snapshot_rebuilds_the_same_state(ops: list[tuple]) -> None:
    # Given any sequence of operations on a journalling core
    live = BrokerCore(journal=True, seen_max=15, max_deliveries=2)
    for op in ops:
        kind = op[0]
        if kind == "send":
            live.send(op[1], f"m{op[2]}", "s", op[2], 0.0)
        elif kind == "lease":
            live.lease(op[1], op[2])
        elif kind == "settle":
            live.settle(op[1], op[2])
        elif kind == "fail":
            live.settle(op[1], False, "boom", 1.0)
        elif kind == "requeue":  # every dead letter back, or dropped
            (live.requeue if op[2] else live.drop_dead)(op[1], [], every=True)
        elif kind == "put":
            live.put("space", op[1], op[2], "w", 0.0)
        elif kind == "cas":
            live.cas("space", op[1], "v", op[2], "w", 0.0)
        else:
            live.delete("space", op[1], "w", 0.0)
    # When a fresh core replays its journal, and another restores a snapshot of the first
    replayed = BrokerCore(seen_max=15, max_deliveries=2)
    for record in live.take_journal():
        replayed.apply(msgspec.msgpack.decode(msgspec.msgpack.encode(record), type=type(record)))
    restored = BrokerCore(seen_max=15, max_deliveries=2)
    restored.restore(msgspec.msgpack.decode(msgspec.msgpack.encode(live.snapshot()), type=CoreSnapshot))
    # Then both hold the same messages (all unleased), entries, tombstones, logs and seen ids as the live one
    for rebuilt in (replayed, restored):
        assert state_of(rebuilt) == state_of(live)
        for name, box in rebuilt.mailboxes.items():
            assert box.unleased == len(live.mailboxes[name])


def test_a_replayed_duplicate_send_is_ignored() -> None:
    core = BrokerCore(journal=True)
    core.send("r", "m", "s", 1, 0.0)
    record = core.take_journal()[0]
    assert isinstance(record, MessageSent)
    fresh = BrokerCore()
    fresh.apply(record)
    fresh.apply(record)
    assert len(fresh.mailboxes["r"]) == 1
