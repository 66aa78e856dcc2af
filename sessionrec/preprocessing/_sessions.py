"""Sessionising raw event streams by idle time."""

from __future__ import annotations

from numbers import Real

import numpy as np
import pandas as pd
from sklearn.utils._param_validation import Interval, StrOptions

from .._events import _SECONDS, _check_column, time_seconds
from .._validation import COLUMN, USER_COLUMN, Satisfies, check_choice, check_real
from ._base import FrameTransformer, check_frame

__all__ = ["ConcatenateUserSessions", "SessionSplitter", "session_codes"]


def idle_gap_seconds(idle_gap) -> float:
    """``idle_gap`` (seconds as a number, or a ``pandas.Timedelta``) in seconds."""
    if isinstance(idle_gap, (pd.Timedelta, np.timedelta64)):
        idle_gap = pd.Timedelta(idle_gap) / pd.Timedelta(seconds=1)
    return check_real("idle_gap", idle_gap, min_value=0.0, min_inclusive=False)


def session_codes(X: pd.DataFrame, *, idle_gap=1800.0, user_key="UserId", time_key="Time",
                  time_unit="s") -> np.ndarray:
    """Session number of every row of ``X``: a new session after an idle gap.

    Events are ordered by (user, time); a session ends where the next event of the same
    user comes more than ``idle_gap`` later (strictly). Sessions are numbered 0, 1, ... in
    the order of (user, first event time), so the numbering is deterministic. Rows keep
    their positions: ``codes[i]`` belongs to ``X.iloc[i]``.

    Parameters
    ----------
    X : pandas.DataFrame
    idle_gap : float or pandas.Timedelta, default=1800.0
        Longest pause inside a session, in seconds (30 minutes by default).
    user_key : str or None, default="UserId"
        Column of user labels; None treats the whole frame as one user's stream.
    time_key : str, default="Time"
        Column of times: datetimes, or numbers in ``time_unit``.
    time_unit : {"s", "ms", "us", "ns"}, default="s"

    Returns
    -------
    ndarray of int64, shape (len(X),)

    Examples
    --------
    >>> X = pd.DataFrame({"UserId": [1, 1, 1, 2], "Time": [0, 100, 5000, 50]})
    >>> session_codes(X, idle_gap=1800).tolist()
    [0, 0, 1, 2]
    """
    gap = idle_gap_seconds(idle_gap)
    unit = check_choice("time_unit", time_unit, _SECONDS)
    seconds = time_seconds(_check_column(X, time_key, "time"), time_key, unit)
    if user_key is None:
        users = np.zeros(len(X), dtype=np.int64)
    else:
        users, _ = pd.factorize(_check_column(X, user_key, "user"), sort=True)
    order = np.lexsort((seconds, users))
    s_users, s_seconds = users[order], seconds[order]
    new = np.r_[True, (s_users[1:] != s_users[:-1]) | (np.diff(s_seconds) > gap)]
    codes = np.empty(len(X), dtype=np.int64)
    codes[order] = np.cumsum(new) - 1
    return codes


def _positive_timedelta(value) -> bool:
    return isinstance(value, (pd.Timedelta, np.timedelta64)) and \
        pd.Timedelta(value) > pd.Timedelta(0)


class SessionSplitter(FrameTransformer):
    """Cut each user's event stream into sessions at idle gaps.

    The papers' preparation: a new session starts when a user is idle for more than
    ``idle_gap`` (30 minutes in the HRNN paper). The transform returns a copy of ``X``
    with the session column set (replacing any existing one); rows, their order and the
    index are unchanged. Stateless: ``fit`` only validates.

    Session labels are integers numbered in the order of (user, first event time) within
    the frame transformed, so a training and a test frame may reuse numbers; they are
    only compared within one frame.

    Parameters
    ----------
    idle_gap : float or pandas.Timedelta, default=1800.0
        Longest pause inside a session, in seconds.
    user_key : str or None, default="UserId"
        Column of user labels; None treats the frame as one stream.
    time_key : str, default="Time"
        Column of times: datetimes, or numbers in ``time_unit``.
    session_key : str, default="SessionId"
        Column written with the session labels.
    time_unit : {"s", "ms", "us", "ns"}, default="s"
        Unit of numeric times.

    Examples
    --------
    >>> import pandas as pd
    >>> X = pd.DataFrame({"UserId": ["a", "a", "a", "b"], "ItemId": [1, 2, 3, 1],
    ...                   "Time": [0, 600, 9000, 60]})
    >>> SessionSplitter().fit_transform(X)["SessionId"].tolist()
    [0, 0, 1, 2]
    """

    # Writes the session column, numbering each frame's sessions afresh (see
    # sessionrec.metrics._relabels_sessions).
    _relabels_sessions = True

    _parameter_constraints: dict = {
        "idle_gap": [Interval(Real, 0, None, closed="neither"),
                     Satisfies(_positive_timedelta, "a positive pandas.Timedelta")],
        "user_key": [None, *COLUMN], "time_key": COLUMN, "session_key": COLUMN,
        "time_unit": [StrOptions(set(_SECONDS))],
    }

    def __init__(self, idle_gap=1800.0, *, user_key="UserId", time_key="Time",
                 session_key="SessionId", time_unit="s"):
        self.idle_gap = idle_gap
        self.user_key = user_key
        self.time_key = time_key
        self.session_key = session_key
        self.time_unit = time_unit

    def fit(self, X, y=None):
        """Validate the parameters (nothing is learned).

        Parameters
        ----------
        X : pandas.DataFrame
        y : None
            Ignored.

        Returns
        -------
        self
        """
        self._validate()
        self._remember_columns(check_frame(X))
        return self

    def transform(self, X):
        """A copy of ``X`` with the session column.

        Parameters
        ----------
        X : pandas.DataFrame

        Returns
        -------
        pandas.DataFrame
        """
        X = check_frame(X)
        self._validate()  # stateless: transform needs no fit
        codes = session_codes(X, idle_gap=self.idle_gap, user_key=self.user_key,
                              time_key=self.time_key, time_unit=self.time_unit)
        out = X.copy(deep=False)  # new column on a new frame: X is left as it was
        out[self.session_key] = codes
        return out

    def _columns_out(self, columns: list) -> list:
        return columns + [self.session_key] * (self.session_key not in columns)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        return tags


class ConcatenateUserSessions(FrameTransformer):
    """Make each user's events one session: the HRNN paper's RNN Concat baseline.

    The session column is replaced by the user column, so a session-based model sees all
    of a user's sessions concatenated in time order as one long session. In a Pipeline
    before :class:`~sessionrec.GRU4RecRecommender` this is RNN Concat; evaluate it with
    the user's earlier events as history (``evaluate(model, test, history=train)``) so the
    test session continues the user's sequence. Stateless.

    Parameters
    ----------
    user_key : str, default="UserId"
    session_key : str, default="SessionId"

    Examples
    --------
    >>> import pandas as pd
    >>> X = pd.DataFrame({"UserId": ["u", "u", "v"], "SessionId": [1, 2, 3]})
    >>> ConcatenateUserSessions().fit_transform(X)["SessionId"].tolist()
    ['u', 'u', 'v']
    """

    _relabels_sessions = True  # writes the session column

    _parameter_constraints: dict = {"user_key": USER_COLUMN, "session_key": COLUMN}

    def __init__(self, *, user_key="UserId", session_key="SessionId"):
        self.user_key = user_key
        self.session_key = session_key

    def fit(self, X, y=None):
        """Nothing to learn.

        Parameters
        ----------
        X : pandas.DataFrame
        y : None
            Ignored.

        Returns
        -------
        self
        """
        self._validate()
        self._remember_columns(check_frame(X))
        return self

    def transform(self, X):
        """A copy of ``X`` whose sessions are its users.

        Parameters
        ----------
        X : pandas.DataFrame

        Returns
        -------
        pandas.DataFrame
        """
        X = check_frame(X)
        self._validate()  # stateless: transform needs no fit
        users = _check_column(X, self.user_key, "user")
        out = X.copy(deep=False)
        out[self.session_key] = users.to_numpy()
        return out

    def _columns_out(self, columns: list) -> list:
        return columns + [self.session_key] * (self.session_key not in columns)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        return tags
