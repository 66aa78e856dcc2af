"""Tie modes on hand-made score matrices, metrics against hand computation, scorers."""

from __future__ import annotations

import contextlib

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from sessionrec._native import kernels as _kernels
from sessionrec.evaluation import evaluate, ranks_from_scores
from sessionrec.metrics import (
    MRRAtK,
    NDCGAtK,
    NextItemScorer,
    RecallAtK,
    get_scorer,
    hit_rate_at_k,
    item_coverage,
    mrr_at_k,
    ndcg_at_k,
    popularity_bias,
    recall_at_k,
)

SCORES = np.array([
    [0.9, 0.5, 0.5, 0.5, 0.1],   # target 1 ties with 2 and 3, one item above
    [0.2, 0.2, 0.2, 0.2, 0.2],   # all tied
    [0.3, 0.1, 0.7, 0.0, 0.2],   # target 2 is the unique best
    [0.3, 0.1, 0.7, 0.0, 0.2],   # target 3 is the unique worst
], dtype=np.float32)
TARGETS = np.array([1, 4, 2, 3])


@pytest.mark.parametrize("ties,expected", [
    ("conservative", [4.0, 5.0, 1.0, 5.0]),
    ("optimistic", [2.0, 1.0, 1.0, 5.0]),
    ("median", [3.0, 3.0, 1.0, 5.0]),
])
@pytest.mark.parametrize("fused", [True, False])
def test_tie_modes_by_definition(ties, expected, fused):
    with contextlib.nullcontext() if fused else _kernels.disabled():
        assert ranks_from_scores(SCORES, TARGETS, ties).tolist() == expected


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("fused", [True, False])
def test_nan_scores_rank_last(dtype, fused):
    scores = np.array([[np.nan, 0.5, 0.1], [0.2, np.nan, 0.9]], dtype=dtype)
    with contextlib.nullcontext() if fused else _kernels.disabled():
        assert ranks_from_scores(scores, [0, 1]).tolist() == [3.0, 3.0]
        assert ranks_from_scores(scores, [1, 2]).tolist() == [1.0, 1.0]


@pytest.mark.parametrize("ties", ["conservative", "optimistic", "median"])
def test_counting_kernel_gives_the_ranks_of_the_comparisons(ties):
    """The C kernel that counts in one pass (float32 on the CPU) against PyTorch's
    comparisons: wide rows with a partial group of eight, ties, NaNs, strided rows."""
    if not _kernels.available():
        pytest.skip("the fused kernels are not built or disabled")
    generator = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 6, (50, 45), generator=generator).float()[:, 3:40] / 4
    scores[torch.rand(scores.shape, generator=generator) < 0.05] = float("nan")
    targets = torch.randint(0, 37, (50,), generator=generator)
    got = ranks_from_scores(scores, targets, ties)
    with _kernels.disabled():
        expected = ranks_from_scores(scores, targets, ties)
    assert torch.equal(got, expected)
    with pytest.raises(IndexError, match=r"outside \[0, 37\)"):
        ranks_from_scores(scores, torch.full((50,), 37), ties)


@given(arrays(np.float32, (6, 9), elements=st.sampled_from([0.0, 0.25, 0.5, 1.0])),
       st.lists(st.integers(0, 8), min_size=6, max_size=6))
def test_tie_modes_against_a_loop(scores, targets):
    cons = ranks_from_scores(scores, targets, "conservative").numpy()
    opt = ranks_from_scores(scores, targets, "optimistic").numpy()
    med = ranks_from_scores(scores, targets, "median").numpy()
    for r, t in enumerate(targets):
        s = scores[r, t]
        assert cons[r] == sum(v >= s for v in scores[r])
        assert opt[r] == 1 + sum(v > s for v in scores[r])
        assert med[r] == (cons[r] + opt[r]) / 2
    assert (opt <= med).all() and (med <= cons).all()


def test_ranks_on_the_device_of_the_scores():
    out = ranks_from_scores(torch.tensor(SCORES), torch.tensor(TARGETS))
    assert out.dtype == torch.float64 and out.device.type == "cpu"


def test_metrics_by_hand():
    ranks = [1, 2, 4, 21, 3.5]
    assert recall_at_k(ranks, 3) == pytest.approx(2 / 5)
    assert hit_rate_at_k(ranks, 20) == pytest.approx(4 / 5)
    assert mrr_at_k(ranks, 20) == pytest.approx((1 + 1 / 2 + 1 / 4 + 1 / 3.5) / 5)
    assert mrr_at_k(ranks, 1) == pytest.approx(1 / 5)
    expected = (1 + 1 / np.log2(3) + 1 / np.log2(5) + 1 / np.log2(4.5)) / 5
    assert ndcg_at_k(ranks, 20) == pytest.approx(expected)
    assert np.isnan(recall_at_k([], 20))


def test_metric_input_errors():
    with pytest.raises(ValueError, match="NaN"):
        recall_at_k([1, np.nan], 5)
    with pytest.raises(ValueError, match="1-based"):
        mrr_at_k([0, 1], 5)
    with pytest.raises(ValueError, match="k must be"):
        ndcg_at_k([1], 0)


def test_list_metrics():
    recs = pd.DataFrame([["a", "b"], ["a", "c"]])
    assert item_coverage(recs, 4) == 0.75  # a, b, c of 4 items
    assert item_coverage(recs, ["a", "b", "c", "d", "e", "f"]) == 0.5
    support = pd.Series({"a": 8, "b": 4, "c": 2, "d": 1})
    assert popularity_bias(recs, support) == pytest.approx((1 + 0.5 + 1 + 0.25) / 4)


def test_scorer_lookup_and_repr():
    assert repr(get_scorer("mrr@20")) == "MRRAtK(20)"
    assert repr(get_scorer("NDCG@5", ties="median")) == "NDCGAtK(5, ties='median')"
    assert isinstance(get_scorer("hitrate@10"), RecallAtK)
    with pytest.raises(ValueError, match="unknown metric"):
        get_scorer("precision@5")
    with pytest.raises(ValueError, match="ties"):
        MRRAtK(20, ties="worst")
    with pytest.raises(ValueError, match="k must be"):
        RecallAtK(0)


def test_scorers_match_evaluate(train_test):
    from sessionrec import SessionPopularityRecommender

    train, test = train_test
    est = SessionPopularityRecommender(device="cpu").fit(train)
    result = evaluate(est, test, cutoffs=(5, 20), metrics=("recall", "mrr", "ndcg"))
    assert RecallAtK(5)(est, test) == result["recall@5"]
    assert MRRAtK(20)(est, test) == result["mrr@20"] == est.score(test)
    assert NDCGAtK(20)(est, test) == result["ndcg@20"]
    multi = NextItemScorer(["recall@5", "mrr@20"])(est, test)
    assert multi == {"recall@5": result["recall@5"], "mrr@20": result["mrr@20"]}
    assert result["n_targets"] == len(test) - test["SessionId"].nunique()
    assert result["n_dropped"] == 0


def test_evaluate_counts_dropped_targets(train_test):
    from sessionrec import PopularityRecommender

    train, test = train_test
    est = PopularityRecommender(device="cpu").fit(train)
    unseen = test.copy()
    unseen.loc[unseen.index[1::2], "ItemId"] = -999  # unseen in training
    result = evaluate(est, unseen, cutoffs=[20])
    ranks = est.rank_next_items(unseen)
    assert result["n_dropped"] == int(ranks.isna().sum()) > 0
    assert result["n_targets"] + result["n_dropped"] == len(ranks)
    with pytest.raises(ValueError, match="ties"):
        evaluate(est, test, ties="random")
    with pytest.raises(ValueError, match="unknown metric"):
        evaluate(est, test, metrics=["precision"])
