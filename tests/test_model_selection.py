"""Splitters never cut a session and partition the rows; they work as cv= in GridSearchCV."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sklearn.model_selection import GridSearchCV, cross_validate

from sessionrec import SessionPopularityRecommender
from sessionrec.metrics import MRRAtK, RecallAtK
from sessionrec.model_selection import SessionKFold, TimeSplit

DAY = 86400.0


def frame_from(specs):
    """specs: list of (n_events, start_day) per session."""
    rows = []
    for s, (n, day) in enumerate(specs):
        rows += [(s, (s + j) % 5, day * DAY + 60.0 * j) for j in range(n)]
    return pd.DataFrame(rows, columns=["SessionId", "ItemId", "Time"])


sessions_strategy = st.lists(st.tuples(st.integers(1, 4), st.integers(0, 9)), min_size=3,
                             max_size=30)


@given(sessions_strategy, st.integers(2, 3), st.booleans())
def test_session_kfold_partitions_whole_sessions(specs, n_splits, shuffle):
    X = frame_from(specs)
    if X["SessionId"].nunique() < n_splits:
        return
    seen = np.zeros(len(X), dtype=int)
    for train, test in SessionKFold(n_splits, shuffle=shuffle, random_state=0).split(X):
        assert not set(train) & set(test)
        assert len(train) + len(test) == len(X)
        assert not set(X["SessionId"].iloc[train]) & set(X["SessionId"].iloc[test])
        seen[test] += 1
    assert (seen == 1).all()


@given(sessions_strategy, st.integers(1, 3))
def test_time_split_is_chronological_and_whole(specs, n_splits):
    X = frame_from(specs)
    try:
        folds = list(TimeSplit(1, n_splits=n_splits).split(X))
    except ValueError as err:
        assert "empty" in str(err)
        return
    assert len(folds) == n_splits
    end = X.groupby("SessionId")["Time"].transform("max").to_numpy()
    for train, test in folds:
        assert not set(train) & set(test)
        assert not set(X["SessionId"].iloc[train]) & set(X["SessionId"].iloc[test])
        assert end[train].max() < end[test].min()
    last_test = folds[-1][1]
    assert end[last_test].max() == end.max()


def test_time_split_with_datetimes_and_units():
    X = frame_from([(2, 0), (2, 1), (2, 2)])
    as_dates = X.assign(Time=pd.to_datetime(X["Time"], unit="s", utc=True))
    in_ms = X.assign(Time=X["Time"] * 1000)
    expected = [(tr.tolist(), te.tolist()) for tr, te in TimeSplit(1).split(X)]
    assert [(tr.tolist(), te.tolist()) for tr, te in TimeSplit(1).split(as_dates)] == expected
    got = [(tr.tolist(), te.tolist()) for tr, te in TimeSplit(1, time_unit="ms").split(in_ms)]
    assert got == expected


def test_splitter_errors():
    X = frame_from([(2, 0), (2, 1)])
    with pytest.raises(ValueError, match="n_splits"):
        list(SessionKFold(1).split(X))
    with pytest.raises(ValueError, match="more than the 2 sessions"):
        list(SessionKFold(3).split(X))
    with pytest.raises(ValueError, match="test_days"):
        list(TimeSplit(0).split(X))
    with pytest.raises(ValueError, match="empty train"):
        list(TimeSplit(5).split(X))
    with pytest.raises(ValueError, match="'Session'"):
        list(TimeSplit(1, session_key="Session").split(X))
    with pytest.raises(ValueError, match="time_unit"):
        list(TimeSplit(1, time_unit="h").split(X))


def test_cross_validate_with_time_split(events):
    scores = cross_validate(SessionPopularityRecommender(device="cpu"), events,
                            cv=TimeSplit(test_days=5, n_splits=2), scoring=MRRAtK(20))
    assert len(scores["test_score"]) == 2
    assert np.isfinite(scores["test_score"]).all()


@pytest.mark.realdata
def test_grid_search_on_rsc15(rsc15):
    train, test = rsc15
    search = GridSearchCV(
        SessionPopularityRecommender(device="cpu"), {"device": ["cpu"], "verbose": [0, 1]},
        scoring={"recall@20": RecallAtK(20), "mrr@20": MRRAtK(20)}, refit="mrr@20",
        cv=TimeSplit(test_days=1, n_splits=2))
    search.fit(train)
    assert 0.2 < search.best_score_ < 0.5
    recs = search.best_estimator_.predict(test)
    assert recs.shape == (test["SessionId"].nunique(), 20)


def with_users(specs, n_users=3):
    X = frame_from(specs)
    return X.assign(UserId=X["SessionId"] % n_users)


@given(sessions_strategy, st.integers(1, 3))
def test_last_session_split_holds_out_each_users_later_sessions(specs, n_splits):
    from sessionrec.model_selection import LastSessionSplit

    X = with_users(specs)
    start = X.groupby("SessionId")["Time"].transform("min").to_numpy()
    try:
        folds = list(LastSessionSplit(n_splits).split(X))
    except ValueError as err:
        assert "no user has" in str(err)
        return
    assert len(folds) == n_splits
    for train, test in folds:
        assert not set(train) & set(test)
        assert not set(X["SessionId"].iloc[train]) & set(X["SessionId"].iloc[test])
        test_frame = X.iloc[test]
        # One session per user, and every training session of that user starts earlier.
        assert (test_frame.groupby("UserId")["SessionId"].nunique() == 1).all()
        for user, session_start in zip(test_frame["UserId"], start[test]):
            own = X.iloc[train]["UserId"].to_numpy() == user
            assert (start[train][own] <= session_start).all()
    # The last fold tests on every user's last session and trains on all the rest.
    train, test = folds[-1]
    assert len(train) + len(test) == len(X)
    # Sessions starting at the same time are ordered by first appearance (here: by id).
    key = start * 1000 + X["SessionId"].to_numpy()
    last = X.assign(key=key).groupby("UserId")["key"].transform("max") == key
    assert sorted(test) == sorted(np.flatnonzero(last.to_numpy()))


@given(sessions_strategy, st.integers(1, 2))
def test_splitters_on_raw_events_never_cut_a_derived_session(specs, n_splits):
    from sessionrec.model_selection import LastSessionSplit
    from sessionrec.preprocessing import SessionSplitter

    raw = with_users(specs).drop(columns="SessionId")
    sessions = SessionSplitter(idle_gap=3600).fit_transform(raw)["SessionId"].to_numpy()
    for splitter in (TimeSplit(1, n_splits=n_splits, session_key=None, idle_gap=3600),
                     LastSessionSplit(n_splits, session_key=None, idle_gap=3600)):
        try:
            folds = list(splitter.split(raw))
        except ValueError:
            continue
        for train, test in folds:
            assert not set(sessions[train]) & set(sessions[test])
            assert not set(train) & set(test)


def test_train_test_split_helper():
    from sessionrec.model_selection import LastSessionSplit, train_test_split

    X = with_users([(2, d) for d in range(10)])
    train, test = train_test_split(X, test_size=0.3, random_state=0)
    assert test["SessionId"].nunique() == 3 and train["SessionId"].nunique() == 7
    assert not set(train["SessionId"]) & set(test["SessionId"])
    assert len(train) + len(test) == len(X)
    again = train_test_split(X, test_size=0.3, random_state=0)
    pd.testing.assert_frame_equal(again[1], test)
    train, test = train_test_split(X, splitter=TimeSplit(2))
    assert sorted(test["SessionId"].unique()) == [8, 9]
    train, test = train_test_split(X, splitter=LastSessionSplit())
    assert sorted(test["SessionId"].unique()) == [7, 8, 9]
    with pytest.raises(ValueError, match="test_size"):
        train_test_split(X, test_size=1.5)
    with pytest.raises(ValueError, match="either"):
        train_test_split(X, test_size=0.2, splitter=TimeSplit(1))
