"""Popularity baselines: POP, S-POP and Personal POP.

Definitions as in the GRU4Rec paper's baselines (Hidasi et al., ICLR 2016, section 4) and
the session-rec framework: POP recommends the items with the most training events; S-POP
recommends the items seen most often in the current session, ties broken by POP. Personal
POP (the HRNN paper's PPOP, Quadrana et al., RecSys 2017) recommends the user's most
interacted items.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from .._base import SessionRecommender, plain_labels
from .._events import SessionEvents, ragged_arange, user_codes
from .._user_history import UserHistory, training_counts, user_item_counts
from .._validation import USER_COLUMN
from ._item_matrix import csr_from_state, csr_state

__all__ = ["PersonalPopularityRecommender", "PopularityRecommender",
           "SessionPopularityRecommender"]


class PopularityRecommender(SessionRecommender):
    """POP: recommend the globally most popular items, whatever the session.

    An item's score is its support (number of training events). Every session gets the
    same list. A baseline of the GRU4Rec paper, and a floor every model should clear.

    Parameters
    ----------
    session_key : str, default="SessionId"
        Column of session labels.
    item_key : str, default="ItemId"
        Column of item labels.
    time_key : str, default="Time"
        Column of event times (numbers or datetimes).
    device : str, default="auto"
        Where scores are ranked: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``.
    verbose : bool or int, default=False
        Log a line when fitting.

    Attributes
    ----------
    item_index_ : ItemIndex
        Item labels and their support.
    n_items_ : int
        Number of training items.
    device_ : torch.device
        The resolved device.
    popularity_ : torch.Tensor of shape (n_items,)
        Support of each item (float32), the score.

    See Also
    --------
    SessionPopularityRecommender : popularity within the session first.

    References
    ----------
    Hidasi, Karatzoglou, Baltrunas, Tikk. Session-based recommendations with recurrent
    neural networks. ICLR 2016.

    Examples
    --------
    >>> import pandas as pd
    >>> X = pd.DataFrame({"SessionId": [1, 1, 2, 2, 3], "ItemId": ["a", "b", "b", "c", "b"],
    ...                   "Time": [0, 1, 2, 3, 4]})
    >>> pop = PopularityRecommender(device="cpu").fit(X)
    >>> pop.predict_next(X, k=2)
    rank       1  2
    SessionId
    1          b  a
    2          b  a
    3          b  a
    """

    def __init__(self, *, session_key="SessionId", item_key="ItemId", time_key="Time",
                 device="auto", verbose=False):
        self.session_key = session_key
        self.item_key = item_key
        self.time_key = time_key
        self.device = device
        self.verbose = verbose

    def _fit(self, events: SessionEvents) -> None:
        self.popularity_ = torch.as_tensor(self.item_index_.support, dtype=torch.float32,
                                           device=self.device_)
        self._log("POP fitted on %d events, %d items", events.n_events, self.n_items_)

    def _iter_scores(self, events, score_after):
        positions = np.flatnonzero(score_after)
        for block in self._blocks(positions):
            yield block, self.popularity_.expand(len(block), -1)

    def _empty_history_scores(self, events, sessions):
        return self.popularity_

    def _get_state(self):
        return {"popularity": self.popularity_}

    def _set_state(self, state):
        self.popularity_ = state["popularity"]


class SessionPopularityRecommender(SessionRecommender):
    """S-POP: recommend the items seen most often in the session, ties broken by POP.

    An item's score is its number of events in the session so far; items with equal
    counts (all items absent from the session, in particular) are ordered by global
    support. The score is computed exactly as ``count + support / (max support + 1)``
    in float64, so the tie-break never changes the order of different counts.

    Parameters
    ----------
    session_key : str, default="SessionId"
        Column of session labels.
    item_key : str, default="ItemId"
        Column of item labels.
    time_key : str, default="Time"
        Column of event times (numbers or datetimes).
    device : str, default="auto"
        Where scores are computed and ranked: ``"auto"``, ``"cpu"``, ``"cuda"``.
    verbose : bool or int, default=False
        Log a line when fitting.

    Attributes
    ----------
    item_index_ : ItemIndex
        Item labels and their support.
    n_items_ : int
        Number of training items.
    device_ : torch.device
        The resolved device.
    tie_break_ : torch.Tensor of shape (n_items,)
        ``support / (max support + 1)`` (float64), each item's score outside the session.

    See Also
    --------
    PopularityRecommender : global popularity only.

    References
    ----------
    Hidasi, Karatzoglou, Baltrunas, Tikk. Session-based recommendations with recurrent
    neural networks. ICLR 2016.

    Examples
    --------
    >>> import pandas as pd
    >>> X = pd.DataFrame({"SessionId": [1, 1, 2, 2, 3], "ItemId": ["a", "b", "b", "c", "b"],
    ...                   "Time": [0, 1, 2, 3, 4]})
    >>> spop = SessionPopularityRecommender(device="cpu").fit(X)
    >>> live = pd.DataFrame({"SessionId": [9, 9, 9], "ItemId": ["c", "a", "c"],
    ...                      "Time": [0, 1, 2]})
    >>> spop.predict_next(live, k=3)
    rank       1  2  3
    SessionId
    9          c  a  b
    """

    def __init__(self, *, session_key="SessionId", item_key="ItemId", time_key="Time",
                 device="auto", verbose=False):
        self.session_key = session_key
        self.item_key = item_key
        self.time_key = time_key
        self.device = device
        self.verbose = verbose

    def _fit(self, events: SessionEvents) -> None:
        support = torch.as_tensor(self.item_index_.support, dtype=torch.float64,
                                  device=self.device_)
        self.tie_break_ = support / (support.max() + 1.0)
        self._log("S-POP fitted on %d events, %d items", events.n_events, self.n_items_)

    def _iter_scores(self, events, score_after):
        positions = np.flatnonzero(score_after)
        starts = events.session_starts[positions]
        history = positions - starts + 1
        items = torch.as_tensor(events.items, device=self.device_)
        offset = 0
        for block in self._blocks(positions, extra_cost=history):
            n = len(block)
            hist_len = history[offset:offset + n]
            rows = np.repeat(np.arange(n, dtype=np.int64), hist_len)
            seen = ragged_arange(starts[offset:offset + n], hist_len)
            offset += n
            scores = self.tie_break_.repeat(n, 1)
            # Counting by scatter-add: one pass over the (row, history event) pairs.
            scores.index_put_(
                (torch.as_tensor(rows, device=self.device_),
                 items[torch.as_tensor(seen, device=self.device_)]),
                torch.ones(len(rows), dtype=torch.float64, device=self.device_),
                accumulate=True)
            yield block, scores

    def _empty_history_scores(self, events, sessions):
        return self.tie_break_

    def _get_state(self):
        return {"tie_break": self.tie_break_}

    def _set_state(self, state):
        self.tie_break_ = state["tie_break"]


class PersonalPopularityRecommender(SessionRecommender):
    """Personal POP: recommend the items the user interacted with most.

    The HRNN paper's PPOP baseline ("recommends the item with the largest number of
    interactions by the user"). An item's score is the number of the user's events on it
    known when the recommendation is made:

    * the user's training events, and
    * the user's events in the frame being scored up to that point: earlier sessions of
      the user in the frame (sessions are ordered by their first event's time) and the
      current session so far.

    Items with equal counts (all items the user never touched, in particular) are ordered
    by global support, so a user unknown at training time, or a session without a known
    event, falls back to global popularity (POP). The score is ``count + support / (max
    support + 1)`` in float64, so the tie-break never reorders different counts.

    Parameters
    ----------
    user_key : str, default="UserId"
        Column of user labels; required in ``fit`` and in prediction frames. Every session
        belongs to one user.
    session_key : str, default="SessionId"
        Column of session labels.
    item_key : str, default="ItemId"
        Column of item labels.
    time_key : str, default="Time"
        Column of event times (numbers or datetimes).
    device : str, default="auto"
        Where scores are computed and ranked: ``"auto"``, ``"cpu"``, ``"cuda"``.
    verbose : bool or int, default=False
        Log a line when fitting.

    Attributes
    ----------
    item_index_ : ItemIndex
        Item labels and their support.
    n_items_ : int
        Number of training items.
    device_ : torch.device
        The resolved device.
    user_labels_ : pandas.Index
        The training users.
    user_items_ : scipy.sparse.csr_matrix of shape (n_users, n_items)
        Training event counts of each user on each item.
    tie_break_ : torch.Tensor of shape (n_items,)
        ``support / (max support + 1)`` (float64).

    See Also
    --------
    SessionPopularityRecommender : counts within the session only.

    References
    ----------
    Quadrana, Karatzoglou, Hidasi, Cremonesi. Personalizing session-based
    recommendations with hierarchical recurrent neural networks. RecSys 2017.

    Examples
    --------
    >>> import pandas as pd
    >>> X = pd.DataFrame({"UserId": ["u", "u", "u", "v", "v", "v"],
    ...                   "SessionId": [1, 1, 2, 3, 3, 3],
    ...                   "ItemId": ["a", "b", "a", "c", "c", "c"], "Time": range(6)})
    >>> ppop = PersonalPopularityRecommender(device="cpu").fit(X)
    >>> live = pd.DataFrame({"UserId": ["u", "w"], "SessionId": [8, 9],
    ...                      "ItemId": ["b", "b"], "Time": [7, 8]})
    >>> ppop.predict_next(live, k=3)  # u: a=2, b=1+1 (tie: a more popular); w: only b
    rank       1  2  3
    SessionId
    8          a  b  c
    9          b  c  a
    """

    def __init__(self, *, user_key="UserId", session_key="SessionId", item_key="ItemId",
                 time_key="Time", device="auto", verbose=False):
        self.user_key = user_key
        self.session_key = session_key
        self.item_key = item_key
        self.time_key = time_key
        self.device = device
        self.verbose = verbose

    _parameter_constraints: dict = {
        **SessionRecommender._parameter_constraints, "user_key": USER_COLUMN,
    }

    def _fit(self, events: SessionEvents) -> None:
        support = torch.as_tensor(self.item_index_.support, dtype=torch.float64,
                                  device=self.device_)
        self.tie_break_ = support / (support.max() + 1.0)
        self.user_labels_ = events.user_labels
        self.user_items_ = user_item_counts(events, self.n_items_)
        self._log("Personal POP fitted on %d events, %d users, %d items", events.n_events,
                  len(self.user_labels_), self.n_items_)

    def _users_of(self, events: SessionEvents) -> np.ndarray:
        """Training-user code of each session of ``events``; -1 for unknown users."""
        return user_codes(self.user_labels_, events, self.user_key)[events.users]

    def _training_counts(self, users: np.ndarray) -> torch.Tensor:
        """Rows of ``user_items_`` for ``users`` (zeros for -1), as float64.

        Counts stay whole numbers (exact in float64) until the tie-break is added last,
        so equal counts of equally popular items give exactly equal scores.
        """
        return training_counts(self.user_items_, users, self.n_items_,
                               dtype=torch.float64, device=self.device_)

    def _iter_scores(self, events, score_after):
        positions = np.flatnonzero(score_after)
        history = UserHistory(events, self.device_)
        user_start, n_history = history.through(positions)
        training_user = self._users_of(events)
        offset = 0
        for block in self._blocks(positions, extra_cost=n_history):
            n = len(block)
            scores = self._training_counts(training_user[events.session_of_event[block]])
            history.add(scores, user_start[offset:offset + n], n_history[offset:offset + n])
            offset += n
            yield block, scores.add_(self.tie_break_)

    def _empty_history_scores(self, events, sessions):
        # No known event in these sessions, but the user's training counts and the user's
        # earlier sessions in the frame still count.
        history = UserHistory(events, self.device_)
        scores = self._training_counts(self._users_of(events)[sessions])
        history.add(scores, *history.before(sessions))
        return scores.add_(self.tie_break_)

    def _get_state(self):
        labels = plain_labels(self.user_labels_, "user")
        return {"tie_break": self.tie_break_, **csr_state(self.user_items_, "user_"),
                "user_labels": labels}

    def _set_state(self, state):
        self.tie_break_ = state["tie_break"]
        self.user_labels_ = pd.Index(state["user_labels"])
        self.user_items_ = csr_from_state(state, self.n_items_, "user_")
