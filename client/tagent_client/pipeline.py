"""Defining pipelines: `Pipeline`, `PipelineStep`, the fluent builder and validation.

A `Pipeline` holds the user's objects (functions, tools, pydantic schemas).
`Pipeline.plan()` turns it into a `Plan`: plain data the engine schedules from
and the daemon checkpoints. `Pipeline.validate()` reports every problem at once.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from pydantic import BaseModel

from .conditions import Condition, as_condition
from .bounds import NAME_MAX
from .errors import PipelineValidationError, shorten
from .plan import OUTPUT_RETRIES, TOOL_RETRIES, DependencyType, ExecutionMode, Plan, RetrySpec, StepKind, StepSpec

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*\Z")  # \Z: "$" would accept a trailing newline
_DEFAULT_RETRY = RetrySpec()


def _normalise_deps(depends_on: Iterable[str] | Mapping[str, Any] | str | None) -> dict[str, DependencyType]:
    if depends_on is None:
        return {}
    if isinstance(depends_on, str):
        return {depends_on: DependencyType.HARD}
    if isinstance(depends_on, Mapping):
        return {str(k): DependencyType(v) for k, v in depends_on.items()}
    return {str(name): DependencyType.HARD for name in depends_on}


def _is_number(value: Any) -> bool:
    """A finite int or float (not bool): what a Plan can carry through JSON and msgpack unchanged."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def schema_ref(schema: type) -> str:
    """`module:QualName` of a schema class, the form plans and exports refer to it by."""
    return f"{schema.__module__}:{schema.__qualname__}"


def _callable_name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__name__", None) or type(fn).__name__


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
        get their outputs; `item` gets the current item of a PARALLEL_MERGE step.
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

    def problems(self) -> list[str]:
        """Every problem with the definition, one precise line each; empty when valid."""
        found: list[str] = []
        if isinstance(self.name, str) and len(self.name) > NAME_MAX:
            found.append(f"pipeline name {shorten(self.name)!r} is too long: names have at most {NAME_MAX} characters")
        elif not isinstance(self.name, str) or not _NAME.match(self.name):
            found.append(f"pipeline name {self.name!r} must start with a letter or _ and use only letters, digits, _ and -")
        if not self.steps:
            found.append("pipeline has no steps")
        for name in dict.fromkeys(self._duplicates):
            found.append(f"duplicate step name {name!r}: each step needs a unique name")
        if not (_is_count(self.max_concurrent_steps) and self.max_concurrent_steps >= 1):
            found.append(f"max_concurrent_steps must be a positive integer, got {self.max_concurrent_steps!r}")
        pipeline_tools = {_callable_name(t) for t in self.tools}
        for step in self.steps.values():
            found.extend(self._step_problems(step, pipeline_tools))
        found.extend(f"dependency cycle: {' -> '.join(c)}" for c in self._cycles())
        finals = [s.name for s in self.steps.values() if s.final]
        if len(finals) > 1:
            found.append(f"only one step may be final=True, got {', '.join(finals)}")
        return found

    def _step_problems(self, step: PipelineStep, pipeline_tools: set[str]) -> list[str]:
        where = f"step {shorten(step.name)!r}"
        out: list[str] = []
        if isinstance(step.name, str) and len(step.name) > NAME_MAX:
            out.append(f"{where}: name is too long: names have at most {NAME_MAX} characters")
        elif not isinstance(step.name, str) or not _NAME.match(step.name) or step.name in ("shared", "params"):
            out.append(f"{where}: name must start with a letter or _, use letters, digits, _ and -, and not be 'shared' or 'params'")
        if step.fn is None and not step.goal and step.runner != "tagent":
            out.append(f"{where}: needs a goal= (agent step) or fn= (function step)")
        if step.fn is not None and step.goal:
            out.append(f"{where}: has both goal= and fn=; a step is either an agent or a function")
        if step.fn is not None and not callable(step.fn):
            out.append(f"{where}: fn= must be callable, got {type(step.fn).__name__}")
        if step.goal is not None and not isinstance(step.goal, str):
            out.append(f"{where}: goal= must be a string, got {type(step.goal).__name__}")
        deps = step.dependencies
        for dep in deps:
            if dep == step.name:
                out.append(f"{where}: depends on itself")
            elif dep not in self.steps:
                out.append(f"{where}: depends on unknown step {dep!r}")
        schema = step.output_schema
        if schema is not None and not (isinstance(schema, type) and issubclass(schema, BaseModel)):
            out.append(f"{where}: output_schema must be a pydantic BaseModel subclass, got {schema!r}")
        for dep, fields in step.data_fields.items():
            if not isinstance(fields, (list, tuple)) or not all(isinstance(f, str) for f in fields):
                out.append(f"{where}: data_fields[{dep!r}] must be a list of field names, got {fields!r}")
                continue
            if deps.get(dep) is not DependencyType.DATA:
                out.append(f"{where}: data_fields names {dep!r}, which is not a DATA dependency of this step")
                continue
            dep_step = self.steps.get(dep)
            dep_schema = dep_step.output_schema if dep_step else None
            if isinstance(dep_schema, type) and issubclass(dep_schema, BaseModel):
                for field in fields:
                    if field.split(".")[0] not in dep_schema.model_fields:
                        out.append(f"{where}: DATA dependency {dep!r} has no field {field!r} in its output_schema {dep_schema.__name__}")
        for dep, kind in deps.items():
            if kind is DependencyType.DATA and not step.data_fields.get(dep):
                out.append(f"{where}: DATA dependency {dep!r} needs data_fields={{{dep!r}: [...]}} naming the fields it requires")
        if step.tools_filter is not None and (
            not isinstance(step.tools_filter, (list, tuple)) or not all(isinstance(t, str) for t in step.tools_filter)
        ):
            out.append(f"{where}: tools_filter must be a list of tool names, got {step.tools_filter!r}")
        elif step.tools_filter is not None:
            available = pipeline_tools | {_callable_name(t) for t in step.tools}
            for tool in step.tools_filter:
                if tool not in available and not _is_builtin_tool(tool):
                    out.append(f"{where}: tools_filter names unknown tool {tool!r} (known: {', '.join(sorted(available)) or 'none'})")
        cond = step.condition
        if isinstance(cond, Condition):
            for ref in sorted(cond.refs()):
                if ref not in self.steps:
                    out.append(f"{where}: condition refers to unknown step {ref!r}")
                elif ref not in deps:
                    out.append(f"{where}: condition refers to {ref!r}, which is not among its depends_on")
        if step.execution_mode is ExecutionMode.CONDITIONAL and cond is None:
            out.append(f"{where}: execution_mode CONDITIONAL needs a condition=")
        if step.execution_mode is ExecutionMode.PARALLEL_MERGE:
            if step.over is None:
                out.append(f"{where}: PARALLEL_MERGE needs over= (a list, or a path like 'params.items' or 'dep.field')")
            elif isinstance(step.over, str):
                root = step.over.split(".")[0]
                if root not in ("params", "shared") and root not in deps:
                    out.append(f"{where}: over={step.over!r} must start with 'params', 'shared' or one of its dependencies")
            elif not isinstance(step.over, (list, tuple)):
                out.append(f"{where}: over= must be a list or a path string, got {type(step.over).__name__}")
        elif step.over is not None or step.merge is not None:
            out.append(f"{where}: over= and merge= only apply to execution_mode PARALLEL_MERGE")
        if step.timeout is not None and not (_is_number(step.timeout) and step.timeout > 0):
            out.append(f"{where}: timeout must be positive seconds, got {step.timeout!r}")
        if not isinstance(step.isolated, bool):
            out.append(f"{where}: isolated must be True or False, got {step.isolated!r}")
        for field in ("max_retries", "output_retries", "tool_retries"):
            value = getattr(step, field)
            if not (_is_count(value) and value >= 0):
                out.append(f"{where}: {field} must be an integer >= 0, got {value!r}")
        retry = (step.retry_delay, step.retry_backoff, step.retry_max_delay, step.retry_jitter)
        if not all(_is_number(v) for v in retry) or (
            step.retry_delay < 0 or step.retry_backoff < 1 or step.retry_max_delay < 0 or not 0 <= step.retry_jitter <= 1
        ):
            out.append(
                f"{where}: retry settings need delay >= 0, backoff >= 1, max_delay >= 0 and 0 <= jitter <= 1 "
                f"(finite numbers), got delay={step.retry_delay!r}, backoff={step.retry_backoff!r}, "
                f"max_delay={step.retry_max_delay!r}, jitter={step.retry_jitter!r}"
            )
        if step.runner not in (None, "function", "agent", "tagent"):
            out.append(f"{where}: runner must be 'function', 'agent' or 'tagent', got {step.runner!r}")
        elif step.runner is not None and (step.runner == "function") != (step.fn is not None):
            has = "has fn=" if step.fn is not None else "has no fn="
            out.append(f"{where}: runner={step.runner!r} but the step {has}; runner 'function' needs fn=, 'agent' and 'tagent' take no fn=")
        return out

    def _cycles(self) -> list[list[str]]:
        """Each dependency cycle once, as a path that starts and ends at the same step."""
        state: dict[str, int] = {}
        stack: list[str] = []
        cycles: list[list[str]] = []
        seen_sets: set[frozenset[str]] = set()
        pending: list[Iterator[str]] = []  # per stack entry: the dependencies still to look at

        def enter(name: str) -> None:
            state[name] = 1
            stack.append(name)
            pending.append(iter(self.steps[name].dependencies))

        for root in self.steps:  # depth-first, without recursion: a long chain must not hit the recursion limit
            if root in state:
                continue
            enter(root)
            while pending:
                dep = next(pending[-1], None)
                if dep is None:
                    pending.pop()
                    state[stack.pop()] = 2
                elif dep not in self.steps or dep == stack[-1]:
                    continue
                elif state.get(dep) == 1:
                    cycle = stack[stack.index(dep):] + [dep]
                    key = frozenset(cycle)
                    if key not in seen_sets:
                        seen_sets.add(key)
                        cycles.append(list(reversed(cycle)))
                elif dep not in state:
                    enter(dep)
        return cycles

    def validate(self) -> Pipeline:
        """Raise PipelineValidationError listing every problem; return self when valid."""
        found = self.problems()
        if found:
            raise PipelineValidationError(self.name, found)
        return self

    # -- describing ---------------------------------------------------------------

    def plan(self) -> Plan:
        """The validated, declarative form of this pipeline (what the engine runs)."""
        self.validate()
        pipeline_tools = [_callable_name(t) for t in self.tools]
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
                    tools=pipeline_tools + [_callable_name(t) for t in step.tools],
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
        )

    # -- documents (see export.py) ------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """This pipeline's plan as plain data, the form JSON and TOML documents hold."""
        from .export import pipeline_to_dict

        return pipeline_to_dict(self)

    def to_json(self, indent: int | None = 2) -> str:
        """This pipeline as a JSON document."""
        from .export import to_json

        return to_json(self, indent=indent)

    def to_toml(self) -> str:
        """This pipeline as a TOML document."""
        from .export import to_toml

        return to_toml(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, resolve_schemas: bool = True, resolve_functions: bool = False) -> Pipeline:
        """A validated pipeline from plain data; see `export.pipeline_from_dict` for what gets imported."""
        from .export import pipeline_from_dict

        return pipeline_from_dict(data, resolve_schemas=resolve_schemas, resolve_functions=resolve_functions)

    @classmethod
    def from_json(cls, text: str | bytes, *, resolve_schemas: bool = True, resolve_functions: bool = False) -> Pipeline:
        """A validated pipeline from a JSON document."""
        from .export import from_json

        return from_json(text, resolve_schemas=resolve_schemas, resolve_functions=resolve_functions)

    @classmethod
    def from_toml(cls, text: str | bytes, *, resolve_schemas: bool = True, resolve_functions: bool = False) -> Pipeline:
        """A validated pipeline from a TOML document."""
        from .export import from_toml

        return from_toml(text, resolve_schemas=resolve_schemas, resolve_functions=resolve_functions)

    def tools_for(self, step_name: str) -> dict[str, Callable[..., Any]]:
        """The tools a step may offer its agent: pipeline + step tools, narrowed by tools_filter."""
        step = self.steps[step_name]
        tools = {_callable_name(t): t for t in [*self.tools, *step.tools]}
        if step.tools_filter is not None:
            tools = {n: t for n, t in tools.items() if n in step.tools_filter}
        return tools


BUILTIN_TOOLS = frozenset(
    {"send_message", "receive_message", "publish_event", "read_space", "write_space", "list_space"}
)


def _is_builtin_tool(name: str) -> bool:
    return name in BUILTIN_TOOLS


def _function_ref(fn: Callable[..., Any]) -> str:
    module = getattr(fn, "__module__", None) or "?"
    qualname = getattr(fn, "__qualname__", None) or _callable_name(fn)
    return f"{module}:{qualname}"


def step_parameters(fn: Callable[..., Any]) -> list[str]:
    """Names of a step function's parameters, in order (used to bind ctx, item and dependency outputs)."""
    return list(inspect.signature(fn).parameters)
