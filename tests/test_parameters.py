"""advsample.parameters: the one check of notebook parameters (types from annotations, rules)."""
from __future__ import annotations

from typing import Optional

import pytest

from advsample.parameters import ParameterError, check_declared_type, check_parameters, check_type


def namespace(**values):
    annotations = {"n_rounds": int, "kT": float, "sampler": str, "smoke": bool}
    ns = {"__annotations__": annotations, "n_rounds": 3, "kT": 1.0, "sampler": "adversarial", "smoke": False}
    ns.update(values)
    return ns


def test_good_parameters_pass_and_ints_become_floats():
    ns = namespace(kT=2)
    checked = check_parameters(ns, {"n_rounds": ">= 0", "kT": "> 0", "sampler": ("adversarial", "random")})
    assert checked == {"n_rounds": 3, "kT": 2.0, "sampler": "adversarial", "smoke": False}
    assert isinstance(ns["kT"], float)  # written back: the notebook divides by a float


@pytest.mark.parametrize("name, value, expected", [
    ("n_rounds", "abc", "parameter 'n_rounds': expected int, got 'abc' (str)"),
    ("n_rounds", 1.5, "parameter 'n_rounds': expected int, got 1.5 (float)"),
    ("n_rounds", True, "parameter 'n_rounds': expected int, got True (bool)"),
    ("kT", "hot", "parameter 'kT': expected float, got 'hot' (str)"),
    ("smoke", "true", "parameter 'smoke': expected bool, got 'true' (str)"),
    ("sampler", 3, "parameter 'sampler': expected str, got 3 (int)"),
])
def test_wrong_types_name_parameter_type_and_value(name, value, expected):
    with pytest.raises(ParameterError) as error:
        check_parameters(namespace(**{name: value}))
    assert str(error.value) == expected
    assert isinstance(error.value, ValueError)


@pytest.mark.parametrize("values, rules, message", [
    ({"n_rounds": -1}, {"n_rounds": ">= 0"}, "parameter 'n_rounds' must be >= 0, got -1"),
    ({"kT": 0.0}, {"kT": "> 0"}, "parameter 'kT' must be > 0, got 0.0"),
    ({"sampler": "nope"}, {"sampler": ("adversarial", "random")},
     "parameter 'sampler' must be one of 'adversarial', 'random'; got 'nope'"),
    ({"sampler": "x"}, {"sampler": lambda v: None if v.islower() and len(v) > 2 else "a lowercase name"},
     "parameter 'sampler': a lowercase name; got 'x'"),
])
def test_rules(values, rules, message):
    with pytest.raises(ParameterError, match="^" + message.replace("(", r"\(").replace(")", r"\)") + "$"):
        check_parameters(namespace(**values), rules)


def test_rules_and_annotations_must_match():
    with pytest.raises(ValueError, match="rules for undeclared parameters: n_roundz"):
        check_parameters(namespace(), {"n_roundz": ">= 0"})
    with pytest.raises(ParameterError, match="no annotated parameters"):
        check_parameters({"n_rounds": 3})
    with pytest.raises(ValueError, match="must look like"):
        check_parameters(namespace(), {"n_rounds": "at least 0"})


def test_optional_and_unchecked_annotations():
    assert check_type("x", None, Optional[int]) is None
    assert check_type("x", None, int | None) is None
    with pytest.raises(ParameterError, match="expected int or None, got 'a'"):
        check_type("x", "a", int | None)
    assert check_type("x", [1, "a"], list[int]) == [1, "a"]  # not a plain type: not checked


@pytest.mark.parametrize("type_name, value, ok", [
    ("int", 3, True), ("int", "abc", False), ("int", 1.5, False), ("float", 1, True), ("float", "x", False),
    ("bool", True, True), ("bool", 1, False), ("str", "a", True), ("Optional[int]", None, True),
    ("int | None", "a", False), ("None", "anything", True), ("list[int]", "anything", True),
])
def test_types_as_papermill_infers_them(type_name, value, ok):
    if ok:
        check_declared_type("p", value, type_name)
    else:
        with pytest.raises(ParameterError, match="parameter 'p': expected"):
            check_declared_type("p", value, type_name)


def test_ipython_annotations_survive_papermill_injection():
    """In IPython the parameters cell's annotations land in the user namespace; an injected
    plain assignment changes the value, not the annotation."""
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    shell.run_cell("n_rounds: int = 5\nkT: float = 1.0")
    shell.run_cell("n_rounds = 'abc'")  # what papermill injects for -p n_rounds abc
    result = shell.run_cell("from advsample.parameters import check_parameters\ncheck_parameters(globals())")
    assert isinstance(result.error_in_exec, ParameterError)
    assert "parameter 'n_rounds': expected int, got 'abc'" in str(result.error_in_exec)
