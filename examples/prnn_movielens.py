"""
p-RNN on MovieLens with text and genre features: the architecture x training table
==================================================================================


1. Read ml-latest-small ratings, cut 30-minute sessions, filter as the HRNN paper (items
   >= 5 events, sessions >= 3, users >= 5 sessions, until stable); each user's last
   session is the test set.
2. Item features: TF-IDF (unigrams + bigrams) of title + genres + tags, sparse
   (``TfidfItemFeatures``), and the dense, L2-normalised genre indicator vector
   (``DenseItemFeatures``).
3. Fit Item-KNN, V-SKNN, the ID-only GRU (GRU4Rec's session RNN), the feature-only and
   concatenated-input GRUs, and every p-RNN architecture with every training strategy;
   print Recall@20 and MRR@20 (mean over seeds) for each.

Data: ../shared/data/ml-latest-small (or SESSIONREC_SHARED_DATA). Run with
``python examples/prnn_movielens.py [--epochs 5] [--seeds 3] [--hidden 100] [--smoke]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

# examples/_data.py: sys.argv[0] is the script also where sphinx-gallery runs it.
sys.path.insert(0, str(Path(sys.argv[0]).resolve().parent))

from _data import (  # noqa: E402
    SMOKE_EPOCHS,
    SMOKE_SESSIONS,
    add_smoke_flag,
    hrnn_preparation,
    movielens_features,
    require_movielens,
    smoke_sessions,
)

from sessionrec import (  # noqa: E402
    ItemKNNRecommender,
    ParallelRNNRecommender,
    VSKNNRecommender,
)
from sessionrec.datasets import read_movielens_ratings  # noqa: E402
from sessionrec.evaluation import evaluate  # noqa: E402
from sessionrec.model_selection import LastSessionSplit, train_test_split  # noqa: E402

ARCHITECTURES = ("parallel", "shared_w", "interaction")
TRAININGS = ("simultaneous", "alternating", "residual", "interleaving")


def load(root: Path, smoke: bool):
    events, _ = hrnn_preparation(read_movielens_ratings(root / "ratings.csv"))
    if smoke:  # 17 rows of p-RNN fits: a third of the sessions of the other smoke runs
        events = smoke_sessions(events, SMOKE_SESSIONS // 3)
    train, test = train_test_split(events, splitter=LastSessionSplit())
    return train, test, movielens_features(root)


def main() -> None:
    parser = add_smoke_flag(argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=100)
    parser.add_argument("--only", action="append", default=None, metavar="ROW",
                        help="run only this row (e.g. 'interaction (interleaving)'); "
                             "repeat for several; default: every row")
    args = parser.parse_args()
    if args.smoke:
        args.epochs, args.seeds, args.hidden = SMOKE_EPOCHS, 1, 16
    train, test, features = load(require_movielens(), args.smoke)
    print(f"{len(train):,} training events, {len(test):,} test events, "
          f"{train['ItemId'].nunique():,} items; text features: "
          f"{features['text'].n_features:,} sparse columns, genre: "
          f"{features['genre'].n_features} dense")
    common = dict(hidden_size=args.hidden, n_epochs=args.epochs, device="cpu")
    runs = [("Item-KNN", None, None, {}), ("V-SKNN", None, None, {}),
            ("ID only (GRU4Rec RNN)", "id", "simultaneous", {}),
            ("feature only", "feature", "simultaneous", {}),
            ("concatenated input", "concat", "simultaneous", {})]
    runs += [(f"{a} ({t})", a, t, {}) for a in ARCHITECTURES for t in TRAININGS]
    # Each subnet keeps its best epoch on the last 10% of the training sessions.
    runs += [("parallel (residual, early stopping)", "parallel", "residual",
              {"early_stopping": True})]
    names = [run[0] for run in runs]
    if args.only:
        wanted = {name.strip() for name in args.only}
        unknown = wanted - set(names)
        if unknown:
            raise SystemExit(f"--only: unknown row(s) {sorted(unknown)}; rows are {names}")
        runs = [run for run in runs if run[0] in wanted]
    results = {}
    for name, architecture, training, extra in runs:
        rows, start = [], time.perf_counter()
        for seed in range(1 if architecture is None else args.seeds):
            if architecture is None:
                baseline = ItemKNNRecommender if name == "Item-KNN" else VSKNNRecommender
                model = baseline().fit(train)
            else:
                model = ParallelRNNRecommender(architecture=architecture, training=training,
                                               random_state=seed, **common, **extra)
                model.fit(train, item_features=None if architecture == "id" else features)
            metrics = evaluate(model, test)
            rows.append({"Recall@20": metrics["recall@20"], "MRR@20": metrics["mrr@20"]})
        results[name] = {**pd.DataFrame(rows).mean().to_dict(),
                         "seconds per fit": (time.perf_counter() - start) / len(rows)}
        print(f"{name:<40}{results[name]['Recall@20']:.4f}  {results[name]['MRR@20']:.4f}",
              flush=True)
    table = pd.DataFrame(results).T
    print(f"\nml-latest-small, last sessions, mean of {args.seeds} seeds "
          f"({args.epochs} epochs; residual: {args.epochs} per subnet)\n")
    print(table.round(4).to_string())


if __name__ == "__main__":
    main()
