"""Preprocessing transformers: definitions, invariants (hypothesis), pipelines."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.base import clone
from sklearn.pipeline import make_pipeline

from sessionrec.preprocessing import (
    ConsecutiveDuplicateFilter,
    DenseItemFeatures,
    ItemFeatures,
    ItemSupportFilter,
    RepeatUntilStable,
    SessionLengthFilter,
    SessionSplitter,
    TfidfItemFeatures,
    UserSessionFilter,
)


@st.composite
def event_frames(draw, min_size=0):
    """Small event frames with users, sessions, repeats and shuffled rows."""
    n = draw(st.integers(min_size, 40))
    users = draw(st.lists(st.integers(0, 4), min_size=n, max_size=n))
    sessions = draw(st.lists(st.integers(0, 8), min_size=n, max_size=n))
    items = draw(st.lists(st.sampled_from("abcdef"), min_size=n, max_size=n))
    times = draw(st.lists(st.integers(0, 20_000), min_size=n, max_size=n))
    frame = pd.DataFrame({"UserId": users, "SessionId": sessions, "ItemId": items,
                          "Time": times})
    # One user per session, as the events contract requires.
    frame["UserId"] = frame["SessionId"] % 5
    return frame.set_index(pd.Index(np.arange(n) * 3 + 7, name="row"))


ROW_FILTERS = [
    lambda: ConsecutiveDuplicateFilter(),
    lambda: ConsecutiveDuplicateFilter(consecutive_only=False),
    lambda: SessionLengthFilter(2, 5),
    lambda: ItemSupportFilter(2),
    lambda: UserSessionFilter(2),
]


@settings(max_examples=40, deadline=None)
@given(frame=event_frames())
def test_filters_return_a_subset_in_order_and_leave_input_alone(frame):
    for make in ROW_FILTERS:
        original = frame.copy(deep=True)
        out = make().fit_transform(frame)
        pd.testing.assert_frame_equal(frame, original)
        assert list(out.columns) == list(frame.columns)
        # A subset of the rows, in the input's order, with their index labels and values.
        assert out.index.isin(frame.index).all()
        assert (np.diff(frame.index.get_indexer(out.index)) > 0).all()
        pd.testing.assert_frame_equal(out, frame.loc[out.index])


@settings(max_examples=40, deadline=None)
@given(frame=event_frames())
def test_stateless_filters_are_idempotent(frame):
    for make in (lambda: ConsecutiveDuplicateFilter(consecutive_only=False),
                 lambda: SessionLengthFilter(2, 5)):
        once = make().fit_transform(frame)
        pd.testing.assert_frame_equal(make().fit_transform(once), once)


@settings(max_examples=40, deadline=None)
@given(frame=event_frames())
def test_repeat_until_stable_is_a_fixed_point(frame):
    chain = RepeatUntilStable(make_pipeline(ItemSupportFilter(2), SessionLengthFilter(2)))
    out = chain.fit_transform(frame)
    # A fresh pass of the same filters on the result drops nothing.
    again = make_pipeline(ItemSupportFilter(2), SessionLengthFilter(2)).fit_transform(out)
    assert len(again) == len(out)
    if len(out):
        assert out["ItemId"].value_counts().min() >= 2
        assert out.groupby("SessionId").size().min() >= 2
    pd.testing.assert_frame_equal(chain.transform(frame), out)


def test_consecutive_duplicates_follow_time_not_row_order():
    X = pd.DataFrame({"SessionId": [1, 1, 1, 2, 2], "ItemId": ["a", "b", "a", "a", "a"],
                      "Time": [2, 1, 0, 5, 6]})  # session 1 in time order: a, b, a
    assert ConsecutiveDuplicateFilter().fit_transform(X).index.tolist() == [0, 1, 2, 3]
    assert ConsecutiveDuplicateFilter(consecutive_only=False).fit_transform(X).index.tolist() \
        == [1, 2, 3]


def test_item_support_filter_applies_the_training_vocabulary():
    train = pd.DataFrame({"ItemId": ["a", "a", "b", "c", "c", "c"]})
    f = ItemSupportFilter(2).fit(train)
    assert sorted(f.items_) == ["a", "c"] and f.support_["c"] == 3
    test = pd.DataFrame({"ItemId": ["b", "c", "z", "a"]})
    assert f.transform(test)["ItemId"].tolist() == ["c", "a"]
    with pytest.raises(ValueError, match="min_support"):
        ItemSupportFilter(0).fit(train)
    with pytest.raises(ValueError, match="'ItemId'"):
        ItemSupportFilter(2).fit(pd.DataFrame({"item": [1]}))


def test_user_session_filter_judges_users_on_the_training_frame():
    train = pd.DataFrame({"UserId": [1, 1, 1, 2, 3, 3], "SessionId": [1, 2, 3, 4, 5, 6]})
    f = UserSessionFilter(2, 2).fit(train)
    assert f.users_.tolist() == [3]
    # A test frame of one session per user keeps the users chosen in training.
    test = pd.DataFrame({"UserId": [1, 2, 3], "SessionId": [7, 8, 9]})
    assert f.transform(test)["UserId"].tolist() == [3]
    with pytest.raises(ValueError, match="max_sessions"):
        UserSessionFilter(3, 2).fit(train)


def test_session_length_filter_bounds():
    X = pd.DataFrame({"SessionId": [1, 2, 2, 3, 3, 3]})
    assert SessionLengthFilter(2, 2).fit_transform(X)["SessionId"].tolist() == [2, 2]
    assert SessionLengthFilter(1).fit_transform(X).shape == (6, 1)
    with pytest.raises(ValueError, match="min_length"):
        SessionLengthFilter(0).fit_transform(X)


def test_session_splitter_cuts_at_idle_gaps_per_user():
    X = pd.DataFrame({"UserId": ["u", "v", "u", "u", "u"],
                      "Time": [0, 10, 1800, 3601, 3602]}, index=list("pqrst"))
    out = SessionSplitter(idle_gap=1800).fit_transform(X)
    # u: 0 -> 1800 is exactly the gap (same session); 1800 -> 3601 is longer (new one).
    assert out["SessionId"].tolist() == [0, 2, 0, 1, 1]
    assert list(out.index) == list("pqrst") and "SessionId" not in X
    dates = X.assign(Time=pd.to_datetime(X["Time"], unit="s"))
    same = SessionSplitter(idle_gap=pd.Timedelta(minutes=30)).fit_transform(dates)
    assert same["SessionId"].tolist() == out["SessionId"].tolist()
    with pytest.raises(ValueError, match="idle_gap"):
        SessionSplitter(idle_gap=0).fit_transform(X)
    with pytest.raises(ValueError, match="'UserId'"):
        SessionSplitter().fit_transform(X.drop(columns="UserId"))


@settings(max_examples=40, deadline=None)
@given(frame=event_frames(min_size=1), gap=st.integers(1, 5000))
def test_session_splitter_sessions_are_gap_free_runs(frame, gap):
    out = SessionSplitter(idle_gap=gap).fit_transform(frame.drop(columns="SessionId"))
    for _, session in out.groupby("SessionId"):
        assert session["UserId"].nunique() == 1
        assert (np.diff(np.sort(session["Time"].to_numpy())) <= gap).all()
    # Consecutive events of a user more than the gap apart are in different sessions.
    ordered = out.sort_values(["UserId", "Time"], kind="stable")
    same_user = ordered["UserId"].to_numpy()[1:] == ordered["UserId"].to_numpy()[:-1]
    far = np.diff(ordered["Time"].to_numpy()) > gap
    s = ordered["SessionId"].to_numpy()
    assert (s[1:][same_user & far] != s[:-1][same_user & far]).all()


def test_filters_tune_in_a_pipeline():
    pipe = make_pipeline(SessionLengthFilter(2), ItemSupportFilter(5))
    pipe.set_params(itemsupportfilter__min_support=3)
    assert clone(pipe).get_params()["itemsupportfilter__min_support"] == 3
    stable = RepeatUntilStable(pipe)
    stable.set_params(filters__sessionlengthfilter__min_length=3)
    assert stable.filters.steps[0][1].min_length == 3


def test_tfidf_item_features_join_rows_and_stay_sparse():
    tags = pd.DataFrame({"movie": [1, 2, 1], "tag": ["space opera", "heist", "space"]})
    enc = TfidfItemFeatures("tag", item_key="movie").fit(tags)
    feats = enc.transform(tags)
    assert feats.labels.tolist() == [1, 2] and feats.is_sparse
    vocab = enc.vectorizer_.vocabulary_
    assert {"space", "opera", "space opera", "heist"} <= set(vocab)
    row = feats.matrix[0].toarray().ravel()
    assert row[vocab["space"]] > 0 and row[vocab["heist"]] == 0
    np.testing.assert_allclose(sp.linalg.norm(feats.matrix, axis=1), 1.0, rtol=1e-6)


def test_dense_item_features_normalise_and_validate():
    X = pd.DataFrame({"item": ["a", "b", "c"], "x": [3.0, 0.0, 0.0], "y": [4.0, 0.0, 2.0]})
    feats = DenseItemFeatures(item_key="item").fit_transform(X)
    np.testing.assert_allclose(feats.matrix, [[0.6, 0.8], [0, 0], [0, 1]], rtol=1e-6)
    with pytest.raises(ValueError, match="NaN"):
        DenseItemFeatures(item_key="item").fit_transform(X.assign(x=[np.nan, 0, 0]))
    with pytest.raises(ValueError, match="duplicate"):
        DenseItemFeatures(item_key="item").fit_transform(X.assign(item=["a", "a", "b"]))


def test_item_features_align_sparse_and_dense():
    dense = ItemFeatures(pd.Index([10, 20]), np.array([[1, 2], [3, 4]]))
    matrix, known = dense.align([20, 99, 10])
    assert matrix.tolist() == [[3, 4], [0, 0], [1, 2]] and known.tolist() == [True, False, True]
    sparse = ItemFeatures(pd.Index([10, 20]), sp.csr_matrix(np.array([[1, 0], [0, 4]])))
    matrix, _ = sparse.align([20, 99, 10])
    assert sp.issparse(matrix) and matrix.toarray().tolist() == [[0, 4], [0, 0], [1, 0]]
    with pytest.raises(ValueError, match="unique"):
        ItemFeatures(pd.Index([1, 1]), np.zeros((2, 2)))
