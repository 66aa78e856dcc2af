"""The events contract: validation, sorting, item index, unknown items."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sessionrec._events import ItemIndex, ragged_arange, to_session_events


def frame(sessions, items, times, **extra):
    return pd.DataFrame({"SessionId": sessions, "ItemId": items, "Time": times, **extra})


def test_sessions_ordered_by_start_then_time():
    X = frame([5, 5, 3, 3, 9], ["x", "y", "z", "x", "q"], [10.0, 2.0, 1.0, 7.0, 1.0])
    events, index = to_session_events(X)
    # Sessions 3 and 9 both start at 1.0: first appearance in X (3) wins.
    assert events.session_labels.tolist() == [3, 9, 5]
    assert index.labels.tolist() == ["q", "x", "y", "z"]  # sorted labels
    assert index.decode(events.items).tolist() == ["z", "x", "q", "y", "x"]
    assert events.offsets.tolist() == [0, 2, 3, 5]
    assert events.rows.tolist() == [2, 3, 4, 1, 0]
    assert events.first_rows.tolist() == [2, 4, 1]
    assert events.end_times.tolist() == [7.0, 1.0, 10.0]
    assert events.seconds.tolist() == [1.0, 7.0, 1.0, 2.0, 10.0]


def test_equal_times_keep_row_order():
    X = frame([1, 1, 1], [3, 1, 2], [5, 5, 5])
    events, index = to_session_events(X)
    assert index.decode(events.items).tolist() == [3, 1, 2]


def test_datetimes_with_time_zones():
    times = pd.to_datetime(["2024-01-01 10:00", "2024-01-01 09:00"]).tz_localize("Europe/Paris")
    X = frame([1, 1], ["a", "b"], times)
    events, index = to_session_events(X)
    assert index.decode(events.items).tolist() == ["b", "a"]
    assert np.diff(events.seconds).tolist() == [3600.0]  # datetimes in seconds


def test_caller_frame_untouched():
    X = frame([2, 1, 1], ["a", "b", "a"], [9.0, 2.0, 1.0])
    before = X.copy(deep=True)
    to_session_events(X)
    pd.testing.assert_frame_equal(X, before)


@pytest.mark.parametrize("column,role", [("SessionId", "session"), ("ItemId", "item"),
                                         ("Time", "time")])
def test_missing_column_message(column, role):
    X = frame([1], [1], [1.0]).drop(columns=column)
    with pytest.raises(ValueError, match=f"{column!r} \\(the {role} column\\) is missing"):
        to_session_events(X)


def test_nan_none_and_nat():
    with pytest.raises(ValueError, match="'ItemId'.*1 missing"):
        to_session_events(frame([1, 1], ["a", None], [1.0, 2.0]))
    with pytest.raises(ValueError, match="'Time'.*missing"):
        to_session_events(frame([1, 1], ["a", "b"], pd.to_datetime(["2024-01-01", None])))
    with pytest.raises(ValueError, match="'SessionId'.*missing"):
        to_session_events(frame([1.0, np.nan], ["a", "b"], [1.0, 2.0]))


@pytest.mark.parametrize("times", [["a", "b"], [True, False], [object(), object()]])
def test_times_that_cannot_be_ordered(times):
    with pytest.raises(TypeError, match="'Time' \\(the time column\\)"):
        to_session_events(frame([1, 1], ["a", "b"], times))


def test_infinite_times():
    with pytest.raises(ValueError, match="'Time'.*infinite"):
        to_session_events(frame([1, 1], ["a", "b"], [1.0, np.inf]))


def test_empty_and_not_a_frame():
    with pytest.raises(ValueError, match="empty"):
        to_session_events(frame([], [], []))
    with pytest.raises(TypeError, match="DataFrame"):
        to_session_events({"SessionId": [1]})


def test_duplicate_column():
    X = pd.DataFrame([[1, 2, 3.0, 4]], columns=["SessionId", "ItemId", "Time", "ItemId"])
    with pytest.raises(ValueError, match="more than once"):
        to_session_events(X)


def test_users_must_be_consistent_per_session():
    X = frame([1, 1, 2], ["a", "b", "c"], [1, 2, 3], UserId=["u", "v", "u"])
    with pytest.raises(ValueError, match="session 1 has events of more than one user"):
        to_session_events(X, user_key="UserId")
    good = frame([1, 1, 2], ["a", "b", "c"], [1, 2, 3], UserId=["u", "u", "v"])
    events, _ = to_session_events(good, user_key="UserId")
    assert events.user_labels[events.users].tolist() == ["u", "v"]


def test_unknown_items_are_dropped_and_counted():
    train, _ = to_session_events(frame([1, 1], ["a", "b"], [1, 2]))
    index = ItemIndex.from_labels(["a", "b"])[0]
    X = frame([7, 7, 7, 8], ["a", "zz", "b", "yy"], [1, 2, 3, 1])
    events, _ = to_session_events(X, item_index=index)
    assert events.n_unknown == 2
    assert events.lengths.tolist() == [2, 0]  # session 8 is kept, empty
    assert events.rows.tolist() == [0, 2]
    assert events.first_rows.tolist() == [0, 3]


def test_item_index_mixed_labels_and_equality():
    index, codes = ItemIndex.from_labels(pd.Series([1, "a", 1, 2.5], dtype=object))
    assert index.n_items == 3 and len(codes) == 4
    assert index.decode(codes).tolist() == [1, "a", 1, 2.5]
    assert index == ItemIndex(index.labels, index.support)
    with pytest.raises(ValueError, match="unique"):
        ItemIndex(pd.Index(["a", "a"]), np.array([1, 1]))


@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 8), st.integers(0, 20)),
                min_size=1, max_size=60))
def test_sorted_arrays_invariants(rows):
    X = pd.DataFrame(rows, columns=["SessionId", "ItemId", "Time"])
    events, index = to_session_events(X)
    # Rows are a permutation; each session is contiguous with non-decreasing times.
    assert sorted(events.rows.tolist()) == list(range(len(X)))
    times = X["Time"].to_numpy()[events.rows]
    sessions = X["SessionId"].to_numpy()[events.rows]
    for s in range(events.n_sessions):
        a, b = events.offsets[s], events.offsets[s + 1]
        assert (sessions[a:b] == events.session_labels[s]).all()
        assert (np.diff(times[a:b]) >= 0).all()
    starts = times[events.offsets[:-1]]
    assert (np.diff(starts) >= 0).all()
    assert (index.decode(events.items) == X["ItemId"].to_numpy()[events.rows]).all()
    assert index.support.sum() == len(X)


@given(st.lists(st.tuples(st.integers(0, 50), st.integers(0, 5)), max_size=20))
def test_ragged_arange(pairs):
    starts = np.array([p[0] for p in pairs], dtype=np.int64)
    lengths = np.array([p[1] for p in pairs], dtype=np.int64)
    expected = [v for s, n in pairs for v in range(s, s + n)]
    assert ragged_arange(starts, lengths).tolist() == expected


@pytest.mark.parametrize("values,kind", [
    (pd.Series([3, 1, 2]), "number"),
    (pd.Series([3, 1.5], dtype=object), "number"),  # ints and floats: one kind, as in pandas
    (pd.Series(["a", "b"]), "str"),
    (pd.Series(["a", "b"], dtype=object), "str"),
    (pd.Series(pd.Categorical(["x", "y", "x"])), "str"),
    (pd.Series([(1, 2), (3, 4)]), "tuple"),
    (pd.Series(pd.to_datetime([0, 1], unit="s")), "datetime"),
    (pd.Series([True, False]), "bool"),
    (pd.Index([np.int64(4), 5], dtype=object), "number"),
])
def test_label_kind(values, kind):
    from sessionrec._events import label_kind

    assert label_kind(values) == kind


@pytest.mark.parametrize("values", [["214716935", 214716935], ["a", 2.5], [True, "1"],
                                    [(1, 2), "a"], [b"a", "a"]])
def test_mixed_label_kinds_are_refused(values):
    from sessionrec._events import label_kind

    with pytest.raises(TypeError, match="mix kinds"):
        label_kind(pd.Series(values, dtype=object))
    X = pd.DataFrame({"SessionId": [1, 1], "ItemId": pd.Series(values, dtype=object),
                      "Time": [0, 1]})
    with pytest.raises(TypeError, match="'ItemId' \\(the item column\\) mix kinds"):
        to_session_events(X)


def test_label_kinds_of_typed_and_object_columns_agree():
    """A typed column and an object column of the same labels are one kind (the model
    indexes a Period or Interval column as a typed index); categoricals count the
    categories in use; naive and tz-aware datetimes are two kinds; empty has none."""
    from sessionrec._events import label_kind

    periods = pd.period_range("2020-01", periods=3, freq="D")
    assert label_kind(pd.Series(periods)) == label_kind(pd.Series(periods, dtype=object))
    assert label_kind(pd.Index(periods)) == "period"
    intervals = pd.interval_range(0, 3)
    assert label_kind(pd.Series(intervals)) == label_kind(pd.Series(intervals, dtype=object))
    unused = pd.Categorical(["a", "b"], categories=["a", "b", 5])
    assert label_kind(pd.Series(unused)) == "str"
    naive = pd.Series(pd.date_range("2020", periods=2))
    aware = pd.Series(pd.date_range("2020", periods=2, tz="UTC"))
    assert label_kind(naive) == "datetime"
    assert label_kind(aware) == label_kind(aware.astype(object)) == "tz-aware datetime"
    with pytest.raises(ValueError, match="empty"):
        label_kind(pd.Series([], dtype=object))


def test_period_labels_fit_and_predict():
    from sessionrec import PopularityRecommender

    X = pd.DataFrame({"SessionId": [1, 1, 2, 2], "Time": [0, 1, 2, 3],
                      "ItemId": pd.Series(pd.period_range("2020-01", periods=4, freq="D"),
                                          dtype=object)})
    model = PopularityRecommender(device="cpu").fit(X)
    assert model.predict_next(X, k=2).shape == (2, 2)
    aware = X.assign(ItemId=pd.date_range("2020", periods=4, tz="UTC"))
    naive_model = PopularityRecommender(device="cpu").fit(
        X.assign(ItemId=pd.date_range("2020", periods=4)))
    with pytest.raises(TypeError, match="tz-aware datetime labels.*fitted on datetime"):
        naive_model.predict_next(aware)
