"""p-RNN benchmarks: planted item-feature signal, rare items, and memory with wide sparse features.

Sections (``--section``):

* ``planted``: ``make_sessions(n_sessions=3000, n_items=3000, popularity_exponent=0.5,
  transition_strength=0.2, n_topics=30, feature_noise=0.2)``: a long tail of rare items
  whose features (one-hot topic + noise) tell the session's topic, which the free draws
  follow. The last 3 days are the test set; all items ranked, conservative ties; means
  over seeds 0-2. Models: ID-only GRU (5 and 10 epochs: residual training runs 5 epochs
  per subnet) and the parallel p-RNN with each training strategy (5 epochs; residual: 5
  per subnet), all with 50 units per subnet and the paper's TOP1 with in-batch negatives.
  Each p-RNN is run with the informative features and with *uninformative* ones (the same
  vectors given to random other items). Two residual variants: 5 ID epochs then 1
  feature epoch; and 10 epochs per subnet with ``early_stopping`` (each subnet keeps its
  best epoch on the last 10% of the training sessions, or is left out if none helps),
  refit on all training sessions for the chosen epochs (the default) or not.
  The last columns split Recall@20 by the target item's and by the previous click's
  training support: below the median item support ("rare") or not.
* ``speed``: train events/s of the same ID-only network (one-hot input, TOP1, batch 50)
  in ``GRU4RecRecommender`` (hand-written backward pass) and ``ParallelRNNRecommender``
  (autograd), and of the parallel p-RNN with a dense and with a sparse feature set, on
  ``make_sessions`` data (20,000 sessions, 3,000 items).
* ``memory``: one 100,000-column sparse feature set (10 non-zeros per item) over 50,000
  items, one epoch of the parallel p-RNN; prints train events/s and the peak RSS.

Usage: ``python benchmarks/bench_prnn.py [--section planted,speed,memory] [--seeds 3]``
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import pandas as pd
import scipy.sparse as sp

from sessionrec import GRU4RecRecommender, ParallelRNNRecommender
from sessionrec.datasets import make_sessions
from sessionrec.metrics import mrr_at_k, recall_at_k
from sessionrec.model_selection import TimeSplit, train_test_split
from sessionrec.preprocessing import ItemFeatures

PLANTED = dict(n_sessions=3000, n_items=3000, popularity_exponent=0.5,
               transition_strength=0.2, n_topics=30, feature_noise=0.2)
COMMON = dict(hidden_size=50, device="cpu")


def _metrics(model, test) -> dict:
    ranks = model.rank_next_items(test)
    ranks = ranks[ranks.notna()]
    support = model.item_support_
    target_support = support.reindex(test.loc[ranks.index, "ItemId"]).to_numpy()
    rare = target_support < np.median(support.to_numpy())
    # The item clicked just before each target (test is sorted by session and time).
    previous = test["ItemId"].shift(1).loc[ranks.index]
    after_rare = support.reindex(previous).fillna(0).to_numpy() < np.median(support)
    values = ranks.to_numpy()
    return {"Recall@20": recall_at_k(values, 20), "MRR@20": mrr_at_k(values, 20),
            "R@20 rare target": recall_at_k(values[rare], 20),
            "R@20 frequent target": recall_at_k(values[~rare], 20),
            "R@20 after rare click": recall_at_k(values[after_rare], 20),
            "R@20 after frequent click": recall_at_k(values[~after_rare], 20)}


def planted(seeds: int) -> None:
    runs = [("ID only, 5 epochs", dict(architecture="id", n_epochs=5), None),
            ("ID only, 10 epochs", dict(architecture="id", n_epochs=10), None),
            ("ID only, 10 epochs, early stopping",
             dict(architecture="id", n_epochs=10, early_stopping=True), None),
            ("ID only, 10 epochs, early stopping, no refit",
             dict(architecture="id", n_epochs=10, early_stopping=True, refit=False), None)]
    for kind in ("informative", "uninformative"):
        for training in ("simultaneous", "alternating", "residual", "interleaving"):
            runs.append((f"parallel ({training}), {kind}",
                         dict(training=training, n_epochs=5), kind))
        runs.append((f"parallel (residual, 1 feature epoch), {kind}",
                     dict(training="residual", n_epochs=5, subnet_epochs={"topic": 1}), kind))
        runs.append((f"parallel (residual, early stopping), {kind}",
                     dict(training="residual", n_epochs=10, early_stopping=True), kind))
        runs.append((f"parallel (residual, early stopping, no refit), {kind}",
                     dict(training="residual", n_epochs=10, early_stopping=True,
                          refit=False), kind))
    rows = {name: [] for name, _, _ in runs}
    for seed in range(seeds):
        events, features = make_sessions(random_state=seed, return_item_features=True,
                                         **PLANTED)
        shuffled = features.set_axis(np.random.default_rng(100 + seed).permutation(
            features.index))
        train, test = train_test_split(events, splitter=TimeSplit(3))
        for name, params, kind in runs:
            model = ParallelRNNRecommender(random_state=seed, **COMMON, **params)
            given = {"informative": features, "uninformative": shuffled}.get(kind)
            model.fit(train, item_features=None if given is None else {"topic": given})
            rows[name].append(_metrics(model, test))
    table = pd.DataFrame({name: pd.DataFrame(r).mean() for name, r in rows.items()}).T
    base = table.loc[["ID only, 5 epochs", "ID only, 10 epochs"], "MRR@20"].max()  # full data
    table["MRR@20 vs best ID"] = (table["MRR@20"] / base - 1.0).map("{:+.1%}".format)
    print(f"\n## planted item-feature signal (mean of {seeds} seeds)\n")
    print(table.round(4).to_string())


def speed(epochs: int = 2) -> None:
    """Training throughput of the same ID-only network in GRU4RecRecommender (hand-written
    backward pass) and in ParallelRNNRecommender (autograd), and of p-RNNs with features."""
    events, features = make_sessions(n_sessions=20_000, n_items=3000, random_state=0,
                                     return_item_features=True, **{
                                         k: v for k, v in PLANTED.items()
                                         if k not in ("n_sessions", "n_items")})
    sparse = ItemFeatures(features.index, sp.csr_matrix(
        np.where(features.to_numpy() > 0.5, features.to_numpy(), 0.0).astype(np.float32)))
    shared = dict(loss="top1", batch_size=50, learning_rate=0.05, momentum=0.0,
                  n_sample=0, dropout_p_hidden=0.0, n_epochs=epochs, device="cpu",
                  random_state=0)
    runs = [("GRU4Rec, one-hot ID", GRU4RecRecommender(
                layers=(100,), constrained_embedding=False, embedding=0, **shared), None),
            ("p-RNN id", ParallelRNNRecommender(architecture="id", hidden_size=100,
                                                **shared), None),
            ("p-RNN parallel, dense features", ParallelRNNRecommender(
                training="simultaneous", hidden_size=100, **shared), {"topic": features}),
            ("p-RNN parallel, sparse features", ParallelRNNRecommender(
                training="simultaneous", hidden_size=100, **shared), {"topic": sparse})]
    rows = []
    for name, model, given in runs:
        if given is None:
            model.fit(events)
        else:
            model.fit(events, item_features=given)
        last = model.history_[-1]  # the first epoch includes one-off warm-up costs
        rows.append({"model": name, "train events/s": last["events_per_s"],
                     "mini-batches/s": last["batches_per_s"]})
    print(f"\n## training speed ({len(events):,} events, 3,000 items, 100 units per "
          f"subnet, TOP1, batch 50, in-batch negatives; epoch {epochs} of {epochs})\n")
    print(pd.DataFrame(rows).round(0).to_string(index=False))


def memory(n_items=50_000, n_columns=100_000, nnz=10) -> None:
    events = make_sessions(n_sessions=40_000, n_items=n_items, random_state=0)
    rng = np.random.default_rng(0)
    columns = rng.integers(0, n_columns, size=(n_items, nnz)).ravel()
    rows = np.repeat(np.arange(n_items), nnz)
    matrix = sp.csr_matrix((rng.random(len(rows)).astype(np.float32), (rows, columns)),
                           shape=(n_items, n_columns))
    features = ItemFeatures(pd.Index(np.arange(n_items)), matrix)
    model = ParallelRNNRecommender(n_epochs=1, hidden_size=100, random_state=0,
                                   device="cpu")
    start = time.perf_counter()
    model.fit(events, item_features={"text": features})
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    record = model.history_
    print("\n## wide sparse features\n")
    print(pd.DataFrame([{
        "items": n_items, "feature columns": n_columns, "events": len(events),
        "train events/s (mean)": np.mean([r["events_per_s"] for r in record]),
        "fit seconds": seconds, "peak RSS MB": peak}]).round(1).to_string(index=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--section", default="planted,speed,memory")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    sections = args.section.split(",")
    if "planted" in sections:
        planted(args.seeds)
    if "speed" in sections:
        speed()
    if "memory" in sections:
        memory()


if __name__ == "__main__":
    main()
