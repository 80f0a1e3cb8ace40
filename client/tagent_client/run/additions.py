"""`ctx.add_step`: the steps a running step adds to its own run, checked where they are added.

Each call builds a `PipelineStep` from the same arguments as `Pipeline.step`, checks it at
once (a `DynamicStepError` at the call site says what is wrong) and keeps it as a `StepSpec`;
the attempt's result carries the specs to the engine (`StepSucceeded.added`), which checks
them against the whole run and adds them when the step completes (core/dynamic.py).

A step added at run time is plain data, so a worker rebuilds it from its spec: its `fn=` (and a
function `compensate=`) must be a module-level function, found by its qualified name in the
module that defines it (the pipeline's file, or a module it imports); lambdas and functions
defined inside other functions are refused. Python tools, `merge=` and callable conditions
are refused too; a dict condition, `output_schema` (a module-level class) and retries work as
in `Pipeline.step`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ..define.conditions import Condition
from ..define.plan import StepSpec
from ..define.rebuild import added_step
from ..define.spec import spec_of
from ..define.step import PipelineStep, callable_name, function_ref
from ..define.validation import parameter_problems, step_problems
from ..errors import DynamicStepError

if TYPE_CHECKING:
    from ..core.events import Dispatch
    from ..define.pipeline import Pipeline

_REFUSED = {"tools": "Python tools", "merge": "a merge= function"}


class _AnyStep(dict[str, PipelineStep]):
    """Steps known here, while any other name may be a step of the run the engine knows (it checks those)."""

    def __contains__(self, name: object) -> bool:
        return True


def findable(fn: Callable[..., Any], what: str, where: str) -> None:
    """Refuse a function a worker could not find by its `module:qualname` (a lambda, a nested function)."""
    ref = function_ref(fn)
    module, _, qualname = ref.partition(":")
    if "<lambda>" in qualname or "<locals>" in qualname:
        raise DynamicStepError(f"{where}: {what}={callable_name(fn)!r} is a lambda or a function defined inside "
                               f"another; a step added at run time runs a function found by name: define it at "
                               f"module level in the pipeline's file")
    found: Any = sys.modules.get(module)
    for attr in qualname.split("."):
        found = getattr(found, attr, None)
    if found is not fn:
        raise DynamicStepError(f"{where}: {what}={ref} cannot be found by that name in its module; "
                               f"define it at module level in the pipeline's file")


class Additions:
    """The steps one attempt adds, in order; `specs` is what its result carries."""

    def __init__(self, definition: Pipeline | None, adder: str) -> None:
        self.definition = definition
        self.adder = adder
        self.steps: dict[str, PipelineStep] = {}
        self.specs: list[StepSpec] = []

    def add(self, name: str, goal: str | None, options: Mapping[str, Any]) -> None:
        where = f"step {self.adder!r}: ctx.add_step({name!r})"
        definition = self.definition
        if definition is None:
            raise DynamicStepError(f"{where}: this context belongs to no pipeline run; add steps from a running step")
        for key, what in _REFUSED.items():
            if options.get(key):
                raise DynamicStepError(f"{where}: {what} cannot be given to a step added at run time; use pipeline "
                                       f"tools (Pipeline(tools=...)) or add the step to the pipeline itself")
        condition = options.get("condition")
        if condition is not None and callable(condition) and not isinstance(condition, Condition):
            raise DynamicStepError(f"{where}: a callable condition cannot be given to a step added at run time; "
                                   f"use a declarative one (a dict or Condition)")
        if options.get("final"):
            raise DynamicStepError(f"{where}: final=True cannot be given to a step added at run time")
        if name in definition.steps or name in self.steps:
            raise DynamicStepError(f"{where}: the run already has a step named {name!r}; a step cannot be "
                                   f"changed once defined: pick another name")
        try:
            step = PipelineStep(name=name, goal=goal, **options)
        except (TypeError, ValueError) as exc:
            raise DynamicStepError(f"{where}: {exc}") from None
        if step.fn is not None and callable(step.fn):
            findable(step.fn, "fn", where)
        if callable(step.compensate):
            findable(step.compensate, "compensate", where)
        known = _AnyStep({**definition.steps.by_name(), **self.steps})
        problems = step_problems(step, known, {callable_name(t) for t in definition.tools})
        problems += parameter_problems(step, {**definition.steps.by_name(), **self.steps}, definition.params, None)
        if problems:
            raise DynamicStepError(f"{where}: {'; '.join(problems)}")
        self.steps[name] = step
        self.specs.append(spec_of(step, [callable_name(t) for t in definition.tools]))


def pipeline_for(pipeline: Pipeline, task: Dispatch) -> Pipeline:
    """`pipeline`, or for a step added at run time a copy of it holding that step, rebuilt from `task.spec`
    (PipelineLoadError if its function cannot be found by name)."""
    if task.spec is None or task.step in pipeline.steps:
        return pipeline
    from ..define.pipeline import Pipeline  # noqa: PLC0415 - only added steps need a copy

    copy = Pipeline(pipeline)
    copy.add_step(added_step(task.spec))
    return copy
