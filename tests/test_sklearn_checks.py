"""scikit-learn's own estimator checks, on every estimator and transformer.

The estimators' tags say the truth: X is a DataFrame of events (or of items), never an
array (``input_tags.two_d_array`` is False). ``parametrize_with_checks`` then runs what
scikit-learn runs for such estimators (cloning) and skips the rest, so the API-level
checks are also run here one by one, with the ones that cannot apply listed, each with
its reason, as expected failures. Strictly: a listed check that starts to pass fails the
suite, so the list stays true. (They are asserted to raise rather than marked xfail:
pytest's report of 500 expected tracebacks through scikit-learn's checks took 100 s.)
"""

from __future__ import annotations

import warnings

import pytest
import sklearn.utils.estimator_checks as sk
from sklearn.utils.estimator_checks import parametrize_with_checks

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

from .estimator_checks import make

TRANSFORMERS = [ConcatenateUserSessions(), ConsecutiveDuplicateFilter(), DenseItemFeatures(),
                ItemSupportFilter(), RepeatUntilStable(ItemSupportFilter()),
                SessionLengthFilter(), SessionSplitter(), TfidfItemFeatures("title"),
                UserSessionFilter()]
INSTANCES = [make(cls) for cls in all_estimators()] + TRANSFORMERS


def _name(estimator) -> str:
    return type(estimator).__name__


@parametrize_with_checks(INSTANCES, expected_failed_checks=lambda estimator: {})
def test_parametrize_with_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sk.SkipTestWarning)
        check(estimator)


# The API checks, each passing for every estimator and transformer.
PASSING = [
    "check_estimator_tags_renamed", "check_valid_tag_types", "check_estimator_repr",
    "check_no_attributes_set_in_init", "check_do_not_raise_errors_in_init_or_set_params",
    "check_mixin_order", "check_parameters_default_constructible",
    "check_get_params_invariance", "check_set_params", "check_param_validation",
    "check_estimators_unfitted",
]

ARRAYS = ("it fits on numpy arrays; sessionrec fits on a DataFrame of events (session, "
          "item and time columns) and refuses arrays with a TypeError")
EXPECTED_FAILURES = {
    "check_fit_score_takes_y": ARRAYS,
    "check_estimators_overwrite_params": ARRAYS,
    "check_dont_overwrite_parameters": ARRAYS,
    "check_estimators_fit_returns_self": ARRAYS,
    "check_readonly_memmap_input": ARRAYS,
    "check_n_features_in_after_fitting": ARRAYS,
    "check_estimators_dtypes": ARRAYS,
    "check_fit2d_predict1d": ARRAYS,
    "check_fit2d_1sample": ARRAYS,
    "check_fit1d": ARRAYS,
    "check_methods_subset_invariance": ARRAYS + "; and a subset of events is other sessions",
    "check_estimators_pickle": ARRAYS + " (tests/test_common.py pickles every estimator)",
    "check_pipeline_consistency": ARRAYS + " (tests/test_pipelines.py covers Pipelines)",
    "check_dict_unchanged": ARRAYS,
    "check_fit_idempotent": ARRAYS,
    "check_fit_check_is_fitted": ARRAYS,
    "check_n_features_in": ARRAYS + "; columns are named by parameters, not counted",
    "check_requires_y_none": ARRAYS,
    "check_f_contiguous_array_estimator": ARRAYS,
    "check_complex_data": ARRAYS,
    "check_positive_only_tag_during_fit": ARRAYS + " (the TypeError is not the error the "
                                          "check expects for negative values)",
    "check_estimators_empty_data_messages": "it fits an empty numpy array and expects a "
                                            "ValueError; an array is refused first, with a "
                                            "TypeError (an empty DataFrame gives the "
                                            "ValueError: tests/test_common.py)",
    "check_estimators_nan_inf": "it puts NaN into numpy arrays; NaN in an events column "
                                "raises a ValueError naming the column "
                                "(tests/test_common.py)",
    "check_dataframe_column_names_consistency": "its DataFrames have columns col_0, col_1, "
                                                "...; an events frame needs the session, "
                                                "item and time columns",
}
# Transformer checks. The first three return at once for transformers whose input is
# not an array (the tag); tests/test_preprocessing.py checks set_output and the feature
# names on event frames instead.
TRANSFORMER_PASSING = [
    "check_set_output_transform", "check_transformer_get_feature_names_out",
    "check_transformer_get_feature_names_out_pandas", "check_get_feature_names_out_error",
]
TRANSFORMER_EXPECTED_FAILURES = {"check_transformer_general": ARRAYS}

CASES = ([(e, c, None) for e in INSTANCES for c in PASSING]
         + [(e, c, r) for e in INSTANCES for c, r in EXPECTED_FAILURES.items()]
         + [(e, c, None) for e in TRANSFORMERS for c in TRANSFORMER_PASSING]
         + [(e, c, r) for e in TRANSFORMERS for c, r in TRANSFORMER_EXPECTED_FAILURES.items()])


@pytest.mark.parametrize("estimator,check,reason", CASES,
                         ids=[f"{_name(e)}-{c}" for e, c, _ in CASES])
def test_scikit_learn_check(estimator, check, reason):
    if check == "check_estimators_unfitted" and not estimator.__sklearn_tags__().requires_fit:
        pytest.skip("stateless: nothing to be unfitted")
    run = getattr(sk, check)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if reason is None:
            run(_name(estimator), estimator)
            return
        # Expected to fail, for the reason listed; it must still fail.
        with pytest.raises((TypeError, ValueError, AssertionError)):
            run(_name(estimator), estimator)
