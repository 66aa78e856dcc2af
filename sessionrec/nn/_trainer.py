"""The training loop shared by the recurrent models: epochs over a parallel schedule."""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable

import torch

from .._batching import ParallelSchedule
from .._progress import epoch_bar
from ..exceptions import TrainingDivergedError, TrainingDivergenceWarning

__all__ = ["train_parallel", "warn_if_diverged"]

logger = logging.getLogger("sessionrec")

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


def train_parallel(
    step: Callable[[int, int, list], torch.Tensor],
    schedule: ParallelSchedule,
    state: Callable[[int], list],
    *,
    n_epochs: int,
    device: torch.device,
    advice: str,
    log: Callable[..., None] | None = None,
    name: str = "model",
    progress: bool = False,
    loss_floor: float = 0.0,
    warn_divergence: bool = True,
) -> list[dict]:
    """Run ``n_epochs`` epochs of a slot-parallel schedule.

    Parameters
    ----------
    step : callable ``(start, stop, state) -> loss``
        Trains on entries ``start:stop`` of the schedule (one mini-batch), updating the
        per-slot ``state`` tensors in place (or replacing list items), and returns the
        mini-batch's summed loss as a 0-d tensor (not synchronised) or a float.
    schedule : ParallelSchedule
    state : callable ``(batch_size) -> list of Tensor``
        Fresh per-slot state (e.g. zero hidden states) at the start of each epoch. When the
        batch shrinks, the loop keeps the surviving rows of every tensor in the list.
    n_epochs : int
    device : torch.device
    advice : str
        Appended to the error raised when the loss diverges.
    log : callable or None
        ``log(message, *args)`` for one line per epoch.
    name : str
        Names the model in log lines, progress bars and messages.
    progress : bool
        Show a progress bar of each epoch's mini-batches (see ``sessionrec._progress``).
    loss_floor : float
        The least value of the loss per pair (``nn._losses.LOSS_FLOORS``), for the
        divergence warning.
    warn_divergence : bool
        Warn at the end when the loss ended far above the first mini-batch's. A model that
        trains in several calls (one epoch or one subnet at a time) passes False and
        compares the first call's ``start_loss`` with its last epoch itself.

    Returns
    -------
    history : list of dict
        Per epoch: ``epoch``, ``loss`` (mean per training pair), ``start_loss`` (per pair,
        of the epoch's first mini-batch: in the first epoch, the loss at the initial
        weights), ``seconds``, ``events_per_s`` (training pairs per second) and
        ``batches_per_s``.

    Raises
    ------
    TrainingDivergedError
        As soon as the running loss is NaN or infinite.

    Warns
    -----
    TrainingDivergenceWarning
        When the last epoch's mean loss is far above the first mini-batch's
        (:func:`warn_if_diverged`): finite, but diverged.
    """
    bounds = schedule.step_offsets.tolist()
    widths = schedule.widths()
    first_width = int(widths[0]) if len(widths) else 0
    shrink = {t: torch.as_tensor(rows, device=device) for t, rows in schedule.shrink.items()}
    n_pairs = schedule.n_entries
    history = []
    for epoch in range(n_epochs):
        bar = epoch_bar(progress, schedule.n_steps, f"{name} epoch {epoch + 1}/{n_epochs}")
        _synchronize(device)
        start_time = time.perf_counter()
        slots = state(first_width)
        total = torch.zeros((), dtype=torch.float64, device=device)
        host_total = 0.0  # the losses that steps return as floats
        start_loss = math.nan
        try:
            for t in range(schedule.n_steps):
                if t in shrink:
                    rows = shrink[t]
                    slots = [s.index_select(0, rows) for s in slots]
                loss = step(bounds[t], bounds[t + 1], slots)
                if isinstance(loss, float):
                    host_total += loss
                else:
                    total += loss
                if t == 0:  # one host synchronisation per epoch
                    start_loss = float(loss) / (bounds[1] - bounds[0])
                if (t + 1) % _CHECK_EVERY == 0:
                    _check_finite(total, host_total, epoch, advice)
                if bar is not None:
                    bar.update()
        finally:  # also when the loss diverges: no half-drawn bar is left behind
            if bar is not None:
                bar.close()
        mean_loss = _check_finite(total, host_total, epoch, advice) / max(n_pairs, 1)
        _synchronize(device)
        seconds = time.perf_counter() - start_time
        record = {"epoch": epoch + 1, "loss": mean_loss, "start_loss": start_loss,
                  "seconds": seconds,
                  "events_per_s": n_pairs / seconds if seconds > 0 else math.inf,
                  "batches_per_s": schedule.n_steps / seconds if seconds > 0 else math.inf}
        history.append(record)
        if log is not None:
            log("%s epoch %d/%d: loss %.4f, %.1f s, %.0f events/s", name, epoch + 1,
                n_epochs, mean_loss, seconds, record["events_per_s"])
    if history and warn_divergence:
        warn_if_diverged(history[0]["start_loss"], history[-1]["loss"], name, advice,
                         floor=loss_floor, stacklevel=5)
    return history


def _check_finite(total: torch.Tensor, host_total: float, epoch: int, advice: str) -> float:
    value = float(total) + host_total
    if not math.isfinite(value):
        raise TrainingDivergedError(
            f"the training loss became {value} in epoch {epoch + 1}. {advice}"
        )
    return value
