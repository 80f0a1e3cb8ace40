"""Defining pipelines: `Pipeline`, `PipelineStep`, the fluent builder and validation.

A `Pipeline` holds the user's objects (functions, tools, pydantic schemas).
`Pipeline.plan()` turns it into a `Plan`: plain data the engine schedules from
and the daemon checkpoints. `Pipeline.validate()` reports every problem at once
(the checks are in `validation.py`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

from . import binding
from ..bounds import NAME_MAX
from .conditions import Condition, as_condition
from ..errors import PipelineValidationError, shorten
from .plan import OUTPUT_RETRIES, TOOL_RETRIES, DependencyType, ExecutionMode, Plan, RetrySpec, StepKind, StepSpec
from .validation import BUILTIN_TOOLS, NAME, callable_name, cycles, is_count, parameter_problems, step_problems

__all__ = ["BUILTIN_TOOLS", "Pipeline", "PipelineStep", "schema_ref"]

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

    def __post_init__(self) -> None:
        self.depends_on = _normalise_deps(self.depends_on)
        self.execution_mode = ExecutionMode(self.execution_mode)
        if isinstance(self.constraints, str):
            self.constraints = [self.constraints]
        if self.condition is not None:
            self.condition = as_condition(self.condition)
        if self.condition is not None and self.execution_mode is ExecutionMode.SERIAL:
            self.execution_mode = ExecutionMode.CONDITIONAL

    @property
    def kind(self) -> StepKind:
        if self.runner == "tagent":
            return StepKind.TAGENT
        return StepKind.FUNCTION if self.fn is not None else StepKind.AGENT

    @property
    def dependencies(self) -> dict[str, DependencyType]:
        return dict(self.depends_on)  # type: ignore[arg-type]


class Pipeline:
    """A named DAG of steps, built fluently:

        p = Pipeline("research")
        p.step("search", goal="Find facts", output_schema=Facts)
        p.step("report", goal="Write it up", depends_on=["search"])

    or with `@p.task(...)` on a function. Nothing runs until the pipeline is handed
    to `run_pipeline`, `run_agent` or the daemon; `validate()` checks it first.
    `params=["company", ...]` declares the submit params its functions take by name,
    so that `validate()` can tell a misspelt parameter from a param (`validation.py`).
    """

    def __init__(
        self,
        name: str,
        description: str | None = None,
        *,
        global_constraints: Iterable[str] = (),
        shared_context: Mapping[str, Any] | None = None,
        model: str | None = None,
        tools: Iterable[Callable[..., Any]] = (),
        max_concurrent_steps: int = 16,
        fail_fast: bool = False,
        triggers: Iterable[str] = (),
        capabilities: Iterable[str] = (),
        params: Iterable[str] | None = None,
    ) -> None:
        self.name = name
        self.description = description
        self.global_constraints = list(global_constraints)
        self.shared_context = dict(shared_context or {})
        self.model = model
        self.tools: list[Callable[..., Any]] = list(tools)
        self.max_concurrent_steps = max_concurrent_steps
        self.fail_fast = fail_fast
        self.triggers = list(triggers)
        self.capabilities = list(capabilities)
        #: The submit params the steps may take by name; None: not declared (see `validation`).
        self.params = None if params is None else [params] if isinstance(params, str) else list(params)
        self.steps: dict[str, PipelineStep] = {}
        self._duplicates: list[str] = []

    def __repr__(self) -> str:
        return f"Pipeline({self.name!r}, steps={list(self.steps)})"

    # -- building -------------------------------------------------------------

    def add_step(self, step: PipelineStep) -> Pipeline:
        """Add a ready-made step; returns the pipeline for chaining."""
        if step.name in self.steps:
            self._duplicates.append(step.name)
        else:
            self.steps[step.name] = step
        return self

    def step(self, name: str, goal: str | None = None, **options: Any) -> Pipeline:
        """Add a step by keywords (see `PipelineStep`); returns the pipeline for chaining."""
        return self.add_step(PipelineStep(name=name, goal=goal, **options))

    def task(self, fn: Callable[..., Any] | None = None, /, *, name: str | None = None, **options: Any) -> Any:
        """Decorator: make a function a step named after it (or `name=`).

        Parameters named `ctx` get the StepContext; parameters named after dependencies
        get their outputs; `item` gets the current item of a PARALLEL_MERGE step; any
        other name without a default gets the submit param of that name (`binding.py`).
        """

        def register(func: Callable[..., Any]) -> Callable[..., Any]:
            self.add_step(PipelineStep(name=name or func.__name__, fn=func, **options))
            return func

        return register(fn) if fn is not None else register

    def tool(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Decorator: offer a function as a tool to every agent step (subject to `tools_filter`)."""
        self.tools.append(fn)
        return fn

    # -- checking -------------------------------------------------------------

    def problems(self, params: Collection[str] | None = None) -> list[str]:
        """Every problem with the definition, one precise line each; empty when valid.

        `params`: the submit params a run will get (names, or the params themselves); function-step
        parameters are then checked against exactly these (see `validation` for what is checked without).
        """
        found: list[str] = []
        if isinstance(self.name, str) and len(self.name) > NAME_MAX:
            found.append(f"pipeline name {shorten(self.name)!r} is too long: names have at most {NAME_MAX} characters")
        elif not isinstance(self.name, str) or not NAME.match(self.name):
            found.append(f"pipeline name {self.name!r} must start with a letter or _ and use only letters, digits, _ and -")
        if not self.steps:
            found.append("pipeline has no steps")
        for name in dict.fromkeys(self._duplicates):
            found.append(f"duplicate step name {name!r}: each step needs a unique name")
        if not (is_count(self.max_concurrent_steps) and self.max_concurrent_steps >= 1):
            found.append(f"max_concurrent_steps must be a positive integer, got {self.max_concurrent_steps!r}")
        if self.params is not None and not (isinstance(self.params, list) and all(isinstance(n, str) for n in self.params)):
            found.append(f"params must be a list of param names, got {self.params!r}")
        pipeline_tools = {callable_name(t) for t in self.tools}
        for step in self.steps.values():
            found.extend(step_problems(self, step, pipeline_tools))
            found.extend(parameter_problems(self, step, params))
        found.extend(f"dependency cycle: {' -> '.join(c)}" for c in cycles(self.steps))
        finals = [s.name for s in self.steps.values() if s.final]
        if len(finals) > 1:
            found.append(f"only one step may be final=True, got {', '.join(finals)}")
        return found

    def validate(self, params: Collection[str] | None = None) -> Pipeline:
        """Raise PipelineValidationError listing every problem; return self when valid (`params`: see `problems`)."""
        found = self.problems(params)
        if found:
            raise PipelineValidationError(self.name, found)
        return self

    # -- describing ---------------------------------------------------------------

    def plan(self) -> Plan:
        """The validated, declarative form of this pipeline (what the engine runs)."""
        self.validate()
        pipeline_tools = [callable_name(t) for t in self.tools]
        specs = []
        for step in self.steps.values():
            cond = step.condition
            specs.append(
                StepSpec(
                    name=step.name,
                    kind=step.kind,
                    deps=step.dependencies,
                    mode=step.execution_mode,
                    goal=step.goal,
                    description=step.description,
                    constraints=list(step.constraints),
                    model=step.model,
                    output_retries=step.output_retries,
                    tool_retries=step.tool_retries,
                    tools=pipeline_tools + [callable_name(t) for t in step.tools],
                    tools_filter=list(step.tools_filter) if step.tools_filter is not None else None,
                    output_schema=schema_ref(step.output_schema) if step.output_schema is not None else None,
                    timeout=step.timeout,
                    isolated=step.isolated,
                    retry=RetrySpec(
                        max_retries=step.max_retries,
                        delay=step.retry_delay,
                        backoff=step.retry_backoff,
                        max_delay=step.retry_max_delay,
                        jitter=step.retry_jitter,
                    ),
                    condition=cond.to_data() if isinstance(cond, Condition) else None,
                    condition_is_callable=cond is not None and not isinstance(cond, Condition),
                    over=list(step.over) if isinstance(step.over, tuple) else step.over,
                    has_merge=step.merge is not None,
                    data_fields={k: list(v) for k, v in step.data_fields.items()},
                    required=step.required,
                    final=step.final,
                    runner=step.runner,
                    function=_function_ref(step.fn) if step.fn is not None else None,
                    needs_params=binding.param_names(step.fn, step.dependencies) if step.fn is not None else [],
                )
            )
        return Plan(
            name=self.name,
            description=self.description,
            steps=specs,
            global_constraints=list(self.global_constraints),
            shared_context=dict(self.shared_context),
            model=self.model,
            max_concurrent_steps=self.max_concurrent_steps,
            fail_fast=self.fail_fast,
            triggers=list(self.triggers),
            capabilities=list(self.capabilities),
            params=list(self.params) if self.params is not None else None,
        )

    # -- documents (see document.py) ------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """This pipeline's plan as plain data, the form JSON and TOML documents hold."""
        from .document import pipeline_to_dict

        return pipeline_to_dict(self)

    def to_json(self, indent: int | None = 2) -> str:
        """This pipeline as a JSON document."""
        from .document import to_json

        return to_json(self, indent=indent)

    def to_toml(self) -> str:
        """This pipeline as a TOML document."""
        from .document import to_toml

        return to_toml(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, resolve_schemas: bool = True, resolve_functions: bool = False) -> Pipeline:
        """A validated pipeline from plain data; see `document.pipeline_from_dict` for what gets imported."""
        from .document import pipeline_from_dict

        return pipeline_from_dict(data, resolve_schemas=resolve_schemas, resolve_functions=resolve_functions)

    @classmethod
    def from_json(cls, text: str | bytes, *, resolve_schemas: bool = True, resolve_functions: bool = False) -> Pipeline:
        """A validated pipeline from a JSON document."""
        from .document import from_json

        return from_json(text, resolve_schemas=resolve_schemas, resolve_functions=resolve_functions)

    @classmethod
    def from_toml(cls, text: str | bytes, *, resolve_schemas: bool = True, resolve_functions: bool = False) -> Pipeline:
        """A validated pipeline from a TOML document."""
        from .document import from_toml

        return from_toml(text, resolve_schemas=resolve_schemas, resolve_functions=resolve_functions)

    def tools_for(self, step_name: str) -> dict[str, Callable[..., Any]]:
        """The tools a step may offer its agent: pipeline + step tools, narrowed by tools_filter."""
        step = self.steps[step_name]
        tools = {callable_name(t): t for t in [*self.tools, *step.tools]}
        if step.tools_filter is not None:
            tools = {n: t for n, t in tools.items() if n in step.tools_filter}
        return tools


def _function_ref(fn: Callable[..., Any]) -> str:
    module = getattr(fn, "__module__", None) or "?"
    qualname = getattr(fn, "__qualname__", None) or callable_name(fn)
    return f"{module}:{qualname}"
