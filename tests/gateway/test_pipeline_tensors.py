"""V2 tensor checks used by pipeline execution: what is accepted, what is refused and how it is named."""

from __future__ import annotations

from math import prod
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.pipelines.tensors import (
    DATATYPES,
    TensorError,
    TensorLimits,
    _check_elements,
    _evenly_nested_and_fitting,
    check_request,
    check_response,
    has_truthy_element,
    iter_elements,
    renamed,
)

LIMITS = TensorLimits()


def tensor(name: str = "x", shape: Any = None, datatype: str = "INT32", data: Any = None) -> dict[str, Any]:
    return {
        "name": name,
        "shape": [2, 2] if shape is None else shape,
        "datatype": datatype,
        "data": [1, 2, 3, 4] if data is None else data,
    }


def test_flat_and_nested_data_are_accepted() -> None:
    flat = tensor()
    nested = tensor(data=[[1, 2], [3, 4]])
    assert check_request({"inputs": [flat, nested | {"name": "y"}]}, LIMITS) == [flat, nested | {"name": "y"}]


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        (tensor(shape=[2, -1]), "non-negative"),
        (tensor(shape="2x2"), "shape must be a list"),
        (tensor(shape=[True, 4]), "non-negative integers"),
        (tensor(datatype="INT128"), "not a V2 datatype"),
        (tensor(data=[1, 2, 3]), "data holds 3 elements but shape [2, 2] needs 4"),
        (tensor(data=[1, 2, 3, 4, 5]), "more than 4"),
        (tensor(data=[[[1, 2]], [[3, 4]]]), "nested deeper"),
        (tensor(data=[1, 2, 3, 2**31]), "integer in"),
        (tensor(data=[1, 2, 3, True]), "integer in"),
        (tensor(datatype="UINT8", data=[1, 2, 3, -1]), "[0, 255]"),
        (tensor(datatype="BOOL", data=[1, 0, 1, 0]), "boolean"),
        (tensor(datatype="FP32", data=[1.0, 2.0, "3", 4.0]), "number"),
        (tensor(datatype="BYTES", data=["a", "b", 3, "d"]), "string"),
        (tensor(data="1234"), "data must be a list"),
        ({"name": "x", "shape": [1], "datatype": "INT32", "data": [1], "parameters": []}, "parameters"),
    ],
)
def test_malformed_tensors_are_named_with_the_problem(bad: dict[str, Any], words: str) -> None:
    with pytest.raises(TensorError) as caught:
        check_request({"inputs": [bad]}, LIMITS)
    assert "tensor 'x'" in str(caught.value)
    assert words in str(caught.value)


@pytest.mark.parametrize(
    ("request_", "words"),
    [
        ([], "JSON object"),
        ({}, "'inputs' must be a list"),
        ({"inputs": []}, "at least one input"),
        ({"inputs": [tensor(), tensor()]}, "two tensors named 'x'"),
        ({"inputs": [5]}, "tensor #0 must be an object"),
        ({"inputs": [{"shape": [1]}]}, "tensor #0 needs a non-empty string 'name'"),
        ({"id": 7, "inputs": [tensor()]}, "'id' must be a string"),
        ({"parameters": [], "inputs": [tensor()]}, "'parameters' must be an object"),
    ],
)
def test_malformed_requests(request_: Any, words: str) -> None:
    with pytest.raises(TensorError, match=words):
        check_request(request_, LIMITS)


def test_limits_on_tensor_count_and_elements() -> None:
    limits = TensorLimits(max_tensors=2, max_elements=10)
    with pytest.raises(TensorError, match="holds 3 tensors; the limit is 2"):
        check_request({"inputs": [tensor(f"t{i}") for i in range(3)]}, limits)
    with pytest.raises(TensorError, match="more than 10 elements"):
        check_request({"inputs": [tensor("a", [2, 4], data=[0] * 8), tensor("b", [4], data=[0] * 4)]}, limits)
    # An absurd shape is refused without allocating or counting anything.
    with pytest.raises(TensorError, match="more than 10 elements"):
        check_request({"inputs": [tensor(shape=[10**30], data=[])]}, limits)


def test_response_outputs_are_checked_the_same_way() -> None:
    assert check_response({"outputs": [tensor()]}, LIMITS) == [tensor()]
    with pytest.raises(TensorError, match="not a JSON object"):
        check_response("nope", LIMITS)
    with pytest.raises(TensorError, match="'outputs' must be a list"):
        check_response({"outputs": None}, LIMITS)


def test_hostile_nesting_does_not_exhaust_the_stack() -> None:
    deep: list[Any] = [1]
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(TensorError, match="nested deeper"):
        list(iter_elements(deep, 3))


def test_renamed_shares_the_data() -> None:
    original = tensor()
    copy = renamed(original, "y")
    assert copy["name"] == "y"
    assert original["name"] == "x"
    assert copy["data"] is original["data"]
    assert renamed(original, "x") is original


@pytest.mark.parametrize(
    ("datatype", "data", "truthy"),
    [
        ("INT32", [0, 0], False),
        ("INT32", [0, 3], True),
        ("BOOL", [False, False], False),
        ("BOOL", [False, True], True),
        ("BYTES", ["", ""], False),
        ("BYTES", ["", "go"], True),
        ("FP32", [0.0, 0.0], False),
        ("FP32", [0.0, 0.5], True),
    ],
)
def test_truthy_elements(datatype: str, data: list[Any], truthy: bool) -> None:
    assert has_truthy_element(tensor(shape=[2], datatype=datatype, data=data)) is truthy


def test_an_empty_tensor_is_not_truthy() -> None:
    assert has_truthy_element(tensor(shape=[0], data=[])) is False


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(), st.lists, max_leaves=20))
def test_arbitrary_json_as_a_tensor_is_refused_with_a_tensor_error(value: Any) -> None:
    for request in ({"inputs": [value]}, {"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": value}]}):
        try:
            check_request(request, LIMITS)
        except TensorError as error:
            assert str(error)
        else:
            # Only a well-formed tensor gets through: a list of exactly two numbers.
            assert isinstance(value, list)
            assert len(list(iter_elements(value, 1))) == 2


@given(
    st.sampled_from(sorted(DATATYPES)),
    st.lists(st.integers(min_value=0, max_value=4), max_size=3),
    st.data(),
)
def test_wrong_element_counts_are_always_refused(datatype: str, shape: list[int], data: st.DataObject) -> None:
    expected = 1
    for dim in shape:
        expected *= dim
    count = data.draw(st.integers(min_value=0, max_value=expected + 3).filter(lambda n: n != expected))
    element = {"BOOL": True, "BYTES": "a"}.get(datatype, 1)
    with pytest.raises(TensorError, match="elements but shape"):
        check_request({"inputs": [tensor(shape=shape, datatype=datatype, data=[element] * count)]}, LIMITS)


_ELEMENTS = st.one_of(
    st.booleans(), st.integers(-(2**64), 2**64), st.floats(allow_nan=False), st.text(max_size=3), st.none()
)
_DATA = st.recursive(st.lists(_ELEMENTS, max_size=4), lambda inner: st.lists(inner, max_size=3), max_leaves=30)


def _evenly_nested(data: list[Any]) -> bool:
    """Each level all lists or all elements."""
    level = data
    while any(isinstance(item, list) for item in level):
        if not all(isinstance(item, list) for item in level):
            return False
        level = [element for item in level for element in item]
    return True


@given(data=_DATA, shape=st.lists(st.integers(0, 5), max_size=4), datatype=st.sampled_from(sorted(DATATYPES)))
def test_the_whole_tensor_check_accepts_exactly_what_the_element_walk_accepts(
    data: list[Any], shape: list[int], datatype: str
) -> None:
    """Tensors nested evenly are checked a level at a time in C; the element-by-element walk (which names the
    problem) takes the rest. The first never accepts what the walk refuses, and accepts all evenly nested data
    the walk accepts."""
    expected = prod(shape)
    try:
        _check_elements(data, shape, expected, datatype)
        walk_accepts = True
    except TensorError:
        walk_accepts = False
    at_once = _evenly_nested_and_fitting(data, max(len(shape), 1), expected, datatype)
    if at_once:
        assert walk_accepts
    if walk_accepts and _evenly_nested(data):
        assert at_once
