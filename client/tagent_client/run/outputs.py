"""What a step may return: the rules every runner applies, so a daemon run and an in-process run agree.

A step's output is stored as plain data, the kind msgpack and JSON both carry: None, bool, int (64-bit),
float, str, and lists and str-keyed dicts of those. Pydantic models, Structs, dataclasses, enums, tuples,
sets, datetimes and UUIDs are converted on the way (see `result.to_builtins`). An output that breaks a rule
fails its attempt with `StepOutputError` (code "bad_output", not retryable: the same code returns the same
thing), with a one-line message naming the step, the problem and, where there is one, the place:

- an object with no plain-data form (a generator, a lock, a socket ...);
- nesting deeper than MAX_DEPTH containers, or a container that contains itself;
- a float that is NaN or infinite (JSON has no such number; we fail rather than store null);
- an int outside the signed/unsigned 64-bit range, or a str that is not valid Unicode (lone surrogates).

Guarantees: `output_data` returns data that the worker can send, the daemon can decode, store and serve,
and the client can render as JSON; it raises nothing but StepOutputError (and never RecursionError).
"""

from __future__ import annotations

import math
from typing import Any

import msgspec

from ..core.result import to_builtins
from ..errors import describe
from .runners.function import StepOutputError

#: The deepest nesting of lists/dicts an output may have (serde_json's default limit is 128).
MAX_DEPTH = 100

_CONTAINERS = frozenset((dict, list, tuple))
_is_float = float.__instancecheck__


def output_data(step: str, value: Any) -> Any:
    """`value` as plain data under the rules above; raises StepOutputError naming `step` if it breaks one."""
    try:
        data = to_builtins(value)
    except RecursionError:
        raise _too_deep(step, "") from None
    except Exception as exc:  # noqa: BLE001 - a model's serializer may raise anything: it is the output's fault
        raise _unstorable(step, exc) from None
    _check_tree(step, data)
    try:
        msgspec.msgpack.encode(data)  # what the wire and the store will do: big ints, lone surrogates
    except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as exc:
        raise _unstorable(step, exc) from None
    return data


def _check_tree(step: str, data: Any) -> None:
    """Depth and finite floats, without recursion (the nesting is what is being checked). Leaf-only lists and
    dicts, the bulk of a big output, are checked with C-level iteration (map/filter), not a Python loop."""
    if type(data) not in _CONTAINERS:
        if _is_float(data):
            _check_float(step, data, ())
        return
    stack: list[tuple[Any, tuple[Any, ...]]] = [(data, ())]
    while stack:
        node, path = stack.pop()
        if len(path) >= MAX_DEPTH:
            raise _too_deep(step, _where(path))
        values = node.values() if type(node) is dict else node
        kinds = set(map(type, values))
        if float in kinds and not all(map(math.isfinite, filter(_is_float, values))):
            keys = node.keys() if type(node) is dict else range(len(node))
            for key, child in zip(keys, values):
                if _is_float(child):
                    _check_float(step, child, (*path, key))
        if not _CONTAINERS.isdisjoint(kinds):
            keys = node.keys() if type(node) is dict else range(len(node))
            stack.extend((child, (*path, key)) for key, child in zip(keys, values) if type(child) in _CONTAINERS)


def _check_float(step: str, value: float, path: tuple[Any, ...]) -> None:
    if not math.isfinite(value):
        raise StepOutputError(
            f"step {step!r} returned {value!r}{_where(path)}: JSON has no NaN or Infinity, and tagentd will not "
            f"turn it into null; return None (or a string) for a missing or unbounded number")


def _unstorable(step: str, exc: BaseException) -> StepOutputError:
    return StepOutputError(f"step {step!r} returned output that cannot be stored as data: {describe(exc)}")


def _too_deep(step: str, where: str) -> StepOutputError:
    return StepOutputError(f"step {step!r} returned output nested more than {MAX_DEPTH} levels deep{where} or that "
                           f"contains itself; return flatter data")


def _where(path: tuple[Any, ...]) -> str:
    if not path:
        return ""
    return " at $" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)
