"""Session-parallel and user-parallel mini-batches.

Both follow the scheme of the GRU4Rec paper (Hidasi et al., ICLR 2016, section 3.1.1):
``batch_size`` slots each walk one *stream* of steps in order; when a slot's stream ends,
the next unused stream takes that slot (finished slots are refilled in slot order) and
the model must reset that slot's hidden state. When streams run out, slots that finish are
removed and the batch shrinks until the last stream ends. Nothing is truncated or padded,
so every step of every stream is visited exactly once per epoch.

* Session-parallel (GRU4Rec): a stream is a session; its steps are the session's events
  but the last (the input of each (input, target) pair; the target is the next event).
* User-parallel (HRNN, Quadrana et al., RecSys 2017): a stream is a user; its steps are the
  pair inputs of the user's sessions one after another. ``session_start`` marks the first
  step of each session (re-initialise the session state from the user state) and
  ``user_start`` the first step of each user (reset the user state too).

The whole epoch is scheduled once, up front, as flat integer arrays (one Python iteration
per *phase*, that is per batch of steps in which no slot finishes, never per event). The
arrays can be moved to the training device once; a training loop then slices them per
step without further host work.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ._events import SessionEvents, ragged_arange

__all__ = [
    "ParallelSchedule",
    "parallel_schedule",
    "session_parallel_schedule",
    "user_parallel_schedule",
    "user_stream_order",
]


@dataclass(frozen=True)
class ParallelSchedule:
    """One epoch of slot-parallel mini-batches as flat arrays.

    Attributes
    ----------
    positions : ndarray of int64, shape (n_entries,)
        Event position (into ``SessionEvents.items``) of every input, step after step;
        step ``t`` holds ``positions[step_offsets[t]:step_offsets[t + 1]]``, one entry per
        active slot in slot order. The target of an input at position ``p`` is ``p + 1``.
    step_offsets : ndarray of int64, shape (n_steps + 1,)
    session_start : ndarray of bool, shape (n_entries,)
        The entry is the first step of a session: its slot's (session) hidden state must be
        reset before the step.
    user_start : ndarray of bool or None, shape (n_entries,)
        User-parallel schedules only: the entry is the first step of a user.
    shrink : dict of int to ndarray
        ``shrink[t] = rows``: before step ``t``, keep only these rows (of step ``t - 1``)
        of the hidden state, because the other slots ran out of streams.
    """

    positions: np.ndarray
    step_offsets: np.ndarray
    session_start: np.ndarray
    user_start: np.ndarray | None = None
    shrink: dict = field(default_factory=dict)

    @property
    def n_steps(self) -> int:
        return len(self.step_offsets) - 1

    @property
    def n_entries(self) -> int:
        return len(self.positions)

    def widths(self) -> np.ndarray:
        """Number of active slots at each step."""
        return np.diff(self.step_offsets)


def parallel_schedule(stream_offsets: np.ndarray, batch_size: int
                      ) -> tuple[np.ndarray, np.ndarray, dict]:
    """Schedule streams onto ``batch_size`` slots.

    Parameters
    ----------
    stream_offsets : ndarray of int64, shape (n_streams + 1,)
        Stream ``k`` owns the steps ``stream_offsets[k]:stream_offsets[k + 1]`` (indices into
        a flat step space); streams are taken in this order. Empty streams are skipped.
    batch_size : int
        Number of slots.

    Returns
    -------
    entries : ndarray of int64
        Step-space index of each entry, step-major.
    step_offsets : ndarray of int64
    shrink : dict of int to ndarray
        See :class:`ParallelSchedule`.

    Examples
    --------
    Two slots, streams of lengths 3, 1 and 2:

    >>> entries, steps, shrink = parallel_schedule(np.array([0, 3, 4, 6]), 2)
    >>> [entries[a:b].tolist() for a, b in zip(steps[:-1], steps[1:])]
    [[0, 3], [1, 4], [2, 5]]
    """
    stream_offsets = np.asarray(stream_offsets, dtype=np.int64)
    lengths = np.diff(stream_offsets)
    nonempty = np.flatnonzero(lengths > 0)
    starts_all = stream_offsets[:-1][nonempty]
    ends_all = stream_offsets[1:][nonempty]
    n_streams = len(nonempty)
    if n_streams == 0:
        return np.zeros(0, np.int64), np.zeros(1, np.int64), {}
    width = min(int(batch_size), n_streams)
    cur = starts_all[:width].copy()
    end = ends_all[:width].copy()
    next_stream = width
    blocks: list[np.ndarray] = []
    block_steps: list[int] = []
    block_widths: list[int] = []
    shrink: dict[int, np.ndarray] = {}
    n_steps = 0
    # One iteration per phase: a run of steps in which no slot finishes. All active slots
    # advance together by the shortest remaining stream.
    while True:
        m = int((end - cur).min())
        blocks.append((cur[None, :] + np.arange(m, dtype=np.int64)[:, None]).ravel())
        block_steps.append(m)
        block_widths.append(len(cur))
        n_steps += m
        cur += m
        done = np.flatnonzero(cur == end)
        n_new = min(len(done), n_streams - next_stream)
        refill = done[:n_new]
        cur[refill] = starts_all[next_stream:next_stream + n_new]
        end[refill] = ends_all[next_stream:next_stream + n_new]
        next_stream += n_new
        if n_new < len(done):
            keep = np.ones(len(cur), dtype=bool)
            keep[done[n_new:]] = False
            if not keep.any():
                break
            rows = np.flatnonzero(keep)
            shrink[n_steps] = rows
            cur, end = cur[rows], end[rows]
    entries = np.concatenate(blocks)
    per_step = np.repeat(np.asarray(block_widths, np.int64), np.asarray(block_steps, np.int64))
    step_offsets = np.zeros(n_steps + 1, dtype=np.int64)
    np.cumsum(per_step, out=step_offsets[1:])
    return entries, step_offsets, shrink


def _pair_inputs(offsets: np.ndarray, sessions: np.ndarray, include_last: bool
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Input positions of the given sessions, concatenated, and each one's step count."""
    lengths = offsets[sessions + 1] - offsets[sessions]
    n = lengths if include_last else np.maximum(lengths - 1, 0)
    return ragged_arange(offsets[sessions], n), n


def session_parallel_schedule(events: SessionEvents, batch_size: int, *,
                              include_last: bool = False,
                              longest_first: bool = False) -> ParallelSchedule:
    """Session-parallel mini-batches of the GRU4Rec paper.

    Sessions are walked in the order of ``events`` (by start time), as training requires.
    With the default ``include_last=False`` the steps are the (input, target) pairs used in
    training and next-item evaluation; with ``include_last=True`` every event is an input,
    which is what a forward pass needs to produce each session's final state.
    ``longest_first=True`` walks the longest sessions first instead (stable for ties):
    for inference, where the order does not matter, it keeps every slot busy until the
    end instead of leaving a long tail of narrow steps.

    Examples
    --------
    >>> from sessionrec._events import to_session_events
    >>> import pandas as pd
    >>> X = pd.DataFrame({"SessionId": [1, 1, 1, 2, 2], "ItemId": [1, 2, 3, 4, 5],
    ...                   "Time": [0, 1, 2, 3, 4]})
    >>> ev, _ = to_session_events(X)
    >>> s = session_parallel_schedule(ev, batch_size=2)
    >>> s.positions.tolist(), s.step_offsets.tolist(), s.session_start.tolist()
    ([0, 3, 1], [0, 2, 3], [True, True, False])
    >>> s.shrink  # session 2 ended after one step and no session was left
    {1: array([0])}
    """
    sessions = np.arange(events.n_sessions, dtype=np.int64)
    if longest_first:
        sessions = np.argsort(-events.lengths, kind="stable").astype(np.int64)
    flat, n = _pair_inputs(events.offsets, sessions, include_last)
    stream_offsets = np.zeros(len(n) + 1, dtype=np.int64)
    np.cumsum(n, out=stream_offsets[1:])
    entries, step_offsets, shrink = parallel_schedule(stream_offsets, batch_size)
    first = np.zeros(len(flat), dtype=bool)
    first[stream_offsets[:-1][n > 0]] = True
    return ParallelSchedule(
        positions=flat[entries], step_offsets=step_offsets,
        session_start=first[entries], shrink=shrink,
    )


def user_stream_order(events: SessionEvents) -> tuple[np.ndarray, np.ndarray]:
    """Sessions grouped by user, for user-parallel batches.

    Users are ordered by the start of their first session; a user's sessions keep their
    order in ``events`` (by start time).

    Returns
    -------
    sessions : ndarray of int64, shape (n_sessions,)
        Session numbers, grouped by user.
    user_offsets : ndarray of int64, shape (n_users_present + 1,)
        The sessions of the ``u``-th user in that order are
        ``sessions[user_offsets[u]:user_offsets[u + 1]]``.
    """
    if events.users is None:
        raise ValueError("user-parallel batches need events read with a user column.")
    n_sessions = events.n_sessions
    session_ids = np.arange(n_sessions, dtype=np.int64)
    first_session = np.full(int(events.users.max()) + 1, n_sessions, dtype=np.int64)
    np.minimum.at(first_session, events.users, session_ids)
    sessions = np.lexsort((session_ids, first_session[events.users]))
    grouped_users = events.users[sessions]
    starts = np.flatnonzero(np.r_[True, grouped_users[1:] != grouped_users[:-1]])
    return sessions.astype(np.int64), np.r_[starts, n_sessions].astype(np.int64)


def user_parallel_schedule(events: SessionEvents, batch_size: int, *,
                           include_last: bool = False,
                           longest_first: bool = False) -> ParallelSchedule:
    """User-parallel mini-batches of the HRNN paper.

    Each slot walks one user's sessions in order; ``session_start`` marks where the
    session state must be (re)initialised and ``user_start`` where the user state must be
    reset as well. With the default ``include_last=False`` the steps are (input, target)
    pairs, so sessions with a single event add no step (their user still gets the
    others); with ``include_last=True`` every event is an input (a forward pass).
    Users are taken in the order of their first session, or with ``longest_first=True``
    by decreasing number of steps (stable for ties): long streams then end together with
    the rest instead of leaving a tail of narrow steps.

    Examples
    --------
    >>> from sessionrec._events import to_session_events
    >>> import pandas as pd
    >>> X = pd.DataFrame({"UserId": [7, 7, 7, 7, 8, 8], "SessionId": [1, 1, 2, 2, 3, 3],
    ...                   "ItemId": [1, 2, 3, 4, 5, 6], "Time": [0, 1, 5, 6, 2, 3]})
    >>> ev, _ = to_session_events(X, user_key="UserId")
    >>> s = user_parallel_schedule(ev, batch_size=2)
    >>> s.positions.tolist(), s.session_start.tolist(), s.user_start.tolist()
    ([0, 2, 4], [True, True, True], [True, True, False])
    """
    sessions, user_offsets = user_stream_order(events)
    if longest_first:
        lengths = events.offsets[sessions + 1] - events.offsets[sessions]
        steps = lengths if include_last else np.maximum(lengths - 1, 0)
        per_user = np.add.reduceat(steps, user_offsets[:-1]) if len(sessions) else steps
        order = np.argsort(-per_user, kind="stable")
        counts = np.diff(user_offsets)[order]
        sessions = sessions[ragged_arange(user_offsets[:-1][order], counts)]
        user_offsets = np.r_[0, np.cumsum(counts)].astype(np.int64)
    flat, n = _pair_inputs(events.offsets, sessions, include_last=include_last)
    # Step-space offsets of each session, then of each user (a run of sessions).
    session_step_offsets = np.zeros(len(n) + 1, dtype=np.int64)
    np.cumsum(n, out=session_step_offsets[1:])
    stream_offsets = session_step_offsets[user_offsets]
    entries, step_offsets, shrink = parallel_schedule(stream_offsets, batch_size)
    session_first = np.zeros(len(flat), dtype=bool)
    session_first[session_step_offsets[:-1][n > 0]] = True
    user_first = np.zeros(len(flat), dtype=bool)
    user_len = np.diff(stream_offsets)
    user_first[stream_offsets[:-1][user_len > 0]] = True
    return ParallelSchedule(
        positions=flat[entries], step_offsets=step_offsets,
        session_start=session_first[entries], user_start=user_first[entries],
        shrink=shrink,
    )
