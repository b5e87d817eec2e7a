"""One vocabulary for refusing bad values: every check raises ``ValueError`` with a
message that names the value, what it got and what is allowed
(``"{name} must be {requirement}, got {value!r}"``), and returns the value in its
checked type. The command line wraps the same checks with :func:`argument`.

The requirement is worded from the limits (``a positive integer``, ``an integer >= 0``,
``a finite number > 0``, ``a number in (0, 1]``). ``wording`` replaces it where an
older message's wording is kept (tests match it).
"""

from __future__ import annotations

import argparse
import functools
import math
import numbers
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

# numpy and yaml are imported where used: the command line imports this module at startup.
if TYPE_CHECKING:
    import numpy as np


__all__ = [
    "ROW_SUM_ATOL",
    "argument",
    "choice",
    "coerce",
    "from_text",
    "integer",
    "integers",
    "number",
    "probability",
    "probability_rows",
    "yaml_loader",
]

# Probability rows must sum to 1 up to float32 rounding (rows produced by a softmax).
ROW_SUM_ATOL = 1e-4


def _refuse(name: str | None, requirement: str, value: Any) -> ValueError:
    # Without a name (argparse puts "argument --steps: " in front) the message starts at "must be".
    subject = f"{name} must be" if name else "must be"
    return ValueError(f"{subject} {requirement}, got {value!r}")


def choice(name: str, value: Any, allowed: Sequence[str], *, wording: str | None = None) -> Any:
    """``value`` if it is one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; {wording or 'choose one of: ' + ', '.join(allowed)}")
    return value


def _bounds(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low:g}"
    return f"{'<' if high_open else '<='} {high:g}" if high is not None else ""


def integer(
    name: str | None, value: Any, *, minimum: int | None = None, maximum: int | None = None, wording: str | None = None
) -> int:
    """``value`` as an int if it is an integer (numpy's too, never a bool) in ``minimum..maximum``."""
    if minimum == 1 and maximum is None:
        requirement = "a positive integer"
    elif minimum is not None and maximum is not None:
        requirement = f"an integer in {minimum}..{maximum}"
    else:
        requirement = f"an integer {_bounds(minimum, maximum, False, False)}".rstrip()
    valid = (
        isinstance(value, numbers.Integral)
        and not isinstance(value, bool)
        and (minimum is None or value >= minimum)
        and (maximum is None or value <= maximum)
    )
    if not valid:
        raise _refuse(name, wording or requirement, value)
    return int(value)


def integers(name: str, values: Any, *, minimum: int | None = None) -> tuple[int, ...]:
    """``values`` as a tuple if it is a non-empty sequence of integers >= ``minimum``."""
    if isinstance(values, str) or not isinstance(values, Sequence) or not values:
        each = "positive integers" if minimum == 1 else f"integers {_bounds(minimum, None, False, False)}".rstrip()
        raise _refuse(name, f"a non-empty sequence of {each}", values)
    return tuple(integer(f"{name}[{i}]", value, minimum=minimum) for i, value in enumerate(values))


def number(
    name: str | None,
    value: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    finite: bool = True,
    exclusive_minimum: bool = False,
    exclusive_maximum: bool = False,
    wording: str | None = None,
) -> float:
    """``value`` as a float if it is a real number (never a bool) within the limits.

    ``finite`` refuses inf and NaN, which pass a ``> 0`` check and turn a loss NaN.
    """
    bounds = _bounds(minimum, maximum, exclusive_minimum, exclusive_maximum)
    if minimum is not None and maximum is not None:
        requirement = f"a number {bounds}"  # an interval is finite
    else:
        requirement = f"{'a finite' if finite else 'a'} number {bounds}".rstrip()
    valid = (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and (not finite or math.isfinite(value))
        and (minimum is None or (value > minimum if exclusive_minimum else value >= minimum))
        and (maximum is None or (value < maximum if exclusive_maximum else value <= maximum))
    )
    if not valid:
        raise _refuse(name, wording or requirement, value)
    return float(value)


def probability(name: str | None, value: Any) -> float:
    """``value`` as a float if it is a number in [0, 1]."""
    return number(name, value, minimum=0.0, maximum=1.0)


def probability_rows(array: Any, *, atol: float = ROW_SUM_ATOL) -> tuple[np.ndarray, np.ndarray]:
    """The indices of the first (at most 5) rows of ``array`` (along its last axis) that are
    no probability vector, a negative entry or a sum off 1 by more than ``atol``, and their
    sums. The caller words the message: ``losses`` and ``metrics`` say why they need one.
    """
    import numpy as np

    rows = np.asarray(array, dtype=np.float64)
    row_sums = rows.sum(axis=-1)
    bad = np.any(rows < 0, axis=-1) | ~np.isclose(row_sums, 1.0, rtol=0.0, atol=atol)
    first_bad = np.flatnonzero(bad)[:5]
    return first_bad, row_sums[first_bad]


# ------------------------------------------------------------------ text and types


def from_text(name: str | None, text: str, kind: type) -> Any:
    """``text`` (from papermill, a grid or the command line) read as ``kind``.

    int and float use Python's reading, which takes YAML 1.1's dotless ``1e-3`` as the
    float meant; bool takes true/false, yes/no, on/off or 1/0; anything else (lists,
    mappings) is YAML, checked against the type by :func:`coerce`.
    """
    if kind in (int, float):
        try:
            return kind(text.strip())
        except ValueError:
            raise _refuse(name, f"of type {kind.__name__}", text) from None
    if kind is bool:
        word = text.strip().lower()
        if word not in _TRUE | _FALSE:
            raise _refuse(name, "of type bool (true/false, yes/no, on/off or 1/0)", text)
        return word in _TRUE
    import yaml

    try:
        return yaml.load(text, Loader=yaml_loader())
    except yaml.YAMLError as error:
        raise ValueError(f"{name} could not be read from {text!r}: {error}") from None


_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})


@functools.cache
def yaml_loader() -> type:
    """YAML 1.1 without base-60 integers, so that ``seed: 1:5`` stays the range "1:5" (not 65)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.yaml_implicit_resolvers = {
        first: [(tag, pattern) for tag, pattern in resolvers if tag != "tag:yaml.org,2002:int"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    decimal = re.compile(r"^[-+]?(?:0|[1-9][0-9_]*)$")
    Loader.add_implicit_resolver("tag:yaml.org,2002:int", decimal, list("-+0123456789"))
    return Loader


def coerce(name: str, value: Any, hint: Any) -> Any:
    """``value`` checked against a type or a dataclass field's type hint: ints become floats,
    lists of ints tuples. Text is read only where YAML cannot say what is meant (a list or a
    mapping given on a command line, a dotless float such as 1e-3); ``"4"`` is no int."""
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        (hint,) = [option for option in options if option is not type(None)]
        origin = typing.get_origin(hint)
    mapping = hint in (dict, Mapping) or origin in (dict, Mapping, typing.Mapping)
    if isinstance(value, str) and (origin is tuple or mapping):
        # `papermill -p seeds "[0, 1]"` and `lab run seeds=[0,1]` hand lists and mappings over as text.
        value = from_text(name, value, tuple if origin is tuple else dict)
    if origin is tuple:
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise _refuse(name, "a list of integers", value)
        return tuple(coerce(f"{name}[{i}]", item, int) for i, item in enumerate(value))
    if mapping:
        if not isinstance(value, Mapping):
            raise _refuse(name, "a mapping", value)
        return dict(value)
    if hint is float and isinstance(value, str):
        try:
            value = from_text(name, value, float)
        except ValueError:
            pass  # refused below, naming the type
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if hint in (str, bool, list) and isinstance(value, hint):
        return value
    kind = getattr(hint, "__name__", hint)
    raise ValueError(f"{name} must be of type {kind}, got {value!r} ({type(value).__name__})")


# ------------------------------------------------------------------ command line


def argument(check: Callable[..., Any], kind: type, **limits: Any) -> Callable[[str], Any]:
    """An argparse ``type``: the option's text read as ``kind``, then ``check(None, value, **limits)``.

    argparse names the option, so the message starts at "must be".
    """

    def parse(text: str) -> Any:
        try:
            return check(None, from_text(None, text, kind), **limits)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    parse.__name__ = kind.__name__  # argparse names the type in some of its messages
    return parse

