"""Splitters of event frames that never cut a session in two.

They return positional indices, like every scikit-learn splitter, so they work as
``cv=`` in ``GridSearchCV``/``cross_validate`` (which slice ``X`` with ``X.take(idx)``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.model_selection import BaseCrossValidator, KFold

from ._events import _check_column
from ._validation import check_bool, check_choice, check_int, check_real

__all__ = ["SessionKFold", "TimeSplit"]

_SECONDS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}


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
    session_key : str, default="SessionId"
        Column of session labels.
    time_key : str, default="Time"
        Column of times: datetimes, or numbers in ``time_unit``.
    time_unit : {"s", "ms", "us", "ns"}, default="s"
        Unit of numeric times (unix seconds by default); ignored for datetimes.

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
                 time_unit="s"):
        self.test_days = test_days
        self.n_splits = n_splits
        self.session_key = session_key
        self.time_key = time_key
        self.time_unit = time_unit

    def get_n_splits(self, X=None, y=None, groups=None) -> int:
        """Number of folds."""
        return check_int("n_splits", self.n_splits, min_value=1)

    def split(self, X, y=None, groups=None):
        """Yield ``(train, test)`` positional indices, oldest test window first."""
        n_splits = self.get_n_splits()
        days = check_real("test_days", self.test_days, min_value=0, min_inclusive=False)
        unit = check_choice("time_unit", self.time_unit, _SECONDS)
        X = _frame(X)
        codes, uniques = pd.factorize(_check_column(X, self.session_key, "session"))
        seconds = _seconds(_check_column(X, self.time_key, "time"), self.time_key, unit)
        session_end = np.full(len(uniques), -np.inf)
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


def _frame(X) -> pd.DataFrame:
    if not isinstance(X, pd.DataFrame):
        raise TypeError(f"X must be a pandas DataFrame of events, got {type(X).__name__}.")
    return X


def _seconds(col: pd.Series, key, unit: str) -> np.ndarray:
    if isinstance(col.dtype, pd.DatetimeTZDtype):
        col = col.dt.tz_convert("UTC").dt.tz_localize(None)
    if pd.api.types.is_datetime64_dtype(col.dtype):
        return ((col - pd.Timestamp(0)) / pd.Timedelta(seconds=1)).to_numpy(np.float64)
    if pd.api.types.is_bool_dtype(col.dtype) or not pd.api.types.is_numeric_dtype(col.dtype):
        raise TypeError(f"column {key!r} (the time column) must hold numbers or datetimes; "
                        f"got dtype {col.dtype}.")
    return col.to_numpy(np.float64) * _SECONDS[unit]
