"""containers.lean_json gives the json package's answers (it skips only json's import)."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from containers import lean_json

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=30,
)


@given(JSON_VALUES)
def test_same_text_and_values_as_json(value: object) -> None:
    text = json.dumps(value)
    assert lean_json.dumps(value) == text
    assert lean_json.loads(text) == json.loads(text)


@given(JSON_VALUES, st.sampled_from(["", " ", "\n", "\t\r\n "]))
def test_reads_what_json_writes_with_indent_and_whitespace(value: object, pad: str) -> None:
    text = pad + json.dumps(value, indent=1) + pad
    assert lean_json.loads(text) == json.loads(text)


def test_constants_and_numbers_as_json_reads_them() -> None:
    text = "[NaN, Infinity, -Infinity, 1, 1.0, -0, 1e400, 12345678901234567890]"
    ours, theirs = lean_json.loads(text), json.loads(text)
    assert math.isnan(ours[0]) and math.isnan(theirs[0])
    assert ours[1:] == theirs[1:]
    assert [type(v) for v in ours] == [type(v) for v in theirs]
    assert lean_json.dumps([math.inf, -math.inf]) == json.dumps([math.inf, -math.inf])


@pytest.mark.parametrize(
    "text",
    ["", " ", "{", "[1,]", '{"a": }', "{} {}", "1 2", "nul", "'x'", '"\\x"', "[1] x", "\u00a01"],
)
def test_refuses_what_json_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        json.loads(text)
    with pytest.raises(ValueError):
        lean_json.loads(text)


def test_refuses_what_json_cannot_encode() -> None:
    for value in ([1j], {(1, 2): 3}, {1j: 1}):
        with pytest.raises(TypeError):
            json.dumps(value)
        with pytest.raises(TypeError):
            lean_json.dumps(value)
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(ValueError):
        lean_json.dumps(loop)
    assert lean_json.dumps([1]) == "[1]"  # a failed call leaves nothing behind
