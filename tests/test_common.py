"""The shared estimator suite: every recommender passes every check here."""

from __future__ import annotations

import copy
import pickle
import warnings

import joblib
import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from sessionrec import NotFittedError, all_estimators
from sessionrec.metrics import MRRAtK, NextItemScorer, RecallAtK
from sessionrec.model_selection import SessionKFold

from .estimator_checks import (
    FAST_PARAMS,
    assert_frames_identical,
    has_param,
    make,
    uses_users,
    with_users,
)

ESTIMATORS = all_estimators()
ids = [cls.__name__ for cls in ESTIMATORS]
parametrize = pytest.mark.parametrize("cls", ESTIMATORS, ids=ids)


def test_every_estimator_has_fast_params():
    assert set(FAST_PARAMS) == {cls.__name__ for cls in ESTIMATORS}


def test_estimators_are_exported():
    import sessionrec

    for cls in ESTIMATORS:
        assert getattr(sessionrec, cls.__name__) is cls
        assert cls.__name__ in sessionrec.__all__


@parametrize
def test_init_only_stores_params(cls):
    est = make(cls)
    params = est.get_params()
    assert params == clone(est).get_params()
    assert not any(k.endswith("_") for k in vars(est))
    sig = inspect_params(cls)
    assert all(p.kind == p.KEYWORD_ONLY for p in sig), "parameters must be keyword-only"
    # An invalid value is accepted by __init__ and only rejected by fit.
    cls(device="nonsense")


def inspect_params(cls):
    import inspect

    return [p for name, p in inspect.signature(cls.__init__).parameters.items()
            if name != "self"]


@parametrize
def test_fit_predict_rank_score(cls, train_test):
    train, test = train_test
    est = make(cls)
    assert est.fit(train) is est
    assert est.n_items_ == train["ItemId"].nunique()
    assert isinstance(est.device_, torch.device)

    recs = est.predict_next(test, k=5)
    sessions = test["SessionId"].unique()
    assert recs.shape == (len(sessions), 5)
    assert set(recs.index) == set(sessions)
    assert recs.index.name == "SessionId"
    assert list(recs.columns) == [1, 2, 3, 4, 5]
    assert set(np.unique(recs.to_numpy())) <= set(train["ItemId"])
    # No duplicate item inside one list.
    assert all(len(set(row)) == 5 for row in recs.to_numpy())
    assert_frames_identical(est.predict(test), est.predict_next(test, k=20))

    items, scores = est.predict_next(test, k=5, return_scores=True)
    assert_frames_identical(items, recs)
    assert (np.diff(scores.to_numpy(), axis=1) <= 0).all(), "scores must be sorted"

    ranks = est.rank_next_items(test)
    assert len(ranks) == len(test) - test["SessionId"].nunique()
    assert ranks.index.isin(test.index).all()
    known = ranks.dropna()
    assert ((known >= 1) & (known <= est.n_items_)).all()
    score = est.score(test)
    assert 0.0 <= score <= 1.0


@parametrize
def test_ranks_agree_with_predict_next(cls, train_test):
    """The evaluation engine and the recommendation lists agree on the same sessions."""
    train, test = train_test
    est = make(cls).fit(train)
    if uses_users(cls):
        # A user's earlier sessions in the frame are part of the history, and they differ
        # between the prefix frame and the full one: keep one test session per user.
        test = test.drop_duplicates("UserId").pipe(lambda first: test[
            test["SessionId"].isin(first["SessionId"])])
        assert test["SessionId"].nunique() == test["UserId"].nunique() > 10
    # Take each test session's prefix without its last event; the last event is the target.
    is_last = test.groupby("SessionId")["Time"].transform("max") == test["Time"]
    prefix = test[~is_last]
    targets = test[is_last].set_index("SessionId")["ItemId"]
    recs = est.predict_next(prefix, k=est.n_items_)
    ranks = est.rank_next_items(test, ties="optimistic")
    for session, target in targets.items():
        if session not in recs.index:
            continue
        position = np.flatnonzero(recs.loc[session].to_numpy() == target)
        rank = ranks.loc[test.index[(test["SessionId"] == session) & is_last]].iloc[0]
        # With ties, topk may order tied items either way: the optimistic rank is a
        # lower bound of the position in the full list.
        assert position[0] + 1 >= rank


@parametrize
def test_exclude_seen(cls, train_test):
    train, test = train_test
    est = make(cls).fit(train)
    recs = est.predict_next(test, k=10, exclude_seen=True)
    seen = test.groupby("SessionId")["ItemId"].agg(set)
    for session, row in recs.iterrows():
        assert not (set(row) & seen[session])


@parametrize
def test_input_frames_are_not_modified(cls, train_test):
    train, test = train_test
    # Shuffle so that sorting in place would show.
    train = train.sample(frac=1.0, random_state=1)
    test = test.sample(frac=1.0, random_state=2)
    train_copy, test_copy = train.copy(deep=True), test.copy(deep=True)
    est = make(cls).fit(train)
    est.predict_next(test)
    est.rank_next_items(test)
    est.score(test)
    pd.testing.assert_frame_equal(train, train_copy)
    pd.testing.assert_frame_equal(test, test_copy)


@parametrize
def test_row_order_does_not_matter(cls, train_test):
    train, test = train_test
    kwargs = {"random_state": 0} if has_param(cls, "random_state") else {}
    a = make(cls, **kwargs).fit(train)
    b = make(cls, **kwargs).fit(train.sample(frac=1.0, random_state=3))
    shuffled_test = test.sample(frac=1.0, random_state=4)
    assert_frames_identical(a.predict_next(test), b.predict_next(shuffled_test))
    ranks_a = a.rank_next_items(test)
    ranks_b = b.rank_next_items(shuffled_test)
    pd.testing.assert_series_equal(ranks_a.sort_index(), ranks_b.sort_index())


@parametrize
def test_clone_and_params(cls, train_test):
    est = make(cls)
    est.fit(train_test[0])
    fresh = clone(est)
    assert fresh.get_params() == est.get_params()
    assert not hasattr(fresh, "item_index_")
    est.set_params(verbose=True)
    assert est.get_params()["verbose"] is True


@parametrize
def test_not_fitted(cls, train_test):
    est = make(cls)
    for call in (est.predict_next, est.predict, est.rank_next_items, est.score):
        with pytest.raises(NotFittedError):
            call(train_test[1])


@parametrize
def test_pickle_roundtrip(cls, train_test, tmp_path):
    train, test = train_test
    est = make(cls).fit(train)
    path = tmp_path / "model.joblib"
    joblib.dump(est, path)
    loaded = joblib.load(path)
    assert_frames_identical(loaded.predict_next(test), est.predict_next(test))
    pd.testing.assert_series_equal(loaded.rank_next_items(test), est.rank_next_items(test))
    again = pickle.loads(pickle.dumps(est))
    assert_frames_identical(again.predict_next(test), est.predict_next(test))


@parametrize
def test_save_load_roundtrip(cls, train_test, tmp_path):
    train, test = train_test
    est = make(cls).fit(train)
    est.save(tmp_path / "model.pt")
    loaded = cls.load(tmp_path / "model.pt")
    assert type(loaded) is cls
    assert loaded.get_params() == est.get_params()
    assert_frames_identical(loaded.predict_next(test), est.predict_next(test))
    pd.testing.assert_series_equal(loaded.rank_next_items(test), est.rank_next_items(test))


@parametrize
def test_unpickle_maps_a_cuda_model_to_the_cpu(cls, train_test, monkeypatch):
    """A model pickled on a GPU machine (device_ = cuda) loads where there is no CUDA."""
    train, test = train_test
    est = make(cls).fit(train)
    state = est.__getstate__()
    state["device_"] = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    restored = cls.__new__(cls)
    restored.__setstate__(state)
    assert restored.device_ == torch.device("cpu")
    assert_frames_identical(restored.predict_next(test), est.predict_next(test))


@parametrize
def test_string_labels_and_custom_columns(cls, train_test):
    train, test = train_test

    # Zero-padded labels sort like the integers, so item codes (and so the random
    # initialisation of neural models) are the same as with integer labels.
    def relabel(frame):
        return pd.DataFrame({
            "sess": "s" + frame["SessionId"].map("{:06d}".format),
            "item": "i" + frame["ItemId"].map("{:06d}".format),
            "ts": pd.to_datetime(frame["Time"], unit="s"),
            "who": "u" + frame["UserId"].map("{:06d}".format),
        })

    est = make(cls, session_key="sess", item_key="item", time_key="ts", user_key="who").fit(
        relabel(train))
    base = make(cls).fit(train)
    recs = est.predict_next(relabel(test), k=5)
    expected = base.predict_next(test, k=5)
    assert list(recs.index) == [f"s{s:06d}" for s in expected.index]
    assert (recs.to_numpy() == expected.map("i{:06d}".format).to_numpy()).all()


@parametrize
@pytest.mark.parametrize("column", ["SessionId", "ItemId", "Time", "UserId"])
def test_missing_column_is_named(cls, train_test, column):
    if column == "UserId" and not uses_users(cls):
        pytest.skip("reads no user column")
    bad = train_test[0].drop(columns=column)
    with pytest.raises(ValueError, match=repr(column)):
        make(cls).fit(bad)
    est = make(cls).fit(train_test[0])
    with pytest.raises(ValueError, match=repr(column)):
        est.predict_next(train_test[1].drop(columns=column))


@parametrize
def test_wrong_column_name_parameter_is_named(cls, train_test):
    with pytest.raises(ValueError, match="'session'"):
        make(cls, session_key="session").fit(train_test[0])


@parametrize
@pytest.mark.parametrize("column", ["SessionId", "ItemId", "Time", "UserId"])
def test_nan_is_rejected_with_column_name(cls, train_test, column):
    if column == "UserId" and not uses_users(cls):
        pytest.skip("reads no user column")
    bad = train_test[0].copy()
    bad[column] = bad[column].astype("float64")
    bad.loc[3, column] = np.nan
    with pytest.raises(ValueError, match=f"{column!r}.*missing"):
        make(cls).fit(bad)


@parametrize
def test_bad_frames(cls, train_test):
    train = train_test[0]
    with pytest.raises(ValueError, match="empty"):
        make(cls).fit(train.iloc[:0])
    with pytest.raises(TypeError, match="DataFrame"):
        make(cls).fit(train.to_numpy())
    text_times = train.assign(Time=train["Time"].astype(str))
    with pytest.raises(TypeError, match="'Time'"):
        make(cls).fit(text_times)


@parametrize
def test_failed_fit_leaves_estimator_unfitted(cls, train_test):
    train, test = train_test
    est = make(cls).fit(train)
    with pytest.raises(ValueError):
        est.fit(train.drop(columns="ItemId"))
    assert not any(k.endswith("_") for k in vars(est))
    with pytest.raises(NotFittedError):
        est.predict_next(test)


@parametrize
def test_bad_parameters_are_named(cls, train_test):
    with pytest.raises(ValueError, match="device"):
        make(cls, device="tpu").fit(train_test[0])
    with pytest.raises(ValueError, match="verbose"):
        make(cls, verbose=-1).fit(train_test[0])
    est = make(cls).fit(train_test[0])
    with pytest.raises(ValueError, match="k must be"):
        est.predict_next(train_test[1], k=0)
    with pytest.raises(ValueError, match="ties"):
        est.rank_next_items(train_test[1], ties="pessimistic")


@parametrize
def test_unknown_items_at_prediction(cls, train_test):
    train, test = train_test
    est = make(cls).fit(train)
    unknown = with_users(cls, pd.DataFrame({
        "SessionId": [-1, -1, -2, -2, -2],
        "ItemId": [10_000, 10_001, 10_002, int(train["ItemId"].iloc[0]), 10_003],
        "Time": [0.0, 1.0, 0.0, 1.0, 2.0]}))
    recs = est.predict_next(unknown, k=3)
    assert list(recs.index) == [-1, -2]
    assert set(np.unique(recs.to_numpy())) <= set(train["ItemId"])
    ranks = est.rank_next_items(unknown)
    # Session -1 has no known item; in session -2 the known item has no known history.
    assert len(ranks) == 3 and ranks.isna().all()


@parametrize
def test_one_event_sessions(cls, train_test):
    train, test = train_test
    singles = with_users(cls, pd.DataFrame({"SessionId": [-5, -6],
                                            "ItemId": train["ItemId"].iloc[:2].to_numpy(),
                                            "Time": [0.0, 1.0]}))
    est = make(cls).fit(pd.concat([train, singles], ignore_index=True))
    recs = est.predict_next(singles, k=3)
    assert recs.shape == (2, 3)
    assert len(est.rank_next_items(singles)) == 0


@parametrize
def test_k_larger_than_catalogue_is_clipped(cls, train_test):
    train, test = train_test
    est = make(cls).fit(train)
    recs = est.predict_next(test, k=10 * est.n_items_)
    assert recs.shape[1] == est.n_items_


@parametrize
def test_sklearn_tags(cls):
    tags = make(cls).__sklearn_tags__()
    assert tags.requires_fit
    assert not tags.target_tags.required


@parametrize
def test_grid_search_and_pipeline(cls, train_test):
    train, test = train_test
    est = make(cls)
    grid = {"verbose": [False, 0]}
    search = GridSearchCV(est, grid, cv=SessionKFold(2),
                          scoring={"recall@20": RecallAtK(20), "mrr@20": MRRAtK(20)},
                          refit="mrr@20")
    search.fit(train)
    assert 0 <= search.best_score_ <= 1
    assert search.best_estimator_.predict(test).shape[0] == test["SessionId"].nunique()

    multi = GridSearchCV(est, grid, cv=SessionKFold(2),
                         scoring=NextItemScorer(["recall@20", "mrr@20"]), refit="mrr@20")
    multi.fit(train)
    np.testing.assert_allclose(multi.cv_results_["mean_test_mrr@20"],
                               search.cv_results_["mean_test_mrr@20"])

    pipe = make_pipeline(FunctionTransformer(copy.copy), clone(est)).fit(train)
    assert pipe.predict(test).shape[0] == test["SessionId"].nunique()
    assert RecallAtK(20)(pipe, test) == RecallAtK(20)(pipe[-1], test)


@parametrize
def test_random_state_reproducible(cls, train_test):
    if not has_param(cls, "random_state"):
        pytest.skip("no randomness")
    train, test = train_test
    a = make(cls, random_state=7).fit(train)
    b = make(cls, random_state=7).fit(train)
    assert_frames_identical(a.predict_next(test), b.predict_next(test))


# -- inputs that used to be silent ----------------------------------------------------------


@parametrize
def test_mixed_label_types_at_fit_are_named(cls, train_test):
    """'214716935' and 214716935 in one column would be two different items."""
    train = train_test[0]
    mixed = train.assign(ItemId=train["ItemId"].astype(object))
    mixed.loc[mixed.index[::2], "ItemId"] = mixed["ItemId"].iloc[::2].astype(str)
    before = mixed.copy(deep=True)
    with pytest.raises(TypeError, match=r"'ItemId'.*mix kinds: (str|number).*and"):
        make(cls).fit(mixed)
    pd.testing.assert_frame_equal(mixed, before)
    sessions = train.assign(SessionId=train["SessionId"].astype(object))
    sessions.loc[sessions.index[:5], "SessionId"] = "s"
    with pytest.raises(TypeError, match="'SessionId'.*mix kinds"):
        make(cls).fit(sessions)
    if uses_users(cls):
        users = train.assign(UserId=train["UserId"].astype(object))
        users.loc[users.index[:5], "UserId"] = users["UserId"].iloc[:5].astype(str)
        with pytest.raises(TypeError, match="'UserId'.*mix kinds"):
            make(cls).fit(users)


@parametrize
def test_labels_of_another_type_than_fit_are_named(cls, train_test):
    """str item labels against a model fitted on ints: none would be recognised."""
    train, test = train_test
    est = make(cls).fit(train)
    as_text = test.assign(ItemId=test["ItemId"].astype(str))
    for call in (est.predict_next, est.rank_next_items, est.score):
        with pytest.raises(TypeError, match=r"'ItemId'.*str labels.*fitted on number"):
            call(as_text)
    # Floats are the same labels as ints (1.0 == 1): not an error.
    as_float = test.assign(ItemId=test["ItemId"].astype("float64"))
    assert_frames_identical(est.predict_next(as_float), est.predict_next(test))
    text_model = make(cls).fit(train.assign(ItemId="i" + train["ItemId"].astype(str)))
    with pytest.raises(TypeError, match=r"'ItemId'.*number labels.*fitted on str"):
        text_model.score(test)
    if uses_users(cls):
        users_as_text = test.assign(UserId=test["UserId"].astype(str))
        with pytest.raises(TypeError, match=r"'UserId'.*str labels.*fitted on number"):
            est.predict_next(users_as_text)


@parametrize
def test_score_without_rankable_targets_warns(cls, train_test):
    train, test = train_test
    est = make(cls).fit(train)
    unseen = test.assign(ItemId=test["ItemId"] + 10_000)
    with pytest.warns(UserWarning, match="no event of X can be ranked"):
        assert np.isnan(est.score(unseen))


def one_event_sessions(frame: pd.DataFrame) -> pd.DataFrame:
    """Every session of ``frame`` cut to its first event, each session of its own."""
    return frame.sort_values("Time", kind="stable").drop_duplicates("SessionId")


@parametrize
def test_training_frame_without_pairs(cls, train_test):
    """Every session has one event. The models that learn from (item, next item) pairs
    raise; the others fit, and an item they know nothing about after is completed by
    popularity (ties of S-POP, empty rows of the item-matrix models, items outside the
    neighbour sessions of the kNN family) rather than by the lowest labels."""
    from sessionrec import PopularityRecommender

    train, test = train_test
    singles = one_event_sessions(train)
    assert singles["SessionId"].is_unique
    est = make(cls)
    if est._LEARNS_FROM_PAIRS:
        with pytest.raises(ValueError, match=r"no session with two or more events.*'SessionId'"):
            est.fit(singles)
        assert not any(k.endswith("_") for k in vars(est))
        return
    est.fit(singles)
    live = with_users(cls, pd.DataFrame({"SessionId": [-1], "ItemId": [singles["ItemId"].iloc[0]],
                                         "Time": [0.0]}))
    live = live.assign(UserId=-1) if uses_users(cls) else live  # a user unknown to fit
    recs = est.predict_next(live, k=10, exclude_seen=True)
    assert recs.shape == (1, 10) and len(set(recs.iloc[0])) == 10
    if cls.__name__ == "BPRMFRecommender":
        return  # a factor model: its list is learnt, not a count
    pop = PopularityRecommender(device="cpu").fit(singles)
    expected = pop.predict_next(live, k=10, exclude_seen=True)
    assert list(recs.iloc[0]) == list(expected.iloc[0])


@parametrize
def test_diverging_training_is_named(cls, train_test):
    """A learning rate of 1e30 either makes the loss NaN (an error) or leaves it finite
    far above its start (a warning); both name learning_rate. A normal fit warns of
    nothing (pyproject.toml turns the warning into an error for the whole suite)."""
    from sessionrec import TrainingDivergedError, TrainingDivergenceWarning

    if not has_param(cls, "learning_rate"):
        pytest.skip("not trained by gradient steps")
    train = train_test[0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            make(cls, learning_rate=1e30).fit(train)
        except TrainingDivergedError as error:
            assert "learning_rate (now 1e+30)" in str(error)
            return
    diverged = [w for w in caught if issubclass(w.category, TrainingDivergenceWarning)]
    assert diverged, "a fit at learning_rate=1e30 gave no word"
    assert "learning_rate (now 1e+30)" in str(diverged[0].message)
    assert "far above where it started" in str(diverged[0].message)


class _RecordingBar:
    """Stands in for tqdm: records what a progress bar was told."""

    made: list = []

    def __init__(self, total, desc, **kwargs):
        self.total, self.desc, self.kwargs, self.n, self.closed = total, desc, kwargs, 0, False
        _RecordingBar.made.append(self)

    def update(self, n=1):
        self.n += n

    def close(self):
        self.closed = True


@parametrize
def test_verbose_fits_show_progress_and_history(cls, train_test, monkeypatch):
    """A model trained in epochs shows a bar per epoch when verbose (tqdm, on a terminal
    only: disable=None), filled once per mini-batch and closed, and records its speed."""
    from sessionrec import _progress

    if not has_param(cls, "n_epochs"):
        pytest.skip("not trained in epochs")
    monkeypatch.setattr(_progress, "tqdm", _RecordingBar)
    _RecordingBar.made = []
    make(cls).fit(train_test[0])
    assert _RecordingBar.made == []  # quiet by default
    est = make(cls, verbose=True).fit(train_test[0])
    bars = _RecordingBar.made
    assert len(bars) == len(est.history_) == est.n_epochs
    assert all(bar.closed and bar.n == bar.total > 0 for bar in bars)
    assert all(bar.kwargs["disable"] is None and bar.kwargs["leave"] is False for bar in bars)
    assert bars[-1].desc.endswith(f"epoch {est.n_epochs}/{est.n_epochs}")
    for record in est.history_:
        assert record["events_per_s"] > 0 and record["batches_per_s"] > 0
        assert np.isclose(record["batches_per_s"] * record["seconds"], bars[0].total)
