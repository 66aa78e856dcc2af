"""Figures of training and evaluation results, drawn with matplotlib.

Three helpers, each drawing onto axes it is given (or new ones) and returning them, so that
a figure can be styled, combined and saved as any matplotlib figure:

* :func:`plot_training_curves`: a fitted model's ``history_``, one point per epoch (the
  training loss, and the validation MRR@20 of ``early_stopping=True``);
* :func:`plot_metrics_at_k`: Recall@k and MRR@k over k, for several models, from the
  dictionaries :func:`sessionrec.evaluation.evaluate` returns;
* :func:`plot_model_comparison`: a bar chart of chosen metrics for several models.

matplotlib is an optional dependency (``pip install "sessionrec[plot]"``); importing this
module works without it, and a helper called without it raises an ``ImportError`` that
names the extra. The helpers never change matplotlib's global state (backend, style,
rcParams).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

__all__ = ["plot_training_curves", "plot_metrics_at_k", "plot_model_comparison"]

# Axis titles of the metrics that evaluate() and history_ hold.
_METRIC_NAMES = {"recall": "Recall", "mrr": "MRR", "ndcg": "NDCG", "hitrate": "HitRate",
                 "loss": "training loss", "validation_mrr": "validation MRR@20",
                 "start_loss": "loss of the first mini-batch"}
_CUTOFF = re.compile(r"^(?P<metric>[a-z_]+)@(?P<k>\d+)$")


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("sessionrec.plotting needs matplotlib: pip install "
                          '"sessionrec[plot]" (or pip install matplotlib).') from error
    return plt


def _axes(axes, n: int, name: str):
    """``n`` axes: the caller's (checked), or a new figure's row of ``n`` panels."""
    if axes is None:
        plt = _pyplot()
        _, new = plt.subplots(1, n, figsize=(5.0 * n, 3.8), squeeze=False,
                              layout="constrained")
        return list(new[0])
    listed = list(np.ravel(np.asarray(axes, dtype=object)))
    if len(listed) != n:
        raise ValueError(f"{name} must hold {n} axes (one per panel), got {len(listed)}.")
    return listed


def _history(model, label) -> list[dict]:
    """The epoch records of a fitted model, a Pipeline ending in one, or a list of them."""
    if hasattr(model, "steps"):  # a Pipeline: its final recommender trained
        model = model.steps[-1][1]
    if hasattr(model, "history_"):
        history = model.history_
    elif isinstance(model, Sequence) and not isinstance(model, str):
        history = model
    else:
        raise TypeError(f"models[{label!r}] is neither a fitted model with history_ nor a "
                        f"list of epoch records; got {type(model).__name__}. Only models "
                        "trained in epochs (GRU4Rec, HRNN, p-RNN, BPR-MF) have history_.")
    if not history:
        raise ValueError(f"models[{label!r}] has no epoch records (history_ is empty).")
    if not all(isinstance(record, Mapping) for record in history):
        raise TypeError(f"models[{label!r}] is a list of {type(history[0]).__name__}, not of "
                        "epoch records; give several models as a dict of label -> model.")
    return list(history)


def _labelled(models, kind: str) -> dict:
    """``{label: value}`` from a mapping, a DataFrame (one row per model) or one value."""
    if isinstance(models, pd.DataFrame):
        return {str(label): row.to_dict() for label, row in models.iterrows()}
    if isinstance(models, Mapping) and not (kind == "results" and _is_result(models)):
        if not models:
            raise ValueError(f"{kind} is empty: give at least one model.")
        return {str(label): value for label, value in models.items()}
    named = kind == "models" and (hasattr(models, "history_") or hasattr(models, "steps"))
    return {type(models).__name__ if named else "model": models}


def _is_result(value) -> bool:
    """Whether a mapping is one evaluate() result (metric keys) rather than results."""
    return any(isinstance(key, str) and _CUTOFF.match(key) for key in value)


def _legend_outside(panels) -> None:
    """One legend for the lines of all panels, right of the last, so that it never hides
    a curve."""
    entries = {}
    for ax in panels:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    panels[-1].legend(list(entries.values()), list(entries), fontsize="small",
                      loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)


def _pretty(metric: str) -> str:
    """``"recall@20"`` -> ``"Recall@20"``; other names unchanged."""
    match = _CUTOFF.match(metric)
    if not match or match["metric"] not in _METRIC_NAMES:
        return metric
    return f"{_METRIC_NAMES[match['metric']]}@{match['k']}"


def _has_metric(records: list[dict], metric: str) -> bool:
    return any(not math.isnan(float(r.get(metric, math.nan))) for r in records)


def plot_training_curves(models, *, metrics=None, axes=None):
    """Plot epoch records (``history_``) of one or several fitted models.

    One panel per metric, one line per model, one point per epoch. When a model was
    fitted with ``early_stopping=True`` and ``refit=True``, ``history_`` holds two runs:
    the selection run (solid line) and the refit on all sessions (dashed line, epochs
    counted from 1 again); the selection run's highest validation score is starred. (That
    is the epoch kept by GRU4Rec, HRNN and BPR-MF; p-RNN trained by subnets keeps the best
    epoch of each subnet, ``subnet_epochs_``.)

    Parameters
    ----------
    models : fitted model, list of epoch records, or dict of label -> either
        Models trained in epochs (GRU4Rec, HRNN, p-RNN, BPR-MF), a Pipeline ending in
        one, or their ``history_`` lists. A dict draws one line per label.
    metrics : sequence of str or None, default=None
        Record fields to plot, one panel each. ``None``: ``"loss"``, plus
        ``"validation_mrr"`` when some model recorded it. Other fields of the records
        (``"start_loss"``, ``"events_per_s"``, ``"seconds"``) may be named.
    axes : matplotlib Axes, array of Axes or None, default=None
        One Axes per metric to draw on; ``None`` makes a new figure.

    Returns
    -------
    list of matplotlib.axes.Axes
        The panels, in the order of ``metrics``.

    Raises
    ------
    ValueError
        When a named metric was recorded by none of the models, or a model has no records.
    TypeError
        When a model has no ``history_`` (it is not trained in epochs), or a list holds
        something other than epoch records (several models go in a dict).

    Examples
    --------
    >>> from sessionrec import GRU4RecRecommender
    >>> from sessionrec.datasets import make_sessions
    >>> from sessionrec.plotting import plot_training_curves
    >>> events = make_sessions(n_sessions=200, n_items=30, random_state=0)
    >>> model = GRU4RecRecommender(layers=(16,), n_sample=16, n_epochs=3,
    ...                            early_stopping=True, random_state=0).fit(events)
    >>> axes = plot_training_curves({"GRU4Rec": model})
    >>> [ax.get_ylabel() for ax in axes]
    ['training loss', 'validation MRR@20']
    """
    histories = {label: _history(model, label)
                 for label, model in _labelled(models, "models").items()}
    if metrics is None:
        metrics = ["loss"] + (["validation_mrr"] if any(
            _has_metric(h, "validation_mrr") for h in histories.values()) else [])
    elif isinstance(metrics, str):
        metrics = [metrics]
    metrics = list(metrics)
    for metric in metrics:
        if not any(_has_metric(h, metric) for h in histories.values()):
            raise ValueError(f"metric {metric!r} was recorded by none of the models; their "
                             f"records hold {sorted(next(iter(histories.values()))[0])}.")
    panels = _axes(axes, len(metrics), "axes")
    colors = _pyplot().rcParams["axes.prop_cycle"].by_key().get("color", ["C0"])
    for ax, metric in zip(panels, metrics):
        for number, (label, history) in enumerate(histories.items()):
            color = colors[number % len(colors)]
            for refit, style in ((False, "-"), (True, "--")):
                run = [r for r in history if bool(r.get("refit", False)) is refit]
                values = np.array([float(r.get(metric, math.nan)) for r in run])
                if not run or np.isnan(values).all():
                    continue
                epochs = np.arange(1, len(run) + 1)
                ax.plot(epochs, values, style, marker="o", markersize=3, color=color,
                        label=f"{label} (refit)" if refit else label)
                if metric == "validation_mrr" and not refit:
                    best = int(np.nanargmax(values))
                    ax.plot(epochs[best], values[best], "*", markersize=12, color=color)
        ax.set_xlabel("epoch")
        ax.set_ylabel(_METRIC_NAMES.get(metric, metric))
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    _legend_outside(panels)
    return panels


def _cutoff_curve(result: Mapping, metric: str) -> tuple[np.ndarray, np.ndarray]:
    points = sorted((int(m["k"]), float(value)) for key, value in result.items()
                    if isinstance(key, str) and (m := _CUTOFF.match(key))
                    and m["metric"] == metric)
    if not points:
        return np.empty(0), np.empty(0)
    ks, values = zip(*points)
    return np.array(ks), np.array(values)


def plot_metrics_at_k(results, *, metrics=("recall", "mrr"), axes=None):
    """Plot metrics over the cut-off k for several models, from one evaluation each.

    Parameters
    ----------
    results : dict of label -> dict, or pandas.DataFrame
        Per model, what :func:`sessionrec.evaluation.evaluate` returns (keys
        ``"<metric>@<k>"``); evaluate with many cut-offs, e.g. ``cutoffs=range(1, 51)``,
        for a smooth curve: all of them come from one ranking pass. A DataFrame has one
        row per model and such columns. A single result draws one line.
    metrics : sequence of str, default=("recall", "mrr")
        Metric names as in the keys (``"recall"``, ``"mrr"``, ``"ndcg"``, ``"hitrate"``),
        one panel each.
    axes : matplotlib Axes, array of Axes or None, default=None
        One Axes per metric; ``None`` makes a new figure.

    Returns
    -------
    list of matplotlib.axes.Axes

    Raises
    ------
    ValueError
        When a model's result has no cut-off of a requested metric.

    Examples
    --------
    >>> from sessionrec import PopularityRecommender, SessionPopularityRecommender
    >>> from sessionrec.datasets import make_sessions
    >>> from sessionrec.evaluation import evaluate
    >>> from sessionrec.plotting import plot_metrics_at_k
    >>> events = make_sessions(n_sessions=300, n_items=40, random_state=0)
    >>> train, test = events[events.SessionId < 250], events[events.SessionId >= 250]
    >>> results = {type(m).__name__: evaluate(m.fit(train), test, cutoffs=range(1, 21))
    ...            for m in (PopularityRecommender(), SessionPopularityRecommender())}
    >>> axes = plot_metrics_at_k(results)
    >>> [len(ax.get_lines()) for ax in axes]
    [2, 2]
    """
    results = _labelled(results, "results")
    if isinstance(metrics, str):
        metrics = [metrics]
    metrics = list(metrics)
    panels = _axes(axes, len(metrics), "axes")
    for ax, metric in zip(panels, metrics):
        for label, result in results.items():
            ks, values = _cutoff_curve(result, metric)
            if not ks.size:
                raise ValueError(f"results[{label!r}] has no {metric}@k; evaluate with "
                                 f"metrics=[..., {metric!r}] and several cutoffs.")
            ax.plot(ks, values, marker="o" if ks.size <= 20 else None, markersize=3,
                    label=label)
        name = _METRIC_NAMES.get(metric, metric)
        ax.set_xlabel("cut-off k")
        ax.set_ylabel(f"{name}@k")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    _legend_outside(panels)
    return panels


def plot_model_comparison(results, *, metrics=("recall@20", "mrr@20"), ax=None,
                          sort_by=None, annotate=True):
    """Draw a horizontal bar chart of metrics for several models.

    Parameters
    ----------
    results : dict of label -> dict, or pandas.DataFrame
        Per model, a mapping of metric name to value, such as what
        :func:`sessionrec.evaluation.evaluate` returns; or a DataFrame with one row per
        model and one column per metric.
    metrics : sequence of str, default=("recall@20", "mrr@20")
        The metrics to draw, one bar per model each.
    ax : matplotlib Axes or None, default=None
        ``None`` makes a new figure.
    sort_by : str or None, default=None
        A metric to order the models by (best at the top); ``None`` keeps their order.
    annotate : bool, default=True
        Write each bar's value at its end.

    Returns
    -------
    matplotlib.axes.Axes

    Raises
    ------
    ValueError
        When a model has no value of a requested metric.

    Examples
    --------
    >>> from sessionrec.plotting import plot_model_comparison
    >>> ax = plot_model_comparison({"POP": {"recall@20": 0.05, "mrr@20": 0.01},
    ...                             "GRU4Rec": {"recall@20": 0.63, "mrr@20": 0.31}},
    ...                            sort_by="mrr@20")
    >>> [tick.get_text() for tick in ax.get_yticklabels()]
    ['POP', 'GRU4Rec']
    """
    results = _labelled(results, "results")
    if isinstance(metrics, str):
        metrics = [metrics]
    metrics = list(metrics)
    table = {}
    for label, result in results.items():
        missing = [m for m in metrics if m not in result]
        if missing:
            raise ValueError(f"results[{label!r}] has no {', '.join(map(repr, missing))}; "
                             f"it holds {sorted(map(str, result))}.")
        table[label] = [float(result[m]) for m in metrics]
    frame = pd.DataFrame.from_dict(table, orient="index", columns=metrics)
    if sort_by is not None:
        if sort_by not in metrics:
            raise ValueError(f"sort_by={sort_by!r} must be one of the plotted metrics "
                             f"{metrics}.")
        frame = frame.sort_values(sort_by, kind="stable")  # barh draws bottom-up: best on top
    else:
        frame = frame.iloc[::-1]  # the first model at the top
    if ax is None:
        _, ax = _pyplot().subplots(figsize=(7.0, 0.5 + 0.3 * len(frame) * len(metrics)),
                                   layout="constrained")
    height = 0.8 / len(metrics)
    rows = np.arange(len(frame))
    for number, metric in enumerate(metrics):
        offset = (len(metrics) - 1 - number) * height - 0.4 + height / 2
        bars = ax.barh(rows + offset, frame[metric].to_numpy(), height=height,
                       label=_pretty(metric))
        if annotate:
            ax.bar_label(bars, fmt="%.3f", padding=2, fontsize="x-small")
    ax.set_yticks(rows, frame.index)
    ax.set_xlabel("value")
    ax.set_xlim(0, max(1e-9, float(np.nanmax(frame.to_numpy()))) * 1.15)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize="small")
    return ax
