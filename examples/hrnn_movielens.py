"""
Personalised session-based recommendation on MovieLens: the HRNN paper's comparison
===================================================================================


1. ml-latest-small prepared as in the HRNN paper: 30-minute sessions, items with >= 5
   events, sessions with >= 3 events, users with >= 5 sessions, repeated until stable.
2. Each user's last session to test (``LastSessionSplit``); only its next-item events
   are scored (Recall@5 and MRR@5 as in the paper, plus @20).
3. Personal POP, Item-KNN, GRU4Rec (session-only RNN), RNN Concat (each user's sessions
   concatenated), HRNN Init and HRNN All (repeat-aware, the default) and the paper's HRNN
   Init (``repeat_aware=False``), with the same network settings for the RNNs.

Run with ``python examples/hrnn_movielens.py [--epochs 10] [--seeds 0 1 2] [--smoke]``
inside the virtualenv; data from ../shared/data/ml-latest-small (or
SESSIONREC_SHARED_DATA).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.pipeline import make_pipeline

# examples/_data.py: sys.argv[0] is the script also where sphinx-gallery runs it.
sys.path.insert(0, str(Path(sys.argv[0]).resolve().parent))

from _data import (  # noqa: E402
    SMOKE_EPOCHS,
    add_smoke_flag,
    hrnn_preparation,
    require_movielens,
    smoke_sessions,
)

from sessionrec import (  # noqa: E402
    GRU4RecRecommender,
    HRNNRecommender,
    ItemKNNRecommender,
    PersonalPopularityRecommender,
)
from sessionrec.datasets import read_movielens_ratings  # noqa: E402
from sessionrec.evaluation import evaluate  # noqa: E402
from sessionrec.model_selection import LastSessionSplit, train_test_split  # noqa: E402
from sessionrec.preprocessing import ConcatenateUserSessions  # noqa: E402

# The RNNs share these settings (the HRNN paper's small networks: 100 units, TOP1,
# Adagrad, dropout on the session GRU's output; in-batch negatives).
RNN = dict(loss="top1", batch_size=50, learning_rate=0.1, momentum=0.0, n_sample=0)


def models(seed: int, epochs: int) -> dict:
    gru = dict(layers=(100,), dropout_p_hidden=0.1, constrained_embedding=False,
               n_epochs=epochs, random_state=seed, device="cpu", **RNN)
    hrnn = dict(session_size=100, user_size=100, dropout_p_session=0.1, n_epochs=epochs,
                random_state=seed, device="cpu", **RNN)
    return {
        "Personal POP": PersonalPopularityRecommender(device="cpu"),
        "Item-KNN": ItemKNNRecommender(n_neighbors=300, device="cpu"),
        "GRU4Rec (session RNN)": GRU4RecRecommender(**gru),
        "RNN Concat": make_pipeline(ConcatenateUserSessions(), GRU4RecRecommender(**gru)),
        "HRNN Init": HRNNRecommender(user_propagation="init", **hrnn),
        "HRNN All": HRNNRecommender(user_propagation="all", **hrnn),
        # The paper's model: no repeat-aware scores of the user's own items.
        "HRNN Init (paper)": HRNNRecommender(user_propagation="init", repeat_aware=False,
                                             **hrnn),
    }


def main() -> None:
    parser = add_smoke_flag(argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    data, _ = hrnn_preparation(read_movielens_ratings(require_movielens() / "ratings.csv"))
    if args.smoke:
        args.epochs, args.seeds = SMOKE_EPOCHS, args.seeds[:1]
        data = smoke_sessions(data)
    train, test = train_test_split(data, splitter=LastSessionSplit())
    print(f"ml-latest-small, HRNN preparation: {len(data):,} events, "
          f"{data['SessionId'].nunique():,} sessions, {data['UserId'].nunique():,} users, "
          f"{data['ItemId'].nunique():,} items; last sessions: {len(test):,} events")
    results: dict[str, list] = {}
    for seed in args.seeds:
        for name, model in models(seed, args.epochs).items():
            start = time.perf_counter()
            model.fit(train)
            fit_s = time.perf_counter() - start
            # RNN Concat carries the user's sequence only through its input: feed the
            # training events first (scored are the test sessions' events only).
            history = train if name == "RNN Concat" else None
            r = evaluate(model, test, cutoffs=[5, 20], metrics=["recall", "mrr"],
                         history=history)
            results.setdefault(name, []).append(
                [r["recall@5"], r["mrr@5"], r["recall@20"], r["mrr@20"], fit_s])
    print(f"\nmean of seeds {args.seeds}, {r['n_targets']:,} targets, all training items "
          f"ranked, ties: {r['ties']}")
    print(f"{'model':<24}{'Recall@5':>10}{'MRR@5':>8}{'Recall@20':>11}{'MRR@20':>8}"
          f"{'fit s':>8}")
    for name, rows in results.items():
        mean = np.mean(rows, axis=0)
        print(f"{name:<24}{mean[0]:>10.4f}{mean[1]:>8.4f}{mean[2]:>11.4f}{mean[3]:>8.4f}"
              f"{mean[4]:>8.1f}")


if __name__ == "__main__":
    main()
