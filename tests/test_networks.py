"""The recurrent network interface (sessionrec.nn._interface): GRU4Rec's, HRNN's and
p-RNN's networks answer the same calls, and a walk written once against it, one click at
a time, gives the scores the models' own predictions give."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from sessionrec import GRU4RecRecommender, HRNNRecommender, ParallelRNNRecommender
from sessionrec._batching import user_parallel_schedule
from sessionrec._events import to_session_events
from sessionrec.models._recurrent import TrainingRun
from sessionrec.nn._interface import (
    CONTINUE,
    NEW_SESSION,
    NEW_USER,
    check_network,
    start_codes,
)

from .estimator_checks import make, with_users

MODELS = {
    "GRU4Rec": (GRU4RecRecommender, {}),
    "GRU4Rec, two layers, one-hot": (GRU4RecRecommender,
                                     dict(layers=(12, 8), constrained_embedding=False)),
    "p-RNN": (ParallelRNNRecommender, {}),
    # The network's own scores: the repeat-aware bonus is the model's, added after them.
    "HRNN": (HRNNRecommender, dict(repeat_aware=False)),
    "HRNN, all": (HRNNRecommender, dict(user_propagation="all", repeat_aware=False)),
}


def fitted(name, train):
    cls, params = MODELS[name]
    return make(cls, **params).fit(with_users(cls, train))


def click_by_click(network, events: pd.DataFrame, model) -> dict:
    """Scores of every item after each session's last event, feeding one slot one click
    at a time through the interface (codes from the frame's users and sessions)."""
    # One session after another (a user's in time order): one slot walks them all.
    events = events.sort_values(["UserId", "Time"] if "UserId" in events
                                else ["SessionId", "Time"], kind="stable")
    codes = model.item_index_.encode(events["ItemId"].to_numpy())
    state = network.zero_state(1)
    context = network.walk_context(len(events))
    matrix = network.scoring_matrix()
    out, last_session, last_user = {}, None, None
    users = events["UserId"] if "UserId" in events else pd.Series(0, index=events.index)
    for item, session, user in zip(codes, events["SessionId"], users, strict=True):
        if session == last_session:
            start = CONTINUE
        elif user == last_user:
            start = NEW_SESSION
        else:
            start = NEW_USER
        state, top = network.step(torch.tensor([int(item)]), state,
                                  torch.tensor([start], dtype=torch.int8), context)
        out[session] = network.score_top(top, matrix)[0]
        last_session, last_user = session, user
    return out


@pytest.mark.parametrize("name", list(MODELS))
def test_every_network_implements_the_interface(name, train_test):
    model = fitted(name, train_test[0])
    check_network(model.network_)


def test_check_network_names_what_is_missing():
    class OnlyInference:
        def __getattr__(self, name):
            if name in ("start_training", "train_step"):
                raise AttributeError(name)
            return lambda *args: None

    with pytest.raises(TypeError, match=r"OnlyInference lacks start_training, train_step"):
        check_network(OnlyInference())


def test_start_codes_of_a_user_parallel_schedule():
    X = pd.DataFrame({"UserId": [7, 7, 7, 7, 7, 8, 8], "SessionId": [1, 1, 1, 2, 2, 3, 3],
                      "ItemId": [1, 2, 3, 3, 4, 5, 6], "Time": [0, 1, 2, 5, 6, 2, 3]})
    events, _ = to_session_events(X, user_key="UserId")
    schedule = user_parallel_schedule(events, batch_size=1)
    codes = start_codes(schedule.session_start, schedule.user_start)
    assert codes.dtype == torch.int8 and codes.device.type == "cpu"
    # user 7: session 1 (two inputs), session 2 (one); then user 8
    assert codes.tolist() == [NEW_USER, CONTINUE, NEW_SESSION, NEW_USER]
    assert start_codes(schedule.session_start).tolist() == [NEW_SESSION, CONTINUE,
                                                            NEW_SESSION, NEW_SESSION]


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_trains_through_the_shared_skeleton(name, train_test, monkeypatch):
    """One fit skeleton: each model's epochs run in TrainingRun.run, whose steps are its
    network's train_step (GRU4Rec's faster paths aside, tested in test_gru4rec.py)."""
    runs, steps = [], []
    original_run, original_step = TrainingRun.run, TrainingRun.step

    def run(self, trainer, **kwargs):
        runs.append((type(self.network).__name__, kwargs["n_epochs"],
                     self.schedule.n_steps))
        return original_run(self, trainer, **kwargs)

    def step(self, start, stop, state):
        steps.append(stop - start)
        return original_step(self, start, stop, state)

    monkeypatch.setattr(TrainingRun, "run", run)
    monkeypatch.setattr(TrainingRun, "step", step)
    cls, params = MODELS[name]
    model = make(cls, **{**params, "n_epochs": 2}).fit(with_users(cls, train_test[0]))
    assert runs and {network for network, _, _ in runs} == {type(model.network_).__name__}
    assert sum(epochs for _, epochs, _ in runs) == len(model.history_) >= 2
    if cls is not GRU4RecRecommender:  # no faster path: every step is train_step's
        assert len(steps) == sum(epochs * n_steps for _, epochs, n_steps in runs) > 0


@pytest.mark.parametrize("name", list(MODELS))
def test_a_walk_through_the_interface_gives_the_models_scores(name, train_test):
    """One slot, one click at a time (as a live session is served), from the interface
    alone: the scores after each session equal the model's predict_next scores. HRNN's
    frame holds users unseen in training, each with several sessions in time order, so
    the user state is carried from session to session by the interface's codes."""
    train, test = train_test
    model = fitted(name, train)
    test = with_users(MODELS[name][0], test)
    known = test["ItemId"].isin(model.item_index_.labels)
    test = test[known].copy()
    if "UserId" in test:
        test["UserId"] = test["UserId"].astype(np.int64) + 10**6  # unknown users
        # Sessions ordered by time within each user, users one after another.
        test = test.sort_values(["UserId", "Time"], kind="stable")
        test["Time"] = np.arange(len(test), dtype=np.float64)
    n = model.n_items_
    items, scores = model.predict_next(test, k=n, return_scores=True)
    walked = click_by_click(model.network_, test, model)
    assert set(walked) == set(items.index)
    codes = {label: code for code, label in enumerate(model.item_index_.labels)}
    for session, row in items.iterrows():
        expected = np.empty(n, dtype=np.float32)
        expected[[codes[label] for label in row]] = scores.loc[session].to_numpy()
        np.testing.assert_allclose(walked[session].numpy(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(MODELS))
def test_score_items_is_score_top_on_the_chosen_columns(name, train_test):
    model = fitted(name, train_test[0])
    network = model.network_
    state = network.zero_state(3)
    starts = torch.tensor([NEW_USER, NEW_USER, NEW_USER], dtype=torch.int8)
    state, top = network.step(torch.tensor([0, 1, 2]), state, starts,
                              network.walk_context(3))
    chosen = torch.tensor([4, 0, 7, 4])
    torch.testing.assert_close(network.score_items(top, chosen),
                               network.score_top(top)[:, chosen])


@pytest.mark.parametrize("name", ["GRU4Rec", "GRU4Rec, two layers, one-hot", "p-RNN",
                                  "HRNN", "HRNN, repeat-aware"])
def test_the_backend_is_chosen_once_per_fit_and_per_walk(name, train_test, monkeypatch):
    """The fused-or-PyTorch decision is made once per training run and once per
    evaluation walk, never per step: the rule is consulted as often for a fit of three
    epochs as for one of one epoch, and as often for ranking a frame four times its
    size."""
    from sessionrec._native import kernels

    calls = []
    rule = kernels.available
    monkeypatch.setattr(kernels, "available", lambda: calls.append(1) or rule())
    train, test = train_test
    cls, params = MODELS.get(name, (HRNNRecommender, {}))
    counts = []
    for n_epochs in (1, 3):
        calls.clear()
        model = make(cls, **{**params, "n_epochs": n_epochs}).fit(with_users(cls, train))
        counts.append(len(calls))
    assert counts[0] == counts[1] and counts[0] <= 4
    frame = with_users(cls, test)
    bigger = pd.concat([frame.assign(SessionId=frame["SessionId"] + k * 10**6)
                        for k in range(4)], ignore_index=True)
    ranked = []
    for data in (frame, bigger):
        calls.clear()
        model.rank_next_items(data)
        ranked.append(len(calls))
    assert ranked[0] == ranked[1] and ranked[0] <= 4
