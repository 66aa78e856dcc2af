"""POP and S-POP: definitions on toy data and against a reference on rsc15-100k."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sessionrec import PopularityRecommender, SessionPopularityRecommender
from sessionrec.evaluation import evaluate


def toy():
    train = pd.DataFrame({"SessionId": [1, 1, 1, 2, 2, 3],
                          "ItemId": ["a", "b", "a", "c", "a", "c"],
                          "Time": [0, 1, 2, 3, 4, 5]})
    return train  # support: a=3, c=2, b=1


def test_pop_definition():
    pop = PopularityRecommender(device="cpu").fit(toy())
    assert pop.item_support_.to_dict() == {"a": 3, "b": 1, "c": 2}
    live = pd.DataFrame({"SessionId": [7, 7], "ItemId": ["b", "b"], "Time": [0, 1]})
    assert pop.predict_next(live, k=3).iloc[0].tolist() == ["a", "c", "b"]
    # Conservative rank of "b" (support 1) after the first event: all 3 items >= it.
    assert pop.rank_next_items(live).tolist() == [3.0]


def test_spop_counts_then_popularity():
    spop = SessionPopularityRecommender(device="cpu").fit(toy())
    live = pd.DataFrame({"SessionId": [7, 7, 7, 7], "ItemId": ["b", "c", "b", "a"],
                         "Time": [0, 1, 2, 3]})
    # After b, c, b: counts b=2, c=1, a=0 (a is the most popular but unseen here).
    assert spop.predict_next(live.iloc[:3], k=3).iloc[0].tolist() == ["b", "c", "a"]
    # Targets c (after b: b=1, then a, c by popularity -> rank 3), b (after b,c: b=1, c=1,
    # tie broken by popularity c>b -> rank 2), a (after b,c,b -> rank 3).
    assert spop.rank_next_items(live).tolist() == [3.0, 2.0, 3.0]


def reference_ranks(train: pd.DataFrame, test: pd.DataFrame, session_counts: bool):
    """An independent, loop-based computation of the POP / S-POP conservative ranks."""
    items = np.sort(train["ItemId"].unique())
    code = {item: i for i, item in enumerate(items)}
    pop = np.zeros(len(items))
    for item in train["ItemId"]:
        pop[code[item]] += 1
    ranks = []
    test = test[test["ItemId"].isin(code)].sort_values(["SessionId", "Time"], kind="stable")
    for _, session in test.groupby("SessionId", sort=False):
        counts = np.zeros(len(items))
        seq = [code[i] for i in session["ItemId"]]
        for pos in range(len(seq) - 1):
            counts[seq[pos]] += 1
            t = seq[pos + 1]
            if session_counts:
                # Lexicographic (session count, popularity) >= the target's.
                better = (counts > counts[t]) | ((counts == counts[t]) & (pop >= pop[t]))
            else:
                better = pop >= pop[t]
            ranks.append(better.sum())
    ranks = np.array(ranks, dtype=float)
    return (ranks <= 20).mean(), np.where(ranks <= 20, 1 / ranks, 0).mean()


@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.parametrize("cls,session_counts,expected", [
    (PopularityRecommender, False, (0.089, 0.026)),
    (SessionPopularityRecommender, True, (0.381, 0.265)),
])
def test_rsc15_against_reference(rsc15, cls, session_counts, expected):
    train, test = rsc15
    result = evaluate(cls(device="cpu").fit(train), test, cutoffs=[20])
    recall, mrr = reference_ranks(train, test, session_counts)
    assert result["n_targets"] == 10152
    assert abs(result["recall@20"] - recall) < 0.002
    assert abs(result["mrr@20"] - mrr) < 0.002
    assert abs(result["recall@20"] - expected[0]) < 0.002
    assert abs(result["mrr@20"] - expected[1]) < 0.002
