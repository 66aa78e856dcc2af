"""p-RNN on noisy dense item features, and its feature output for cold-start items."""

from __future__ import annotations

import functools
import pickle

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from sessionrec import ParallelRNNRecommender
from sessionrec.datasets import make_sessions
from sessionrec.metrics import mrr_at_k, recall_at_k
from sessionrec.model_selection import TimeSplit, train_test_split
from sessionrec.nn._sampling import NegativeSampler
from sessionrec.preprocessing import ItemFeatures

# The regime of the issue: a long Zipf tail in each of 50 categories, few events per
# item, the next click in the current item's category with probability 0.6, and features
# whose noise has `noise_ratio` times the norm of the one-hot signal.
N_TOPICS = 50


@functools.cache
def _noisy(seed: int, noise_ratio: float, n_items: int = 10_000, n_sessions: int = 5000):
    events, features = make_sessions(
        n_sessions=n_sessions, n_items=n_items, n_topics=N_TOPICS, transition_strength=0.0,
        topic_strength=0.6, feature_noise=noise_ratio / np.sqrt(N_TOPICS),
        return_item_features=True, random_state=seed)
    train, test = train_test_split(events, splitter=TimeSplit(3))
    return train, test, features


def _mrr(model, test) -> float:
    ranks = model.rank_next_items(test)
    return mrr_at_k(ranks[ranks.notna()].to_numpy(), 20)


def _fit(seed, train, features, **params):
    model = ParallelRNNRecommender(n_epochs=6, device="cpu", random_state=seed, **params)
    return model.fit(train, item_features={"topic": features})


@pytest.mark.slow
def test_feature_subnet_reads_noisy_features():
    """With in-batch negatives only, the feature subnet memorises each item's noise (the
    rare items' output rows are only ever pulled towards the states of the clicks before
    them): far above its test accuracy on the training sessions. Sampled negatives (the
    default) push those rows back, and feature-only then beats ID-only."""
    found = {key: [] for key in ("id", "feature", "paper_feature", "paper_train",
                                 "interleaving")}
    for seed in (0, 1):
        train, test, features = _noisy(seed, 1.0)
        found["id"].append(_mrr(_fit(seed, train, features, architecture="id"), test))
        found["feature"].append(_mrr(_fit(seed, train, features, architecture="feature"),
                                     test))
        paper = _fit(seed, train, features, architecture="feature", n_sample=0)
        found["paper_feature"].append(_mrr(paper, test))
        last = train[train["SessionId"].isin(train["SessionId"].unique()[-800:])]
        found["paper_train"].append(_mrr(paper, last))
        train, test, features = _noisy(seed, 2.0)
        found["interleaving"].append(
            _mrr(_fit(seed, train, features, training="interleaving"), test)
            / _mrr(_fit(seed, train, features, architecture="id"), test))
    mean = {key: float(np.mean(value)) for key, value in found.items()}
    assert mean["paper_train"] > 2 * mean["paper_feature"], mean  # memorised
    assert mean["feature"] > 1.3 * mean["paper_feature"], mean
    assert mean["feature"] > 1.1 * mean["id"], mean
    # Noise of twice the signal's norm: the parallel p-RNN still gains over ID-only.
    assert mean["interleaving"] > 1.03, mean


def _cold_split(seed: int, share: float = 0.05):
    """The noisy regime with a random ``share`` of the items (popular ones too) removed
    from the training events: they have features, but no event to learn from."""
    train, test, features = _noisy(seed, 1.0, n_items=4000, n_sessions=4000)
    rng = np.random.default_rng(seed + 7)
    cold = rng.choice(features.index.to_numpy(), size=int(share * len(features)),
                      replace=False)
    train = train[~train["ItemId"].isin(cold)]
    train = train[train.groupby("SessionId")["ItemId"].transform("size") >= 2]
    return train, test, features, cold


@pytest.mark.slow
def test_feature_output_recommends_items_never_seen_in_training():
    recalls, known_ratio = [], []
    for seed in (0, 1):
        train, test, features, cold = _cold_split(seed)
        plain = _fit(seed, train, features, architecture="feature")
        model = _fit(seed, train, features, architecture="feature", feature_output=True)
        assert not plain.item_index_.labels.isin(cold).any()
        assert model.item_index_.labels.isin(cold).sum() == len(cold)
        assert (model.item_support_.loc[cold] == 0).all()
        ranks = model.rank_next_items(test)
        is_cold = test.loc[ranks.index, "ItemId"].isin(cold).to_numpy()
        assert is_cold.sum() > 50
        recalls.append(recall_at_k(ranks.to_numpy()[is_cold], 20))
        # Items seen in training lose little to the feature output.
        plain_ranks = plain.rank_next_items(test).loc[ranks.index].to_numpy()
        seen = ~np.isnan(plain_ranks)
        known_ratio.append(mrr_at_k(ranks.to_numpy()[seen], 20)
                           / mrr_at_k(plain_ranks[seen], 20))
        top = model.predict_next(test, k=20)
        assert np.isin(top, cold).any()
    n_items = len(features)
    assert np.mean(recalls) > 10 * 20 / n_items, recalls  # 10x a random ranking
    assert np.mean(known_ratio) > 0.9, known_ratio


def _small(seed=0, n_items=60):
    events, features = make_sessions(n_sessions=150, n_items=n_items, n_topics=5,
                                     random_state=seed, return_item_features=True)
    return events, features


def test_feature_output_scores_cold_items_by_their_features_alone():
    events, features = _small()
    events = events[events["ItemId"] < 50]  # items 50..59: features only
    model = ParallelRNNRecommender(hidden_size=8, n_epochs=1, feature_output=True,
                                   device="cpu", random_state=0)
    model.fit(events, item_features={"topic": features})
    known = events["ItemId"].nunique()
    assert model.n_items_ == 60
    assert model.item_index_.labels[known:].tolist() == sorted(
        set(range(60)) - set(events["ItemId"]))
    network = model.network_
    assert network.n_known == known
    for name in ("s0_onehot", "s0_out", "s1_out"):
        assert torch.count_nonzero(getattr(network, name)[known:]) == 0, name
    # Their scores are the feature part: they differ between cold items.
    scores = network.scoring_matrix()[:, known:]
    assert torch.unique(scores[-1]).numel() > 1
    # Clicking a cold item is understood (its features), and it can be recommended.
    session = pd.DataFrame({"SessionId": [999, 999], "ItemId": [55, 57],
                            "Time": [1.0, 2.0]})
    assert model.predict_next(session, k=60).shape == (1, 60)
    assert np.isfinite(model.rank_next_items(session).to_numpy()).all()


@pytest.mark.parametrize("architecture", ["feature", "concat", "parallel", "interaction"])
@pytest.mark.parametrize("sparse", [False, True])
def test_feature_output_trains_every_architecture_that_has_it(architecture, sparse):
    events, features = _small()
    given = (ItemFeatures(features.index, sp.csr_matrix(np.maximum(features.to_numpy(), 0)))
             if sparse else features)
    params = dict(architecture=architecture, hidden_size=8, n_epochs=2, device="cpu",
                  random_state=0)
    model = ParallelRNNRecommender(feature_output=True, **params)
    model.fit(events, item_features={"topic": given})
    before = [s for s in ParallelRNNRecommender(**params).fit(
        events, item_features={"topic": given}).history_]
    assert np.isfinite([h["loss"] for h in model.history_]).all()
    assert [h["loss"] for h in model.history_] != [h["loss"] for h in before]
    # The feature part learned something: Q is no longer zero.
    network = model.network_
    q = [p for name, p in network.named_parameters() if "_oq" in name]
    q += [network.views(i)[name] for i in range(len(network.subnets))
          for name in network.views(i) if name.startswith("q")]
    assert q and all(torch.count_nonzero(t) > 0 for t in q)
    again = pickle.loads(pickle.dumps(model))
    session = events[events["SessionId"] == 3]
    np.testing.assert_array_equal(again.predict_next(session, k=5),
                                  model.predict_next(session, k=5))
    repeat = ParallelRNNRecommender(feature_output=True, **params).fit(
        events, item_features={"topic": given})
    assert [h["loss"] for h in repeat.history_] == [h["loss"] for h in model.history_]


@pytest.mark.parametrize("architecture", ["id", "shared_w"])
def test_feature_output_refuses_architectures_without_it(architecture):
    events, features = _small()
    model = ParallelRNNRecommender(architecture=architecture, feature_output=True,
                                   hidden_size=8, n_epochs=1, device="cpu")
    with pytest.raises(ValueError, match="feature_output"):
        model.fit(events, item_features={"topic": features})
    assert not hasattr(model, "network_")


def test_feature_output_is_off_by_default_and_leaves_the_index_alone():
    events, features = _small()
    events = events[events["ItemId"] < 50]
    model = ParallelRNNRecommender(hidden_size=8, n_epochs=1, device="cpu", random_state=0)
    model.fit(events, item_features={"topic": features})
    assert not model.feature_output
    assert model.n_items_ == events["ItemId"].nunique()


@pytest.mark.parametrize("value", [-0.1, 1.0, "x"])
def test_output_id_dropout_is_validated(value):
    events, features = _small()
    model = ParallelRNNRecommender(output_id_dropout=value, n_epochs=1, device="cpu")
    with pytest.raises(ValueError, match="output_id_dropout"):
        model.fit(events, item_features={"topic": features})


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_negative_sampler_never_draws_items_without_events(alpha):
    support = np.array([5, 0, 3, 0, 1])
    sampler = NegativeSampler(support, alpha, 64, 64 * 50, torch.device("cpu"),
                              torch.Generator().manual_seed(0))
    drawn = torch.cat([sampler.next() for _ in range(20)])
    assert set(drawn.tolist()) == {0, 2, 4}
    # Draws at the very top of the distribution stay on an item with events.
    assert sampler.draw(torch.tensor([0.0, 0.999999, 1 - 1e-12], dtype=torch.float64)
                        ).tolist()[1:] == [4, 4]


def test_interleaving_early_stopping_leaves_out_a_subnet_that_does_not_help(monkeypatch):
    """Interleaving trains subnet k on the merged scores of 0..k, so each prefix is a
    model: early stopping scores every prefix after each epoch and keeps the best
    (epoch, prefix). Here validation is rigged so that the ID subnet alone scores best
    in epoch 2."""
    events, features = make_sessions(n_sessions=200, n_items=60, random_state=0,
                                     return_item_features=True)
    calls = []

    def rigged(self, network, validation):
        alone = network.active == [True, False]
        epoch = len(calls) // 2 + 1  # two prefixes scored per epoch
        calls.append((epoch, alone))
        return 0.5 + (0.2 if alone and epoch == 2 else 0.0) + 0.01 * epoch

    monkeypatch.setattr(ParallelRNNRecommender, "_validation_mrr", rigged)
    model = ParallelRNNRecommender(training="interleaving", early_stopping=True,
                                   hidden_size=8, n_epochs=3, device="cpu", random_state=0)
    model.fit(events, item_features={"topic": features})
    assert calls[:6] == [(1, True), (1, False), (2, True), (2, False), (3, True),
                         (3, False)]
    assert model.subnet_active_ == {"id": True, "topic": False}
    assert model.best_epoch_ == 2 and model.best_validation_score_ == pytest.approx(0.72)
    # Scoring follows: the left-out subnet's output table is not in the scoring matrix.
    assert model.network_.scoring_matrix().shape[0] == 8 + 1
