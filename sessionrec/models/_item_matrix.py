"""Recommenders that score from a sparse item x item matrix and the session's last item."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from .._base import SessionRecommender
from .._events import SessionEvents, ragged_arange

__all__ = ["top_k_keep", "top_k_per_row", "csr_state", "csr_from_state",
           "popularity_scores", "scores_below_row"]


def top_k_keep(indptr: np.ndarray, values: np.ndarray, k: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """Which entries of a CSR structure are among the ``k`` largest ``values`` of their row.

    Rows with at most ``k`` entries are kept whole. For longer rows the k-th largest value
    is found by a linear-time partition; entries above it are kept, and of those equal to
    it the first ones in order (in a CSR matrix with sorted indices: smaller column first),
    up to ``k`` per row: the same entries a stable sort would keep.

    Returns
    -------
    keep : ndarray of bool, shape (nnz,)
    new_indptr : ndarray of int64
        Row pointers of the kept entries.
    """
    counts = np.diff(indptr)
    keep = np.ones(len(values), dtype=bool)
    long_rows = np.flatnonzero(counts > k)
    # Rows are padded into blocks for a vectorised partition. Grouping them by length class
    # (powers of two) bounds the padding at 2x, however unequal the row lengths are.
    length_class = np.ceil(np.log2(counts[long_rows])).astype(np.int64)
    for cls in np.unique(length_class):
        _keep_top_k_rows(indptr, counts, values, long_rows[length_class == cls], k, keep)
    new_indptr = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(np.minimum(counts, k), out=new_indptr[1:])
    return keep, new_indptr


def _keep_top_k_rows(indptr, counts, values, long_rows, k, keep) -> None:
    """Write into ``keep`` which entries of ``long_rows`` (all longer than k) survive."""
    lengths = counts[long_rows]
    entries = ragged_arange(indptr[long_rows], lengths)
    starts = np.cumsum(lengths) - lengths
    v = values[entries]
    # The k-th largest value of each row, by a linear-time partition of the rows padded
    # into one block; then keep what is larger, and of the entries equal to it the first
    # ones in order, up to k in all. Exactly what a stable sort would keep.
    width = int(lengths.max())
    block = np.full(len(long_rows) * width, -np.inf)
    block[np.arange(len(v)) + np.repeat(np.arange(len(long_rows)) * width - starts, lengths)] = v
    block = block.reshape(len(long_rows), width)
    block.partition(width - k, axis=1)  # in place: the k-th largest lands at width - k
    kth = block[:, width - k]
    threshold = np.repeat(kth, lengths)
    greater, equal = v > threshold, v == threshold
    room = k - np.add.reduceat(greater, starts, dtype=np.int64)  # every row is non-empty
    seen = np.cumsum(equal)
    before = np.where(starts > 0, seen[starts - 1], 0)
    equal_rank = seen - np.repeat(before, lengths)  # 1-based among a row's equals
    keep[entries] = greater | (equal & (equal_rank <= np.repeat(room, lengths)))


def top_k_per_row(matrix: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Keep the ``k`` largest entries of every row (ties: smaller column first)."""
    matrix = matrix.tocsr()
    matrix.sort_indices()
    keep, indptr = top_k_keep(matrix.indptr, matrix.data, k)
    return sp.csr_matrix((matrix.data[keep], matrix.indices[keep], indptr),
                         shape=matrix.shape)


def csr_state(matrix: sp.csr_matrix, prefix: str = "") -> dict:
    """A CSR matrix as tensors, for ``_get_state`` (read back by :func:`csr_from_state`)."""
    return {f"{prefix}indptr": torch.as_tensor(matrix.indptr.astype(np.int64)),
            f"{prefix}indices": torch.as_tensor(matrix.indices.astype(np.int64)),
            f"{prefix}values": torch.as_tensor(matrix.data.astype(np.float64))}


def csr_from_state(state: dict, n_cols: int, prefix: str = "") -> sp.csr_matrix:
    """The CSR matrix that :func:`csr_state` stored."""
    indptr = state[f"{prefix}indptr"].numpy()
    return sp.csr_matrix((state[f"{prefix}values"].numpy(), state[f"{prefix}indices"].numpy(),
                          indptr), shape=(len(indptr) - 1, n_cols))


def popularity_scores(estimator: SessionRecommender) -> torch.Tensor:
    """Item support as scores: the fallback for sessions without a known item."""
    return torch.as_tensor(estimator.item_index_.support, dtype=torch.float32,
                           device=estimator.device_)


def scores_below_row(estimator: SessionRecommender) -> torch.Tensor:
    """The scores of the items a model gives no score (outside a session's matrix row,
    or in no neighbour session): ``support / (max support + 1) - 1``, in (-1, 0), so below
    every positive score and ordered by popularity among themselves, as S-POP breaks its
    ties. In float32, whose 24 bits keep supports below about 10 million apart."""
    support = torch.as_tensor(estimator.item_index_.support, dtype=torch.float64)
    return (support / (support.max() + 1.0) - 1.0).to(torch.float32).to(estimator.device_)


class _ItemMatrixRecommender(SessionRecommender):
    """Base of recommenders whose scores are one row of an item x item matrix.

    A subclass builds ``item_matrix_`` (scipy CSR, n_items x n_items, positive entries) in
    ``_build_matrix``; a session's scores are the row of its last known item. Items not in
    that row come after the row's items, by popularity (:func:`scores_below_row`), as S-POP
    breaks its ties: a last item with an empty row (no neighbour, transition or rule, as
    for most items of a frame of one-event sessions) gets the POP list rather than the
    lowest labels. Rows are expanded to dense score blocks on the device with one scatter
    per block. A session without any known item is recommended by popularity.
    """

    def _build_matrix(self, events: SessionEvents) -> sp.csr_matrix:
        raise NotImplementedError

    def _fit(self, events: SessionEvents) -> None:
        self.item_matrix_ = self._build_matrix(events).tocsr()
        self.item_matrix_.sort_indices()
        self._to_tensors()
        self._log("%s fitted: %d items, %d item pairs kept", type(self).__name__,
                  self.n_items_, self.item_matrix_.nnz)

    def _to_tensors(self) -> None:
        m = self.item_matrix_
        self._indices_ = torch.as_tensor(m.indices.astype(np.int64), device=self.device_)
        self._values_ = torch.as_tensor(m.data.astype(np.float32), device=self.device_)

    def _scores_of_items(self, items: np.ndarray, below: torch.Tensor) -> torch.Tensor:
        """Dense score rows for the given last items; ``below`` (from
        :func:`scores_below_row`) scores the items outside a row."""
        indptr = self.item_matrix_.indptr
        starts, lengths = indptr[items], indptr[items + 1] - indptr[items]
        entries = torch.as_tensor(ragged_arange(starts, lengths), device=self.device_)
        rows = torch.as_tensor(np.repeat(np.arange(len(items)), lengths), device=self.device_)
        scores = below.repeat(len(items), 1)
        scores[rows, self._indices_[entries]] = self._values_[entries]
        return scores

    def _iter_scores(self, events, score_after):
        positions = np.flatnonzero(score_after)
        below = scores_below_row(self)
        for block in self._blocks(positions):
            yield block, self._scores_of_items(events.items[block], below)

    def _empty_history_scores(self, events, sessions):
        return popularity_scores(self)

    def _get_state(self):
        return csr_state(self.item_matrix_)

    def _set_state(self, state):
        self.item_matrix_ = csr_from_state(state, self.n_items_)
        self._to_tensors()


def transition_pairs(events: SessionEvents, distance: int) -> tuple[np.ndarray, np.ndarray]:
    """(earlier item, later item) for every pair of events ``distance`` apart in a session."""
    positions = np.arange(events.n_events - distance)
    same = events.session_of_event[positions] == events.session_of_event[positions + distance]
    positions = positions[same]
    return events.items[positions], events.items[positions + distance]
