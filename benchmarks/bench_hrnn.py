"""HRNN next to GRU4Rec: training and evaluation speed, memory and accuracy, as a table.

Data (``--data``):

* ``movielens``: ../shared/data/ml-latest-small prepared as in the HRNN paper (30-minute
  sessions, items >= 5, sessions >= 3, users >= 5 sessions, until stable), each user's
  last session to test;
* ``planted``: ``make_sessions`` with users whose favourite items persist across sessions
  (``--users`` users, ``--sessions`` sessions, user_strength 0.8), last sessions to test.

Models: GRU4Rec (session-only), HRNN Init and HRNN All with the same settings (100
units, TOP1, in-batch negatives, batch 50, lr 0.1, one-hot input, dropout 0.1 on the
session GRU's output). Columns: train events/s (mean over epochs), evaluation targets/s
(all training items ranked), peak RSS of the process, Recall@5, MRR@5.

Usage: ``python benchmarks/bench_hrnn.py [--data movielens,planted] [--epochs 10]
[--device cpu|cuda] [--seed 0]``
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

from _data import SHARED_DATA  # noqa: E402

from sessionrec import GRU4RecRecommender, HRNNRecommender  # noqa: E402
from sessionrec.datasets import make_sessions, read_movielens_ratings  # noqa: E402
from sessionrec.evaluation import evaluate  # noqa: E402
from sessionrec.model_selection import LastSessionSplit, train_test_split  # noqa: E402
from sessionrec.preprocessing import (  # noqa: E402
    ItemSupportFilter,
    RepeatUntilStable,
    SessionLengthFilter,
    SessionSplitter,
    UserSessionFilter,
)

SHARED = dict(loss="top1", batch_size=50, learning_rate=0.1, momentum=0.0, n_sample=0)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def load(name: str, args):
    if name == "movielens":
        folder = SHARED_DATA / "ml-latest-small"
        if not folder.is_dir():
            return None
        sessions = SessionSplitter().fit_transform(
            read_movielens_ratings(folder / "ratings.csv"))
        data = RepeatUntilStable(make_pipeline_filters()).fit_transform(sessions)
    else:
        data = make_sessions(n_sessions=args.sessions, n_items=300, n_users=args.users,
                             user_strength=0.8, transition_strength=0.1, user_items=5,
                             random_state=args.seed)
    return train_test_split(data, splitter=LastSessionSplit())


def make_pipeline_filters():
    from sklearn.pipeline import make_pipeline

    return make_pipeline(ItemSupportFilter(5), SessionLengthFilter(3), UserSessionFilter(5))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="movielens,planted")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--sessions", type=int, default=4000)
    args = parser.parse_args()
    common = dict(n_epochs=args.epochs, device=args.device, random_state=args.seed, **SHARED)
    print(f"{'data':<11}{'model':<12}{'train ev/s':>11}{'batches/s':>10}{'eval tg/s':>11}"
          f"{'RSS MB':>8}{'Recall@5':>10}{'MRR@5':>8}")
    for name in args.data.split(","):
        split = load(name, args)
        if split is None:
            print(f"{name:<11}(data not found)")
            continue
        train, test = split
        for label, model in [
                ("GRU4Rec", GRU4RecRecommender(layers=(100,), dropout_p_hidden=0.1,
                                               constrained_embedding=False, **common)),
                ("HRNN Init", HRNNRecommender(user_propagation="init", **common)),
                ("HRNN All", HRNNRecommender(user_propagation="all", **common))]:
            model.fit(train)
            evaluate(model, test, cutoffs=[5])  # warm-up
            start = time.perf_counter()
            result = evaluate(model, test, cutoffs=[5], metrics=["recall", "mrr"])
            eval_s = time.perf_counter() - start
            history = model.history_
            print(f"{name:<11}{label:<12}"
                  f"{np.mean([h['events_per_s'] for h in history]):>11,.0f}"
                  f"{np.mean([h['batches_per_s'] for h in history]):>10,.0f}"
                  f"{result['n_targets'] / eval_s:>11,.0f}{peak_rss_mb():>8,.0f}"
                  f"{result['recall@5']:>10.4f}{result['mrr@5']:>8.4f}")


if __name__ == "__main__":
    main()
