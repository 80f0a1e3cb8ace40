"""Pipelines as JSON and TOML documents, and back.

A document is `Pipeline.plan()` as plain data (`msgspec.to_builtins`), so the
`Plan` stays the one source of truth for what a pipeline declares; its top-level
`format` is `PLAN_FORMAT` (a document without one is read as format 1).

Guarantees:

- A goal-only pipeline round-trips with no Python at all:
  ``from_json(to_json(p)).plan() == p.plan()``, and the same for TOML.
- Reading checks the whole shape (types, unknown keys, condition data, a newer
  `format`) before building anything, and a malformed document raises
  `PipelineLoadError` with one line saying where and what, e.g.
  ``pipeline file x.toml: steps[2].deps: expected object, got array``.
  A well-formed but invalid pipeline raises `PipelineValidationError` (every problem).
- Python cannot be written down: function steps are exported as their
  ``"module:qualname"`` reference and imported only with ``resolve_functions=True``;
  tools, merge= functions and callable conditions refuse to load from a document.
- Output schemas are exported as ``"module:QualName"`` and imported with importlib
  (``resolve_schemas=False`` leaves them unset). Importing runs the named modules:
  load only documents you trust; the daemon reads documents with `plan_from_dict`, which imports nothing.
"""

from __future__ import annotations

import difflib
import enum
import importlib
import json
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import tomli_w
from pydantic import BaseModel

from .conditions import condition_from_data
from ..errors import PipelineLoadError
from .plan import PLAN_FORMAT, DependencyType, ExecutionMode, Plan, RetrySpec, StepKind, StepSpec

if TYPE_CHECKING:
    from .pipeline import Pipeline, PipelineStep

__all__ = [
    "from_json", "from_toml", "load_file", "pipeline_from_dict", "pipeline_to_dict",
    "plan_from_dict", "to_json", "to_toml",
]

_FIELDS = {Plan: Plan.__struct_fields__, StepSpec: StepSpec.__struct_fields__, RetrySpec: RetrySpec.__struct_fields__}
_ENUMS: dict[str, type[enum.Enum]] = {"kind": StepKind, "mode": ExecutionMode}
_MSGSPEC_ERROR = re.compile(r"^(?P<what>.*?)(?: - at `\$(?P<path>.*)`)?$", re.S)


# -- writing ------------------------------------------------------------------


def pipeline_to_dict(p: Pipeline) -> dict[str, Any]:
    """The pipeline's Plan as plain data (None kept).

    Raises PipelineValidationError if the pipeline is invalid, ValueError if a value
    in shared_context or over= has no plain form.
    """
    plan = p.plan()
    try:
        return msgspec.to_builtins(plan)
    except (TypeError, ValueError) as e:
        where = _unexportable(plan)
        raise ValueError(f"pipeline {p.name!r} cannot be exported: {where}: {e}") from None


def to_json(p: Pipeline, indent: int | None = 2) -> str:
    """The pipeline as a JSON document (see `pipeline_to_dict`)."""
    data = pipeline_to_dict(p)
    try:
        return json.dumps(data, indent=indent, ensure_ascii=False, allow_nan=False)
    except ValueError as e:  # a NaN or infinity in shared_context or over=
        raise ValueError(f"pipeline {p.name!r} cannot be written as JSON: {e}") from None


def to_toml(p: Pipeline) -> str:
    """The pipeline as a TOML document. None values and empty default collections are left out (TOML has no null).

    A None inside free-form data (shared_context, over=, a condition value) cannot be
    left out without changing its meaning, so it raises ValueError: use JSON for that pipeline.
    """
    data = _drop_defaults(pipeline_to_dict(p), Plan)
    data["steps"] = [_drop_defaults(dict(s, retry=_drop_defaults(s["retry"], RetrySpec)), StepSpec) for s in data["steps"]]
    null = _find_null(data, "")
    if null is not None:
        raise ValueError(f"pipeline {p.name!r} cannot be written as TOML: {null} is null, which TOML cannot hold; use JSON")
    return tomli_w.dumps(data)


def _drop_defaults(data: dict[str, Any], struct: type[msgspec.Struct]) -> dict[str, Any]:
    empty = {f.name for f in msgspec.structs.fields(struct) if f.default_factory in (dict, list)}
    return {k: v for k, v in data.items() if v is not None and not (k in empty and v in ({}, []))}


def _find_null(value: Any, path: str) -> str | None:
    if value is None:
        return path
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = _find_null(item, f"{path}.{key}" if isinstance(key, str) else f"{path}[{key}]")
        if found is not None:
            return found.lstrip(".")
    return None


def _unexportable(plan: Plan) -> str:
    for where, value in [("shared_context", plan.shared_context), *((f"steps[{i}].over", s.over) for i, s in enumerate(plan.steps))]:
        try:
            msgspec.to_builtins(value)
        except (TypeError, ValueError):
            return where
    return "a value"


# -- reading ------------------------------------------------------------------


def plan_from_dict(data: Any, *, source: str = "pipeline data") -> Plan:
    """Check a document's shape and return its Plan, importing nothing. PipelineLoadError on anything malformed."""
    if not isinstance(data, Mapping):
        raise _error(source, "", f"expected a table of pipeline settings at the top, got {type(data).__name__}")
    data = dict(data)
    fmt = data.get("format", PLAN_FORMAT)
    if not isinstance(fmt, int) or isinstance(fmt, bool) or fmt < 1:
        raise _error(source, "format", f"expected a positive integer, got {fmt!r}")
    if fmt > PLAN_FORMAT:
        raise _error(source, "", f"format {fmt} is newer than this tagent_client reads (format {PLAN_FORMAT}); upgrade tagent_client")
    _check_keys(data, Plan, "", source)
    steps = data.get("steps")
    if isinstance(steps, list):
        data["steps"] = [_prepare_step(s, f"steps[{i}]", source) for i, s in enumerate(steps)]
    try:
        plan = msgspec.convert(data, Plan)
    except msgspec.ValidationError as e:
        raise _from_msgspec(source, str(e)) from None
    for i, spec in enumerate(plan.steps):
        if spec.condition is not None:
            try:
                condition_from_data(spec.condition)
            except ValueError as e:
                at, _, what = str(e).removeprefix("bad condition data: ").partition(": ")
                raise _error(source, f"steps[{i}].condition{at.removeprefix('$')}", what or at) from None
    return plan


def pipeline_from_dict(
    data: Any, *, resolve_schemas: bool = True, resolve_functions: bool = False, source: str = "pipeline data"
) -> Pipeline:
    """Build and validate a Pipeline from a document (see the module docstring for what gets imported)."""
    from .pipeline import Pipeline

    plan = plan_from_dict(data, source=source)
    p = Pipeline(
        plan.name,
        plan.description,
        global_constraints=plan.global_constraints,
        shared_context=plan.shared_context,
        model=plan.model,
        max_concurrent_steps=plan.max_concurrent_steps,
        fail_fast=plan.fail_fast,
        triggers=plan.triggers,
        capabilities=plan.capabilities,
        params=plan.params,
    )
    for i, spec in enumerate(plan.steps):
        p.add_step(_step_from_spec(spec, f"steps[{i}]", source, resolve_schemas, resolve_functions))
    return p.validate()


def from_json(text: str | bytes, *, resolve_schemas: bool = True, resolve_functions: bool = False,
              source: str = "pipeline JSON") -> Pipeline:
    """Build a Pipeline from a JSON document."""
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError) as e:
        raise _error(source, "", f"not valid JSON: {e}") from None
    return pipeline_from_dict(data, resolve_schemas=resolve_schemas, resolve_functions=resolve_functions, source=source)


def from_toml(text: str | bytes, *, resolve_schemas: bool = True, resolve_functions: bool = False,
              source: str = "pipeline TOML") -> Pipeline:
    """Build a Pipeline from a TOML document."""
    try:
        data = tomllib.loads(text.decode() if isinstance(text, bytes) else text)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise _error(source, "", f"not valid TOML: {e}") from None
    return pipeline_from_dict(data, resolve_schemas=resolve_schemas, resolve_functions=resolve_functions, source=source)


def load_file(path: str | Path, *, resolve_schemas: bool = True, resolve_functions: bool = False) -> Pipeline:
    """Build a Pipeline from a .json or .toml file, chosen by its suffix."""
    path = Path(path)
    source = f"pipeline file {path}"
    readers = {".json": from_json, ".toml": from_toml}
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise _error(source, "", f"unknown suffix {path.suffix!r}; expected .json or .toml")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise _error(source, "", f"cannot read it: {e.strerror or e}") from None
    return reader(raw, resolve_schemas=resolve_schemas, resolve_functions=resolve_functions, source=source)


def _error(source: str, where: str, what: str) -> PipelineLoadError:
    return PipelineLoadError(f"{source}: {where}: {what}" if where else f"{source}: {what}", source=source, where=where)


def _from_msgspec(source: str, message: str) -> PipelineLoadError:
    """Turn "Expected `str`, got `int` - at `$.steps[2].name`" into "steps[2].name: expected str, got int"."""
    m = _MSGSPEC_ERROR.match(message)
    what, path = (m["what"], (m["path"] or "").lstrip(".")) if m else (message, "")
    what = re.sub(r"^Object missing required field `(.+)`$", r"missing required key '\1'", what)
    what = what.replace("`", "")
    what = what[:1].lower() + what[1:]
    enum_type = _ENUMS.get(path.rpartition(".")[2])
    if enum_type is not None and what.startswith("invalid enum value"):
        what += f"; expected one of {_choices(enum_type)}"
    return _error(source, path, what)


def _choices(enum_type: type[enum.Enum]) -> str:
    return ", ".join(repr(v.value) for v in enum_type)


def _check_keys(data: Mapping[str, Any], struct: type[msgspec.Struct], where: str, source: str) -> None:
    known = _FIELDS[struct]
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"expected one of: {', '.join(known)}"
            raise _error(source, where, f"unknown key {key!r}; {hint}")


def _prepare_step(step: Any, where: str, source: str) -> Any:
    """Check a step's keys; fill in `kind` when left out (function ref → function, runner tagent → tagent, else agent)."""
    if not isinstance(step, Mapping):
        return step  # msgspec.convert reports the wrong type with its path
    _check_keys(step, StepSpec, where, source)
    if isinstance(step.get("retry"), Mapping):
        _check_keys(step["retry"], RetrySpec, f"{where}.retry", source)
    deps = step.get("deps")
    if isinstance(deps, Mapping):  # checked here, where the dependency's name is still known
        known = tuple(t.value for t in DependencyType)
        for dep, kind in deps.items():
            if not (isinstance(kind, str) and kind in known):  # a tuple: DependencyType members hash unlike their values
                raise _error(source, f"{where}.deps.{dep}", f"unknown dependency type {kind!r}; expected one of {_choices(DependencyType)}")
    step = dict(step)
    if "kind" not in step:
        step["kind"] = "function" if step.get("function") else "tagent" if step.get("runner") == "tagent" else "agent"
    return step


def _step_from_spec(spec: StepSpec, where: str, source: str, resolve_schemas: bool, resolve_functions: bool) -> PipelineStep:
    from .pipeline import PipelineStep

    where = f"{where} ({spec.name!r})"
    needs_python = "need the Python file that defines the pipeline: load that file instead"
    if spec.tools:
        raise _error(source, where, f"uses the Python tools {spec.tools}; tools {needs_python}")
    if spec.has_merge:
        raise _error(source, where, f"has a merge= function; Python functions {needs_python}")
    if spec.condition_is_callable:
        raise _error(source, where, f"has a callable condition; Python functions {needs_python}")
    fn = None
    if spec.kind is StepKind.FUNCTION and spec.function is None:
        raise _error(source, where, "kind 'function' needs function = 'module:qualname'")
    if spec.function is not None:
        if not resolve_functions:
            raise _error(source, where, f"is a function step ({spec.function}); function steps {needs_python}, "
                                        "or pass resolve_functions=True to import the function")
        fn = _resolve(spec.function, "function", where, source)
        if not callable(fn):
            raise _error(source, where, f"function {spec.function!r} is not callable (got {type(fn).__name__})")
    schema = None
    if spec.output_schema is not None and resolve_schemas:
        schema = _resolve(spec.output_schema, "output_schema", where, source)
        if not (isinstance(schema, type) and issubclass(schema, BaseModel)):
            raise _error(source, where, f"output_schema {spec.output_schema!r} is not a pydantic model (got {schema!r})")
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
    )
    if step.kind is not spec.kind:
        raise _error(source, where, f"kind {spec.kind.value!r} does not match the step, whose other keys make it {step.kind.value!r}")
    return step


def _resolve(ref: str, what: str, where: str, source: str) -> Any:
    """Import `module:QualName`; PipelineLoadError naming the step and the reference on any failure."""
    module_name, sep, qualname = ref.partition(":")
    if not (sep and module_name and qualname):
        raise _error(source, where, f"{what} {ref!r} is not a 'module:QualName' reference")
    if "<locals>" in qualname:
        raise _error(source, where, f"{what} {ref!r} was defined inside a function and cannot be imported; move it to module level")
    try:
        obj: Any = importlib.import_module(module_name)
        for attr in qualname.split("."):
            obj = getattr(obj, attr)
    except Exception as e:  # noqa: BLE001 - importing user code can raise anything
        raise _error(source, where, f"cannot import {what} {ref!r}: {type(e).__name__}: {e}") from None
    return obj


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")
