"""End-to-end preparation: transformers + recommenders in Pipelines, tuned with our splitters."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline

from sessionrec import (
    GRU4RecRecommender,
    ItemKNNRecommender,
    PersonalPopularityRecommender,
    SessionPopularityRecommender,
)
from sessionrec.datasets import make_sessions, read_movielens_ratings
from sessionrec.evaluation import evaluate
from sessionrec.metrics import MRRAtK, RecallAtK
from sessionrec.model_selection import LastSessionSplit, TimeSplit, train_test_split
from sessionrec.preprocessing import (
    ItemSupportFilter,
    RepeatUntilStable,
    SessionLengthFilter,
    SessionSplitter,
    UserSessionFilter,
)

from .conftest import SHARED_DATA

MOVIELENS = SHARED_DATA / "ml-latest-small"


@pytest.fixture(scope="module")
def ratings():
    if not MOVIELENS.is_dir():
        pytest.skip(f"real data not found at {MOVIELENS}")
    return read_movielens_ratings(MOVIELENS / "ratings.csv")


@pytest.mark.realdata
def test_pipeline_on_raw_movielens_tuned_with_time_split(ratings):
    pipe = Pipeline([("sessions", SessionSplitter()), ("items", ItemSupportFilter(5)),
                     ("length", SessionLengthFilter(2)),
                     ("model", ItemKNNRecommender(device="cpu"))])
    # The raw ratings have no session column: the splitter derives the sessions the
    # pipeline will form (same idle gap), so no fold cuts one.
    cv = TimeSplit(365, n_splits=2, session_key=None)
    search = GridSearchCV(pipe, {"model__n_neighbors": [20, 100],
                                 "items__min_support": [5, 10]}, cv=cv,
                          scoring={"recall@20": RecallAtK(20), "mrr@20": MRRAtK(20)},
                          refit="mrr@20")
    search.fit(ratings)
    assert np.isfinite(search.cv_results_["mean_test_recall@20"]).all()
    assert 0 < search.best_score_ < 1
    best = search.best_estimator_
    assert best.named_steps["items"].min_support in (5, 10)
    recs = best.predict(ratings.tail(50))
    assert recs.shape[1] == 20 and len(recs) >= 1


@pytest.mark.realdata
def test_hrnn_paper_preparation_and_last_session_split(ratings):
    # The HRNN paper's preparation: 30-minute sessions, items >= 5 events, sessions >= 3
    # events, users >= 5 sessions, repeated until stable; then each user's last session.
    sessions = SessionSplitter().fit_transform(ratings)
    prep = RepeatUntilStable(Pipeline([("items", ItemSupportFilter(5)),
                                       ("length", SessionLengthFilter(3)),
                                       ("users", UserSessionFilter(5))]))
    data = prep.fit_transform(sessions)
    assert data["ItemId"].value_counts().min() >= 5
    assert data.groupby("SessionId").size().min() >= 3
    assert data.groupby("UserId")["SessionId"].nunique().min() >= 5
    train, test = train_test_split(data, splitter=LastSessionSplit())
    assert test.groupby("UserId")["SessionId"].nunique().eq(1).all()
    assert set(test["UserId"]) == set(data["UserId"])
    knn = evaluate(ItemKNNRecommender(device="cpu").fit(train), test, cutoffs=[5, 20])
    assert knn["n_targets"] > 1000 and 0 < knn["recall@5"] < knn["recall@20"]
    # A movie is rated once: the user's own items never come next, so Personal POP, which
    # ranks them first, scores nothing at 5 here (unlike on data with repeat interactions).
    ppop = evaluate(PersonalPopularityRecommender(device="cpu").fit(train), test, cutoffs=[5])
    assert ppop["n_targets"] == knn["n_targets"] and ppop["recall@5"] == 0.0


def test_planted_structure_orders_the_models():
    # make_sessions plants sequential transitions that only a sequence model can use in
    # full: S-POP < Item-KNN < GRU4Rec (the generator's docstring has the numbers).
    events = make_sessions(random_state=0)
    train, test = train_test_split(events, splitter=TimeSplit(3))
    results = [evaluate(est.fit(train), test, cutoffs=[20]) for est in (
        SessionPopularityRecommender(device="cpu"), ItemKNNRecommender(device="cpu"),
        GRU4RecRecommender(device="cpu", random_state=0))]
    for metric in ("recall@20", "mrr@20"):
        spop, knn, gru = (r[metric] for r in results)
        assert spop < knn < gru, (metric, spop, knn, gru)
