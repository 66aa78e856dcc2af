"""Popularity baselines: POP and S-POP.

Definitions as in the GRU4Rec paper's baselines (Hidasi et al., ICLR 2016, section 4) and
the session-rec framework: POP recommends the items with the most training events; S-POP
recommends the items seen most often in the current session, ties broken by POP.
"""

from __future__ import annotations

import numpy as np
import torch

from .._base import SessionRecommender
from .._events import SessionEvents, ragged_arange

__all__ = ["PopularityRecommender", "SessionPopularityRecommender"]


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
    popularity_ : torch.Tensor of shape (n_items_,)
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

    def _empty_history_scores(self):
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
    tie_break_ : torch.Tensor of shape (n_items_,)
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

    def _empty_history_scores(self):
        return self.tie_break_

    def _get_state(self):
        return {"tie_break": self.tie_break_}

    def _set_state(self, state):
        self.tie_break_ = state["tie_break"]
