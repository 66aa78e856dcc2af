"""Metrics of ranks, metrics of recommendation lists, and scikit-learn scorers.

A *rank* is the 1-based position of the true next item among all training items, as
produced by ``estimator.rank_next_items`` (see :mod:`sessionrec.evaluation` for the
protocol and the tie modes). Every metric of accuracy here is a function of ranks only,
so all models are measured by the same arithmetic.

With one target per prediction (the next-item protocol), Recall@k and the hit rate@k are
the same number: the share of targets ranked within the top k.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pandas as pd

__all__ = [
    "recall_at_k",
    "hit_rate_at_k",
    "mrr_at_k",
    "ndcg_at_k",
    "item_coverage",
    "popularity_bias",
    "RecallAtK",
    "MRRAtK",
    "NDCGAtK",
    "NextItemScorer",
    "get_scorer",
    "TIE_MODES",
]

TIE_MODES = ("conservative", "optimistic", "median")


def _as_ranks(ranks) -> np.ndarray:
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.ndim != 1:
        raise ValueError(f"ranks must be one-dimensional, got shape {ranks.shape}.")
    if np.isnan(ranks).any():
        raise ValueError(
            "ranks contain NaN (targets whose item was unseen in training); drop them "
            "first, as sessionrec.evaluation.evaluate does."
        )
    if ranks.size and ranks.min() < 1:
        raise ValueError("ranks are 1-based: every rank must be >= 1.")
    return ranks


def _check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}.")
    return int(k)


def _mean(values: np.ndarray) -> float:
    # The mean of no targets is undefined: NaN rather than a number that looks measured.
    return float(values.mean()) if values.size else float("nan")


def recall_at_k(ranks, k: int) -> float:
    """Share of targets ranked within the top ``k`` (rank <= k).

    Examples
    --------
    >>> recall_at_k([1, 3, 25, 2], k=2)
    0.5
    """
    k = _check_k(k)
    return _mean((_as_ranks(ranks) <= k).astype(np.float64))


def hit_rate_at_k(ranks, k: int) -> float:
    """Share of predictions with the target in the top ``k``.

    Equal to :func:`recall_at_k` under the next-item protocol (one target per prediction).

    Examples
    --------
    >>> hit_rate_at_k([1, 3, 25, 2], k=3)
    0.75
    """
    return recall_at_k(ranks, k)


def mrr_at_k(ranks, k: int) -> float:
    """Mean reciprocal rank, counting targets ranked beyond ``k`` as 0.

    Examples
    --------
    >>> mrr_at_k([1, 4, 25], k=20)  # (1 + 1/4 + 0) / 3
    0.41666...
    """
    k = _check_k(k)
    r = _as_ranks(ranks)
    return _mean(np.where(r <= k, 1.0 / r, 0.0))


def ndcg_at_k(ranks, k: int) -> float:
    """Normalised DCG with one relevant item: mean of ``1 / log2(rank + 1)`` within ``k``.

    Examples
    --------
    >>> round(ndcg_at_k([1, 3, 30], k=20), 6)  # (1 + 1/log2(4) + 0) / 3
    0.5
    """
    k = _check_k(k)
    r = _as_ranks(ranks)
    return _mean(np.where(r <= k, 1.0 / np.log2(r + 1.0), 0.0))


def _recommended_values(recommendations) -> np.ndarray:
    if isinstance(recommendations, pd.DataFrame):
        values = recommendations.to_numpy().ravel()
    else:
        values = np.asarray(recommendations, dtype=object).ravel()
    return pd.Series(values).dropna().to_numpy()


def item_coverage(recommendations, catalog) -> float:
    """Share of the catalogue that appears in at least one recommendation list.

    Parameters
    ----------
    recommendations : DataFrame or 2-D array
        Lists of item labels, one row per list (as returned by ``predict_next``).
    catalog : int or array-like
        The number of items, or the item labels of the catalogue.

    Examples
    --------
    >>> item_coverage([["a", "b"], ["a", "c"]], catalog=["a", "b", "c", "d"])
    0.75
    """
    n_catalog = int(catalog) if np.isscalar(catalog) else len(pd.unique(np.asarray(catalog)))
    if n_catalog < 1:
        raise ValueError("catalog must hold at least one item.")
    return len(pd.unique(_recommended_values(recommendations))) / n_catalog


def popularity_bias(recommendations, item_support) -> float:
    """Mean popularity of recommended items, popularity scaled to [0, 1] by the maximum.

    This is the ``popularity`` measure of the session-rec framework: a value near 1 means
    the lists consist of the most popular items.

    Parameters
    ----------
    recommendations : DataFrame or 2-D array
        Lists of item labels.
    item_support : pandas.Series
        Number of training events per item label (e.g. ``estimator.item_support_``).

    Examples
    --------
    >>> support = pd.Series({"a": 10, "b": 5, "c": 1})
    >>> popularity_bias([["a", "b"]], support)
    0.75
    """
    if not isinstance(item_support, pd.Series):
        raise TypeError("item_support must be a pandas Series indexed by item label.")
    values = _recommended_values(recommendations)
    if values.size == 0:
        return float("nan")
    scaled = item_support.reindex(values).fillna(0).to_numpy(dtype=np.float64)
    return float(scaled.mean() / item_support.max())


_METRICS = {
    "recall": recall_at_k,
    "hitrate": hit_rate_at_k,
    "hit_rate": hit_rate_at_k,
    "mrr": mrr_at_k,
    "ndcg": ndcg_at_k,
}


def _final_estimator_and_data(estimator, X):
    """Apply a Pipeline's transformers and return its recommender with the data for it.

    ``Pipeline`` only exposes standard methods, so a scorer reaches through it to call
    ``rank_next_items`` on the last step, as ``Pipeline.score`` would call ``score``.
    """
    from sklearn.pipeline import Pipeline

    while isinstance(estimator, Pipeline):
        for _, step in estimator.steps[:-1]:
            if step is not None and step != "passthrough":
                X = step.transform(X)
        estimator = estimator.steps[-1][1]
    if not hasattr(estimator, "rank_next_items"):
        raise TypeError(
            f"{type(estimator).__name__} has no rank_next_items method; sessionrec "
            "scorers evaluate sessionrec recommenders (or Pipelines ending in one)."
        )
    return estimator, X


def _relabels_sessions(estimator) -> bool:
    """Whether a Pipeline writes the session column (SessionSplitter numbers the sessions
    of each frame afresh), so that equal labels in two frames are not one session."""
    from sklearn.pipeline import Pipeline

    return isinstance(estimator, Pipeline) and any(
        getattr(step, "_relabels_sessions", False) or _relabels_sessions(step)
        for _, step in estimator.steps[:-1])


def _checked_final_estimator(estimator, X):
    """:func:`_final_estimator_and_data`, and a warning if the split cut sessions."""
    final, data = _final_estimator_and_data(estimator, X)
    if not _relabels_sessions(estimator) and hasattr(final, "_warn_if_sessions_cut"):
        final._warn_if_sessions_cut(data)
    return final, data


def _known_ranks(estimator, X, ties: str) -> np.ndarray:
    estimator, X = _checked_final_estimator(estimator, X)
    ranks = np.asarray(estimator.rank_next_items(X, ties=ties), dtype=np.float64)
    ranks = ranks[~np.isnan(ranks)]
    if ranks.size == 0:
        warnings.warn("no target with an item seen in training: the score is NaN.",
                      RuntimeWarning, stacklevel=3)
    return ranks


class _RankScorer:
    """A scorer: ``scorer(estimator, X, y=None)`` returns one metric under the protocol."""

    metric = ""

    def __init__(self, k: int = 20, *, ties: str = "conservative"):
        self.k = _check_k(k)
        if ties not in TIE_MODES:
            raise ValueError(f"ties must be one of {TIE_MODES}, got {ties!r}.")
        self.ties = ties

    def __call__(self, estimator, X, y=None) -> float:
        return _METRICS[self.metric](_known_ranks(estimator, X, self.ties), self.k)

    def __repr__(self) -> str:
        extra = "" if self.ties == "conservative" else f", ties={self.ties!r}"
        return f"{type(self).__name__}({self.k}{extra})"


class RecallAtK(_RankScorer):
    """Scorer of Recall@k under the next-item protocol, for ``GridSearchCV(scoring=...)``.

    Parameters
    ----------
    k : int, default=20
        Cut-off.
    ties : {"conservative", "optimistic", "median"}, default="conservative"
        Tie mode of the ranks (see :mod:`sessionrec.evaluation`).

    Examples
    --------
    >>> RecallAtK(20)
    RecallAtK(20)
    """

    metric = "recall"


class MRRAtK(_RankScorer):
    """Scorer of MRR@k under the next-item protocol (see :class:`RecallAtK`).

    Examples
    --------
    >>> MRRAtK(20, ties="median")
    MRRAtK(20, ties='median')
    """

    metric = "mrr"


class NDCGAtK(_RankScorer):
    """Scorer of NDCG@k under the next-item protocol (see :class:`RecallAtK`).

    Examples
    --------
    >>> NDCGAtK(10)
    NDCGAtK(10)
    """

    metric = "ndcg"


_NAME = re.compile(r"^\s*(recall|hitrate|hit_rate|mrr|ndcg)\s*@\s*(\d+)\s*$", re.IGNORECASE)


def _parse_metric(name: str) -> tuple[str, int]:
    match = _NAME.match(name) if isinstance(name, str) else None
    if not match:
        raise ValueError(
            f"unknown metric {name!r}: use 'recall@K', 'mrr@K', 'ndcg@K' or 'hitrate@K'."
        )
    return match.group(1).lower(), int(match.group(2))


class NextItemScorer:
    """Several metrics from one ranking pass, as a dict (for multi-metric GridSearchCV).

    Parameters
    ----------
    metrics : sequence of str, default=("recall@20", "mrr@20")
        Metric names such as ``"recall@20"``, ``"mrr@10"``, ``"ndcg@20"``.
    ties : {"conservative", "optimistic", "median"}, default="conservative"

    Examples
    --------
    >>> NextItemScorer(["recall@20", "mrr@20"])
    NextItemScorer(['recall@20', 'mrr@20'])

    Use it as ``GridSearchCV(est, grid, scoring=NextItemScorer([...]), refit="mrr@20")``.
    """

    def __init__(self, metrics=("recall@20", "mrr@20"), *, ties: str = "conservative"):
        if isinstance(metrics, str):
            metrics = [metrics]
        self.metrics = list(metrics)
        if not self.metrics:
            raise ValueError("metrics must name at least one metric.")
        self._parsed = [_parse_metric(m) for m in self.metrics]
        if ties not in TIE_MODES:
            raise ValueError(f"ties must be one of {TIE_MODES}, got {ties!r}.")
        self.ties = ties

    def __call__(self, estimator, X, y=None) -> dict:
        ranks = _known_ranks(estimator, X, self.ties)
        return {name: _METRICS[metric](ranks, k)
                for name, (metric, k) in zip(self.metrics, self._parsed)}

    def __repr__(self) -> str:
        extra = "" if self.ties == "conservative" else f", ties={self.ties!r}"
        return f"NextItemScorer({self.metrics!r}{extra})"


def get_scorer(name: str, *, ties: str = "conservative") -> _RankScorer:
    """Look up a scorer by name, e.g. ``get_scorer("mrr@20")``.

    Examples
    --------
    >>> get_scorer("mrr@20"), get_scorer("Recall@5")
    (MRRAtK(20), RecallAtK(5))
    """
    metric, k = _parse_metric(name)
    cls = {"recall": RecallAtK, "hitrate": RecallAtK, "hit_rate": RecallAtK,
           "mrr": MRRAtK, "ndcg": NDCGAtK}[metric]
    return cls(k, ties=ties)
