"""Neighbourhood baselines: Item-KNN and session-based kNN."""

from __future__ import annotations

from numbers import Real
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.utils._param_validation import Interval, StrOptions

from .._base import SessionRecommender
from .._events import SessionEvents, ragged_arange
from .._validation import NON_NEGATIVE_REAL, POSITIVE_INT, POSITIVE_REAL
from ._item_matrix import (
    _ItemMatrixRecommender,
    csr_from_state,
    csr_state,
    popularity_scores,
    scores_below_row,
    top_k_keep,
    top_k_per_row,
)

__all__ = ["ItemKNNRecommender", "SKNNRecommender", "STANRecommender", "VSKNNRecommender"]


class ItemKNNRecommender(_ItemMatrixRecommender):
    """Item-KNN: recommend the nearest neighbours of the session's last item.

    The item-to-item baseline of the GRU4Rec paper (Hidasi et al., ICLR 2016, section 4,
    after Linden et al. 2003), as defined in the session-rec framework:

    ``sim(i, j) = cooc(i, j) / ((supp_i + shrink)^alpha * (supp_j + shrink)^(1 - alpha))``

    where ``cooc = C^T C`` for the session x item matrix ``C`` of event counts, ``supp_i``
    is item i's number of training events, and an item is not its own neighbour. Each
    item keeps its ``n_neighbors`` most similar items; a session's scores are the
    similarities of its last (known) item to those neighbours. Every other item comes
    after the neighbours, ordered by popularity (a score in (-1, 0), see
    ``scores_below_row`` in ``sessionrec.models._item_matrix``), so the list of an item
    without neighbours, or with fewer than asked for, is completed by POP (as S-POP breaks
    its ties).
    The co-occurrence comes from a sparse product; no dense n_items x n_items matrix is
    ever built. A session without any known item is recommended by popularity.

    Parameters
    ----------
    n_neighbors : int, default=100
        Neighbours kept per item.
    shrink : float, default=20.0
        The ``lambda`` of the definition, which damps the similarity of rare items.
    alpha : float in [0, 1], default=0.5
        Asymmetry of the normalisation (0.5 = cosine-like).
    session_key : str, default="SessionId"
        Column of session labels.
    item_key : str, default="ItemId"
        Column of item labels.
    time_key : str, default="Time"
        Column of event times.
    device : str, default="auto"
        Where scores are built and ranked: ``"auto"``, ``"cpu"``, ``"cuda"``.
    verbose : bool or int, default=False
        Log a line when fitting.

    Attributes
    ----------
    item_matrix_ : scipy.sparse.csr_matrix of shape (n_items, n_items)
        The kept similarities, at most ``n_neighbors`` per row.
    item_index_ : ItemIndex
    n_items_ : int
    device_ : torch.device

    References
    ----------
    Hidasi, Karatzoglou, Baltrunas, Tikk. Session-based recommendations with recurrent
    neural networks. ICLR 2016. Ludewig, Jannach. Evaluation of session-based
    recommendation algorithms. User Modeling and User-Adapted Interaction, 2018.

    Examples
    --------
    >>> import pandas as pd
    >>> X = pd.DataFrame({"SessionId": [1, 1, 2, 2, 3, 3], "ItemId": list("abacbc"),
    ...                   "Time": range(6)})
    >>> knn = ItemKNNRecommender(device="cpu").fit(X)
    >>> knn.predict_next(pd.DataFrame({"SessionId": [9], "ItemId": ["a"], "Time": [0]}),
    ...                  k=2)
    rank       1  2
    SessionId
    9          b  c
    """

    def __init__(self, *, n_neighbors=100, shrink=20.0, alpha=0.5, session_key="SessionId",
                 item_key="ItemId", time_key="Time", device="auto", verbose=False):
        self.n_neighbors = n_neighbors
        self.shrink = shrink
        self.alpha = alpha
        self.session_key = session_key
        self.item_key = item_key
        self.time_key = time_key
        self.device = device
        self.verbose = verbose

    _parameter_constraints: dict = {
        **SessionRecommender._parameter_constraints,
        "n_neighbors": POSITIVE_INT, "shrink": NON_NEGATIVE_REAL,
        "alpha": [Interval(Real, 0, 1, closed="both")],
    }

    def _build_matrix(self, events: SessionEvents) -> sp.csr_matrix:
        counts = sp.csr_matrix(
            (np.ones(events.n_events, dtype=np.float64),
             (events.session_of_event, events.items)),
            shape=(events.n_sessions, self.n_items_))  # duplicates are summed: event counts
        cooc = (counts.T @ counts).tocsr()
        cooc.setdiag(0.0)
        cooc.eliminate_zeros()
        support = self.item_index_.support.astype(np.float64) + float(self.shrink)
        left = sp.diags(support ** -float(self.alpha))
        right = sp.diags(support ** -(1.0 - float(self.alpha)))
        return top_k_per_row((left @ cooc @ right).tocsr(), int(self.n_neighbors))


class _CandidatePairs(NamedTuple):
    """(prefix, candidate session) pairs of the session-kNN methods, sorted by (row, session).

    ``triple_start``/``triple_count`` delimit each pair's (prefix entry, session) triples
    in ``triple_entry`` (the prefix entry of each triple).
    """

    rows: np.ndarray
    sessions: np.ndarray
    weight_sum: np.ndarray
    indptr: np.ndarray
    triple_start: np.ndarray
    triple_count: np.ndarray
    triple_entry: np.ndarray

    def triple_max(self, select: np.ndarray, value) -> np.ndarray:
        """Per selected pair, the maximum of ``value(sessions, entries)`` over its triples.

        Computing it after the top-k cut, for the pairs that can still matter, is what
        keeps the per-triple lookups off the hot path.
        """
        counts = self.triple_count[select]
        triples = ragged_arange(self.triple_start[select], counts)
        values = value(np.repeat(self.sessions[select], counts), self.triple_entry[triples])
        return np.maximum.reduceat(values, np.cumsum(counts) - counts) if len(values) else values


class SKNNRecommender(SessionRecommender):
    """Session-based kNN: score items by the training sessions most similar to this one.

    The SKNN ("ContextKNN") method of Jannach & Ludewig (RecSys 2017) as implemented in
    the session-rec framework. For a session prefix with item set ``S``:

    1. candidate neighbours are the training sessions that contain any item of ``S``; if
       there are more than ``sample_size``, only the ``sample_size`` most recent ones (by
       the time of their last event) are kept;
    2. each candidate ``T`` gets ``sim(S, T)``: Jaccard ``|S & T| / |S | T|`` (default) or
       cosine ``|S & T| / sqrt(|S| |T|)`` on item sets;
    3. the ``k`` most similar candidates are the neighbours;
    4. an item's score is the sum of the similarities of the neighbours that contain it.

    Everything is computed for a block of prefixes at once with sparse products (prefix x
    session intersections, then neighbour x item sums); ties in recency are broken in
    favour of the session that started earlier, ties in similarity likewise. Items in no
    neighbour session come after the scored ones, ordered by popularity (as S-POP breaks
    its ties), so a short list is completed by POP rather than by the lowest labels. A
    session without any known item is recommended by popularity.

    Parameters
    ----------
    k : int, default=100
        Number of neighbour sessions.
    sample_size : int or None, default=500
        Most recent candidate sessions kept; None keeps all candidates.
    similarity : {"jaccard", "cosine"}, default="jaccard"
        Similarity of item sets. (session-rec's "cosine" multiplies by ``sqrt(|T|)``
        where it should divide; the formula above is the cosine.)
    session_key, item_key, time_key : str
        Column names.
    device : str, default="auto"
        Where score blocks are ranked.
    verbose : bool or int, default=False
        Log a line when fitting.

    Attributes
    ----------
    session_items_ : scipy.sparse.csr_matrix of shape (n_train_sessions, n_items)
        Binary session x item matrix of the training sessions.
    session_end_ : ndarray
        Time of each training session's last event.

    References
    ----------
    Jannach, Ludewig. When recurrent neural networks meet the neighborhood for
    session-based recommendation. RecSys 2017. Ludewig, Jannach. Evaluation of
    session-based recommendation algorithms. UMUAI 2018.

    Examples
    --------
    >>> import pandas as pd
    >>> X = pd.DataFrame({"SessionId": [1, 1, 2, 2, 3, 3], "ItemId": list("abacbd"),
    ...                   "Time": range(6)})
    >>> sknn = SKNNRecommender(device="cpu").fit(X)
    >>> sknn.predict_next(pd.DataFrame({"SessionId": [9], "ItemId": ["a"], "Time": [0]}),
    ...                   k=3).iloc[0].tolist()
    ['a', 'b', 'c']
    """

    def __init__(self, *, k=100, sample_size=500, similarity="jaccard",
                 session_key="SessionId", item_key="ItemId", time_key="Time", device="auto",
                 verbose=False):
        self.k = k
        self.sample_size = sample_size
        self.similarity = similarity
        self.session_key = session_key
        self.item_key = item_key
        self.time_key = time_key
        self.device = device
        self.verbose = verbose

    _parameter_constraints: dict = {
        **SessionRecommender._parameter_constraints,
        "k": POSITIVE_INT, "sample_size": [None, *POSITIVE_INT],
        "similarity": [StrOptions({"jaccard", "cosine"})],
    }

    def _fit(self, events: SessionEvents) -> None:
        matrix = sp.csr_matrix(
            (np.ones(events.n_events), (events.session_of_event, events.items)),
            shape=(events.n_sessions, self.n_items_))
        matrix.data[:] = 1.0  # item sets: repeated items count once
        self.session_items_ = matrix
        self.session_end_ = np.asarray(events.end_times)
        self._derive()
        self._log("SKNN fitted on %d sessions", events.n_sessions)

    def _derive(self) -> None:
        """State derived from ``session_items_`` and ``session_end_`` (after fit or load)."""
        n_sessions = self.session_items_.shape[0]
        # Recency rank: larger = more recent; among equal times the earlier-starting session
        # (lower index) ranks higher, so top_k_per_row's column tie-break agrees.
        order = np.lexsort((-np.arange(n_sessions), self.session_end_))
        self._recency_ = np.empty(n_sessions, dtype=np.float64)
        self._recency_[order] = np.arange(1, n_sessions + 1)
        self._sizes_ = np.asarray(self.session_items_.sum(axis=1)).ravel()
        self._candidates_ = self._candidate_matrix()

    def _candidate_matrix(self) -> sp.csr_matrix:
        """Item x session matrix of the sessions that can be sampled neighbours.

        With sampling, each item keeps only its ``sample_size`` most recent sessions. That
        is exact: a session among the ``sample_size`` most recent that share an item with
        the prefix is, for every prefix item it contains, among that item's
        ``sample_size`` most recent sessions (else that many more recent sessions would
        share the item, hence the prefix). So the product of the prefix with this matrix
        finds every sampled candidate and its exact overlap with the prefix, while touching
        far fewer sessions.
        """
        by_item = self.session_items_.T.tocsr()
        if self.sample_size is None:
            return by_item
        by_item.sort_indices()
        by_item.data = self._recency_[by_item.indices]
        recent = top_k_per_row(by_item, int(self.sample_size))
        recent.data[:] = 1.0
        return recent

    def _prefix_sets(self, events: SessionEvents, positions: np.ndarray) -> sp.csr_matrix:
        """Binary prefix x item matrix of each prefix's item set."""
        rows, items, _, _ = self._prefix_entries(events, positions)
        return sp.csr_matrix((np.ones(len(rows)), (rows, items)),
                             shape=(len(positions), self.n_items_))

    def _scores(self, prefix: sp.csr_matrix) -> np.ndarray:
        overlap = (prefix @ self._candidates_).tocsr()  # |S & T| for candidate sessions
        overlap.sort_indices()
        if self.sample_size is not None:  # the most recent candidates of each prefix
            keep, indptr = top_k_keep(overlap.indptr, self._recency_[overlap.indices],
                                      int(self.sample_size))
            overlap = sp.csr_matrix((overlap.data[keep], overlap.indices[keep], indptr),
                                    shape=overlap.shape)
            overlap.has_sorted_indices = True
        rows = np.repeat(np.arange(overlap.shape[0]), np.diff(overlap.indptr))
        size_s = np.asarray(prefix.sum(axis=1)).ravel()[rows]
        size_t = self._sizes_[overlap.indices]
        if self.similarity == "jaccard":
            overlap.data = overlap.data / (size_s + size_t - overlap.data)
        else:
            overlap.data = overlap.data / np.sqrt(size_s * size_t)
        neighbours = top_k_per_row(overlap, int(self.k))
        return np.asarray((neighbours @ self.session_items_).todense(), dtype=np.float32)

    @staticmethod
    def _prefix_entries(events: SessionEvents, positions: np.ndarray):
        """Distinct items of each prefix with their last (1-based) position in it.

        Returns ``rows`` (prefix number), ``items``, ``count`` (last position) and the
        prefix ``lengths``; entries are sorted by (row, item).
        """
        starts = events.session_starts[positions]
        lengths = positions - starts + 1
        rows = np.repeat(np.arange(len(positions)), lengths)
        items = events.items[ragged_arange(starts, lengths)]
        count = np.arange(len(rows)) - np.repeat(np.cumsum(lengths) - lengths, lengths) + 1
        order = np.lexsort((-count, items, rows))
        rows, items, count = rows[order], items[order], count[order]
        first = np.r_[True, (rows[1:] != rows[:-1]) | (items[1:] != items[:-1])]
        return rows[first], items[first], count[first], lengths

    def _sampled_pairs(self, n_rows: int, rows, items, weight) -> _CandidatePairs:
        """(prefix, candidate session) pairs, the most recent ``sample_size`` per prefix.

        Every prefix entry (row, item, weight) is expanded to the candidate sessions of its
        item, giving (row, session, entry) triples grouped by (row, session) into pairs.
        The pairs carry the sum of their entries' weights; per-triple values are computed
        later, only for the pairs that survive (see :meth:`_CandidatePairs.triple_max`).
        """
        n_sessions = self.session_items_.shape[0]
        cand = self._candidates_
        per_item = np.diff(cand.indptr)[items]
        entry = np.repeat(np.arange(len(items)), per_item)
        t_sessions = cand.indices[ragged_arange(cand.indptr[items], per_item)]
        key = rows[entry] * n_sessions + t_sessions
        order = np.argsort(key, kind="stable")
        key, entry = key[order], entry[order]
        group_start = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
        group_size = np.diff(np.r_[group_start, len(key)])
        pair_key = key[group_start]
        pair_rows, pair_sessions = pair_key // n_sessions, pair_key % n_sessions
        weight_sum = np.add.reduceat(weight[entry], group_start)
        indptr = np.zeros(n_rows + 1, dtype=np.int64)
        np.cumsum(np.bincount(pair_rows, minlength=n_rows), out=indptr[1:])
        if self.sample_size is not None:  # the most recent candidates of each prefix
            keep, indptr = top_k_keep(indptr, self._recency_[pair_sessions],
                                      int(self.sample_size))
            pair_rows, pair_sessions = pair_rows[keep], pair_sessions[keep]
            weight_sum = weight_sum[keep]
            group_start, group_size = group_start[keep], group_size[keep]
        return _CandidatePairs(pair_rows, pair_sessions, weight_sum, indptr,
                               group_start, group_size, entry)

    def _iter_scores(self, events, score_after):
        positions = np.flatnonzero(score_after)
        starts = events.session_starts[positions]
        blocks = self._blocks(positions, extra_cost=positions - starts + 1)
        below = scores_below_row(self).cpu().numpy()

        def score(block):
            scores = self._block_scores(events, block)
            # Items in no neighbour session (score 0; every other score is positive)
            # follow by popularity: in place, in the worker thread. (Adding is exact:
            # x + 0 * below is x; and it is 5x as fast as numpy's masked copy.)
            scores += (scores == 0) * below
            return scores

        for block, scores in self._map_blocks(score, blocks):
            yield block, torch.as_tensor(scores, device=self.device_)

    def _block_scores(self, events: SessionEvents, positions: np.ndarray) -> np.ndarray:
        """Scores of all items after each of ``positions`` (numpy, in a worker thread)."""
        return self._scores(self._prefix_sets(events, positions))

    def _empty_history_scores(self, events, sessions):
        return popularity_scores(self)

    def _get_state(self):
        return {**csr_state(self.session_items_),
                "end": torch.as_tensor(self.session_end_.astype(np.float64))}

    def _set_state(self, state):
        self.session_items_ = csr_from_state(state, self.n_items_)
        self.session_end_ = state["end"].numpy()
        self._derive()


_POSITION_WEIGHTS = {
    "same": lambda count, length: np.ones_like(count, dtype=np.float64),
    "div": lambda count, length: count / length,
    "quadratic": lambda count, length: (count / length) ** 2,
    "log": lambda count, length: 1.0 / np.log10(length - count + 1.7),
}
_SCORE_WEIGHTS = {
    "same": lambda step: np.ones_like(step, dtype=np.float64),
    "div": lambda step: 1.0 / step,
    "quadratic": lambda step: 1.0 / (step * step),
    "log": lambda step: 1.0 / np.log10(step + 1.7),
}


class VSKNNRecommender(SKNNRecommender):
    """Vector-multiplication session kNN (V-SKNN): SKNN that favours recent session items.

    The V-SKNN method of Ludewig & Jannach (UMUAI 2018; session-rec's VMContextKNN with its
    defaults). Candidates are sampled as in :class:`SKNNRecommender`; then, for a prefix of
    length ``L`` whose item at position ``c`` (1-based, its last occurrence for repeated
    items) has weight ``w(c, L)`` (``position_weighting``, default ``c / L``):

    * ``sim(S, T) = sum of w over the items T shares with S / number of distinct items of S``;
    * the ``k`` most similar candidates are the neighbours;
    * a neighbour's items gain ``sim(S, T) * d(step)``, where ``step`` counts back from the
      end of the prefix to the most recent prefix item that T contains
      (``score_weighting``, default ``d = 1 / step``).

    Items already in the session are recommended too (session-rec's ``remind=True``).

    Parameters
    ----------
    k : int, default=100
        Number of neighbour sessions.
    sample_size : int or None, default=1000
        Most recent candidate sessions kept; None keeps all.
    position_weighting : {"div", "same", "quadratic", "log"}, default="div"
        ``w(c, L)``: ``c / L``, 1, ``(c / L)^2`` or ``1 / log10(L - c + 1.7)``.
    score_weighting : {"div", "same", "quadratic", "log"}, default="div"
        ``d(step)``: ``1 / step``, 1, ``1 / step^2`` or ``1 / log10(step + 1.7)``.
    session_key, item_key, time_key : str
        Column names.
    device : str, default="auto"
        Where score blocks are ranked.
    verbose : bool or int, default=False
        Log a line when fitting.

    References
    ----------
    Ludewig, Jannach. Evaluation of session-based recommendation algorithms. User Modeling
    and User-Adapted Interaction, 2018.

    Examples
    --------
    >>> import pandas as pd
    >>> X = pd.DataFrame({"SessionId": [1, 1, 2, 2, 3, 3], "ItemId": list("abacbd"),
    ...                   "Time": range(6)})
    >>> vsknn = VSKNNRecommender(device="cpu").fit(X)
    >>> vsknn.predict_next(pd.DataFrame({"SessionId": [9, 9], "ItemId": ["c", "b"],
    ...                                  "Time": [0, 1]}), k=2).iloc[0].tolist()
    ['b', 'a']
    """

    def __init__(self, *, k=100, sample_size=1000, position_weighting="div",
                 score_weighting="div", session_key="SessionId", item_key="ItemId",
                 time_key="Time", device="auto", verbose=False):
        self.k = k
        self.sample_size = sample_size
        self.position_weighting = position_weighting
        self.score_weighting = score_weighting
        self.session_key = session_key
        self.item_key = item_key
        self.time_key = time_key
        self.device = device
        self.verbose = verbose

    # Candidate sampling, fitting and state are SKNN's; similarity and scoring differ.

    _parameter_constraints: dict = {
        **SessionRecommender._parameter_constraints,
        "k": POSITIVE_INT, "sample_size": [None, *POSITIVE_INT],
        "position_weighting": [StrOptions(set(_POSITION_WEIGHTS))],
        "score_weighting": [StrOptions(set(_SCORE_WEIGHTS))],
    }

    def _block_scores(self, events: SessionEvents, positions: np.ndarray) -> np.ndarray:
        n_rows, n_sessions = len(positions), self.session_items_.shape[0]
        rows, items, count, lengths = self._prefix_entries(events, positions)
        weight = _POSITION_WEIGHTS[self.position_weighting](count.astype(np.float64),
                                                            lengths[rows])
        distinct = np.bincount(rows, minlength=n_rows)
        pairs = self._sampled_pairs(n_rows, rows, items, weight)
        sim = pairs.weight_sum / distinct[pairs.rows]
        keep_k, indptr = top_k_keep(pairs.indptr, sim, int(self.k))
        # The most recent shared item's position in the prefix, for the neighbours only.
        last_count = pairs.triple_max(keep_k, lambda sessions, entry: count[entry])
        decay = _SCORE_WEIGHTS[self.score_weighting](
            (lengths[pairs.rows[keep_k]] - last_count + 1).astype(np.float64))
        neighbours = sp.csr_matrix((sim[keep_k] * decay, pairs.sessions[keep_k], indptr),
                                   shape=(n_rows, n_sessions))
        return np.asarray((neighbours @ self.session_items_).todense(), dtype=np.float32)


class STANRecommender(SKNNRecommender):
    """STAN: session-aware kNN with position and time decays (Garg et al., SIGIR 2019).

    As implemented in session-rec, on top of the SKNN candidates (the ``sample_size`` most
    recent training sessions sharing an item with the prefix):

    * the prefix item at position ``p`` of ``L`` (its last occurrence) has weight
      ``w = exp((p - L) / lambda_spw)``;
    * ``sim(S, T) = sum of w over shared items / (sqrt(sum of w^2 over S) * sqrt(|T|))``,
      times ``exp(-(t_now - t_T) / lambda_snh)`` where ``t_now`` is the time of the prefix's
      last event and ``t_T`` the time of T's last event (``lambda_snh`` in days);
    * the ``k`` most similar candidates are the neighbours;
    * each item j of a neighbour T gains ``sim * exp(-|pos_T(j) - pos_T(i*)| / lambda_inh)``,
      where positions are last occurrences in T and ``i*`` is the last item of T that is
      also in the prefix.

    Times are seconds (numbers) or datetimes; a neighbour that ended after the prefix's
    last event (possible only for inputs older than the training data) counts as age 0.
    Items already in the session are recommended too (session-rec's ``remind=True``).

    Parameters
    ----------
    k : int, default=100
        Number of neighbour sessions.
    sample_size : int or None, default=5000
        Most recent candidate sessions kept; None keeps all.
    lambda_spw : float, default=1.02
        Decay of the prefix position weights.
    lambda_snh : float, default=5.0
        Decay of neighbour sessions by age, in days.
    lambda_inh : float, default=2.05
        Decay of a neighbour's items by their distance from the shared item.
    session_key, item_key, time_key : str
        Column names.
    device : str, default="auto"
        Where score blocks are ranked.
    verbose : bool or int, default=False
        Log a line when fitting.

    References
    ----------
    Garg, Gupta, Malhotra, Vig, Shroff. Sequence and time aware neighborhood for
    session-based recommendations: STAN. SIGIR 2019.

    Examples
    --------
    >>> import pandas as pd
    >>> X = pd.DataFrame({"SessionId": [1, 1, 2, 2, 3, 3], "ItemId": list("abacbd"),
    ...                   "Time": range(6)})
    >>> stan = STANRecommender(device="cpu").fit(X)
    >>> stan.predict_next(pd.DataFrame({"SessionId": [9], "ItemId": ["d"], "Time": [9]}),
    ...                   k=2).iloc[0].tolist()
    ['d', 'b']
    """

    def __init__(self, *, k=100, sample_size=5000, lambda_spw=1.02, lambda_snh=5.0,
                 lambda_inh=2.05, session_key="SessionId", item_key="ItemId", time_key="Time",
                 device="auto", verbose=False):
        self.k = k
        self.sample_size = sample_size
        self.lambda_spw = lambda_spw
        self.lambda_snh = lambda_snh
        self.lambda_inh = lambda_inh
        self.session_key = session_key
        self.item_key = item_key
        self.time_key = time_key
        self.device = device
        self.verbose = verbose

    _parameter_constraints: dict = {
        **SessionRecommender._parameter_constraints,
        "k": POSITIVE_INT, "sample_size": [None, *POSITIVE_INT],
        "lambda_spw": POSITIVE_REAL, "lambda_snh": POSITIVE_REAL, "lambda_inh": POSITIVE_REAL,
    }

    def _fit(self, events: SessionEvents) -> None:
        super()._fit(events)
        # Last position (1-based) of every item in every training session, as a CSR matrix
        # sorted by (session, item), and the time of each session's last event in seconds.
        position = np.arange(events.n_events) - events.session_starts + 1
        session = events.session_of_event
        order = np.lexsort((-position, events.items, session))
        session, items, position = session[order], events.items[order], position[order]
        first = np.r_[True, (session[1:] != session[:-1]) | (items[1:] != items[:-1])]
        indptr = np.zeros(events.n_sessions + 1, dtype=np.int64)
        np.cumsum(np.bincount(session[first], minlength=events.n_sessions), out=indptr[1:])
        self._last_position_ = sp.csr_matrix(
            (position[first].astype(np.float64), items[first], indptr),
            shape=(events.n_sessions, self.n_items_))
        last_event = events.offsets[1:] - 1
        self._end_seconds_ = events.seconds[np.maximum(last_event, 0)]

    def _block_scores(self, events: SessionEvents, positions: np.ndarray) -> np.ndarray:
        n_rows = len(positions)
        rows, items, count, lengths = self._prefix_entries(events, positions)
        weight = np.exp((count - lengths[rows]) / float(self.lambda_spw))
        norm = np.sqrt(np.bincount(rows, weights=weight * weight, minlength=n_rows))
        table = self._last_position_
        pairs = self._sampled_pairs(n_rows, rows, items, weight)
        pair_rows, pair_sessions, indptr = pairs.rows, pairs.sessions, pairs.indptr
        # A neighbour that ended after the prefix's event (only with inputs older than the
        # training data) counts as age 0 rather than getting an unbounded boost.
        now = events.seconds[positions][pair_rows]
        age = np.maximum(now - self._end_seconds_[pair_sessions], 0.0)
        sim = (pairs.weight_sum / (norm[pair_rows] * np.sqrt(self._sizes_[pair_sessions]))
               * np.exp(-age / (float(self.lambda_snh) * 86400.0)))
        keep_k, _ = top_k_keep(indptr, sim, int(self.k))
        pair_rows, pair_sessions, sim = pair_rows[keep_k], pair_sessions[keep_k], sim[keep_k]
        # Every item of every neighbour with its last position in the neighbour.
        n_items_of = np.diff(table.indptr)[pair_sessions]
        entries = ragged_arange(table.indptr[pair_sessions], n_items_of)
        cell = np.repeat(pair_rows, n_items_of) * self.n_items_ + table.indices[entries]
        position = table.data[entries]
        # The anchor: the last position in the neighbour of an item shared with the prefix,
        # found through a dense (prefix x item) membership mask, the size of the scores.
        in_prefix = np.zeros(n_rows * self.n_items_, dtype=bool)
        in_prefix[rows * self.n_items_ + items] = True
        anchor = np.maximum.reduceat(np.where(in_prefix[cell], position, 0.0),
                                     np.cumsum(n_items_of) - n_items_of)
        # Distances are whole numbers: look their decay up rather than exponentiate each.
        distance = np.abs(position - np.repeat(anchor, n_items_of)).astype(np.intp)
        decay = np.exp(-np.arange(distance.max(initial=0) + 1) / float(self.lambda_inh))
        contribution = np.repeat(sim, n_items_of) * decay[distance]
        scores = np.bincount(cell, weights=contribution, minlength=n_rows * self.n_items_)
        return scores.reshape(n_rows, self.n_items_).astype(np.float32)

    def _get_state(self):
        return {**super()._get_state(), **csr_state(self._last_position_, "pos_"),
                "end_seconds": torch.as_tensor(self._end_seconds_.astype(np.float64))}

    def _set_state(self, state):
        super()._set_state(state)
        self._last_position_ = csr_from_state(state, self.n_items_, "pos_")
        self._end_seconds_ = state["end_seconds"].numpy()
