"""The circuit breaker's state machine (tagent_client.core.breaker), its settings, and `ctx.breaker` in-process.

A fake clock drives every transition: no sleeping, no processes.
"""

from __future__ import annotations

import asyncio
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tagent_client import Pipeline
from tagent_client.core.breaker import Breaker, BreakerRule, State
from tagent_client.core.engine import RunMachine
from tagent_client.core.events import StepFailed, TimerFired
from tagent_client.core.state import ErrorInfo
from tagent_client.errors import ERRORS, EXIT_CODES, CircuitOpen, error_from_wire, is_retryable, retry_after_of
from tagent_client.run.breakers import BreakerRegistry, BreakerRules, BreakerSettings, LocalBreakers, StepBreaker
from tagent_client.run.llm import EndpointSettings

RULE = BreakerRule(failures=3, window=10.0, cooldown=5.0)


def opened(now: float = 0.0) -> Breaker:
    """A breaker that three failures at `now` have just opened."""
    breaker = Breaker("svc", RULE)
    for ticket in range(3):
        breaker.failed(ticket, breaker.admit(ticket, now).generation, now)
    assert breaker.state is State.OPEN
    return breaker


def test_failures_within_the_window_open_the_breaker_and_older_ones_are_forgotten() -> None:
    # Given a closed breaker (3 failures within 10 s open it)
    breaker = Breaker("svc", RULE)
    # When two calls fail, and a third fails 10 s after the first
    for ticket, at in ((1, 0.0), (2, 5.0), (3, 10.0)):
        breaker.failed(ticket, breaker.admit(ticket, at).generation, at)
    # Then the first has left the window: still closed, with 2 failures counted
    assert breaker.state is State.CLOSED and breaker.failures(10.0) == 2
    # When one more fails inside the window, then it opens and says so once
    breaker.failed(4, breaker.admit(4, 11.0).generation, 11.0)
    assert breaker.state is State.OPEN
    assert [(c.state, c.failures, c.reopens_in) for c in breaker.take_changes()] == [(State.OPEN, 3, 5.0)]


def test_successes_do_not_clear_failures_while_closed() -> None:
    breaker = Breaker("svc", RULE)
    for ticket in range(5):
        verdict = breaker.admit(ticket, 1.0)
        (breaker.failed if ticket % 2 == 0 else breaker.succeeded)(ticket, verdict.generation, 1.0)
    assert breaker.state is State.OPEN


def test_an_open_breaker_refuses_every_call_with_a_retryable_error_until_the_cooldown() -> None:
    # Given a breaker opened at t=0 (cooldown 5 s)
    breaker = opened()
    # When a call asks at t=4.5, then it is refused with CircuitOpen: retryable, after the time left
    verdict = breaker.admit("late", 4.5)
    assert not verdict.allowed and isinstance(verdict.refusal, CircuitOpen)
    assert is_retryable(verdict.refusal) and verdict.refusal.retry_after == pytest.approx(0.5)
    assert retry_after_of(verdict.refusal) == pytest.approx(0.5)
    assert "'svc' is open (3 failure(s) within 10s)" in verdict.refusal.message
    assert "half-opens in 0.5s" in verdict.refusal.message and "tagentd.toml" in verdict.refusal.message


def test_half_open_lets_exactly_one_probe_through_and_its_success_closes_it() -> None:
    # Given a breaker whose cooldown is over
    breaker = opened()
    breaker.take_changes()
    # When three calls ask, then only the first goes (the probe); asking again for it gives the same answer
    first, second, again = breaker.admit("a", 5.0), breaker.admit("b", 5.0), breaker.admit("a", 5.1)
    assert first.allowed and first.probe and again.allowed and again.probe
    assert not second.allowed and second.refusal is not None and second.refusal.retry_after is None
    assert "half-open" in second.refusal.message
    # When the probe succeeds, then it is closed again with nothing counted, and every call goes
    breaker.succeeded("a", first.generation, 5.2)
    assert breaker.state is State.CLOSED and breaker.failures(5.2) == 0
    assert breaker.admit("b", 5.3).allowed
    assert [c.state for c in breaker.take_changes()] == [State.HALF_OPEN, State.CLOSED]


def test_a_failed_probe_opens_it_for_another_cooldown_and_a_lost_probe_frees_the_slot() -> None:
    breaker = opened()
    probe = breaker.admit("a", 5.0)
    # When the probe is abandoned (cancelled, its worker died), then the next call is the probe
    breaker.abandoned("a")
    assert breaker.admit("b", 5.1).probe
    # When that probe fails, then it is open until t=10.2
    breaker.failed("b", probe.generation, 5.2)
    assert breaker.state is State.OPEN and breaker.reopens_in(5.2) == pytest.approx(5.0)
    assert not breaker.admit("c", 10.1).allowed and breaker.admit("c", 10.2).probe


def test_outcomes_of_calls_admitted_before_the_breaker_opened_or_closed_are_ignored() -> None:
    # Given a call admitted while closed that is still out when the breaker opens and recovers
    breaker = Breaker("svc", RULE)
    slow = breaker.admit("slow", 0.0)
    for ticket in range(3):
        breaker.failed(ticket, breaker.admit(ticket, 0.0).generation, 0.0)
    probe = breaker.admit("p", 5.0)
    breaker.succeeded("p", probe.generation, 5.0)
    # When its failure finally arrives (three times over), then the recovered breaker does not count it
    for _ in range(3):
        breaker.failed("slow", slow.generation, 6.0)
    assert breaker.state is State.CLOSED and breaker.failures(6.0) == 0


def test_zero_failures_means_the_breaker_never_opens() -> None:
    breaker = Breaker("svc", BreakerRule(failures=0))
    for ticket in range(100):
        breaker.failed(ticket, breaker.admit(ticket, 0.0).generation, 0.0)
    assert breaker.state is State.CLOSED


#: Rules small enough that random sequences go through every state often; waits around their window and cooldown.
SMALL = st.sampled_from([BreakerRule(failures=2, window=3.0, cooldown=2.0), BreakerRule(failures=1, window=3.0, cooldown=2.0)])
OPS = st.lists(st.tuples(st.sampled_from(["admit", "admit", "ok", "fail", "fail", "drop", "wait"]), st.integers(0, 7),
                         st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.0, 3.5])), max_size=100)


@settings(max_examples=1000, deadline=None)
@given(OPS, SMALL)
def test_property_the_breaker_follows_its_rule_for_any_sequence_of_calls(ops: list[tuple[str, int, float]],
                                                                          rule: BreakerRule) -> None:
    """Given any sequence of calls, outcomes (in any order) and waits, checked against a model of the rule: a
    closed breaker admits every call and opens exactly when `failures` failures of calls admitted since it last
    closed fall within `window`; an open one admits none; once the cooldown is over exactly one call is out as the
    probe at a time; the probe's success closes it, its failure opens it, its loss frees the slot; no other
    outcome changes the state; every state change is announced once."""
    breaker, now = Breaker("svc", rule), 0.0
    out: dict[int, tuple[int, int]] = {}  # call -> (the model's epoch it was admitted in, the breaker's generation)
    epoch, failed_at, probe, reopens_at, state = 0, [], None, 0.0, State.CLOSED
    for n, (op, pick, dt) in enumerate(ops):
        if op == "wait":
            now += dt
            breaker.tick(now)
            if state is State.OPEN and now >= reopens_at:
                state = State.HALF_OPEN
        elif op == "admit":
            if state is State.OPEN and now >= reopens_at:
                state = State.HALF_OPEN
            verdict = breaker.admit(n, now)
            if state is State.CLOSED:
                assert verdict.allowed and not verdict.probe
            elif state is State.OPEN:
                assert not verdict.allowed and verdict.refusal is not None
            else:
                assert verdict.allowed == (probe is None) and verdict.probe == verdict.allowed
                probe = n if verdict.allowed else probe
            if verdict.allowed:
                out[n] = (epoch, verdict.generation)
        elif out:
            call = sorted(out)[pick % len(out)]
            admitted_in, generation = out.pop(call)
            if op == "ok":
                breaker.succeeded(call, generation, now)
            elif op == "fail":
                breaker.failed(call, generation, now)
            else:
                breaker.abandoned(call)
            if call == probe:
                probe = None
                if op == "ok":
                    state, epoch, failed_at = State.CLOSED, epoch + 1, []
                elif op == "fail":
                    state, epoch, reopens_at = State.OPEN, epoch + 1, now + rule.cooldown
            elif op == "fail" and state is State.CLOSED and admitted_in == epoch:
                failed_at = [t for t in failed_at if t > now - rule.window] + [now]
                if len(failed_at) >= rule.failures:
                    state, epoch, failed_at, reopens_at = State.OPEN, epoch + 1, [], now + rule.cooldown
        assert breaker.state is state, (n, op)
        if state is State.HALF_OPEN:
            assert breaker.probe == probe
    announced = [c.state for c in breaker.take_changes()]
    assert all(a is not b for a, b in zip(announced, announced[1:]))
    assert (announced[-1] if announced else State.CLOSED) is state


def test_circuit_open_has_its_code_exit_status_and_survives_the_wire() -> None:
    assert ERRORS["circuit_open"] is CircuitOpen and EXIT_CODES["circuit_open"] == 16
    err = error_from_wire("circuit_open", "circuit breaker 'payments' is open", {"breaker": "payments"})
    assert isinstance(err, CircuitOpen) and is_retryable(err)


def test_settings_layer_an_endpoint_or_name_over_the_defaults_over_the_built_in_ones() -> None:
    rules = BreakerRules(default=BreakerSettings(cooldown=9),
                         endpoints={"local": EndpointSettings(breaker=BreakerSettings(failures=2))},
                         named={"payments": BreakerSettings(window=3)})
    assert rules.rule_for("llm:local") == BreakerRule(failures=2, window=60.0, cooldown=9.0)
    assert rules.rule_for("payments") == BreakerRule(failures=5, window=3.0, cooldown=9.0)
    assert rules.rule_for("llm:openai") == rules.rule_for("other") == BreakerRule(cooldown=9.0)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_ctx_breaker_counts_exceptions_fails_fast_when_open_and_probes_after_the_cooldown() -> None:
    asyncio.run(ctx_breaker_scenario())


async def ctx_breaker_scenario() -> None:
    # Given `payments` (2 failures open it, cooldown 5 s) in a registry on a fake clock
    clock = Clock()
    gate = LocalBreakers(BreakerRules(named={"payments": BreakerSettings(failures=2, cooldown=5)}),
                         BreakerRegistry(clock))
    calls: list[str] = []

    async def charge(fail: bool) -> str:
        calls.append("charge")
        if fail:
            raise ConnectionError("payments are down")
        return "charged"

    guarded = StepBreaker(gate, "payments")(charge)
    # When two calls fail, then the third fails fast without calling the service
    for _ in range(2):
        with pytest.raises(ConnectionError):
            await guarded(True)
    with pytest.raises(CircuitOpen, match="'payments' is open"):
        async with StepBreaker(gate, "payments"):
            calls.append("inside")
    assert calls == ["charge", "charge"]
    # When the cooldown is over, then one probe goes; a concurrent call fails fast; the probe's success closes it
    clock.now = 5.0
    probe_started, release = asyncio.Event(), asyncio.Event()

    async def slow_probe() -> None:
        async with StepBreaker(gate, "payments"):
            probe_started.set()
            await release.wait()

    probe = asyncio.create_task(slow_probe())
    await probe_started.wait()
    with pytest.raises(CircuitOpen, match="half-open"):
        await guarded(False)
    release.set()
    await probe
    assert await guarded(False) == "charged"
    # And an ignored exception counts as the service answering
    ignoring = StepBreaker(gate, "payments", ignore=(ValueError,))
    for _ in range(3):
        with pytest.raises(ValueError):
            async with ignoring:
                raise ValueError("bad card")
    assert gate.registry.breakers["payments"].state is State.CLOSED


def test_ctx_breaker_refuses_a_bad_name_and_a_sync_function() -> None:
    gate = LocalBreakers(registry=BreakerRegistry())
    with pytest.raises(Exception, match="a breaker name is"):
        StepBreaker(gate, "llm:local")
    with pytest.raises(TypeError, match="decorates async functions"):
        StepBreaker(gate, "payments")(lambda: 1)


def test_the_engine_retries_no_sooner_than_the_error_asks_even_past_the_policy_max_delay() -> None:
    """Given a step retried after 1 s (max 3 s), when an attempt fails with an error asking to wait 30 s (an open
    breaker's time to half-open), then the retry is due in 30 s; when the next asks for nothing, the back-off holds."""
    pipeline = Pipeline("p")
    pipeline.task(lambda: 1, name="call", max_retries=3, retry_delay=1.0, retry_jitter=0.0)
    machine = RunMachine.new(pipeline.plan(), "run-1", now=0.0, rng=random.Random(1))
    machine.start(0.0)
    for now, wait, due in ((10.0, 30.0, 40.0), (40.0, None, 42.0)):
        error = ErrorInfo(type="CircuitOpen", message="open", retryable=True, retry_after=wait)
        machine.handle(StepFailed(task="call", attempt=machine.state.tasks["call"].attempt, error=error), now)
        assert machine.next_timer() == pytest.approx(due)
        machine.handle(TimerFired(), due)
