"""What a live session keeps for each kind of model, and how its next list is computed.

Two backends cover every estimator:

* :class:`RecurrentBackend` (GRU4Rec, HRNN, p-RNN): each session's network state lives in
  a row of a preallocated slab; a click is one :meth:`step` of the recurrent network
  interface (:mod:`sessionrec.nn._interface`) for all the sessions clicked together, so
  the cost of a click does not grow with the session's length. HRNN's user state is
  carried from a user's latest session into their next one.
* :class:`HistoryBackend` (POP, S-POP, Personal POP, Item-KNN, Markov, rules, SKNN,
  V-SKNN, STAN, BPR-MF): the state is the session's events. A click scores the sessions'
  histories with the model's own prediction code, which for these models costs what the
  model's definition costs (the last item for Item-KNN / Markov / rules; the session's
  events for S-POP, BPR-MF and the neighbourhood methods; the user's events for
  Personal POP).

Both score through the model's own calls (``_iter_top``, ``_cold_scores``, the network's
``step``) on the same arrays a prediction builds, so a session fed click by click gets
the list that :meth:`~sessionrec._base.SessionRecommender.predict_next` gives for its
events.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from .._events import SessionEvents
from .._native import kernels as _kernels
from .._topk import exclusions_from_lists, top_of_scores
from ..nn._interface import CONTINUE, NEW_SESSION, NEW_USER

__all__ = ["HistoryBackend", "RecurrentBackend", "backend_for", "session_frame"]


def session_frame(histories, seconds, user_labels=None, earlier=None
                  ) -> tuple[SessionEvents, np.ndarray]:
    """The :class:`SessionEvents` a prediction would build for these sessions.

    Row ``r`` is a session of the events ``histories[r]`` (item codes) at ``seconds[r]``;
    with ``user_labels``, its user, and with ``earlier`` (item codes per row) the user's
    events of other sessions, as one session of the same user before it. Each row gets
    its own user entry, so rows never share a history. Returns the events and the
    session number of each row.
    """
    n = len(histories)
    lists, times, owners = [], [], []
    for r in range(n):  # per session, not per event: the arrays are concatenated below
        if earlier is not None and len(earlier[r]):
            lists.append(np.asarray(earlier[r], dtype=np.int64))
            times.append(np.zeros(len(earlier[r])))
            owners.append(r)
        lists.append(np.asarray(histories[r], dtype=np.int64))
        times.append(np.asarray(seconds[r], dtype=np.float64))
        owners.append(r)
    lengths = np.array([len(a) for a in lists], dtype=np.int64)
    offsets = np.zeros(len(lists) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    items = np.concatenate(lists) if lists else np.zeros(0, dtype=np.int64)
    owners = np.asarray(owners, dtype=np.int64)
    rows_session = np.flatnonzero(np.r_[owners[1:] != owners[:-1], True])
    users = labels = None
    if user_labels is not None:
        users, labels = owners, pd.Index(list(user_labels))
    events = SessionEvents(
        items=items, offsets=offsets, session_labels=np.arange(len(lists)),
        rows=np.arange(len(items), dtype=np.int64), users=users, user_labels=labels,
        seconds=np.concatenate(times) if times else np.zeros(0))
    return events, rows_session


class _Backend:
    """The part shared by both backends: cold lists and the assembly of a batch's lists."""

    def __init__(self, model, uses_users: bool):
        self.model = model
        self.uses_users = uses_users

    def _frame(self, records, histories=None):
        user_labels = [r.user.label for r in records] if self.uses_users else None
        earlier = [r.user.other_events(r) for r in records] if self.uses_users else None
        if histories is None:
            histories = [r.items for r in records]
        return session_frame(histories, [r.seconds for r in records], user_labels, earlier)

    def _cold(self, records, k: int, exclude_seen: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Lists of sessions without a known event: the model's no-history scores (with
        nothing seen, nothing to exclude)."""
        events, sessions = self._frame(records, [[] for _ in records])
        return top_of_scores(self.model._cold_scores(events, sessions), k)

    def top(self, records, k: int, exclude_seen: bool) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best item codes and their scores (float64) of each record."""
        if len(records) == 1 and records[0].items:  # one click: no assembly
            idx, values = self._top_known(records, k, exclude_seen)
            return idx.cpu().numpy(), values.cpu().numpy().astype(np.float64)
        items = np.zeros((len(records), k), dtype=np.int64)
        scores = np.zeros((len(records), k), dtype=np.float64)
        known = np.array([len(r.items) > 0 for r in records], dtype=bool)
        for rows, select in ((np.flatnonzero(known), self._top_known),
                             (np.flatnonzero(~known), self._cold)):
            if len(rows):
                idx, values = select([records[i] for i in rows], k, exclude_seen)
                items[rows] = idx.cpu().numpy()
                scores[rows] = values.double().cpu().numpy()
        return items, scores

    def advance(self, records, codes: np.ndarray) -> None:
        """Feed each record's new known item (already appended to its history)."""

    def release(self, record) -> None:
        """Forget what is kept for ``record``, a session that ends."""


class HistoryBackend(_Backend):
    """Keeps each session's events; scores them with the model's prediction code."""

    def _top_known(self, records, k: int, exclude_seen: bool):
        events, sessions = self._frame(records)
        last = np.zeros(events.n_events, dtype=bool)
        ends = events.offsets[sessions + 1] - 1
        last[ends] = True
        row_of = np.empty(events.n_events, dtype=np.int64)
        row_of[ends] = np.arange(len(records))
        idx = torch.empty(len(records), k, dtype=torch.int64)
        values = torch.empty(len(records), k, dtype=torch.float64)
        for positions, block_idx, block_values in self.model._iter_top(events, last, k,
                                                                       exclude_seen):
            rows = torch.as_tensor(row_of[positions])
            idx[rows] = block_idx.cpu()
            values[rows] = block_values.double().cpu()
        return idx, values


class RecurrentBackend(_Backend):
    """Keeps each session's network state in a row of a slab that grows by doubling up
    to ``capacity`` rows; a batch of clicks is one ``step`` of the network."""

    def __init__(self, model, uses_users: bool, capacity: int):
        super().__init__(model, uses_users)
        network = self.network = model.network_
        self.device = model.device_
        self.capacity = int(capacity)
        # No per-item gate table: a walk of n_fed=0 events never builds one (GRU4Rec's
        # table is bit for bit its step's product anyway with the fused kernels).
        self.context = network.walk_context(0, feeds_last=True)
        self.fused = model._product_scores()
        self.history_scores = getattr(model, "_scores_read_history", False)
        matrix = network.scoring_matrix()
        self.packed = _kernels.PackedScores(matrix) if self.fused else None
        self.matrix = None if self.fused else matrix
        # The int8 kernel gives the same lists from a quarter of the float table's memory
        # traffic (a click's latency is the table's reading time) and int8 dot products
        # (a batch's cost is its multiply-adds): about 2x faster for one click, 1.4x
        # for a batch, on a processor with AVX512-VNNI (docs/serving.md).
        self.int8 = (_kernels.Int8Scores(matrix, self.packed)
                     if self.fused and _kernels.int8_topk_available() else None)
        self.state = network.zero_state(min(64, self.capacity))
        self.top_rows: torch.Tensor | None = None
        self.free: list[int] = list(range(self.state[0].shape[0] - 1, -1, -1))

    def _grow(self) -> None:
        old = self.state[0].shape[0]
        new = min(max(2 * old, 1), self.capacity)
        if new <= old:  # pragma: no cover - the engine evicts before the slab is full
            raise RuntimeError("live sessions: no free state row")
        grown = self.network.zero_state(new)
        for g, s in zip(grown, self.state, strict=True):
            g[:old] = s
        self.state = grown
        if self.top_rows is not None:
            top = self.top_rows.new_zeros(new, self.top_rows.shape[1])
            top[:old] = self.top_rows
            self.top_rows = top
        self.free.extend(range(new - 1, old - 1, -1))

    def _slots(self, records) -> None:
        """A state row for each record that has none, zeroed (one fill per tensor)."""
        new = []
        for record in records:
            if record.slot < 0:
                if not self.free:
                    self._grow()
                record.slot = self.free.pop()
                new.append(record.slot)
        if new:
            rows = torch.as_tensor(new, device=self.device)
            for tensor in self.state:
                tensor.index_fill_(0, rows, 0.0)

    def _start_codes(self, records, rows: list) -> np.ndarray:
        """The start code of each record's step; for a session that starts, its first
        state rows (a user's earlier session, or a known user's stored state)."""
        codes = np.full(len(records), CONTINUE, dtype=np.int8)
        for i, record in enumerate(records):
            if len(record.items) != 1:
                continue
            codes[i] = NEW_SESSION
            if not self.uses_users:
                continue
            user = record.user
            before = user.latest_state(self, record)
            if before is not None:  # the user's earlier session continues into this one
                for tensor, value in zip(rows, before, strict=True):
                    tensor[i] = value
            elif user.training_code >= 0:  # a known user: from their stored state
                resumed = self.model._user_resume_rows(np.array([user.training_code]))
                for tensor, value in zip(rows, resumed, strict=True):
                    tensor[i] = value[0]
                codes[i] = CONTINUE
            else:
                codes[i] = NEW_USER
        return codes

    def _rows(self, records) -> tuple[object, list]:
        """The records' state rows and how to write rows back: one record's are views of
        the slab (no copy: a click is mostly such calls), several records' a gather."""
        if len(records) == 1:
            at = slice(records[0].slot, records[0].slot + 1)
            return at, [tensor[at] for tensor in self.state]
        at = torch.as_tensor([r.slot for r in records], device=self.device)
        return at, [tensor.index_select(0, at) for tensor in self.state]

    @staticmethod
    def _write(tensor: torch.Tensor, at, rows: torch.Tensor) -> None:
        if isinstance(at, slice):
            if rows.data_ptr() != tensor[at].data_ptr():
                tensor[at] = rows
        else:
            tensor.index_copy_(0, at, rows)

    def advance(self, records, codes: np.ndarray) -> None:
        self._slots(records)
        at, rows = self._rows(records)
        starts = torch.from_numpy(self._start_codes(records, rows))
        items = torch.from_numpy(np.asarray(codes, dtype=np.int64))
        if items.device != self.device:
            items = items.to(self.device)
        state, top = self.network.step(items, rows, starts, self.context)
        for tensor, new in zip(self.state, state, strict=True):
            self._write(tensor, at, new)
        if self.top_rows is None:
            self.top_rows = top.new_zeros(self.state[0].shape[0], top.shape[1])
        self._write(self.top_rows, at, top)
        for record in records:
            if record.user is not None and len(record.items) == 1:
                record.user.latest = record

    def state_rows(self, record) -> list[torch.Tensor]:
        """Copies of ``record``'s state rows."""
        return [tensor[record.slot].clone() for tensor in self.state]

    def _top_known(self, records, k: int, exclude_seen: bool):
        if len(records) == 1:
            top = self.top_rows[records[0].slot:records[0].slot + 1]
        else:
            top = self.top_rows.index_select(
                0, torch.as_tensor([r.slot for r in records], device=self.device))
        exclude = exclusions_from_lists([r.items for r in records]) if exclude_seen else None
        if self.history_scores:  # scores that read the user's history (HRNN's repeats)
            events, sessions = self._frame(records)
            return self.model._top_of_states(events, events.offsets[sessions + 1] - 1, top,
                                             k, exclude)
        if self.int8 is not None:
            return _kernels.int8_topk(top, self.int8, k, exclude)
        if self.fused:
            return _kernels.product_topk(top, self.packed, k, exclude)
        return top_of_scores(self.network.score_top(top, self.matrix), k, exclude)

    def release(self, record) -> None:
        if record.slot < 0:
            return
        user = record.user
        if user is not None and user.latest is record:
            user.saved = self.state_rows(record)  # what the user's next session starts from
            user.latest = None
        self.free.append(record.slot)
        record.slot = -1


def backend_for(model, uses_users: bool, capacity: int) -> _Backend:
    """The backend of a fitted model: its network's states where it has a network of the
    recurrent network interface, else its sessions' events."""
    if hasattr(model, "network_") and hasattr(model, "_walk"):
        return RecurrentBackend(model, uses_users, capacity)
    return HistoryBackend(model, uses_users)
