"""Tests for the condition DSL (tagent_client.define.conditions): building conditions, looking paths up, the
operators and combinators, MISSING and incompatible types, describe and refs. Their data form (to_data,
from_data, pickling), as_condition and the random round trip are in test_condition_serialization.py."""

from __future__ import annotations

import pickle
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

from tagent_client.define.conditions import (
    MISSING,
    And,
    Condition,
    Not,
    Or,
    lookup_path,
    when,
)

pytestmark = pytest.mark.timeout(30)


class Inner(BaseModel):
    ok: bool = True
    tags: list[str] = ["fast", "cheap"]


class Report(BaseModel):
    model_config = ConfigDict(extra="allow")

    reputation_score: float = 4.2
    title: str = "hello"
    inner: Inner = Inner()
    nothing: int | None = None

    @property
    def doubled(self) -> float:
        return self.reputation_score * 2


class Plain:
    def __init__(self) -> None:
        self.reputation_score = 4.2
        self.title = "hello"
        self.items = [10, 20, 30]
        self._secret = "hidden"

    def method(self) -> str:
        return "called"

    @property
    def broken(self) -> Any:
        raise RuntimeError("boom")


def dict_output() -> dict[str, Any]:
    return {"reputation_score": 4.2, "title": "hello", "inner": {"ok": True, "tags": ["fast", "cheap"]},
            "nothing": None, "items": [10, 20, 30]}


def scope_with(output: Any) -> dict[str, Any]:
    return {"web": output, "shared": {"mode": "strict", "n": 3}, "params": {"limit": 5}}


OUTPUTS = {"dict": dict_output, "model": Report, "object": Plain}


# --- lookup_path -------------------------------------------------------------------------------


def test_lookup_path_walks_mappings_models_objects_and_indexes() -> None:
    # Given a scope mixing dicts, pydantic models, plain objects and lists
    scope = {"a": {"b": [{"c": 1}, {"c": 2}]}, "m": Report(), "o": Plain()}
    # When/Then: every kind of container is walked by its natural access
    assert lookup_path(scope, "a.b.0.c") == 1
    assert lookup_path(scope, "a.b.-1.c") == 2
    assert lookup_path(scope, "m.inner.tags.1") == "cheap"
    assert lookup_path(scope, "m.doubled") == pytest.approx(8.4)
    assert lookup_path(scope, "o.items.2") == 30
    assert lookup_path(scope, ("a", "b", "1", "c")) == 2
    assert lookup_path((5, 6), "-2") == 5


def test_lookup_path_sequence_form_reaches_keys_with_dots_and_empty_path_is_root() -> None:
    # Given a key that itself contains a dot
    root = {"x.y": {"z": 1}}
    # Then the sequence form reaches it, and an empty path returns the root
    assert lookup_path(root, ["x.y", "z"]) == 1
    assert lookup_path(root, "x.y.z") is MISSING
    assert lookup_path(root, "") is root
    assert lookup_path(root, []) is root


@pytest.mark.parametrize(
    ("root", "path"),
    [
        ({"a": 1}, "b"),  # missing key
        ({"a": 1}, "a.b"),  # attribute of an int
        ({"a": "text"}, "a.upper"),  # str has no data attributes
        ({"a": [1, 2]}, "a.2"),  # index out of range
        ({"a": [1, 2]}, "a.-3"),
        ({"a": [1, 2]}, "a.x"),  # non-integer segment on a list
        ({"a": [1, 2]}, "a.1.5"),
        ({"a": [1, 2]}, "a.²"),  # unicode digit is not a decimal index
        ({"a": None}, "a.b"),
        (None, "a"),
        (Plain(), "_secret"),  # private attributes are never looked up
        (Plain(), "__class__"),
        (Plain(), "method"),  # methods are not data
        (Plain(), "broken"),  # a raising property counts as missing
        (Report(), "model_dump"),
        (Report(), "not_a_field"),
        ({"a": [1]}, "a." + "9" * 5000),  # absurdly long index
    ],
)
def test_lookup_path_returns_missing_and_never_raises(root: Any, path: str) -> None:
    # When a path does not resolve, Then MISSING comes back instead of an exception
    assert lookup_path(root, path) is MISSING


def test_lookup_path_reads_pydantic_extra_fields() -> None:
    # Given a model allowing extras
    model = Report(extra_field=7)
    # Then extras resolve like fields
    assert lookup_path(model, "extra_field") == 7


def test_missing_is_a_falsy_singleton_with_a_stable_repr() -> None:
    assert repr(MISSING) == "MISSING"
    assert not MISSING
    assert pickle.loads(pickle.dumps(MISSING)) is MISSING


# --- building references -----------------------------------------------------------------------


@pytest.mark.parametrize("path", ["", "a..b", ".a", "a."])
def test_when_rejects_empty_paths_and_segments(path: str) -> None:
    with pytest.raises(ValueError, match="empty"):
        when(path)


def test_when_rejects_non_string_paths() -> None:
    with pytest.raises(TypeError, match="str"):
        when(3)  # type: ignore[arg-type]


def test_ref_is_deliberately_unhashable_and_has_no_truth_value() -> None:
    # Given a Ref, whose == builds a Condition
    ref = when("a.x")
    # Then it cannot be hashed nor used as a bool
    with pytest.raises(TypeError):
        hash(ref)
    with pytest.raises(TypeError, match="&, \\|, ~"):
        bool(ref)
    assert repr(ref) == "when('a.x')"


@pytest.mark.parametrize("bad", [object(), {1: "a"}, {1, 2}, b"x", when("b.y")])
def test_non_json_literals_are_rejected_when_building(bad: Any) -> None:
    with pytest.raises(TypeError):
        when("a.x") == bad  # noqa: B015


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 2**64])
def test_unrepresentable_numbers_are_rejected_when_building(bad: Any) -> None:
    with pytest.raises(ValueError):
        when("a.x") > bad  # noqa: B015


def test_tuple_literals_are_normalized_to_lists_and_match_tuple_outputs() -> None:
    # Given a literal tuple and an output tuple
    cond = when("a.pair") == (1, 2)
    # Then the stored literal is a list (as it would be after JSON), and it still matches
    assert cond.to_data()["value"] == [1, 2]
    assert cond.evaluate({"a": {"pair": (1, 2)}})
    assert cond.evaluate({"a": {"pair": [1, 2]}})


# --- operators ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(OUTPUTS))
@pytest.mark.parametrize(
    ("cond", "expected"),
    [
        (when("web.reputation_score") > 3.5, True),
        (when("web.reputation_score") > 4.2, False),
        (when("web.reputation_score") >= 4.2, True),
        (when("web.reputation_score") < 4.2, False),
        (when("web.reputation_score") <= 4.2, True),
        (when("web.title") == "hello", True),
        (when("web.title") != "hello", False),
        (when("web.title") != "bye", True),
        (when("web.title").exists(), True),
        (when("web.nope").exists(), False),
        (when("web.title").contains("ell"), True),
        (when("web.title").is_in(["hi", "hello"]), True),
        (when("web.title").is_in([]), False),
        (when("web.title").truthy(), True),
        (when("shared.mode") == "strict", True),
        (when("params.limit") < 10, True),
    ],
    ids=lambda v: v.describe() if isinstance(v, Condition) else str(v),
)
def test_operators_on_dicts_models_and_objects(kind: str, cond: Condition, expected: bool) -> None:
    # Given the same output shaped as a dict, a pydantic model or a plain object
    scope = scope_with(OUTPUTS[kind]())
    # When the condition is evaluated, Then the result does not depend on the shape
    assert cond.evaluate(scope) is expected


@pytest.mark.parametrize("kind", ["dict", "model"])
def test_nested_paths_and_list_indexes(kind: str) -> None:
    scope = scope_with(OUTPUTS[kind]())
    assert (when("web.inner.ok") == True).evaluate(scope)  # noqa: E712
    assert when("web.inner.tags").contains("fast").evaluate(scope)
    assert (when("web.inner.tags.0") == "fast").evaluate(scope)
    assert (when("web.inner.tags.-1") == "cheap").evaluate(scope)
    assert not when("web.inner.tags.5").exists().evaluate(scope)


def test_exists_is_true_for_none_but_truthy_is_not() -> None:
    scope = scope_with(dict_output())
    assert when("web.nothing").exists().evaluate(scope)
    assert not when("web.nothing").truthy().evaluate(scope)
    assert (when("web.nothing") == None).evaluate(scope)  # noqa: E711


@pytest.mark.parametrize(
    ("value", "needle", "expected"),
    [
        (["a", "b"], "a", True),
        (("a", "b"), "b", True),
        ("abc", "bc", True),
        ({"k": 1}, "k", True),  # dict: keys
        ({"k": 1}, 1, False),
        ([[1, 2]], [1, 2], True),
        ("abc", 1, False),  # incompatible: false, no exception
        ([{"a": 1}], {"a": 1}, True),
        (None, "a", False),
        (5, 5, False),
        (Report(), "title", False),  # models are not containers
    ],
)
def test_contains(value: Any, needle: Any, expected: bool) -> None:
    assert when("s.v").contains(needle).evaluate({"s": {"v": value}}) is expected


@pytest.mark.parametrize(
    ("value", "truthy"),
    [(0, False), (1, True), ("", False), ("x", True), ([], False), ({}, False), (None, False), (Report(), True)],
)
def test_truthy(value: Any, truthy: bool) -> None:
    assert when("s.v").truthy().evaluate({"s": {"v": value}}) is truthy


# --- MISSING and incompatible types ---------------------------------------------------------------


@pytest.mark.parametrize(
    "cond",
    [
        when("web.nope") > 1,
        when("web.nope") >= 1,
        when("web.nope") < 1,
        when("web.nope") <= 1,
        when("web.nope") == None,  # noqa: E711
        when("web.nope") != 1,
        when("web.nope").contains(1),
        when("web.nope").is_in([None, 1]),
        when("web.nope").truthy(),
        when("web.nope").exists(),
        when("ghost_step.x") == 1,
    ],
    ids=lambda c: c.describe(),
)
def test_missing_is_never_compared(cond: Condition) -> None:
    # Given a path that does not resolve
    scope = scope_with(dict_output())
    # Then every test on it is false, != included
    assert cond.evaluate(scope) is False


def test_negating_a_missing_comparison_is_true() -> None:
    # ~ is plain boolean negation of the (false) result
    assert (~(when("web.nope") == 1)).evaluate(scope_with(dict_output()))


@pytest.mark.parametrize(
    "cond",
    [
        when("s.text") > 1,
        when("s.num") < "a",
        when("s.none") >= 0,
        when("s.dict") < {"a": 1},
        when("s.list") > 3,
    ],
    ids=lambda c: c.describe(),
)
def test_incompatible_types_compare_false(cond: Condition) -> None:
    scope = {"s": {"text": "abc", "num": 3, "none": None, "dict": {"a": 0}, "list": [1]}}
    assert cond.evaluate(scope) is False


def test_evaluation_survives_hostile_values() -> None:
    # Given an output whose __eq__ and __bool__ raise
    class Hostile:
        def __eq__(self, other: object) -> bool:
            raise RuntimeError("no")

        def __bool__(self) -> bool:
            raise RuntimeError("no")

    scope = {"s": {"v": Hostile()}}
    # Then evaluation is still total
    assert not (when("s.v") == 1).evaluate(scope)
    assert not when("s.v").truthy().evaluate(scope)
    assert not when("s.v").is_in([1]).evaluate(scope)
    assert not when("s").contains("v").evaluate({"s": [Hostile()]})


def test_evaluate_on_a_non_mapping_scope_is_false() -> None:
    assert not (when("a.b") == 1).evaluate(None)  # type: ignore[arg-type]


# --- combinators -------------------------------------------------------------------------------


def test_and_or_not_evaluate() -> None:
    scope = {"a": {"x": 1}, "b": {"ok": False}}
    a, b = when("a.x") == 1, when("b.ok")
    assert not (a & b).evaluate(scope)
    assert (a | b).evaluate(scope)
    assert (a & ~b).evaluate(scope)
    assert isinstance(~b, Not)


def test_and_or_flatten_nested_groups() -> None:
    # Given four leaves
    a, b, c, d = (when(f"{n}.v") == 1 for n in "abcd")
    # When combined with the same operator
    both = (a & b) & (c & d)
    anyof = a | b | c
    # Then nested groups flatten, but mixed operators keep their structure
    assert isinstance(both, And) and both.args == (a, b, c, d)
    assert isinstance(anyof, Or) and anyof.args == (a, b, c)
    mixed = (a & b) | c
    assert isinstance(mixed, Or) and isinstance(mixed.args[0], And)


def test_ref_used_directly_with_operators_means_truthy() -> None:
    scope = {"a": {"ok": True}, "b": {"ok": 0}}
    assert (when("a.ok") & ~when("b.ok")).evaluate(scope)
    assert (when("b.ok") | when("a.ok")).evaluate(scope)
    assert ((when("a.ok") == True) & when("a.ok")).to_data()["args"][1] == {"op": "truthy", "path": "a.ok"}  # noqa: E712


def test_combining_with_non_conditions_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        (when("a.x") == 1) & True  # noqa: B015
    with pytest.raises(TypeError):
        when("a.x") | 3  # noqa: B015


def test_bool_of_a_condition_raises_with_a_hint() -> None:
    cond = when("a.x") > 1
    # Then bool(), `and`, `not` and chained comparisons all fail loudly
    with pytest.raises(TypeError, match="&, \\|, ~"):
        bool(cond)
    with pytest.raises(TypeError):
        cond and cond  # noqa: B015, B018
    with pytest.raises(TypeError):
        not cond  # noqa: B015, B018
    with pytest.raises(TypeError):
        1 < when("a.x") < 3  # noqa: B015


def test_reflected_comparisons_keep_the_path_on_the_left() -> None:
    assert (3 < when("a.x")).describe() == "a.x > 3"


# --- describe / refs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cond", "text"),
    [
        (when("web_search.reputation_score") > 3.5, "web_search.reputation_score > 3.5"),
        (when("a.name") == "x", "a.name == 'x'"),
        (when("a.v") != None, "a.v != None"),  # noqa: E711
        ((when("a.x") == 1) & ~when("b.ok"), "(a.x == 1) & ~(b.ok)"),
        (when("a.x").exists() | when("b").truthy(), "a.x.exists() | b"),
        (when("a.tags").contains("x"), "a.tags.contains('x')"),
        (when("a.kind").is_in(["p", "q"]), "a.kind.is_in(['p', 'q'])"),
        (((when("a.x") > 1) | (when("b.y") < 2)) & when("c"), "((a.x > 1) | (b.y < 2)) & c"),
        (~((when("a.x") > 1) & when("b")), "~((a.x > 1) & b)"),
    ],
)
def test_describe(cond: Condition, text: str) -> None:
    assert cond.describe() == text


def test_refs_lists_step_names_but_not_shared_or_params() -> None:
    cond = ((when("a.x") > 1) | when("b")) & ~when("shared.flag") & (when("params.n") == 2) & when("a.y")
    assert cond.refs() == {"a", "b"}
    assert when("shared.x").exists().refs() == set()
