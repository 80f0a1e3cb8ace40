"""`MachineView`: what the rule modules (dynamic.py, rollback.py) may use of the `RunMachine` driving them.

A protocol, so those modules need not import the engine that imports them.
"""

from __future__ import annotations

import random
from typing import Any, Protocol

from ..define.plan import Plan, StepSpec
from .events import Action
from .run_index import RunIndex
from .state import RunState, RunStatus


class MachineView(Protocol):
    state: RunState
    plan: Plan
    specs: dict[str, StepSpec]
    index: RunIndex
    held: bool
    rng: random.Random

    def replan(self, plan: Plan) -> None:
        """Schedule from `plan` from now on (steps added or removed); rebuilds the indexes."""

    def event_data(self, **data: Any) -> dict[str, Any]:
        """An event's data: the run's id and pipeline, then `data`."""

    def finish(self, status: RunStatus, now: float, error: str | None = None) -> list[Action]:
        """End the run with `status`."""
