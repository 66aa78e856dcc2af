"""BPR-MF for sessions: item factors trained with BPR, a session is the mean of its items."""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from .._base import SessionRecommender
from .._events import SessionEvents
from .._progress import epoch_bar
from .._validation import (
    NON_NEGATIVE_REAL,
    POSITIVE_INT,
    POSITIVE_REAL,
    RANDOM_STATE,
    init_generator,
    torch_generator,
)
from ..exceptions import TrainingDivergedError
from ..nn._trainer import warn_if_diverged

__all__ = ["BPRMFRecommender"]


class BPRMFRecommender(SessionRecommender):
    """BPR-MF with sessions as users; a live session is the mean of its items' factors.

    The matrix-factorisation baseline of the GRU4Rec paper (Hidasi et al., ICLR 2016,
    section 4): factors are learnt with BPR (Rendle et al., UAI 2009) on the session x item
    data, ``x_si = p_s . q_i + b_i``, maximising ``log sigmoid(x_si - x_sj)`` for an item
    ``i`` of session ``s`` against a uniformly drawn item ``j``, with L2 regularisation.
    Sessions seen at prediction time have no factors, so, as in the paper, a session is
    represented by the mean of the factors of its items so far:
    ``score(j) = mean_{i in session} q_i . q_j + b_j``.

    Training runs in mini-batches of (session, item, negative) triples with plain SGD on
    the rows involved, on ``device``; the session-rec implementation updates one triple at
    a time, which gives the same objective but cannot be vectorised.

    Parameters
    ----------
    n_factors : int, default=100
        Dimension of the factors.
    n_epochs : int, default=10
        Passes over the training events.
    learning_rate : float, default=0.01
        SGD step.
    reg_session : float, default=0.0
        L2 weight on session factors.
    reg_item : float, default=0.0
        L2 weight on item factors and biases.
    init_std : float, default=0.05
        Standard deviation of the normal initialisation of the factors.
    batch_size : int, default=256
        Triples per SGD step.
    session_key, item_key, time_key : str
        Column names.
    device : str, default="auto"
        ``"auto"`` trains on CUDA when available.
    random_state : int or None, default=None
        Seed of initialisation, shuffling and negative sampling.
    verbose : bool or int, default=False
        Log one line per epoch and, on a terminal, show a progress bar of each epoch's
        mini-batches.

    Attributes
    ----------
    item_factors_ : torch.Tensor of shape (n_items_, n_factors)
    item_bias_ : torch.Tensor of shape (n_items_,)
    history_ : list of dict
        Per epoch: ``loss`` (mean BPR loss per triple), ``start_loss`` (that of the
        epoch's first mini-batch), ``seconds``, ``events_per_s`` (triples, one per
        training event, per second) and ``batches_per_s``.

    References
    ----------
    Rendle, Freudenthaler, Gantner, Schmidt-Thieme. BPR: Bayesian personalized ranking
    from implicit feedback. UAI 2009. Hidasi et al. ICLR 2016.

    Examples
    --------
    >>> from sessionrec.datasets import make_sessions
    >>> events = make_sessions(n_sessions=200, n_items=40, random_state=0)
    >>> model = BPRMFRecommender(n_factors=8, n_epochs=2, device="cpu",
    ...                          random_state=0).fit(events)
    >>> tuple(model.item_factors_.shape)
    (40, 8)
    """

    def __init__(self, *, n_factors=100, n_epochs=10, learning_rate=0.01, reg_session=0.0,
                 reg_item=0.0, init_std=0.05, batch_size=256, session_key="SessionId",
                 item_key="ItemId", time_key="Time", device="auto", random_state=None,
                 verbose=False):
        self.n_factors = n_factors
        self.n_epochs = n_epochs
        self.learning_rate = learning_rate
        self.reg_session = reg_session
        self.reg_item = reg_item
        self.init_std = init_std
        self.batch_size = batch_size
        self.session_key = session_key
        self.item_key = item_key
        self.time_key = time_key
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    _parameter_constraints: dict = {
        **SessionRecommender._parameter_constraints,
        "n_factors": POSITIVE_INT, "n_epochs": POSITIVE_INT, "learning_rate": POSITIVE_REAL,
        "reg_session": NON_NEGATIVE_REAL, "reg_item": NON_NEGATIVE_REAL,
        "init_std": NON_NEGATIVE_REAL, "batch_size": POSITIVE_INT,
        "random_state": RANDOM_STATE,
    }

    def _fit(self, events: SessionEvents) -> None:
        device = self.device_
        _, generator = torch_generator(self.random_state, device)
        init = init_generator(generator)
        d = int(self.n_factors)
        sessions = torch.randn(events.n_sessions, d, generator=init) * float(self.init_std)
        items = torch.randn(self.n_items_, d, generator=init) * float(self.init_std)
        sessions, items = sessions.to(device), items.to(device)
        bias = torch.zeros(self.n_items_, device=device)
        session_of = torch.as_tensor(events.session_of_event, device=device)
        item_of = torch.as_tensor(events.items, device=device)
        lr, reg_s, reg_i = (float(self.learning_rate), float(self.reg_session),
                            float(self.reg_item))
        batch = int(self.batch_size)
        n = events.n_events
        n_batches = -(-n // batch)
        history = []
        for epoch in range(int(self.n_epochs)):
            bar = epoch_bar(self.verbose, n_batches,
                            f"BPR-MF epoch {epoch + 1}/{self.n_epochs}")
            start_time = time.perf_counter()
            order = torch.randperm(n, generator=generator, device=device)
            negatives = torch.randint(0, self.n_items_, (n,), generator=generator,
                                      device=device)
            total = torch.zeros((), dtype=torch.float64, device=device)
            start_loss = math.nan
            try:
                for start in range(0, n, batch):  # one Python iteration per mini-batch
                    idx = order[start:start + batch]
                    s, i, j = session_of[idx], item_of[idx], negatives[idx]
                    p, qi, qj = sessions[s], items[i], items[j]
                    diff = (p * (qi - qj)).sum(1) + bias[i] - bias[j]
                    total += torch.nn.functional.softplus(-diff).sum()
                    g = torch.sigmoid(-diff).unsqueeze(1)  # d(-loss)/d(diff)
                    # SGD ascent on log sigmoid(diff) minus L2 terms, rows merged by index_add.
                    sessions.index_add_(0, s, lr * (g * (qi - qj) - reg_s * p))
                    items.index_add_(0, i, lr * (g * p - reg_i * qi))
                    items.index_add_(0, j, lr * (-g * p - reg_i * qj))
                    bias.index_add_(0, i, lr * (g.squeeze(1) - reg_i * bias[i]))
                    bias.index_add_(0, j, lr * (-g.squeeze(1) - reg_i * bias[j]))
                    if start == 0:  # in the first epoch, the loss at the initial factors
                        start_loss = float(total) / len(idx)
                    if bar is not None:
                        bar.update()
            finally:  # also when fitting is interrupted: no half-drawn bar is left behind
                if bar is not None:
                    bar.close()
            mean_loss = float(total) / n
            if not np.isfinite(mean_loss):
                raise TrainingDivergedError(
                    f"the BPR loss became {mean_loss} in epoch {epoch + 1}; lower "
                    f"learning_rate (now {self.learning_rate}).")
            seconds = time.perf_counter() - start_time
            history.append({"epoch": epoch + 1, "loss": mean_loss, "start_loss": start_loss,
                            "seconds": seconds,
                            "events_per_s": n / seconds if seconds > 0 else math.inf,
                            "batches_per_s": n_batches / seconds if seconds > 0 else math.inf})
            self._log("BPR-MF epoch %d/%d: loss %.4f, %.1f s, %.0f events/s", epoch + 1,
                      self.n_epochs, mean_loss, seconds, history[-1]["events_per_s"])
        warn_if_diverged(history[0]["start_loss"], history[-1]["loss"], "BPR-MF",
                         f"Lower learning_rate (now {self.learning_rate}).", stacklevel=4)
        self.history_ = history
        self.item_factors_ = items
        self.item_bias_ = bias

    def _iter_scores(self, events, score_after):
        # Mean of the session's item factors up to each position: a cumulative sum over
        # all events, minus the sum before the session's first event.
        factors = self.item_factors_[torch.as_tensor(events.items, device=self.device_)]
        cumulative = torch.cumsum(factors.double(), dim=0)
        starts = events.session_starts
        positions = np.flatnonzero(score_after)
        for block in self._blocks(positions):
            end = torch.as_tensor(block, device=self.device_)
            begin = torch.as_tensor(starts[block], device=self.device_)
            before = torch.where((begin > 0).unsqueeze(1),
                                 cumulative[(begin - 1).clamp(min=0)],
                                 torch.zeros_like(cumulative[begin]))
            count = (end - begin + 1).unsqueeze(1).double()
            mean = ((cumulative[end] - before) / count).float()
            yield block, torch.addmm(self.item_bias_, mean, self.item_factors_.t())

    def _empty_history_scores(self, events, sessions):
        return self.item_bias_

    def _get_state(self):
        return {"item_factors": self.item_factors_, "item_bias": self.item_bias_,
                "history": self.history_}

    def _set_state(self, state):
        self.item_factors_ = state["item_factors"]
        self.item_bias_ = state["item_bias"]
        self.history_ = state["history"]
