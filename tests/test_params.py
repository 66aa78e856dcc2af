"""Parameter validation through scikit-learn's machinery, for every estimator and
transformer: each parameter is declared in ``_parameter_constraints`` and a wrong type or
an out-of-range value raises ``InvalidParameterError`` naming it."""

from __future__ import annotations

import inspect
from numbers import Integral, Real

import pandas as pd
import pytest
import sklearn
from sklearn.utils._param_validation import (
    Interval,
    InvalidParameterError,
    generate_invalid_param_val,
    make_constraint,
)

from sessionrec import all_estimators
from sessionrec.preprocessing import (
    ConcatenateUserSessions,
    ConsecutiveDuplicateFilter,
    DenseItemFeatures,
    ItemSupportFilter,
    RepeatUntilStable,
    SessionLengthFilter,
    SessionSplitter,
    TfidfItemFeatures,
    UserSessionFilter,
)

from .estimator_checks import make, with_users

TRANSFORMERS = {
    ConcatenateUserSessions: {}, ConsecutiveDuplicateFilter: {}, ItemSupportFilter: {},
    SessionLengthFilter: {}, SessionSplitter: {}, UserSessionFilter: {},
    RepeatUntilStable: {"filters": ItemSupportFilter()},
    TfidfItemFeatures: {"columns": "title"}, DenseItemFeatures: {},
}
CLASSES = [*all_estimators(), *TRANSFORMERS]


def build(cls, **params):
    if cls in TRANSFORMERS:
        return cls(**{**TRANSFORMERS[cls], **params})
    return make(cls, **params)


def fit_input(cls, events):
    if cls is TfidfItemFeatures:
        return pd.DataFrame({"title": ["a b", "b c"]}, index=[1, 2])
    if cls is DenseItemFeatures:
        return pd.DataFrame({"x": [1.0, 2.0]}, index=[1, 2])
    return with_users(cls, events)


def invalid_values(constraints):
    """(value, what) pairs that no constraint of a parameter accepts: scikit-learn's own
    generator of invalid values, plus a wrong type for numeric parameters."""
    made = [make_constraint(c) for c in constraints]
    values = []
    for constraint in made:
        try:
            value = generate_invalid_param_val(constraint)
        except NotImplementedError:
            continue
        values.append((value, "out of range" if isinstance(constraint, Interval)
                       else "invalid"))
    if any(isinstance(c, Interval) and c.type in (Integral, Real) for c in made):
        values.append(("12", "a string for a number"))
    return [(v, w) for v, w in values if not any(c.is_satisfied_by(v) for c in made)]


CASES = [(cls, name, value, what) for cls in CLASSES
         for name, constraints in cls._parameter_constraints.items()
         for value, what in invalid_values(constraints)]


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_every_parameter_is_declared(cls):
    params = set(inspect.signature(cls.__init__).parameters) - {"self"}
    assert set(cls._parameter_constraints) == params


def test_every_numeric_parameter_is_covered():
    numeric = {(cls, name) for cls in CLASSES
               for name, constraints in cls._parameter_constraints.items()
               if any(isinstance(make_constraint(c), Interval) for c in constraints)}
    covered = {(cls, name) for cls, name, _, what in CASES if what == "out of range"}
    typed = {(cls, name) for cls, name, _, what in CASES if what == "a string for a number"}
    assert numeric and numeric == covered == typed


@pytest.mark.parametrize("cls,name,value,what", CASES,
                         ids=[f"{c.__name__}-{n}-{w}" for c, n, _, w in CASES])
def test_invalid_parameter_is_named(cls, name, value, what, events):
    est = build(cls, **{name: value})
    with pytest.raises(InvalidParameterError,
                       match=rf"The '{name}' parameter of {cls.__name__} must be"):
        est.fit(fit_input(cls, events))
    # InvalidParameterError is both a ValueError and a TypeError: old except clauses work.
    assert issubclass(InvalidParameterError, ValueError)
    assert issubclass(InvalidParameterError, TypeError)


def test_validation_can_be_skipped_as_in_scikit_learn(events):
    from sessionrec import PopularityRecommender

    with sklearn.config_context(skip_parameter_validation=True):
        PopularityRecommender(device="cpu", verbose=-1).fit(events)  # not checked
    with pytest.raises(InvalidParameterError, match="'verbose'"):
        PopularityRecommender(device="cpu", verbose=-1).fit(events)


@pytest.mark.parametrize("cls,params,message", [
    (SessionLengthFilter, {"min_length": 3, "max_length": 2}, "'max_length'.*>= min_length"),
    (UserSessionFilter, {"min_sessions": 5, "max_sessions": 1},
     "'max_sessions'.*>= min_sessions"),
])
def test_rules_between_parameters(cls, params, message, events):
    with pytest.raises(InvalidParameterError, match=message):
        cls(**params).fit(with_users(cls, events))
