"""What a user had before a recommendation: counts of their items, as dense score rows.

Personal POP scores a user's items by these counts, and HRNN's repeat-aware scores
(``repeat_aware=True``) read them as features. The history of a position of a frame is:

* the user's training events (a training user's row of a users x items count matrix),
* the user's events in the frame up to that position: the user's earlier sessions in the
  frame (sessions are ordered by their first event's time) and the current session up to
  and including the position.

The counts are built per block of scored rows, one ``index_put_`` over the history events
of the block, so a block costs its rows' history lengths on top of its score rows.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from ._events import SessionEvents, ragged_arange

__all__ = ["UserHistory", "training_counts", "user_item_counts"]


def user_item_counts(events: SessionEvents, n_items: int) -> sp.csr_matrix:
    """The training users x items matrix of event counts (float64)."""
    counts = sp.csr_matrix(
        (np.ones(events.n_events), (events.users[events.session_of_event], events.items)),
        shape=(len(events.user_labels), n_items))
    counts.sum_duplicates()
    return counts


def training_counts(user_items: sp.csr_matrix | None, users: np.ndarray, n_items: int, *,
                    dtype: torch.dtype, device) -> torch.Tensor:
    """Rows of ``user_items`` for ``users`` (training codes; zeros for -1, and for every
    row without ``user_items``), dense (rows x n_items)."""
    counts = torch.zeros(len(users), n_items, dtype=dtype, device=device)
    if user_items is None:
        return counts
    known = np.flatnonzero(users >= 0)
    rows = user_items[users[known]].tocoo()
    counts.index_put_(
        (torch.as_tensor(known[rows.row], device=device),
         torch.as_tensor(rows.col.astype(np.int64), device=device)),
        torch.as_tensor(rows.data, dtype=dtype, device=device), accumulate=True)
    return counts


class UserHistory:
    """A frame's events grouped by user in time order, to count what a user had when.

    Sessions are ordered by start time, so a stable sort by user keeps (session, position)
    order within each user. ``keys`` is ``user * n_sessions + session`` of the events in
    that order (ascending), for locating a user's history by search.
    """

    def __init__(self, events: SessionEvents, device):
        self.events, self.device = events, device
        user_of_event = events.users[events.session_of_event]
        self.by_user = np.argsort(user_of_event, kind="stable")
        self.keys = (user_of_event[self.by_user] * events.n_sessions
                     + events.session_of_event[self.by_user])
        self.rank = np.empty(events.n_events, dtype=np.int64)
        self.rank[self.by_user] = np.arange(events.n_events)
        self.items = torch.as_tensor(events.items, device=device)

    def _user_start(self, sessions: np.ndarray) -> np.ndarray:
        """Where each session's user begins in the user order."""
        return np.searchsorted(self.keys, self.events.users[sessions] * self.events.n_sessions)

    def through(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(starts, lengths)`` in the user order: the user's frame events up to and
        including each position."""
        start = self._user_start(self.events.session_of_event[positions])
        return start, self.rank[positions] - start + 1

    def before(self, sessions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(starts, lengths)`` in the user order: the user's frame events before each
        session."""
        start = self._user_start(sessions)
        stop = np.searchsorted(self.keys, self.events.users[sessions] * self.events.n_sessions
                               + sessions)
        return start, stop - start

    def add(self, counts: torch.Tensor, starts: np.ndarray, lengths: np.ndarray) -> None:
        """Count one per history event: row ``r`` gets the items of
        ``by_user[starts[r]:starts[r] + lengths[r]]``."""
        self._add(counts, np.repeat(np.arange(len(starts), dtype=np.int64), lengths),
                  self.by_user[ragged_arange(starts, lengths)])

    def add_session(self, counts: torch.Tensor, positions: np.ndarray) -> None:
        """Count one per event of each position's session up to and including it."""
        events = self.events
        start = events.offsets[events.session_of_event[positions]]
        lengths = positions - start + 1
        self._add(counts, np.repeat(np.arange(len(positions), dtype=np.int64), lengths),
                  ragged_arange(start, lengths))

    def _add(self, counts: torch.Tensor, rows: np.ndarray, seen: np.ndarray) -> None:
        device = self.device
        counts.index_put_(
            (torch.as_tensor(rows, device=device),
             self.items[torch.as_tensor(seen, device=device)]),
            torch.ones(len(rows), dtype=counts.dtype, device=device), accumulate=True)
