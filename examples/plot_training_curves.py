"""
Training curves: loss and validation MRR@20 per epoch
=====================================================

GRU4Rec with the official rsc15 settings at three learning rates (the file's 0.2 and two
smaller ones), each fitted with
``early_stopping=True``: after every epoch the model ranks the next items of the
sessions that start last (10% held out) and keeps its best epoch; with ``refit=True``
it then trains again on all sessions for that many epochs. Every epoch's record is in
``history_``, and :func:`sessionrec.plotting.plot_training_curves` draws them: the
selection run as a solid line with its best epoch starred, the refit dashed.

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

from sessionrec import GRU4RecRecommender
from sessionrec.evaluation import evaluate
from sessionrec.plotting import plot_training_curves

# --smoke: less data and fewer epochs (what the test suite and the fast docs build run).
SMOKE = add_smoke_flag(argparse.ArgumentParser(description=__doc__)).parse_args().smoke
name, train, test = rsc15_or_synthetic(smoke=SMOKE)
print(f"data: {name}, {len(train):,} training events, {len(test):,} test events")

# %%
# Fit one model per learning rate
# -------------------------------
# The official rsc15 parameter file (cross-entropy over 2,048 shared samples, logQ
# correction, 100 units), the learning rate varied. ``n_iter_no_change`` stops a run
# after three epochs without a better validation score.

RSC15 = dict(loss="cross-entropy", constrained_embedding=True, layers=(100,), batch_size=32,
             dropout_p_hidden=0.4, momentum=0.2, n_sample=2048, sample_alpha=0.5, logq=1.0)
models = {}
for learning_rate in (0.02, 0.05, 0.2):
    model = GRU4RecRecommender(**RSC15, learning_rate=learning_rate,
                               n_epochs=2 if SMOKE else 8, early_stopping=True,
                               n_iter_no_change=3, random_state=0)
    models[f"learning_rate={learning_rate}"] = model.fit(train)

# %%
# The curves
# ----------
# One panel per recorded metric. The training loss says how each step size fits the
# training sessions; the validation score says which one generalises, and where to stop.

axes = plot_training_curves(models)
axes[0].figure.suptitle(f"GRU4Rec on {name.split(',')[0]}")
plt.show()

# %%
# The chosen epochs, and the refitted models on the test sessions
# ----------------------------------------------------------------

table = pd.DataFrame({
    label: {"best epoch": model.best_epoch_,
            "validation MRR@20": model.best_validation_score_,
            **{key: value for key, value in evaluate(model, test, cutoffs=[20]).items()
               if key in ("recall@20", "mrr@20")}}
    for label, model in models.items()}).T
print(table.round(4).to_string())
