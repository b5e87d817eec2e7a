"""lab.validate: each check returns the value in its type or names the value and what is allowed."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from lab import validate


@pytest.mark.parametrize(
    ("limits", "value", "message"),
    [
        ({"minimum": 1}, 0, "n must be a positive integer, got 0"),
        ({"minimum": 1}, 2.5, "n must be a positive integer, got 2.5"),
        ({"minimum": 1}, True, "n must be a positive integer, got True"),
        ({"minimum": 0}, -1, "n must be an integer >= 0, got -1"),
        ({"minimum": 0, "maximum": 9}, 10, "n must be an integer in 0..9, got 10"),
        ({"minimum": 1, "wording": "an integer >= 1"}, 0, "n must be an integer >= 1, got 0"),
    ],
)
def test_integer_names_the_value_and_what_is_allowed(limits, value, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        validate.integer("n", value, **limits)


def test_integer_returns_a_python_int():
    assert type(validate.integer("n", np.int64(3), minimum=1)) is int


def test_integers_checks_each_element_and_the_sequence():
    assert validate.integers("shape", [8, 8, 1], minimum=1) == (8, 8, 1)
    with pytest.raises(ValueError, match=r"^shape\[1\] must be a positive integer, got 0$"):
        validate.integers("shape", (8, 0), minimum=1)
    with pytest.raises(ValueError, match="^shape must be a non-empty sequence of positive integers, got 8$"):
        validate.integers("shape", 8, minimum=1)


@pytest.mark.parametrize(
    ("limits", "value", "message"),
    [
        ({"minimum": 0, "exclusive_minimum": True}, 0, "x must be a finite number > 0, got 0"),
        ({"minimum": 0, "exclusive_minimum": True}, float("inf"), "x must be a finite number > 0, got inf"),
        ({"minimum": 0}, float("nan"), "x must be a finite number >= 0, got nan"),
        ({"minimum": 0, "maximum": 1, "exclusive_minimum": True}, 0.0, r"x must be a number in \(0, 1\], got 0.0"),
        ({"minimum": 0, "maximum": 1, "exclusive_maximum": True}, 1.0, r"x must be a number in \[0, 1\), got 1.0"),
        ({}, "fast", "x must be a finite number, got 'fast'"),
        ({}, False, "x must be a finite number, got False"),
    ],
)
def test_number_names_the_value_and_what_is_allowed(limits, value, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        validate.number("x", value, **limits)


def test_number_may_allow_inf_and_returns_a_float():
    assert validate.number("x", float("inf"), minimum=0, finite=False) == float("inf")
    assert type(validate.number("x", 3)) is float
    assert validate.probability("p", 1) == 1.0
    with pytest.raises(ValueError, match=r"^p must be a number in \[0, 1\], got 1.5$"):
        validate.probability("p", 1.5)


def test_choice_lists_what_is_allowed():
    assert validate.choice("colour", "red", ("red", "blue")) == "red"
    with pytest.raises(ValueError, match="^unknown colour 'green'; choose one of: red, blue$"):
        validate.choice("colour", "green", ("red", "blue"))


def test_probability_rows_reports_the_first_bad_rows_and_their_sums():
    rows = np.array([[0.5, 0.5], [0.7, 0.7], [1.0, 0.0], [-0.5, 1.5]])
    bad, sums = validate.probability_rows(rows)
    assert bad.tolist() == [1, 3] and sums.tolist() == pytest.approx([1.4, 1.0])
    assert validate.probability_rows(np.array([[1.0, 1e-5]]))[0].size == 0  # float32 rounding passes


@pytest.mark.parametrize(
    ("text", "kind", "expected"),
    [
        ("1e-3", float, 1e-3),  # YAML 1.1 reads this as text
        (" 7 ", int, 7),
        ("Yes", bool, True),
        ("0", bool, False),
        ("[1, 2]", list, [1, 2]),
        ("{a: 1}", dict, {"a": 1}),
        ("[1:5]", list, ["1:5"]),  # no base-60 integers
    ],
)
def test_from_text_reads_what_the_kind_means(text, kind, expected):
    assert validate.from_text("x", text, kind) == expected


def test_from_text_refuses_text_that_is_not_of_the_kind():
    with pytest.raises(ValueError, match="^steps must be of type int, got 'ten'$"):
        validate.from_text("steps", "ten", int)
    with pytest.raises(ValueError, match="^flag must be of type bool"):
        validate.from_text("flag", "maybe", bool)
    with pytest.raises(ValueError, match=r"^seeds could not be read from '\[1'"):
        validate.from_text("seeds", "[1", list)


@pytest.mark.parametrize(
    ("value", "hint", "expected"),
    [
        (3, float, 3.0),
        ("1e-3", float, 1e-3),
        ("[0, 1]", tuple[int, ...], (0, 1)),
        ([0, np.int64(1)], tuple[int, ...], (0, 1)),
        ("{steps: 100}", Mapping[str, Any], {"steps": 100}),
        (None, int | None, None),
        ({"a": 1}, dict, {"a": 1}),
        ([1], list, [1]),
        (True, bool, True),
    ],
)
def test_coerce_gives_the_hinted_type(value, hint, expected):
    coerced = validate.coerce("x", value, hint)
    assert coerced == expected and type(coerced) is type(expected)


@pytest.mark.parametrize(
    ("value", "hint", "message"),
    [
        ("4", int, r"x must be of type int, got '4' \(str\)"),  # a YAML string is no number
        (True, int, r"x must be of type int, got True \(bool\)"),
        (1.5, int, r"x must be of type int, got 1.5 \(float\)"),
        ("0, 1", tuple[int, ...], "x must be a list of integers, got '0, 1'"),
        ([0, "a"], tuple[int, ...], r"x\[1\] must be of type int, got 'a'"),
        ("[1, 2]", Mapping[str, Any], r"x must be a mapping, got \[1, 2\]"),
    ],
)
def test_coerce_refuses_other_types(value, hint, message):
    with pytest.raises(ValueError, match=f"^{message}"):
        validate.coerce("x", value, hint)


def test_argument_reads_the_text_then_checks_it_without_a_name():
    positive = validate.argument(validate.integer, int, minimum=1)
    assert positive("3") == 3
    with pytest.raises(argparse.ArgumentTypeError, match="^must be a positive integer, got 0$"):
        positive("0")
    with pytest.raises(argparse.ArgumentTypeError, match="^must be of type int, got 'ten'$"):
        positive("ten")
