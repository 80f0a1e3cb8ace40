"""tagentd.executor.limits: daemon-wide permits for LLM requests, without processes (every call takes `now`)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tagentd.executor.limits import EndpointLimits, Limits, TokenBucket

pytestmark = pytest.mark.timeout(30)

W1, W2 = b"w1", b"w2"


def limits(**kw: float) -> Limits:
    return Limits({"local": EndpointLimits(**kw)}, now=0.0)


def test_max_concurrent_grants_up_to_the_limit_then_one_per_release_in_order() -> None:
    """Given max_concurrent 3, when 5 requests arrive, then 3 are granted and each release lets the oldest waiter in."""
    gate = limits(max_concurrent=3)

    granted = [k for i in range(5) for k in gate.request((W1, i), "local", 0, now=0.0)]

    assert granted == [(W1, 0), (W1, 1), (W1, 2)]
    assert gate.release((W1, 1), now=1.0) == [(W1, 3)]
    assert gate.release((W1, 0), now=1.0) == [(W1, 4)]
    assert gate.wake_at(1.0) is None  # only a release can free a slot


def test_requests_per_minute_is_a_bucket_that_refills_over_time() -> None:
    """Given 2 requests a minute, when 3 arrive at once, then 2 go, and the third goes 30 s later (poll)."""
    gate = limits(requests_per_minute=2)

    assert gate.request((W1, 1), "local", 0, 0.0) + gate.request((W1, 2), "local", 0, 0.0) == [(W1, 1), (W1, 2)]
    assert gate.request((W1, 3), "local", 0, 0.0) == []

    assert gate.wake_at(0.0) == pytest.approx(30.0)
    assert gate.poll(29.0) == []
    assert gate.poll(30.0) == [(W1, 3)]


def test_tokens_per_minute_charges_the_estimate_and_settles_to_the_real_count() -> None:
    """Given 1000 tokens a minute, when a 600-token request holds the bucket, then a second waits; when the first
    turns out to have used 100, then the refund lets the second go at once."""
    gate = limits(tokens_per_minute=1000)

    assert gate.request((W1, 1), "local", 600, 0.0) == [(W1, 1)]
    assert gate.request((W2, 1), "local", 600, 0.0) == []

    assert gate.release((W1, 1), 0.0, used_tokens=100) == [(W2, 1)]


def test_a_request_bigger_than_the_whole_bucket_waits_for_a_full_bucket_then_goes_into_debt() -> None:
    """Given 100 tokens a minute, when a 500-token request arrives on a full bucket, then it goes (debt); the next
    waits until the debt is paid off."""
    gate = limits(tokens_per_minute=100)

    assert gate.request((W1, 1), "local", 500, 0.0) == [(W1, 1)]
    assert gate.request((W1, 2), "local", 10, 0.0) == []
    assert gate.wake_at(0.0) == pytest.approx((400 + 10) / (100 / 60))


def test_retry_after_pauses_the_endpoint_for_everyone() -> None:
    """Given a request that got a 429 with Retry-After 5, when it is released, then nobody is granted for 5 s."""
    gate = limits(max_concurrent=2)
    gate.request((W1, 1), "local", 0, 0.0)

    assert gate.release((W1, 1), 10.0, retry_after=5.0) == []
    assert gate.request((W2, 1), "local", 0, 10.0) == []
    assert gate.wake_at(10.0) == pytest.approx(15.0)
    assert gate.poll(15.0) == [(W2, 1)]


def test_asking_again_regrants_a_held_permit_and_ignores_a_waiting_one() -> None:
    """Given a held and a waiting permit, when their requests are re-sent, then the held one is granted again
    (its grant may have been lost) and the waiting one is not queued twice."""
    gate = limits(max_concurrent=1)
    gate.request((W1, 1), "local", 0, 0.0)
    gate.request((W2, 1), "local", 0, 0.0)

    assert gate.request((W1, 1), "local", 0, 1.0) == [(W1, 1)]
    assert gate.request((W2, 1), "local", 0, 1.0) == []
    assert gate.stats(1.0)["local"] == {"in_flight": 1, "waiting": 1, "paused_s": 0.0}


def test_a_worker_that_stops_listing_a_permit_or_disappears_gives_it_back() -> None:
    """Given W1 holding a permit it no longer lists and W2 holding one, when W1's heartbeat comes and then W2
    is gone, then both permits return and the waiters get them."""
    gate = limits(max_concurrent=2)
    for key in [(W1, 1), (W2, 1), (b"w3", 1), (b"w3", 2)]:
        gate.request(key, "local", 0, 0.0)

    assert gate.keep_only(W1, outstanding=[], now=1.0) == [(b"w3", 1)]
    assert gate.drop_workers(alive={W1, b"w3"}, now=2.0) == [(b"w3", 2)]


def test_a_waiting_request_can_be_withdrawn_and_unknown_endpoints_are_not_limited() -> None:
    """Given a queued request, when it is released before its grant, then it leaves the queue; a request to an
    endpoint with no limits is granted at once."""
    gate = limits(max_concurrent=1)
    gate.request((W1, 1), "local", 0, 0.0)
    gate.request((W1, 2), "local", 0, 0.0)

    assert gate.release((W1, 2), 0.0) == []
    assert gate.release((W1, 1), 0.0) == []
    assert gate.request((W1, 3), "elsewhere", 0, 0.0) == [(W1, 3)]


def test_token_bucket_never_holds_more_than_a_minute() -> None:
    """Given a 60/min bucket left alone for an hour, then it holds 60, not 3600."""
    bucket = TokenBucket(60, now=0.0)
    bucket.take(60, 0.0)

    assert bucket.wait(60, 3600.0) == 0.0
    assert bucket.level == 60


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["ask", "done", "beat"]), st.integers(0, 2), st.integers(0, 7)), max_size=60))
def test_never_more_permits_held_than_max_concurrent(ops: list[tuple[str, int, int]]) -> None:
    """Given any interleaving of requests, releases and heartbeats from 3 workers, then at most 3 permits are held."""
    gate = limits(max_concurrent=3)
    held: set[tuple[bytes, int]] = set()
    now = 0.0
    for op, worker, req in ops:
        now += 0.1
        key = (f"w{worker}".encode(), req)
        if op == "ask":
            held |= set(gate.request(key, "local", 0, now))
        elif op == "done":
            held.discard(key)
            held |= set(gate.release(key, now))
        else:
            mine = {k[1] for k in held if k[0] == key[0] and k[1] != req}
            held = {k for k in held if k[0] != key[0] or k[1] in mine} | set(gate.keep_only(key[0], mine, now))
        assert len(held) <= 3
        assert len(gate.gates["local"].held) <= 3
