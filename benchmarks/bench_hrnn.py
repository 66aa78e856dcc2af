"""HRNN next to GRU4Rec and the user baselines: accuracy, training and evaluation speed.

Data (``--data``), each user's last session to test (all training items ranked,
conservative ties):

* ``movielens``: ../shared/data/ml-latest-small prepared as in the HRNN paper (30-minute
  sessions, items >= 5, sessions >= 3, users >= 5 sessions, until stable);
* ``planted``: ``make_sessions`` with users whose favourite items persist across sessions
  (``--users`` users, ``--sessions`` sessions, user_strength 0.8);
* ``returning``: ``make_sessions``' returning-user regime (3,200 sessions of 800 users
  over 4,800 items, about 2.3 events per session, repeat_strength 0.6,
  transition_strength 0.3): users come back to the very items of their earlier
  sessions, as in a retail click log.

Models: Item-KNN, V-SKNN, Personal POP, GRU4Rec with its defaults, and HRNN Init and
All with their defaults (repeat-aware scores) and as in the paper
(``repeat_aware=False``). Accuracy is the mean over ``--seeds`` (the seed of the
networks, and of the generated data); speed is of the first seed. Columns: train
events/s (mean over epochs), evaluation targets/s, peak RSS of the process so far,
Recall@5, MRR@5, Recall@20, MRR@20.

Usage: ``python benchmarks/bench_hrnn.py [--data movielens,planted,returning]
[--seeds 0,1,2] [--epochs 10] [--device cpu|cuda]``
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

from sessionrec import (  # noqa: E402
    GRU4RecRecommender,
    HRNNRecommender,
    ItemKNNRecommender,
    PersonalPopularityRecommender,
    VSKNNRecommender,
)
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

CUTOFFS = [5, 20]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def load(name: str, seed: int, args):
    if name == "movielens":
        folder = SHARED_DATA / "ml-latest-small"
        if not folder.is_dir():
            return None
        from sklearn.pipeline import make_pipeline

        sessions = SessionSplitter().fit_transform(
            read_movielens_ratings(folder / "ratings.csv"))
        filters = make_pipeline(ItemSupportFilter(5), SessionLengthFilter(3),
                                UserSessionFilter(5))
        data = RepeatUntilStable(filters).fit_transform(sessions)
    elif name == "planted":
        data = make_sessions(n_sessions=args.sessions, n_items=300, n_users=args.users,
                             user_strength=0.8, transition_strength=0.1, user_items=5,
                             random_state=seed)
    elif name == "returning":
        data = make_sessions(n_sessions=3200, n_items=4800, n_users=800, mean_length=2.3,
                             repeat_strength=0.6, transition_strength=0.3,
                             random_state=seed)
    else:
        raise SystemExit(f"unknown data {name!r}")
    return train_test_split(data, splitter=LastSessionSplit())


def models(seed: int, args) -> list:
    net = dict(n_epochs=args.epochs, device=args.device, random_state=seed)
    return [
        ("Item-KNN", ItemKNNRecommender()),
        ("V-SKNN", VSKNNRecommender()),
        ("Personal POP", PersonalPopularityRecommender()),
        ("GRU4Rec", GRU4RecRecommender(**net)),
        ("HRNN Init", HRNNRecommender(**net)),
        ("HRNN All", HRNNRecommender(user_propagation="all", **net)),
        ("HRNN Init, paper", HRNNRecommender(repeat_aware=False, **net)),
        ("HRNN All, paper", HRNNRecommender(repeat_aware=False, user_propagation="all",
                                            **net)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="movielens,planted,returning")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--sessions", type=int, default=4000)
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"{'data':<10}{'model':<18}{'train ev/s':>11}{'eval tg/s':>10}{'RSS MB':>8}"
          f"{'R@5':>8}{'MRR@5':>8}{'R@20':>8}{'MRR@20':>8}")
    for name in args.data.split(","):
        rows: dict = {}
        for seed in seeds:
            split = load(name, seed, args)
            if split is None:
                break
            train, test = split
            for label, model in models(seed, args):
                model.fit(train)
                start = time.perf_counter()
                result = evaluate(model, test, cutoffs=CUTOFFS, metrics=["recall", "mrr"])
                eval_s = time.perf_counter() - start
                history = getattr(model, "history_", None)
                row = rows.setdefault(label, {"scores": [], "speed": None})
                row["scores"].append([result[f"{m}@{k}"] for k in CUTOFFS
                                      for m in ("recall", "mrr")])
                if row["speed"] is None:
                    train_rate = (np.mean([h["events_per_s"] for h in history])
                                  if history else float("nan"))
                    row["speed"] = (train_rate, result["n_targets"] / eval_s)
        if not rows:
            print(f"{name:<10}(data not found)")
            continue
        for label, row in rows.items():
            r5, m5, r20, m20 = np.mean(row["scores"], axis=0)
            train_rate, eval_rate = row["speed"]
            train_text = "-" if np.isnan(train_rate) else f"{train_rate:,.0f}"
            print(f"{name:<10}{label:<18}{train_text:>11}{eval_rate:>10,.0f}"
                  f"{peak_rss_mb():>8,.0f}{r5:>8.4f}{m5:>8.4f}{r20:>8.4f}{m20:>8.4f}",
                  flush=True)


if __name__ == "__main__":
    main()
