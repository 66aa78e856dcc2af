"""The training loop of every model that trains in epochs (GRU4Rec, HRNN, p-RNN, BPR-MF).

One :class:`Trainer` per fit runs the epochs a model hands it and owns everything around
them, once for all models: the per-epoch records (``history_``), the progress bar and the
log line under ``verbose``, the NaN/inf check of the loss, the divergence warning, the
user's callbacks (:mod:`sessionrec.callbacks`) and early stopping on held-out sessions
(:class:`EarlyStopping`, a callback itself). A model supplies only what one mini-batch
does: an *epoch* is an iterable of the mini-batches' summed losses (0-d tensors, not
synchronised, or floats).

Kept apart from ``sessionrec.nn`` on purpose: the loop knows nothing of networks, and
BPR-MF (factor tables, no network) runs through it as the recurrent models do.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace

import numpy as np
import torch

from ._events import SessionEvents
from ._progress import epoch_bar, report
from .callbacks import Callback
from .exceptions import TrainingDivergedError, TrainingDivergenceWarning

__all__ = ["Trainer", "EarlyStopping", "parallel_epoch", "hold_out_last_sessions",
           "warn_if_diverged"]

logger = logging.getLogger(__name__)

# How often the running loss is checked for NaN/inf: each check synchronises a GPU with
# the host, so it is not done every step (the official code does it every step).
_CHECK_EVERY = 256

# A fit whose last epoch's mean loss per pair, above the loss's floor, is this many times
# the first mini-batch's (the loss at the initial weights) has diverged. Every loss falls
# from its start when training works. The bounded ones stay close to it even when they
# diverge (TOP1 lies in [0.5, 2] and starts near 1), hence a modest ratio, taken above
# the floor (LOSS_FLOORS): diverged TOP1 ends about twice as far above 0.5 as it starts.
DIVERGED_RATIO = 1.5


def warn_if_diverged(first: float, last: float, name: str, advice: str, *,
                     floor: float = 0.0, stacklevel: int = 2) -> None:
    """Warn (:class:`~sessionrec.exceptions.TrainingDivergenceWarning`) when the mean loss
    per pair of the last epoch, ``last``, is far above ``first``, the loss per pair of the
    first mini-batch, both measured above ``floor``, the loss's least value; ``advice``
    says which parameters to change."""
    start, end = first - floor, last - floor
    if math.isfinite(start) and start > 0 and end > DIVERGED_RATIO * start:
        warnings.warn(
            f"{name}: the training loss ended at {last:.4g} per pair, far above where it "
            f"started ({first:.4g}): training diverged and the model is probably "
            f"useless. {advice}", TrainingDivergenceWarning, stacklevel=stacklevel)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _FunctionCallback(Callback):
    """A plain function ``f(model, record)``, called at the end of every epoch."""

    def __init__(self, function: Callable):
        self.function = function

    def on_epoch_end(self, model, record):
        return self.function(model, record)


def _as_callbacks(callbacks) -> list:
    """The model's ``callbacks`` parameter as objects with every hook."""
    if callbacks is None:
        return []
    if callable(callbacks) or hasattr(callbacks, "on_epoch_end"):  # one, not a list
        callbacks = [callbacks]
    return [c if hasattr(c, "on_epoch_end") else _FunctionCallback(c) for c in callbacks]


def _overrides(callback, hook: str) -> bool:
    """Whether ``callback`` has a ``hook`` that does something (not Callback's no-op)."""
    method = getattr(type(callback), hook, None)
    return method is not None and method is not getattr(Callback, hook)


class Trainer:
    """The epochs of one fit: records, progress, log lines, checks and callbacks.

    Parameters
    ----------
    model : estimator
        The model being fitted; passed to every callback.
    name : str
        Names the model in progress bars, log lines and messages.
    advice : str
        What to change when the loss diverges, appended to the messages.
    device : torch.device
    loss_floor : float
        The least value of the loss per pair, for the divergence warning.
    callbacks : list, callable or None
        The user's callbacks (the model's ``callbacks`` parameter).
    verbose : bool or int
        Progress bars (on a terminal) and one line per epoch on standard error.

    Attributes
    ----------
    history : list of dict
        The records of every epoch of every run, in order (the model's ``history_``).
    stopped : bool
        Whether a callback stopped the last run.
    """

    def __init__(self, model, *, name: str, advice: str, device: torch.device,
                 loss_floor: float = 0.0, callbacks=None, verbose=False):
        self.model = model
        self.name = name
        self.advice = advice
        self.device = torch.device(device)
        self.loss_floor = loss_floor
        self.callbacks = _as_callbacks(callbacks)
        self.verbose = verbose
        self.history: list[dict] = []
        self.stopped = False
        self._reduce = None  # the running run's sum over data-parallel ranks

    def run(self, epoch: Callable[[], Iterable], *, n_epochs: int, n_pairs: int,
            n_batches: int, first_pairs: int, name: str | None = None,
            extra: dict | None = None, reduce: Callable[[float], float] | None = None
            ) -> list[dict]:
        """Run up to ``n_epochs`` epochs; return their records (also added to ``history``).

        Parameters
        ----------
        epoch : callable
            ``epoch()`` gives one epoch's mini-batches: an iterable of each mini-batch's
            summed loss (a 0-d tensor, not synchronised, or a float). It trains as it is
            iterated.
        n_epochs : int
        n_pairs : int
            Training pairs per epoch: the mean loss is the total over this.
        n_batches : int
            Mini-batches per epoch (the progress bar's length).
        first_pairs : int
            Pairs of the first mini-batch, for ``start_loss``.
        name : str or None
            This run's name in bars and log lines and for ``on_train_begin``; by default
            the trainer's.
        extra : dict or None
            Entries added to every record of this run.
        reduce : callable or None
            A data-parallel run's sum over the ranks of a float: the running loss is
            summed at every check (so every rank stops together on a NaN) and the
            epoch's loss is the mean over all ranks' ``n_pairs``.

        Raises
        ------
        TrainingDivergedError
            As soon as the running loss is NaN or infinite.
        """
        name = self.name if name is None else name
        self.stopped = False
        callbacks = self.callbacks
        batch_hooks = [c for c in callbacks if _overrides(c, "on_batch_end")]
        for callback in callbacks:
            if _overrides(callback, "on_train_begin"):
                callback.on_train_begin(self.model, name=name, n_epochs=n_epochs)
        records = []
        self._reduce = reduce
        try:
            for e in range(n_epochs):
                number = len(self.history) + 1
                for callback in callbacks:
                    if _overrides(callback, "on_epoch_begin"):
                        callback.on_epoch_begin(self.model, epoch=number)
                record = self._epoch(epoch(), number, f"{name} epoch {e + 1}/{n_epochs}",
                                     n_pairs, n_batches, first_pairs, batch_hooks)
                if extra:
                    record.update(extra)
                self.history.append(record)
                records.append(record)
                stop = False
                for callback in callbacks:
                    stop = bool(callback.on_epoch_end(self.model, record)) or stop
                self._report(name, e + 1, n_epochs, record)
                if stop:
                    self.stopped = True
                    break
        finally:
            for callback in callbacks:
                if _overrides(callback, "on_train_end"):
                    callback.on_train_end(self.model, records)
        return records

    def _epoch(self, batches: Iterable, number: int, description: str, n_pairs: int,
               n_batches: int, first_pairs: int, batch_hooks: list) -> dict:
        bar = epoch_bar(self.verbose, n_batches, description)
        device = self.device
        _synchronize(device)
        start_time = time.perf_counter()
        total = torch.zeros((), dtype=torch.float64, device=device)
        host_total = 0.0  # the losses that steps return as floats
        start_loss = math.nan
        t = 0
        try:
            for t, loss in enumerate(batches):
                if isinstance(loss, float):
                    host_total += loss
                else:
                    total += loss
                if t == 0:  # one host synchronisation per epoch
                    start_loss = float(loss) / max(first_pairs, 1)
                if (t + 1) % _CHECK_EVERY == 0:
                    self._check_finite(total, host_total, number)
                if bar is not None:
                    bar.update()
                for callback in batch_hooks:
                    callback.on_batch_end(self.model, batch=t + 1, n_batches=n_batches)
        finally:  # also when the loss diverges: no half-drawn bar is left behind
            if bar is not None:
                bar.close()
        mean_loss = self._check_finite(total, host_total, number) / max(n_pairs, 1)
        _synchronize(device)
        seconds = time.perf_counter() - start_time
        return {"epoch": number, "loss": mean_loss, "start_loss": start_loss,
                "seconds": seconds,
                "events_per_s": n_pairs / seconds if seconds > 0 else math.inf,
                "batches_per_s": n_batches / seconds if seconds > 0 else math.inf}

    def _check_finite(self, total: torch.Tensor, host_total: float, epoch: int) -> float:
        value = float(total) + host_total
        if self._reduce is not None:
            value = self._reduce(value)
        if not math.isfinite(value):
            raise TrainingDivergedError(
                f"{self.name}: the training loss became {value} in epoch {epoch}. "
                f"{self.advice}")
        return value

    def _report(self, name: str, epoch: int, n_epochs: int, record: dict) -> None:
        """One line per epoch (see :func:`sessionrec._progress.report`)."""
        message = (f"{name} epoch {epoch}/{n_epochs}: loss {record['loss']:.4f}, "
                   f"{record['seconds']:.1f} s, {record['events_per_s']:.0f} events/s")
        if not math.isnan(record.get("validation_mrr", math.nan)):
            message += f", validation MRR@20 {record['validation_mrr']:.4f}"
        report(self.verbose, logger, message)

    def warn_if_diverged(self, stacklevel: int = 2) -> None:
        """Warn when the last epoch ended far above the fit's first mini-batch."""
        if self.history:
            warn_if_diverged(self.history[0]["start_loss"], self.history[-1]["loss"],
                             self.name, self.advice, floor=self.loss_floor,
                             stacklevel=stacklevel + 1)


class EarlyStopping(Callback):
    """Keep the epoch with the best validation score; optionally stop when it stalls.

    Run as the first of a trainer's callbacks, so that the others see the score in the
    record (``validation_mrr``). After each epoch ``score()`` is called; an epoch that
    beats the best so far has its parameters copied (``parameters()``: the tensors that
    define the model, updated in place by training). When ``patience`` epochs in a row
    did not improve, training stops; at the end of the run the best epoch's parameters
    are written back into the same tensors.

    Parameters
    ----------
    score : callable
        ``score()`` -> float, higher is better (validation MRR@20).
    parameters : callable
        ``parameters()`` -> list of Tensor.
    patience : int or None
        Epochs without improvement before stopping; None trains every epoch.
    """

    def __init__(self, score: Callable[[], float], parameters: Callable[[], list],
                 patience: int | None = None):
        self.score = score
        self.parameters = parameters
        self.patience = patience
        self.best = -math.inf
        self.best_epoch = 0  # of the run, 1-based; 0 = none yet
        self.epochs = 0
        self.saved: list | None = None

    def on_train_begin(self, model, *, name, n_epochs):
        self.best, self.best_epoch, self.epochs = -math.inf, 0, 0
        self.saved = [p.detach().clone() for p in self.parameters()]

    def on_epoch_end(self, model, record):
        self.epochs += 1
        value = float(self.score())
        record["validation_mrr"] = value
        if value > self.best:
            self.best, self.best_epoch = value, self.epochs
            for saved, p in zip(self.saved, self.parameters(), strict=True):
                saved.copy_(p.detach())
        return self.patience is not None and self.epochs - self.best_epoch >= self.patience

    @torch.no_grad()
    def on_train_end(self, model, history):
        if self.saved is not None and self.best_epoch != self.epochs:
            for saved, p in zip(self.saved, self.parameters(), strict=True):
                p.copy_(saved)
        self.saved = None  # the copy is no longer needed


def parallel_epoch(step: Callable, schedule, state: Callable[[int], list],
                   device: torch.device) -> Callable[[], Iterator]:
    """One epoch of a slot-parallel schedule, as :meth:`Trainer.run` takes it.

    ``step(start, stop, slots)`` trains on entries ``start:stop`` of the schedule (one
    mini-batch), updating the per-slot tensors ``slots`` in place (or replacing list
    items), and returns the mini-batch's summed loss. ``state(width)`` gives fresh slots
    (e.g. zero hidden states) at the start of each epoch; when the batch shrinks, the
    surviving rows of every slot tensor are kept.
    """
    bounds = schedule.step_offsets.tolist()
    widths = schedule.widths()
    first_width = int(widths[0]) if len(widths) else 0
    shrink = {t: torch.as_tensor(rows, device=device) for t, rows in schedule.shrink.items()}

    def epoch() -> Iterator:
        slots = state(first_width)
        for t in range(schedule.n_steps):
            if t in shrink:
                rows = shrink[t]
                slots = [s.index_select(0, rows) for s in slots]
            yield step(bounds[t], bounds[t + 1], slots)

    return epoch


def parallel_sizes(schedule) -> dict:
    """The sizes :meth:`Trainer.run` needs, of a slot-parallel schedule."""
    bounds = schedule.step_offsets
    first = int(bounds[1] - bounds[0]) if schedule.n_steps else 0
    return dict(n_pairs=int(schedule.n_entries), n_batches=int(schedule.n_steps),
                first_pairs=first)


def hold_out_last_sessions(events: SessionEvents, fraction: float
                           ) -> tuple[SessionEvents, SessionEvents]:
    """Split off the sessions that start last (``fraction`` of them) for validation.

    Both parts keep every per-session and per-event array (users included, so a
    personalised model validates on its users' later sessions).
    """
    n_sessions = events.n_sessions
    n_valid = int(round(fraction * n_sessions))
    cut = n_sessions - n_valid
    if n_valid < 1 or cut < 1:
        raise ValueError(f"validation_fraction={fraction} of {n_sessions} sessions leaves "
                         f"{n_valid} for validation and {cut} for training; each needs "
                         "at least one session.")
    offsets, split = events.offsets, int(events.offsets[cut])

    def part(sessions: slice, rows: slice, offsets_part: np.ndarray) -> SessionEvents:
        def cut_array(values, by):
            return None if values is None else values[by]
        return replace(events, items=events.items[rows], offsets=offsets_part,
                       session_labels=events.session_labels[sessions],
                       rows=events.rows[rows], users=cut_array(events.users, sessions),
                       first_rows=cut_array(events.first_rows, sessions),
                       end_times=cut_array(events.end_times, sessions),
                       seconds=cut_array(events.seconds, rows))

    train = part(slice(None, cut), slice(None, split), offsets[:cut + 1])
    valid = part(slice(cut, None), slice(split, None), offsets[cut:] - split)
    if not (valid.lengths >= 2).any():
        raise ValueError(f"validation_fraction={fraction} holds out {n_valid} sessions, "
                         "none with two events, so there is nothing to validate on; "
                         "raise validation_fraction.")
    if not (train.lengths >= 2).any():
        raise ValueError(f"validation_fraction={fraction} leaves no training session "
                         "with two events; lower validation_fraction.")
    return train, valid
