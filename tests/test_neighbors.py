"""Item-KNN: the definition by hand, against an independent dense implementation, rsc15."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from sessionrec import ItemKNNRecommender
from sessionrec.datasets import make_sessions
from sessionrec.evaluation import evaluate
from sessionrec.models._item_matrix import top_k_per_row


def dense_reference(train: pd.DataFrame, n_neighbors=100, shrink=20.0, alpha=0.5):
    """Independent Item-KNN: dense co-occurrence of the session x item count matrix."""
    items = np.sort(train["ItemId"].unique())
    sessions = train["SessionId"].unique()
    code = pd.Series(np.arange(len(items)), index=items)
    row = pd.Series(np.arange(len(sessions)), index=sessions)
    counts = np.zeros((len(sessions), len(items)))
    np.add.at(counts, (row[train["SessionId"]].to_numpy(), code[train["ItemId"]].to_numpy()), 1)
    cooc = counts.T @ counts
    np.fill_diagonal(cooc, 0.0)
    support = counts.sum(axis=0) + shrink
    sim = cooc / np.outer(support ** alpha, support ** (1 - alpha))
    kept = np.zeros_like(sim)
    for i in range(len(items)):
        nonzero = np.flatnonzero(sim[i] > 0)
        best = nonzero[np.argsort(-sim[i, nonzero], kind="stable")][:n_neighbors]
        kept[i, best] = sim[i, best]
    return items, kept


def test_similarity_by_hand():
    # Sessions: (a, b), (a, c), (b, c, c). Supports: a=2, b=2, c=3.
    X = pd.DataFrame({"SessionId": [1, 1, 2, 2, 3, 3, 3], "ItemId": list("abacbcc"),
                      "Time": range(7)})
    knn = ItemKNNRecommender(shrink=0.0, alpha=0.5, device="cpu").fit(X)
    sim = knn.item_matrix_.toarray()
    # cooc(b, c) = 1 * 2 (session 3 has c twice); normalised by sqrt(2 * 3).
    assert sim[1, 2] == pytest.approx(2 / np.sqrt(6))
    assert sim[0, 1] == pytest.approx(1 / 2)
    assert np.all(np.diag(sim) == 0)


def test_matches_dense_reference():
    train = make_sessions(n_sessions=400, n_items=60, random_state=3)
    knn = ItemKNNRecommender(n_neighbors=7, device="cpu").fit(train)
    items, expected = dense_reference(train, n_neighbors=7)
    assert list(knn.item_index_.labels) == list(items)
    np.testing.assert_allclose(knn.item_matrix_.toarray(), expected, rtol=1e-12, atol=1e-15)
    assert np.diff(knn.item_matrix_.indptr).max() <= 7


def test_recommends_neighbours_of_the_last_item():
    train = make_sessions(n_sessions=400, n_items=60, random_state=3)
    knn = ItemKNNRecommender(n_neighbors=5, device="cpu").fit(train)
    live = pd.DataFrame({"SessionId": [1, 1], "ItemId": [3, 7], "Time": [0, 1]})
    recs, scores = knn.predict_next(live, k=5, return_scores=True)
    row = knn.item_matrix_[knn.item_index_.encode([7])[0]].toarray()[0]
    expected = knn.item_index_.decode(np.argsort(-row, kind="stable")[:5])
    assert set(recs.iloc[0]) == set(expected[row[np.argsort(-row)[:5]] > 0])
    np.testing.assert_allclose(scores.iloc[0].to_numpy(), np.sort(row)[::-1][:5], rtol=1e-6)


def test_top_k_per_row_keeps_the_largest():
    rng = np.random.default_rng(0)
    dense = rng.random((20, 30)) * (rng.random((20, 30)) < 0.4)
    kept = top_k_per_row(sp.csr_matrix(dense), 3).toarray()
    for r in range(20):
        nz = np.flatnonzero(dense[r])
        best = nz[np.argsort(-dense[r, nz])][:3]
        assert set(np.flatnonzero(kept[r])) == set(best)


@pytest.mark.parametrize("param,value", [("n_neighbors", 0), ("shrink", -1.0),
                                         ("alpha", 1.5)])
def test_bad_parameters(param, value, train_test):
    with pytest.raises(ValueError, match=param):
        ItemKNNRecommender(**{param: value}, device="cpu").fit(train_test[0])


def reference_metrics(train, test, n_neighbors=100):
    items, sim = dense_reference(train, n_neighbors=n_neighbors)
    code = {item: i for i, item in enumerate(items)}
    test = test[test["ItemId"].isin(code)].sort_values(["SessionId", "Time"], kind="stable")
    ranks = []
    for _, session in test.groupby("SessionId", sort=False):
        seq = [code[i] for i in session["ItemId"]]
        for prev, target in zip(seq[:-1], seq[1:]):
            scores = sim[prev]
            ranks.append((scores >= scores[target]).sum())
    ranks = np.array(ranks, dtype=float)
    return (ranks <= 20).mean(), np.where(ranks <= 20, 1 / ranks, 0).mean()


@pytest.mark.realdata
@pytest.mark.slow
def test_rsc15_against_independent_implementation(rsc15):
    train, test = rsc15
    result = evaluate(ItemKNNRecommender(device="cpu").fit(train), test, cutoffs=[20])
    recall, mrr = reference_metrics(train, test)
    assert abs(result["recall@20"] - recall) < 0.005
    assert abs(result["mrr@20"] - mrr) < 0.005


def assert_loop_scores(model, got: dict, expected: dict, **tolerance) -> None:
    """``got`` (item -> score, from predict_next) has the loop's scores for the items the
    loop scores, and every other item the documented fallback: below all of them, in
    order of popularity, ``support / (max support + 1) - 1`` in float32."""
    support = model.item_support_
    below = (support / (support.max() + 1.0) - 1.0).astype(np.float32)
    for item in model.item_index_.labels:
        if item in expected:
            assert got[item] == pytest.approx(expected[item], **tolerance), item
        else:
            assert got[item] == below[item], item


def loop_rules(train: pd.DataFrame, steps: int, n_rules):
    """Independent sequential rules: a plain loop over every session, as session-rec."""
    from collections import defaultdict

    rules = defaultdict(float)
    ordered = train.sort_values(["SessionId", "Time"], kind="stable")
    for _, session in ordered.groupby("SessionId", sort=False):
        seq = session["ItemId"].tolist()
        for pos, item in enumerate(seq):
            for back in range(1, min(steps, pos) + 1):
                rules[(seq[pos - back], item)] += 1.0 / back
    if n_rules is not None:
        by_item = defaultdict(list)
        for (a, b), w in rules.items():
            by_item[a].append((w, b))
        rules = {(a, b): w for a, lst in by_item.items()
                 for w, b in sorted(lst, key=lambda t: (-t[0], t[1]))[:n_rules]}
    return rules


@pytest.mark.parametrize("steps,n_rules", [(1, None), (3, None), (10, 4)])
def test_sequential_rules_match_a_loop(steps, n_rules):
    from sessionrec import MarkovRecommender, SequentialRulesRecommender

    train = make_sessions(n_sessions=200, n_items=30, random_state=5)
    sr = SequentialRulesRecommender(steps=steps, n_rules=n_rules, device="cpu").fit(train)
    matrix = sr.item_matrix_.toarray()
    labels = sr.item_index_.labels
    got = {(labels[a], labels[b]): matrix[a, b] for a, b in zip(*np.nonzero(matrix))}
    expected = loop_rules(train, steps, n_rules)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value)
    if steps == 1:  # one step back and no pruning: the Markov transition counts
        markov = MarkovRecommender(device="cpu").fit(train).item_matrix_.toarray()
        np.testing.assert_allclose(markov, matrix)


def test_rules_bad_parameters(train_test):
    from sessionrec import SequentialRulesRecommender

    with pytest.raises(ValueError, match="steps"):
        SequentialRulesRecommender(steps=0, device="cpu").fit(train_test[0])
    with pytest.raises(TypeError, match="n_rules"):
        SequentialRulesRecommender(n_rules=2.5, device="cpu").fit(train_test[0])


def loop_sknn_scores(train: pd.DataFrame, prefix_items: list, k: int, sample_size,
                     similarity: str) -> dict:
    """SKNN as session-rec computes it, one session at a time (the independent check)."""
    ordered = train.sort_values(["SessionId", "Time"], kind="stable")
    items_of = ordered.groupby("SessionId")["ItemId"].agg(set).to_dict()
    end_of = ordered.groupby("SessionId")["Time"].max().to_dict()
    start_of = ordered.groupby("SessionId")["Time"].min().to_dict()
    current = set(prefix_items)
    candidates = [s for s, items in items_of.items() if items & current]
    if sample_size is not None and len(candidates) > sample_size:
        candidates = sorted(candidates, key=lambda s: -end_of[s])[:sample_size]
    sims = []
    for s in candidates:
        inter = len(items_of[s] & current)
        if similarity == "jaccard":
            sim = inter / len(items_of[s] | current)
        else:
            sim = inter / np.sqrt(len(items_of[s]) * len(current))
        sims.append((sim, s))
    # Ties in similarity: the session that started earlier first (the documented rule;
    # session-rec leaves it to set iteration order).
    neighbours = sorted(sims, key=lambda t: (-t[0], start_of[t[1]]))[:k]
    scores = {}
    for sim, s in neighbours:
        for item in items_of[s]:
            scores[item] = scores.get(item, 0.0) + sim
    return scores


@pytest.mark.parametrize("k,sample_size,similarity", [(100, None, "jaccard"),
                                                      (5, 20, "jaccard"), (7, 30, "cosine")])
def test_sknn_matches_a_loop(k, sample_size, similarity):
    from sessionrec import SKNNRecommender

    events = make_sessions(n_sessions=300, n_items=40, random_state=4)
    train = events[events["SessionId"] < 250]
    test = events[events["SessionId"] >= 250]
    sknn = SKNNRecommender(k=k, sample_size=sample_size, similarity=similarity,
                           device="cpu").fit(train)
    for session in test["SessionId"].unique()[:10]:
        rows = test[test["SessionId"] == session].sort_values("Time")
        prefix = rows.iloc[:2]
        expected = loop_sknn_scores(train, prefix["ItemId"].tolist(), k, sample_size,
                                    similarity)
        _, scores = sknn.predict_next(prefix, k=sknn.n_items_, return_scores=True)
        items, _ = sknn.predict_next(prefix, k=sknn.n_items_, return_scores=True)
        got = dict(zip(items.iloc[0], scores.iloc[0]))
        assert_loop_scores(sknn, got, expected, abs=1e-6)


def test_sknn_bad_parameters(train_test):
    from sessionrec import SKNNRecommender

    with pytest.raises(ValueError, match="similarity"):
        SKNNRecommender(similarity="dice", device="cpu").fit(train_test[0])
    with pytest.raises(ValueError, match="sample_size"):
        SKNNRecommender(sample_size=0, device="cpu").fit(train_test[0])


def loop_vsknn_scores(train: pd.DataFrame, prefix_items: list, k: int, sample_size) -> dict:
    """V-SKNN as session-rec's VMContextKNN computes it (div weights), one session at a time;
    similarity ties go to the earlier-starting session, the documented rule."""
    ordered = train.sort_values(["SessionId", "Time"], kind="stable")
    items_of = ordered.groupby("SessionId")["ItemId"].agg(set).to_dict()
    end_of = ordered.groupby("SessionId")["Time"].max().to_dict()
    start_of = ordered.groupby("SessionId")["Time"].min().to_dict()
    length = len(prefix_items)
    pos_map = {item: (count + 1) / length for count, item in enumerate(prefix_items)}
    current = set(prefix_items)
    candidates = [s for s, items in items_of.items() if items & current]
    if sample_size is not None and len(candidates) > sample_size:
        candidates = sorted(candidates, key=lambda s: -end_of[s])[:sample_size]
    sims = [(sum(pos_map[i] for i in current & items_of[s]) / len(pos_map), s)
            for s in candidates]
    neighbours = sorted(sims, key=lambda t: (-t[0], start_of[t[1]]))[:k]
    scores = {}
    for sim, s in neighbours:
        step = 1
        for item in reversed(prefix_items):
            if item in items_of[s]:
                break
            step += 1
        for item in items_of[s]:
            scores[item] = scores.get(item, 0.0) + sim / step
    return scores


@pytest.mark.parametrize("k,sample_size", [(100, None), (5, 20), (8, 40)])
def test_vsknn_matches_a_loop(k, sample_size):
    from sessionrec import VSKNNRecommender

    events = make_sessions(n_sessions=300, n_items=40, random_state=4)
    train = events[events["SessionId"] < 250]
    test = events[events["SessionId"] >= 250]
    model = VSKNNRecommender(k=k, sample_size=sample_size, device="cpu").fit(train)
    for session in test["SessionId"].unique()[:10]:
        rows = test[test["SessionId"] == session].sort_values("Time")
        prefix = rows.iloc[:3]
        expected = loop_vsknn_scores(train, prefix["ItemId"].tolist(), k, sample_size)
        items, scores = model.predict_next(prefix, k=model.n_items_, return_scores=True)
        got = dict(zip(items.iloc[0], scores.iloc[0]))
        assert_loop_scores(model, got, expected, abs=1e-6)


def test_vsknn_bad_parameters(train_test):
    from sessionrec import VSKNNRecommender

    with pytest.raises(ValueError, match="position_weighting"):
        VSKNNRecommender(position_weighting="cubic", device="cpu").fit(train_test[0])
    with pytest.raises(ValueError, match="score_weighting"):
        VSKNNRecommender(score_weighting="exp", device="cpu").fit(train_test[0])


def loop_stan_scores(train: pd.DataFrame, prefix: pd.DataFrame, k: int, sample_size,
                     spw=1.02, snh=5.0, inh=2.05) -> dict:
    """STAN as session-rec computes it, one session at a time (ties: earlier start)."""
    from math import exp, sqrt

    ordered = train.sort_values(["SessionId", "Time"], kind="stable")
    lists = ordered.groupby("SessionId")["ItemId"].agg(list).to_dict()
    end_of = ordered.groupby("SessionId")["Time"].max().to_dict()
    start_of = ordered.groupby("SessionId")["Time"].min().to_dict()
    items = prefix["ItemId"].tolist()
    now = prefix["Time"].iloc[-1]
    pos_map = {item: exp((p + 1 - len(items)) / spw) for p, item in enumerate(items)}
    current = set(items)
    candidates = [s for s, lst in lists.items() if set(lst) & current]
    if sample_size is not None and len(candidates) > sample_size:
        candidates = sorted(candidates, key=lambda s: -end_of[s])[:sample_size]
    sims = []
    for s in candidates:
        neighbour = set(lists[s])
        shared = sum(pos_map[i] for i in current & neighbour)
        norm = sqrt(sum(w * w for w in pos_map.values()))
        sim = shared / (norm * sqrt(len(neighbour))) * exp(-max(now - end_of[s], 0) / (snh * 86400))
        sims.append((sim, s))
    neighbours = sorted(sims, key=lambda t: (-t[0], start_of[t[1]]))[:k]
    scores = {}
    for sim, s in neighbours:
        last = {}
        anchor = None
        for i, item in enumerate(lists[s]):
            if item in current:
                anchor = i + 1
            last[item] = i + 1
        for item, pos in last.items():
            scores[item] = scores.get(item, 0.0) + sim * exp(-abs(pos - anchor) / inh)
    return scores


@pytest.mark.parametrize("k,sample_size", [(100, None), (5, 20), (8, 40)])
def test_stan_matches_a_loop(k, sample_size):
    from sessionrec import STANRecommender

    events = make_sessions(n_sessions=300, n_items=40, span_days=20, random_state=4)
    train = events[events["SessionId"] < 250]
    test = events[events["SessionId"] >= 250]
    model = STANRecommender(k=k, sample_size=sample_size, device="cpu").fit(train)
    for session in test["SessionId"].unique()[:10]:
        rows = test[test["SessionId"] == session].sort_values("Time")
        prefix = rows.iloc[:3]
        expected = loop_stan_scores(train, prefix, k, sample_size)
        items, scores = model.predict_next(prefix, k=model.n_items_, return_scores=True)
        got = dict(zip(items.iloc[0], scores.iloc[0]))
        assert_loop_scores(model, got, expected, rel=1e-5, abs=1e-7)


def test_stan_bad_parameters(train_test):
    from sessionrec import STANRecommender

    with pytest.raises(ValueError, match="lambda_snh"):
        STANRecommender(lambda_snh=0.0, device="cpu").fit(train_test[0])


def test_top_k_ties_keep_the_first_columns():
    from sessionrec.models._item_matrix import top_k_keep

    values = np.array([1.0, 3.0, 3.0, 2.0, 3.0,   5.0, 5.0, 5.0], dtype=np.float64)
    indptr = np.array([0, 5, 8])
    keep, new_indptr = top_k_keep(indptr, values, 2)
    assert keep.tolist() == [False, True, True, False, False, True, True, False]
    assert new_indptr.tolist() == [0, 2, 4]
    keep, _ = top_k_keep(indptr, values, 4)
    assert keep.tolist() == [False, True, True, True, True, True, True, True]


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(0, 40), min_size=1, max_size=12),
       k=st.integers(1, 12), n_values=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_top_k_keep_is_a_stable_sort(lengths, k, n_values, seed):
    # Rows of very unequal lengths (several padding classes) with many ties: the kept
    # entries are exactly the first k of each row under a stable descending sort.
    from sessionrec.models._item_matrix import top_k_keep

    rng = np.random.default_rng(seed)
    indptr = np.r_[0, np.cumsum(lengths)]
    values = rng.integers(0, n_values, indptr[-1]).astype(np.float64)
    keep, new_indptr = top_k_keep(indptr, values, k)
    expected = np.zeros(len(values), dtype=bool)
    for start, stop in zip(indptr[:-1], indptr[1:]):
        order = np.argsort(-values[start:stop], kind="stable")[:k]
        expected[start + order] = True
    assert keep.tolist() == expected.tolist()
    assert new_indptr.tolist() == np.r_[0, np.cumsum(np.minimum(lengths, k))].tolist()


@pytest.mark.parametrize("name", ["SKNNRecommender", "VSKNNRecommender", "STANRecommender"])
def test_threaded_scoring_equals_serial(name, train_test, monkeypatch):
    import torch

    import sessionrec
    from sessionrec import _base

    train, test = train_test
    monkeypatch.setitem(_base._SCORE_BLOCK_VALUES, "cpu", 50 * train["ItemId"].nunique())
    model = getattr(sessionrec, name)(k=20, sample_size=50, device="cpu").fit(train)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        threaded = model.rank_next_items(test)
        assert len(test) > 200  # so many blocks are in flight at once
        assert torch.get_num_threads() == 2  # restored after the worker threads
        torch.set_num_threads(1)
        serial = model.rank_next_items(test)
    finally:
        torch.set_num_threads(threads)
    pd.testing.assert_series_equal(threaded, serial)


def test_map_blocks_propagates_errors_and_restores_threads():
    import torch

    from sessionrec._base import SessionRecommender

    def score(block):
        if block[0] == 3:
            raise RuntimeError("block 3 failed")
        return block * 2

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        blocks = [np.array([i]) for i in range(6)]
        with pytest.raises(RuntimeError, match="block 3 failed"):
            list(SessionRecommender._map_blocks(score, blocks))
        assert torch.get_num_threads() == 2
        out = list(SessionRecommender._map_blocks(score, blocks[:3]))
        assert [b.tolist() + s.tolist() for b, s in out] == [[0, 0], [1, 2], [2, 4]]
    finally:
        torch.set_num_threads(threads)
