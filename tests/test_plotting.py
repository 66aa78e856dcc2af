"""sessionrec.plotting draws what it is given: the lines and bars hold the records' and
results' numbers, in the stated order, and bad input raises an error naming it."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg", force=True)  # this test process only: no display here
import matplotlib.pyplot as plt  # noqa: E402

from sessionrec import (  # noqa: E402
    GRU4RecRecommender,
    PopularityRecommender,
    SessionPopularityRecommender,
)
from sessionrec.datasets import make_sessions  # noqa: E402
from sessionrec.evaluation import evaluate  # noqa: E402
from sessionrec.plotting import (  # noqa: E402
    plot_metrics_at_k,
    plot_model_comparison,
    plot_training_curves,
)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _record(epoch, loss, mrr=math.nan, refit=False):
    return {"epoch": epoch, "loss": loss, "start_loss": loss + 1, "refit": refit,
            "validation_mrr": mrr}


SELECTION_AND_REFIT = [_record(1, 3.0, 0.2), _record(2, 2.0, 0.5), _record(3, 1.5, 0.4),
                       _record(4, 2.9, refit=True), _record(5, 1.9, refit=True)]


def test_training_curves_hold_the_records():
    loss, mrr = plot_training_curves({"m": SELECTION_AND_REFIT})
    lines = {line.get_label(): line for line in loss.get_lines()}
    assert list(lines["m"].get_xdata()) == [1, 2, 3]
    assert list(lines["m"].get_ydata()) == [3.0, 2.0, 1.5]
    assert lines["m (refit)"].get_linestyle() == "--"
    assert list(lines["m (refit)"].get_xdata()) == [1, 2]  # the refit counts from 1
    assert list(lines["m (refit)"].get_ydata()) == [2.9, 1.9]
    # Validation: the selection run only, with its best epoch (2) starred.
    curve, star = mrr.get_lines()
    assert list(curve.get_ydata()) == [0.2, 0.5, 0.4]
    assert (list(star.get_xdata()), list(star.get_ydata())) == ([2], [0.5])
    assert mrr.get_ylabel() == "validation MRR@20"
    # One legend, beside the last panel, so that no curve is hidden under it.
    assert loss.get_legend() is None
    assert [t.get_text() for t in mrr.get_legend().get_texts()] == ["m", "m (refit)"]


def test_training_curves_without_validation_draw_the_loss_only():
    axes = plot_training_curves([_record(1, 2.0), _record(2, 1.0)])
    assert len(axes) == 1 and axes[0].get_ylabel() == "training loss"
    assert axes[0].get_lines()[0].get_label() == "model"


def test_training_curves_of_fitted_models_and_pipelines():
    from sklearn.pipeline import make_pipeline

    from sessionrec.preprocessing import ItemSupportFilter

    events = make_sessions(n_sessions=200, n_items=30, random_state=0)
    model = GRU4RecRecommender(layers=(8,), n_sample=8, n_epochs=2, random_state=0)
    pipe = make_pipeline(ItemSupportFilter(1), GRU4RecRecommender(
        layers=(8,), n_sample=8, n_epochs=3, random_state=0))
    (ax,) = plot_training_curves({"plain": model.fit(events), "pipe": pipe.fit(events)},
                                 metrics="loss")
    ydata = {line.get_label(): list(line.get_ydata()) for line in ax.get_lines()}
    assert ydata["plain"] == [r["loss"] for r in model.history_]
    assert len(ydata["pipe"]) == 3
    (ax,) = plot_training_curves(model, metrics=["events_per_s"])
    assert ax.get_lines()[0].get_label() == "GRU4RecRecommender"


def test_training_curves_bad_input():
    with pytest.raises(ValueError, match="'validation_mrr' was recorded by none"):
        plot_training_curves([_record(1, 2.0)], metrics=["loss", "validation_mrr"])
    with pytest.raises(TypeError, match=r"models\['pop'\].*history_"):
        plot_training_curves({"pop": PopularityRecommender()})
    with pytest.raises(ValueError, match="no epoch records"):
        plot_training_curves({"m": []})
    model = GRU4RecRecommender()
    with pytest.raises(TypeError, match="as a dict of label -> model"):
        plot_training_curves([model, model])
    with pytest.raises(ValueError, match="empty"):
        plot_training_curves({})
    _, ax = plt.subplots()
    with pytest.raises(ValueError, match="must hold 2 axes"):
        plot_training_curves(SELECTION_AND_REFIT, axes=ax)


def test_metrics_at_k_come_from_one_evaluation_per_model():
    events = make_sessions(n_sessions=300, n_items=40, random_state=1)
    train, test = events[events.SessionId < 250], events[events.SessionId >= 250]
    results = {type(m).__name__: evaluate(m.fit(train), test, cutoffs=range(1, 31))
               for m in (PopularityRecommender(), SessionPopularityRecommender())}
    recall, mrr = plot_metrics_at_k(results)
    for ax, metric in ((recall, "recall"), (mrr, "mrr")):
        for line in ax.get_lines():
            result = results[line.get_label()]
            assert list(line.get_xdata()) == list(range(1, 31))
            assert list(line.get_ydata()) == [result[f"{metric}@{k}"] for k in range(1, 31)]
    assert recall.get_ylabel() == "Recall@k"
    # A DataFrame with one row per model draws the same lines; one result draws one line.
    (again,) = plot_metrics_at_k(pd.DataFrame(results).T, metrics="recall")
    assert [list(line.get_ydata()) for line in again.get_lines()] == \
        [list(line.get_ydata()) for line in recall.get_lines()]
    (single,) = plot_metrics_at_k(results["PopularityRecommender"], metrics=["mrr"])
    assert len(single.get_lines()) == 1


def test_metrics_at_k_unsorted_keys_are_sorted_by_k():
    (ax,) = plot_metrics_at_k({"m": {"recall@20": 0.5, "recall@5": 0.2, "recall@10": 0.3}},
                              metrics=["recall"])
    assert list(ax.get_lines()[0].get_xdata()) == [5, 10, 20]
    assert list(ax.get_lines()[0].get_ydata()) == [0.2, 0.3, 0.5]


def test_metrics_at_k_missing_metric_names_it():
    with pytest.raises(ValueError, match=r"results\['m'\] has no ndcg@k"):
        plot_metrics_at_k({"m": {"recall@5": 0.2}}, metrics=["ndcg"])


@settings(max_examples=25, deadline=None)
@given(st.dictionaries(st.text("abcdefgh", min_size=1, max_size=6),
                       st.tuples(st.floats(0, 1), st.floats(0, 1)), min_size=1, max_size=8))
def test_comparison_bars_hold_the_values(values):
    results = {label: {"recall@20": r, "mrr@20": m} for label, (r, m) in values.items()}
    ax = plot_model_comparison(results, sort_by="mrr@20")
    labels = [tick.get_text() for tick in ax.get_yticklabels()]
    assert sorted(labels) == sorted(results)
    # Bottom to top by MRR@20, so the best model is at the top.
    assert [results[label]["mrr@20"] for label in labels] == \
        sorted(results[label]["mrr@20"] for label in labels)
    recall_bars, mrr_bars = ax.containers
    assert [bar.get_width() for bar in recall_bars] == \
        [results[label]["recall@20"] for label in labels]
    assert [bar.get_width() for bar in mrr_bars] == [results[label]["mrr@20"] for label in labels]
    plt.close("all")


def test_comparison_keeps_the_order_and_takes_a_frame():
    frame = pd.DataFrame({"recall@20": [0.1, 0.6, 0.3]}, index=["POP", "GRU4Rec", "S-POP"])
    ax = plot_model_comparison(frame, metrics="recall@20", annotate=False)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["S-POP", "GRU4Rec", "POP"]
    assert not ax.texts
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["Recall@20"]


def test_comparison_bad_input():
    with pytest.raises(ValueError, match=r"results\['a'\] has no 'mrr@20'"):
        plot_model_comparison({"a": {"recall@20": 0.1}})
    with pytest.raises(ValueError, match="sort_by='ndcg@20'"):
        plot_model_comparison({"a": {"recall@20": 0.1, "mrr@20": 0.0}}, sort_by="ndcg@20")


def test_no_global_state_changes():
    before = dict(matplotlib.rcParams)
    backend = matplotlib.get_backend()
    plot_training_curves(SELECTION_AND_REFIT)
    plot_metrics_at_k({"m": {"recall@1": 0.1, "mrr@1": 0.1}})
    plot_model_comparison({"m": {"recall@20": 0.1, "mrr@20": 0.1}})
    assert matplotlib.get_backend() == backend
    assert dict(matplotlib.rcParams) == before
