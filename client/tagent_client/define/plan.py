"""The declarative part of a pipeline: what the engine needs, as plain data.

A `Plan` carries no Python callables, only names and values, so it can cross a
process boundary, be written into a checkpoint, and be exported as JSON or TOML.
A worker builds the Plan from the user's module; the daemon schedules from it
without ever importing user code.
"""

from __future__ import annotations

import enum
from typing import Any

import msgspec

PLAN_FORMAT = 1
OUTPUT_RETRIES = 2  # agent steps: invalid output sent back to the model this many times before the attempt fails
TOOL_RETRIES = 2    # agent steps: one tool may fail this many times in a row (the model sees each error)


class ExecutionMode(str, enum.Enum):
    """How a step is scheduled relative to the other steps of its run."""

    SERIAL = "serial"
    CONCURRENT = "concurrent"
    CONDITIONAL = "conditional"
    PARALLEL_MERGE = "parallel_merge"


class DependencyType(str, enum.Enum):
    """What a dependency demands of the step it points at."""

    HARD = "hard"
    SOFT = "soft"
    DATA = "data"
    VALIDATION = "validation"


class StepKind(str, enum.Enum):
    """Which runner executes a step."""

    FUNCTION = "function"
    AGENT = "agent"
    TAGENT = "tagent"
    PIPELINE = "pipeline"  # a sub-pipeline: each task starts a child run (core/children.py)


class RetrySpec(msgspec.Struct, frozen=True, kw_only=True):
    """Retry policy of one step: delay = min(max_delay, delay * backoff**(n-1)), jittered down by up to `jitter`."""

    max_retries: int = 2
    delay: float = 1.0
    backoff: float = 2.0
    max_delay: float = 60.0
    jitter: float = 0.1


class StepSpec(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One step, declaratively. `deps` maps dependency name to DependencyType value. Not tracked by the garbage
    collector (`gc=False`: plain data, never in a cycle; a plan of thousands of steps is held by every run of it)."""

    name: str
    kind: StepKind
    deps: dict[str, DependencyType] = {}
    mode: ExecutionMode = ExecutionMode.SERIAL
    goal: str | None = None
    description: str | None = None
    constraints: list[str] = []
    model: str | None = None
    output_retries: int = OUTPUT_RETRIES
    tool_retries: int = TOOL_RETRIES
    tools: list[str] = []
    tools_filter: list[str] | None = None
    output_schema: str | None = None
    timeout: float | None = None
    isolated: bool = False
    resources: dict[str, float] = {}  # placement on a cluster (define/validation.resource_problems)
    retry: RetrySpec = RetrySpec()
    condition: dict[str, Any] | None = None
    condition_is_callable: bool = False
    over: Any = None
    has_merge: bool = False
    data_fields: dict[str, list[str]] = {}
    required: bool = True
    final: bool = False
    runner: str | None = None
    function: str | None = None
    #: A function step's parameters that only a submit param can fill (checked at submit: binding.missing_params).
    needs_params: list[str] = []
    #: A sub-pipeline step (`pipeline=`): the child's plan, and its params when they are a literal mapping
    #: (`child_params_callable`: a function of the item / dependencies computes them, in a worker).
    child: Plan | None = None
    child_params: dict[str, Any] | None = None
    child_params_callable: bool = False
    #: The step's compensation (docs/semantics.md, "Compensation"): a function (`module:qualname`) or an agent goal,
    #: with its own timeout and retries; run in a rollback if the step completed.
    compensate: str | None = None
    compensate_goal: str | None = None
    compensate_timeout: float | None = None
    compensate_retries: int = 2
    #: Set on a step added at run time (`ctx.add_step`): the step that added it.
    added_by: str | None = None

    @property
    def has_compensation(self) -> bool:
        return self.compensate is not None or self.compensate_goal is not None

    @property
    def condition_is_judged(self) -> bool:
        """A CONDITIONAL step with constraints but no condition: its model judges the constraints before it runs.
        Derived, never stored, so a plan read from a document cannot say otherwise."""
        return (self.mode is ExecutionMode.CONDITIONAL and self.condition is None and not self.condition_is_callable
                and bool(self.constraints))

    @property
    def uses_model(self) -> bool:
        """An agent or TAgent step, any step whose condition its model judges, or one whose compensation is an
        agent goal: it needs a model to run."""
        return self.kind in (StepKind.AGENT, StepKind.TAGENT) or self.condition_is_judged or self.compensate_goal is not None


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    """A whole pipeline, declaratively, in definition order."""

    format: int = PLAN_FORMAT
    name: str
    description: str | None = None
    steps: list[StepSpec]
    global_constraints: list[str] = []
    shared_context: dict[str, Any] = {}
    model: str | None = None
    max_concurrent_steps: int = 16
    fail_fast: bool = False
    triggers: list[str] = []
    capabilities: list[str] = []
    #: The submit params the pipeline declares (`Pipeline(params=...)`); None: not declared.
    params: list[str] | None = None
    #: Defaults of declared params: a run submitted without one of them gets it (`binding.with_defaults`).
    param_defaults: dict[str, Any] = {}

    def step(self, name: str) -> StepSpec:
        for spec in self.steps:
            if spec.name == name:
                return spec
        raise KeyError(name)
