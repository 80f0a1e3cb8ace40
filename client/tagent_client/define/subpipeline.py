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
import inspect
import os
import types
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import PipelineLoadError, PipelineValidationError
from .loading import find_instance

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
    """The pipeline `name` (else the file's top one) of `path`, read by `Pipeline.load`'s rules."""
    return kind.load(path if name is None else f"{path}:{name}")  # type: ignore[attr-defined, no-any-return]


def find_pipeline(module: types.ModuleType, kind: type[Pipeline], target: str | None, *, path: str | None = None) -> Pipeline:
    """The module-level pipeline `target` names (`loading.find_instance`'s rules), with two more for sub-pipelines:
    without a target, a file whose other pipelines are all sub-pipelines of one gives that one; and
    `parent/step/...` names the child that step `step` of pipeline `parent` runs (a child run's target), however deep."""
    path = path or getattr(module, "__file__", None) or module.__name__
    if target is not None and "/" in target:
        head, *steps = target.split("/")
        pipeline = find_pipeline(module, kind, head, path=path)
        for step_name in steps:
            step = pipeline.steps.get(step_name)  # type: ignore[attr-defined]
            if step is None or step.pipeline is None:
                raise PipelineLoadError(f"{path}: pipeline {pipeline.name!r} has no sub-pipeline step {step_name!r}",  # type: ignore[attr-defined]
                                        path=path)
            pipeline = step.pipeline
        return pipeline
    if target is None:
        found = {id(v): v for v in vars(module).values() if isinstance(v, kind)}
        children = {id(s.pipeline) for p in found.values() for s in p.steps if s.pipeline is not None}  # type: ignore[attr-defined]
        tops = [p for p in found.values() if id(p) not in children]
        if len(found) > 1 and len(tops) == 1:
            return tops[0]
    return find_instance(module, kind, target, path=path)



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

