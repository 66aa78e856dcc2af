"""
Fit every recommender of sessionrec on real data and print an accuracy and speed table
======================================================================================


* Session models on rsc15-100k (train_full -> test, the GRU4Rec layout).
* The models of users (HRNN, Personal POP) and p-RNN, with TF-IDF text and genre
  features, on ml-latest-small, prepared as in the HRNN paper by sessionrec's own
  transformers (30-minute sessions, support filters until stable), each user's last
  session to test.

Without ../shared/data (or ``SESSIONREC_SHARED_DATA``) both come from
``sessionrec.datasets.make_sessions``, and the table says so. Protocol: next-item, all
training items ranked, conservative ties (see ``sessionrec.evaluation``).

Run with ``make demo``, or ``python examples/quickstart.py [--smoke]`` inside the virtual
environment (``--smoke``: the same code on less data and one epoch).
"""

from __future__ import annotations

import argparse
import inspect
import sys
import time
from pathlib import Path

# examples/_data.py: sys.argv[0] is the script also where sphinx-gallery runs it.
sys.path.insert(0, str(Path(sys.argv[0]).resolve().parent))

from _data import (  # noqa: E402
    SMOKE_EPOCHS,
    add_smoke_flag,
    movielens_or_synthetic,
    needs_users,
    rsc15_or_synthetic,
)

import sessionrec  # noqa: E402
from sessionrec.evaluation import evaluate  # noqa: E402

# Per-model settings for the demo; a model not listed here runs with its defaults (and
# random_state=0 where it has one).
DEMO_PARAMS: dict[str, dict] = {
    # The official GRU4Rec parameter file for rsc15.
    "GRU4RecRecommender": dict(loss="cross-entropy", constrained_embedding=True,
                               layers=(100,), batch_size=32, dropout_p_hidden=0.4,
                               learning_rate=0.2, momentum=0.2, n_sample=2048,
                               sample_alpha=0.5, logq=1.0, n_epochs=10),
    # The HRNN paper's small networks (100 + 100 units, TOP1, in-batch negatives).
    "HRNNRecommender": dict(session_size=100, user_size=100, loss="top1", batch_size=50,
                            learning_rate=0.1, dropout_p_session=0.1, n_sample=0,
                            n_epochs=10),
    # The p-RNN paper's parallel architecture with residual training, 100 units a subnet.
    "ParallelRNNRecommender": dict(architecture="parallel", training="residual",
                                   hidden_size=100, n_epochs=5),
}

# Models fitted on the data of users (with item features for p-RNN); the rest on sessions.
USER_DATA = {"ParallelRNNRecommender"}


def build(cls, smoke: bool):
    """The demo's estimator of class ``cls``: its settings, a fixed seed, verbose fits."""
    accepted = inspect.signature(cls.__init__).parameters
    params = dict(DEMO_PARAMS.get(cls.__name__, {}))
    if "random_state" in accepted:
        params.setdefault("random_state", 0)
    if "n_epochs" in accepted:
        params["verbose"] = True  # a progress bar per epoch on a terminal, a log line each
        if smoke:
            params["n_epochs"] = SMOKE_EPOCHS
    return cls(**params)


def main() -> None:
    parser = add_smoke_flag(argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    args = parser.parse_args()
    sessions_name, train, test = rsc15_or_synthetic(smoke=args.smoke)
    users_name, user_train, user_test, features = movielens_or_synthetic(smoke=args.smoke)
    data = {"sessions": (sessions_name, train, test), "users": (users_name, user_train,
                                                                user_test)}
    for label, (name, fit_on, scored) in data.items():
        note = "" if "make_sessions" not in name else (
            "  (../shared/data not found: synthetic data from sessionrec.datasets)")
        print(f"{label} data: {name}: {len(fit_on):,} training events, "
              f"{len(scored):,} test events{note}", flush=True)

    estimators = sessionrec.all_estimators()
    rows = {"sessions": [], "users": []}
    for number, cls in enumerate(estimators, start=1):
        which = "users" if needs_users(cls) or cls.__name__ in USER_DATA else "sessions"
        name, fit_on, scored = data[which]
        fit_params = {"item_features": features} if cls.__name__ == "ParallelRNNRecommender" \
            else {}
        print(f"[{number:>2}/{len(estimators)}] {cls.__name__} on {which} data: fitting ...",
              flush=True)
        est = build(cls, args.smoke)
        start = time.perf_counter()
        est.fit(fit_on, **fit_params)
        fit_s = time.perf_counter() - start
        start = time.perf_counter()
        result = evaluate(est, scored, cutoffs=[20], metrics=["recall", "mrr"])
        eval_s = time.perf_counter() - start
        # Training pairs per second within an epoch, for models trained in epochs.
        history = getattr(est, "history_", None)
        events_s = (sum(h["events_per_s"] for h in history) / len(history) if history
                    else None)
        rows[which].append((cls.__name__, result, fit_s, events_s, eval_s, est.n_items_))
        print(f"        Recall@20 {result['recall@20']:.4f}  MRR@20 {result['mrr@20']:.4f}  "
              f"fit {fit_s:.1f} s  evaluation {eval_s:.1f} s", flush=True)

    header = (f"{'model':<32}{'Recall@20':>10}{'MRR@20':>9}{'fit s':>8}{'events/s':>11}"
              f"{'eval s':>8}")
    for which, table in rows.items():
        name = data[which][0]
        print(f"\n{name}")
        print(header)
        print("-" * len(header))
        for model, result, fit_s, events_s, eval_s, _ in table:
            speed = f"{events_s:>11,.0f}" if events_s is not None else f"{'-':>11}"
            print(f"{model:<32}{result['recall@20']:>10.4f}{result['mrr@20']:>9.4f}"
                  f"{fit_s:>8.1f}{speed}{eval_s:>8.2f}")
        print(f"({result['n_targets']:,} targets ranked against all {table[-1][-1]:,} "
              f"training items, ties: {result['ties']}; {result['n_dropped']} dropped as "
              "unseen; events/s: training pairs per second of an epoch)")
        if which == "users" and "ml-latest-small" in name:
            print("(Personal POP recommends the items a user already had; a MovieLens user "
                  "rates a movie once, so here it can never be right.)")


if __name__ == "__main__":
    main()
