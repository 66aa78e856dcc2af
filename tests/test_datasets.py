"""make_sessions and the readers."""

from __future__ import annotations

import numpy as np
import pytest

from sessionrec.datasets import make_sessions, read_gru4rec_tsv

from .conftest import RSC15


def test_make_sessions_shape_and_determinism():
    a = make_sessions(n_sessions=200, n_items=40, n_users=10, random_state=3)
    b = make_sessions(n_sessions=200, n_items=40, n_users=10, random_state=3)
    assert a.equals(b)
    assert list(a.columns) == ["UserId", "SessionId", "ItemId", "Time"]
    assert a["SessionId"].nunique() == 200
    assert a.groupby("SessionId").size().min() >= 2
    assert a.groupby("SessionId")["UserId"].nunique().max() == 1
    assert a["ItemId"].between(0, 39).all()
    assert (a.groupby("SessionId")["Time"].diff().dropna() > 0).all()


def test_planted_transitions_are_followed():
    events = make_sessions(n_sessions=500, n_items=100, transition_strength=1.0,
                           n_successors=1, random_state=0)
    # With one successor and strength 1, every session is a deterministic chain.
    nxt = events.groupby("SessionId")["ItemId"].shift(-1)
    pairs = events.assign(nxt=nxt).dropna()
    assert (pairs.groupby("ItemId")["nxt"].nunique() == 1).all()


def test_item_features_carry_the_topic():
    events, features = make_sessions(n_sessions=50, n_items=30, n_topics=3,
                                     feature_noise=0.0, return_item_features=True,
                                     random_state=0)
    assert features.shape == (30, 3)
    assert np.allclose(features.sum(axis=1), 1.0)


def test_make_sessions_rejects_bad_parameters():
    with pytest.raises(ValueError, match="mean_length"):
        make_sessions(mean_length=1.5)
    with pytest.raises(ValueError, match="transition_strength"):
        make_sessions(transition_strength=2.0)
    with pytest.raises(TypeError, match="n_items"):
        make_sessions(n_items=2.5)


@pytest.mark.realdata
def test_read_gru4rec_tsv_counts():
    if not RSC15.is_dir():
        pytest.skip("real data not found")
    train = read_gru4rec_tsv(RSC15 / "yoochoose-clicks-100k_train_full.txt")
    assert len(train) == 70278
    assert train["SessionId"].nunique() == 17794
    assert train["ItemId"].nunique() == 2933
