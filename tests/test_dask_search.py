"""Searches on a Dask cluster (joblib's ``dask`` backend) give what ``n_jobs=1`` gives.

A ``distributed.LocalCluster`` of two worker processes on 127.0.0.1, started and closed
by the test. The events are scattered to the workers once (``scatter=[events]``), not
pickled into every task: the test watches what the client sends.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, RandomizedSearchCV
from sklearn.pipeline import make_pipeline

from sessionrec import GRU4RecRecommender, SKNNRecommender
from sessionrec.datasets import make_sessions
from sessionrec.metrics import NextItemScorer
from sessionrec.model_selection import SessionKFold
from sessionrec.preprocessing import ConsecutiveDuplicateFilter

from .conftest import REPO, free_port
from .test_docs import python_blocks

distributed = pytest.importorskip("distributed")
joblib = pytest.importorskip("joblib")

pytestmark = pytest.mark.slow

SCORING = NextItemScorer(["recall@20", "mrr@20"])
COLUMNS = ["mean_test_recall@20", "mean_test_mrr@20", "split0_test_mrr@20",
           "split1_test_recall@20", "rank_test_mrr@20"]


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        yield client


@pytest.fixture(scope="module")
def events():
    return make_sessions(n_sessions=500, n_items=150, random_state=3)


def searches():
    gru = GRU4RecRecommender(layers=(24,), n_epochs=2, batch_size=16, n_sample=32,
                             random_state=5)
    pipe = make_pipeline(ConsecutiveDuplicateFilter(), SKNNRecommender())
    return {
        "grid over GRU4Rec": GridSearchCV(
            gru, {"learning_rate": [0.05, 0.2], "loss": ["cross-entropy", "bpr-max"]},
            cv=SessionKFold(2), scoring=SCORING, refit="mrr@20"),
        "random over a pipeline": RandomizedSearchCV(
            pipe, {"sknnrecommender__k": [10, 50, 100, 200],
                   "sknnrecommender__sample_size": [50, 500]},
            n_iter=4, random_state=0, cv=SessionKFold(2, shuffle=True, random_state=1),
            scoring=SCORING, refit="mrr@20"),
    }


@pytest.mark.parametrize("name", list(searches()))
def test_search_on_a_cluster_equals_one_process(name, client, events, monkeypatch):
    local = searches()[name].set_params(n_jobs=1).fit(events)

    scattered, submitted = [], []
    scatter, submit = distributed.Client.scatter, distributed.Client.submit

    def spy_scatter(self, data, *args, **kwargs):
        scattered.append(data)
        return scatter(self, data, *args, **kwargs)

    def spy_submit(self, *args, **kwargs):
        submitted.append(kwargs.get("tasks", ()))
        return submit(self, *args, **kwargs)

    monkeypatch.setattr(distributed.Client, "scatter", spy_scatter)
    monkeypatch.setattr(distributed.Client, "submit", spy_submit)
    with joblib.parallel_backend("dask", scatter=[events]):
        remote = searches()[name].set_params(n_jobs=-1).fit(events)

    for column in COLUMNS:
        np.testing.assert_array_equal(remote.cv_results_[column], local.cv_results_[column],
                                      err_msg=column)
    assert remote.best_params_ == local.best_params_
    np.testing.assert_array_equal(np.asarray(remote.predict(events)),
                                  np.asarray(local.predict(events)))

    # The frame went to the cluster once, when the backend started; every task names
    # it by its future instead of carrying a copy.
    frames = [data for data in scattered
              if any(isinstance(x, pd.DataFrame) for x in _flat(data))]
    assert len(frames) == 1
    arguments = [arg for tasks in submitted for _, args, kwargs in tasks
                 for arg in (*args, *kwargs.values())]
    assert arguments, "no task reached the cluster"
    assert not any(isinstance(arg, pd.DataFrame) for arg in arguments)
    assert any(isinstance(arg, distributed.Future) for arg in arguments)


def _flat(data):
    if isinstance(data, (list, tuple)):
        return list(data)
    if isinstance(data, dict):
        return list(data.values())
    return [data]


def test_the_guides_cluster_recipe(tmp_path):
    """docs/scaling.md's commands (``dask scheduler``, ``dask worker``) on 127.0.0.1, and
    the page's search run through them by the scheduler's address."""
    dask = Path(sys.executable).with_name("dask")
    if not dask.exists():
        pytest.skip("the dask command is not installed beside this Python")
    text = (REPO / "docs" / "scaling.md").read_text()
    assert "dask scheduler --host" in text and "dask worker tcp://" in text
    namespace = {"__name__": "scaling_guide"}  # defines the search, does not run it
    exec(compile(python_blocks(REPO / "docs" / "scaling.md")[0], "scaling.md", "exec"),
         namespace)
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    scheduler = subprocess.Popen([str(dask), "scheduler", "--host", "127.0.0.1", "--port",
                                  str(port), "--no-dashboard"], cwd=tmp_path,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker = subprocess.Popen([str(dask), "worker", address, "--nworkers", "2",
                               "--nthreads", "1", "--no-dashboard"], cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with distributed.Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
            search, events = namespace["search"], namespace["events"]
            with joblib.parallel_backend("dask", scatter=[events]):
                search.fit(events)
        local = clone(search).set_params(n_jobs=1).fit(events)
        np.testing.assert_array_equal(search.cv_results_["mean_test_mrr@20"],
                                      local.cv_results_["mean_test_mrr@20"])
    finally:
        for process in (worker, scheduler):
            process.terminate()
        for process in (worker, scheduler):
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()

