"""One step of a pipeline: `PipelineStep`, as the user declares it, and the names it is known by.

A step holds the user's objects (a function, tools, a pydantic schema); `Pipeline.plan()`
turns each into a `StepSpec` of plain data, naming those objects by `schema_ref`,
`function_ref` and `callable_name`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .conditions import as_condition
from .plan import OUTPUT_RETRIES, TOOL_RETRIES, DependencyType, ExecutionMode, RetrySpec, StepKind

_DEFAULT_RETRY = RetrySpec()


def _normalise_deps(depends_on: Iterable[str] | Mapping[str, Any] | str | None) -> dict[str, DependencyType]:
    if depends_on is None:
        return {}
    if isinstance(depends_on, str):
        return {depends_on: DependencyType.HARD}
    if isinstance(depends_on, Mapping):
        return {str(k): DependencyType(v) for k, v in depends_on.items()}
    return {str(name): DependencyType.HARD for name in depends_on}


def schema_ref(schema: type) -> str:
    """`module:QualName` of a schema class, the form plans and exports refer to it by."""
    return f"{schema.__module__}:{schema.__qualname__}"


@dataclasses.dataclass(eq=False)
class PipelineStep:
    """One step: an LLM agent (`goal=`) or a Python function (`fn=`).

    `depends_on` is a list of step names (all HARD) or a mapping name → DependencyType.
    `max_retries` counts retries after the first attempt; only retryable errors are retried.
    Agent steps: `output_retries` is how often output that fails `output_schema` is sent back to the
    model; `tool_retries` how often in a row one tool may fail (its error goes back to the model).
    `isolated=True`: in the daemon, each attempt runs alone in a worker process started for it (docs/semantics.md).
    `resources=`: placement on a Ray cluster, e.g. `{"num_gpus": 1}` (validation.resource_problems).
    `compensate=`: a function `(ctx, output)` or an agent goal that undoes the step if the run fails or is
    cancelled after it completed (docs/semantics.md, "Compensation"), with its own `compensate_timeout` and
    `compensate_retries`.
    The design documents' dataclass form, `PipelineStep(id=..., name=..., goal=..., retry_count=..., max_retries=...)`,
    is accepted as is.
    """

    name: str
    goal: str | None = None
    fn: Callable[..., Any] | None = None
    depends_on: Iterable[str] | Mapping[str, Any] | str | None = None
    execution_mode: ExecutionMode = ExecutionMode.SERIAL
    description: str | None = None
    constraints: list[str] = dataclasses.field(default_factory=list)
    timeout: float | None = None
    isolated: bool = False
    #: Where the step may run on a cluster (`{"num_cpus": 4}`, `{"num_gpus": 1}`, custom resources): the Ray
    #: executor runs it in a worker placed by Ray with them (docs/scale-out.md); the local executor ignores them.
    resources: dict[str, float] | None = None
    max_retries: int = _DEFAULT_RETRY.max_retries
    retry_delay: float = _DEFAULT_RETRY.delay
    retry_backoff: float = _DEFAULT_RETRY.backoff
    retry_max_delay: float = _DEFAULT_RETRY.max_delay
    retry_jitter: float = _DEFAULT_RETRY.jitter
    tools: list[Callable[..., Any]] = dataclasses.field(default_factory=list)
    tools_filter: list[str] | None = None
    output_schema: Any = None
    model: str | None = None
    output_retries: int = OUTPUT_RETRIES
    tool_retries: int = TOOL_RETRIES
    condition: Any = None
    over: Any = None
    merge: Callable[..., Any] | None = None
    data_fields: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    required: bool = True
    final: bool = False
    runner: str | None = None
    compensate: Callable[..., Any] | str | None = None
    compensate_timeout: float | None = None
    compensate_retries: int = 2
    #: A sub-pipeline step: the child `Pipeline` (or a path / "file.py:name", read when the step is added to its
    #: pipeline, define/subpipeline.py), and the child's params: a mapping, or a function filled like a step function.
    pipeline: Any = None
    params: Any = None
    #: The design documents' step id ("step_1", ...): informational; steps are named, and found, by `name`.
    id: str | None = None
    #: The design documents' count of retries made so far: informational; the engine counts attempts itself.
    retry_count: int = 0

    def __post_init__(self) -> None:
        self.depends_on = _normalise_deps(self.depends_on)
        self.execution_mode = ExecutionMode(self.execution_mode)
        if isinstance(self.constraints, str):
            self.constraints = [self.constraints]
        if self.condition is not None:
            self.condition = as_condition(self.condition)
        if self.pipeline is not None:  # a path is read into a Pipeline by Pipeline.add_step (define/subpipeline.py)
            if self.over is not None and self.execution_mode is ExecutionMode.SERIAL:
                self.execution_mode = ExecutionMode.PARALLEL_MERGE  # `over=`: a child run per item
            root = self.over.split(".")[0] if isinstance(self.over, str) else None
            if root and root not in ("params", "shared") and root not in self.depends_on:
                self.depends_on[root] = DependencyType.HARD  # type: ignore[index]  # over="companies" reads that step
        if self.condition is not None and self.execution_mode is ExecutionMode.SERIAL:
            self.execution_mode = ExecutionMode.CONDITIONAL

    @property
    def kind(self) -> StepKind:
        if self.runner == "tagent":
            return StepKind.TAGENT
        if self.pipeline is not None:
            return StepKind.PIPELINE
        return StepKind.FUNCTION if self.fn is not None else StepKind.AGENT

    @property
    def condition_is_judged(self) -> bool:
        """CONDITIONAL with constraints but no condition=: before it runs, its model judges whether the
        constraints hold (docs/semantics.md, "When a step is decided")."""
        return self.execution_mode is ExecutionMode.CONDITIONAL and self.condition is None and bool(self.constraints)

    @property
    def uses_model(self) -> bool:
        """An agent or TAgent step, a step whose condition its model judges, or one whose compensation is an
        agent goal: it needs a model to run."""
        return self.kind in (StepKind.AGENT, StepKind.TAGENT) or self.condition_is_judged or isinstance(self.compensate, str)

    @property
    def dependencies(self) -> dict[str, DependencyType]:
        return dict(self.depends_on)  # type: ignore[arg-type]


def callable_name(fn: Callable[..., Any]) -> str:
    """The name a function (or callable object) is known by: as a tool, and in messages."""
    return getattr(fn, "__name__", None) or type(fn).__name__


def function_ref(fn: Callable[..., Any]) -> str:
    """`module:qualname` of a step function, the form plans and exports refer to it by."""
    module = getattr(fn, "__module__", None) or "?"
    qualname = getattr(fn, "__qualname__", None) or callable_name(fn)
    return f"{module}:{qualname}"
