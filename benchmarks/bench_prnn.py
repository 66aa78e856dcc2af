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
* ``noisy``: noisy dense features on a long tail (the regime of issue 25):
  ``make_sessions(n_items=10_000, n_sessions=5000, n_topics=50, transition_strength=0,
  topic_strength=0.6, feature_noise=r / sqrt(50))``: Zipf popularity inside each of
  50 categories, about 22,000 training events, the next click in the current item's
  category with probability 0.6, and features = one-hot category + Gaussian noise with
  ``r`` times the signal's norm (r = 2 here). Last 3 days to test, 6 epochs, defaults
  otherwise (``n_sample=128``, ``sample_alpha=0.5``); the paper's in-batch negatives
  (``n_sample=0``) for comparison, clean and shuffled (uninformative) features, and the
  MRR@20 on the last 800 training sessions, to show memorisation. Then a sweep over
  the noise (none, 1x, 2x the signal) and the catalogue (2,000, 10,000 and 50,000
  items, about 2 to 4 training events per item), ID-only against feature-only and the
  parallel p-RNN (interleaving), one seed.
* ``cold``: the feature output (``feature_output=True``) on the noisy regime (1x noise,
  4,000 items) with a random 5% of the items removed from the training events: their
  Recall@20 as test targets (ranked among all items), and the MRR@20 of the targets
  seen in training, with and without the feature output.
* ``speed``: train events/s of the same ID-only network (one-hot input, TOP1, batch 50)
  in ``GRU4RecRecommender`` and ``ParallelRNNRecommender`` (both hand-written backward
  passes and the fused GRU step; p-RNN also with autograd, as it trained before), and
  of the parallel p-RNN with a dense and with a sparse feature set, on
  ``make_sessions`` data (20,000 sessions, 3,000 items).
* ``memory``: one 100,000-column sparse feature set (10 non-zeros per item) over 50,000
  items, one epoch of the parallel p-RNN; prints train events/s and the peak RSS.

Usage: ``python benchmarks/bench_prnn.py [--section planted,noisy,cold,speed,memory]
[--seeds 3]``
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
from sessionrec.nn._prnn_network import ParallelNetwork
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


N_TOPICS = 50


def _noisy_data(seed: int, noise_ratio: float, n_items: int = 10_000,
                n_sessions: int = 5000, kind: str = "noisy"):
    events, features = make_sessions(
        n_sessions=n_sessions, n_items=n_items, n_topics=N_TOPICS, transition_strength=0.0,
        topic_strength=0.6, feature_noise=(0.0 if kind == "clean" else noise_ratio)
        / np.sqrt(N_TOPICS), return_item_features=True, random_state=seed)
    if kind == "shuffled":
        features = features.set_axis(np.random.default_rng(100 + seed).permutation(
            features.index))
    train, test = train_test_split(events, splitter=TimeSplit(3))
    return train, test, features


def _mrr(model, events) -> float:
    ranks = model.rank_next_items(events)
    return mrr_at_k(ranks[ranks.notna()].to_numpy(), 20)


def noisy(seeds: int, sweep_seeds: int = 1) -> None:
    paper = dict(n_sample=0, sample_alpha=0.75)
    runs = [("ID only", dict(architecture="id"), "noisy"),
            ("ID only, in-batch negatives (paper)", dict(architecture="id", **paper),
             "noisy"),
            ("feature only", dict(architecture="feature"), "noisy"),
            ("feature only, in-batch negatives (paper)",
             dict(architecture="feature", **paper), "noisy"),
            ("feature only, clean one-hot features", dict(architecture="feature"),
             "clean"),
            ("feature only, shuffled features", dict(architecture="feature"), "shuffled")]
    for training in ("residual", "interleaving"):
        runs.append((f"parallel, {training}", dict(training=training), "noisy"))
    runs += [("parallel, interleaving, in-batch negatives (paper)",
              dict(training="interleaving", **paper), "noisy"),
             ("parallel, residual, early stopping", dict(training="residual",
                                                         early_stopping=True), "noisy"),
             ("parallel, residual, shuffled features", dict(training="residual"),
              "shuffled"),
             ("parallel, interleaving, shuffled features", dict(training="interleaving"),
              "shuffled"),
             ("parallel, residual, early stopping, shuffled features",
              dict(training="residual", early_stopping=True), "shuffled"),
             ("parallel, interleaving, early stopping, shuffled features",
              dict(training="interleaving", early_stopping=True), "shuffled")]
    rows = {name: [] for name, _, _ in runs}
    for name, params, kind in runs:
        for seed in range(seeds):
            train, test, features = _noisy_data(seed, 2.0, kind=kind)
            model = ParallelRNNRecommender(n_epochs=6, random_state=seed, device="cpu",
                                           **params)
            start = time.perf_counter()
            model.fit(train, item_features=None if params.get("architecture") == "id"
                      else {"topic": features})
            last = train[train["SessionId"].isin(train["SessionId"].unique()[-800:])]
            rows[name].append({"MRR@20": _mrr(model, test),
                               "MRR@20 train sessions": _mrr(model, last),
                               "fit s": time.perf_counter() - start})
        print(f"  {name}: MRR@20 {np.mean([r['MRR@20'] for r in rows[name]]):.4f}",
              flush=True)
    table = pd.DataFrame({name: pd.DataFrame(r).mean() for name, r in rows.items()}).T
    base = table.loc["ID only", "MRR@20"]
    table["MRR@20 vs ID only"] = (table["MRR@20"] / base - 1.0).map("{:+.1%}".format)
    print(f"\n## noisy dense features, noise 2x the signal (mean of {seeds} seeds)\n")
    print(table.round(4).to_string())
    sweep = []
    for n_items, n_sessions in ((2000, 2000), (10_000, 5000), (50_000, 20_000)):
        for ratio in (0.0, 1.0, 2.0):
            found = {}
            for name, params in (("ID only", dict(architecture="id")),
                                 ("feature only", dict(architecture="feature")),
                                 ("parallel, interleaving", dict(training="interleaving"))):
                values = []
                for seed in range(sweep_seeds):
                    train, test, features = _noisy_data(seed, ratio, n_items, n_sessions)
                    model = ParallelRNNRecommender(n_epochs=6, random_state=seed,
                                                   device="cpu", **params)
                    model.fit(train, item_features=None if name == "ID only"
                              else {"topic": features})
                    values.append(_mrr(model, test))
                found[name] = np.mean(values)
            sweep.append({"items": n_items, "train events": len(train),
                          "noise / signal": ratio, **found})
            print(f"  {sweep[-1]}", flush=True)
    print(f"\n## sweep: MRR@20 by catalogue and noise (mean of {sweep_seeds} seeds)\n")
    print(pd.DataFrame(sweep).round(4).to_string(index=False))


def cold(seeds: int) -> None:
    rows = []
    for architecture, training in (("feature", "residual"), ("parallel", "interleaving"),
                                   ("parallel", "residual")):
        found = {"cold R@20": [], "cold MRR@20": [], "seen MRR@20": [],
                 "seen MRR@20 without": []}
        for seed in range(seeds):
            train, test, features = _noisy_data(seed, 1.0, n_items=4000, n_sessions=4000)
            held = np.random.default_rng(seed + 7).choice(
                features.index.to_numpy(), size=len(features) // 20, replace=False)
            train = train[~train["ItemId"].isin(held)]
            train = train[train.groupby("SessionId")["ItemId"].transform("size") >= 2]
            for output in (True, False):
                model = ParallelRNNRecommender(
                    architecture=architecture, training=training, feature_output=output,
                    n_epochs=6, random_state=seed, device="cpu")
                model.fit(train, item_features={"topic": features})
                ranks = model.rank_next_items(test)
                targets = test.loc[ranks.index, "ItemId"]
                seen = (targets.isin(train["ItemId"]) & ranks.notna()).to_numpy()
                values = ranks.to_numpy()
                if output:
                    is_cold = targets.isin(held).to_numpy()
                    found["cold R@20"].append(recall_at_k(values[is_cold], 20))
                    found["cold MRR@20"].append(mrr_at_k(values[is_cold], 20))
                    found["seen MRR@20"].append(mrr_at_k(values[seen], 20))
                else:
                    found["seen MRR@20 without"].append(mrr_at_k(values[seen], 20))
        rows.append({"architecture": architecture, "training": training,
                     **{k: np.mean(v) for k, v in found.items()}})
    print(f"\n## cold-start items: 5% of 4,000 items without training events, "
          f"feature_output=True (mean of {seeds} seeds; a random ranking has Recall@20 "
          f"0.005)\n")
    print(pd.DataFrame(rows).round(4).to_string(index=False))


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
            ("p-RNN id, autograd (before)", ParallelRNNRecommender(
                architecture="id", hidden_size=100, **shared), "autograd"),
            ("p-RNN parallel, dense features", ParallelRNNRecommender(
                training="simultaneous", hidden_size=100, **shared), {"topic": features}),
            ("p-RNN parallel, sparse features", ParallelRNNRecommender(
                training="simultaneous", hidden_size=100, **shared), {"topic": sparse})]
    rows = []
    for name, model, given in runs:
        # The training step's backward pass: hand-written (the default), or autograd as
        # before it was written, for comparison.
        ParallelNetwork.autograd_steps = given == "autograd"
        try:
            if given is None or given == "autograd":
                model.fit(events)
            else:
                model.fit(events, item_features=given)
        finally:
            ParallelNetwork.autograd_steps = False
        last = model.history_[-1]  # the first epoch includes one-off warm-up costs
        rows.append({"model": name, "train events/s": last["events_per_s"],
                     "mini-batches/s": last["batches_per_s"]})
    print(f"\n## training speed ({len(events):,} events, 3,000 items, 100 units per "
          f"subnet, TOP1, batch 50, in-batch negatives; epoch {epochs} of {epochs})\n")
    table = pd.DataFrame(rows)
    table["vs GRU4Rec"] = table["train events/s"] / table["train events/s"].iloc[0]
    print(table.round(2).to_string(index=False))


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
    parser.add_argument("--section", default="planted,noisy,cold,speed,memory")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    sections = args.section.split(",")
    if "planted" in sections:
        planted(args.seeds)
    if "noisy" in sections:
        noisy(args.seeds)
    if "cold" in sections:
        cold(args.seeds)
    if "speed" in sections:
        speed()
    if "memory" in sections:
        memory()


if __name__ == "__main__":
    main()
