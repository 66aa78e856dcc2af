"""Splitters of event frames that never cut a session in two.

They return positional indices, like every scikit-learn splitter, so they work as
``cv=`` in ``GridSearchCV``/``cross_validate`` (which slice ``X`` with ``X.take(idx)``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.model_selection import BaseCrossValidator, KFold

from ._events import _SECONDS, _check_column, time_seconds
from ._validation import check_bool, check_choice, check_int, check_real

__all__ = ["LastSessionSplit", "SessionKFold", "TimeSplit", "train_test_split"]


def _sessions_of(X: pd.DataFrame, splitter) -> tuple[np.ndarray, int]:
    """Session code of each row and the number of sessions, read or derived.

    With ``session_key=None`` the frame is raw events that a :class:`SessionSplitter` in
    the pipeline will sessionise: sessions are derived here by the same rule (the
    splitter's ``user_key`` and ``idle_gap``), so no session the pipeline forms is cut.
    """
    if splitter.session_key is None:
        from .preprocessing import session_codes

        codes = session_codes(X, idle_gap=splitter.idle_gap, user_key=splitter.user_key,
                              time_key=splitter.time_key, time_unit=splitter.time_unit)
        return codes, int(codes.max()) + 1 if len(codes) else 0
    codes, uniques = pd.factorize(_check_column(X, splitter.session_key, "session"))
    return codes, len(uniques)




class SessionKFold(BaseCrossValidator):
    """K folds of whole sessions.

    Every session falls in exactly one test fold; the other folds' sessions train. Like
    :class:`sklearn.model_selection.GroupKFold` with sessions as groups, but the sessions
    are read from the frame itself, so it works as ``cv=`` without a ``groups`` argument.

    Parameters
    ----------
    n_splits : int, default=5
        Number of folds, at least 2.
    shuffle : bool, default=False
        Shuffle the sessions before cutting folds (otherwise folds follow the order of
        first appearance in ``X``).
    random_state : int or None, default=None
        Seed of the shuffle.
    session_key : str, default="SessionId"
        Column of session labels.

    Examples
    --------
    >>> import pandas as pd
    >>> X = pd.DataFrame({"SessionId": [1, 1, 2, 2, 3, 3], "ItemId": [1, 2, 3, 4, 5, 6],
    ...                   "Time": range(6)})
    >>> [test.tolist() for _, test in SessionKFold(3).split(X)]
    [[0, 1], [2, 3], [4, 5]]
    """

    def __init__(self, n_splits=5, *, shuffle=False, random_state=None,
                 session_key="SessionId"):
        self.n_splits = n_splits
        self.shuffle = shuffle
        self.random_state = random_state
        self.session_key = session_key

    def get_n_splits(self, X=None, y=None, groups=None) -> int:
        """Number of folds."""
        return check_int("n_splits", self.n_splits, min_value=2)

    def split(self, X, y=None, groups=None):
        """Yield ``(train, test)`` positional indices, one pair per fold."""
        n_splits = self.get_n_splits()
        shuffle = check_bool("shuffle", self.shuffle)
        codes, uniques = pd.factorize(_check_column(_frame(X), self.session_key, "session"))
        if len(uniques) < n_splits:
            raise ValueError(
                f"n_splits={n_splits} is more than the {len(uniques)} sessions in X."
            )
        folds = KFold(n_splits, shuffle=shuffle,
                      random_state=self.random_state if shuffle else None)
        positions = np.arange(len(codes))
        for _, test_sessions in folds.split(np.zeros(len(uniques))):
            in_test = np.zeros(len(uniques), dtype=bool)
            in_test[test_sessions] = True
            mask = in_test[codes]
            yield positions[~mask], positions[mask]


class TimeSplit(BaseCrossValidator):
    """Sessions of the last ``test_days`` to test, the sessions before them to train.

    A session belongs to the period of its **last** event, as in the GRU4Rec data
    preparation (a session still running at the cut goes to test, whole). With
    ``n_splits > 1`` the folds roll backwards in time: fold ``i`` (oldest first) tests on
    the ``i``-th of the last ``n_splits`` windows of ``test_days`` and trains on every
    session that ended before that window, never on later data.

    Parameters
    ----------
    test_days : float, default=1
        Length of each test window in days.
    n_splits : int, default=1
        Number of rolling folds.
    session_key : str or None, default="SessionId"
        Column of session labels. None for raw events without sessions yet (to be
        sessionised in the pipeline): sessions are then derived from ``user_key`` and
        ``idle_gap`` exactly as :class:`~sessionrec.preprocessing.SessionSplitter` does.
    time_key : str, default="Time"
        Column of times: datetimes, or numbers in ``time_unit``.
    time_unit : {"s", "ms", "us", "ns"}, default="s"
        Unit of numeric times (unix seconds by default); ignored for datetimes.
    user_key : str or None, default="UserId"
        Column of user labels, read only with ``session_key=None``.
    idle_gap : float or pandas.Timedelta, default=1800.0
        Session idle gap in seconds, used only with ``session_key=None``.

    Examples
    --------
    >>> import pandas as pd
    >>> day = 86400
    >>> X = pd.DataFrame({"SessionId": [1, 1, 2, 2, 3, 3], "ItemId": [1, 2, 3, 4, 5, 6],
    ...                   "Time": [0, 10, day, day + 10, 2 * day, 2 * day + 10]})
    >>> [(tr.tolist(), te.tolist()) for tr, te in TimeSplit(1, n_splits=2).split(X)]
    [([0, 1], [2, 3]), ([0, 1, 2, 3], [4, 5])]
    """

    def __init__(self, test_days=1, *, n_splits=1, session_key="SessionId", time_key="Time",
                 time_unit="s", user_key="UserId", idle_gap=1800.0):
        self.test_days = test_days
        self.n_splits = n_splits
        self.session_key = session_key
        self.time_key = time_key
        self.time_unit = time_unit
        self.user_key = user_key
        self.idle_gap = idle_gap

    def get_n_splits(self, X=None, y=None, groups=None) -> int:
        """Number of folds."""
        return check_int("n_splits", self.n_splits, min_value=1)

    def split(self, X, y=None, groups=None):
        """Yield ``(train, test)`` positional indices, oldest test window first."""
        n_splits = self.get_n_splits()
        days = check_real("test_days", self.test_days, min_value=0, min_inclusive=False)
        unit = check_choice("time_unit", self.time_unit, _SECONDS)
        X = _frame(X)
        codes, n_sessions = _sessions_of(X, self)
        seconds = time_seconds(_check_column(X, self.time_key, "time"), self.time_key, unit)
        session_end = np.full(n_sessions, -np.inf)
        np.maximum.at(session_end, codes, seconds)
        event_end = session_end[codes]
        latest = session_end.max()
        window = days * 86400.0
        positions = np.arange(len(codes))
        for fold in range(n_splits):
            lo = latest - (n_splits - fold) * window
            hi = latest - (n_splits - fold - 1) * window
            test = (event_end > lo) & (event_end <= hi)
            train = event_end <= lo
            if not train.any() or not test.any():
                raise ValueError(
                    f"TimeSplit fold {fold}: test_days={self.test_days} with "
                    f"n_splits={n_splits} leaves an empty {'train' if not train.any() else 'test'}"
                    " set; the data spans "
                    f"{(latest - session_end.min()) / 86400.0:.2f} days of session ends."
                )
            yield positions[train], positions[test]


class LastSessionSplit(BaseCrossValidator):
    """Each user's last session to test, the user's earlier sessions to train.

    The HRNN paper's protocol: the test set holds the last session of every user, the
    rest trains; the paper tunes on the training set split the same way again. Sessions
    are ordered by their first event's time. With ``n_splits > 1`` the folds roll back:
    fold ``i`` (oldest first) tests on each user's ``(n_splits - i)``-th last session and
    trains on the sessions before it (a user with too few sessions is left out of a fold
    that would test beyond its first session).

    Parameters
    ----------
    n_splits : int, default=1
        Number of folds.
    user_key : str, default="UserId"
        Column of user labels.
    session_key : str or None, default="SessionId"
        Column of session labels; None for raw events, sessionised as
        :class:`~sessionrec.preprocessing.SessionSplitter` would (``idle_gap``).
    time_key : str, default="Time"
        Column of times.
    time_unit : {"s", "ms", "us", "ns"}, default="s"
        Unit of numeric times.
    idle_gap : float or pandas.Timedelta, default=1800.0
        Session idle gap in seconds, used only with ``session_key=None``.

    Examples
    --------
    >>> import pandas as pd
    >>> X = pd.DataFrame({"UserId": [1, 1, 1, 1, 2, 2], "SessionId": [1, 1, 2, 2, 3, 4],
    ...                   "ItemId": [1, 2, 3, 4, 5, 6], "Time": [0, 1, 5, 6, 2, 3]})
    >>> [(tr.tolist(), te.tolist()) for tr, te in LastSessionSplit().split(X)]
    [([0, 1, 4], [2, 3, 5])]
    """

    def __init__(self, n_splits=1, *, user_key="UserId", session_key="SessionId",
                 time_key="Time", time_unit="s", idle_gap=1800.0):
        self.n_splits = n_splits
        self.user_key = user_key
        self.session_key = session_key
        self.time_key = time_key
        self.time_unit = time_unit
        self.idle_gap = idle_gap

    def get_n_splits(self, X=None, y=None, groups=None) -> int:
        """Number of folds."""
        return check_int("n_splits", self.n_splits, min_value=1)

    def split(self, X, y=None, groups=None):
        """Yield ``(train, test)`` positional indices, oldest fold first."""
        n_splits = self.get_n_splits()
        unit = check_choice("time_unit", self.time_unit, _SECONDS)
        X = _frame(X)
        codes, n_sessions = _sessions_of(X, self)
        users, _ = pd.factorize(_check_column(X, self.user_key, "user"))
        seconds = time_seconds(_check_column(X, self.time_key, "time"), self.time_key, unit)
        start = np.full(n_sessions, np.inf)
        np.minimum.at(start, codes, seconds)
        session_user = np.full(n_sessions, -1, dtype=np.int64)
        session_user[codes] = users
        if (session_user[codes] != users).any():
            bad = X.iloc[int(np.flatnonzero(session_user[codes] != users)[0])]
            raise ValueError(f"a session has events of more than one user in column "
                             f"{self.user_key!r} (row {bad.name!r}).")
        # Rank of each session from its user's last (0 = last), by start time.
        order = np.lexsort((np.arange(n_sessions), start, session_user))
        sorted_user = session_user[order]
        run_end = np.r_[np.flatnonzero(sorted_user[1:] != sorted_user[:-1]), n_sessions - 1]
        last_of_run = np.repeat(run_end, np.diff(np.r_[-1, run_end]))
        from_last = np.empty(n_sessions, dtype=np.int64)
        from_last[order] = last_of_run - np.arange(n_sessions)
        event_rank = from_last[codes]
        positions = np.arange(len(codes))
        for fold in range(n_splits):
            held_out = n_splits - 1 - fold
            test = event_rank == held_out
            if not test.any():
                raise ValueError(f"LastSessionSplit fold {fold}: no user has "
                                 f"{held_out + 1} sessions.")
            yield positions[event_rank > held_out], positions[test]


def train_test_split(X, *, test_size=None, splitter=None, shuffle=True, random_state=None,
                     session_key="SessionId"):
    """Split an events frame into a training and a test frame without cutting a session.

    Either whole sessions at random (``test_size``, like scikit-learn's
    ``train_test_split``), or the last fold of a session-safe splitter such as
    :class:`TimeSplit` or :class:`LastSessionSplit`.

    Parameters
    ----------
    X : pandas.DataFrame
        Events.
    test_size : float in (0, 1), int or None, default=None
        Share (float) or number (int) of sessions in the test frame; None means 0.25.
        Not used with ``splitter``.
    splitter : cross-validator or None, default=None
        A splitter whose last ``(train, test)`` fold is taken.
    shuffle : bool, default=True
        Shuffle the sessions before a random split; False takes the last sessions in
        order of first appearance.
    random_state : int or None, default=None
        Seed of the shuffle.
    session_key : str, default="SessionId"
        Column of session labels (random split).

    Returns
    -------
    train, test : pandas.DataFrame
        Row subsets of ``X``, index kept.

    Examples
    --------
    >>> import pandas as pd
    >>> X = pd.DataFrame({"SessionId": [1, 1, 2, 2, 3, 3, 4, 4], "ItemId": range(8),
    ...                   "Time": range(8)})
    >>> train, test = train_test_split(X, test_size=0.25, shuffle=False)
    >>> train["SessionId"].unique().tolist(), test["SessionId"].unique().tolist()
    ([1, 2, 3], [4])
    """
    X = _frame(X)
    if splitter is not None:
        if test_size is not None:
            raise ValueError("give either test_size or splitter, not both.")
        *_, (train, test) = splitter.split(X)
        return X.iloc[train], X.iloc[test]
    codes, uniques = pd.factorize(_check_column(X, session_key, "session"))
    n = len(uniques)
    if test_size is None:
        test_size = 0.25
    if isinstance(test_size, (float, np.floating)):
        check_real("test_size", test_size, min_value=0.0, max_value=1.0, min_inclusive=False,
                   max_inclusive=False)
        n_test = int(np.ceil(test_size * n))
    else:
        n_test = check_int("test_size", test_size, min_value=1)
    if not 0 < n_test < n:
        raise ValueError(f"test_size={test_size!r} leaves no session to train or test "
                         f"({n} sessions).")
    sessions = np.arange(n)
    if check_bool("shuffle", shuffle):
        sessions = np.random.default_rng(random_state).permutation(n)
    in_test = np.zeros(n, dtype=bool)
    in_test[sessions[n - n_test:]] = True
    mask = in_test[codes]
    return X[~mask], X[mask]


def _frame(X) -> pd.DataFrame:
    if not isinstance(X, pd.DataFrame):
        raise TypeError(f"X must be a pandas DataFrame of events, got {type(X).__name__}.")
    return X
