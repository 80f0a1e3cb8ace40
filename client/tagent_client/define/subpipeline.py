"""Sub-pipeline steps (`pipeline=`): which pipeline a step runs as a child run, and the checks on nesting.

`pipeline=` takes a `Pipeline`, a file path (`.py`, `.toml`, `.json`) or `"file.py:name"`. A path is read
once, when the step is declared (a relative path is looked up next to the file that declares the step,
then in the current directory), so the child is a `Pipeline` object from then on, and a pipeline file that
includes another ships its child with it: a worker that imports the parent file has the child too.

Checked before anything runs:
- a pipeline that includes itself, directly or through others, is a validation error (`cycle`), and so is
  a file that, while being read for `pipeline=`, is asked for again;
- `nesting_depth(plan)` lets a runner refuse a plan nested deeper than its limit (`depth_problem`).
"""

from __future__ import annotations

import contextvars
import hashlib
import importlib.util
import inspect
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import PipelineLoadError, PipelineValidationError

if TYPE_CHECKING:
    from .plan import Plan

Pipeline = TypeVar("Pipeline")  # define.pipeline.Pipeline, which imports this module (so it passes itself in)

#: The files being read for `pipeline=` right now, outermost first (a file asked for again is a cycle).
_READING: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("tagent_subpipeline_reading", default=())


def resolve_child(ref: Any, kind: type[Pipeline]) -> Pipeline:
    """The `Pipeline` (`kind`: the class, given by pipeline.py) a `pipeline=` value names. PipelineLoadError for
    a file that cannot be read or holds no such pipeline; PipelineValidationError for a cycle of files that
    include each other."""
    if isinstance(ref, kind):
        return ref
    if not isinstance(ref, (str, os.PathLike)):
        raise PipelineLoadError(f"pipeline= must be a Pipeline, a file path or 'file.py:name', got {type(ref).__name__}")
    text = os.fspath(ref)
    path, name = text, None
    if ":" in text and not os.path.exists(text):
        path, _, name = text.rpartition(":")
    found = _locate(path)
    reading = _READING.get()
    if found in reading:
        chain = " -> ".join(Path(p).name for p in (*reading[reading.index(found):], found))
        raise PipelineValidationError(Path(found).stem, [f"sub-pipeline cycle: {chain}: a pipeline may not include itself"])
    token = _READING.set((*reading, found))
    try:
        return _read(found, name, kind)
    finally:
        _READING.reset(token)


def _locate(path: str) -> str:
    """The absolute path of `path`: next to the file declaring the step first, then from the current directory."""
    candidates = [path] if os.path.isabs(path) else []
    if not candidates:
        frame = inspect.currentframe()
        while frame is not None:
            file = frame.f_globals.get("__file__")
            if file and not frame.f_globals.get("__name__", "").startswith("tagent_client."):
                candidates.append(os.path.join(os.path.dirname(os.path.abspath(file)), path))
                break
            frame = frame.f_back
        candidates.append(os.path.abspath(path))
    for candidate in candidates:
        if os.path.isfile(candidate):
            return os.path.abspath(candidate)
    raise PipelineLoadError(f"pipeline={path!r}: no such file (looked in {', '.join(dict.fromkeys(candidates))})",
                            path=path)


def _read(path: str, name: str | None, kind: type[Pipeline]) -> Pipeline:
    if path.lower().endswith(".toml"):
        return kind.from_toml(Path(path).read_bytes(), source=f"pipeline file {path}")  # type: ignore[attr-defined, no-any-return]
    if path.lower().endswith(".json"):
        return kind.from_json(Path(path).read_bytes(), source=f"pipeline file {path}")  # type: ignore[attr-defined, no-any-return]
    module_name = "tagent_child_" + hashlib.sha256(path.encode()).hexdigest()[:16]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise PipelineLoadError(f"pipeline={path!r}: not a Python file, nor .toml / .json", path=path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except (PipelineValidationError, PipelineLoadError):
        sys.modules.pop(module_name, None)
        raise
    except Exception as exc:  # noqa: BLE001 - any error importing the child file is a load error, in one line
        sys.modules.pop(module_name, None)
        raise PipelineLoadError(f"pipeline={path!r}: {type(exc).__name__}: {exc}", path=path) from None
    found = {id(v): (var, v) for var, v in vars(module).items() if isinstance(v, kind)}
    pipelines = list(found.values())
    if name is not None:
        pipelines = [(var, p) for var, p in pipelines if name in (var, p.name)]
    if name is None and len(pipelines) > 1:  # the one the others run as sub-pipelines
        children = {id(s.pipeline) for _, p in pipelines for s in p.steps if s.pipeline is not None}  # type: ignore[attr-defined]
        pipelines = [(var, p) for var, p in pipelines if id(p) not in children]
    if len(pipelines) != 1:
        what = f"no pipeline named {name!r}" if name is not None else f"{len(pipelines)} pipelines, not one"
        raise PipelineLoadError(f"pipeline={path!r}: {what}; name one with 'file.py:name'", path=path)
    return pipelines[0][1]


def cycle(pipeline: Any) -> list[str] | None:
    """The names along a chain of sub-pipelines that leads back to one already on it, or None."""
    def visit(current: Any, path: list[Any]) -> list[str] | None:
        if any(current is p for p in path):
            return [p.name for p in path[[id(p) for p in path].index(id(current)):]] + [current.name]
        for step in current.steps:
            if step.pipeline is not None:
                found = visit(step.pipeline, [*path, current])
                if found:
                    return found
        return None

    return visit(pipeline, [])


def nesting_depth(plan: Plan) -> int:
    """How deep sub-pipelines nest under `plan`: 0 without any, 1 when its children have none, ..."""
    depths = [1 + nesting_depth(spec.child) for spec in plan.steps if spec.child is not None]
    return max(depths, default=0)


def depth_problem(plan: Plan, limit: int) -> str | None:
    """A one-line problem when `plan` nests sub-pipelines deeper than `limit`, else None."""
    depth = nesting_depth(plan)
    if depth <= limit:
        return None
    return (f"sub-pipelines nest {depth} levels deep under pipeline {plan.name!r}, more than the limit of {limit}: "
            f"flatten the nesting, or raise max_child_depth (tagentd.toml)")


def child_params_of(step: Any) -> tuple[dict[str, Any] | None, bool]:
    """(literal params, whether a function computes them) of a sub-pipeline step's `params=`."""
    params = step.params
    if params is None:
        return None, False
    if callable(params):
        return None, True
    return dict(params), False


def params_problem(step: Any) -> str | None:
    if step.params is not None and not callable(step.params) and not isinstance(step.params, dict):
        return f"params= must be a dict or a function returning one, got {type(step.params).__name__}"
    if step.params is not None and step.pipeline is None:
        return "params= only applies to a sub-pipeline step (pipeline=)"
    if step.pipeline is not None and (step.fn is not None or step.goal):
        return "a sub-pipeline step (pipeline=) takes no fn= or goal=: its output is the child run's"
    return None

