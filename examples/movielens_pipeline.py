"""
A paper's full data preparation on MovieLens, as scikit-learn transformers
==========================================================================


1. Read the raw ratings of ml-latest-small and cut each user's stream into sessions at
   30-minute idle gaps (``SessionSplitter``), as the HRNN paper does.
2. Filter as the HRNN paper: items with >= 5 events, sessions with >= 3 events, users
   with >= 5 sessions, repeated until stable (``RepeatUntilStable``).
3. Hold out each user's last session (``LastSessionSplit``).
4. Tune a Pipeline (item filter + Item-KNN) with GridSearchCV on the training data split
   the same way again, scored by Recall@5 and MRR@5 from one ranking pass.
5. Print a results table of every model on the held-out last sessions.

Data: ../shared/data/ml-latest-small (or SESSIONREC_SHARED_DATA). Run with
``python examples/movielens_pipeline.py [--epochs 10] [--smoke]`` inside the virtualenv.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline

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
    ItemKNNRecommender,
    PersonalPopularityRecommender,
    PopularityRecommender,
    SessionPopularityRecommender,
    STANRecommender,
    VSKNNRecommender,
)
from sessionrec.datasets import read_movielens_ratings  # noqa: E402
from sessionrec.evaluation import evaluate  # noqa: E402
from sessionrec.metrics import NextItemScorer  # noqa: E402
from sessionrec.model_selection import LastSessionSplit, train_test_split  # noqa: E402
from sessionrec.preprocessing import ItemSupportFilter  # noqa: E402


def main() -> None:
    parser = add_smoke_flag(argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    ratings = read_movielens_ratings(require_movielens() / "ratings.csv")
    data, filters = hrnn_preparation(ratings)  # see _data.py: the transformers in a row
    if args.smoke:
        args.epochs = SMOKE_EPOCHS
        data = smoke_sessions(data)
    print(f"ml-latest-small: {len(ratings):,} ratings -> {len(data):,} events, "
          f"{data['SessionId'].nunique():,} sessions, {data['UserId'].nunique():,} users, "
          f"{data['ItemId'].nunique():,} items after {filters.n_iter_} filter passes")
    train, test = train_test_split(data, splitter=LastSessionSplit())
    print(f"last-session split: {len(train):,} training events, {len(test):,} test events "
          f"({test['SessionId'].nunique():,} sessions)\n")

    # Tuning on the training data only, held out the same way (each user's last session).
    pipe = Pipeline([("items", ItemSupportFilter(5)),
                     ("model", ItemKNNRecommender(device="cpu"))])
    scorer = NextItemScorer(["recall@5", "mrr@5", "recall@20"])
    search = GridSearchCV(pipe, {"items__min_support": [1, 5],
                                 "model__n_neighbors": [50, 300],
                                 "model__alpha": [0.5, 0.75]},
                          cv=LastSessionSplit(), scoring=scorer, refit="mrr@5")
    start = time.perf_counter()
    search.fit(train)
    print(f"GridSearchCV, {len(search.cv_results_['params'])} candidates, "
          f"{time.perf_counter() - start:.1f} s; best MRR@5 {search.best_score_:.4f} with "
          f"{search.best_params_}\n")

    models = {
        "POP": PopularityRecommender(device="cpu"),
        "S-POP": SessionPopularityRecommender(device="cpu"),
        "Personal POP": PersonalPopularityRecommender(device="cpu"),
        "Item-KNN (tuned pipeline)": search.best_estimator_,
        "V-SKNN": VSKNNRecommender(device="cpu"),
        "STAN": STANRecommender(device="cpu"),
        "GRU4Rec": GRU4RecRecommender(layers=(100,), loss="top1-max", batch_size=50,
                                      dropout_p_hidden=0.2, learning_rate=0.1,
                                      momentum=0.1, n_epochs=args.epochs, random_state=0,
                                      device="cpu"),
    }
    print(f"{'model':<28}{'Recall@5':>10}{'MRR@5':>8}{'Recall@20':>11}{'MRR@20':>8}"
          f"{'fit s':>8}")
    for name, model in models.items():
        start = time.perf_counter()
        if name != "Item-KNN (tuned pipeline)":
            model.fit(train)
        fit_s = time.perf_counter() - start
        result = evaluate(model, test, cutoffs=[5, 20], metrics=["recall", "mrr"])
        print(f"{name:<28}{result['recall@5']:>10.4f}{result['mrr@5']:>8.4f}"
              f"{result['recall@20']:>11.4f}{result['mrr@20']:>8.4f}{fit_s:>8.2f}")
    print(f"({result['n_targets']:,} targets, all training items ranked, ties: "
          f"{result['ties']}, {result['n_dropped']} test events of unseen items dropped)")


if __name__ == "__main__":
    main()
