"""Neighbourhood baselines: Item-KNN."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .._events import SessionEvents
from .._validation import check_int, check_real
from ._item_matrix import _ItemMatrixRecommender, top_k_per_row

__all__ = ["ItemKNNRecommender"]


class ItemKNNRecommender(_ItemMatrixRecommender):
    """Item-KNN: recommend the nearest neighbours of the session's last item.

    The item-to-item baseline of the GRU4Rec paper (Hidasi et al., ICLR 2016, section 4,
    after Linden et al. 2003), as defined in the session-rec framework:

    ``sim(i, j) = cooc(i, j) / ((supp_i + shrink)^alpha * (supp_j + shrink)^(1 - alpha))``

    where ``cooc = C^T C`` for the session x item matrix ``C`` of event counts, ``supp_i``
    is item i's number of training events, and an item is not its own neighbour. Each
    item keeps its ``n_neighbors`` most similar items; a session's scores are the
    similarities of its last (known) item to those neighbours, 0 for every other item.
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
    item_matrix_ : scipy.sparse.csr_matrix of shape (n_items_, n_items_)
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

    def _validate_params(self) -> None:
        check_int("n_neighbors", self.n_neighbors, min_value=1)
        check_real("shrink", self.shrink, min_value=0.0)
        check_real("alpha", self.alpha, min_value=0.0, max_value=1.0)

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
