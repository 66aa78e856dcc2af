"""The k best items of score rows: the one selection rule of predictions and live sessions.

:meth:`SessionRecommender.predict_next` and :class:`sessionrec.serving.LiveSessions` pick
their lists here, so that a session fed click by click gets exactly the list that
``predict_next`` gives for the same events: the same scores go through the same selection.
Excluded items (``exclude_seen``) score ``-inf`` before the selection.
"""

from __future__ import annotations

import numpy as np
import torch

from ._events import SessionEvents, ragged_arange

__all__ = ["Exclusions", "exclusions_from_lists", "history_exclusions",
           "select_exclusions", "top_of_scores"]

# (offsets, items): row r's excluded items are items[offsets[r]:offsets[r + 1]], sorted
# and distinct, as int64 tensors on the CPU.
Exclusions = tuple[torch.Tensor, torch.Tensor]


def exclusions_from_lists(lists) -> Exclusions:
    """:data:`Exclusions` of one list (or array) of item codes per row."""
    arrays = [np.unique(np.asarray(items, dtype=np.int64)) for items in lists]
    offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
    np.cumsum([len(a) for a in arrays], out=offsets[1:])
    items = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)
    return torch.from_numpy(offsets), torch.from_numpy(items.astype(np.int64, copy=False))


def history_exclusions(events: SessionEvents, positions: np.ndarray) -> Exclusions:
    """For each event position, its session's items up to and including it."""
    starts = events.session_starts[positions]
    lengths = positions - starts + 1
    rows = np.repeat(np.arange(len(positions), dtype=np.int64), lengths)
    items = events.items[ragged_arange(starts, lengths)]
    # Sorted by (row, item), duplicates dropped: one lexsort, no loop over rows.
    order = np.lexsort((items, rows))
    rows, items = rows[order], items[order]
    keep = np.ones(len(items), dtype=bool)
    keep[1:] = (rows[1:] != rows[:-1]) | (items[1:] != items[:-1])
    rows, items = rows[keep], items[keep]
    offsets = np.zeros(len(positions) + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=len(positions)), out=offsets[1:])
    return torch.from_numpy(offsets), torch.from_numpy(items)


def select_exclusions(exclude: Exclusions, rows: torch.Tensor) -> Exclusions:
    """The :data:`Exclusions` of the chosen ``rows`` only."""
    offsets, items = exclude
    lengths = offsets[1:] - offsets[:-1]
    chosen = lengths[rows].numpy()
    picked = items[torch.from_numpy(ragged_arange(offsets[:-1][rows].numpy(), chosen))]
    new = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(chosen, out=new[1:])
    return torch.from_numpy(new), picked


def top_of_scores(scores: torch.Tensor, k: int, exclude: Exclusions | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(items, values)`` of the ``k`` highest scores of each row (``torch.topk``), the
    rows' excluded items scoring ``-inf`` first."""
    if exclude is not None and len(exclude[1]):
        offsets, items = exclude
        rows = torch.repeat_interleave(torch.arange(len(offsets) - 1),
                                       offsets[1:] - offsets[:-1])
        scores = scores.clone()
        scores[rows.to(scores.device), items.to(scores.device)] = float("-inf")
    values, idx = torch.topk(scores, k, dim=1)
    return idx, values
