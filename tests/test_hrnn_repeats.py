"""HRNN's repeat-aware scores: the returning-user generator, the history counts of
training and prediction, the masked losses, and what the option buys on planted data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sessionrec import GRU4RecRecommender, HRNNRecommender, PersonalPopularityRecommender
from sessionrec._events import to_session_events
from sessionrec._user_history import UserHistory
from sessionrec.datasets import make_sessions
from sessionrec.evaluation import evaluate
from sessionrec.model_selection import LastSessionSplit, train_test_split
from sessionrec.nn._losses import LOSSES, loss_and_grad, masked_loss_and_grad
from sessionrec.nn._repeats import UserHistories


def returning(seed=0, **kw):
    """A small returning-user regime: short sessions, users back to their own items."""
    params = dict(n_sessions=1200, n_items=1200, n_users=300, mean_length=2.5,
                  repeat_strength=0.6, transition_strength=0.3, random_state=seed)
    params.update(kw)
    return make_sessions(**params)


def revisit_share(events: pd.DataFrame) -> float:
    """Share of events whose item the user had in an earlier session."""
    first = events.groupby("SessionId")["Time"].transform("min")
    ordered = events.assign(first=first).sort_values(["UserId", "first", "Time"])
    hits = 0
    for _, user in ordered.groupby("UserId", sort=False):
        seen: set = set()
        for _, session in user.groupby("first", sort=True):
            hits += int(session["ItemId"].isin(seen).sum())
            seen |= set(session["ItemId"])
    return hits / len(events)


# -- the generator ---------------------------------------------------------------------------


def test_returning_users_revisit_their_own_items():
    plain = returning(repeat_strength=0.0)
    strong = returning(repeat_strength=0.6)
    assert revisit_share(strong) > revisit_share(plain) + 0.2
    pd.testing.assert_frame_equal(returning(seed=3), returning(seed=3))
    assert not returning(seed=3).equals(returning(seed=4))
    # Sessions keep their contract: at least two events, sorted by session then time.
    assert strong.groupby("SessionId").size().min() >= 2
    assert strong.groupby("SessionId")["UserId"].nunique().max() == 1


def test_repeat_strength_needs_users_and_a_probability():
    with pytest.raises(ValueError, match="n_users"):
        make_sessions(n_sessions=10, repeat_strength=0.5)
    with pytest.raises(ValueError, match="repeat_strength"):
        make_sessions(n_sessions=10, n_users=3, repeat_strength=1.5)


def test_personal_pop_reads_the_planted_revisits():
    train, test = train_test_split(returning(), splitter=LastSessionSplit())
    from sessionrec import PopularityRecommender

    ppop = evaluate(PersonalPopularityRecommender().fit(train), test, cutoffs=[5])
    pop = evaluate(PopularityRecommender().fit(train), test, cutoffs=[5])
    assert ppop["recall@5"] > 3 * pop["recall@5"]


# -- the training histories ------------------------------------------------------------------


def brute_history(events, position):
    """(item -> (n_past, n_now)) of the user of the event at ``position``: their events
    in earlier sessions, and in the session up to and including the position."""
    user = events.users[events.session_of_event[position]]
    session = events.session_of_event[position]
    found: dict = {}
    for e in range(events.n_events):
        s = events.session_of_event[e]
        if events.users[s] != user or s > session or (s == session and e > position):
            continue
        past, now = found.get(events.items[e], (0, 0))
        found[events.items[e]] = (past, now + 1) if s == session else (past + 1, now)
    return found


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n_slots=st.integers(1, 6))
def test_step_histories_count_what_each_user_had(seed, n_slots):
    frame = make_sessions(n_sessions=30, n_items=12, n_users=4, mean_length=3,
                          repeat_strength=0.5, random_state=seed)
    events, _ = to_session_events(frame, user_key="UserId")
    history = UserHistory(events, "cpu")
    start, _ = history.through(np.arange(events.n_events))
    session_start = history.rank[events.offsets[events.session_of_event]]
    histories = UserHistories(torch.as_tensor(start), torch.as_tensor(history.rank),
                              torch.as_tensor(session_start),
                              history.items[torch.as_tensor(history.by_user)], 12)
    positions = np.random.default_rng(seed).choice(events.n_events, n_slots)
    step = histories.step(torch.as_tensor(positions))
    items, past, now, valid = step.padded()
    lookup_past, lookup_now = step.lookup(torch.arange(12))
    for b, position in enumerate(positions):
        expected = brute_history(events, position)
        got = {int(i): (float(p), float(n)) for i, p, n, v in
               zip(items[b], past[b], now[b], valid[b], strict=True) if v}
        assert got == {i: (float(p), float(n)) for i, (p, n) in expected.items()}
        for item in range(12):
            p, n = expected.get(item, (0, 0))
            assert (lookup_past[b, item], lookup_now[b, item]) == (p, n)


# -- the masked losses -----------------------------------------------------------------------


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("activation", ["linear", "tanh"])
def test_masked_losses_drop_exactly_the_excluded_columns(loss, activation):
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(4, 9, generator=g)
    nothing = torch.zeros(4, 9, dtype=torch.bool)
    full, full_grad = loss_and_grad(scores.clone(), loss, activation=activation)
    masked, masked_grad = masked_loss_and_grad(scores, nothing, loss, activation=activation)
    torch.testing.assert_close(masked, full)
    torch.testing.assert_close(masked_grad, full_grad)
    # Excluding column 6 for row 1 ranks row 1 as if the column were not there.
    excluded = nothing.clone()
    excluded[1, 6] = True
    loss_1, grad_1 = masked_loss_and_grad(scores, excluded, loss, activation=activation)
    keep = [c for c in range(9) if c != 6]
    row = scores[1:2, keep]
    row = torch.cat([row[:, 1:2], row[:, :1], row[:, 2:]], dim=1)  # target first
    alone, alone_grad = loss_and_grad(row.clone(), loss, activation=activation)
    others, _ = masked_loss_and_grad(scores[[0, 2, 3]][:, [0, 2, 3, 1, 4, 5, 6, 7, 8]],
                                     nothing[:3], loss, activation=activation)
    torch.testing.assert_close(loss_1, alone + others)
    assert grad_1[1, 6] == 0
    # The row's gradient is the single-row gradient, scaled from 1 row to 4.
    torch.testing.assert_close(grad_1[1, 1] * 4, alone_grad[0, 0])


# -- prediction ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def repeat_fitted():
    train, test = train_test_split(returning(), splitter=LastSessionSplit())
    model = HRNNRecommender(session_size=16, user_size=8, n_epochs=2, device="cpu",
                            random_state=0).fit(train)
    return model, train, test


def test_scores_are_the_network_scores_plus_the_gated_history_bonus(repeat_fitted):
    model, train, test = repeat_fitted
    user = test["UserId"].iloc[0]
    frame = test[test["UserId"] == user]
    events = model._session_events(frame)
    after = ~events.is_last
    trained_weights = model.network_.dense.detach().clone()
    dense = model.network_.views(model.network_.dense)
    with torch.no_grad():
        dense["w_rep"].zero_()
        dense["b_rep"].copy_(torch.tensor([0.75, -0.5, 0.25, 2.0]))
        with_bonus = torch.cat([s for _, s in model._iter_scores(events, after)])
        dense["b_rep"].zero_()
        plain = torch.cat([s for _, s in model._iter_scores(events, after)])
        model.network_.dense.copy_(trained_weights)
    codes = model.item_index_.encode(train.loc[train["UserId"] == user, "ItemId"])
    trained = np.bincount(codes[codes >= 0], minlength=model.n_items_)
    expected = []
    for position in np.flatnonzero(after):
        now = np.bincount(events.items[events.offsets[events.session_of_event[position]]:
                                       position + 1], minlength=model.n_items_)
        expected.append(0.75 * np.log1p(trained) - 0.5 * np.log1p(now)
                        + 0.25 * (trained > 0) + 2.0 * (now > 0))
    torch.testing.assert_close(with_bonus - plain,
                               torch.as_tensor(np.array(expected), dtype=torch.float32))


def test_the_learned_gates_lift_the_users_own_items(repeat_fitted):
    model, train, test = repeat_fitted
    plain = HRNNRecommender(session_size=16, user_size=8, n_epochs=2, repeat_aware=False,
                            device="cpu", random_state=0).fit(train)
    assert evaluate(model, test, cutoffs=[5])["recall@5"] > \
        1.2 * evaluate(plain, test, cutoffs=[5])["recall@5"]


@pytest.mark.parametrize("loss", ["top1", "cross-entropy", "bpr-max"])
def test_repeat_aware_training_runs_with_samples_and_every_step_option(loss):
    events = returning(n_sessions=300, n_items=200, n_users=40)
    model = HRNNRecommender(session_size=8, user_size=4, n_epochs=1, n_sample=16, loss=loss,
                            constrained_embedding=loss == "bpr-max",
                            user_propagation="all", device="cpu", random_state=0)
    model.fit(events)
    assert np.isfinite(model.history_[-1]["loss"])
    assert np.isfinite(model.rank_next_items(events).dropna()).all()


def test_plain_hrnn_keeps_the_papers_scores():
    train, test = train_test_split(returning(), splitter=LastSessionSplit())
    plain = HRNNRecommender(session_size=8, user_size=4, n_epochs=1, repeat_aware=False,
                            device="cpu", random_state=0).fit(train)
    assert "w_rep" not in plain.network_.views(plain.network_.dense)
    assert plain.user_items_ is None


@pytest.mark.slow
def test_hrnn_beats_gru4rec_and_personal_pop_where_users_return_to_their_items():
    # The returning-user regime of make_sessions, mean of 2 seeds: the repeat-aware HRNN
    # (the default) must beat both the session-only RNN and Personal POP on Recall@5 and
    # MRR@5, and the plain HRNN of the paper must not (it cannot reach the user's items).
    results = []
    for seed in range(2):
        data = returning(seed, n_sessions=3200, n_items=4800, n_users=800, mean_length=2.3)
        train, test = train_test_split(data, splitter=LastSessionSplit())
        row = []
        for model in [HRNNRecommender(device="cpu", random_state=seed),
                      HRNNRecommender(repeat_aware=False, device="cpu", random_state=seed),
                      GRU4RecRecommender(device="cpu", random_state=seed),
                      PersonalPopularityRecommender()]:
            result = evaluate(model.fit(train), test, cutoffs=[5])
            row.append([result["recall@5"], result["mrr@5"]])
        results.append(row)
    hrnn, plain, gru, ppop = np.mean(results, axis=0)
    assert (hrnn > gru).all() and (hrnn > ppop).all(), (hrnn, gru, ppop)
    assert plain[0] < ppop[0], (plain, ppop)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), rows=st.integers(1, 6), extra=st.integers(0, 9))
def test_masked_top1_in_closed_form_is_the_autograd_gradient(seed, rows, extra):
    from sessionrec.nn._losses import _masked_autograd, _masked_top1

    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(rows, rows + extra, generator=g) * 3
    excluded = torch.rand(scores.shape, generator=g) < 0.4
    unregularised = torch.rand(scores.shape, generator=g) < 0.5
    closed = _masked_top1(scores, excluded.clone(), unregularised)
    reference = _masked_autograd(scores, excluded.clone(), "top1", 1.0, "linear", 0.5,
                                 unregularised)
    torch.testing.assert_close(closed[0], reference[0])
    torch.testing.assert_close(closed[1], reference[1])


def test_prediction_follows_the_fitted_network_and_old_models_load(repeat_fitted, tmp_path):
    import pickle

    model, train, test = repeat_fitted
    plain = HRNNRecommender(session_size=8, user_size=4, n_epochs=1, repeat_aware=False,
                            device="cpu", random_state=0).fit(train)
    expected = plain.predict_next(test, k=5)
    # A parameter changed after fit does not change what the fitted network scores.
    changed = pickle.loads(pickle.dumps(plain)).set_params(repeat_aware=True)
    pd.testing.assert_frame_equal(changed.predict_next(test, k=5), expected)
    # A model pickled before repeat-aware scores existed (no such parameter, no counts)
    # loads as the paper's model.
    state = plain.__getstate__()
    del state["repeat_aware"], state["user_items_"]
    old = HRNNRecommender.__new__(HRNNRecommender)
    old.__setstate__(state)
    assert old.repeat_aware is False
    pd.testing.assert_frame_equal(old.predict_next(test, k=5), expected)
    model.save(tmp_path / "hrnn.pt")
    loaded = HRNNRecommender.load(tmp_path / "hrnn.pt")
    pd.testing.assert_frame_equal(loaded.predict_next(test, k=5), model.predict_next(test, k=5))
