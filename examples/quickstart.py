"""Fit every available recommender on real data and print an accuracy and speed table.

Data: ../shared/data/rsc15-100k (train_full -> test) when present, otherwise a synthetic
set from ``sessionrec.datasets.make_sessions``. Protocol: next-item, all training items
ranked, conservative ties (see ``sessionrec.evaluation``).

Run with ``make demo`` (or ``python examples/quickstart.py`` inside the virtualenv).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _data import needs_users, rsc15_or_synthetic  # noqa: E402

import sessionrec  # noqa: E402
from sessionrec.evaluation import evaluate  # noqa: E402

# Per-model settings for the demo; a model not listed here runs with its defaults.
DEMO_PARAMS: dict[str, dict] = {
    # The official GRU4Rec parameter file for rsc15.
    "GRU4RecRecommender": dict(loss="cross-entropy", constrained_embedding=True,
                               layers=(100,), batch_size=32, dropout_p_hidden=0.4,
                               learning_rate=0.2, momentum=0.2, n_sample=2048,
                               sample_alpha=0.5, logq=1.0, n_epochs=10, random_state=0),
}


def main() -> None:
    name, train, test = rsc15_or_synthetic()
    print(f"data: {name}: {len(train):,} training events, {len(test):,} test events")
    header = (f"{'model':<32}{'Recall@20':>10}{'MRR@20':>10}{'train s':>10}"
              f"{'events/s':>12}{'eval s':>9}")
    print(header)
    print("-" * len(header))
    for cls in sessionrec.all_estimators():
        if needs_users(cls) and "UserId" not in train:
            print(f"{cls.__name__:<32}(skipped: needs a user column, which {name} lacks)")
            continue
        est = cls(**DEMO_PARAMS.get(cls.__name__, {}))
        start = time.perf_counter()
        est.fit(train)
        train_s = time.perf_counter() - start
        start = time.perf_counter()
        result = evaluate(est, test, cutoffs=[20], metrics=["recall", "mrr"])
        eval_s = time.perf_counter() - start
        # Throughput of training: (input, target) pairs per second within an epoch for
        # models trained in epochs, else events consumed per second of fit.
        history = getattr(est, "history_", None)
        events_s = (sum(h["events_per_s"] for h in history) / len(history) if history
                    else len(train) / train_s)
        print(f"{cls.__name__:<32}{result['recall@20']:>10.4f}{result['mrr@20']:>10.4f}"
              f"{train_s:>10.2f}{events_s:>12,.0f}{eval_s:>9.2f}")
    print(f"({result['n_targets']:,} targets ranked against all {est.n_items_:,} training "
          f"items, ties: {result['ties']}; {result['n_dropped']} dropped as unseen)")


if __name__ == "__main__":
    main()
