"""Speed of the shared evaluation engine: targets ranked per second, peak memory.

Prints two tables:
1. the ranking kernel alone on random scores (``--targets`` x ``--items``), per tie mode;
2. the whole next-item protocol (validation, scoring, ranking) for every recommender on
   rsc15-100k test (or synthetic data when ../shared/data is absent).

Usage: ``python benchmarks/bench_evaluation.py [--targets 10000] [--items 3000]
[--device cpu|cuda] [--repeats 5]``
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

from _data import needs_users, rsc15_or_synthetic  # noqa: E402
from _machine import machine_line  # noqa: E402

import sessionrec  # noqa: E402
from sessionrec._base import rows_per_block  # noqa: E402
from sessionrec.evaluation import TIE_MODES, evaluate, ranks_from_scores  # noqa: E402


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def best_of(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


FIT_WITHOUT_EXTRAS = {"ParallelRNNRecommender": {"architecture": "id"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=10_000)
    parser.add_argument("--items", type=int, default=3_000)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    print(f"device: {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(machine_line())

    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(args.targets, args.items, generator=gen).to(device)
    targets = torch.randint(0, args.items, (args.targets,), generator=gen).to(device)
    rows = rows_per_block(args.items, device)

    def rank_all(ties):
        for start in range(0, args.targets, rows):
            ranks_from_scores(scores[start:start + rows], targets[start:start + rows], ties)

    print(f"\n1. ranking kernel: {args.targets:,} targets x {args.items:,} items, "
          f"blocks of {rows} rows")
    print(f"{'ties':<14}{'seconds':>10}{'targets/s':>14}")
    for ties in TIE_MODES:
        sec = best_of(lambda ties=ties: rank_all(ties), args.repeats)
        print(f"{ties:<14}{sec:>10.4f}{args.targets / sec:>14,.0f}")

    name, train, test = rsc15_or_synthetic()
    print(f"\n2. next-item protocol on {name} test (all training items ranked)")
    print(f"{'model':<32}{'targets':>9}{'items':>7}{'seconds':>10}{'targets/s':>12}"
          f"{'Recall@20':>11}{'MRR@20':>8}")
    for cls in sessionrec.all_estimators():
        if needs_users(cls) and "UserId" not in train:
            print(f"{cls.__name__:<32}(skipped: needs a user column, which {name} lacks)")
            continue
        # Models whose default needs more than events (p-RNN's item features) are
        # evaluated in their events-only form.
        params = FIT_WITHOUT_EXTRAS.get(cls.__name__, {})
        est = cls(device=str(device), **params).fit(train)
        result = {}

        def run(est=est, result=result):
            result.update(evaluate(est, test, cutoffs=[20], metrics=["recall", "mrr"]))

        sec = best_of(run, args.repeats)
        print(f"{cls.__name__:<32}{result['n_targets']:>9,}{est.n_items_:>7,}{sec:>10.4f}"
              f"{result['n_targets'] / sec:>12,.0f}{result['recall@20']:>11.4f}"
              f"{result['mrr@20']:>8.4f}")
    print(f"\npeak RSS of this process: {peak_rss_mb():,.0f} MB")


if __name__ == "__main__":
    main()
