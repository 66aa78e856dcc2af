"""Property tests of the session-parallel and user-parallel mini-batch schedules."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
from hypothesis import given
from hypothesis import strategies as st

from sessionrec._batching import session_parallel_schedule, user_parallel_schedule
from sessionrec._events import to_session_events


def events_from_lengths(lengths, users=None):
    sessions = np.repeat(np.arange(len(lengths)), lengths)
    data = {"SessionId": sessions, "ItemId": np.arange(len(sessions)) % 7,
            "Time": np.arange(len(sessions), dtype=float)}
    if users is not None:
        data["UserId"] = np.repeat(np.asarray(users), lengths)
    frame = pd.DataFrame(data)
    events, _ = to_session_events(frame, user_key="UserId" if users is not None else None)
    return events


def walk_slots(schedule):
    """Replay the schedule slot by slot: yield (entry, previous entry in the same slot)."""
    prev_rows = None
    for t in range(schedule.n_steps):
        a, b = schedule.step_offsets[t], schedule.step_offsets[t + 1]
        rows = np.arange(a, b)
        if prev_rows is not None and t in schedule.shrink:
            prev_rows = prev_rows[schedule.shrink[t]]
        for r, entry in enumerate(rows):
            yield entry, (None if prev_rows is None else prev_rows[r])
        prev_rows = rows


lengths_strategy = st.lists(st.integers(1, 7), min_size=1, max_size=25)


@given(lengths_strategy, st.integers(1, 6))
def test_session_parallel_properties(lengths, batch_size):
    events = events_from_lengths(lengths)
    s = session_parallel_schedule(events, batch_size)
    session_of = events.session_of_event
    starts = events.offsets[:-1]
    ends = events.offsets[1:]

    # Every consecutive pair inside a session exactly once; none across sessions.
    expected = Counter(p for a, b in zip(starts, ends) for p in range(a, b - 1))
    assert Counter(s.positions.tolist()) == expected
    assert (session_of[s.positions] == session_of[s.positions + 1]).all()
    # Resets exactly at session starts.
    assert (s.session_start == np.isin(s.positions, starts)).all()
    # Width never exceeds batch_size and shrinks only in the tail.
    widths = s.widths()
    assert (widths <= batch_size).all() and (widths > 0).all()
    assert (np.diff(widths) <= 0).all()
    # The hidden state continues in its slot: a non-reset entry follows its predecessor.
    for entry, prev in walk_slots(s):
        if not s.session_start[entry]:
            assert prev is not None and s.positions[prev] == s.positions[entry] - 1
        elif prev is not None:
            # A slot takes a new session only after its previous session's last pair.
            p = s.positions[prev]
            assert p + 2 == ends[session_of[p]]


@given(lengths_strategy, st.integers(1, 6), st.booleans())
def test_session_parallel_with_last_events(lengths, batch_size, longest_first):
    events = events_from_lengths(lengths)
    s = session_parallel_schedule(events, batch_size, include_last=True,
                                  longest_first=longest_first)
    assert sorted(s.positions.tolist()) == list(range(events.n_events))
    assert (s.session_start == np.isin(s.positions, events.offsets[:-1])).all()
    for entry, prev in walk_slots(s):
        if not s.session_start[entry]:
            assert s.positions[prev] == s.positions[entry] - 1
    if longest_first:
        # Sessions start in order of decreasing length.
        starts = s.positions[s.session_start]
        assert (np.diff(events.lengths[events.session_of_event[starts]]) <= 0).all()


def test_longest_first_shortens_the_tail():
    events = events_from_lengths([2] * 40 + [30])  # the long session starts last
    plain = session_parallel_schedule(events, 8, include_last=True)
    packed = session_parallel_schedule(events, 8, include_last=True, longest_first=True)
    assert packed.n_steps < plain.n_steps


@given(st.lists(st.tuples(st.integers(1, 6), st.integers(0, 4)), min_size=1, max_size=25),
       st.integers(1, 5))
def test_user_parallel_properties(session_specs, batch_size):
    lengths = [n for n, _ in session_specs]
    users = [u for _, u in session_specs]
    events = events_from_lengths(lengths, users)
    s = user_parallel_schedule(events, batch_size)
    session_of = events.session_of_event
    starts = events.offsets[:-1]
    ends = events.offsets[1:]
    user_of_event = events.users[session_of]

    expected = Counter(p for a, b in zip(starts, ends) for p in range(a, b - 1))
    assert Counter(s.positions.tolist()) == expected
    assert (session_of[s.positions] == session_of[s.positions + 1]).all()
    assert (s.session_start == np.isin(s.positions, starts)).all()
    # User resets exactly at the first step of each user.
    first_step_of_user = {}
    for p in sorted(s.positions.tolist(), key=lambda p: (session_of[p], p)):
        first_step_of_user.setdefault(user_of_event[p], p)
    assert (s.user_start == np.isin(s.positions, list(first_step_of_user.values()))).all()
    assert not (s.user_start & ~s.session_start).any()

    for entry, prev in walk_slots(s):
        pos = s.positions[entry]
        if not s.session_start[entry]:
            assert s.positions[prev] == pos - 1
        elif not s.user_start[entry]:
            # A new session of the same user, after that user's previous session.
            p = s.positions[prev]
            assert user_of_event[p] == user_of_event[pos]
            assert session_of[p] < session_of[pos] and p + 2 == ends[session_of[p]]
        elif prev is not None:
            assert user_of_event[s.positions[prev]] != user_of_event[pos]


def test_paper_figure_example():
    """Figure 2 of the GRU4Rec paper: three slots over sessions of 4, 2, 6, 2, 3 events."""
    events = events_from_lengths([4, 2, 6, 2, 3])
    s = session_parallel_schedule(events, 3)
    steps = [s.positions[a:b].tolist() for a, b in zip(s.step_offsets[:-1], s.step_offsets[1:])]
    # Session 1 (positions 4-5) ends after one step; session 4 (12-13) takes its slot, then
    # session 5 (14-16) takes the slot of session 0 (0-3) or 4, whichever ends first.
    assert steps[0] == [0, 4, 6]
    assert steps[1] == [1, 12, 7]
    assert steps[2] == [2, 14, 8]
    assert steps[3] == [15, 9]
    assert s.session_start.sum() == 5
