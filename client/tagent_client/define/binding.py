"""How a function step's parameters are filled, as rules both the runner and validation use.

A step function's parameters are bound by name (`runners/function.bind` does it at
run time): `ctx` (or a first parameter annotated `StepContext`) gets the context; a
dependency's name gets its output; `item` gets the current PARALLEL_MERGE item; any
other name gets the submit param of that name; `*args` / `**kwargs` and parameters
with a default never need anything. This module answers the questions validation
asks before anything runs: which names only a submit param can fill
(`param_names`), and whether the params a run is submitted with fill them
(`missing_params`). A pipeline's declared param defaults (`Pipeline(params={...})`)
fill what a submit leaves out (`with_defaults`), before that check, in the daemon
and in-process alike.
"""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

import msgspec

from .plan import Plan, StepKind

CONTEXT = "ctx"
ITEM = "item"


def is_context(index: int, name: str, param: inspect.Parameter) -> bool:
    """Whether this parameter gets the StepContext: named `ctx`, or the first one annotated `StepContext`."""
    annotation = param.annotation
    named = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", None)
    return name == CONTEXT or (index == 0 and named == "StepContext")


def signature(fn: Callable[..., Any]) -> inspect.Signature | None:
    """The function's signature, or None when Python cannot tell it (some builtins).

    Remembered for the last SIGNATURES functions: checking a pipeline asks for each step's several times, and
    a pipeline of 10,000 steps often shares one function (computing it again each time was most of the check)."""
    try:
        return _signature(fn)
    except TypeError:  # an unhashable callable: not remembered
        return _uncached_signature(fn)


def _uncached_signature(fn: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):
        return None


SIGNATURES = 1024
_signature = functools.lru_cache(maxsize=SIGNATURES)(_uncached_signature)


def param_names(fn: Callable[..., Any], deps: Collection[str]) -> list[str]:
    """Parameters of `fn` that only a submit param can fill, in order.

    Not listed: the context, dependency names, `item`, `*args` / `**kwargs` and parameters
    with a default. (`item` outside a PARALLEL_MERGE step is a problem of its own, see
    `validation`.)
    """
    sig = signature(fn)
    if sig is None:
        return []
    names = []
    for index, (name, param) in enumerate(sig.parameters.items()):
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD) or param.default is not param.empty:
            continue
        if is_context(index, name, param) or name in deps or name == ITEM:
            continue
        names.append(name)
    return names


def suggestion(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate `name` is most likely a misspelling of, if any is close enough."""
    close = difflib.get_close_matches(name, sorted(set(candidates)), n=1, cutoff=0.75)
    return close[0] if close else None


def misspelling(name: str, given: Iterable[str], in_scope: Iterable[str]) -> str | None:
    """"did you mean 'first'?" (a name in scope), "'compnay' looks misspelt" (a given param), or None."""
    given = list(given)
    close = suggestion(name, [*given, *in_scope])
    if close is None:
        return None
    return f"{close!r} looks misspelt" if close in given else f"did you mean {close!r}?"


def notes(*parts: str | None) -> str:
    """' (a; b)' of the parts that are there, or ''."""
    shown = [p for p in parts if p]
    return f" ({'; '.join(shown)})" if shown else ""


def with_defaults(plan: Plan, params: Mapping[str, Any] | None) -> dict[str, Any]:
    """The run's params: the plan's declared defaults, overridden by the submit params `params`."""
    return {**plan.param_defaults, **(params or {})}


def default_problems(defaults: Mapping[str, Any]) -> list[str]:
    """One problem line per declared param default that is not plain JSON data (a run's params must be)."""
    problems = []
    for name, value in defaults.items():
        if not isinstance(name, str):
            problems.append(f"param names must be strings, got {name!r}")
            continue
        try:
            msgspec.json.encode(value)
        except (TypeError, ValueError, OverflowError) as exc:
            problems.append(f"default of param {name!r} must be plain data (str, number, bool, None, list, dict): {exc}")
    return problems


def missing_params(plan: Plan, params: Mapping[str, Any]) -> list[str]:
    """One problem line per function-step parameter that the submit params `params` leave unfilled.

    Pure (works on the Plan, never on user code), so the daemon checks a run before it
    creates it, and the in-process runner before it starts one.
    """
    problems = []
    for spec in plan.steps:
        if spec.kind is not StepKind.FUNCTION:
            continue
        for name in spec.needs_params:
            if name in params:
                continue
            function = (spec.function or spec.name).rpartition(":")[2].rpartition(".")[2]
            note = notes(f"given: {', '.join(sorted(params)) or 'none'}", misspelling(name, params, [*spec.deps, CONTEXT]))
            problems.append(
                f"step {spec.name!r}: parameter {name!r} of {function}() is not among the submit params{note}: "
                f"pass it (tagent submit --param {name}=...), give it a default, or rename it"
            )
    return problems
