"""Checking notebook parameters: one helper for every notebook and for ``advsample report -p``.

A notebook's ``parameters`` cell declares each parameter with a type annotation
(``n_rounds: int = 5``). In IPython an annotated top-level assignment records its type in
the user namespace's ``__annotations__``; papermill's injected cell assigns new values
without annotations, so the declared types survive. :func:`check_parameters` compares every
declared parameter's value with its type and with optional rules, and raises
:class:`ParameterError` naming the parameter, what it expects and the value given, before
the notebook does any work. The report side (:func:`check_declared_type`) uses the type that
``papermill.inspect_notebook`` infers from the same annotations, so a bad ``-p`` value stops
``advsample report`` before any notebook runs.

Rules (``rules={name: rule}``):

* ``">= 0"``, ``"> 0"``, ``"<= 1"``, ``"< 1"`` — a bound;
* a tuple, list or set — the allowed values;
* a callable ``value -> str | None`` — an error message, or None when the value is fine.
"""
from __future__ import annotations

import operator
import types
import typing
from typing import Any, Callable, Mapping

__all__ = ["ParameterError", "NumberError", "as_number", "check_parameters", "check_type", "check_declared_type"]

_BOUNDS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}
_TYPE_NAMES = {"int": int, "float": float, "str": str, "bool": bool, "None": type(None), "NoneType": type(None)}


class ParameterError(ValueError):
    """A parameter has the wrong type or breaks a rule; the message names it and the value given."""


class NumberError(ParameterError, TypeError):
    """A value that is no number where one is expected (a ``ParameterError`` and a ``TypeError``)."""


def _plain_number(value: Any):
    """``value`` as a Python int or float when it is a real number of any kind (Python, numpy
    scalar or 0-d array, 0-d torch tensor ...), else None. Booleans and strings are not numbers."""
    if isinstance(value, (bool, str, bytes)):
        return None
    if isinstance(value, (int, float)):
        return value
    item = getattr(value, "item", None)  # numpy scalars and 0-d arrays, 0-d torch tensors
    shape = getattr(value, "shape", None)
    if item is None or (shape is not None and tuple(shape) != ()):
        return None
    try:
        value = item()
    except (TypeError, ValueError, RuntimeError):
        return None
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def as_number(value: Any, name: str, kind: type = float, rule: str | None = None) -> int | float:
    """``value`` as a Python ``kind`` (float or int) when it is a number of any library.

    Accepted: Python numbers, numpy scalars and 0-d arrays (``np.float32(1.0)``,
    ``np.int64(1)``), 0-d torch tensors; for ``kind=int`` only integral values. Refused with
    :class:`NumberError` naming ``name`` and the value: strings (``"1.0"``), booleans, arrays,
    NaN. ``rule``: a bound like ``"> 0"`` (:class:`ParameterError` when broken).
    """
    number = _plain_number(value)
    if number is None:
        hint = " (a string: pass the number itself, e.g. 1.0 not '1.0')" if isinstance(value, str) else ""
        raise NumberError(f"{name} must be a{'n integer' if kind is int else ' number'}, got {value!r} "
                          f"({type(value).__name__}){hint}")
    if kind is int:
        if isinstance(number, float):
            if not number.is_integer():
                raise NumberError(f"{name} must be an integer, got {value!r}")
            number = int(number)
    else:
        number = float(number)
        if number != number:
            raise NumberError(f"{name} must be a number, got NaN")
    if rule is not None:
        _check_rule(name, number, rule)
    return number


def _members(expected) -> tuple:
    """The plain types an annotation allows: ``int``, ``int | None``, ``Optional[float]`` …"""
    if expected is None:
        return (type(None),)
    if isinstance(expected, type):
        return (expected,)
    if typing.get_origin(expected) in (typing.Union, types.UnionType):
        return tuple(m for arg in typing.get_args(expected) for m in _members(arg))
    return ()  # an annotation we do not check (e.g. list[int]): anything goes


def _type_label(allowed: tuple) -> str:
    return " or ".join("None" if t is type(None) else t.__name__ for t in allowed)


def _matches(value: Any, kind: type) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(_plain_number(value), int)
    if kind is float:  # an integer is a fine float (-p kT 1); numpy and torch numbers too
        return _plain_number(value) is not None
    return isinstance(value, kind)


def check_type(name: str, value: Any, expected) -> Any:
    """``value`` if it has the ``expected`` type (an int passed for a float becomes a float),
    else :class:`ParameterError` ``parameter 'NAME': expected TYPE, got VALUE (its type)``."""
    allowed = _members(expected)
    if not allowed:
        return value
    if not any(_matches(value, kind) for kind in allowed):
        raise ParameterError(f"parameter {name!r}: expected {_type_label(allowed)}, "
                             f"got {value!r} ({type(value).__name__})")
    number = _plain_number(value)
    if number is not None and not isinstance(value, bool):
        if float in allowed and int not in allowed:
            return float(number)  # an int, np.float32 or 0-d tensor becomes a Python float
        if int in allowed and isinstance(number, int):
            return number
    return value


def check_declared_type(name: str, value: Any, inferred_type_name: str | None) -> Any:
    """:func:`check_type` against a type written as text (``papermill.inspect_notebook``'s
    ``inferred_type_name``: ``"int"``, ``"float | None"``, ``"Optional[str]"`` …). A type this
    does not know (``"None"``: not annotated, ``"list[int]"`` …) is not checked."""
    text = (inferred_type_name or "").strip()
    if text.startswith("Optional[") and text.endswith("]"):
        text = text[len("Optional["):-1] + " | None"
    names = [part.strip() for part in text.split("|")]
    if text in ("", "None") or not all(n in _TYPE_NAMES for n in names):
        return value
    allowed = tuple(_TYPE_NAMES[n] for n in names)
    return check_type(name, value, typing.Union[allowed] if len(allowed) > 1 else allowed[0])


def _check_rule(name: str, value: Any, rule) -> None:
    if isinstance(rule, str):
        op, _, bound = rule.strip().partition(" ")
        if op not in _BOUNDS or not bound:
            raise ValueError(f"rule for {name!r} must look like '>= 0', got {rule!r}")
        if not _BOUNDS[op](value, float(bound)):
            raise ParameterError(f"parameter {name!r} must be {rule}, got {value!r}")
    elif isinstance(rule, (tuple, list, set, frozenset)):
        if value not in rule:
            raise ParameterError(f"parameter {name!r} must be one of {', '.join(map(repr, rule))}; got {value!r}")
    elif callable(rule):
        message = rule(value)
        if message:
            raise ParameterError(f"parameter {name!r}: {message}; got {value!r}")
    else:
        raise TypeError(f"rule for {name!r}: a bound like '>= 0', a collection of values or a callable")


def check_parameters(namespace: Mapping[str, Any], rules: Mapping[str, str | tuple | list | set | Callable] | None = None
                     ) -> dict[str, Any]:
    """Check the parameters declared (annotated) in ``namespace`` — a notebook's ``globals()``.

    Every annotated name must hold a value of its annotated type; ``rules`` add bounds,
    allowed values or predicates (see the module docstring). An int given for a float
    parameter is stored back as a float. Returns ``{name: value}`` of the declared parameters,
    in declaration order. Raises :class:`ParameterError` (a ``ValueError``) for the first
    problem, naming the parameter, what it expects and the value given.
    """
    declared = dict(namespace.get("__annotations__") or {})
    if not declared:
        raise ParameterError("no annotated parameters found: declare them as `name: type = value` "
                             "in the notebook's parameters cell")
    unknown = sorted(set(rules or {}) - set(declared))
    if unknown:
        raise ValueError(f"rules for undeclared parameters: {', '.join(unknown)}")
    checked = {}
    for name, expected in declared.items():
        if name not in namespace:
            raise ParameterError(f"parameter {name!r} is declared but has no value")
        checked[name] = check_type(name, namespace[name], expected)
        if rules and name in rules:
            _check_rule(name, checked[name], rules[name])
    if isinstance(namespace, dict):
        namespace.update(checked)  # ints given for floats become floats in the notebook too
    return checked
