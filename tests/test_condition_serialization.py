"""Tests for the data form of conditions (tagent_client.define.conditions): every op round trips through
to_data / condition_from_data (and JSON, msgpack, pickle), malformed data is rejected, as_condition accepts only
conditions and paths, and random condition trees round trip and evaluate identically. Building and evaluating
conditions is in test_conditions.py."""

from __future__ import annotations

import json
import pickle
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from tagent_client.define.conditions import (
    And,
    Check,
    Condition,
    Not,
    Or,
    Ref,
    as_condition,
    condition_from_data,
    when,
)

pytestmark = pytest.mark.timeout(30)


# --- serialization -----------------------------------------------------------------------------

EVERY_OP = [
    when("a.x") > 3.5,
    when("a.x") >= 3,
    when("a.x") < -1,
    when("a.x") <= 0,
    when("a.x") == {"k": [1, None, "s"]},
    when("a.x") != True,  # noqa: E712
    when("a.x").exists(),
    when("a.x").contains("s"),
    when("a.x").is_in([1, "two", None, [3]]),
    when("a.x").truthy(),
    (when("a.x") > 1) & when("b.y"),
    (when("a.x") > 1) | when("b.y"),
    ~when("a.x"),
]


@pytest.mark.parametrize("cond", EVERY_OP, ids=lambda c: c.to_data()["op"])
def test_round_trip_every_op(cond: Condition) -> None:
    # Given a condition, When it goes to data (through JSON and msgpack) and back
    data = cond.to_data()
    for wire in (data, json.loads(json.dumps(data)), msgspec.msgpack.decode(msgspec.msgpack.encode(data))):
        again = condition_from_data(wire)
        # Then the data is identical and so is the evaluation
        assert again.to_data() == data
        assert type(again) is type(cond)
        for scope in ({"a": {"x": 2}, "b": {"y": 1}}, {"a": {"x": {"k": [1, None, "s"]}}}, {}):
            assert again.evaluate(scope) == cond.evaluate(scope)


def test_to_data_shapes() -> None:
    assert (when("web_search.reputation_score") > 3.5).to_data() == {
        "op": ">", "path": "web_search.reputation_score", "value": 3.5}
    assert when("a.x").is_in([1]).to_data() == {"op": "in", "path": "a.x", "values": [1]}
    assert (~when("a")).to_data() == {"op": "not", "arg": {"op": "truthy", "path": "a"}}


def test_to_data_returns_a_copy() -> None:
    # Given a condition's data, When a caller mutates it, Then the condition is unchanged
    cond = when("a.x").is_in([1, 2])
    cond.to_data()["values"].append(3)
    assert cond.to_data()["values"] == [1, 2]


def test_nodes_are_immutable() -> None:
    cond = when("a.x") > 1
    with pytest.raises(AttributeError):
        cond.path = "b"  # type: ignore[misc]


def test_conditions_pickle() -> None:
    cond = (when("a.x") > 1) & ~when("b")
    assert pickle.loads(pickle.dumps(cond)).to_data() == cond.to_data()


def _nest(depth: int) -> dict[str, Any]:
    data: dict[str, Any] = {"op": "truthy", "path": "a"}
    for _ in range(depth):
        data = {"op": "not", "arg": data}
    return data


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"op": "xor", "path": "a"}, "unknown op 'xor'"),
        ({"path": "a"}, "unknown op None"),
        ({"op": ["in"], "path": "a"}, "unknown op"),
        ({"op": ">", "value": 1}, "takes keys"),  # missing path
        ({"op": ">", "path": "a", "value": 1, "extra": 2}, "takes keys"),
        ({"op": "exists", "path": "a", "value": 1}, "takes keys"),
        ({"op": ">", "path": 3, "value": 1}, "must be a str"),
        ({"op": ">", "path": "", "value": 1}, "empty"),
        ({"op": ">", "path": "a..b", "value": 1}, "empty segment"),
        ({"op": ">", "path": "a", "value": {"k": {1, 2}}}, "set"),
        ({"op": ">", "path": "a", "value": float("nan")}, "non-finite"),
        ({"op": "in", "path": "a", "values": "abc"}, "must be a list"),
        ({"op": "and", "args": {"op": "truthy", "path": "a"}}, "must be a list"),
        ({"op": "or", "args": []}, "non-empty"),
        ({"op": "and", "args": [{"op": "truthy", "path": "a"}, "b"]}, "$.args[1]: expected a dict"),
        ({"op": "not", "arg": {"op": "or", "args": [{"op": "?"}]}}, "$.arg.args[0]: unknown op"),
        ({"op": "not", "arg": None}, "$.arg: expected a dict"),
        (["op", ">"], "expected a dict"),
        ("a.x", "expected a dict"),
        (None, "expected a dict"),
        (_nest(200), "nested too deeply"),
    ],
)
def test_malformed_data_is_rejected(data: Any, fragment: str) -> None:
    with pytest.raises(ValueError, match="^bad condition data: ") as info:
        condition_from_data(data)
    assert fragment in str(info.value)


def test_from_data_is_also_reachable_from_condition() -> None:
    assert Condition.from_data({"op": "truthy", "path": "a"}).describe() == "a"  # type: ignore[attr-defined]


def test_check_nodes_can_be_built_directly_and_validate() -> None:
    assert Check(">", "a.x", 1).describe() == "a.x > 1"
    with pytest.raises(ValueError, match="unknown op"):
        Check("~=", "a.x", 1)
    with pytest.raises(TypeError, match="no value"):
        Check("exists", "a.x", 1)
    with pytest.raises(TypeError):
        And([when("a.x") > 1, "nope"])  # type: ignore[list-item]


# --- as_condition ------------------------------------------------------------------------------


def test_as_condition() -> None:
    cond = when("a.x") > 1
    assert as_condition(cond) is cond
    assert as_condition(when("web_search.ok")).to_data() == {"op": "truthy", "path": "web_search.ok"}
    assert as_condition("web_search.ok").to_data() == {"op": "truthy", "path": "web_search.ok"}

    def fn(scope: dict[str, Any]) -> bool:
        return True

    assert as_condition(fn) is fn
    assert isinstance(when("a"), Ref)


@pytest.mark.parametrize("bad", [True, 1, None, ["a.x"], {"op": "truthy", "path": "a"}])
def test_as_condition_rejects_other_objects(bad: Any) -> None:
    with pytest.raises(TypeError, match="condition must be"):
        as_condition(bad)


def test_as_condition_rejects_bad_path_strings() -> None:
    with pytest.raises(ValueError):
        as_condition("a..b")


# --- property: round trip of random trees ------------------------------------------------------

PATHS = ["a", "a.x", "a.items.0", "a.items.-1", "b.name", "b.inner.ok", "shared.flag", "params.n", "ghost.v"]
LITERALS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.sampled_from([0.5, -1.5, 2.0]),
    st.sampled_from(["", "x", "hello"]),
    st.lists(st.integers(-2, 2), max_size=3),
    st.dictionaries(st.sampled_from(["k", "ok"]), st.integers(0, 2), max_size=2),
)


def _leaf() -> st.SearchStrategy[Condition]:
    path = st.sampled_from(PATHS)
    compare = st.builds(Check, st.sampled_from([">", ">=", "<", "<=", "==", "!="]), path, LITERALS)
    unary = st.builds(Check, st.sampled_from(["exists", "truthy"]), path)
    contains = st.builds(lambda p, v: when(p).contains(v), path, LITERALS)
    is_in = st.builds(lambda p, vs: when(p).is_in(vs), path, st.lists(LITERALS, max_size=3))
    return st.one_of(compare, unary, contains, is_in)


TREES = st.recursive(
    _leaf(),
    lambda kids: st.one_of(
        st.lists(kids, min_size=1, max_size=3).map(lambda xs: And(tuple(xs))),
        st.lists(kids, min_size=1, max_size=3).map(lambda xs: Or(tuple(xs))),
        kids.map(Not),
        st.tuples(kids, kids).map(lambda ab: ab[0] & ab[1]),
        st.tuples(kids, kids).map(lambda ab: ab[0] | ab[1]),
    ),
    max_leaves=8,
)


class Inner2(BaseModel):
    ok: Any = None


class Out(BaseModel):
    name: Any = None
    inner: Inner2 = Inner2()


def _scope_values() -> st.SearchStrategy[Any]:
    return st.one_of(LITERALS, st.lists(LITERALS, max_size=3).map(tuple))


SCOPES = st.fixed_dictionaries(
    {
        "a": st.one_of(
            st.none(),
            _scope_values(),
            st.fixed_dictionaries({"x": _scope_values(), "items": st.lists(_scope_values(), max_size=3)}),
        ),
        "b": st.one_of(
            st.builds(Out, name=_scope_values(), inner=st.builds(Inner2, ok=_scope_values())),
            st.fixed_dictionaries({"name": _scope_values(), "inner": st.fixed_dictionaries({"ok": _scope_values()})}),
        ),
        "shared": st.fixed_dictionaries({}, optional={"flag": _scope_values()}),
        "params": st.fixed_dictionaries({}, optional={"n": _scope_values()}),
    }
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cond=TREES, scopes=st.lists(SCOPES, min_size=1, max_size=3))
def test_random_trees_round_trip_and_evaluate_identically(cond: Condition, scopes: list[dict[str, Any]]) -> None:
    # Given a random condition tree, When it goes through data, JSON and msgpack and back
    data = cond.to_data()
    via_json = condition_from_data(json.loads(json.dumps(data)))
    via_msgpack = condition_from_data(msgspec.msgpack.decode(msgspec.msgpack.encode(data)))
    # Then the data is exactly preserved
    assert condition_from_data(data).to_data() == data
    assert via_json.to_data() == data
    assert via_msgpack.to_data() == data
    assert via_msgpack.describe() == cond.describe()
    assert via_msgpack.refs() == cond.refs() <= {"a", "b", "ghost"}
    # And evaluation (which never raises) agrees on every scope
    for scope in scopes:
        expected = cond.evaluate(scope)
        assert isinstance(expected, bool)
        assert via_json.evaluate(scope) is expected
        assert via_msgpack.evaluate(scope) is expected
