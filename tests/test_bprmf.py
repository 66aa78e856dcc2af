"""BPR-MF: session = mean of item factors so far, learning, reproducibility, bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from sessionrec import BPRMFRecommender, PopularityRecommender
from sessionrec.datasets import make_sessions
from sessionrec.evaluation import evaluate

FAST = dict(n_factors=8, n_epochs=2, device="cpu", random_state=0)


def test_scores_are_the_mean_of_the_session_factors(train_test):
    train, test = train_test
    est = BPRMFRecommender(**FAST).fit(train)
    session = test[test["SessionId"] == test["SessionId"].iloc[0]]
    codes = torch.as_tensor(est.item_index_.encode(session["ItemId"]))
    mean = est.item_factors_[codes].mean(0)
    expected = est.item_factors_ @ mean + est.item_bias_
    _, scores = est.predict_next(session, k=est.n_items_, return_scores=True)
    np.testing.assert_allclose(scores.iloc[0].to_numpy(),
                               torch.sort(expected, descending=True).values.numpy(),
                               rtol=1e-5, atol=1e-6)
    # Ranking after each prefix uses the prefix's mean: check the second target.
    prefix_mean = est.item_factors_[codes[:2]].mean(0)
    prefix_scores = est.item_factors_ @ prefix_mean + est.item_bias_
    rank = (prefix_scores >= prefix_scores[codes[2]]).sum().item()
    assert est.rank_next_items(session).iloc[1] == rank


def test_learns_topics_better_than_popularity():
    events = make_sessions(n_sessions=3000, n_items=200, n_topics=10, transition_strength=0.0,
                           random_state=2)
    train, test = events[events["SessionId"] < 2500], events[events["SessionId"] >= 2500]
    bpr = BPRMFRecommender(n_factors=16, n_epochs=10, learning_rate=0.05, device="cpu",
                           random_state=0).fit(train)
    pop = PopularityRecommender(device="cpu").fit(train)
    assert (evaluate(bpr, test, cutoffs=[20])["recall@20"]
            > 1.2 * evaluate(pop, test, cutoffs=[20])["recall@20"])
    assert bpr.history_[-1]["loss"] < bpr.history_[0]["loss"]


def test_reproducible_and_seed_dependent(train_test):
    train, _ = train_test
    a = BPRMFRecommender(**FAST).fit(train)
    b = BPRMFRecommender(**FAST).fit(train)
    c = BPRMFRecommender(**{**FAST, "random_state": 1}).fit(train)
    assert torch.equal(a.item_factors_, b.item_factors_)
    assert not torch.equal(a.item_factors_, c.item_factors_)


@pytest.mark.parametrize("param,value", [("n_factors", 0), ("learning_rate", 0.0),
                                         ("reg_item", -1.0), ("batch_size", 0)])
def test_bad_parameters(param, value, train_test):
    with pytest.raises(ValueError, match=param):
        BPRMFRecommender(**{**FAST, param: value}).fit(train_test[0])


def test_unknown_only_session_gets_bias_order(train_test):
    train, _ = train_test
    est = BPRMFRecommender(**FAST).fit(train)
    recs = est.predict_next(pd.DataFrame({"SessionId": [1], "ItemId": [-5], "Time": [0]}), k=3)
    expected = est.item_index_.decode(torch.topk(est.item_bias_, 3).indices.numpy())
    assert list(recs.iloc[0]) == list(expected)
