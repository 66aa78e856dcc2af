"""BPR-MF for sessions: item factors trained with BPR, a session is the mean of its items."""

from __future__ import annotations

import numpy as np
import torch

from .._base import SessionRecommender
from .._events import SessionEvents
from .._validation import (
    NON_NEGATIVE_REAL,
    POSITIVE_INT,
    POSITIVE_REAL,
    RANDOM_STATE,
    init_generator,
    torch_generator,
)
from ._epochs import EpochTrainingMixin, document_epochs

__all__ = ["BPRMFRecommender"]


@document_epochs
class BPRMFRecommender(EpochTrainingMixin, SessionRecommender):
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
    {epoch_parameters}
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
    {epoch_verbose}

    Attributes
    ----------
    item_factors_ : torch.Tensor of shape (n_items, n_factors)
    item_bias_ : torch.Tensor of shape (n_items,)
    {epoch_attributes}
        For BPR-MF the loss is the mean BPR loss per (session, item, negative) triple,
        one triple per training event.

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
                 reg_item=0.0, init_std=0.05, batch_size=256, early_stopping=False,
                 validation_fraction=0.1, n_iter_no_change=None, refit=True, callbacks=None,
                 session_key="SessionId",
                 item_key="ItemId", time_key="Time", device="auto", random_state=None,
                 verbose=False):
        self.n_factors = n_factors
        self.n_epochs = n_epochs
        self.learning_rate = learning_rate
        self.reg_session = reg_session
        self.reg_item = reg_item
        self.init_std = init_std
        self.batch_size = batch_size
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.refit = refit
        self.callbacks = callbacks
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
        **EpochTrainingMixin._epoch_constraints,
    }

    _LEGACY_PARAMS = dict(EpochTrainingMixin._epoch_legacy)

    _trainer_name = "BPR-MF"

    def _fit(self, events: SessionEvents) -> None:
        self._fit_in_epochs(events)

    def _trained_parameters(self) -> list[torch.Tensor]:
        # The session factors are of training sessions only: prediction never reads them.
        return [self.item_factors_, self.item_bias_]

    def _train_epochs(self, events: SessionEvents, trainer, n_epochs: int, *, seed=None,
                      name: str | None = None, extra: dict | None = None) -> int:
        device = self.device_
        _, generator = torch_generator(self.random_state if seed is None else seed, device)
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

        def epoch():
            order = torch.randperm(n, generator=generator, device=device)
            negatives = torch.randint(0, self.n_items_, (n,), generator=generator,
                                      device=device)
            for start in range(0, n, batch):  # one Python iteration per mini-batch
                idx = order[start:start + batch]
                s, i, j = session_of[idx], item_of[idx], negatives[idx]
                p, qi, qj = sessions[s], items[i], items[j]
                diff = (p * (qi - qj)).sum(1) + bias[i] - bias[j]
                loss = torch.nn.functional.softplus(-diff).sum()
                g = torch.sigmoid(-diff).unsqueeze(1)  # d(-loss)/d(diff)
                # SGD ascent on log sigmoid(diff) minus L2 terms, rows merged by index_add.
                sessions.index_add_(0, s, lr * (g * (qi - qj) - reg_s * p))
                items.index_add_(0, i, lr * (g * p - reg_i * qi))
                items.index_add_(0, j, lr * (-g * p - reg_i * qj))
                bias.index_add_(0, i, lr * (g.squeeze(1) - reg_i * bias[i]))
                bias.index_add_(0, j, lr * (-g.squeeze(1) - reg_i * bias[j]))
                yield loss

        # Prediction reads these: callbacks may score the model between epochs.
        self.item_factors_, self.item_bias_ = items, bias
        trainer.run(epoch, n_epochs=n_epochs, n_pairs=n, n_batches=-(-n // batch),
                    first_pairs=min(batch, n), name=name, extra=extra)
        return generator.initial_seed()

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
                "history": self.history_, "selection": self._selection_state()}

    def _set_state(self, state):
        self._set_selection_state(state)
        self.item_factors_ = state["item_factors"]
        self.item_bias_ = state["item_bias"]
        self.history_ = state["history"]
