"""Safe, serializable step conditions: ``condition=when("web_search.reputation_score") > 3.5``.

A condition is evaluated over a *scope*: a mapping of dependency step name to that
step's output (a dict, pydantic model, plain object, list, scalar or None), plus
``"shared"`` (the pipeline's shared data) and ``"params"`` (submit-time params).

Guarantees:

- No eval, no exec. A condition is a small tree of immutable nodes built with
  `when()` and ``&``, ``|``, ``~``; paths are only looked up, never executed.
- Total evaluation: ``evaluate(scope)`` never raises because of the data. A path
  that does not resolve is `MISSING`, and *missing is never compared*: every
  comparison with it is false, ``!=`` included. Comparing incompatible types
  (``"a" > 1``) is false as well.
- Serializable: ``to_data()`` gives plain JSON/msgpack-safe dicts and
  `condition_from_data` rebuilds the same tree from them, validating untrusted
  input and raising ``ValueError("bad condition data: ...")`` on anything malformed.
"""

from __future__ import annotations

import math
import operator
import types
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["MISSING", "And", "Check", "Condition", "Not", "Or", "Ref",
           "as_condition", "condition_from_data", "lookup_path", "when"]


class _MissingType:
    """The type of `MISSING`; falsy, and a singleton even through copy and pickle."""

    __slots__ = ()

    def __repr__(self) -> str: return "MISSING"
    def __reduce__(self) -> str: return "MISSING"  # unpickles to the module's MISSING
    def __bool__(self) -> bool: return False


MISSING: Any = _MissingType()
"""No value at that path."""

_NO_ATTRS = (str, bytes, bytearray, int, float, complex, type(None), set, frozenset, _MissingType)
_METHODS = (types.MethodType, types.BuiltinMethodType)
_MAX_DEPTH = 64
_BOOL_MISUSE = "use &, |, ~ (with parentheses) to combine conditions, not and/or/not"


def _step(obj: Any, seg: str) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(seg, MISSING)
    if isinstance(obj, (list, tuple)):
        digits = seg[1:] if seg[:1] == "-" else seg
        if digits.isascii() and digits.isdigit() and -len(obj) <= int(seg) < len(obj):
            return obj[int(seg)]
        return MISSING
    if isinstance(obj, _NO_ATTRS) or not seg or seg[0] == "_":
        return MISSING  # scalars have no data attributes; private names are never looked up
    value = getattr(obj, seg, MISSING)  # pydantic fields and extras, properties, attributes
    return MISSING if isinstance(value, _METHODS) else value  # methods are not data


def lookup_path(root: Any, path: str | Sequence[str]) -> Any:
    """Walk a dotted path (or a sequence of segments) from `root`; `MISSING` if it does not resolve.

    Mapping: key; list/tuple: decimal index (negative allowed); other objects (pydantic
    models included): public, non-method attribute. An empty path returns `root`. Never raises.
    """
    parts = (path.split(".") if path else ()) if isinstance(path, str) else path
    for seg in parts:
        if root is MISSING:
            break
        try:
            root = _step(root, seg)
        except Exception:  # a raising property or custom mapping: no value there
            return MISSING
    return root


def _check_path(path: Any) -> None:
    if not isinstance(path, str):
        raise TypeError(f"a condition path must be a str, got {type(path).__name__}")
    if not path:
        raise ValueError("empty condition path; expected 'step.field' (or 'shared.x', 'params.x')")
    if "" in path.split("."):
        raise ValueError(f"condition path {path!r} has an empty segment")


def _literal(v: Any, depth: int = 0) -> Any:
    """A JSON/msgpack-safe copy of `v` (tuples become lists); TypeError/ValueError otherwise."""
    if depth > _MAX_DEPTH:
        raise ValueError("value nested too deeply")
    if v is None or isinstance(v, bool):
        return v
    if isinstance(v, str):
        return str.__str__(v)
    if isinstance(v, int):
        if not -(2**63) <= v < 2**64:
            raise ValueError(f"integer {v} out of the 64-bit range")
        return int(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"non-finite float {v!r} is not JSON")
        return float(v)
    if isinstance(v, (list, tuple)):
        return [_literal(x, depth + 1) for x in v]
    if isinstance(v, dict):
        if not all(isinstance(k, str) for k in v):
            raise TypeError("dict keys in a condition value must be str")
        return {k: _literal(x, depth + 1) for k, x in v.items()}
    raise TypeError(f"condition values must be None/bool/int/float/str/list/dict, got {type(v).__name__}")


def _holds(fn: Callable[[Any, Any], Any], a: Any, b: Any) -> bool:
    try:
        return bool(fn(list(a) if isinstance(a, tuple) else a, b))
    except Exception:  # incompatible types, odd __eq__/__bool__: simply false
        return False


class Condition(ABC):
    """A node of a condition tree. Build with `when()`; combine with ``&``, ``|``, ``~``.

    Nodes are frozen dataclasses and compare by identity; compare ``to_data()`` for equality.
    """

    @abstractmethod
    def evaluate(self, scope: Mapping[str, Any]) -> bool: ...
    @abstractmethod
    def to_data(self) -> dict[str, Any]: ...
    @abstractmethod
    def refs(self) -> set[str]: ...
    @abstractmethod
    def describe(self) -> str: ...

    def __and__(self, other: Any) -> Condition:
        other = other.truthy() if isinstance(other, Ref) else other
        if not isinstance(other, Condition):
            return NotImplemented
        return And((*_parts(self, And), *_parts(other, And)))

    def __or__(self, other: Any) -> Condition:
        other = other.truthy() if isinstance(other, Ref) else other
        if not isinstance(other, Condition):
            return NotImplemented
        return Or((*_parts(self, Or), *_parts(other, Or)))

    def __invert__(self) -> Condition:
        return Not(self)

    def __bool__(self) -> bool:
        raise TypeError(f"a condition has no truth value; {_BOOL_MISUSE}: (a > 1) & ~(b == 2)")


def _parts(c: Condition, kind: type) -> tuple[Condition, ...]:
    return c.args if isinstance(c, kind) else (c,)  # type: ignore[attr-defined]


def _paren(c: Condition) -> str:
    wrap = isinstance(c, (And, Or)) or (isinstance(c, Check) and c.op in _COMPARE)
    return f"({c.describe()})" if wrap else c.describe()


_COMPARE = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le,
            "==": operator.eq, "!=": operator.ne}
_CONTAINERS = (list, str, set, frozenset, Mapping)  # tuples arrive here as lists
_TESTS: dict[str, Callable[[Any, Any], Any]] = {
    **_COMPARE,
    "exists": lambda a, _: True,
    "truthy": lambda a, _: bool(a),
    "contains": lambda a, v: isinstance(a, _CONTAINERS) and v in a,
    "in": lambda a, vs: any(_holds(operator.eq, a, v) for v in vs),
}
_VALUE_KEY = {"exists": None, "truthy": None, "in": "values"}  # others: "value"


@dataclass(frozen=True, eq=False)
class Check(Condition):
    """A leaf: `op` applied to the value at `path` (and to `value`, for ops that take one).

    ops: > >= < <= == != (false on MISSING or incompatible types), ``exists`` (resolves,
    even to None), ``truthy``, ``contains`` (value in a list/str/set or mapping's keys)
    and ``in`` (equals one of a list of values).
    """

    op: str
    path: str
    value: Any = None

    def __post_init__(self) -> None:
        if self.op not in _TESTS:
            raise ValueError(f"unknown op {self.op!r}; expected one of {list(_TESTS)}")
        _check_path(self.path)
        key = _VALUE_KEY.get(self.op, "value")
        if key is None and self.value is not None:
            raise TypeError(f"op {self.op!r} takes no value")
        if key == "values" and not isinstance(self.value, (list, tuple)):
            raise TypeError(f"is_in() takes a list of values, got {type(self.value).__name__}")
        object.__setattr__(self, "value", _literal(self.value))

    def evaluate(self, scope: Mapping[str, Any]) -> bool:
        actual = lookup_path(scope, self.path)
        return actual is not MISSING and _holds(_TESTS[self.op], actual, self.value)

    def refs(self) -> set[str]:
        first = self.path.split(".", 1)[0]
        return set() if first in ("shared", "params") else {first}

    def to_data(self) -> dict[str, Any]:
        key = _VALUE_KEY.get(self.op, "value")
        extra = {key: _literal(self.value)} if key else {}
        return {"op": self.op, "path": self.path, **extra}

    def describe(self) -> str:
        if self.op in _COMPARE:
            return f"{self.path} {self.op} {self.value!r}"
        method = {"exists": "exists()", "contains": f"contains({self.value!r})",
                  "in": f"is_in({self.value!r})"}.get(self.op)
        return f"{self.path}.{method}" if method else self.path


@dataclass(frozen=True, eq=False)
class _Group(Condition):
    args: tuple[Condition, ...]
    _op = _sep = ""

    def __post_init__(self) -> None:
        if not isinstance(self.args, (list, tuple)) or not self.args:
            raise TypeError(f"{self._op!r} takes a non-empty list of conditions")
        if not all(isinstance(a, Condition) for a in self.args):
            raise TypeError(f"{self._op!r} arguments must all be conditions")
        object.__setattr__(self, "args", tuple(self.args))

    def evaluate(self, scope: Mapping[str, Any]) -> bool:
        return (all if self._op == "and" else any)(a.evaluate(scope) for a in self.args)

    def refs(self) -> set[str]:
        return set().union(*(a.refs() for a in self.args))

    def to_data(self) -> dict[str, Any]:
        return {"op": self._op, "args": [a.to_data() for a in self.args]}

    def describe(self) -> str:
        return self._sep.join(_paren(a) for a in self.args)


@dataclass(frozen=True, eq=False)
class And(_Group):
    """All of `args` hold (``a & b``; nested Ands are flattened)."""

    _op, _sep = "and", " & "


@dataclass(frozen=True, eq=False)
class Or(_Group):
    """Any of `args` holds (``a | b``; nested Ors are flattened)."""

    _op, _sep = "or", " | "


@dataclass(frozen=True, eq=False)
class Not(Condition):
    """`arg` does not hold (``~a``)."""

    arg: Condition

    def __post_init__(self) -> None:
        if not isinstance(self.arg, Condition):
            raise TypeError(f"'not' takes a condition, got {type(self.arg).__name__}")

    def evaluate(self, scope: Mapping[str, Any]) -> bool:
        return not self.arg.evaluate(scope)

    def refs(self) -> set[str]:
        return self.arg.refs()

    def to_data(self) -> dict[str, Any]:
        return {"op": "not", "arg": self.arg.to_data()}

    def describe(self) -> str:
        return f"~({self.arg.describe()})"


@dataclass(frozen=True, eq=False)
class Ref:
    """A value in the scope by dotted path; comparing it builds a `Condition`.

    ``__eq__`` returns a Condition, so a Ref is deliberately unhashable (``__hash__ = None``):
    as a dict key or set member it would hit ``bool(Condition)``.
    """

    path: str
    __hash__ = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        _check_path(self.path)

    def __gt__(self, v: Any) -> Condition: return Check(">", self.path, v)
    def __ge__(self, v: Any) -> Condition: return Check(">=", self.path, v)
    def __lt__(self, v: Any) -> Condition: return Check("<", self.path, v)
    def __le__(self, v: Any) -> Condition: return Check("<=", self.path, v)
    def __eq__(self, v: Any) -> Condition: return Check("==", self.path, v)  # type: ignore[override]
    def __ne__(self, v: Any) -> Condition: return Check("!=", self.path, v)  # type: ignore[override]

    def exists(self) -> Condition: return Check("exists", self.path)
    def truthy(self) -> Condition: return Check("truthy", self.path)
    def contains(self, value: Any) -> Condition: return Check("contains", self.path, value)
    def is_in(self, values: Sequence[Any]) -> Condition: return Check("in", self.path, values)

    def __and__(self, other: Any) -> Condition: return self.truthy().__and__(other)
    def __or__(self, other: Any) -> Condition: return self.truthy().__or__(other)
    def __invert__(self) -> Condition: return Not(self.truthy())

    def __bool__(self) -> bool:
        raise TypeError(f"when({self.path!r}) has no truth value; compare it or use .truthy(); {_BOOL_MISUSE}")

    def __repr__(self) -> str:
        return f"when({self.path!r})"


def when(path: str) -> Ref:
    """A reference to ``step.field...`` (or ``shared.x`` / ``params.x``) in the condition scope."""
    return Ref(path)


class _Bad(ValueError):
    """A located problem in condition data."""


def _from_data(data: Any, where: str, depth: int) -> Condition:
    if depth > _MAX_DEPTH:
        raise _Bad(f"{where}: conditions nested too deeply")
    if not isinstance(data, dict):
        raise _Bad(f"{where}: expected a dict, got {type(data).__name__}")
    op, groups = data.get("op"), {"and": ["args"], "or": ["args"], "not": ["arg"]}
    if not isinstance(op, str) or op not in (*_TESTS, *groups):
        raise _Bad(f"{where}: unknown op {op!r}; expected one of {[*_TESTS, *groups]}")
    value_key = _VALUE_KEY.get(op, "value")
    keys = groups.get(op) or ["path", *([value_key] if value_key else [])]
    if set(data) != {"op", *keys}:
        raise _Bad(f"{where}: op {op!r} takes keys {['op', *keys]}, got {[*data]}")
    try:
        if op == "not":
            return Not(_from_data(data["arg"], f"{where}.arg", depth + 1))
        if op in groups or value_key == "values":
            if not isinstance(data[keys[-1]], list):
                raise TypeError(f"{keys[-1]!r} must be a list, got {type(data[keys[-1]]).__name__}")
        if op in groups:
            args = [_from_data(a, f"{where}.args[{i}]", depth + 1) for i, a in enumerate(data["args"])]
            return (And if op == "and" else Or)(tuple(args))
        return Check(op, data["path"], data[value_key] if value_key else None)
    except _Bad:
        raise
    except (TypeError, ValueError) as e:
        raise _Bad(f"{where}: {e}") from None


def condition_from_data(data: Any) -> Condition:
    """Rebuild a condition from `Condition.to_data()` output; ValueError on malformed (untrusted) data."""
    try:
        return _from_data(data, "$", 0)
    except (TypeError, ValueError) as e:
        raise ValueError(f"bad condition data: {e}") from None


Condition.from_data = staticmethod(condition_from_data)  # type: ignore[attr-defined]


def as_condition(obj: Any) -> Condition | Callable[..., Any]:
    """Normalize a step's ``condition=``: Condition, Ref or ``"step.path"`` (truthy), or a callable(scope)."""
    if isinstance(obj, Condition):
        return obj
    if isinstance(obj, Ref):
        return obj.truthy()
    if isinstance(obj, str):
        return when(obj).truthy()
    if callable(obj):
        return obj
    raise TypeError(
        "condition must be a Condition (e.g. when('step.field') > 1), a 'step.field' path "
        f"string, or a callable taking the scope; got {type(obj).__name__}")
