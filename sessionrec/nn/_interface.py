"""The inference interface every recurrent network of sessionrec implements.

GRU4Rec (:class:`~._gru4rec_network.GRU4RecNetwork`), HRNN (:class:`~._hrnn_network.HRNNNetwork`)
and p-RNN (:class:`~._prnn_network.ParallelNetwork`) answer the same calls, so a walk over
sessions (evaluation, prediction, a live session fed click by click) is written once for
all of them:

``zero_state(width) -> list[Tensor]``
    The state of ``width`` slots before any event: a list of tensors with one row per
    slot (GRU4Rec: one per layer; p-RNN: one per subnet; HRNN: session state, user state,
    and the session state before the latest event).
``walk_context(n_fed, feeds_last=True) -> object``
    What a walk that will feed ``n_fed`` events precomputes once from the weights (GRU4Rec:
    the weight views and, when it pays off, the table of the first layer's gate inputs per
    item), with the walk's choice of backend. ``feeds_last``: whether the walk feeds each
    session's last event (a prediction after it) or not (ranking each next item never
    needs it; HRNN then reads a finished session's state differently). Valid until the
    weights change.
``step(items, state, starts, context) -> (state, top)``
    Feed one item per slot. ``starts`` (int8, on the CPU) holds a code per slot,
    :data:`CONTINUE`, :data:`NEW_SESSION` (a new session of the slot's user: HRNN
    carries the user over, the session networks start from zero) or :data:`NEW_USER`
    (everything starts from zero). Returns the new state (tensors may be updated in
    place) and ``top``, one row per slot that :meth:`score_top` turns into scores. No
    dropout, no gradient.
``scoring_matrix() -> Tensor``
    The output layer as one matrix, computed once per walk.
``score_top(top, matrix=None) -> Tensor``
    Scores of every item for each row of ``top`` (rows x n_items).
``score_items(top, items, matrix=None) -> Tensor``
    Scores of the chosen ``items`` (rows x len(items)).

And the same two calls train them, so one fit skeleton (``models/_recurrent.py``) runs
every recurrent model:

``start_training(optimizer, config, batch_size, generator) -> training``
    Pack the item tables with the optimiser's state (``optimizer.table``: the run's
    backend, chosen once), prepare the dropout masks of ``config`` (a
    :class:`~._losses.StepConfig`) for up to ``batch_size`` slots. ``training.finish()``
    gives the tables their own storage back when the run ends.
``train_step(batch, state, training) -> loss``
    One sampled step on a :class:`TrainBatch`: reset the slots' state where the batch's
    codes say a session (or user) starts, feed the items, score the targets and samples
    (never the catalogue), and update the parameters and ``state`` in place. Returns the
    loss summed over the batch (0-d, not synchronised). Where the network's training
    has more to it, the training object carries it (p-RNN: ``training.updates``, which
    subnets a step trains).

:func:`check_network` checks that an object implements the interface.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["CONTINUE", "NEW_SESSION", "NEW_USER", "INFERENCE_METHODS", "TRAINING_METHODS",
           "TrainBatch", "start_codes", "keep_rows", "slots_with", "check_network",
           "with_bias_input",
           "OutputTableScores"]

CONTINUE, NEW_SESSION, NEW_USER = 0, 1, 2

INFERENCE_METHODS = ("zero_state", "walk_context", "step", "scoring_matrix", "score_top",
                     "score_items")
TRAINING_METHODS = ("start_training", "train_step")


@dataclass
class TrainBatch:
    """One mini-batch of a slot-parallel training schedule (B active slots).

    items, targets : LongTensor (B,)
        Each slot's input item and next item, on the device.
    samples : LongTensor (S,) or None
        Extra negatives shared by the batch.
    score_shift : Tensor (B + S,) or None
        Added to the scores of the columns (targets, then samples) before the loss: the
        logQ correction.
    starts : Tensor (B,), int8, on the CPU
        Each slot's code (:data:`CONTINUE`, :data:`NEW_SESSION`, :data:`NEW_USER`), read
        on the host (HRNN picks the slots whose session starts without waiting for the
        device).
    keep : Tensor (B, 1), on the device
        :func:`keep_rows` of ``starts``: 0.0 where the slot starts from a zero state,
        else 1.0 (the session networks' reset). Made once per schedule, not per step: on
        a GPU a per-step copy from the host costs more than the reset.
    positions : LongTensor (B,) or None
        The events of the slots' inputs (indices into the fit's events), on the device,
        for a network that looks up more than the items (HRNN's repeat-aware counts).
    """

    items: torch.Tensor
    targets: torch.Tensor
    samples: torch.Tensor | None
    score_shift: torch.Tensor | None
    starts: torch.Tensor | None
    keep: torch.Tensor
    positions: torch.Tensor | None = None


def start_codes(session_start, user_start=None) -> torch.Tensor:
    """The ``starts`` codes of a schedule's entries: :data:`NEW_SESSION` where a session
    starts, :data:`NEW_USER` where a user starts (``user_start``: a user-parallel
    schedule), else :data:`CONTINUE` (int8, on the CPU)."""
    codes = np.asarray(session_start, dtype=np.int8) * NEW_SESSION
    if user_start is not None:
        codes[np.asarray(user_start, dtype=bool)] = NEW_USER
    return torch.from_numpy(codes)


def slots_with(starts: torch.Tensor, code: int, device) -> torch.Tensor:
    """The slots whose code is ``code``, as an index on ``device``, found on the host
    (``starts`` is on the CPU): no wait for the device."""
    return torch.as_tensor(np.flatnonzero(starts.numpy() == code), device=device)


def keep_rows(starts: torch.Tensor, device, *, codes: tuple = (CONTINUE,)) -> torch.Tensor:
    """1.0 for the slots whose code is in ``codes``, else 0.0, as a column (B, 1)."""
    keep = starts == codes[0]
    for code in codes[1:]:
        keep |= starts == code
    return keep.to(device=device, dtype=torch.float32).unsqueeze(1)


def with_bias_input(h: torch.Tensor) -> torch.Tensor:
    """``[h | 1]``: rows of hidden states with an input of 1 for the output bias."""
    return torch.nn.functional.pad(h, (0, 1), value=1.0)


class OutputTableScores:
    """The scoring calls of a network whose output layer is one table ``out`` of rows
    ``[W_y | b_y]`` (n_items x (H + 1)) applied to the top state (GRU4Rec, HRNN)."""

    @torch.no_grad()
    def scoring_matrix(self) -> torch.Tensor:
        """``[W_y | b_y]`` transposed and contiguous ((H + 1) x n_items), for
        :meth:`score_all`; computing it once per prediction call saves a copy per block."""
        return self.out.t().contiguous()

    @torch.no_grad()
    def score_all(self, h: torch.Tensor, matrix: torch.Tensor | None = None) -> torch.Tensor:
        """Scores of every item for each row of ``h`` (rows x n_items).

        The bias rides along as an extra input of 1, so the product needs no separate
        pass to broadcast it.
        """
        if matrix is None:
            matrix = self.scoring_matrix()
        return torch.mm(with_bias_input(h), matrix)

    def score_top(self, top: torch.Tensor, matrix: torch.Tensor | None = None
                  ) -> torch.Tensor:
        """:meth:`score_all` of the top states."""
        return self.score_all(top, matrix)

    @torch.no_grad()
    def score_items(self, top: torch.Tensor, items: torch.Tensor,
                    matrix: torch.Tensor | None = None) -> torch.Tensor:
        """Scores of the chosen ``items`` for each row of ``top``."""
        if matrix is None:
            matrix = self.scoring_matrix()
        return torch.mm(with_bias_input(top), matrix.index_select(1, items))


def check_network(network) -> None:
    """Raise ``TypeError`` unless ``network`` has every method of the interface.

    Examples
    --------
    >>> check_network(object())
    Traceback (most recent call last):
    ...
    TypeError: object lacks zero_state, walk_context, step, scoring_matrix, score_top, \
score_items, start_training, train_step of the recurrent network interface \
(sessionrec.nn._interface).
    """
    missing = [name for name in INFERENCE_METHODS + TRAINING_METHODS
               if not callable(getattr(network, name, None))]
    if missing:
        raise TypeError(f"{type(network).__name__} lacks {', '.join(missing)} of the "
                        "recurrent network interface (sessionrec.nn._interface).")
