"""What every model that trains in epochs shares: early stopping, callbacks, history.

GRU4Rec, HRNN, p-RNN and BPR-MF take the same parameters for the loop around their
epochs (``early_stopping``, ``validation_fraction``, ``n_iter_no_change``, ``refit``,
``callbacks``), with the same meanings and checks, and the same fit skeleton runs them
(:meth:`EpochTrainingMixin._fit_in_epochs`); a model states only how it trains for some
epochs (``_train_epochs``) and which tensors define it (``_trained_parameters``).
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import torch
from sklearn.utils._param_validation import HasMethods, Interval

from .._native import kernels as _kernels
from .._training import EarlyStopping, Trainer, hold_out_last_sessions
from ..evaluation import ranks_from_scores
from ..metrics import mrr_at_k

__all__ = ["EpochTrainingMixin", "document_epochs", "mrr_of_score_blocks"]

# The docstring entries of the shared parameters and attributes, written once and put in
# each model's docstring by document_epochs (numpydoc reads the result).
_PARAMETER_DOCS = """\
early_stopping : bool, default=False
        Choose the number of epochs on held-out sessions: hold out the sessions that
        start last (``validation_fraction`` of them), score the model on them after
        every epoch (MRR@20, all items ranked, conservative ties: the evaluation
        engine's) and keep the parameters of the best epoch.
    validation_fraction : float in (0, 1), default=0.1
        Share of the sessions held out when ``early_stopping`` is on.
    n_iter_no_change : int or None, default=None
        With ``early_stopping``: stop after this many epochs in a row without a better
        validation score; None trains all ``n_epochs`` and keeps the best.
    refit : bool, default=True
        With ``early_stopping``: train again, from the same initial weights, on all the
        sessions (the held-out ones are the most recent, the most informative about what
        comes next) for the number of epochs chosen. ``refit=False`` keeps the best
        epoch's parameters of the run on the remaining sessions (faster: one run).
    callbacks : list of Callback or callable, or None, default=None
        Called during training (see :mod:`sessionrec.callbacks`): objects with any of
        :class:`~sessionrec.callbacks.Callback`'s hooks or functions
        ``f(model, record)`` called after each epoch; one returning True stops training."""

_VERBOSE_DOCS = """\
verbose : bool or int, default=False
        Print one line per epoch to standard error (loss, time, events/s and, with
        early stopping, the validation score) and, on a terminal, show a progress bar
        of each epoch's mini-batches. The lines also go to the ``sessionrec._training``
        logger at DEBUG level, whatever ``verbose`` is."""

_DISTRIBUTED_DOCS = """\
distributed : bool, default=False
        Train data-parallel across the processes of a ``torch.distributed`` process
        group, which the script initialises before ``fit`` (launched with ``torchrun``;
        backend ``gloo`` on CPUs, ``nccl`` on GPUs). Every rank passes the same events
        and parameters; each trains its share of the ``batch_size`` slots (so
        ``batch_size`` is the global batch), gradients are summed over the ranks before
        each step and the sparse rows of the item tables merged, so the ranks stay
        equal. See docs/scaling.md."""

_ATTRIBUTE_DOCS = """\
history_ : list of dict
        Per epoch: ``epoch``, ``loss`` (mean per training pair), ``start_loss`` (that of
        the epoch's first mini-batch; in the first epoch, the loss at the initial
        weights), ``seconds``, ``events_per_s``, ``batches_per_s``; with
        ``early_stopping``, ``validation_mrr`` and ``refit`` (the epochs of the run on
        the remaining sessions come first, then those of the refit, whose
        ``validation_mrr`` is NaN). Callbacks may add entries.
    best_validation_score_ : float
        With ``early_stopping``: the validation MRR@20 of the best epoch (before any
        refit, which also trains on the held-out sessions).
    best_epoch_ : int
        With ``early_stopping``: the number of epochs chosen."""


def mrr_of_score_blocks(blocks, events, device) -> float:
    """MRR@20 (conservative ties, all items ranked) of the items that follow the
    positions of ``(positions, scores)`` blocks of ``events``: early stopping's score of
    a walk (one choice of backend for the whole walk)."""
    items = torch.as_tensor(events.items, device=device)
    fused = _kernels.fused_for(device)
    ranks = [ranks_from_scores(scores, items[torch.as_tensor(positions + 1, device=device)],
                               fused=fused)
             for positions, scores in blocks]
    return mrr_at_k(torch.cat(ranks).cpu().numpy(), 20)


def document_epochs(cls: type) -> type:
    """Put the shared entries into ``cls``'s docstring, where it says
    ``{epoch_parameters}``, ``{epoch_verbose}``, ``{distributed}`` and
    ``{epoch_attributes}``."""
    cls.__doc__ = (cls.__doc__.replace("{epoch_parameters}", _PARAMETER_DOCS)
                   .replace("{epoch_verbose}", _VERBOSE_DOCS)
                   .replace("{distributed}", _DISTRIBUTED_DOCS)
                   .replace("{epoch_attributes}", _ATTRIBUTE_DOCS))
    return cls


class EpochTrainingMixin:
    """The loop around the epochs of a model's training, and its parameters.

    A host provides ``_train_epochs(events, trainer, n_epochs, *, seed, name, extra)``:
    train from fresh initial parameters (from ``seed``, or ``random_state`` when None),
    set the fitted attributes that prediction reads *before* the first epoch (so that
    callbacks and early stopping can score the model mid-fit), run the epochs through
    ``trainer.run``, and return the seed the run started from; ``_trained_parameters()``,
    the tensors that define the fitted model (updated in place during training); and
    ``_trainer_name`` and ``_divergence_advice()``.
    """

    _epoch_constraints: dict = {
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left"), None],
        "refit": ["boolean"],
        "callbacks": [None, callable, list, tuple, HasMethods(["on_epoch_end"])],
    }

    _trainer_name = "model"

    # The values of the shared parameters that reproduce models pickled before they
    # existed (for the hosts' _LEGACY_PARAMS).
    _epoch_legacy: dict = {"early_stopping": False, "validation_fraction": 0.1,
                           "n_iter_no_change": None, "refit": True, "callbacks": None}

    # -- hooks ----------------------------------------------------------------------------

    def _train_epochs(self, events, trainer: Trainer, n_epochs: int, *, seed=None,
                      name: str | None = None, extra: dict | None = None) -> int:
        raise NotImplementedError

    def _trained_parameters(self) -> list[torch.Tensor]:
        raise NotImplementedError

    def _divergence_advice(self) -> str:
        return f"Lower learning_rate (now {self.learning_rate})."

    def _loss_floor(self) -> float:
        return 0.0

    def _validation_score(self, events, train, valid) -> float:
        """MRR@20 of the model as trained so far on the held-out sessions ``valid``
        (conservative ties, all items ranked), ``train`` being the sessions it trains on
        and ``events`` both. A personalised model overrides it to walk its users'
        earlier sessions first."""
        ranks = [r for _, r in self._iter_ranks(valid, "conservative")]
        return mrr_at_k(torch.cat(ranks).cpu().numpy(), 20)

    # -- persistence ----------------------------------------------------------------------

    def _selection_state(self) -> dict:
        """Early stopping's choices, for a model's ``_get_state`` (empty without it)."""
        return {name: getattr(self, name) for name in
                ("best_validation_score_", "best_epoch_") if hasattr(self, name)}

    def _set_selection_state(self, state: dict) -> None:
        for name, value in state.get("selection", {}).items():
            setattr(self, name, value)

    # -- the skeleton ---------------------------------------------------------------------

    def _trainer(self) -> Trainer:
        return Trainer(self, name=self._trainer_name, advice=self._divergence_advice(),
                       device=self.device_, loss_floor=self._loss_floor(),
                       callbacks=self.callbacks, verbose=self.verbose)

    def _fit_in_epochs(self, events, *, stacklevel: int = 4) -> Trainer:
        """Train for ``n_epochs``, or as early stopping chooses; set ``history_`` (and,
        with early stopping, ``best_validation_score_`` and ``best_epoch_``)."""
        trainer = self._trainer()
        n_epochs = int(self.n_epochs)
        if not self.early_stopping:
            self._train_epochs(events, trainer, n_epochs)
        else:
            train, valid = hold_out_last_sessions(events, float(self.validation_fraction))
            stopper = EarlyStopping(lambda: self._validation_score(events, train, valid),
                                    self._trained_parameters, self.n_iter_no_change)
            trainer.callbacks.insert(0, stopper)  # the others see validation_mrr
            try:
                seed = self._train_epochs(train, trainer, n_epochs, extra={"refit": False})
            finally:
                trainer.callbacks.remove(stopper)
            self.best_validation_score_ = stopper.best
            self.best_epoch_ = max(stopper.best_epoch, 1)
            if self.refit:
                self._train_epochs(events, trainer, self.best_epoch_, seed=seed,
                                   name=f"{self._trainer_name} refit",
                                   extra={"refit": True, "validation_mrr": math.nan})
        trainer.warn_if_diverged(stacklevel=stacklevel)
        self.history_ = trainer.history
        return trainer
