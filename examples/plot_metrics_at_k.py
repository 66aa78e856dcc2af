"""
Recall@k and MRR@k over the cut-off k, for several models
=========================================================

How much a model's lead depends on the length of the list it is judged on. Each model is
evaluated once with ``cutoffs=range(1, 51)``: one ranking pass gives the rank of every
test target among all training items (conservative ties), and every metric at every
cut-off comes from those ranks. :func:`sessionrec.plotting.plot_metrics_at_k` draws the
curves.

Data: rsc15-100k from ``../shared/data`` when present, else synthetic sessions.
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
from _data import add_smoke_flag, rsc15_or_synthetic  # the examples' data helpers

from sessionrec import (
    GRU4RecRecommender,
    ItemKNNRecommender,
    PopularityRecommender,
    SequentialRulesRecommender,
    SessionPopularityRecommender,
    VSKNNRecommender,
)
from sessionrec.evaluation import evaluate
from sessionrec.plotting import plot_metrics_at_k

# --smoke: less data and fewer epochs (what the test suite and the fast docs build run).
SMOKE = add_smoke_flag(argparse.ArgumentParser(description=__doc__)).parse_args().smoke
name, train, test = rsc15_or_synthetic(smoke=SMOKE)
print(f"data: {name}")

# %%
# Fit and evaluate each model once
# --------------------------------

models = {
    "POP": PopularityRecommender(),
    "S-POP": SessionPopularityRecommender(),
    "Item-KNN": ItemKNNRecommender(),
    "Sequential rules": SequentialRulesRecommender(),
    "V-SKNN": VSKNNRecommender(),
    "GRU4Rec": GRU4RecRecommender(
        loss="cross-entropy", constrained_embedding=True, layers=(100,), batch_size=32,
        dropout_p_hidden=0.4, learning_rate=0.2, momentum=0.2, n_sample=2048,
        sample_alpha=0.5, logq=1.0, n_epochs=1 if SMOKE else 5, random_state=0),
}
results = {label: evaluate(model.fit(train), test, cutoffs=range(1, 51),
                           metrics=("recall", "mrr"))
           for label, model in models.items()}

# %%
# The curves
# ----------
# Recall@k keeps rising with k while MRR@k flattens: a target found at rank 40 adds
# 1/40 to the reciprocal rank and a whole hit to the recall.

plot_metrics_at_k(results)
plt.show()

# %%
# A few points of the curves
# --------------------------

table = pd.DataFrame(results).T[["recall@5", "recall@20", "recall@50", "mrr@5", "mrr@20",
                                  "mrr@50"]]
print(table.astype(float).round(4).to_string())
