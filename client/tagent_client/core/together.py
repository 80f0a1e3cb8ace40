"""`handle_all`: several events for one run's machine, scheduled once.

A worker sends the results it has in one frame (a fan-out's dozens at a time). Handled one by one, each result
is followed by a look at what is ready to run (the candidates, the dependency rules of each, the queue, the
end of the run): work whose answer the next result of the same frame changes again. `handle_all` applies the
events in order and looks once, after the last.

Guarantees: the state afterwards and the actions are those of `RunMachine.handle` for each event in turn,
except that the dispatches the events make possible come together at the end, in dispatch order (definition
order, then item order), as far as `max_concurrent_steps` allows, instead of after each event; they are
returned by the same call, so nothing is dispatched later. A run that finishes, fails fast or starts rolling
back on one of the events does so as with `handle` (only a RUNNING run's scheduling waits).
"""

from __future__ import annotations

from .engine import RunMachine
from .events import Action, Event


def handle_all(machine: RunMachine, events: list[Event], now: float) -> list[Action]:
    """`machine.handle(event, now)` for each of `events` in order, then one look at what is ready."""
    if len(events) == 1:
        return machine.handle(events[0], now)
    machine.deferring, machine.deferred = True, False
    try:
        out = [action for event in events for action in machine.handle(event, now)]
    finally:
        machine.deferring = False
    if machine.deferred:
        machine.deferred = False
        out += machine.handle_deferred(now)
    return out
