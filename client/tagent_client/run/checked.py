"""Settings as plain msgspec Structs, checked on the way in, each problem one line that names the setting.

The LLM and breaker settings (llm.py, breakers.py) and the daemon's own settings (tagentd.settings) are
`msgspec.Struct`s: a dict from a TOML table, JSON or keyword arguments goes through `checked(data, Type)`,
which converts it leniently (the strings of environment variables become numbers and booleans) and turns
msgspec's message into ours: `max_concurrent: must be >= 0`, `api_key: unknown setting`, ...
A Struct's own rules live in its `__post_init__` and raise `Problem(field, message)`, which runs both
when the Struct is built directly and when `checked` builds it.

pydantic models that hold one of these Structs (RunConfig) validate it through `pydantic_schema`: the
Structs themselves never import pydantic, so a process that only reads settings (the daemon) does not either.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, TypeVar

import msgspec

T = TypeVar("T")

#: Strings read as booleans (any case), as the environment variables of docs/operations.md promise.
TRUE = frozenset({"1", "true", "yes", "on", "t", "y"})
FALSE = frozenset({"0", "false", "no", "off", "f", "n"})

_AT = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_BOUND = re.compile(r"^Expected `(?P<kind>\w+)` (?P<op>>=|>|<=|<) (?P<limit>\S+)$")
_TYPE = re.compile(r"^Expected `(?P<kind>[^`]+)`, got `(?P<got>[^`]+)`$")
_KINDS = {"int": "a whole number", "float": "a number", "bool": "true or false", "str": "a string",
          "object": "a table", "array": "a list"}


class Problem(ValueError):
    """A rule one setting breaks: `field` is the setting the message is about ('' for the whole table)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


def checked(data: Any, type_: type[T], *, where: str = "") -> T:
    """`data` (a mapping, or already a `type_`) as a checked `type_`; `Problem` naming `where.field` when invalid."""
    if isinstance(data, type_):
        return data
    try:
        return msgspec.convert(data, type_, strict=False, dec_hook=_dec_hook)
    except msgspec.ValidationError as exc:
        raise problem(exc, data, where) from None


def checked_map(data: Any, type_: type[T], *, where: str = "") -> dict[str, T]:
    """A `{name: table}` mapping of `type_`, checked entry by entry so that a problem names its entry."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise Problem(where, f"must be a table of {type_.__name__} tables, got {data!r}")
    return {str(name): checked(value, type_, where=_join(where, str(name))) for name, value in data.items()}


def problem(exc: msgspec.ValidationError, data: Any, where: str = "") -> Problem:
    """msgspec's message as one of ours, `where` and the path inside `data` joined by dots."""
    match = _AT.match(str(exc))
    message, path = (match.group("msg"), match.group("path") or "") if match else (str(exc), "")
    parts = [p for p in re.split(r"\.|\[|\]", path) if p and p != "..."]
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, Problem):  # a __post_init__ rule: its own field, its own words
        return Problem(_join(where, *parts, cause.field), cause.message)
    if m := re.match(r"^Object contains unknown field `([^`]+)`$", message):
        return Problem(_join(where, *parts, m.group(1)), "unknown setting")
    if m := re.match(r"^Object missing required field `([^`]+)`$", message):
        return Problem(_join(where, *parts, m.group(1)), "is required")
    given = _given(data, parts)
    if m := _BOUND.match(message):
        text = f"must be {m.group('op')} {m.group('limit')}"
    elif m := _TYPE.match(message):
        kinds = [_KINDS.get(k.strip(), k.strip()) for k in m.group("kind").split("|") if k.strip() != "null"]
        text = f"must be {' or '.join(kinds)}" + (f", got {given!r}" if given is not _MISSING else "")
    elif m := re.match(r"^Invalid enum value (.*)$", message):
        text = f"must be one of the allowed values, got {m.group(1)}"
    else:
        text = message[:1].lower() + message[1:]
    return Problem(_join(where, *parts), text)


def from_struct(value: Any) -> Any:
    """A Struct (or anything holding Structs and Paths) as plain JSON-able data."""
    return msgspec.to_builtins(value, enc_hook=_enc_hook)


def pydantic_schema(cls: type[Any]) -> Any:
    """The pydantic-core schema of a settings Struct (for `__get_pydantic_core_schema__`): checked, dumped plain."""
    from pydantic_core import core_schema  # only a pydantic model that holds the Struct gets here

    def validate(value: Any) -> Any:
        try:
            return checked(value, cls)
        except Problem as exc:
            raise ValueError(str(exc)) from None

    return core_schema.no_info_plain_validator_function(
        validate, serialization=core_schema.plain_serializer_function_ser_schema(from_struct, when_used="json"))


def at_least(struct: Any, field: str, limit: float) -> None:
    """`Problem` when `struct.field` is set and below `limit`."""
    value = getattr(struct, field)
    if value is not None and value < limit:
        raise Problem(field, f"must be >= {limit}")


def above(struct: Any, field: str, limit: float) -> None:
    """`Problem` when `struct.field` is set and not above `limit`."""
    value = getattr(struct, field)
    if value is not None and not value > limit:
        raise Problem(field, f"must be > {limit}")


def parse_bool(value: Any) -> Any:
    """'yes', 'on', '1', 'TRUE' ... as a bool; anything else unchanged (the type check then names it)."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text in TRUE:
            return True
        if text in FALSE:
            return False
    return value


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


_MISSING = object()


def _given(data: Any, parts: list[str]) -> Any:
    for part in parts:
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        else:
            return _MISSING
    return data


def _dec_hook(type_: Any, value: Any) -> Any:
    if isinstance(type_, type) and isinstance(value, type_):
        return value
    if type_ is Path and isinstance(value, str):
        return Path(value)
    raise NotImplementedError


def _enc_hook(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    raise NotImplementedError(f"cannot encode {type(value).__name__}")


