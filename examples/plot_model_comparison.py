"""
Comparing models of users' sessions: a bar chart
================================================

The HRNN paper's setting on MovieLens: sessions cut at 30-minute gaps, items, sessions
and users filtered until stable, each user's last session held out. Models that know the
user (HRNN, Personal POP) against session-only ones (GRU4Rec, Item-KNN, V-SKNN) and
popularity. Each is evaluated once under the next-item protocol (all items ranked,
conservative ties); :func:`sessionrec.plotting.plot_model_comparison` draws the bars.
Personal POP recommends the items a user already had; a MovieLens user rates a movie
once, so on MovieLens it is never right.

Data: ml-latest-small from ``../shared/data`` when present, else synthetic users with
planted category preferences (``make_sessions(user_strength=0.5)``).
"""

# sphinx_gallery_start_ignore
import sys
from pathlib import Path

# examples/_data.py: sys.argv[0] is the script also where sphinx-gallery runs it.
sys.path.insert(0, str(Path(sys.argv[0]).resolve().parent))
# sphinx_gallery_end_ignore
import argparse

import matplotlib.pyplot as plt
import pandas as pd
from _data import add_smoke_flag, movielens_or_synthetic  # the examples' data helpers

from sessionrec import (
    GRU4RecRecommender,
    HRNNRecommender,
    ItemKNNRecommender,
    PersonalPopularityRecommender,
    PopularityRecommender,
    VSKNNRecommender,
)
from sessionrec.evaluation import evaluate
from sessionrec.plotting import plot_model_comparison

# --smoke: less data and fewer epochs (what the test suite and the fast docs build run).
SMOKE = add_smoke_flag(argparse.ArgumentParser(description=__doc__)).parse_args().smoke
name, train, test, _ = movielens_or_synthetic(smoke=SMOKE)
print(f"data: {name}: {train['UserId'].nunique():,} users, "
      f"{train['SessionId'].nunique():,} training sessions, "
      f"{test['SessionId'].nunique():,} test sessions")

# %%
# Fit and evaluate
# ----------------
# The HRNN paper's small networks: 100 units, TOP1 loss, in-batch negatives.

epochs = 1 if SMOKE else 10
models = {
    "HRNN": HRNNRecommender(session_size=100, user_size=100, loss="top1", batch_size=50,
                            learning_rate=0.1, dropout_p_session=0.1, n_sample=0,
                            n_epochs=epochs, random_state=0),
    "Personal POP": PersonalPopularityRecommender(),
    "GRU4Rec": GRU4RecRecommender(layers=(100,), loss="top1", batch_size=50,
                                  learning_rate=0.1, n_sample=0, n_epochs=epochs,
                                  random_state=0),
    "Item-KNN": ItemKNNRecommender(),
    "V-SKNN": VSKNNRecommender(),
    "POP": PopularityRecommender(),
}
results = {label: evaluate(model.fit(train), test, cutoffs=(5, 20), metrics=("recall", "mrr"))
           for label, model in models.items()}

# %%
# The chart
# ---------
# Sorted by MRR@5, the paper's headline metric; the best model is at the top.

ax = plot_model_comparison(results, metrics=("recall@5", "mrr@5", "recall@20", "mrr@20"),
                           sort_by="mrr@5")
ax.set_title(f"Each user's last session, {name.split(' (')[0]}")
plt.show()

# %%
# The numbers
# -----------

table = pd.DataFrame(results).T
print(table[["recall@5", "mrr@5", "recall@20", "mrr@20"]].astype(float).round(4).to_string())
print(f"{table['n_targets'].iloc[0]:,} targets ranked against all training items")
