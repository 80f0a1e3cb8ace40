"""Defining pipelines: `Pipeline`, the fluent builder, validation and documents.

A `Pipeline` holds the user's objects (functions, tools, pydantic schemas) and its
steps (`step.py`). `Pipeline.plan()` turns it into a `Plan`: plain data the engine
schedules from and the daemon checkpoints. `Pipeline.validate()` reports every
problem at once (the checks are in `validation.py`). `to_json` / `from_toml` and
the like write and read documents (`document.py`, `rebuild.py`).
"""

from __future__ import annotations

import copy
import os
import types
import warnings
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from typing import Any, SupportsIndex, overload

from ..bounds import NAME_MAX
from ..errors import PipelineValidationError, shorten
from . import binding, subpipeline
from .plan import Plan
from .spec import spec_of
from .step import PipelineStep, callable_name
from .validation import NAME, cycles, is_count, parameter_problems, step_problems, unknown_tools

__all__ = ["Pipeline", "PipelineWarning", "StepList"]


def _copy_step(step: PipelineStep) -> PipelineStep:
    """A copy of `step` whose lists and dicts are its own (the functions, schemas and tools in them are shared)."""
    twin = copy.copy(step)
    for name, value in vars(step).items():
        if isinstance(value, (list, dict)):
            setattr(twin, name, copy.copy(value))
    return twin


class PipelineWarning(UserWarning):
    """A definition that runs, but maybe not as meant (a `tools_filter` naming a tool nobody provides)."""


class StepList(list[PipelineStep]):
    """`pipeline.steps`: the steps in the order they were added (the design documents' list),
    also looked up by name: `steps["search"]`, `"search" in steps`, `steps.get(name)`, `steps.by_name()`.

    A lookup by name costs O(1): the list keeps an index by name, kept up to date by `append` and rebuilt
    after any other change to the list, so adding N steps costs O(N), not O(N^2). (A step's `name` is
    read when it is added: rename a step before adding it, not after.)"""

    _by_name: dict[str, PipelineStep] | None = None

    def _index(self) -> dict[str, PipelineStep]:
        if self._by_name is None:
            self._by_name = {}
            for step in self:
                self._by_name.setdefault(step.name, step)  # the first of a name, as a scan would find
        return self._by_name

    def append(self, step: PipelineStep) -> None:
        super().append(step)
        if self._by_name is not None:
            self._by_name.setdefault(step.name, step)

    def _changed(self) -> None:
        self._by_name = None

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        self._changed()

    def __delitem__(self, key: Any) -> None:
        super().__delitem__(key)
        self._changed()

    def __iadd__(self, other: Any) -> StepList:  # type: ignore[override,misc]
        super().__iadd__(other)
        self._changed()
        return self

    def extend(self, steps: Any) -> None:
        super().extend(steps)
        self._changed()

    def insert(self, index: SupportsIndex, step: PipelineStep) -> None:
        super().insert(index, step)
        self._changed()

    def remove(self, step: PipelineStep) -> None:
        super().remove(step)
        self._changed()

    def pop(self, index: SupportsIndex = -1) -> PipelineStep:
        self._changed()
        return super().pop(index)

    def clear(self) -> None:
        super().clear()
        self._changed()

    @overload
    def __getitem__(self, key: str) -> PipelineStep: ...
    @overload
    def __getitem__(self, key: SupportsIndex) -> PipelineStep: ...
    @overload
    def __getitem__(self, key: slice) -> list[PipelineStep]: ...
    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return self._index()[key]
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            return key in self._index()
        return super().__contains__(key)

    def get(self, name: str, default: PipelineStep | None = None) -> PipelineStep | None:
        """The step called `name`, or `default`."""
        return self._index().get(name, default)

    def by_name(self) -> dict[str, PipelineStep]:
        """Name -> step, in order."""
        return {step.name: step for step in self}

    def names(self) -> list[str]:
        return [step.name for step in self]

    def values(self) -> Iterator[PipelineStep]:
        return iter(self)

    def items(self) -> Iterator[tuple[str, PipelineStep]]:
        return ((step.name, step) for step in self)


class Pipeline:
    """A named DAG of steps, built fluently:

        p = Pipeline("research")
        p.step("search", goal="Find facts", output_schema=Facts)
        p.step("report", goal="Write it up", depends_on=["search"])

    or with `@p.task(...)` on a function, or `p.add_step(PipelineStep(...))`. `Pipeline(other)` is a copy of
    `other` (its own list of copied steps). Nothing runs until the pipeline is handed
    to `run_pipeline`, `run_agent` or the daemon; `validate()` checks it first.
    `params=["company", ...]` declares the submit params its functions take by name,
    so that `validate()` can tell a misspelt parameter from a param (`validation.py`);
    `params={"company": "Acme", ...}` declares them with defaults: a run submitted without
    a param gets its default (`binding.with_defaults`), in `ctx.params`, function parameters
    and agent prompts alike. `Pipeline.load("file.py:name")` reads a pipeline file.
    """

    def __init__(
        self,
        name: str | Pipeline,
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
        params: Iterable[str] | Mapping[str, Any] | None = None,
    ) -> None:
        if isinstance(name, Pipeline):
            self._copy_of(name)
            return
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
        #: Defaults of declared params (`params=` given as a mapping): what a run without that param gets.
        self.param_defaults: dict[str, Any] = dict(params) if isinstance(params, Mapping) else {}
        self.steps = StepList()
        self._duplicates: list[str] = []

    def _copy_of(self, other: Pipeline) -> None:
        for key, value in vars(other).items():
            setattr(self, key, copy.copy(value) if isinstance(value, (list, dict)) else value)
        self.steps = StepList(_copy_step(step) for step in other.steps)

    def __repr__(self) -> str:
        return f"Pipeline({self.name!r}, steps={self.steps.names()})"

    # -- building -------------------------------------------------------------

    def add_step(self, step: PipelineStep) -> Pipeline:
        """Add a ready-made step; returns the pipeline for chaining."""
        if step.pipeline is not None:
            step.pipeline = subpipeline.resolve_child(step.pipeline, Pipeline)
        if step.name in self.steps:
            self._duplicates.append(step.name)
        else:
            if step.id is None:
                step.id = f"step_{len(self.steps) + 1}"
            self.steps.append(step)
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
        found.extend(binding.default_problems(self.param_defaults))
        if params is not None and self.param_defaults:
            params = {*params, *self.param_defaults}  # a declared default fills what the submit leaves out
        pipeline_tools = {callable_name(t) for t in self.tools}
        steps = self.steps.by_name()
        for step in self.steps:
            found.extend(step_problems(step, steps, pipeline_tools))
            found.extend(parameter_problems(step, steps, self.params, params))
        found.extend(f"dependency cycle: {' -> '.join(c)}" for c in cycles(steps))
        loop = subpipeline.cycle(self)
        if loop:
            found.append(f"sub-pipeline cycle: {' -> '.join(loop)}: a pipeline may not include itself")
        finals = [s.name for s in self.steps if s.final]
        if len(finals) > 1:
            found.append(f"only one step may be final=True, got {', '.join(finals)}")
        return found

    def validate(self, params: Collection[str] | None = None) -> Pipeline:
        """Raise PipelineValidationError listing every problem; return self when valid (`params`: see `problems`)."""
        found = self.problems(params)
        if found:
            raise PipelineValidationError(self.name, found)
        for warning in self.warnings():
            warnings.warn(f"pipeline {self.name!r}: {warning}", PipelineWarning, stacklevel=2)
        return self

    def warnings(self) -> list[str]:
        """What runs, but maybe not as meant: one line each (`validate()` issues them as PipelineWarning)."""
        pipeline_tools = {callable_name(t) for t in self.tools}
        return [w for w in (unknown_tools(step, pipeline_tools) for step in self.steps) if w]

    # -- describing ---------------------------------------------------------------

    def plan(self) -> Plan:
        """The validated, declarative form of this pipeline (what the engine runs)."""
        self.validate()
        pipeline_tools = [callable_name(t) for t in self.tools]
        specs = [spec_of(step, pipeline_tools) for step in self.steps]
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
            param_defaults=dict(self.param_defaults),
        )

    @classmethod
    def load(cls, spec: str | os.PathLike[str] | Pipeline) -> Pipeline:
        """The validated pipeline in a file: `"file.py"` (its only pipeline), `"file.py:name"` (by variable
        name or `.name`, when it defines several), or a `.toml` / `.json` pipeline document; a Pipeline is
        returned as it is.

        The file is imported afresh on every call, by the same rules as `tagent submit` uses in the
        daemon's workers (`loading.py`). Raises PipelineLoadError with one line, `path[:line]: what` (no
        such file, a syntax error, an exception at import, no pipeline, several and no name, no such
        name), or PipelineValidationError listing every problem of the definition.
        """
        from .loading import (
            DOCUMENT_SUFFIXES,
            exec_module,
            module_name,
            on_sys_path,
            read_source,
            split_spec,
        )

        if isinstance(spec, Pipeline):
            return spec
        path, target = split_spec(os.fspath(spec))
        source = read_source(path)
        if path.lower().endswith(DOCUMENT_SUFFIXES):
            reader = cls.from_toml if path.lower().endswith(".toml") else cls.from_json
            with on_sys_path(path):
                document = types.ModuleType(module_name("tagent_pipeline_", source))
                document.pipeline = reader(source, source=path)  # type: ignore[attr-defined]
            return subpipeline.find_pipeline(document, Pipeline, target, path=path)
        module = exec_module(module_name("tagent_pipeline_", source), path, source, keep=(PipelineValidationError,))
        return subpipeline.find_pipeline(module, Pipeline, target, path=path).validate()

    # -- documents (document.py: the format; rebuild.py: the steps read back) ------------

    def to_dict(self) -> dict[str, Any]:
        """This pipeline's plan as plain data, the form JSON and TOML documents hold."""
        from .document import plan_to_dict

        return plan_to_dict(self.plan())

    def to_json(self, indent: int | None = 2) -> str:
        """This pipeline as a JSON document."""
        from .document import plan_to_json

        return plan_to_json(self.plan(), indent=indent)

    def to_toml(self) -> str:
        """This pipeline as a TOML document."""
        from .document import plan_to_toml

        return plan_to_toml(self.plan())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, resolve_schemas: bool = True, resolve_functions: bool = False,
                  source: str = "pipeline data") -> Pipeline:
        """A validated pipeline from plain data; `rebuild.py` says what gets imported. `source` names the
        document in errors (`PipelineLoadError`: malformed; `PipelineValidationError`: invalid)."""
        from .document import plan_from_dict

        return cls._from_plan(plan_from_dict(data, source=source), source, resolve_schemas, resolve_functions)

    @classmethod
    def _from_plan(cls, plan: Plan, source: str, resolve_schemas: bool, resolve_functions: bool) -> Pipeline:
        """A validated pipeline from a document's plan (a sub-pipeline step's child plan too)."""
        from .rebuild import steps_from_plan

        p = cls(
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
        p.param_defaults = dict(plan.param_defaults)

        def child(plan: Plan) -> Pipeline:
            return cls._from_plan(plan, source, resolve_schemas, resolve_functions)

        for step in steps_from_plan(plan, source, resolve_schemas=resolve_schemas, resolve_functions=resolve_functions,
                                    child=child):
            p.add_step(step)
        return p.validate()

    @classmethod
    def from_json(cls, text: str | bytes, *, resolve_schemas: bool = True, resolve_functions: bool = False,
                  source: str = "pipeline JSON") -> Pipeline:
        """A validated pipeline from a JSON document."""
        from .document import parse_json

        return cls.from_dict(parse_json(text, source), resolve_schemas=resolve_schemas,
                             resolve_functions=resolve_functions, source=source)

    @classmethod
    def from_toml(cls, text: str | bytes, *, resolve_schemas: bool = True, resolve_functions: bool = False,
                  source: str = "pipeline TOML") -> Pipeline:
        """A validated pipeline from a TOML document."""
        from .document import parse_toml

        return cls.from_dict(parse_toml(text, source), resolve_schemas=resolve_schemas,
                             resolve_functions=resolve_functions, source=source)

    def tools_for(self, step_name: str) -> dict[str, Callable[..., Any]]:
        """The tools a step may offer its agent: pipeline + step tools, narrowed by tools_filter."""
        step = self.steps[step_name]
        tools = {callable_name(t): t for t in [*self.tools, *step.tools]}
        if step.tools_filter is not None:
            tools = {n: t for n, t in tools.items() if n in step.tools_filter}
        return tools
