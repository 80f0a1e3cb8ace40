"""Checking a pipeline definition: each step's problems, dependency cycles, parameter binding.

`Pipeline.problems()` / `Pipeline.validate()` call these; every problem is one line that
names the step and says what to do. Nothing here runs user code: functions are only
inspected (their signatures).

Function-step parameters (`binding` has the rules) are checked against what can fill
them. A parameter that is no dependency, not `ctx` and not `item` can only be a submit
param, which is known for sure only when a run is submitted, so:

- with the submit params given (`validate(params=...)`, and at every submit: `tagent submit`,
  `Client.submit`, the watched folder, triggered runs, `run_pipeline`), every such name
  must be one of them;
- without them, when the pipeline declares its params (`Pipeline(params=[...])`), every
  such name must be declared;
- without either, only names that are certainly wrong are reported: a step that is not a
  dependency, or a near-miss of `ctx`, `item` or a step name (`frist` for `first`). The
  rest are taken as submit params and checked at submit.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from ..bounds import NAME_MAX
from ..errors import shorten
from . import binding, subpipeline
from .conditions import Condition
from .plan import DependencyType, ExecutionMode
from .step import callable_name

if TYPE_CHECKING:
    from .step import PipelineStep

NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*\Z")  # \Z: "$" would accept a trailing newline
#: Tools every agent step may be given through tools_filter without registering them (docs/broker.md).
BUILTIN_TOOLS = frozenset(
    {"send_message", "receive_message", "publish_event", "read_space", "write_space", "list_space"}
)


def is_number(value: Any) -> bool:
    """A finite int or float (not bool): what a Plan can carry through JSON and msgpack unchanged."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


RESOURCE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:\-]{0,63}\Z")
#: Ray's own names for what `num_cpus`, `num_gpus` and `memory` ask for: a step must use those keys instead.
RAY_BUILTIN = {"CPU": "num_cpus", "GPU": "num_gpus", "object_store_memory": "memory"}


def resource_problems(resources: Any, where: str) -> list[str]:
    """Problems with a step's `resources=`: a mapping of `num_cpus` / `num_gpus` (numbers >= 0), `memory` (bytes, an
    integer > 0) or custom resource names (numbers > 0, whole above 1, as Ray counts them) to amounts."""
    if resources is None:
        return []
    if not isinstance(resources, Mapping):
        return [f"{where}: resources must be a mapping like {{'num_cpus': 4}}, got {type(resources).__name__}"]
    out: list[str] = []
    for key, value in resources.items():
        at = f"{where}: resources[{key!r}]"
        if not isinstance(key, str) or not RESOURCE_NAME.match(key):
            out.append(f"{at}: a resource name starts with a letter or _ and uses letters, digits, _ . : - "
                       f"(at most 64 characters)")
        elif key in RAY_BUILTIN:
            out.append(f"{at}: write {RAY_BUILTIN[key]!r} instead")
        elif not is_number(value):
            out.append(f"{at} must be a number, got {value!r}")
        elif key == "memory":
            if not (is_count(value) and value > 0):
                out.append(f"{at} must be a whole number of bytes > 0, got {value!r}")
        elif key in ("num_cpus", "num_gpus"):
            if value < 0:
                out.append(f"{at} must be >= 0, got {value!r}")
        elif value <= 0 or (value > 1 and value != int(value)):
            out.append(f"{at} must be > 0, and a whole number above 1, got {value!r}")
    return out


def parameter_problems(step: PipelineStep, steps: Mapping[str, PipelineStep], declared: Collection[str] | None,
                       params: Collection[str] | None) -> list[str]:
    """Problems binding the parameters of a function step among `steps`, with the pipeline's `declared` params
    (see the module docstring for `params`)."""
    fn = step.fn if step.pipeline is None else step.params  # a sub-pipeline's params= is bound like a step function
    if fn is None or not callable(fn):
        return []
    where = f"step {shorten(step.name)!r}"
    label = f"{callable_name(fn)}()"
    deps = step.dependencies
    parallel = step.execution_mode is ExecutionMode.PARALLEL_MERGE
    out = []
    sig = binding.signature(fn)
    item = sig.parameters.get(binding.ITEM) if sig is not None else None
    if item is not None and not parallel and binding.ITEM not in deps and item.default is item.empty:
        out.append(f"{where}: parameter 'item' of {label} is only filled in PARALLEL_MERGE steps (with the current "
                   f"item); make the step execution_mode=PARALLEL_MERGE with over=, or rename the parameter")
    known = params if params is not None else declared
    for name in binding.param_names(fn, deps):
        if known is not None and name in known:
            continue
        in_scope = [binding.CONTEXT, binding.ITEM, *deps, *steps]  # only here: a list of every step for each step is O(N^2)
        guess = binding.misspelling(name, known or (), in_scope)
        if name in steps:
            reason = f"names step {name!r}, which is not among its depends_on: add it there, or rename the parameter"
        elif params is not None:
            note = binding.notes(f"given: {', '.join(sorted(params)) or 'none'}", guess)
            reason = f"matches no dependency, 'ctx' or submit param{note}: rename it, give it a default, or add the dependency or param"
        elif known is not None:
            note = binding.notes(f"declared: {', '.join(known) or 'none'}", guess)
            reason = (f"matches no dependency, 'ctx' or declared param{note}: rename it, give it a default, "
                      f"or add the dependency or declare the param")
        elif guess is not None:
            reason = (f"matches no dependency or 'ctx'{binding.notes(guess)}: rename it, give it a default, or add the "
                      f"dependency; a submit param needs declaring: Pipeline(..., params=[{name!r}])")
        else:
            continue  # taken to be a submit param: checked when a run is submitted
        out.append(f"{where}: parameter {name!r} of {label} {reason}")
    return out


def compensation_problems(step: PipelineStep, where: str) -> list[str]:
    """Problems of a step's `compensate=` and its timeout and retries."""
    out = []
    comp = step.compensate
    if comp is not None and not callable(comp) and not (isinstance(comp, str) and comp.strip()):
        out.append(f"{where}: compensate= must be a function (ctx, output) or an agent goal (a string), got {type(comp).__name__}")
    timeout = step.compensate_timeout
    if timeout is not None and not (is_number(timeout) and timeout > 0):
        out.append(f"{where}: compensate_timeout must be a positive number of seconds, got {timeout!r}")
    if not (is_count(step.compensate_retries) and step.compensate_retries >= 0):
        out.append(f"{where}: compensate_retries must be a non-negative integer, got {step.compensate_retries!r}")
    return out


def step_problems(step: PipelineStep, steps: Mapping[str, PipelineStep], pipeline_tools: set[str]) -> list[str]:
    """Every problem of one step's definition among `steps` (binding of its parameters: `parameter_problems`)."""
    where = f"step {shorten(step.name)!r}"
    out: list[str] = []
    if isinstance(step.name, str) and len(step.name) > NAME_MAX:
        out.append(f"{where}: name is too long: names have at most {NAME_MAX} characters")
    elif not isinstance(step.name, str) or not NAME.match(step.name) or step.name in ("shared", "params"):
        out.append(f"{where}: name must start with a letter or _, use letters, digits, _ and -, and not be 'shared' or 'params'")
    child = subpipeline.params_problem(step)
    if child is not None:
        out.append(f"{where}: {child}")
    elif step.fn is None and not step.goal and step.runner != "tagent" and step.pipeline is None:
        out.append(f"{where}: needs a goal= (agent step) or fn= (function step)")
    if step.fn is not None and step.goal:
        out.append(f"{where}: has both goal= and fn=; a step is either an agent or a function")
    if step.fn is not None and not callable(step.fn):
        out.append(f"{where}: fn= must be callable, got {type(step.fn).__name__}")
    if step.goal is not None and not isinstance(step.goal, str):
        out.append(f"{where}: goal= must be a string, got {type(step.goal).__name__}")
    out.extend(compensation_problems(step, where))
    deps = step.dependencies
    for dep in deps:
        if dep == step.name:
            out.append(f"{where}: depends on itself")
        elif dep not in steps:
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
        dep_step = steps.get(dep)
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
    cond = step.condition
    if isinstance(cond, Condition):
        for ref in sorted(cond.refs()):
            if ref not in steps:
                out.append(f"{where}: condition refers to unknown step {ref!r}")
            elif ref not in deps:
                out.append(f"{where}: condition refers to {ref!r}, which is not among its depends_on")
    if step.execution_mode is ExecutionMode.CONDITIONAL and cond is None and not step.constraints:
        out.append(f"{where}: execution_mode CONDITIONAL needs a condition= (when(...) or a function) or "
                   f"constraints= (the step's model then judges them before the step runs)")
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
    if step.timeout is not None and not (is_number(step.timeout) and step.timeout > 0):
        out.append(f"{where}: timeout must be positive seconds, got {step.timeout!r}")
    if not isinstance(step.isolated, bool):
        out.append(f"{where}: isolated must be True or False, got {step.isolated!r}")
    out.extend(resource_problems(step.resources, where))
    for field in ("max_retries", "output_retries", "tool_retries"):
        value = getattr(step, field)
        if not (is_count(value) and value >= 0):
            out.append(f"{where}: {field} must be an integer >= 0, got {value!r}")
    retry = (step.retry_delay, step.retry_backoff, step.retry_max_delay, step.retry_jitter)
    if not all(is_number(v) for v in retry) or (
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


def unknown_tools(step: PipelineStep, pipeline_tools: set[str]) -> str | None:
    """A warning naming the tools in `step.tools_filter` that no tool provides, or None.

    Not an error (the design documents filter on tool names a deployment may or may not have):
    the step runs with the tools that do exist.
    """
    if not isinstance(step.tools_filter, (list, tuple)) or not all(isinstance(t, str) for t in step.tools_filter):
        return None
    available = pipeline_tools | {callable_name(t) for t in step.tools}
    missing = [t for t in step.tools_filter if t not in available and t not in BUILTIN_TOOLS]
    if not missing:
        return None
    return (f"step {step.name!r}: tools_filter names {', '.join(map(repr, missing))}, which no tool provides "
            f"(known: {', '.join(sorted(available)) or 'none'}); the step runs without them")


def cycles(steps: Mapping[str, PipelineStep]) -> list[list[str]]:
    """Each dependency cycle once, as a path that starts and ends at the same step."""
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []
    seen_sets: set[frozenset[str]] = set()
    pending: list[Iterator[str]] = []  # per stack entry: the dependencies still to look at

    def enter(name: str) -> None:
        state[name] = 1
        stack.append(name)
        pending.append(iter(steps[name].dependencies))

    for root in steps:  # depth-first, without recursion: a long chain must not hit the recursion limit
        if root in state:
            continue
        enter(root)
        while pending:
            dep = next(pending[-1], None)
            if dep is None:
                pending.pop()
                state[stack.pop()] = 2
            elif dep not in steps or dep == stack[-1]:
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

