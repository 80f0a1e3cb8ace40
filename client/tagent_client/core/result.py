"""`PipelineResult`: what a finished run hands back, in-process or from the daemon.

Built from a `RunState`; encodes to msgpack/JSON with msgspec (pydantic outputs
are dumped in JSON mode) and decodes back, optionally re-validating outputs into
their schema classes.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec

from ..define.plan import Plan
from ..errors import PipelineDeadlockError, RunFailed, StepExecutionError
from .state import DEADLOCK, RunState, RunStatus, StepStatus, Usage

if TYPE_CHECKING:
    from pydantic import BaseModel


#: The memory key prefix under which `PipelineMemory.save_step_result` keeps a step's result.
STEP_RESULT_PREFIX = "step_result/"


#: Values that are plain data as they are (exactly these types: a subclass, say an enum, is converted).
_PLAIN = frozenset({type(None), bool, int, float, str})


def to_builtins(value: Any) -> Any:
    """Plain data for a value that may hold pydantic models, enums or Structs."""
    if type(value) in _PLAIN:  # most step outputs the daemon sees (none at all, a number, a string): nothing to do
        return value
    return msgspec.to_builtins(value, enc_hook=_enc_hook, str_keys=True)


def _enc_hook(obj: Any) -> Any:
    if hasattr(obj, "model_dump") and hasattr(type(obj), "model_fields"):  # a pydantic model, without importing pydantic
        return obj.model_dump(mode="json")
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=repr)
    raise NotImplementedError(f"cannot encode {type(obj).__name__} in a step output; return JSON-like data or a pydantic model")


class TokenUsage(msgspec.Struct, kw_only=True):
    """LLM usage, as the design documents name it: per step in `PipelineResult.token_usage`, the run's sum in
    `PipelineResult.total_usage`. Function steps have all zeros. `a + b` adds two."""

    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    requests: int = 0
    tool_calls: int = 0
    cost: float = 0.0

    @classmethod
    def of(cls, usage: Usage) -> TokenUsage:
        return cls(input_tokens=usage.input_tokens, output_tokens=usage.output_tokens, total_tokens=usage.total_tokens,
                   requests=usage.requests, tool_calls=usage.tool_calls, cost=usage.cost)

    def __add__(self, other: TokenUsage) -> TokenUsage:
        return TokenUsage(**{f: getattr(self, f) + getattr(other, f) for f in self.__struct_fields__})


class PipelineResult(msgspec.Struct, kw_only=True):
    """The outcome of one run. `success` is true only for status `completed`.

    `step_outputs` holds every output that completed (partial success keeps them);
    `step_metadata[name]` has status, attempts, started_at, finished_at, duration_s,
    error, skip_reason and usage; `token_usage[name]` is a step's `TokenUsage` (the sum over its attempts) and
    `total_usage` the run's; `skipped_steps` maps a skipped step to its reason;
    `learned_facts[step]` is what `ctx.memory.save_step_result(step, data)` saved (the data) and
    `saved_memories` every other key the run's steps saved through `ctx.memory` (`PipelineMemory`).
    `step_metadata[name]["added_by"]` names the step that added it at run time (else None);
    `compensations[name]` is how a step's compensation ended in a rollback: "succeeded", "pending"
    (the rollback did not get to it) or "failed: <error>" (docs/semantics.md, "Compensation").
    """

    pipeline_name: str
    run_id: str
    status: str
    success: bool
    start_time: float | None = None
    end_time: float | None = None
    execution_time: float = 0.0
    step_outputs: dict[str, Any] = {}
    step_metadata: dict[str, dict[str, Any]] = {}
    final_output: Any = None
    total_cost: float = 0.0
    cost_per_step: dict[str, float] = {}
    token_usage: dict[str, TokenUsage] = {}
    total_usage: TokenUsage = msgspec.field(default_factory=TokenUsage)
    failed_steps: list[str] = []
    skipped_steps: dict[str, str] = {}
    error_details: dict[str, str] = {}
    error: str | None = None
    learned_facts: dict[str, Any] = {}
    saved_memories: dict[str, Any] = {}
    compensations: dict[str, str] = {}

    @classmethod
    def from_state(cls, plan: Plan, state: RunState, memory: Mapping[str, Any] | None = None) -> PipelineResult:
        outputs: dict[str, Any] = {}
        metadata: dict[str, dict[str, Any]] = {}
        usage = Usage()
        for name, step in state.steps.items():
            if step.status is StepStatus.COMPLETED:
                outputs[name] = step.output
            usage = usage.add(step.usage)
            duration = (step.finished_at - step.started_at) if step.started_at and step.finished_at else None
            metadata[name] = {
                "status": step.status.value,
                "attempts": step.attempts,
                "started_at": step.started_at,
                "finished_at": step.finished_at,
                "duration_s": duration,
                "error": str(step.error) if step.error else None,
                "error_type": step.error.type if step.error else None,
                "skip_reason": step.skip_reason,
                "usage": msgspec.structs.asdict(step.usage),
                "added_by": step.spec.added_by if step.spec is not None else None,
            }
        final = _final_step(plan)
        end = state.finished_at
        return cls(
            pipeline_name=state.pipeline,
            run_id=state.run_id,
            status=state.status.value,
            success=state.status is RunStatus.COMPLETED,
            start_time=state.started_at,
            end_time=end,
            execution_time=(end - state.started_at) if end and state.started_at else 0.0,
            step_outputs=outputs,
            step_metadata=metadata,
            final_output=outputs.get(final) if final else None,
            total_cost=usage.cost,
            cost_per_step={n: s.usage.cost for n, s in state.steps.items()},
            token_usage={n: TokenUsage.of(s.usage) for n, s in state.steps.items()},
            total_usage=TokenUsage.of(usage),
            failed_steps=[n for n, s in state.steps.items() if s.status is StepStatus.FAILED],
            skipped_steps={n: s.skip_reason or "" for n, s in state.steps.items() if s.status is StepStatus.SKIPPED},
            error_details={n: str(s.error) for n, s in state.steps.items() if s.error is not None},
            error=state.error,
            learned_facts={k.removeprefix(STEP_RESULT_PREFIX): v.get("data") if isinstance(v, dict) else v
                           for k, v in (memory or {}).items() if k.startswith(STEP_RESULT_PREFIX)},
            saved_memories={k: v for k, v in (memory or {}).items() if not k.startswith(STEP_RESULT_PREFIX)},
            compensations={n: s.compensation.value + (f": {s.compensation_error}" if s.compensation_error else "")
                           for n, s in state.steps.items() if s.compensation is not None},
        )

    # -- the design documents' errors -----------------------------------------------------

    def step_errors(self) -> dict[str, StepExecutionError]:
        """Each failed step's error as a `StepExecutionError` naming the step (in definition order)."""
        return {
            name: StepExecutionError(name, self.error_details.get(name) or "no error recorded",
                                     self.step_metadata.get(name, {}).get("error_type"))
            for name in self.failed_steps
        }

    def raise_for_status(self) -> PipelineResult:
        """Return this result if the run completed; else raise why it did not.

        `PipelineDeadlockError` when no step could make progress, `StepExecutionError` for the first
        failed step, `RunFailed` for any other end (cancelled, or failed without a failed step).
        """
        if self.success:
            return self
        if self.error and self.error.startswith(DEADLOCK):
            stuck = [n for n, meta in self.step_metadata.items() if meta.get("status") == StepStatus.CANCELLED.value]
            raise PipelineDeadlockError(f"Pipeline execution deadlocked: {self.error}", stuck)
        errors = self.step_errors()
        if errors:
            raise next(iter(errors.values()))
        raise RunFailed(f"run {self.run_id} of {self.pipeline_name} ended {self.status}: {self.error or 'no error'}")

    # -- conversions ---------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-safe data (outputs dumped in JSON mode)."""
        return to_builtins(self)

    def to_json(self, indent: int | None = None) -> str:
        data = msgspec.json.encode(self.to_dict())
        return msgspec.json.format(data, indent=indent).decode() if indent else data.decode()

    def to_msgpack(self) -> bytes:
        return msgspec.msgpack.encode(self.to_dict())

    @classmethod
    def from_msgpack(cls, data: bytes, schemas: Mapping[str, type[BaseModel]] | None = None) -> PipelineResult:
        return cls.from_dict(msgspec.msgpack.decode(data), schemas)

    @classmethod
    def from_json(cls, data: str | bytes, schemas: Mapping[str, type[BaseModel]] | None = None) -> PipelineResult:
        return cls.from_dict(msgspec.json.decode(data), schemas)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], schemas: Mapping[str, type[BaseModel]] | None = None) -> PipelineResult:
        """Rebuild a result; outputs of steps named in `schemas` become instances of those models."""
        result = msgspec.convert(data, cls)
        if schemas:
            result.step_outputs = revalidate(result.step_outputs, schemas)
            if result.final_output is not None:
                final = next((n for n, v in data.get("step_outputs", {}).items() if v == data.get("final_output")), None)
                if final in result.step_outputs:
                    result.final_output = result.step_outputs[final]
        return result

    def summary(self) -> str:
        """A few readable lines: status, time, cost and one line per step."""
        when = datetime.fromtimestamp(self.start_time, UTC).strftime("%H:%M:%S") if self.start_time else "-"
        lines = [
            f"run {self.run_id} of {self.pipeline_name}: {self.status.upper()} in {self.execution_time:.2f}s "
            f"(started {when} UTC, cost ${self.total_cost:.6f}, {self.total_usage.total_tokens} tokens)"
        ]
        for name, meta in self.step_metadata.items():
            detail = meta.get("error") or meta.get("skip_reason") or ""
            dur = meta.get("duration_s")
            lines.append(f"  {name:<24} {meta['status']:<10} attempts={meta['attempts']:<2} "
                         f"{(f'{dur:.3f}s' if dur is not None else '-'):>8}  {detail}".rstrip())
        if self.error:
            lines.append(f"  error: {self.error}")
        return "\n".join(lines)


def revalidate(outputs: Mapping[str, Any], schemas: Mapping[str, type[BaseModel]]) -> dict[str, Any]:
    """Outputs with schema'd steps turned back into model instances (left as data if they do not validate)."""
    out = dict(outputs)
    for name, schema in schemas.items():
        value = out.get(name)
        if value is not None and not isinstance(value, schema):
            try:
                out[name] = schema.model_validate(value)
            except Exception:  # noqa: BLE001 - keep the raw data rather than lose it
                pass
    return out


def _final_step(plan: Plan) -> str | None:
    marked = [s.name for s in plan.steps if s.final]
    if marked:
        return marked[0]
    depended = {d for s in plan.steps for d in s.deps}
    sinks = [s.name for s in plan.steps if s.name not in depended]
    return sinks[0] if len(sinks) == 1 else None

