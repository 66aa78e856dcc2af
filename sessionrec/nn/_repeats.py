"""Repeat-aware scores: how HRNN scores the items of the user's own history.

Beyond the HRNN paper. A returning user often comes back to the very items of their
earlier sessions (and clicks an item of the current session again); a softmax over item
rows learns that only item by item, user by user. Here each item gets, on top of its
network score, a bonus from what the user had of it::

    score(i) = [h | 1] [W_y | b_y]_i + g_1 log(1 + n_past(i)) + g_2 log(1 + n_now(i))
                                     + g_3 [n_past(i) > 0] + g_4 [n_now(i) > 0]

``n_past(i)``: the user's events on ``i`` in earlier sessions (training history included);
``n_now(i)``: in the current session so far, the current event included. The gates
``g = h W_rep + b_rep`` read the session state ``h``, which starts from the user state,
so how much the user's history counts is learned per situation (it may also be
negative: items the user is done with, as on MovieLens, where nobody rates a film
twice). Items the user never had get no bonus.

Training. Sampled negatives (in-batch targets, popularity samples) almost never fall in
one user's history, so on their own they would teach the gates that the history is
always right. Each training step therefore ranks a slot's target against *every* item
of the slot's user's history (:class:`StepHistory`) besides the sampled negatives: the
history part of the ranking is exact, only the rest of the catalogue is sampled. A
sampled column that is an item of the slot's history is masked for that slot (the item
counts once). The history columns are trained like the sampled ones (the gates, the
session state and the items' output rows get their gradients), but without the losses'
score regulariser (TOP1's ``sigmoid(r^2)``): with it, the gates could not learn a large
negative weight where the history never comes back.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["N_REPEAT_FEATURES", "StepHistory", "UserHistories", "add_repeat_bonus_",
           "repeat_bonus"]

N_REPEAT_FEATURES = 4


def repeat_bonus(gates: torch.Tensor, n_past: torch.Tensor, n_now: torch.Tensor
                 ) -> torch.Tensor:
    """``g_1 log(1 + n_past) + g_2 log(1 + n_now) + g_3 [n_past > 0] + g_4 [n_now > 0]``
    per row: ``gates`` (rows x 4), counts (rows x columns). Zero where both counts are
    zero."""
    return (gates[:, 0:1] * torch.log1p(n_past) + gates[:, 1:2] * torch.log1p(n_now)
            + gates[:, 2:3] * (n_past > 0) + gates[:, 3:4] * (n_now > 0))


@torch.no_grad()
def add_repeat_bonus_(scores: torch.Tensor, gates: torch.Tensor, n_past: torch.Tensor,
                      n_now: torch.Tensor) -> torch.Tensor:
    """``scores += repeat_bonus(gates, n_past, n_now)`` in place, the count tensors used
    as scratch (overwritten): a prediction block needs no more than its three buffers.
    Zero counts add exactly zero."""
    for at, counts in ((0, n_past), (1, n_now)):
        indicator = counts > 0
        scores.add_(counts.log1p_().mul_(gates[:, at:at + 1]))
        counts.copy_(indicator).mul_(gates[:, at + 2:at + 3])
        scores.add_(counts)
    return scores


@dataclass
class StepHistory:
    """The distinct items of each slot's user history at one training step.

    ``keys`` (sorted): ``slot * n_items + item`` of each distinct (slot, item); ``n_past``
    and ``n_now`` (float32) its counts; ``row_offsets``: slot ``b``'s entries are
    ``row_offsets[b]:row_offsets[b + 1]``.
    """

    keys: torch.Tensor
    n_past: torch.Tensor
    n_now: torch.Tensor
    row_offsets: torch.Tensor
    n_items: int

    def lookup(self, columns: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(n_past, n_now)`` (slots x columns) of the items ``columns``."""
        n_rows = len(self.row_offsets) - 1
        query = (torch.arange(n_rows, device=columns.device).unsqueeze(1) * self.n_items
                 + columns.unsqueeze(0))
        if not len(self.keys):
            return (torch.zeros(query.shape, device=columns.device),
                    torch.zeros(query.shape, device=columns.device))
        at = torch.searchsorted(self.keys, query).clamp_(max=len(self.keys) - 1)
        found = self.keys[at] == query
        return (torch.where(found, self.n_past[at], 0.0),
                torch.where(found, self.n_now[at], 0.0))

    def padded(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(items, n_past, n_now, valid)``: each slot's history items in a row of a
        (slots x longest history) matrix, ``valid`` False on the padding."""
        n_rows = len(self.row_offsets) - 1
        lengths = self.row_offsets.diff()
        width = int(lengths.max()) if n_rows else 0
        device = self.keys.device
        rows = torch.repeat_interleave(torch.arange(n_rows, device=device), lengths)
        column = torch.arange(len(self.keys), device=device) - self.row_offsets[rows]
        items = torch.zeros(n_rows, width, dtype=torch.int64, device=device)
        past = torch.zeros(n_rows, width, device=device)
        now = torch.zeros(n_rows, width, device=device)
        valid = torch.zeros(n_rows, width, dtype=torch.bool, device=device)
        items[rows, column] = self.keys - rows * self.n_items
        past[rows, column] = self.n_past
        now[rows, column] = self.n_now
        valid[rows, column] = True
        return items, past, now, valid


class UserHistories:
    """Where each training event's user history lies, to gather it per step.

    Parameters
    ----------
    start, rank, session_start : LongTensor (n_events,)
        Per training event, in the user order of
        :class:`~sessionrec._user_history.UserHistory`: where its user's events begin,
        its own place, and where its session begins.
    items_by_user : LongTensor (n_events,)
        The items in the user order.
    n_items : int
    """

    def __init__(self, start: torch.Tensor, rank: torch.Tensor, session_start: torch.Tensor,
                 items_by_user: torch.Tensor, n_items: int):
        self.start, self.rank, self.session_start = start, rank, session_start
        self.items, self.n_items = items_by_user, int(n_items)

    def step(self, positions: torch.Tensor) -> StepHistory:
        """The history of the slots whose inputs are the events ``positions``: each slot's
        user's events up to and including its input. Costs the histories' lengths."""
        device = positions.device
        start = self.start.index_select(0, positions)
        lengths = self.rank.index_select(0, positions) - start + 1
        n_rows = len(positions)
        rows = torch.repeat_interleave(torch.arange(n_rows, device=device), lengths)
        first = torch.cumsum(lengths, 0) - lengths
        at = start[rows] + torch.arange(len(rows), device=device) - first[rows]
        now = (at >= self.session_start.index_select(0, positions)[rows]).float()
        keys, inverse = torch.unique(rows * self.n_items + self.items.index_select(0, at),
                                     return_inverse=True)
        total = torch.zeros(len(keys), device=device).index_add_(
            0, inverse, torch.ones_like(now))
        n_now = torch.zeros(len(keys), device=device).index_add_(0, inverse, now)
        row_offsets = torch.searchsorted(
            keys, torch.arange(n_rows + 1, device=device) * self.n_items)
        return StepHistory(keys, total - n_now, n_now, row_offsets, self.n_items)
