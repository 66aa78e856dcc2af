"""
GRU4Rec on rsc15-100k: the official parameter file, tuning, live recommendations, saving
========================================================================================


1. Fit GRU4Rec with the official rsc15 settings and compare it with POP and S-POP under
   the next-item protocol (all training items ranked, conservative ties).
2. Tune the learning rate with GridSearchCV on time-ordered folds of the training data,
   scored by MRR@20 and Recall@20 from one ranking pass.
3. Recommend for a live session, and save / load the fitted model.

Data: ../shared/data/rsc15-100k when present, otherwise synthetic sessions. Run with
``python examples/gru4rec_rsc15.py [--epochs 10] [--smoke]`` inside the virtualenv
(``--smoke``: less data, one epoch, a grid of one value).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import joblib
import pandas as pd
from sklearn.model_selection import GridSearchCV

# examples/_data.py: sys.argv[0] is the script also where sphinx-gallery runs it.
sys.path.insert(0, str(Path(sys.argv[0]).resolve().parent))

from _data import SMOKE_EPOCHS, add_smoke_flag, rsc15_or_synthetic  # noqa: E402

from sessionrec import (  # noqa: E402
    GRU4RecRecommender,
    PopularityRecommender,
    SessionPopularityRecommender,
)
from sessionrec.evaluation import evaluate  # noqa: E402
from sessionrec.metrics import NextItemScorer  # noqa: E402
from sessionrec.model_selection import TimeSplit  # noqa: E402

RSC15 = dict(loss="cross-entropy", constrained_embedding=True, layers=(100,), batch_size=32,
             dropout_p_embed=0.0, dropout_p_hidden=0.4, learning_rate=0.2, momentum=0.2,
             n_sample=2048, sample_alpha=0.5, logq=1.0)


def main() -> None:
    parser = add_smoke_flag(argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    epochs = SMOKE_EPOCHS if args.smoke else args.epochs
    name, train, test = rsc15_or_synthetic(smoke=args.smoke)
    print(f"data: {name}")

    models = {
        "POP": PopularityRecommender(),
        "S-POP": SessionPopularityRecommender(),
        "GRU4Rec": GRU4RecRecommender(**RSC15, n_epochs=epochs, random_state=0,
                                      verbose=True),
    }
    print(f"\n{'model':<10}{'Recall@20':>10}{'MRR@20':>9}{'fit s':>8}")
    for label, model in models.items():
        start = time.perf_counter()
        model.fit(train)
        seconds = time.perf_counter() - start
        result = evaluate(model, test, cutoffs=[20], metrics=["recall", "mrr"])
        print(f"{label:<10}{result['recall@20']:>10.4f}{result['mrr@20']:>9.4f}"
              f"{seconds:>8.1f}")

    grid = {"learning_rate": [0.2] if args.smoke else [0.1, 0.2]}
    search = GridSearchCV(
        GRU4RecRecommender(**{**RSC15, "learning_rate": 0.2},
                           n_epochs=SMOKE_EPOCHS if args.smoke else 3, random_state=0),
        grid, scoring=NextItemScorer(["mrr@20", "recall@20"]), refit="mrr@20",
        cv=TimeSplit(test_days=1, n_splits=2))
    search.fit(train)
    table = pd.DataFrame(search.cv_results_)[["param_learning_rate", "mean_test_mrr@20",
                                              "mean_test_recall@20"]]
    print("\ngrid search on time-ordered folds:\n", table.to_string(index=False))

    gru = models["GRU4Rec"]
    live = test[test["SessionId"] == test["SessionId"].iloc[0]].iloc[:2]
    print("\nlive session:", live["ItemId"].tolist())
    print(gru.predict_next(live, k=5, exclude_seen=True))
    with tempfile.TemporaryDirectory() as folder:
        joblib.dump(gru, Path(folder) / "gru4rec.joblib")
        gru.save(Path(folder) / "gru4rec.pt")
        again = GRU4RecRecommender.load(Path(folder) / "gru4rec.pt")
        same = (again.predict_next(live, k=5) == gru.predict_next(live, k=5)).all().all()
        print(f"saved and reloaded: same recommendations = {bool(same)}")


if __name__ == "__main__":
    main()
