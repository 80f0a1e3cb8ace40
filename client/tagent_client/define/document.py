"""The document format of pipelines: a `Plan` as plain data, JSON and TOML, and back to a `Plan`.

A document is `Pipeline.plan()` as plain data (`msgspec.to_builtins`), so the
`Plan` stays the one source of truth for what a pipeline declares; its top-level
`format` is `PLAN_FORMAT` (a document without one is read as format 1). Nothing
here imports user code: `rebuild.py` turns a Plan read here back into steps,
`Pipeline.to_json` / `Pipeline.from_toml` (and `export.py`) put the two together.

Guarantees:

- A goal-only pipeline round-trips with no Python at all:
  ``from_json(to_json(p)).plan() == p.plan()``, and the same for TOML.
- Reading checks the whole shape (types, unknown keys, condition data, a newer
  `format`) before building anything, and a malformed document raises
  `PipelineLoadError` with one line saying where and what, e.g.
  ``pipeline file x.toml: steps[2].deps: expected object, got array``.
  A well-formed but invalid pipeline raises `PipelineValidationError` (every problem).
- `plan_from_dict` imports nothing: the daemon reads documents with it.
"""

from __future__ import annotations

import difflib
import enum
import json
import re
import tomllib
from collections.abc import Mapping
from typing import Any

import msgspec
import tomli_w

from ..errors import PipelineLoadError
from .conditions import condition_from_data
from .plan import PLAN_FORMAT, DependencyType, ExecutionMode, Plan, RetrySpec, StepKind, StepSpec

__all__ = ["load_error", "parse_json", "parse_toml", "plan_from_dict", "plan_to_dict", "plan_to_json", "plan_to_toml"]

_FIELDS = {Plan: Plan.__struct_fields__, StepSpec: StepSpec.__struct_fields__, RetrySpec: RetrySpec.__struct_fields__}
_ENUMS: dict[str, type[enum.Enum]] = {"kind": StepKind, "mode": ExecutionMode}
_MSGSPEC_ERROR = re.compile(r"^(?P<what>.*?)(?: - at `\$(?P<path>.*)`)?$", re.S)


# -- writing ------------------------------------------------------------------


def plan_to_dict(plan: Plan) -> dict[str, Any]:
    """A pipeline's Plan as plain data (None kept); ValueError if a value in shared_context or over= has no plain form."""
    try:
        return msgspec.to_builtins(plan)
    except (TypeError, ValueError) as e:
        where = _unexportable(plan)
        raise ValueError(f"pipeline {plan.name!r} cannot be exported: {where}: {e}") from None


def plan_to_json(plan: Plan, indent: int | None = 2) -> str:
    """A pipeline's Plan as a JSON document (see `plan_to_dict`)."""
    data = plan_to_dict(plan)
    try:
        return json.dumps(data, indent=indent, ensure_ascii=False, allow_nan=False)
    except ValueError as e:  # a NaN or infinity in shared_context or over=
        raise ValueError(f"pipeline {plan.name!r} cannot be written as JSON: {e}") from None


def plan_to_toml(plan: Plan) -> str:
    """A pipeline's Plan as a TOML document. None values and empty default collections are left out (TOML has no null).

    A None inside free-form data (shared_context, over=, a condition value) cannot be
    left out without changing its meaning, so it raises ValueError: use JSON for that pipeline.
    """
    data = _toml_plan(plan_to_dict(plan))
    null = _find_null(data, "")
    if null is not None:
        raise ValueError(f"pipeline {plan.name!r} cannot be written as TOML: {null} is null, which TOML cannot hold; use JSON")
    return tomli_w.dumps(data)


def _toml_plan(data: dict[str, Any]) -> dict[str, Any]:
    """A plan's data without the None values and empty defaults TOML cannot or need not hold, a sub-pipeline's too."""
    data = _drop_defaults(data, Plan)
    steps = [_drop_defaults(dict(s, retry=_drop_defaults(s["retry"], RetrySpec)), StepSpec) for s in data["steps"]]
    data["steps"] = [dict(s, child=_toml_plan(s["child"])) if "child" in s else s for s in steps]
    return data


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
        raise load_error(source, "", f"expected a table of pipeline settings at the top, got {type(data).__name__}")
    data = dict(data)
    fmt = data.get("format", PLAN_FORMAT)
    if not isinstance(fmt, int) or isinstance(fmt, bool) or fmt < 1:
        raise load_error(source, "format", f"expected a positive integer, got {fmt!r}")
    if fmt > PLAN_FORMAT:
        raise load_error(source, "", f"format {fmt} is newer than this tagent_client reads (format {PLAN_FORMAT}); upgrade tagent_client")
    data = _prepare_plan(data, "", source)
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
                raise load_error(source, f"steps[{i}].condition{at.removeprefix('$')}", what or at) from None
    return plan


def parse_json(text: str | bytes, source: str = "pipeline JSON") -> Any:
    """A JSON document's content (duplicate keys, NaN and infinities refused); PipelineLoadError if it is not JSON."""
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError) as e:
        raise load_error(source, "", f"not valid JSON: {e}") from None


def parse_toml(text: str | bytes, source: str = "pipeline TOML") -> Any:
    """A TOML document's content; PipelineLoadError if it is not TOML."""
    try:
        return tomllib.loads(text.decode() if isinstance(text, bytes) else text)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise load_error(source, "", f"not valid TOML: {e}") from None


def load_error(source: str, where: str, what: str) -> PipelineLoadError:
    """The one-line error for a malformed document: `source: where: what`."""
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
    return load_error(source, path, what)


def _choices(enum_type: type[enum.Enum]) -> str:
    return ", ".join(repr(v.value) for v in enum_type)


def _check_keys(data: Mapping[str, Any], struct: type[msgspec.Struct], where: str, source: str) -> None:
    known = _FIELDS[struct]
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"expected one of: {', '.join(known)}"
            raise load_error(source, where, f"unknown key {key!r}; {hint}")


def _prepare_plan(data: dict[str, Any], where: str, source: str) -> dict[str, Any]:
    """Check a plan's keys and prepare its steps (a sub-pipeline's plan too)."""
    _check_keys(data, Plan, where, source)
    steps = data.get("steps")
    if isinstance(steps, list):
        prefix = f"{where}." if where else ""
        data["steps"] = [_prepare_step(s, f"{prefix}steps[{i}]", source) for i, s in enumerate(steps)]
    return data


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
                raise load_error(source, f"{where}.deps.{dep}", f"unknown dependency type {kind!r}; expected one of {_choices(DependencyType)}")
    step = dict(step)
    if isinstance(step.get("child"), Mapping):
        step["child"] = _prepare_plan(dict(step["child"]), f"{where}.child", source)
    if "kind" not in step:
        step["kind"] = ("pipeline" if step.get("child") else "function" if step.get("function")
                        else "tagent" if step.get("runner") == "tagent" else "agent")
    return step


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")
