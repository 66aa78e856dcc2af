"""Live sessions (sessionrec.serving): click by click equals predict_next, for every
estimator; batches, bad input, bounded memory, threads."""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest

from sessionrec import (
    GRU4RecRecommender,
    HRNNRecommender,
    SessionPopularityRecommender,
    all_estimators,
)
from sessionrec._native import kernels as _kernels
from sessionrec.serving import LiveSessions, Recommendations

from .estimator_checks import make

ESTIMATORS = all_estimators()
# Scores computed by matrix products whose rounding PyTorch's kernels may make depend on
# the number of rows (see LiveSessions' notes); every other model's scores, and GRU4Rec's
# with the fused kernels, are the same bit for bit whatever the batch.
BATCH_ROUNDED = {"BPRMFRecommender", "GRU4RecRecommender", "HRNNRecommender",
                 "ParallelRNNRecommender"}


@pytest.fixture(scope="module")
def fitted(train_test):
    train, _ = train_test
    return {cls.__name__: make(cls).fit(train) for cls in ESTIMATORS}


def sessions_in_time_order(frame: pd.DataFrame) -> list[tuple[object, pd.DataFrame]]:
    groups = frame.groupby("SessionId", sort=False)
    return sorted(groups, key=lambda g: (g[1]["Time"].min(), g[0]))


def uses_users(model) -> bool:
    return getattr(model, "user_key", None) is not None


@pytest.mark.parametrize("exclude_seen", [False, True])
@pytest.mark.parametrize("cls", ESTIMATORS, ids=lambda c: c.__name__)
def test_click_by_click_equals_predict_next(cls, exclude_seen, fitted, train_test):
    """Every click's list and scores are exactly those of predict_next on the session's
    events so far (models of users: after the user's earlier sessions, each ended once
    its last click is in, so that the next one starts from the user's kept state)."""
    _, test = train_test
    model = fitted[cls.__name__]
    live = LiveSessions(model)
    n_sessions = 40 if uses_users(model) else 12  # enough for users to come back
    fed: list[pd.DataFrame] = []
    checked = returning = 0
    for label, session in sessions_in_time_order(test)[:n_sessions]:
        user = session["UserId"].iloc[0]
        earlier = [s for s in fed if s["UserId"].iloc[0] == user] if uses_users(model) else []
        returning += bool(earlier)
        for j in range(len(session)):
            row = session.iloc[j]
            got = live.click(label, row["ItemId"], k=7, user=user, time=row["Time"],
                             exclude_seen=exclude_seen)
            frame = pd.concat([*earlier, session.iloc[:j + 1]])
            items, scores = model.predict_next(frame, k=7, exclude_seen=exclude_seen,
                                               return_scores=True)
            np.testing.assert_array_equal(got.items, items.loc[label].to_numpy())
            np.testing.assert_array_equal(got.scores, scores.loc[label].to_numpy())
            checked += 1
        assert live.end(label)
        fed.append(session)
    assert checked > 40
    if uses_users(model):
        assert returning >= 5  # users came back, from their kept state
    stats = live.stats
    assert (stats.clicks, stats.started, stats.ended, stats.sessions) == (
        checked, n_sessions, n_sessions, 0)


def assert_same_lists(a: Recommendations, b: Recommendations, exact: bool) -> None:
    if exact:
        np.testing.assert_array_equal(a.items, b.items)
        np.testing.assert_array_equal(a.scores, b.scores)
        return
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5, atol=1e-6)
    # Items may swap only where their scores tie within the rounding.
    apart = np.ones(a.scores.shape, dtype=bool)
    gaps = np.abs(np.diff(a.scores, axis=-1)) < 1e-4
    apart[..., 1:] &= ~gaps
    apart[..., :-1] &= ~gaps
    np.testing.assert_array_equal(a.items[apart], b.items[apart])


@pytest.mark.parametrize("cls", ESTIMATORS, ids=lambda c: c.__name__)
def test_batched_clicks_equal_single_clicks(cls, fitted, train_test):
    """clicks() answers many sessions in one step, several clicks of a session in order;
    its lists are those of the same clicks one at a time."""
    _, test = train_test
    model = fitted[cls.__name__]
    sessions = sessions_in_time_order(test)[:10]
    clicks = pd.concat([s.assign(step=np.arange(len(s))) for _, s in sessions])
    # Rounds of the batch: two sessions' clicks arrive several per batch.
    clicks = clicks.sort_values(["step", "Time"], kind="stable").reset_index(drop=True)
    single = LiveSessions(model)
    expected = [single.click(r.SessionId, r.ItemId, k=5, user=r.UserId, time=r.Time)
                for r in clicks.itertuples()]
    batched = LiveSessions(model)
    got_items, got_scores = [], []
    for chunk in np.array_split(np.arange(len(clicks)), 7):
        part = clicks.iloc[chunk]
        result = batched.clicks(part["SessionId"], part["ItemId"], k=5,
                                users=part["UserId"], times=part["Time"])
        assert result.items.shape == (len(part), 5)
        got_items.append(result.items)
        got_scores.append(result.scores)
    exact = cls.__name__ not in BATCH_ROUNDED or (
        cls.__name__ == "GRU4RecRecommender" and _kernels.fused_for("cpu"))
    assert_same_lists(Recommendations(np.concatenate(got_items), np.concatenate(got_scores)),
                      Recommendations(np.stack([e.items for e in expected]),
                                      np.stack([e.scores for e in expected])), exact)
    assert batched.stats.clicks == single.stats.clicks == len(clicks)


def test_gru4rec_batches_are_exact_with_the_fused_kernels(fitted, train_test):
    """With the fused kernels a GRU4Rec click's scores do not depend on its batch."""
    if not _kernels.fused_for("cpu"):
        pytest.skip("needs the fused kernels")
    test_batched_clicks_equal_single_clicks(GRU4RecRecommender, fitted, train_test)


@pytest.mark.parametrize("cls", ESTIMATORS, ids=lambda c: c.__name__)
def test_unknown_items_are_dropped_as_predict_next_drops_them(cls, fitted, train_test):
    _, test = train_test
    model = fitted[cls.__name__]
    live = LiveSessions(model)
    label, session = sessions_in_time_order(test)[0]
    user = session["UserId"].iloc[0]
    ghost = session.iloc[:1].assign(ItemId=10**9)  # never seen in training
    # First click unknown: the no-history list.
    got = live.click(label, 10**9, k=5, user=user, time=ghost["Time"].iloc[0])
    expected = model.predict_next(ghost, k=5)
    np.testing.assert_array_equal(got.items, expected.loc[label].to_numpy())
    first = session.iloc[:1]
    live.click(label, first["ItemId"].iloc[0], k=5, user=user, time=first["Time"].iloc[0])
    got = live.click(label, 10**9, k=5, user=user, time=first["Time"].iloc[0])
    frame = pd.concat([ghost, first, ghost])
    np.testing.assert_array_equal(got.items, model.predict_next(frame, k=5).loc[label])
    assert live.stats.unknown_items == 2 and live.stats.clicks == 3


@pytest.mark.parametrize("cls", ESTIMATORS, ids=lambda c: c.__name__)
def test_bad_clicks_are_refused_before_anything_changes(cls, fitted):
    model = fitted[cls.__name__]
    live = LiveSessions(model, max_sessions=2)
    live.click("a", 1, user=1, time=100.0)
    before = live.stats
    bad = [
        (dict(sessions=["b", "c"], items=[1, None]), ValueError, "item is missing"),
        (dict(sessions=["b", "c"], items=[1, "x"]), TypeError, "item 'x' is a str label"),
        (dict(sessions=["b", None], items=[1, 2]), ValueError, "session is missing"),
        (dict(sessions=["b", "a"], items=[1, 2], times=[100.0, 50.0]), ValueError,
         "earlier than its previous click"),
        (dict(sessions=["b", "b"], items=[1, 2], times=[100.0, 99.0]), ValueError,
         "earlier than its previous click"),
        (dict(sessions=["b"], items=[1, 2]), ValueError, "differ in length"),
        (dict(sessions=["b"], items=[1], times=["noon"]), TypeError, "time must be"),
        (dict(sessions=["b"], items=[1], times=[1.0, 2.0]), ValueError, "times has 2"),
        (dict(sessions=[["b"]], items=[1]), TypeError, "hashable"),
        (dict(sessions=["b"], items=[1], k=0), ValueError, "k"),
        (dict(sessions=["b"], items=[1], exclude_seen="yes"), (TypeError, ValueError),
         "exclude_seen"),
    ]
    if uses_users(model):
        bad += [
            (dict(sessions=["b"], items=[1], users=None), ValueError, "user is missing"),
            (dict(sessions=["b"], items=[1], users=["u"]), TypeError, "user 'u' is a str"),
            (dict(sessions=["a"], items=[1], users=[2]), ValueError, "belongs to user 1"),
        ]
    for kwargs, error, match in bad:
        kwargs.setdefault("users", [1] * len(kwargs["sessions"]) if uses_users(model)
                          else None)
        with pytest.raises(error, match=match):
            live.clicks(**kwargs)
    assert live.stats == before
    assert "b" not in live and len(live) == 1


@pytest.mark.parametrize("bad, match", [
    (dict(max_sessions=0), "max_sessions"), (dict(idle_timeout=0), "idle_timeout"),
    (dict(idle_timeout=float("nan")), "idle_timeout"), (dict(max_users=0), "max_users"),
    (dict(clock=3), "clock"),
])
def test_bad_parameters_are_named(bad, match, fitted):
    with pytest.raises((ValueError, TypeError), match=match):
        LiveSessions(fitted["PopularityRecommender"], **bad)


def test_unfitted_model_is_refused():
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        LiveSessions(SessionPopularityRecommender())


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


@pytest.mark.parametrize("name", ["GRU4RecRecommender", "SessionPopularityRecommender",
                                  "HRNNRecommender"])
def test_memory_is_bounded_by_eviction_and_idle_timeout(name, fitted):
    clock = FakeClock()
    live = LiveSessions(fitted[name], max_sessions=3, idle_timeout=60, clock=clock)
    for s in range(5):  # the fourth and fifth evict the least recently clicked
        live.click(s, 1, user=s)
        clock.now += 1
    assert list(live._sessions) == [2, 3, 4] and live.stats.evicted == 2
    live.click(2, 3, user=2)  # 2 is now the most recent
    live.click(5, 3, user=5)
    assert 3 not in live and 2 in live
    clock.now += 61
    live.click(9, 1, user=9)  # every other session idled out
    assert list(live._sessions) == [9]
    stats = live.stats
    assert (stats.expired, stats.evicted, stats.started, stats.sessions) == (3, 3, 7, 1)
    assert live.end(9) and not live.end(9) and live.stats.ended == 1
    if uses_users(live.model):
        assert live.stats.users <= 3
    # A forgotten session that comes back starts again, from its user's kept state.
    again = live.click(4, 1, user=4)
    assert len(again.items) == 20


def test_max_users_bounds_the_users_kept(fitted):
    live = LiveSessions(fitted["HRNNRecommender"], max_users=2)
    for u in range(4):
        live.click(f"s{u}", 1, user=u)
        live.end(f"s{u}")
    assert live.stats.users == 2
    assert list(live._users) == [2, 3]


def test_a_click_feeds_one_item_whatever_the_session_length(fitted, monkeypatch):
    """The live step's work does not grow with the session: each click feeds exactly one
    item per clicked session to the network (predict_next re-walks the whole session)."""
    model = fitted["GRU4RecRecommender"]
    fed = []
    original = type(model.network_).step

    def step(self, items, *args, **kwargs):
        fed.append(len(items))
        return original(self, items, *args, **kwargs)

    monkeypatch.setattr(type(model.network_), "step", step)
    live = LiveSessions(model)
    for t in range(50):
        live.click("long", t % 40, time=float(t))
    live.clicks(["a", "b", "long"], [1, 2, 3], times=[60.0, 60.0, 60.0])
    assert fed == [1] * 50 + [3]


@pytest.mark.parametrize("name", ["GRU4RecRecommender", "VSKNNRecommender",
                                  "HRNNRecommender"])
def test_threads_clicking_different_sessions_get_the_serial_answers(name, fitted,
                                                                    train_test):
    _, test = train_test
    model = fitted[name]
    sessions = sessions_in_time_order(test)[:16]

    def feed(live, part):
        out = {}
        for label, session in part:
            for r in session.itertuples():
                out[(label, r.Index)] = live.click(label, r.ItemId, k=5, user=r.UserId,
                                                   time=r.Time)
        return out

    serial = feed(LiveSessions(model), sessions)
    live = LiveSessions(model)
    results: list[dict] = [{} for _ in range(4)]
    errors = []

    def run(i):
        try:
            results[i] = feed(live, sessions[i::4])
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    merged = {key: value for part in results for key, value in part.items()}
    assert merged.keys() == serial.keys()
    for key, value in serial.items():
        # Users come back in another order than serially: HRNN's lists then follow
        # another history; the session models' do not depend on other sessions.
        if not uses_users(model):
            np.testing.assert_array_equal(merged[key].items, value.items)
            np.testing.assert_array_equal(merged[key].scores, value.scores)
    assert live.stats.clicks == sum(len(s) for _, s in sessions)


def test_hrnn_needs_users_and_unknown_users_start_from_zero(fitted, train_test):
    """An unknown user starts as predict_next starts one: from a zero user state."""
    _, test = train_test
    model = fitted["HRNNRecommender"]
    live = LiveSessions(model)
    label, session = sessions_in_time_order(test)[0]
    stranger = session.assign(UserId=10**6)
    for j, r in enumerate(stranger.itertuples()):
        got = live.click(label, r.ItemId, k=5, user=r.UserId, time=r.Time)
        expected = model.predict_next(stranger.iloc[:j + 1], k=5)
        np.testing.assert_array_equal(got.items, expected.loc[label].to_numpy())
    assert isinstance(model, HRNNRecommender)


def test_string_labels(train_test):
    train, test = train_test
    relabel = {"SessionId": lambda f: "s" + f["SessionId"].astype(str),
               "ItemId": lambda f: "i" + f["ItemId"].astype(str)}
    model = SessionPopularityRecommender().fit(train.assign(**relabel))
    live = model.live()
    label, session = sessions_in_time_order(test.assign(**relabel))[0]
    got = live.click(label, session["ItemId"].iloc[0], k=3)
    assert got.items.dtype == object and got.items[0].startswith("i")
    assert got.to_dict() == {"items": list(got.items), "scores": list(got.scores)}
    with pytest.raises(TypeError, match="item 5 is a number label"):
        live.click(label, 5)
