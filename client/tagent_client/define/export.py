"""Pipelines as JSON and TOML documents, and back: the functions, and pipeline files.

The same as `Pipeline.to_dict` / `to_json` / `to_toml` and `Pipeline.from_dict` /
`from_json` / `from_toml`, as functions, plus `load_file` (a .json or .toml file) and
`plan_from_dict` (a document's Plan, importing nothing: what the daemon reads).
`document.py` says what a document holds and guarantees; `rebuild.py` what reading
one imports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .document import load_error, plan_from_dict
from .pipeline import Pipeline

__all__ = [
    "from_json", "from_toml", "load_file", "pipeline_from_dict", "pipeline_to_dict",
    "plan_from_dict", "to_json", "to_toml",
]


def pipeline_to_dict(p: Pipeline) -> dict[str, Any]:
    """The pipeline's Plan as plain data (None kept).

    Raises PipelineValidationError if the pipeline is invalid, ValueError if a value
    in shared_context or over= has no plain form.
    """
    return p.to_dict()


def to_json(p: Pipeline, indent: int | None = 2) -> str:
    """The pipeline as a JSON document (see `pipeline_to_dict`)."""
    return p.to_json(indent=indent)


def to_toml(p: Pipeline) -> str:
    """The pipeline as a TOML document (None values and empty default collections left out; see `Pipeline.to_toml`)."""
    return p.to_toml()


def pipeline_from_dict(
    data: Any, *, resolve_schemas: bool = True, resolve_functions: bool = False, source: str = "pipeline data"
) -> Pipeline:
    """Build and validate a Pipeline from a document's content (`rebuild.py` says what gets imported)."""
    return Pipeline.from_dict(data, resolve_schemas=resolve_schemas, resolve_functions=resolve_functions, source=source)


def from_json(text: str | bytes, *, resolve_schemas: bool = True, resolve_functions: bool = False,
              source: str = "pipeline JSON") -> Pipeline:
    """Build a Pipeline from a JSON document."""
    return Pipeline.from_json(text, resolve_schemas=resolve_schemas, resolve_functions=resolve_functions, source=source)


def from_toml(text: str | bytes, *, resolve_schemas: bool = True, resolve_functions: bool = False,
              source: str = "pipeline TOML") -> Pipeline:
    """Build a Pipeline from a TOML document."""
    return Pipeline.from_toml(text, resolve_schemas=resolve_schemas, resolve_functions=resolve_functions, source=source)


def load_file(path: str | Path, *, resolve_schemas: bool = True, resolve_functions: bool = False) -> Pipeline:
    """Build a Pipeline from a .json or .toml file, chosen by its suffix."""
    path = Path(path)
    source = f"pipeline file {path}"
    readers = {".json": from_json, ".toml": from_toml}
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise load_error(source, "", f"unknown suffix {path.suffix!r}; expected .json or .toml")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise load_error(source, "", f"cannot read it: {e.strerror or e}") from None
    return reader(raw, resolve_schemas=resolve_schemas, resolve_functions=resolve_functions, source=source)
