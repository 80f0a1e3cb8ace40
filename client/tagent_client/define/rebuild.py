"""A pipeline's steps rebuilt from a `Plan` read from a document (`document.py`), importing what it names.

Python cannot be written down: a function step is exported as its ``"module:qualname"``
reference and imported only with ``resolve_functions=True``; tools, merge= functions and
callable conditions refuse to load from a document. Output schemas are exported as
``"module:QualName"`` and imported with importlib (``resolve_schemas=False`` leaves them
unset). Importing runs the named modules: load only documents you trust. Every failure is
a `PipelineLoadError` naming the step and the reference.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import msgspec
from pydantic import BaseModel

from .conditions import condition_from_data
from .document import load_error
from .plan import Plan, StepKind, StepSpec
from .step import PipelineStep


def steps_from_plan(plan: Plan, source: str, *, resolve_schemas: bool = True, resolve_functions: bool = False,
                    child: Callable[[Plan], Any] | None = None) -> list[PipelineStep]:
    """The plan's steps as `PipelineStep`s, in order (`source` names the document in errors). `child` builds a
    sub-pipeline step's Pipeline from its plan (Pipeline.from_dict passes its own builder)."""
    return [_step_from_spec(spec, f"steps[{i}]", source, resolve_schemas, resolve_functions, child)
            for i, spec in enumerate(plan.steps)]


def added_step(spec: StepSpec) -> PipelineStep:
    """A step added at run time (`ctx.add_step`), rebuilt from its spec where it runs: its functions and schema
    are found by `module:qualname` (the pipeline's module is already imported). PipelineLoadError if one is not."""
    return _step_from_spec(msgspec.structs.replace(spec, tools=[]), "added step", f"the run (added by step "
                           f"{spec.added_by!r})", True, True)


def _step_from_spec(spec: StepSpec, where: str, source: str, resolve_schemas: bool, resolve_functions: bool,
                    child: Callable[[Plan], Any] | None = None) -> PipelineStep:
    where = f"{where} ({spec.name!r})"
    needs_python = "need the Python file that defines the pipeline: load that file instead"
    if spec.child_params_callable:
        raise load_error(source, where, f"computes its child's params with a function; Python functions {needs_python}")
    if spec.kind is StepKind.PIPELINE and (spec.child is None or child is None):
        raise load_error(source, where, "kind 'pipeline' needs child = the sub-pipeline's plan")
    if spec.tools:
        raise load_error(source, where, f"uses the Python tools {spec.tools}; tools {needs_python}")
    if spec.has_merge:
        raise load_error(source, where, f"has a merge= function; Python functions {needs_python}")
    if spec.condition_is_callable:
        raise load_error(source, where, f"has a callable condition; Python functions {needs_python}")
    fn = None
    if spec.kind is StepKind.FUNCTION and spec.function is None:
        raise load_error(source, where, "kind 'function' needs function = 'module:qualname'")
    if spec.function is not None:
        if not resolve_functions:
            raise load_error(source, where, f"is a function step ({spec.function}); function steps {needs_python}, "
                                        "or pass resolve_functions=True to import the function")
        fn = _resolve(spec.function, "function", where, source)
        if not callable(fn):
            raise load_error(source, where, f"function {spec.function!r} is not callable (got {type(fn).__name__})")
    compensate: Any = spec.compensate_goal
    if spec.compensate is not None:
        if not resolve_functions:
            raise load_error(source, where, f"has a compensate= function ({spec.compensate}); Python functions "
                                        f"{needs_python}, or pass resolve_functions=True to import the function")
        compensate = _resolve(spec.compensate, "compensate", where, source)
    schema = None
    if spec.output_schema is not None and resolve_schemas:
        schema = _resolve(spec.output_schema, "output_schema", where, source)
        if not (isinstance(schema, type) and issubclass(schema, BaseModel)):
            raise load_error(source, where, f"output_schema {spec.output_schema!r} is not a pydantic model (got {schema!r})")
    step = PipelineStep(
        name=spec.name,
        goal=spec.goal,
        fn=fn,
        depends_on=dict(spec.deps),
        execution_mode=spec.mode,
        description=spec.description,
        constraints=list(spec.constraints),
        timeout=spec.timeout,
        isolated=spec.isolated,
        resources=dict(spec.resources) or None,
        max_retries=spec.retry.max_retries,
        retry_delay=spec.retry.delay,
        retry_backoff=spec.retry.backoff,
        retry_max_delay=spec.retry.max_delay,
        retry_jitter=spec.retry.jitter,
        tools_filter=list(spec.tools_filter) if spec.tools_filter is not None else None,
        output_schema=schema,
        model=spec.model,
        output_retries=spec.output_retries,
        tool_retries=spec.tool_retries,
        condition=condition_from_data(spec.condition) if spec.condition is not None else None,
        over=spec.over,
        data_fields={k: list(v) for k, v in spec.data_fields.items()},
        required=spec.required,
        final=spec.final,
        runner=spec.runner,
        compensate=compensate,
        compensate_timeout=spec.compensate_timeout,
        compensate_retries=spec.compensate_retries,
        pipeline=child(spec.child) if spec.child is not None and child is not None else None,
        params=dict(spec.child_params) if spec.child_params is not None else None,
    )
    if step.kind is not spec.kind:
        raise load_error(source, where, f"kind {spec.kind.value!r} does not match the step, whose other keys make it {step.kind.value!r}")
    return step


def _resolve(ref: str, what: str, where: str, source: str) -> Any:
    """Import `module:QualName`; PipelineLoadError naming the step and the reference on any failure."""
    module_name, sep, qualname = ref.partition(":")
    if not (sep and module_name and qualname):
        raise load_error(source, where, f"{what} {ref!r} is not a 'module:QualName' reference")
    if "<locals>" in qualname:
        raise load_error(source, where, f"{what} {ref!r} was defined inside a function and cannot be imported; move it to module level")
    try:
        obj: Any = importlib.import_module(module_name)
        for attr in qualname.split("."):
            obj = getattr(obj, attr)
    except Exception as e:  # noqa: BLE001 - importing user code can raise anything
        raise load_error(source, where, f"cannot import {what} {ref!r}: {type(e).__name__}: {e}") from None
    return obj
