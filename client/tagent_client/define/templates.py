"""The template library: pipeline files to start from, shipped with the client in `tagent_client/templates/`.

A template is an ordinary pipeline file. What `tagent templates` lists is read from the
file itself, so there is no second registry to keep in step with it:

- its **name** is the file name with `_` as `-` (`company_research.py` -> `company-research`);
- its **summary** is the first line of the module docstring (the rest of the docstring says
  what it does, its parameters, how to run it and what to change first);
- its **params** are the `params={...}` mapping of its `Pipeline(...)` call, which declares
  the run params with their defaults (`Pipeline(params=...)`).

The file is read with `ast`, never imported, so listing templates costs no pydantic, no
engine and no user code. A param default that names a file or folder shipped next to the
templates (`"samples/documents"`) is **sample data**: `copy_template` copies it along, so
that the copy runs as it is. Templates resolve such relative paths against their own folder.
"""

from __future__ import annotations

import ast
import difflib
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InvalidRequest, NotFound

__all__ = ["TEMPLATES_DIR", "Copied", "Template", "copy_template", "find_template", "list_templates"]

#: Where the templates live: package data of the client (the repository's `pipelines/templates` links here).
TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"


@dataclass(frozen=True)
class Template:
    """One template file, as its text describes it."""

    name: str
    path: Path
    summary: str
    description: str
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def sample_data(self) -> list[str]:
        """The param defaults that name a file or folder next to the template (relative paths, in order)."""
        found = []
        for value in self.params.values():
            if isinstance(value, str) and value and not Path(value).is_absolute() and ".." not in Path(value).parts:
                if (self.path.parent / value).exists():
                    found.append(value)
        return found

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "summary": self.summary, "params": dict(self.params), "path": str(self.path),
                "sample_data": self.sample_data}


def template_name(path: Path) -> str:
    """`company_research.py` -> `company-research`."""
    return path.stem.replace("_", "-")


def _declared_params(tree: ast.Module, path: Path) -> dict[str, Any]:
    """The literal `params={...}` of the module's `Pipeline(...)` call ({} if it has none)."""
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "Pipeline"):
            continue
        for keyword in node.keywords:
            if keyword.arg != "params":
                continue
            try:
                value = ast.literal_eval(keyword.value)
            except ValueError:
                raise InvalidRequest(f"{path}:{keyword.value.lineno}: a template's params= must be a literal "
                                     f"mapping of param names to defaults, so that it can be listed") from None
            if isinstance(value, dict):
                return value
            return dict.fromkeys(value) if isinstance(value, (list, tuple)) else {}
    return {}


def read_template(path: Path) -> Template:
    """Describe the template file at `path` from its text (InvalidRequest if it cannot be read so)."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (OSError, UnicodeDecodeError, SyntaxError) as exc:
        raise InvalidRequest(f"{path}: cannot read template: {exc}") from None
    doc = (ast.get_docstring(tree) or "").strip()
    summary = doc.splitlines()[0].strip() if doc else ""
    return Template(template_name(path), path, summary, doc, _declared_params(tree, path))


def list_templates(folder: Path = TEMPLATES_DIR) -> list[Template]:
    """Every template in `folder`, by name."""
    return [read_template(path) for path in sorted(folder.glob("*.py")) if not path.name.startswith("_")]


def find_template(name: str, folder: Path = TEMPLATES_DIR) -> Template:
    """The template called `name` (`company-research`; `company_research` and a `.py` suffix are accepted too).

    NotFound naming the closest template ("did you mean ...?") and the command that lists them all.
    """
    wanted = template_name(Path(name if name.endswith(".py") else f"{name}.py"))
    templates = {t.name: t for t in list_templates(folder)}
    if wanted in templates:
        return templates[wanted]
    close = difflib.get_close_matches(wanted, sorted(templates), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise NotFound(f"no template {name!r}; {hint}('tagent templates' lists them: {', '.join(sorted(templates))})",
                   template=name)


@dataclass(frozen=True)
class Copied:
    """What `copy_template` wrote (and what sample data it left as it was)."""

    file: Path
    data: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)


def copy_template(template: Template, destination: Path, *, force: bool = False) -> Copied:
    """Copy the template to `destination`, and its sample data next to it (existing sample data is kept).

    InvalidRequest, touching nothing, if `destination` exists and `force` is false, is a directory, or its
    folder does not exist.
    """
    if destination.is_dir():
        raise InvalidRequest(f"{destination} is a directory; name the new pipeline file, e.g. {destination / template.path.name}")
    if destination.exists() and not force:
        raise InvalidRequest(f"{destination} exists; pass --force to overwrite it, or choose another file name",
                             path=str(destination))
    if not destination.parent.is_dir():
        raise InvalidRequest(f"{destination.parent} is not a directory; create it first", path=str(destination))
    shutil.copyfile(template.path, destination)
    copied, kept = [], []
    for relative in template.sample_data:
        source, target = template.path.parent / relative, destination.parent / relative
        if target.exists():
            kept.append(target)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copyfile(source, target)
        copied.append(target)
    return Copied(destination, copied, kept)
