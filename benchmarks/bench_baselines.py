"""Baselines: fit time, evaluation targets/s and peak memory, as a table.

1. Every non-neural recommender on rsc15-100k (train_full -> test; synthetic data when
   ../shared/data is absent): fit seconds, evaluation targets/s (all training items ranked,
   conservative ties), Recall@20, MRR@20.
2. Models that need users (Personal POP), with Item-KNN beside them for scale, on
   ml-latest-small sessionised at 30 minutes (sessions of >= 2 ratings), each user's
   last session to test: fit seconds, evaluation targets/s, Recall@20, MRR@20.
3. Item-KNN fitted on a synthetic set of ``--events`` events over ``--items`` items
   (default 5M and 100k): fit seconds and the process's peak RSS.

Usage: ``python benchmarks/bench_baselines.py [--events 5000000] [--items 100000]
[--device cpu|cuda] [--skip-large]``
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

from _data import SHARED_DATA, needs_users, rsc15_or_synthetic  # noqa: E402

import sessionrec  # noqa: E402
from sessionrec.datasets import make_sessions, read_movielens_ratings  # noqa: E402
from sessionrec.evaluation import evaluate  # noqa: E402
from sessionrec.model_selection import LastSessionSplit, train_test_split  # noqa: E402
from sessionrec.preprocessing import SessionLengthFilter, SessionSplitter  # noqa: E402

NEURAL = {"GRU4RecRecommender", "HRNNRecommender"}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def bench_row(est, train, test) -> None:
    """Fit, warm up, time one evaluation pass and print a table row."""
    start = time.perf_counter()
    est.fit(train)
    fit_s = time.perf_counter() - start
    evaluate(est, test, cutoffs=[20])  # warm-up
    start = time.perf_counter()
    result = evaluate(est, test, cutoffs=[20], metrics=["recall", "mrr"])
    eval_s = time.perf_counter() - start
    print(f"{type(est).__name__:<32}{fit_s:>8.2f}{eval_s:>8.3f}"
          f"{result['n_targets'] / eval_s:>12,.0f}{result['recall@20']:>11.4f}"
          f"{result['mrr@20']:>8.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5_000_000)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-large", action="store_true")
    args = parser.parse_args()

    name, train, test = rsc15_or_synthetic()
    print(f"1. baselines on {name}, device {args.device}")
    print(f"{'model':<32}{'fit s':>8}{'eval s':>8}{'targets/s':>12}{'Recall@20':>11}"
          f"{'MRR@20':>8}")
    for cls in sessionrec.all_estimators():
        if cls.__name__ in NEURAL:
            continue
        if needs_users(cls) and "UserId" not in train:
            print(f"{cls.__name__:<32}(skipped: needs a user column, which {name} lacks)")
            continue
        bench_row(cls(device=args.device), train, test)

    folder = SHARED_DATA / "ml-latest-small"
    if folder.is_dir():
        ratings = read_movielens_ratings(folder / "ratings.csv")
        events = SessionLengthFilter(2).fit_transform(SessionSplitter().fit_transform(ratings))
        ml_train, ml_test = train_test_split(events, splitter=LastSessionSplit())
        print(f"\n2. models with users on ml-latest-small (30-minute sessions of >= 2 events, "
              f"last session of each user to test), device {args.device}")
        for cls in [c for c in sessionrec.all_estimators()
                    if needs_users(c) and c.__name__ not in NEURAL] + [
                sessionrec.ItemKNNRecommender]:
            bench_row(cls(device=args.device), ml_train, ml_test)

    if args.skip_large:
        return
    print(f"\n3. Item-KNN fit on make_sessions: {args.events:,} events, {args.items:,} items")
    events = make_sessions(n_sessions=args.events // 5, n_items=args.items,
                           mean_length=5.0, max_length=50, random_state=0)
    rss_before = peak_rss_mb()
    start = time.perf_counter()
    knn = sessionrec.ItemKNNRecommender(device=args.device).fit(events)
    fit_s = time.perf_counter() - start
    print(f"{'events':>12}{'items':>9}{'fit s':>8}{'similarities':>14}{'peak RSS MB':>13}"
          f"{'(before fit)':>14}")
    print(f"{len(events):>12,}{knn.n_items_:>9,}{fit_s:>8.1f}{knn.item_matrix_.nnz:>14,}"
          f"{peak_rss_mb():>13,.0f}{rss_before:>14,.0f}")


if __name__ == "__main__":
    main()
