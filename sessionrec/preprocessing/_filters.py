"""Row-dropping filters of event frames (the papers' data preparation).

Every filter returns a subset of the rows of the frame it transforms, in their order and
with their index; it never modifies its input. What a filter learns in ``fit`` (the item
vocabulary, the users kept) is applied by ``transform`` to any frame, so a Pipeline
filters test frames with what it learned on the training frame.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.utils._param_validation import HasMethods, InvalidParameterError
from sklearn.utils.validation import check_is_fitted

from .._events import _check_column, _orderable_times
from .._validation import COLUMN, POSITIVE_INT, USER_COLUMN
from ._base import FrameTransformer, check_frame

__all__ = ["ConsecutiveDuplicateFilter", "ItemSupportFilter", "RepeatUntilStable",
           "SessionLengthFilter", "UserSessionFilter"]


class _RowFilter(FrameTransformer):
    """Base: ``fit`` validates and learns, ``transform`` keeps rows where ``_keep`` says.
    The output has the input's columns."""

    _stateless = True

    def _learn(self, X: pd.DataFrame) -> None:
        """Learn from the training frame (stateful filters)."""

    def _keep(self, X: pd.DataFrame) -> np.ndarray:
        raise NotImplementedError

    def fit(self, X, y=None):
        """Learn what the filter needs from the training frame ``X``.

        Parameters
        ----------
        X : pandas.DataFrame
            Training events.
        y : None
            Ignored.

        Returns
        -------
        self
        """
        self._validate()
        X = check_frame(X)
        self._remember_columns(X)
        self._learn(X)
        return self

    def transform(self, X):
        """The rows of ``X`` that pass the filter (a new frame, same order and index).

        Parameters
        ----------
        X : pandas.DataFrame

        Returns
        -------
        pandas.DataFrame
        """
        if self._stateless:
            self._validate()
        else:
            check_is_fitted(self)
        X = check_frame(X)
        keep = np.asarray(self._keep(X), dtype=bool)
        return X.copy(deep=False) if keep.all() else X[keep]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = not self._stateless
        return tags


def _check_range(estimator, low: str, high: str) -> None:
    """The rule of a (minimum, maximum or None) pair of parameters: minimum <= maximum."""
    low_value, high_value = getattr(estimator, low), getattr(estimator, high)
    if high_value is not None and high_value < low_value:
        raise InvalidParameterError(
            f"The {high!r} parameter of {type(estimator).__name__} must be None or >= "
            f"{low} ({low_value}). Got {high_value!r} instead.")


def _session_order(X, session_key, time_key) -> tuple[np.ndarray, np.ndarray]:
    """Row order by (session, time) (stable), and the session code of each row."""
    sessions, _ = pd.factorize(_check_column(X, session_key, "session"))
    times, _ = _orderable_times(_check_column(X, time_key, "time"), time_key)
    return np.lexsort((times, sessions)), sessions


class ConsecutiveDuplicateFilter(_RowFilter):
    """Drop an event that repeats the item of the session's previous event.

    A reload or double click leaves the same item twice in a row; the papers remove such
    repeats. With ``consecutive_only=False`` every repeat of an item within a session is
    dropped (the first occurrence stays), as the HRNN paper does for XING. Stateless.

    Parameters
    ----------
    consecutive_only : bool, default=True
        Drop only immediate repeats; False drops every later repeat in the session.
    session_key, item_key, time_key : str
        Column names.

    Examples
    --------
    >>> import pandas as pd
    >>> X = pd.DataFrame({"SessionId": [1, 1, 1, 1], "ItemId": ["a", "a", "b", "a"],
    ...                   "Time": [0, 1, 2, 3]})
    >>> ConsecutiveDuplicateFilter().fit_transform(X)["ItemId"].tolist()
    ['a', 'b', 'a']
    >>> ConsecutiveDuplicateFilter(consecutive_only=False).fit_transform(X)["ItemId"].tolist()
    ['a', 'b']
    """

    _parameter_constraints: dict = {
        "consecutive_only": ["boolean"], "session_key": COLUMN, "item_key": COLUMN,
        "time_key": COLUMN,
    }

    def __init__(self, *, consecutive_only=True, session_key="SessionId", item_key="ItemId",
                 time_key="Time"):
        self.consecutive_only = consecutive_only
        self.session_key = session_key
        self.item_key = item_key
        self.time_key = time_key


    def _keep(self, X):
        order, sessions = _session_order(X, self.session_key, self.time_key)
        items, _ = pd.factorize(_check_column(X, self.item_key, "item"))
        keep = np.ones(len(X), dtype=bool)
        if self.consecutive_only:
            s, i = sessions[order], items[order]
            keep[order[1:]] = (s[1:] != s[:-1]) | (i[1:] != i[:-1])
        else:
            pairs = pd.DataFrame({"s": sessions[order], "i": items[order]})
            keep[order] = ~pairs.duplicated().to_numpy()
        return keep


class SessionLengthFilter(_RowFilter):
    """Keep sessions with ``min_length`` to ``max_length`` events. Stateless.

    Sessions of one event have no next item to predict; the papers drop them (GRU4Rec:
    length >= 2; HRNN: >= 3).

    Parameters
    ----------
    min_length : int, default=2
    max_length : int or None, default=None
        None: no upper bound.
    session_key : str, default="SessionId"

    Examples
    --------
    >>> import pandas as pd
    >>> X = pd.DataFrame({"SessionId": [1, 1, 2], "ItemId": [1, 2, 3], "Time": [0, 1, 2]})
    >>> SessionLengthFilter(2).fit_transform(X)["SessionId"].tolist()
    [1, 1]
    """

    def __init__(self, min_length=2, max_length=None, *, session_key="SessionId"):
        self.min_length = min_length
        self.max_length = max_length
        self.session_key = session_key

    _parameter_constraints: dict = {
        "min_length": POSITIVE_INT, "max_length": [None, *POSITIVE_INT],
        "session_key": COLUMN,
    }

    def _check_params(self) -> None:
        _check_range(self, "min_length", "max_length")

    def _keep(self, X):
        sessions, _ = pd.factorize(_check_column(X, self.session_key, "session"))
        length = np.bincount(sessions)[sessions]
        keep = length >= self.min_length
        if self.max_length is not None:
            keep &= length <= self.max_length
        return keep


class ItemSupportFilter(_RowFilter):
    """Keep events of items with at least ``min_support`` events in the training frame.

    ``fit`` learns the vocabulary (``items_``); ``transform`` drops events of any other
    item, from any frame: on a test frame this is the papers' removal of test items
    unseen in training.

    Parameters
    ----------
    min_support : int, default=5
    item_key : str, default="ItemId"

    Attributes
    ----------
    items_ : pandas.Index
        The items kept.
    support_ : pandas.Series
        Events per item in the training frame.

    Examples
    --------
    >>> import pandas as pd
    >>> train = pd.DataFrame({"SessionId": [1, 1, 2, 2], "ItemId": ["a", "b", "a", "c"],
    ...                       "Time": [0, 1, 2, 3]})
    >>> f = ItemSupportFilter(2).fit(train)
    >>> f.items_.tolist()
    ['a']
    >>> f.transform(pd.DataFrame({"SessionId": [5, 5], "ItemId": ["a", "z"],
    ...                           "Time": [0, 1]}))["ItemId"].tolist()
    ['a']
    """

    _stateless = False

    def __init__(self, min_support=5, *, item_key="ItemId"):
        self.min_support = min_support
        self.item_key = item_key

    _parameter_constraints: dict = {"min_support": POSITIVE_INT, "item_key": COLUMN}

    def _learn(self, X):
        self.support_ = _check_column(X, self.item_key, "item").value_counts(sort=False)
        self.items_ = self.support_.index[self.support_.to_numpy() >= self.min_support]

    def _keep(self, X):
        return _check_column(X, self.item_key, "item").isin(self.items_).to_numpy()


class UserSessionFilter(_RowFilter):
    """Keep users with ``min_sessions`` to ``max_sessions`` sessions in the training frame.

    ``fit`` learns the users (``users_``) from the training frame; ``transform`` keeps
    the events of those users in any frame (a test frame of each user's last session is
    not judged by its own, single session per user). The HRNN paper keeps users with at
    least 5 sessions.

    Parameters
    ----------
    min_sessions : int, default=5
    max_sessions : int or None, default=None
    user_key : str, default="UserId"
    session_key : str, default="SessionId"

    Attributes
    ----------
    users_ : pandas.Index
        The users kept.

    Examples
    --------
    >>> import pandas as pd
    >>> X = pd.DataFrame({"UserId": ["u", "u", "v"], "SessionId": [1, 2, 3],
    ...                   "ItemId": [1, 2, 3], "Time": [0, 1, 2]})
    >>> UserSessionFilter(2).fit_transform(X)["UserId"].tolist()
    ['u', 'u']
    """

    _stateless = False

    def __init__(self, min_sessions=5, max_sessions=None, *, user_key="UserId",
                 session_key="SessionId"):
        self.min_sessions = min_sessions
        self.max_sessions = max_sessions
        self.user_key = user_key
        self.session_key = session_key

    _parameter_constraints: dict = {
        "min_sessions": POSITIVE_INT, "max_sessions": [None, *POSITIVE_INT],
        "user_key": USER_COLUMN, "session_key": COLUMN,
    }

    def _check_params(self) -> None:
        _check_range(self, "min_sessions", "max_sessions")

    def _learn(self, X):
        users = _check_column(X, self.user_key, "user")
        sessions = _check_column(X, self.session_key, "session")
        per_user = pd.DataFrame({"u": users.to_numpy(), "s": sessions.to_numpy()}).groupby(
            "u", sort=True)["s"].nunique()
        keep = per_user.to_numpy() >= self.min_sessions
        if self.max_sessions is not None:
            keep &= per_user.to_numpy() <= self.max_sessions
        self.users_ = per_user.index[keep]

    def _keep(self, X):
        return _check_column(X, self.user_key, "user").isin(self.users_).to_numpy()


class RepeatUntilStable(FrameTransformer):
    """Apply a filter (or a Pipeline of filters) again and again until no row is dropped.

    Filters interact: dropping rare items shortens sessions, dropping short sessions makes
    items rarer. The papers repeat their filters until the data stop changing. ``fit``
    (and ``fit_transform``) refits a clone of ``filters`` on its own output until a pass
    drops nothing; the final clone, fitted on the stable frame, is ``filters_``.
    ``transform`` applies ``filters_`` (with what it learned) until stable too, since a
    later filter can expose rows an earlier one now drops.

    Parameters
    ----------
    filters : transformer
        A row filter or a Pipeline of them; tunable as ``filters__<step>__<param>``.
    max_iter : int, default=100
        Most passes; reaching it raises a ``RuntimeError`` (the data did not settle).

    Attributes
    ----------
    filters_ : transformer
        The fitted clone.
    n_iter_ : int
        Passes in fit, the last of which dropped nothing.

    Examples
    --------
    >>> import pandas as pd
    >>> from sklearn.pipeline import make_pipeline
    >>> X = pd.DataFrame({"SessionId": [1, 1, 2, 2, 2, 3, 3, 4, 4],
    ...                   "ItemId": list("abacdcebd"), "Time": range(9)})
    >>> stable = RepeatUntilStable(make_pipeline(ItemSupportFilter(2),
    ...                                          SessionLengthFilter(2)))
    >>> out = stable.fit_transform(X)  # e is rare; then session 3 is short; then c is rare
    >>> "".join(out["ItemId"]), stable.n_iter_
    ('abadbd', 3)
    """

    _parameter_constraints: dict = {
        "filters": [HasMethods(["fit_transform", "transform"])], "max_iter": POSITIVE_INT,
    }

    def __init__(self, filters, *, max_iter=100):
        self.filters = filters
        self.max_iter = max_iter

    def fit(self, X, y=None):
        """Fit ``filters`` repeatedly on its own output until it drops nothing.

        Parameters
        ----------
        X : pandas.DataFrame
        y : None
            Ignored.

        Returns
        -------
        self
        """
        self.fit_transform(X)
        return self

    def fit_transform(self, X, y=None):
        """Fit as :meth:`fit` does and return the stable frame.

        Parameters
        ----------
        X : pandas.DataFrame
        y : None
            Ignored.

        Returns
        -------
        pandas.DataFrame
        """
        self._validate()
        max_iter = int(self.max_iter)
        X = check_frame(X)
        self._remember_columns(X)
        for n_iter in range(1, max_iter + 1):
            filters = clone(self.filters)
            out = filters.fit_transform(X)
            if len(out) == len(X):
                self.filters_, self.n_iter_ = filters, n_iter
                return out
            X = out
        raise RuntimeError(f"RepeatUntilStable: the data still changed after max_iter="
                           f"{max_iter} passes; raise max_iter.")

    def transform(self, X):
        """Apply the fitted filters until they drop nothing.

        Parameters
        ----------
        X : pandas.DataFrame

        Returns
        -------
        pandas.DataFrame
        """
        check_is_fitted(self)
        X = check_frame(X)
        for _ in range(int(self.max_iter)):
            out = self.filters_.transform(X)
            if len(out) == len(X):
                return out
            X = out
        raise RuntimeError(f"RepeatUntilStable: the data still changed after max_iter="
                           f"{self.max_iter} passes; raise max_iter.")
