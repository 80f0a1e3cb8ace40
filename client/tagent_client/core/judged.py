"""A judged condition's decision: the output of the `name#condition` task of a CONDITIONAL step that has
constraints but no condition= (docs/semantics.md, "When a step is decided", rule 4).

The step's model made the judgement in a worker (`run/runners/judge.py`); the engine only reads its
output, `{"decision": bool, "reason": str, "model": str}`, here. The decision is made once: the engine
records it (`StepState.condition_passed`, or the skip) before it announces it, so a recovered run never
asks the model again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from ..define.plan import StepSpec


class Judged(NamedTuple):
    """What the model decided, why (one line), and which model it was."""

    decision: bool
    reason: str
    model: str

    @classmethod
    def from_output(cls, output: Any) -> Judged:
        """Read a condition task's output; anything but the runner's mapping is a false decision that says so."""
        if not isinstance(output, Mapping) or not isinstance(output.get("decision"), bool):
            return cls(False, f"the judgement gave no decision ({type(output).__name__} output)", "?")
        return cls(output["decision"], str(output.get("reason") or "no reason given"), str(output.get("model") or "?"))

    def skip_reason(self) -> str:
        return f"condition judged false by {self.model}: {self.reason}"

    def event(self) -> dict[str, Any]:
        """The `step.condition` event's data (besides run, pipeline and step)."""
        return {"decision": self.decision, "reason": self.reason, "model": self.model}


def condition_verdict(spec: StepSpec, output: Any) -> tuple[bool, str, dict[str, Any] | None]:
    """Read a `name#condition` task's output: (passed, skip reason, the `step.condition` event's data for a
    judged condition — None for a callable one, which announces nothing)."""
    if spec.condition_is_judged:
        judged = Judged.from_output(output)
        return judged.decision, judged.skip_reason(), judged.event()
    return bool(output), f"condition false: {spec.name}'s callable condition returned {output!r}", None
