"""The checks every sessionrec recommender passes (run by test_common.py).

A new estimator is picked up automatically through ``sessionrec.all_estimators()``; it
only needs an entry in ``FAST_PARAMS`` (settings that fit in a second or two).
"""

from __future__ import annotations

import inspect

import numpy as np
import pandas as pd
import pytest

FAST_PARAMS: dict[str, dict] = {
    "BPRMFRecommender": {"n_factors": 8, "n_epochs": 2, "random_state": 0},
    "GRU4RecRecommender": {"layers": (16,), "n_epochs": 2, "n_sample": 32, "batch_size": 16,
                           "random_state": 0},
    "HRNNRecommender": {"session_size": 16, "user_size": 8, "n_epochs": 2, "batch_size": 8,
                        "random_state": 0},
    # The shared suite fits without item features; tests/test_prnn.py runs the same
    # checks (pickle, save, GridSearchCV, bad input) on the feature architectures.
    "ParallelRNNRecommender": {"architecture": "id", "hidden_size": 16, "n_epochs": 2,
                               "batch_size": 16, "random_state": 0},
    "ItemKNNRecommender": {},
    "MarkovRecommender": {},
    "SequentialRulesRecommender": {},
    "SKNNRecommender": {},
    "STANRecommender": {},
    "VSKNNRecommender": {},
    "PersonalPopularityRecommender": {},
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


def assert_counted_ranks_match_scored(model, test: pd.DataFrame) -> None:
    """A model that counts ranks straight from its scoring product on the CPU (fused
    kernels) ranks like the score matrix of the PyTorch path: its scores differ from
    MKL's by rounding only, so the ranks match but for rare near-ties, and unknown
    targets stay NaN."""
    from sessionrec._native import kernels as _kernels

    if not _kernels.available():
        pytest.skip("needs the fused kernels")
    rows = []
    original = _kernels.product_ranks

    def counted(h, *args, **kwargs):
        rows.append(len(h))
        return original(h, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_kernels, "product_ranks", counted)
        fused = model.rank_next_items(test, ties="median")
    assert sum(rows) > 50  # the ranks came from the product
    # States gathered one walk block at a time (the buffer's cap reached at every block)
    # give the same ranks, bit for bit, as states gathered all at once.
    from sessionrec.models import _recurrent

    calls = len(rows)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_kernels, "product_ranks", counted)
        patch.setattr(_recurrent, "_GATHERED_STATE_VALUES", 1)
        blockwise = model.rank_next_items(test, ties="median")
    assert len(rows) - calls > calls
    pd.testing.assert_series_equal(blockwise, fused)
    with _kernels.disabled():
        plain = model.rank_next_items(test, ties="median")
    assert fused.index.equals(plain.index)
    assert np.array_equal(np.isnan(fused), np.isnan(plain))
    known = ~np.isnan(plain.to_numpy())
    assert known.sum() > 50
    assert (fused.to_numpy()[known] == plain.to_numpy()[known]).mean() >= 0.99


def uses_users(cls) -> bool:
    """Whether the estimator reads a user column (personalised models)."""
    return has_param(cls, "user_key")


def with_users(cls, frame: pd.DataFrame, column: str = "UserId") -> pd.DataFrame:
    """``frame`` with a user column for personalised models (one user per session)."""
    if not uses_users(cls) or column in frame:
        return frame
    return frame.assign(**{column: frame["SessionId"] % 7})
