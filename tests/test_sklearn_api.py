"""scikit-learn's API to the last detail: metadata routing of item features, options of
predict through a Pipeline, transformers' output API and feature names, truthful tags,
and a word when a row-based split cuts sessions."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import sklearn
from sklearn.model_selection import (
    GridSearchCV,
    KFold,
    cross_val_score,
    cross_validate,
    learning_curve,
)
from sklearn.pipeline import make_pipeline
from sklearn.utils._param_validation import InvalidParameterError

from sessionrec import (
    ItemKNNRecommender,
    ParallelRNNRecommender,
    PopularityRecommender,
    SessionCutWarning,
    all_estimators,
)
from sessionrec.datasets import make_sessions
from sessionrec.evaluation import evaluate
from sessionrec.metrics import MRRAtK
from sessionrec.model_selection import SessionKFold, TimeSplit
from sessionrec.preprocessing import (
    DenseItemFeatures,
    ItemFeatures,
    ItemSupportFilter,
    SessionLengthFilter,
    SessionSplitter,
    TfidfItemFeatures,
)

from .estimator_checks import make


@pytest.fixture(scope="module")
def with_features():
    events, topics = make_sessions(n_sessions=300, n_items=60, return_item_features=True,
                                   random_state=0)
    return events, ItemFeatures(topics.index, topics.to_numpy(), topics.columns)


def prnn(**params):
    return ParallelRNNRecommender(hidden_size=8, n_epochs=1, batch_size=16, device="cpu",
                                  random_state=0, **params)


def test_item_features_route_through_search_pipeline_and_cross_validate(with_features):
    """With metadata routing on (requested with set_fit_request) and off (as fit
    parameters), item features reach the model whole, and the scores are the same."""
    events, features = with_features
    grid = {"parallelrnnrecommender__hidden_size": [8, 12]}
    results = []
    for routing in (False, True):
        with sklearn.config_context(enable_metadata_routing=routing):
            model = prnn().set_fit_request(item_features=True) if routing else prnn()
            pipe = make_pipeline(ItemSupportFilter(1), model)
            search = GridSearchCV(pipe, grid, cv=SessionKFold(2), scoring=MRRAtK(20))
            search.fit(events, **({"item_features": features} if routing else
                                  {"parallelrnnrecommender__item_features": features}))
            scores = cross_validate(model, events, cv=SessionKFold(2), scoring=MRRAtK(20),
                                    params={"item_features": features})["test_score"]
        assert 0 < search.best_score_ <= 1
        assert search.best_estimator_[-1].feature_coverage_ == {"features": 1.0}
        results.append((search.cv_results_["mean_test_score"], scores))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])


def test_routing_without_a_request_says_what_to_do(with_features):
    events, features = with_features
    with sklearn.config_context(enable_metadata_routing=True):
        search = GridSearchCV(prnn(), {"hidden_size": [8]}, cv=SessionKFold(2),
                              scoring=MRRAtK(20))
        with pytest.raises(Exception, match="set_fit_request"):
            search.fit(events, item_features=features)


def test_item_features_as_long_as_x_are_never_cut(with_features):
    """An ItemFeatures (not a table) is passed to every fold whole even when it has as
    many rows as X; a bare table of that length, which scikit-learn would cut, warns."""
    events, features = with_features
    sample = events.iloc[:features.labels.size]  # as many events as feature rows
    assert len(sample) == features.labels.size
    search = GridSearchCV(prnn(), {"hidden_size": [8]}, cv=SessionKFold(2),
                          scoring=MRRAtK(20))
    search.fit(sample, item_features=features)  # no warning (errors in this suite)
    assert search.best_estimator_.feature_coverage_["features"] == 1.0
    table = features.to_frame()
    with pytest.warns(UserWarning, match="as many as X.*ItemFeatures"):
        prnn().fit(sample, item_features=table)


@pytest.mark.parametrize("routing", [False, True])
def test_pipeline_predict_takes_the_options(train_test, routing):
    train, test = train_test
    with sklearn.config_context(enable_metadata_routing=routing):
        model = PopularityRecommender(device="cpu")
        if routing:
            model.set_predict_request(k=True, exclude_seen=True, return_scores=True)
        pipe = make_pipeline(SessionLengthFilter(1), model).fit(train)
        assert pipe.predict(test, k=5).shape == (test["SessionId"].nunique(), 5)
        items, scores = pipe.predict(test, k=4, exclude_seen=True, return_scores=True)
    assert items.shape == scores.shape == (test["SessionId"].nunique(), 4)
    pd.testing.assert_frame_equal(items, model.predict_next(test, k=4, exclude_seen=True))


@pytest.mark.parametrize("cls", all_estimators(), ids=lambda c: c.__name__)
def test_predict_is_predict_next(cls, train_test):
    train, test = train_test
    est = make(cls).fit(train)
    pd.testing.assert_frame_equal(est.predict(test, k=3, exclude_seen=True),
                                  est.predict_next(test, k=3, exclude_seen=True))


def test_transformers_set_output_and_feature_names(events):
    splitter = SessionSplitter().set_output(transform="pandas")
    raw = events.drop(columns="SessionId")
    out = splitter.fit_transform(raw)
    assert isinstance(out, pd.DataFrame) and "SessionId" in out
    assert list(splitter.get_feature_names_out()) == list(raw.columns) + ["SessionId"]
    pipe = make_pipeline(SessionSplitter(), ItemSupportFilter(2)).set_output(
        transform="pandas")
    filtered = pipe.fit_transform(raw)
    assert list(pipe.get_feature_names_out()) == list(filtered.columns)
    # A test frame of other columns than the training frame is filtered as it is.
    assert list(pipe.transform(raw.drop(columns="UserId").assign(UserId=0)).columns) == [
        c for c in raw.drop(columns="UserId").columns] + ["UserId", "SessionId"]
    with pytest.raises(InvalidParameterError, match="polars"):
        SessionSplitter().set_output(transform="polars")


def test_encoders_name_their_features_and_give_frames():
    movies = pd.DataFrame({"title": ["Toy Story", "Story of Toys"], "x": [3.0, 0.0],
                           "y": [4.0, 2.0]}, index=[1, 2])
    tfidf = TfidfItemFeatures("title").fit(movies)
    features = tfidf.transform(movies)
    assert list(features.feature_names) == list(tfidf.get_feature_names_out())
    assert "toy story" in tfidf.get_feature_names_out()
    frame = tfidf.set_output(transform="pandas").transform(movies)
    assert isinstance(frame, pd.DataFrame) and list(frame.index) == [1, 2]
    assert all(isinstance(d, pd.SparseDtype) for d in frame.dtypes)
    dense = DenseItemFeatures(["x", "y"]).set_output(transform="pandas")
    table = dense.fit_transform(movies)
    assert list(table.columns) == ["x", "y"] and list(dense.get_feature_names_out()) == [
        "x", "y"]
    np.testing.assert_allclose(table.loc[1].to_numpy(), [0.6, 0.8], rtol=1e-6)


def test_tags_tell_the_truth(train_test):
    for cls in all_estimators():
        tags = make(cls).__sklearn_tags__()
        assert not tags.input_tags.two_d_array  # a DataFrame of events, not an array
        with pytest.raises(TypeError, match="DataFrame"):
            make(cls).fit(train_test[0].to_numpy())
        assert tags.requires_fit and not tags.target_tags.required


@pytest.mark.parametrize("run", ["cv=3", "KFold", "learning_curve", "evaluate"])
def test_a_split_that_cuts_sessions_is_named(events, run):
    model = ItemKNNRecommender(device="cpu")
    with pytest.warns(SessionCutWarning, match="cut sessions in two.*SessionKFold"):
        if run == "cv=3":
            cross_val_score(model, events, cv=3, scoring=MRRAtK(20))
        elif run == "KFold":
            GridSearchCV(model, {"n_neighbors": [10]}, cv=KFold(3)).fit(events)
        elif run == "learning_curve":
            learning_curve(model, events, None, cv=KFold(3), train_sizes=[1.0],
                           scoring=MRRAtK(20))
        else:  # a hand-made split of rows, through the middle of a session
            ordered = events.sort_values(["SessionId", "Time"], kind="stable")
            long = ordered.groupby("SessionId")["ItemId"].transform("size") >= 4
            cut = int(np.flatnonzero(long.to_numpy())[1])  # the 2nd event of a session
            evaluate(model.fit(ordered.iloc[:cut + 1]), ordered.iloc[cut + 1:])


def test_session_safe_splits_and_training_scores_say_nothing(events):
    with warnings.catch_warnings():
        warnings.simplefilter("error", SessionCutWarning)
        model = ItemKNNRecommender(device="cpu")
        cross_val_score(model, events, cv=SessionKFold(3), scoring=MRRAtK(20))
        cross_val_score(model, events, cv=TimeSplit(5, n_splits=2), scoring=MRRAtK(20))
        model.fit(events).score(events)  # the training sessions themselves
        # A Pipeline that numbers each frame's sessions afresh: equal labels, other
        # sessions.
        raw = events.drop(columns="SessionId")
        pipe = make_pipeline(SessionSplitter(), ItemKNNRecommender(device="cpu"))
        cross_val_score(pipe, raw, cv=TimeSplit(5, n_splits=2, session_key=None),
                        scoring=MRRAtK(20))


def test_the_training_sessions_are_not_pickled(events):
    import pickle

    model = ItemKNNRecommender(device="cpu").fit(events)
    assert "_fit_sessions_" in vars(model)
    assert "_fit_sessions_" not in vars(pickle.loads(pickle.dumps(model)))
