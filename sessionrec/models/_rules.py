"""Sequential baselines: first-order Markov transitions and sequential rules."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .._events import SessionEvents
from .._validation import POSITIVE_INT
from ._item_matrix import _ItemMatrixRecommender, top_k_per_row, transition_pairs

__all__ = ["MarkovRecommender", "SequentialRulesRecommender"]


class MarkovRecommender(_ItemMatrixRecommender):
    """First-order Markov chain: recommend the items that most often followed the last one.

    ``score(j) = number of times j directly followed the session's last item i`` in the
    training sessions (transition counts; rankings are those of the transition
    probabilities, which only divide a row by a constant). Items that never followed i
    come after those that did, ordered by popularity (as S-POP breaks its ties), so a last
    item without transitions gets the POP list. A session without any known item is
    recommended by popularity.

    Parameters
    ----------
    session_key : str, default="SessionId"
        Column of session labels.
    item_key : str, default="ItemId"
        Column of item labels.
    time_key : str, default="Time"
        Column of event times.
    device : str, default="auto"
        Where scores are built and ranked.
    verbose : bool or int, default=False
        Log a line when fitting.

    Attributes
    ----------
    item_matrix_ : scipy.sparse.csr_matrix of shape (n_items, n_items)
        Transition counts, row = from, column = to.

    References
    ----------
    Ludewig, Jannach. Evaluation of session-based recommendation algorithms. User Modeling
    and User-Adapted Interaction, 2018 (the Markov baseline of session-rec).

    Examples
    --------
    >>> import pandas as pd
    >>> X = pd.DataFrame({"SessionId": [1, 1, 2, 2, 3, 3], "ItemId": list("abacab"),
    ...                   "Time": range(6)})
    >>> MarkovRecommender(device="cpu").fit(X).item_matrix_.toarray()
    array([[0., 2., 1.],
           [0., 0., 0.],
           [0., 0., 0.]])
    """

    def __init__(self, *, session_key="SessionId", item_key="ItemId", time_key="Time",
                 device="auto", verbose=False):
        self.session_key = session_key
        self.item_key = item_key
        self.time_key = time_key
        self.device = device
        self.verbose = verbose

    def _build_matrix(self, events: SessionEvents) -> sp.csr_matrix:
        before, after = transition_pairs(events, 1)
        return sp.csr_matrix((np.ones(len(before)), (before, after)),
                             shape=(self.n_items_, self.n_items_))


class SequentialRulesRecommender(_ItemMatrixRecommender):
    """Sequential rules: item j after item i, weighted by how closely it followed.

    The SR method of Ludewig & Jannach (session-rec): for every pair of events in a
    training session where j comes ``d`` steps after i, with ``1 <= d <= steps``, the rule
    i -> j gains ``1 / d``. Each item keeps its ``n_rules`` strongest rules (session-rec's
    pruning); a session's scores are the rules of its last item. Items without a rule from
    it come after those with one, ordered by popularity (as S-POP breaks its ties), so a
    last item without rules gets the POP list. A session without any known item is
    recommended by popularity.

    Parameters
    ----------
    steps : int, default=10
        How many steps back a rule may reach.
    n_rules : int or None, default=20
        Rules kept per item (the strongest); None keeps all.
    session_key : str, default="SessionId"
        Column of session labels.
    item_key : str, default="ItemId"
        Column of item labels.
    time_key : str, default="Time"
        Column of event times.
    device : str, default="auto"
        Where scores are built and ranked.
    verbose : bool or int, default=False
        Log a line when fitting.

    Attributes
    ----------
    item_matrix_ : scipy.sparse.csr_matrix of shape (n_items, n_items)
        Rule weights, row = antecedent, column = consequent.

    References
    ----------
    Ludewig, Jannach. Evaluation of session-based recommendation algorithms. User Modeling
    and User-Adapted Interaction, 2018.

    Examples
    --------
    >>> import pandas as pd
    >>> X = pd.DataFrame({"SessionId": [1, 1, 1], "ItemId": list("abc"), "Time": range(3)})
    >>> SequentialRulesRecommender(device="cpu").fit(X).item_matrix_.toarray()
    array([[0. , 1. , 0.5],
           [0. , 0. , 1. ],
           [0. , 0. , 0. ]])
    """

    def __init__(self, *, steps=10, n_rules=20, session_key="SessionId", item_key="ItemId",
                 time_key="Time", device="auto", verbose=False):
        self.steps = steps
        self.n_rules = n_rules
        self.session_key = session_key
        self.item_key = item_key
        self.time_key = time_key
        self.device = device
        self.verbose = verbose

    _parameter_constraints: dict = {
        **_ItemMatrixRecommender._parameter_constraints,
        "steps": POSITIVE_INT, "n_rules": [None, *POSITIVE_INT],
    }

    def _build_matrix(self, events: SessionEvents) -> sp.csr_matrix:
        rows, cols, weights = [], [], []
        for distance in range(1, int(self.steps) + 1):  # one vectorised pass per distance
            before, after = transition_pairs(events, distance)
            rows.append(before)
            cols.append(after)
            weights.append(np.full(len(before), 1.0 / distance))
        rules = sp.csr_matrix((np.concatenate(weights),
                               (np.concatenate(rows), np.concatenate(cols))),
                              shape=(self.n_items_, self.n_items_))  # duplicates summed
        if self.n_rules is not None:
            rules = top_k_per_row(rules, int(self.n_rules))
        return rules
