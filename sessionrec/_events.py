"""The events contract: validation of event frames, the item index, sorted session arrays.

Every estimator reads its input through :func:`to_session_events`, so every model sees the
same rules:

* ``X`` is a :class:`pandas.DataFrame` with one row per interaction. The session, item and
  time columns (and the user column for models that use users) are named by constructor
  parameters. A missing column, missing values (NaN/None/NaT) in any of them, a time column
  that cannot be ordered (strings, objects, booleans) or an empty frame raise a
  ``ValueError``/``TypeError`` that names the column.
* Session, item and user labels may be integers, strings or any other hashable values,
  but one kind per column (:func:`label_kind`): a column that mixes, say, the string
  ``'214716935'`` and the integer ``214716935`` raises a ``TypeError`` naming it, since
  the two would silently be different items. At prediction, item labels of another kind
  than the training labels (strings against integers) raise a ``TypeError`` too: not one
  of them could be recognised.
* Times are numbers or datetimes (time-zone aware ones too). Rows need not be sorted: a
  sorted copy is made. Sessions are ordered by the time of their first event (ties by
  first appearance in ``X``), events inside a session by time (ties by their order in
  ``X``), as in the reference GRU4Rec implementation.
* The caller's frame is never modified.

Items are mapped to contiguous integer codes by :class:`ItemIndex`. At prediction time,
events whose item was not seen in training are **dropped** before the model sees the
session (they carry nothing the model knows) and counted; this matches the official
GRU4Rec evaluation protocol, which removes such events from the test set.
"""

from __future__ import annotations

import datetime
import numbers
from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["ItemIndex", "SessionEvents", "to_session_events", "ragged_arange", "label_kind",
           "check_same_label_kind", "user_codes"]


def ragged_arange(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenate ``arange(s, s + n)`` for every ``(s, n)`` without a Python loop.

    Examples
    --------
    >>> ragged_arange(np.array([5, 0]), np.array([2, 3])).tolist()
    [5, 6, 0, 1, 2]
    """
    starts = np.asarray(starts, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    block_starts = np.cumsum(lengths) - lengths
    return np.arange(total, dtype=np.int64) + np.repeat(starts - block_starts, lengths)


# What pandas.api.types.infer_dtype says of a column of one kind of label, and that kind.
_INFERRED_KINDS = {
    "string": "str", "unicode": "str", "bytes": "bytes", "boolean": "bool",
    "integer": "number", "floating": "number", "mixed-integer-float": "number",
    "decimal": "number", "complex": "number",
    "datetime": "datetime", "datetime64": "datetime", "date": "datetime",
    "timedelta": "timedelta", "timedelta64": "timedelta", "period": "period",
    "interval": "interval", "time": "time",
}


def _kind_of_value(value) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "bool"
    if isinstance(value, numbers.Number):
        return "number"
    if isinstance(value, str):
        return "str"
    if isinstance(value, bytes):
        return "bytes"
    if isinstance(value, (datetime.date, np.datetime64)):
        return _datetime_kind(value)
    return type(value).__name__


def _datetime_kind(value) -> str:
    # Naive and time-zone aware times never match: they are different kinds.
    return "datetime" if getattr(value, "tzinfo", None) is None else "tz-aware datetime"


def _kinds(values) -> dict[str, object]:
    """The kinds of label in ``values`` (a Series, Index or array), each with an example.

    Integers and floats are one kind (``1`` and ``1.0`` are the same label to pandas), as
    are ``str`` and its numpy and pandas variants; naive and time-zone aware datetimes are
    two; everything else that is not a number, a string, bytes, a boolean or a date is
    its own kind, by the name pandas infers for it (``"period"``, ``"interval"``) or its
    type name. Empty ``values`` have no kind (an empty dict).
    """
    if len(values) == 0:
        return {}
    dtype = getattr(values, "dtype", None)
    first = next(iter(values))
    if isinstance(dtype, pd.CategoricalDtype):  # the categories in use
        codes = pd.Categorical(values).codes
        return _kinds(dtype.categories.take(np.unique(codes[codes >= 0])))
    if dtype is not None and not pd.api.types.is_object_dtype(dtype):
        if pd.api.types.is_bool_dtype(dtype):
            return {"bool": first}
        if pd.api.types.is_numeric_dtype(dtype):
            return {"number": first}
        if pd.api.types.is_string_dtype(dtype):
            return {"str": first}
        if pd.api.types.is_datetime64_any_dtype(dtype):
            return {_datetime_kind(first): first}
    inferred = pd.api.types.infer_dtype(values, skipna=False)
    if inferred in _INFERRED_KINDS:
        kind = _INFERRED_KINDS[inferred]
        return {_datetime_kind(first) if kind == "datetime" else kind: first}
    # Mixed, or values that infer_dtype does not name (tuples, ...): look at the distinct
    # values only, which a factorisation finds in C.
    found: dict[str, object] = {}
    for value in pd.unique(np.asarray(values, dtype=object)):
        found.setdefault(_kind_of_value(value), value)
    return found


def label_kind(values) -> str:
    """The one kind of label in ``values``: ``"number"``, ``"str"``, ``"bool"``, ...

    Raises ``TypeError`` when ``values`` mixes kinds, ``ValueError`` when it is empty.

    Examples
    --------
    >>> label_kind(pd.Series([3, 1.0])), label_kind(pd.Series(["a", "b"]))
    ('number', 'str')
    >>> label_kind(pd.Series(["214716935", 214716935], dtype=object))
    Traceback (most recent call last):
    ...
    TypeError: labels mix kinds: str ('214716935') and number (214716935).
    """
    found = _kinds(values)
    if not found:
        raise ValueError("no labels: the kind of an empty set of labels is undefined.")
    if len(found) > 1:
        raise TypeError(f"labels mix kinds: {_listed(found)}.")
    return next(iter(found))


def _listed(found: dict) -> str:
    return " and ".join(f"{kind} ({example!r})" for kind, example in found.items())


def check_same_label_kind(known_kind: str, kind: str, key, role: str) -> None:
    """Raise a ``TypeError`` naming column ``key`` when its labels are of another ``kind``
    than ``known_kind``, the kind of the labels the model was fitted on."""
    if kind != known_kind:
        raise TypeError(
            f"column {key!r} (the {role} column) holds {kind} labels, but the model was "
            f"fitted on {known_kind} labels, so not one {role} would be recognised. "
            f"Convert the column to the training labels' type first"
            + (f" (e.g. X[{key!r}].astype({_CONVERSIONS[known_kind]!r}))."
               if known_kind in _CONVERSIONS else "."))


_CONVERSIONS = {"number": "int64", "str": "str"}


def user_codes(training_users: pd.Index, events: SessionEvents, user_key) -> np.ndarray:
    """Position in ``training_users`` of each user of ``events`` (``events.user_labels``),
    -1 for a user unseen in training; a ``TypeError`` naming ``user_key`` when the frame's
    user labels are of another kind than the training users'."""
    check_same_label_kind(label_kind(training_users), label_kind(events.user_labels),
                          user_key, "user")
    return training_users.get_indexer(events.user_labels)


def _factorize_sorted(values) -> tuple[np.ndarray, pd.Index]:
    """Factorize with sorted uniques when the labels can be compared, else by appearance.

    Sorted codes make the item order (and so training) independent of the row order.
    """
    if not isinstance(values, (pd.Series, pd.Index, np.ndarray, pd.api.extensions.ExtensionArray)):
        values = pd.Index(list(values))
    try:
        codes, uniques = pd.factorize(values, sort=True)
    except TypeError:  # mixed label types that cannot be compared
        codes, uniques = pd.factorize(values, sort=False)
    return codes.astype(np.int64, copy=False), pd.Index(uniques)


class ItemIndex:
    """Map item labels to contiguous integer codes ``0 .. n_items - 1`` and back.

    Parameters
    ----------
    labels : pandas.Index
        The unique item labels; an item's code is its position here.
    support : ndarray of int64
        Number of training events of each item (same order as ``labels``).

    Examples
    --------
    >>> index, codes = ItemIndex.from_labels(["b", "a", "b", "c"])
    >>> codes.tolist(), index.n_items, index.support.tolist()
    ([1, 0, 1, 2], 3, [1, 2, 1])
    >>> index.encode(["c", "zzz"]).tolist()  # unknown labels become -1
    [2, -1]
    >>> index.decode([0, 2]).tolist()
    ['a', 'c']
    """

    def __init__(self, labels: pd.Index, support: np.ndarray):
        labels = pd.Index(labels)
        if not labels.is_unique:
            raise ValueError("item labels of an ItemIndex must be unique.")
        support = np.asarray(support, dtype=np.int64)
        if support.shape != (len(labels),):
            raise ValueError("support must have one entry per item label.")
        self.labels = labels
        self.support = support

    @classmethod
    def from_labels(cls, item_labels) -> tuple[ItemIndex, np.ndarray]:
        """Build the index from the item column of training events; also return codes."""
        codes, uniques = _factorize_sorted(item_labels)
        support = np.bincount(codes, minlength=len(uniques)).astype(np.int64)
        return cls(uniques, support), codes

    @property
    def n_items(self) -> int:
        """Number of items in the index."""
        return len(self.labels)

    @property
    def kind(self) -> str:
        """The kind of the item labels (see :func:`label_kind`), computed once."""
        kind = self.__dict__.get("_kind")
        if kind is None:  # also for indexes pickled before the kind was kept
            kind = self.__dict__["_kind"] = label_kind(self.labels)
        return kind

    def encode(self, item_labels) -> np.ndarray:
        """Codes of ``item_labels``; labels not in the index get ``-1``."""
        if not isinstance(item_labels, (pd.Index, pd.Series, np.ndarray)):
            item_labels = pd.Index(list(item_labels))
        return np.asarray(self.labels.get_indexer(item_labels), dtype=np.int64)

    def decode(self, codes) -> np.ndarray:
        """Labels of ``codes`` (an array of valid codes)."""
        return self.labels.take(np.asarray(codes, dtype=np.int64)).to_numpy()

    def __len__(self) -> int:
        return self.n_items

    def __repr__(self) -> str:
        return f"ItemIndex(n_items={self.n_items})"

    def __eq__(self, other) -> bool:
        return (isinstance(other, ItemIndex) and self.labels.equals(other.labels)
                and np.array_equal(self.support, other.support))

    __hash__ = None  # mutable container semantics: equal by content, so not hashable


@dataclass(frozen=True)
class SessionEvents:
    """Validated events as integer arrays, sorted by session (start time) then time.

    Attributes
    ----------
    items : ndarray of int64, shape (n_events,)
        Item code of each kept event.
    offsets : ndarray of int64, shape (n_sessions + 1,)
        Session ``s`` holds events ``offsets[s]:offsets[s + 1]``. Sessions are ordered by
        the time of their first event. A session may be empty when every one of its events
        had an unknown item.
    session_labels : ndarray, shape (n_sessions,)
        The caller's session label of each session.
    rows : ndarray of int64, shape (n_events,)
        Position (``iloc``) of each kept event in the caller's frame.
    users : ndarray of int64 or None, shape (n_sessions,)
        User code of each session (codes into ``user_labels``) when a user column was read.
    user_labels : pandas.Index or None
        The user labels.
    n_unknown : int
        Number of events dropped because their item is not in the item index.
    first_rows : ndarray of int64 or None, shape (n_sessions,)
        Position in the caller's frame of each session's first event, before unknown
        items were dropped.
    end_times : ndarray or None, shape (n_sessions,)
        Time of each session's last event (numbers, or the int64 ticks of datetimes),
        before unknown items were dropped.
    seconds : ndarray of float64 or None, shape (n_events,)
        Time of each kept event in seconds: datetimes converted, numbers taken as seconds.
    """

    items: np.ndarray
    offsets: np.ndarray
    session_labels: np.ndarray
    rows: np.ndarray
    users: np.ndarray | None = None
    user_labels: pd.Index | None = None
    n_unknown: int = 0
    first_rows: np.ndarray | None = None
    end_times: np.ndarray | None = None
    seconds: np.ndarray | None = None

    @property
    def n_events(self) -> int:
        return len(self.items)

    @property
    def n_sessions(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        """Number of (kept) events of each session."""
        return np.diff(self.offsets)

    @property
    def session_of_event(self) -> np.ndarray:
        """Session number (position in ``session_labels``) of every event."""
        return np.repeat(np.arange(self.n_sessions, dtype=np.int64), self.lengths)

    @property
    def session_starts(self) -> np.ndarray:
        """For every event, the position of the first event of its session."""
        return np.repeat(self.offsets[:-1], self.lengths)

    @property
    def is_last(self) -> np.ndarray:
        """True for the last event of each session."""
        last = np.zeros(self.n_events, dtype=bool)
        ends = self.offsets[1:][self.lengths > 0] - 1
        last[ends] = True
        return last


def _check_column(X: pd.DataFrame, key, role: str, known_kind: str | None = None
                  ) -> pd.Series:
    """Column ``key`` of ``X`` (the ``role`` column), checked: present once, no missing
    values and, for labels, one kind of label, ``known_kind`` where it is given (the
    kind the model was fitted on)."""
    if key not in X.columns:
        available = ", ".join(repr(c) for c in list(X.columns)[:20])
        raise ValueError(
            f"column {key!r} (the {role} column) is missing from X; columns present: "
            f"{available}. Set {role}_key to the name of your {role} column."
        )
    col = X[key]
    if isinstance(col, pd.DataFrame):
        raise ValueError(f"column {key!r} (the {role} column) appears more than once in X.")
    n_missing = int(col.isna().sum())
    if n_missing:
        raise ValueError(
            f"column {key!r} (the {role} column) has {n_missing} missing value(s) "
            "(NaN/None/NaT); drop or fill those rows first."
        )
    if role in _LABEL_ROLES:
        found = _kinds(col)
        if len(found) > 1:
            raise TypeError(
                f"the labels of column {key!r} (the {role} column) mix kinds: "
                f"{_listed(found)}; labels of different kinds are different {role}s even "
                f"when they read the same. Convert the column to one type first (e.g. "
                f"X[{key!r}].astype(str)).")
        if known_kind is not None:
            check_same_label_kind(known_kind, next(iter(found)), key, role)
    return col


# Columns of labels, whose values must be of one kind (see label_kind).
_LABEL_ROLES = ("session", "item", "user")


_SECONDS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}


def time_seconds(col: pd.Series, key, unit: str = "s") -> np.ndarray:
    """Times as float64 seconds: datetimes since the epoch, numbers times ``unit``."""
    if isinstance(col.dtype, pd.DatetimeTZDtype):
        col = col.dt.tz_convert("UTC").dt.tz_localize(None)
    if pd.api.types.is_datetime64_dtype(col.dtype):
        return ((col - pd.Timestamp(0)) / pd.Timedelta(seconds=1)).to_numpy(np.float64)
    if pd.api.types.is_bool_dtype(col.dtype) or not pd.api.types.is_numeric_dtype(col.dtype):
        raise TypeError(f"column {key!r} (the time column) must hold numbers or datetimes; "
                        f"got dtype {col.dtype}.")
    return col.to_numpy(np.float64) * _SECONDS[unit]


def _orderable_times(col: pd.Series, key) -> tuple[np.ndarray, float]:
    """Times as an int64 or float64 array that sorts like the times, and the factor that
    turns its values into seconds (numbers are taken to be seconds)."""
    dtype = col.dtype
    if isinstance(dtype, pd.DatetimeTZDtype):
        col = col.dt.tz_convert("UTC").dt.tz_localize(None)
        dtype = col.dtype
    if pd.api.types.is_datetime64_dtype(dtype) or pd.api.types.is_timedelta64_dtype(dtype):
        values = col.to_numpy()
        unit, count = np.datetime_data(values.dtype)
        per_second = np.timedelta64(1, "s") / np.timedelta64(count, unit)
        return values.view(np.int64), 1.0 / float(per_second)
    if pd.api.types.is_bool_dtype(dtype) or not pd.api.types.is_numeric_dtype(dtype):
        raise TypeError(
            f"column {key!r} (the time column) must hold numbers or datetimes so that events "
            f"can be ordered; got dtype {dtype}. Convert it first, e.g. with "
            "pandas.to_datetime."
        )
    if pd.api.types.is_integer_dtype(dtype):
        return col.to_numpy(dtype=np.int64), 1.0
    values = col.to_numpy(dtype=np.float64)
    if not np.isfinite(values).all():
        raise ValueError(f"column {key!r} (the time column) has infinite values.")
    return values, 1.0


def to_session_events(
    X,
    *,
    session_key="SessionId",
    item_key="ItemId",
    time_key="Time",
    user_key=None,
    item_index: ItemIndex | None = None,
) -> tuple[SessionEvents, ItemIndex]:
    """Validate an events frame and turn it into sorted integer arrays.

    Parameters
    ----------
    X : pandas.DataFrame
        Events, one row per interaction.
    session_key, item_key, time_key : hashable
        Column names of the session label, item label and time.
    user_key : hashable or None, default=None
        Column name of the user label, read only when given. Every session must belong to
        exactly one user.
    item_index : ItemIndex or None, default=None
        None when fitting: the index is built from ``X``. Otherwise events whose item is not
        in the index are dropped and counted in ``n_unknown``.

    Returns
    -------
    events : SessionEvents
    item_index : ItemIndex
        The index that was built, or the one passed in.

    Examples
    --------
    >>> X = pd.DataFrame({"SessionId": [2, 1, 1], "ItemId": ["a", "b", "a"],
    ...                   "Time": [9.0, 2.0, 1.0]})
    >>> events, index = to_session_events(X)
    >>> events.session_labels.tolist(), events.items.tolist(), events.rows.tolist()
    ([1, 2], [0, 1, 0], [2, 1, 0])
    """
    if not isinstance(X, pd.DataFrame):
        raise TypeError(
            f"X must be a pandas DataFrame of events, got {type(X).__name__}."
        )
    if len(X) == 0:
        raise ValueError("X is empty: at least one event is needed.")
    sessions = _check_column(X, session_key, "session")
    item_col = _check_column(X, item_key, "item",
                             known_kind=None if item_index is None else item_index.kind)
    times, to_seconds = _orderable_times(_check_column(X, time_key, "time"), time_key)
    n = len(X)

    # Order: sessions by their first event's time (ties: first appearance), then by time
    # inside a session (ties: order in X). lexsort is stable, which gives the tie rules.
    sess_codes, sess_uniques = pd.factorize(sessions, sort=False)
    sess_codes = sess_codes.astype(np.int64, copy=False)
    by_session = np.lexsort((times, sess_codes))
    sorted_codes = sess_codes[by_session]
    first = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
    start_time = np.empty(len(sess_uniques), dtype=times.dtype)
    start_time[sorted_codes[first]] = times[by_session][first]
    session_rank = np.empty(len(sess_uniques), dtype=np.int64)
    session_rank[np.lexsort((np.arange(len(sess_uniques)), start_time))] = np.arange(
        len(sess_uniques))
    order = by_session[np.argsort(session_rank[sorted_codes], kind="stable")]
    ordered_sessions = session_rank[sess_codes[order]]  # 0 .. n_sessions-1, non-decreasing
    session_labels = np.empty(len(sess_uniques), dtype=object)
    session_labels[session_rank] = np.asarray(sess_uniques, dtype=object)
    session_labels = pd.Index(session_labels).to_numpy()  # infer a typed array if possible

    users = user_labels = None
    if user_key is not None:
        user_codes, user_labels = _factorize_sorted(_check_column(X, user_key, "user"))
        per_session = np.full(len(sess_uniques), -1, dtype=np.int64)
        per_session[ordered_sessions] = user_codes[order]
        clash = user_codes[order] != per_session[ordered_sessions]
        if clash.any():
            bad = session_labels[ordered_sessions[np.flatnonzero(clash)[0]]]
            raise ValueError(
                f"session {bad!r} has events of more than one user in column {user_key!r}; "
                "every session must belong to exactly one user."
            )
        users = per_session

    raw_counts = np.bincount(ordered_sessions, minlength=len(session_labels))
    first_rows = order[np.cumsum(raw_counts) - raw_counts].astype(np.int64)
    end_times = times[order[np.cumsum(raw_counts) - 1]]
    labels_sorted = item_col.to_numpy()[order]
    if item_index is None:
        item_index, items = ItemIndex.from_labels(labels_sorted)
        keep = None
    else:
        items = item_index.encode(labels_sorted)
        keep = items >= 0
    n_unknown = 0
    rows = order.astype(np.int64, copy=False)
    seconds = times[order].astype(np.float64) * to_seconds
    if keep is not None and not keep.all():
        n_unknown = int(n - keep.sum())
        items, rows, ordered_sessions = items[keep], rows[keep], ordered_sessions[keep]
        seconds = seconds[keep]
    counts = np.bincount(ordered_sessions, minlength=len(session_labels))
    offsets = np.zeros(len(session_labels) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    events = SessionEvents(
        items=items.astype(np.int64, copy=False), offsets=offsets,
        session_labels=session_labels, rows=rows, users=users, user_labels=user_labels,
        n_unknown=n_unknown, first_rows=first_rows, end_times=end_times, seconds=seconds,
    )
    return events, item_index
