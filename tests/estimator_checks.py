"""The checks every sessionrec recommender passes (run by test_common.py).

A new estimator is picked up automatically through ``sessionrec.all_estimators()``; it
only needs an entry in ``FAST_PARAMS`` (settings that fit in a second or two).
"""

from __future__ import annotations

import inspect

import pandas as pd

FAST_PARAMS: dict[str, dict] = {
    "BPRMFRecommender": {"n_factors": 8, "n_epochs": 2, "random_state": 0},
    "GRU4RecRecommender": {"layers": (16,), "n_epochs": 2, "n_sample": 32, "batch_size": 16,
                           "random_state": 0},
    "ItemKNNRecommender": {},
    "MarkovRecommender": {},
    "SequentialRulesRecommender": {},
    "SKNNRecommender": {},
    "STANRecommender": {},
    "VSKNNRecommender": {},
    "PopularityRecommender": {},
    "SessionPopularityRecommender": {},
}


def make(cls, **overrides):
    params = {"device": "cpu", **FAST_PARAMS[cls.__name__], **overrides}
    accepted = inspect.signature(cls.__init__).parameters
    return cls(**{k: v for k, v in params.items() if k in accepted})


def has_param(cls, name: str) -> bool:
    return name in inspect.signature(cls.__init__).parameters


def assert_frames_identical(a: pd.DataFrame, b: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert list(a.index) == list(b.index)
