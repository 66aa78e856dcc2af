"""The training loop shared by the recurrent models: epochs over a parallel schedule."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import torch

from .._batching import ParallelSchedule
from ..exceptions import TrainingDivergedError

__all__ = ["train_parallel"]

logger = logging.getLogger("sessionrec")

# How often the running loss is checked for NaN/inf: each check synchronises a GPU with
# the host, so it is not done every step (the official code does it every step).
_CHECK_EVERY = 256


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

    Returns
    -------
    history : list of dict
        Per epoch: ``epoch``, ``loss`` (mean per training pair), ``seconds``,
        ``events_per_s`` (training pairs per second) and ``batches_per_s``.

    Raises
    ------
    TrainingDivergedError
        As soon as the running loss is NaN or infinite.
    """
    bounds = schedule.step_offsets.tolist()
    widths = schedule.widths()
    first_width = int(widths[0]) if len(widths) else 0
    shrink = {t: torch.as_tensor(rows, device=device) for t, rows in schedule.shrink.items()}
    n_pairs = schedule.n_entries
    history = []
    for epoch in range(n_epochs):
        _synchronize(device)
        start_time = time.perf_counter()
        slots = state(first_width)
        total = torch.zeros((), dtype=torch.float64, device=device)
        host_total = 0.0  # the losses that steps return as floats
        for t in range(schedule.n_steps):
            if t in shrink:
                rows = shrink[t]
                slots = [s.index_select(0, rows) for s in slots]
            loss = step(bounds[t], bounds[t + 1], slots)
            if isinstance(loss, float):
                host_total += loss
            else:
                total += loss
            if (t + 1) % _CHECK_EVERY == 0:
                _check_finite(total, host_total, epoch, advice)
        mean_loss = _check_finite(total, host_total, epoch, advice) / max(n_pairs, 1)
        _synchronize(device)
        seconds = time.perf_counter() - start_time
        record = {"epoch": epoch + 1, "loss": mean_loss, "seconds": seconds,
                  "events_per_s": n_pairs / seconds if seconds > 0 else math.inf,
                  "batches_per_s": schedule.n_steps / seconds if seconds > 0 else math.inf}
        history.append(record)
        if log is not None:
            log("%s epoch %d/%d: loss %.4f, %.1f s, %.0f events/s", name, epoch + 1,
                n_epochs, mean_loss, seconds, record["events_per_s"])
    return history


def _check_finite(total: torch.Tensor, host_total: float, epoch: int, advice: str) -> float:
    value = float(total) + host_total
    if not math.isfinite(value):
        raise TrainingDivergedError(
            f"the training loss became {value} in epoch {epoch + 1}. {advice}"
        )
    return value
