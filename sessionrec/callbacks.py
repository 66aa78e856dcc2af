"""Hooks into the training of the models that train in epochs.

:class:`~sessionrec.GRU4RecRecommender`, :class:`~sessionrec.HRNNRecommender`,
:class:`~sessionrec.ParallelRNNRecommender` and :class:`~sessionrec.BPRMFRecommender`
take ``callbacks=[...]``: objects with any of the methods of :class:`Callback`, or plain
functions ``f(model, record)``, called at the end of every epoch. A callback (or
function) that returns True stops training after that epoch.

During ``fit`` the model already holds its network (or factors) as trained so far, so a
callback can evaluate it (``model.score(validation_events)``), save it or plot its
curves. ``record`` is the epoch's entry of ``history_``: ``epoch``, ``loss`` (mean per
training pair), ``start_loss``, ``seconds``, ``events_per_s``, ``batches_per_s`` and,
with ``early_stopping=True``, ``validation_mrr``. A callback may add entries to it; they
are kept in ``history_``.

Callbacks are hyper-parameters (``get_params`` returns them), so ``clone`` copies them
and a fitted model pickles only if its callbacks do: prefer a module-level function or
class to a lambda when the model is to be saved with ``joblib``.

Examples
--------
>>> from sessionrec import BPRMFRecommender
>>> from sessionrec.callbacks import Callback
>>> from sessionrec.datasets import make_sessions
>>> events = make_sessions(n_sessions=100, n_items=30, random_state=0)
>>> class StopBelow(Callback):
...     def __init__(self, loss):
...         self.loss = loss
...     def on_epoch_end(self, model, record):
...         return record["loss"] < self.loss
>>> model = BPRMFRecommender(n_epochs=50, random_state=0,
...                          callbacks=[StopBelow(0.6)]).fit(events)
>>> len(model.history_) < 50
True
"""

from __future__ import annotations

__all__ = ["Callback"]


class Callback:
    """Base class of training callbacks: override the hooks you need.

    Every hook receives the model being fitted. The hooks run in this order:
    ``on_train_begin`` once per training run, then per epoch ``on_epoch_begin``,
    ``on_batch_end`` after every mini-batch (only for a callback that overrides it: the
    trainer does not call hooks that do nothing), ``on_epoch_end``; and ``on_train_end``
    once at the end, also when a callback stopped training early. A model that trains
    in several runs (p-RNN's residual training: one run per subnet, and a refit after
    early stopping) calls ``on_train_begin`` and ``on_train_end`` once per run; ``name``
    says which run it is.

    Examples
    --------
    >>> from sessionrec import BPRMFRecommender
    >>> from sessionrec.datasets import make_sessions
    >>> class LossLog(Callback):
    ...     def on_train_begin(self, model, *, name, n_epochs):
    ...         self.losses = []
    ...     def on_epoch_end(self, model, record):
    ...         self.losses.append(round(record["loss"], 3))
    >>> log = LossLog()
    >>> events = make_sessions(n_sessions=100, n_items=30, random_state=0)
    >>> _ = BPRMFRecommender(n_epochs=3, random_state=0, callbacks=[log]).fit(events)
    >>> len(log.losses)
    3
    """

    def on_train_begin(self, model, *, name: str, n_epochs: int) -> None:
        """Before the first epoch of a training run called ``name``."""

    def on_epoch_begin(self, model, *, epoch: int) -> None:
        """Before epoch ``epoch`` (1-based, counted over the whole fit)."""

    def on_batch_end(self, model, *, batch: int, n_batches: int) -> None:
        """After mini-batch ``batch`` (1-based) of the ``n_batches`` of the epoch."""

    def on_epoch_end(self, model, record: dict) -> bool | None:
        """After an epoch, with its ``history_`` record; return True to stop training."""

    def on_train_end(self, model, history: list[dict]) -> None:
        """After the last epoch of a training run; ``history`` holds its records."""
