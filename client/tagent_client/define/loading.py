"""Reading a pipeline file: `FILE[:NAME]`, importing the file as a module, picking its pipeline.

One set of rules for `Pipeline.load` (in this process) and the daemon's workers
(`tagentd/worker/loader.py`, which adds a cache keyed by the file's content hash), so a
file loads the same way wherever it runs:

- `FILE:NAME` names one pipeline of a file that defines several, by variable name or by
  the pipeline's `.name`; a path that exists as given is never split at a colon.
- A Python file is executed as a real module (in `sys.modules`, so pickling and pydantic
  find its classes by module name) with its own directory first on `sys.path` while it
  imports, so it can import the modules next to it.
- Every failure is a `PipelineLoadError` whose message is one line, `path:line: what
  happened` (the line of a syntax error, or of the innermost frame inside the file).

Nothing here knows the `Pipeline` class: `find_instance` picks module-level objects of the
class it is given, so this module sits below `pipeline.py`.
"""

from __future__ import annotations

import hashlib
import os
import sys
import traceback
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from ..errors import PipelineLoadError

__all__ = ["DOCUMENT_SUFFIXES", "exec_module", "find_instance", "first_line", "import_error", "module_name",
           "on_sys_path", "read_source", "split_spec"]

#: Pipeline files read as documents (`define/export.py`), not imported as Python.
DOCUMENT_SUFFIXES = (".toml", ".json")

T = TypeVar("T")


def split_spec(spec: str) -> tuple[str, str | None]:
    """'file.py:name' -> ('file.py', 'name'); a path that exists as given is never split."""
    path, sep, name = spec.rpartition(":")
    if sep and path and name and "/" not in name and not Path(spec).exists():
        return path, name
    return spec, None


def first_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0]


def read_source(path: str) -> str:
    """The UTF-8 text of the pipeline file at `path`; PipelineLoadError saying why it cannot be read."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PipelineLoadError(f"{path}: no such pipeline file", path=path) from None
    except IsADirectoryError:
        raise PipelineLoadError(f"{path}: is a directory, not a pipeline file", path=path) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or first_line(str(exc))
        raise PipelineLoadError(f"{path}: cannot read pipeline file: {reason}", path=path) from None


def module_name(prefix: str, source: str) -> str:
    """`prefix` + the first 16 hex digits of the text's sha256: one module name per file version."""
    return f"{prefix}{hashlib.sha256(source.encode('utf-8')).hexdigest()[:16]}"


@contextmanager
def on_sys_path(path: str) -> Iterator[None]:
    """The directory of `path` first on `sys.path` for the duration (unless it is there already)."""
    folder = os.path.dirname(os.path.abspath(path))
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        yield
    finally:
        if added:
            try:
                sys.path.remove(folder)
            except ValueError:
                pass


def import_error(path: str, exc: BaseException) -> PipelineLoadError:
    """`path:line: Type: message`, the line being the innermost frame inside the user's file."""
    line = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename == path:
            line = frame.lineno
    where = f"{path}:{line}" if line else path
    detail = first_line(str(exc))
    what = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
    return PipelineLoadError(f"{where}: {what}", path=path, line=line)


def exec_module(name: str, path: str, source: str, *, keep: tuple[type[BaseException], ...] = ()) -> types.ModuleType:
    """Execute `source` (the text of `path`) as a new module `name`, registered in `sys.modules`.

    PipelineLoadError (one line) for a syntax error or anything the import raises or exits with, except
    the exception types in `keep`, which propagate as they are; on any failure the module is unregistered.
    """
    try:
        code = compile(source, path, "exec", dont_inherit=True)
    except SyntaxError as exc:
        where = f"{path}:{exc.lineno}" if exc.lineno else path
        raise PipelineLoadError(f"{where}: syntax error: {exc.msg}", path=path, line=exc.lineno) from None
    except ValueError as exc:  # e.g. NUL bytes in the source
        raise PipelineLoadError(f"{path}: cannot compile: {first_line(str(exc))}", path=path) from None
    module = types.ModuleType(name)
    module.__file__ = path
    sys.modules[name] = module
    try:
        with on_sys_path(path):
            exec(code, module.__dict__)
    except keep:
        sys.modules.pop(name, None)
        raise
    except (Exception, SystemExit) as exc:
        sys.modules.pop(name, None)
        raise import_error(path, exc) from None
    return module


def find_instance(module: types.ModuleType, kind: type[T], target: str | None, *, path: str | None = None,
                  what: str = "pipeline") -> T:
    """The module-level `kind` whose variable name or `.name` is `target`; without a target, the only one.

    PipelineLoadError when there is none, none of that name (listing those found), or several and no target
    (naming the `FILE:NAME` to write).
    """
    path = path or getattr(module, "__file__", None) or module.__name__
    found: dict[int, tuple[str, Any]] = {}
    for var, value in vars(module).items():
        if isinstance(value, kind) and id(value) not in found:
            found[id(value)] = (var, value)
    objects = list(found.values())
    if not objects:
        raise PipelineLoadError(f"{path}: no {kind.__name__} found at module level", path=path)
    if target is not None:
        for var, value in objects:
            if target in (var, getattr(value, "name", None)):
                return value
        names = ", ".join(_label(var, value) for var, value in objects)
        raise PipelineLoadError(f"{path}: no {what} named {target!r} (found: {names})", path=path)
    if len(objects) > 1:
        names = ", ".join(_label(var, value) for var, value in objects)
        raise PipelineLoadError(
            f"{path}: {len(objects)} {what}s found ({names}); pick one with FILE:NAME, e.g. {path}:{objects[0][0]}",
            path=path,
        )
    return objects[0][1]


def _label(var: str, value: Any) -> str:
    name = getattr(value, "name", var)
    return var if var == name else f"{var} ({name!r})"
