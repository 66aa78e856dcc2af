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


def test_personal_pop_counts_the_users_history():
    from sessionrec import PersonalPopularityRecommender

    train = toy().assign(UserId=["u", "u", "u", "v", "v", "v"])  # u: a=2, b=1; v: c=2, a=1
    ppop = PersonalPopularityRecommender(device="cpu").fit(train)
    assert ppop.user_items_.toarray().tolist() == [[2, 1, 0], [1, 0, 2]]
    live = pd.DataFrame({"UserId": ["v", "v", "v", "w", "w"], "SessionId": [7, 7, 8, 9, 9],
                         "ItemId": ["b", "b", "a", "b", "c"], "Time": [0, 1, 2, 3, 4]})
    recs = ppop.predict_next(live, k=3)
    # v after session 7 (b, b) and session 8 (a): a=1+1, b=2, c=2 -> c ties b at 2 and a
    # at 2; all ties broken by support a=3 > c=2 > b=1.
    assert recs.loc[8].tolist() == ["a", "c", "b"]
    # w is unknown: only the frame counts (b=1, c=1), ties by support: c, b, then a.
    assert recs.loc[9].tolist() == ["c", "b", "a"]
    # Ranks (conservative). Session 7 after its first b: v has c=2, a=1, b=1, and a beats
    # b on support, so the target b is 3rd. Session 9 after b: b=1, then a and c at 0 by
    # support, so the target c is 3rd.
    ranks = ppop.rank_next_items(live)
    assert ranks.tolist() == [3.0, 3.0]


def test_personal_pop_empty_session_of_a_known_user_uses_the_history():
    from sessionrec import PersonalPopularityRecommender

    train = toy().assign(UserId=["u", "u", "u", "v", "v", "v"])
    ppop = PersonalPopularityRecommender(device="cpu").fit(train)
    live = pd.DataFrame({"UserId": ["v", "v", "x"], "SessionId": [5, 6, 7],
                         "ItemId": ["b", "zzz", "zzz"], "Time": [0, 1, 2]})
    recs = ppop.predict_next(live, k=3)
    # Session 6 has no known event: v's training counts (c=2, a=1) plus session 5 (b=1).
    assert recs.loc[6].tolist() == ["c", "a", "b"]
    # An unknown user with no known event: global popularity.
    assert recs.loc[7].tolist() == ["a", "c", "b"]


def personal_reference_ranks(train, test):
    """Loop reference: the user's training counts plus the user's frame events so far."""
    support = train["ItemId"].value_counts()
    items = np.sort(train["ItemId"].unique())
    tie = support.reindex(items).to_numpy() / (support.max() + 1.0)
    position = pd.Series(np.arange(len(items)), index=items)
    counts = {}
    for user, item in zip(train["UserId"], train["ItemId"]):
        counts.setdefault(user, np.zeros(len(items)))[position[item]] += 1
    ranks = {}
    start = test.groupby("SessionId")["Time"].transform("min")
    ordered = test.assign(start=start).sort_values(["start", "SessionId", "Time"], kind="stable")
    frame = {}
    previous_session = None
    for row, (user, session, item) in zip(ordered.index, ordered[["UserId", "SessionId",
                                                                   "ItemId"]].to_numpy()):
        score = counts.get(user, np.zeros(len(items))) + frame.get(user, 0) + tie
        if session == previous_session:
            ranks[row] = float((score >= score[position[item]]).sum())
        frame[user] = frame.get(user, 0) + np.eye(len(items))[position[item]]
        previous_session = session
    return pd.Series(ranks).sort_index()


def test_personal_pop_matches_a_loop():
    from sessionrec import PersonalPopularityRecommender
    from sessionrec.datasets import make_sessions

    events = make_sessions(n_sessions=400, n_items=40, n_users=25, user_strength=0.8,
                           random_state=3)
    train = events[events["SessionId"] < 300]
    test = events[events["SessionId"] >= 300]
    ranks = PersonalPopularityRecommender(device="cpu").fit(train).rank_next_items(test)
    expected = personal_reference_ranks(train, test)
    np.testing.assert_array_equal(ranks.sort_index().to_numpy(), expected.to_numpy())
    assert list(ranks.sort_index().index) == list(expected.index)


def test_personal_pop_with_one_session_per_new_user_is_spop(train_test):
    from sessionrec import PersonalPopularityRecommender

    train, test = train_test
    fresh = test.assign(UserId=-test["SessionId"])  # users unseen in training
    ppop = PersonalPopularityRecommender(device="cpu").fit(train)
    spop = SessionPopularityRecommender(device="cpu").fit(train)
    pd.testing.assert_series_equal(ppop.rank_next_items(fresh), spop.rank_next_items(test))


def test_personal_pop_needs_a_user_column(train_test):
    from sessionrec import PersonalPopularityRecommender

    train = train_test[0]
    with pytest.raises(ValueError, match="'UserId'"):
        PersonalPopularityRecommender(device="cpu").fit(train.drop(columns="UserId"))
    with pytest.raises(ValueError, match="user_key"):
        PersonalPopularityRecommender(user_key=None, device="cpu").fit(train)
