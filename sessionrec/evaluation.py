"""The next-item evaluation protocol, shared by every model.

Protocol (the official GRU4Rec one):

1. Events whose item was not seen in training are dropped from the test sessions and
   counted.
2. Each test session is fed to the model event by event; after every event but the
   session's last, the true next item is ranked against **all** training items (no
   sampling, items already in the session are not excluded).
3. Metrics are computed from those ranks (:mod:`sessionrec.metrics`).

Tie modes, for the rank of a target with score ``s`` among ``n`` items:

* ``"conservative"`` (default, as the official code): number of items with score >= ``s``
  (the target included), so every tie counts against the model;
* ``"optimistic"``: 1 + number of items with score > ``s``;
* ``"median"``: the mean of the two.

A NaN score ranks last: a NaN target gets rank ``n``; NaN scores of other items never
count as higher than the target's.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ._native import kernels as _kernels
from .metrics import (
    TIE_MODES,
    _checked_final_estimator,
    hit_rate_at_k,
    mrr_at_k,
    ndcg_at_k,
    recall_at_k,
)

__all__ = ["ranks_from_scores", "ranks_from_counts", "evaluate", "TIE_MODES"]


def check_ties(ties) -> str:
    if ties not in TIE_MODES:
        raise ValueError(f"ties must be one of {', '.join(map(repr, TIE_MODES))}; got {ties!r}.")
    return ties


def ranks_from_scores(scores, targets, ties: str = "conservative", *,
                      fused: bool | None = None) -> torch.Tensor:
    """Rank of each row's target item among all columns.

    Parameters
    ----------
    scores : Tensor or array of shape (n_rows, n_items)
        Scores of every item, higher is better.
    targets : Tensor or array of int of shape (n_rows,)
        Column of the true item in each row.
    ties : {"conservative", "optimistic", "median"}, default="conservative"
    fused : bool or None, default=None
        Whether float32 scores on the CPU are counted by the C kernel: an evaluation's
        choice of backend, made once (``SessionRecommender._iter_ranks``); None decides
        here (:func:`sessionrec._native.kernels.fused_for`). Other scores always take
        PyTorch's comparisons.

    Returns
    -------
    ranks : Tensor of float64, shape (n_rows,)
        1-based ranks, on the device of ``scores``.

    Notes
    -----
    Float32 scores on the CPU are counted by a C kernel (``sessionrec._native.kernels``) in
    one pass, without the boolean matrix a comparison writes; the counts are the same.

    Examples
    --------
    >>> scores = [[0.5, 0.9, 0.5, 0.1]]
    >>> [ranks_from_scores(scores, [0], t).item() for t in TIE_MODES]
    [3.0, 2.0, 2.5]
    """
    check_ties(ties)
    scores = torch.as_tensor(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-dimensional, got shape {tuple(scores.shape)}.")
    targets = torch.as_tensor(targets, device=scores.device).to(torch.long).reshape(-1, 1)
    n_items = scores.shape[1]
    strict = ties != "conservative"
    fused = _kernels.fused_for(scores.device) if fused is None else fused
    if (fused and scores.dtype == torch.float32 and scores.device.type == "cpu"
            and len(targets) == len(scores)):
        # One pass over the scores in C (sessionrec/_native/csrc/), the same counts; it
        # checks the targets' range before anything reads them.
        at_least, above = _kernels.rank_counts(scores, targets, strict)
        target_scores = scores.gather(1, targets)
    else:
        target_scores = scores.gather(1, targets)
        # Comparisons written straight into a float buffer and summed: counting a boolean
        # tensor casts it to int64 first, which costs several times more than this. Float
        # counts are exact while the number of items is below 2**24 (float32) or 2**53.
        counts = torch.empty(scores.shape, device=scores.device,
                             dtype=torch.float32 if n_items < 2**24 else torch.float64)
        above = (torch.gt(scores, target_scores, out=counts).sum(1).double()
                 if strict else None)
        at_least = (torch.ge(scores, target_scores, out=counts).sum(1).double()
                    if ties != "optimistic" else None)
    return ranks_from_counts(at_least, above, target_scores, n_items, ties)


def ranks_from_counts(at_least: torch.Tensor | None, above: torch.Tensor | None,
                      target_scores: torch.Tensor, n_items: int,
                      ties: str = "conservative") -> torch.Tensor:
    """:func:`ranks_from_scores` from counts already taken: per row, the number of items
    scoring >= (``at_least``; needed unless ``ties`` is ``"optimistic"``) and > (``above``;
    needed unless ``ties`` is ``"conservative"``) the target, and the target's score (NaN
    ranks last). The tie modes' one definition, also for models whose kernels count
    without a score matrix (see ``GRU4RecRecommender``)."""
    if ties == "conservative":
        ranks = at_least
    elif ties == "optimistic":
        ranks = above + 1.0
    else:
        ranks = (at_least + above + 1.0) / 2.0
    nan_target = torch.isnan(target_scores.reshape(-1))
    return torch.where(nan_target, torch.full_like(ranks, float(n_items)), ranks)


def _first_rows_of_sessions(estimator, X: pd.DataFrame) -> np.ndarray:
    """Positions in ``X`` of each session's first event (by time, ties by row order)."""
    from sklearn.pipeline import Pipeline

    while isinstance(estimator, Pipeline):
        estimator = estimator.steps[-1][1]
    session_key, time_key = estimator.session_key, estimator.time_key
    order = np.lexsort((np.arange(len(X)), X[time_key].to_numpy()))
    sessions = X[session_key].to_numpy()[order]
    seen = pd.Series(sessions).duplicated().to_numpy()
    return np.sort(order[~seen])


_METRIC_FUNCS = {"recall": recall_at_k, "mrr": mrr_at_k, "ndcg": ndcg_at_k,
                 "hitrate": hit_rate_at_k}


def evaluate(estimator, X, cutoffs=(5, 10, 20), *, ties: str = "conservative",
             metrics=("recall", "mrr", "ndcg"), history=None) -> dict:
    """Evaluate a fitted recommender on test events under the next-item protocol.

    Parameters
    ----------
    estimator : fitted sessionrec recommender, or a Pipeline ending in one
    X : pandas.DataFrame
        Test events (same columns as in training).
    cutoffs : int or sequence of int, default=(5, 10, 20)
    ties : {"conservative", "optimistic", "median"}, default="conservative"
    metrics : sequence of {"recall", "mrr", "ndcg", "hitrate"}
    history : pandas.DataFrame or None, default=None
        Events fed to the model before ``X`` and not scored: only the targets of ``X``
        count, and of those only events after the first of their session in ``X`` (the
        first event of a test session is an input, as for every other model). This is
        the HRNN paper's protocol for models that carry state across a user's sessions
        without storing it (e.g. RNN Concat, a Pipeline of
        :class:`~sessionrec.preprocessing.ConcatenateUserSessions` and GRU4Rec, given the
        training events as history). Models that store user states after ``fit``
        (:class:`~sessionrec.HRNNRecommender`) need no history.

    Returns
    -------
    dict
        ``"<metric>@<k>"`` for every metric and cut-off, plus ``"n_targets"`` (targets
        ranked), ``"n_dropped"`` (targets dropped because their item, or every event
        before them, was unseen in training) and ``"ties"``.

    Examples
    --------
    >>> import pandas as pd
    >>> from sessionrec import PopularityRecommender
    >>> train = pd.DataFrame({"SessionId": [1, 1, 2, 2, 2], "ItemId": [1, 2, 1, 3, 1],
    ...                       "Time": [0, 1, 2, 3, 4]})
    >>> test = pd.DataFrame({"SessionId": [9, 9, 9], "ItemId": [2, 1, 99],
    ...                      "Time": [0, 1, 2]})
    >>> evaluate(PopularityRecommender().fit(train), test, cutoffs=[1], metrics=["recall"])
    {'recall@1': 1.0, 'n_targets': 1, 'n_dropped': 1, 'ties': 'conservative'}
    """
    check_ties(ties)
    if np.isscalar(cutoffs):
        cutoffs = [cutoffs]
    cutoffs = [int(k) for k in cutoffs]
    if isinstance(metrics, str):
        metrics = [metrics]
    unknown = [m for m in metrics if m not in _METRIC_FUNCS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {sorted(_METRIC_FUNCS)}.")
    if history is not None:
        # Fresh positional labels; a target counts when its row came from X.
        n_history = len(history)
        X = pd.concat([history, X], ignore_index=True)
    est, X = _checked_final_estimator(estimator, X)
    ranks = est.rank_next_items(X, ties=ties)
    if history is not None:
        ranks = ranks[ranks.index >= n_history]
        first = _first_rows_of_sessions(estimator, X.iloc[n_history:])
        ranks = ranks[~ranks.index.isin(first + n_history)]
    ranks = np.asarray(ranks, dtype=np.float64)
    dropped = np.isnan(ranks)
    known = ranks[~dropped]
    result = {f"{m}@{k}": _METRIC_FUNCS[m](known, k) for m in metrics for k in cutoffs}
    result.update(n_targets=int(known.size), n_dropped=int(dropped.sum()), ties=ties)
    return result
