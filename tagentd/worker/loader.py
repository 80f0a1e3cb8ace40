"""Loading user pipeline files — only ever in a worker process, never in the daemon.

How a file is imported and its pipeline picked is `tagent_client.define.loading` (the rules
`Pipeline.load` follows too); this module adds the workers' cache. A file is identified by the
hash of its text: the same text is executed once per worker and kept (LRU-bounded) as a real module named
`tagent_user_<hash[:16]>` in `sys.modules`, so pydantic models, dataclasses and
pickling that look their module up by name work. The file's directory is on
`sys.path` while it imports, so it can import its sibling modules. A `.toml`
or `.json` file is a pipeline document (tagent_client.define.export): it is read, not
executed, and becomes a module holding that one pipeline.

Every failure is a `PipelineLoadError` whose message is one line,
`path:line: what happened`, or a `PipelineValidationError` carrying every
problem of the definition.
"""

from __future__ import annotations

import sys
import threading
import types
from collections import OrderedDict

from tagent_client.define.loading import DOCUMENT_SUFFIXES, exec_module, on_sys_path
from tagent_client.define.pipeline import Pipeline
from tagent_client.define.plan import Plan
from tagent_client.define.subpipeline import find_pipeline as find_pipeline_in
from tagent_client.errors import PipelineLoadError, PipelineValidationError

MAX_MODULES = 64
MODULE_PREFIX = "tagent_user_"
__all__ = ["CACHE", "DOCUMENT_SUFFIXES", "ModuleCache", "find_pipeline", "load_module", "load_pipeline", "module_name",
           "schema_classes"]


def module_name(hash_: str) -> str:
    return f"{MODULE_PREFIX}{hash_[:16]}"


def _exec_module(hash_: str, path: str, source: str) -> types.ModuleType:
    if path.lower().endswith(DOCUMENT_SUFFIXES):
        return _document_module(hash_, path, source)
    return exec_module(module_name(hash_), path, source, keep=(PipelineValidationError,))


def _document_module(hash_: str, path: str, source: str) -> types.ModuleType:
    """A declarative `.toml` / `.json` pipeline (the export format) as a module whose `pipeline` is it.

    Function steps, tools and merge functions need Python and are refused; output schemas named
    `module:Class` are imported, with the file's directory on sys.path.
    """
    from tagent_client.define import export  # noqa: PLC0415 - only documents need it

    reader = export.from_toml if path.lower().endswith(".toml") else export.from_json
    with on_sys_path(path):
        pipeline = reader(source, source=path)
    module = types.ModuleType(module_name(hash_))
    module.__file__ = path
    module.pipeline = pipeline  # type: ignore[attr-defined]
    return module


class ModuleCache:
    """Imported pipeline modules by content hash (LRU), and their validated pipelines by (hash, target).

    Thread-safe: a worker imports on a loader thread and looks up cached pipelines on its loop.
    Evicting a module removes it from `sys.modules`; steps already holding its objects keep working.
    """

    def __init__(self, max_modules: int = MAX_MODULES) -> None:
        self.max_modules = max_modules
        self._modules: OrderedDict[str, types.ModuleType] = OrderedDict()
        self._pipelines: dict[tuple[str, str | None], Pipeline] = {}
        self._plans: dict[tuple[str, str | None], Plan] = {}
        self._lock = threading.Lock()
        self._import_lock = threading.Lock()

    def __contains__(self, hash_: str) -> bool:
        return hash_ in self._modules

    def module(self, hash_: str, path: str, source: str | None) -> types.ModuleType:
        """The module for `hash_`, importing `source` on a miss (PipelineLoadError if there is none)."""
        module = self._hit(hash_)
        if module is not None:
            return module
        if source is None:
            raise PipelineLoadError(f"{path}: source of pipeline file {hash_[:12]} is not loaded in this worker", path=path)
        with self._import_lock:  # one import at a time; lookups (self._lock) never wait for an import
            module = self._hit(hash_)
            if module is None:
                module = _exec_module(hash_, path, source)
                self._store(hash_, module)
            return module

    def _hit(self, hash_: str) -> types.ModuleType | None:
        with self._lock:
            module = self._modules.get(hash_)
            if module is not None:
                self._modules.move_to_end(hash_)
            return module

    def _store(self, hash_: str, module: types.ModuleType) -> None:
        with self._lock:
            self._modules[hash_] = module
            while len(self._modules) > self.max_modules:
                old, _ = self._modules.popitem(last=False)
                sys.modules.pop(module_name(old), None)
                for key in [k for k in self._pipelines if k[0] == old]:
                    del self._pipelines[key]
                    self._plans.pop(key, None)

    def cached_pipeline(self, hash_: str, target: str | None) -> Pipeline | None:
        """The already validated pipeline, or None (never imports, never waits for an import)."""
        with self._lock:
            pipeline = self._pipelines.get((hash_, target))
            if pipeline is not None:
                self._modules.move_to_end(hash_)
            return pipeline

    def pipeline(self, hash_: str, path: str, source: str | None, target: str | None) -> Pipeline:
        """The validated pipeline `target` picks in the file (see `find_pipeline`)."""
        cached = self.cached_pipeline(hash_, target)
        if cached is not None:
            return cached
        pipeline = find_pipeline(self.module(hash_, path, source), target, path=path)
        pipeline.validate()
        with self._lock:
            if hash_ in self._modules:
                self._pipelines[(hash_, target)] = pipeline
        return pipeline

    def plan(self, hash_: str, target: str | None, pipeline: Pipeline) -> Plan:
        """`pipeline.plan()` of the validated pipeline cached for (hash_, target), computed once: a file submitted
        again is not validated again (for a 5,000-step pipeline that is most of what a submit costs a worker)."""
        key = (hash_, target)
        with self._lock:
            plan = self._plans.get(key)
        if plan is None:
            plan = pipeline.plan()
            with self._lock:
                if self._pipelines.get(key) is pipeline:  # still the cached one: keep its plan with it
                    self._plans[key] = plan
        return plan


#: The cache a worker process uses.
CACHE = ModuleCache()


def load_module(source_hash: str, path: str, source: str) -> types.ModuleType:
    """Import `source` (the text of `path`) as module `tagent_user_<hash[:16]>`, or return it from the cache."""
    return CACHE.module(source_hash, path, source)


def find_pipeline(module: types.ModuleType, target: str | None, *, path: str | None = None) -> Pipeline:
    """The module-level `Pipeline` whose variable name or `.name` is `target`; without a target, the only one
    that no other pipeline of the file runs as a sub-pipeline; `parent/step/...` names a sub-pipeline
    (`tagent_client.define.subpipeline.find_pipeline`: the same rules as `Pipeline.load`)."""
    return find_pipeline_in(module, Pipeline, target, path=path)


def load_pipeline(source_hash: str, path: str, source: str | None, target: str | None = None) -> Pipeline:
    """Import the file (cached by hash), pick the pipeline and validate it.

    Raises PipelineLoadError (one line: `path:line: reason`) or PipelineValidationError (with `.problems`).
    """
    return CACHE.pipeline(source_hash, path, source, target)


def schema_classes(pipeline: Pipeline) -> dict[str, type]:
    """Step name → output_schema class, for the steps that declare one."""
    return {name: step.output_schema for name, step in pipeline.steps.items() if step.output_schema is not None}
