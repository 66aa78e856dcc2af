"""Live sessions: each session's state kept between clicks, a list for every click."""

from __future__ import annotations

import datetime
import math
import numbers
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.utils.validation import check_is_fitted

from .._events import _kind_of_value, label_kind
from .._validation import check_bool, check_int
from ._backends import backend_for

__all__ = ["LiveSessions", "Recommendations", "LiveStats"]


@dataclass(frozen=True)
class Recommendations:
    """The lists a click (or a batch of clicks) got.

    Attributes
    ----------
    items : ndarray
        Item labels, best first: shape ``(k,)`` for :meth:`LiveSessions.click`, ``(n, k)``
        for :meth:`LiveSessions.clicks` (one row per click, in the order given).
    scores : ndarray of float64
        The items' scores, same shape.
    """

    items: np.ndarray
    scores: np.ndarray

    def to_dict(self) -> dict:
        """``{"items": [...], "scores": [...]}`` with plain Python values (for JSON)."""
        return {"items": self.items.tolist(), "scores": self.scores.tolist()}


@dataclass(frozen=True)
class LiveStats:
    """Counts of a :class:`LiveSessions` (a snapshot).

    Attributes
    ----------
    sessions : int
        Sessions kept now.
    users : int
        Users kept now (models of users: their latest state or events).
    clicks : int
        Clicks answered.
    unknown_items : int
        Clicks whose item the model never saw (dropped, as ``predict_next`` drops them).
    started : int
        Sessions started.
    ended : int
        Sessions ended by :meth:`LiveSessions.end`.
    evicted : int
        Sessions forgotten to stay within ``max_sessions`` (the least recently clicked).
    expired : int
        Sessions forgotten after ``idle_timeout`` seconds without a click.
    """

    sessions: int
    users: int
    clicks: int
    unknown_items: int
    started: int
    ended: int
    evicted: int
    expired: int


class _Session:
    """A live session: its known events (item codes and times) and its backend's slot."""

    __slots__ = ("label", "user", "items", "seconds", "slot", "last_seen")

    def __init__(self, label, user, now: float):
        self.label, self.user = label, user
        self.items: list[int] = []
        self.seconds: list[float] = []
        self.slot = -1
        self.last_seen = now


class _User:
    """A user of a model of users: their live sessions, the events of their finished
    ones (Personal POP) and the state their next session starts from (HRNN)."""

    __slots__ = ("label", "training_code", "active", "finished", "latest", "saved",
                 "last_seen")

    def __init__(self, label, training_code: int, now: float):
        self.label, self.training_code = label, training_code
        self.active: dict = {}
        self.finished: list[int] = []
        self.latest = None   # the session that started last, while it is live
        self.saved = None    # the state rows of that session once it ended
        self.last_seen = now

    def other_events(self, record) -> list[int]:
        """The user's known events outside ``record``: finished sessions', then the other
        live sessions'."""
        events = list(self.finished)
        for other in self.active.values():
            if other is not record:
                events.extend(other.items)
        return events

    def latest_state(self, backend, record):
        """The state rows the user's new session ``record`` continues from, or None."""
        latest = self.latest
        if latest is not None and latest is not record and latest.slot >= 0:
            return backend.state_rows(latest)
        return self.saved


class LiveSessions:
    """Recommendations for live sessions, one click at a time, from a fitted model.

    Keeps each session's state between clicks (the hidden states of GRU4Rec and p-RNN;
    the session and user states of HRNN, a user's state carried into their next session;
    the events for the other models), so that a click costs one step of the model, not a
    walk over the session so far. Every list is the one
    :meth:`~sessionrec._base.SessionRecommender.predict_next` gives for the session's
    events (and, for the models of users, the user's earlier live sessions before it);
    the shared test suite checks it for every estimator.

    Parameters
    ----------
    model : fitted recommender
        Any sessionrec estimator, fitted. Its weights are read, never changed.
    max_sessions : int, default=100_000
        Sessions kept at most; starting one more forgets the least recently clicked
        (``stats.evicted``).
    idle_timeout : float or None, default=1800.0
        Seconds without a click after which a session is forgotten (``stats.expired``);
        None keeps sessions until they are ended or evicted. 30 minutes is the idle gap
        that splits sessions in the papers' data.
    max_users : int or None, default=None
        Models of users (HRNN, Personal POP): users whose state is kept at most, the least
        recently active forgotten first; None means ``max_sessions``.
    clock : callable, default=time.monotonic
        Seconds for the idle time-out (a test passes its own).

    Notes
    -----
    * Unknown items are dropped as ``predict_next`` drops them: the click is answered
      from the session's known events (``stats.unknown_items`` counts them); a session
      without a known event gets the model's no-history list.
    * Clicks of a session are taken in the order they arrive; a click whose ``time`` is
      earlier than the session's previous click is refused (``ValueError``).
    * All calls are thread-safe: one lock serialises them (the maths of a call already
      uses every core through PyTorch's and the kernels' threads). Nothing process-wide
      is changed.
    * On the CPU with the fused kernels, a click's scores do not depend on which other
      clicks are in its batch, bit for bit. With PyTorch's kernels (a GPU,
      ``SESSIONREC_FUSED=0``) a matrix product's rounding may depend on the batch's size,
      so a batched click's scores may differ from a single click's in the last bits.

    Examples
    --------
    >>> from sessionrec import GRU4RecRecommender
    >>> from sessionrec.datasets import make_sessions
    >>> from sessionrec.serving import LiveSessions
    >>> events = make_sessions(n_sessions=200, n_items=50, random_state=0)
    >>> model = GRU4RecRecommender(layers=(16,), n_epochs=1, batch_size=16,
    ...                            device="cpu", random_state=0).fit(events)
    >>> live = LiveSessions(model)
    >>> first = live.click("visitor-1", 3, k=5)
    >>> second = live.click("visitor-1", 7, k=5)
    >>> second.items.shape
    (5,)
    >>> live.end("visitor-1")
    True
    >>> live.stats.clicks, live.stats.ended
    (2, 1)
    """

    def __init__(self, model, *, max_sessions: int = 100_000,
                 idle_timeout: float | None = 1800.0, max_users: int | None = None,
                 clock=time.monotonic):
        check_is_fitted(model)
        self.model = model
        self.max_sessions = check_int("max_sessions", max_sessions, min_value=1)
        if idle_timeout is not None:
            if (isinstance(idle_timeout, bool) or not isinstance(idle_timeout, numbers.Real)
                    or not idle_timeout > 0 or not math.isfinite(idle_timeout)):
                raise ValueError(f"idle_timeout must be a positive number of seconds or "
                                 f"None, got {idle_timeout!r}.")
            idle_timeout = float(idle_timeout)
        self.idle_timeout = idle_timeout
        self.max_users = (self.max_sessions if max_users is None
                          else check_int("max_users", max_users, min_value=1))
        if not callable(clock):
            raise TypeError(f"clock must be callable, got {clock!r}.")
        self._clock = clock
        self._user_key = getattr(model, "user_key", None)
        self._uses_users = self._user_key is not None
        self._user_kind = label_kind(model.user_labels_) if self._uses_users else None
        self._item_kind = model.item_index_.kind
        # Label -> code: a dict answers one click in a fraction of a microsecond, where a
        # pandas lookup costs tens (equal labels hash equal: 1 and 1.0, as in pandas).
        labels = model.item_index_.labels
        self._codes = dict(zip(labels.tolist(), range(len(labels))))
        self._labels = labels.to_numpy()  # code -> label, by numpy indexing
        self._backend = backend_for(model, self._uses_users, self.max_sessions)
        self._sessions: OrderedDict = OrderedDict()
        self._users: OrderedDict = OrderedDict()
        self._lock = threading.RLock()
        self._counts = dict(clicks=0, unknown_items=0, started=0, ended=0, evicted=0,
                            expired=0)

    def __repr__(self) -> str:
        return (f"LiveSessions({type(self.model).__name__}, sessions={len(self)}, "
                f"max_sessions={self.max_sessions}, idle_timeout={self.idle_timeout})")

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, session) -> bool:
        return session in self._sessions

    @property
    def stats(self) -> LiveStats:
        """A :class:`LiveStats` snapshot of the counts."""
        with self._lock:
            return LiveStats(sessions=len(self._sessions), users=len(self._users),
                             **self._counts)

    # -- the public calls -----------------------------------------------------------------

    def click(self, session, item, k: int = 20, *, user=None, time=None,
              exclude_seen: bool = False) -> Recommendations:
        """Record that ``session`` clicked ``item``; return the ``k`` items to show next.

        Parameters
        ----------
        session : hashable
            The session's label; a new label starts a session.
        item : hashable
            The clicked item's label (of the kind of the training labels).
        k : int, default=20
            Length of the list; at most the number of training items.
        user : hashable or None, default=None
            The session's user: required by the models of users (HRNN, Personal POP),
            ignored by the others. A session keeps the user of its first click.
        time : float, datetime or None, default=None
            When the click happened (seconds, or a datetime); None means now
            (``time.time()``). Read by the models with time decays (STAN).
        exclude_seen : bool, default=False
            Leave out items the session already clicked.

        Returns
        -------
        Recommendations
            ``items`` (labels) and ``scores``, each of shape ``(k,)``.
        """
        # clicks() of one click, without its batch's bookkeeping (a click is mostly this).
        k = min(check_int("k", k, min_value=1), self.model.n_items_)
        exclude_seen = check_bool("exclude_seen", exclude_seen)
        code = self._encode_items([item])
        seconds = self._seconds([time])
        with self._lock:
            now = self._clock()
            self._expire(now)
            self._validate([session], [user], seconds, [time])
            record = self._record(session, user, now)
            self._feed([record], code, seconds, now)
            top, scores = self._backend.top([record], k, exclude_seen)
            self._counts["clicks"] += 1
        return Recommendations(self._labels[top[0]], scores[0])

    def clicks(self, sessions, items, k: int = 20, *, users=None, times=None,
               exclude_seen: bool = False) -> Recommendations:
        """Record many clicks at once (one vectorised step for all of them).

        Clicks of different sessions are answered together; several clicks of one session
        are taken in the order given (the first click of each session in a first step,
        the second in the next, ...), and for the models of users (HRNN, Personal POP)
        so are several clicks of one user: every list is the one the clicks one at a
        time in the order given would get.

        Parameters
        ----------
        sessions, items : sequences of equal length
            The clicks' session and item labels.
        k : int, default=20
        users : sequence or None, default=None
            Each click's user (models of users).
        times : sequence or None, default=None
            Each click's time (seconds or datetimes); None means now.
        exclude_seen : bool, default=False
            See :meth:`click`.

        Returns
        -------
        Recommendations
            ``items`` and ``scores`` of shape ``(n, k)``, one row per click in order.
        """
        k = min(check_int("k", k, min_value=1), self.model.n_items_)
        exclude_seen = check_bool("exclude_seen", exclude_seen)
        sessions, items = list(sessions), list(items)
        n = len(sessions)
        if len(items) != n:
            raise ValueError(f"sessions and items differ in length ({n} and {len(items)}).")
        users = self._column("users", users, n)
        times = self._column("times", times, n)
        codes = self._encode_items(items)
        seconds = self._seconds(times)
        out_items = np.zeros((n, k), dtype=np.int64)
        out_scores = np.zeros((n, k), dtype=np.float64)
        with self._lock:
            now = self._clock()
            self._expire(now)
            # Everything that can be refused is checked before anything changes.
            order = self._validate(sessions, users, seconds, times)
            for step in range(int(order.max()) + 1 if n else 0):
                chosen = np.flatnonzero(order == step)
                picked = chosen.tolist()  # Python ints index the lists fastest
                records = [self._record(sessions[i], users[i], now) for i in picked]
                self._feed(records, codes[chosen], [seconds[i] for i in picked], now)
                top, scores = self._backend.top(records, k, exclude_seen)
                out_items[chosen], out_scores[chosen] = top, scores
                self._counts["clicks"] += len(chosen)
        return Recommendations(self._labels[out_items], out_scores)

    def _feed(self, records: list, codes: np.ndarray, seconds: list, now: float) -> None:
        """One step: each record's click (its known item appended and fed to the
        backend; an unknown item counted and dropped)."""
        fed = []
        for record, code, second in zip(records, codes, seconds, strict=True):
            record.last_seen = now
            if code < 0:
                self._counts["unknown_items"] += 1
                continue
            record.items.append(int(code))
            record.seconds.append(second)
            fed.append(record)
        if fed:
            self._backend.advance(fed, np.array([r.items[-1] for r in fed]))

    def end(self, session) -> bool:
        """Forget ``session`` (its user's state is kept for their next session). Returns
        whether it was live."""
        with self._lock:
            record = self._sessions.pop(session, None)
            if record is None:
                return False
            self._release(record)
            self._counts["ended"] += 1
            return True

    def clear(self) -> None:
        """Forget every session and user (the counts are kept)."""
        with self._lock:
            while self._sessions:
                self._release(self._sessions.popitem(last=False)[1])
            self._users.clear()

    # -- inside ---------------------------------------------------------------------------

    @staticmethod
    def _column(name: str, values, n: int) -> list:
        if values is None:
            return [None] * n
        values = list(values)
        if len(values) != n:
            raise ValueError(f"{name} has {len(values)} values for {n} clicks.")
        return values

    def _validate(self, sessions: list, users: list, seconds: list, times: list
                  ) -> np.ndarray:
        """Check the clicks against each other and the sessions kept (labels, users,
        times); return each click's round: its session's how-many-th click here."""
        rounds: dict = {}
        owners: dict = {}
        last_time: dict = {}
        order = np.zeros(len(sessions), dtype=np.int64)
        for i, label in enumerate(sessions):  # bookkeeping per click; maths per round
            if _missing(label):
                raise ValueError("session is missing (None/NaN): every click needs the "
                                 "session's label.")
            try:
                record = self._sessions.get(label)
            except TypeError:
                raise TypeError(f"session labels must be hashable, got {label!r}.") from None
            if self._uses_users:
                owner = owners.get(label, record.user.label if record is not None else None)
                user = users[i]
                if user is None or _missing(user):
                    if owner is None:
                        raise ValueError(
                            f"user is missing: {type(self.model).__name__} recommends for "
                            f"users, so the first click of session {label!r} needs its "
                            f"user (the {self._user_key!r} column of the training frame).")
                else:
                    kind = _kind_of_value(user)
                    if kind != self._user_kind:
                        raise TypeError(
                            f"user {user!r} is a {kind} label, but the model was fitted on "
                            f"{self._user_kind} user labels: not one user would be "
                            "recognised. Convert it to the training labels' type first.")
                    if owner is not None and user != owner:
                        raise ValueError(
                            f"session {label!r} belongs to user {owner!r}, not {user!r}: "
                            "every session must belong to exactly one user.")
                    owner = user
                owners[label] = owner
            previous = last_time.get(label, record.seconds[-1]
                                     if record is not None and record.seconds else None)
            if previous is not None and seconds[i] < previous:
                raise ValueError(
                    f"time {times[i]!r} of session {label!r} is earlier than its previous "
                    "click: clicks are taken in the order they arrive, and their times "
                    "may not go back.")
            last_time[label] = seconds[i]
            # A session's clicks go in order; a user's too, for the models of users (a
            # session that starts reads the user's latest state, Personal POP the user's
            # events): the k-th click of a session (user) goes into the k-th step.
            key = owners[label] if self._uses_users else label
            order[i] = rounds.get(key, 0)
            rounds[key] = order[i] + 1
        return order

    def _encode_items(self, items: list) -> np.ndarray:
        codes = np.empty(len(items), dtype=np.int64)
        get = self._codes.get
        for i, item in enumerate(items):
            try:
                code = get(item)
            except TypeError:  # unhashable: not a label
                code = None
            if code is None:
                if _missing(item):
                    raise ValueError("item is missing (None/NaN): every click needs the "
                                     "label of the clicked item.")
                kind = _kind_of_value(item)
                if kind != self._item_kind:
                    raise TypeError(
                        f"item {item!r} is a {kind} label, but the model was fitted on "
                        f"{self._item_kind} item labels: not one item would be recognised. "
                        "Convert it to the training labels' type first.")
                code = -1
            codes[i] = code
        return codes

    @staticmethod
    def _seconds(times: list) -> list[float]:
        now = None
        seconds = []
        for value in times:
            if isinstance(value, float) and math.isfinite(value):  # the usual case
                seconds.append(float(value))
            elif value is None:
                now = time.time() if now is None else now
                seconds.append(now)
            elif isinstance(value, (datetime.datetime, np.datetime64, pd.Timestamp)):
                seconds.append(float(pd.Timestamp(value).value) * 1e-9)
            elif isinstance(value, numbers.Real) and not isinstance(value, bool) \
                    and math.isfinite(value):
                seconds.append(float(value))
            else:
                raise TypeError(f"time must be a finite number of seconds, a datetime or "
                                f"None, got {value!r}.")
        return seconds

    def _record(self, label, user, now: float) -> _Session:
        if _missing(label):
            raise ValueError("session is missing (None/NaN): every click needs the "
                             "session's label.")
        record = self._sessions.get(label)
        if record is not None:
            self._sessions.move_to_end(label)
            if record.user is not None:
                record.user.last_seen = now
                self._users.move_to_end(record.user.label)
            return record
        user_record = self._user(user, now) if self._uses_users else None  # validated
        while len(self._sessions) >= self.max_sessions:
            self._release(self._sessions.popitem(last=False)[1])
            self._counts["evicted"] += 1
        record = _Session(label, user_record, now)
        self._sessions[label] = record
        if user_record is not None:
            user_record.active[label] = record
        self._counts["started"] += 1
        return record

    def _user(self, label, now: float) -> _User:
        record = self._users.get(label)
        if record is None:
            code = int(self.model.user_labels_.get_indexer([label])[0])
            while len(self._users) >= self.max_users:
                self._forget_user()
            record = self._users[label] = _User(label, code, now)
        else:
            self._users.move_to_end(label)
        record.last_seen = now
        return record

    def _forget_user(self) -> None:
        """Forget the least recently active user without a live session (or, if every
        user has one, the least recently active)."""
        for label, user in self._users.items():
            if not user.active:
                del self._users[label]
                return
        label, user = self._users.popitem(last=False)
        for session in list(user.active):
            self._release(self._sessions.pop(session))
            self._counts["evicted"] += 1

    def _release(self, record: _Session) -> None:
        self._backend.release(record)
        user = record.user
        if user is not None:
            user.active.pop(record.label, None)
            user.finished.extend(record.items)

    def _expire(self, now: float) -> None:
        if self.idle_timeout is None:
            return
        limit = now - self.idle_timeout
        while self._sessions:
            label, record = next(iter(self._sessions.items()))
            if record.last_seen >= limit:
                break
            del self._sessions[label]
            self._release(record)
            self._counts["expired"] += 1
        while self._users:
            label, user = next(iter(self._users.items()))
            if user.last_seen >= limit or user.active:
                break
            del self._users[label]


# Labels that say "missing" (pd.isna of a scalar), checked without calling pandas per click.
_MISSING_TYPES = (float, np.floating, type(pd.NaT), type(pd.NA), np.datetime64,
                  np.timedelta64)


def _missing(value) -> bool:
    if value is None:
        return True
    if not isinstance(value, _MISSING_TYPES):  # ints, strings: never missing
        return False
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # pragma: no cover - not a scalar
        return False


