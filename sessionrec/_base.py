"""The scikit-learn base class every sessionrec recommender subclasses.

A subclass provides:

* ``__init__`` storing its keyword arguments unchanged (the column names ``session_key``,
  ``item_key``, ``time_key``, ``device`` and ``verbose`` included);
* ``_parameter_constraints``: scikit-learn's declaration of every parameter's valid
  values, the base class's (columns, device, verbose) merged in; ``fit`` checks them
  with scikit-learn's machinery (``InvalidParameterError``);
* optionally ``_check_params()``, for the rules that tie parameters together, raising
  ``InvalidParameterError`` (one place per estimator);
* ``_fit(events)``, learning from :class:`~sessionrec._events.SessionEvents`;
* ``_iter_scores(events, score_after)``, yielding ``(positions, scores)``: for event
  positions where ``score_after`` is True, the scores of all ``n_items_`` items given the
  session's events up to and including that position (a tensor on ``device_``);
* ``_empty_history_scores(events, sessions)``: the scores of all items for the given
  sessions of ``events``, which have no known event: one vector for all of them, or one
  row per session (personalised models);
* ``_get_state()`` / ``_set_state(state)`` for :meth:`save` / :meth:`load`;
* optionally ``_iter_ranks(events, ties)``, when it can count ranks without a score
  matrix (by the definitions of :mod:`sessionrec.evaluation`; see GRU4Rec).

Everything else (validation of frames, prediction, ranking, scoring, pickling, saving)
is here, once.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import torch
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from ._events import ItemIndex, SessionEvents, to_session_events
from ._native import kernels as _kernels
from ._progress import report
from ._threads import torch_threads_limited
from ._topk import history_exclusions, top_of_scores
from ._validation import (
    COLUMN,
    DEVICE,
    check_bool,
    check_int,
    resolve_device,
    validate_constraints,
)
from .evaluation import check_ties, ranks_from_scores
from .exceptions import SessionCutWarning

__all__ = ["SessionRecommender", "all_estimators"]


_REGISTRY: dict[str, type] = {}

# Rows x items scored at once. On the CPU a block that stays in cache (2**20 values, 4 MiB
# in float32) ranks about 5x faster than one that does not; a GPU wants large blocks to
# fill the device (2**24 values, 64 MiB).
_SCORE_BLOCK_VALUES = {"cpu": 2**20, "cuda": 2**24}

# Training sessions recorded (label -> length, in memory only, never pickled) so that an
# evaluation can tell that a split cut sessions in two; above this many, none are.
_RECORDED_SESSIONS = 2**21

_SAVE_FORMAT = "sessionrec-model"
_SAVE_VERSION = 1


def all_estimators() -> list[type]:
    """Every public recommender class of sessionrec, sorted by name.

    Examples
    --------
    >>> "PopularityRecommender" in [cls.__name__ for cls in all_estimators()]
    True
    """
    return sorted((c for c in _REGISTRY.values() if not c.__name__.startswith("_")),
                  key=lambda c: c.__name__)


def block_values(device: torch.device) -> int:
    """How many score values make one block of work on ``device``."""
    return _SCORE_BLOCK_VALUES.get(torch.device(device).type, _SCORE_BLOCK_VALUES["cpu"])


def rows_per_block(n_items: int, device: torch.device) -> int:
    """How many rows of ``n_items`` scores make one block of work on ``device``."""
    return max(1, block_values(device) // max(1, n_items))


class SessionRecommender(BaseEstimator):
    """Base class of all sessionrec recommenders. Not used directly.

    The public methods share one contract (see the user guide):

    * :meth:`fit` learns from an events frame and returns ``self``;
    * :meth:`predict_next` recommends the next items of every session;
    * :meth:`predict` is ``predict_next`` with the defaults, for Pipelines;
    * :meth:`rank_next_items` ranks each true next item among all training items;
    * :meth:`score` is MRR@20 under the next-item protocol.

    Items unseen in training are dropped from the input sessions at prediction time (the
    model knows nothing of them); a session left without a known event gets the model's
    no-history recommendation. Targets with an unseen item get no rank (NaN).
    """

    # The valid values of the parameters every recommender has; subclasses merge theirs in.
    _parameter_constraints: dict = {
        "session_key": COLUMN, "item_key": COLUMN, "time_key": COLUMN,
        "device": DEVICE, "verbose": ["verbose"],
    }

    # Parameters added after models of the class could already be pickled or saved, each
    # with the value that reproduces such older models; they load with it.
    _LEGACY_PARAMS: dict = {}

    # Whether the model learns from (item, next item) pairs inside sessions, so that a
    # training frame without any session of two or more events leaves it nothing to learn.
    _LEARNS_FROM_PAIRS = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _REGISTRY[cls.__name__] = cls

    # -- scikit-learn protocol ---------------------------------------------------------

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = False
        # X is a DataFrame of events, not an array: scikit-learn's array-based checks
        # cannot apply (tests/test_sklearn_checks.py lists them, with reasons).
        tags.input_tags.two_d_array = False
        tags.input_tags.string = True
        tags.input_tags.categorical = True
        tags.requires_fit = True
        return tags

    def __sklearn_is_fitted__(self) -> bool:
        return "item_index_" in vars(self)

    # -- hooks for subclasses ----------------------------------------------------------

    def _check_params(self) -> None:
        """Check the rules that tie parameters together (after each parameter was checked
        against ``_parameter_constraints``); raise ``InvalidParameterError``."""

    def _fit(self, events: SessionEvents, **fit_params) -> None:
        raise NotImplementedError

    def _iter_scores(self, events: SessionEvents, score_after: np.ndarray
                     ) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        raise NotImplementedError

    def _empty_history_scores(self, events, sessions) -> torch.Tensor:
        raise NotImplementedError

    def _get_state(self) -> dict:
        return {}

    def _set_state(self, state: dict) -> None:
        """Restore what :meth:`_get_state` returned (tensors already on the CPU)."""

    # -- shared machinery --------------------------------------------------------------

    def _column_kwargs(self) -> dict:
        return dict(session_key=self.session_key, item_key=self.item_key,
                    time_key=self.time_key, user_key=getattr(self, "user_key", None))

    def _reset_fitted(self) -> None:
        for name in [k for k in vars(self) if k.endswith("_") and not k.startswith("__")]:
            delattr(self, name)

    def _log(self, message: str, *args) -> None:
        """Report a step of a fit (see :func:`sessionrec._progress.report`), through the
        logger of the model's module."""
        report(self.verbose, logging.getLogger(type(self).__module__), message % args)

    def fit(self, X, y=None, **fit_params):
        """Learn from the events in ``X``.

        Parameters
        ----------
        X : pandas.DataFrame
            Training events with the session, item and time columns.
        y : None
            Ignored; present for scikit-learn compatibility.
        **fit_params : dict
            Model-specific data that are not hyperparameters (e.g. item features).

        Returns
        -------
        self : object
            The fitted estimator. If fitting fails, the estimator is left unfitted.
        """
        self._reset_fitted()
        try:
            validate_constraints(self)
            self._check_params()
            self.device_ = resolve_device(self.device)
            events, index = to_session_events(X, **self._column_kwargs())
            if self._LEARNS_FROM_PAIRS and not (events.lengths >= 2).any():
                raise ValueError(
                    f"X has no session with two or more events (column "
                    f"{self.session_key!r}): {type(self).__name__} learns from the item "
                    "that follows another in a session, and there is none to learn from. "
                    "Check that the session column groups the events of a visit.")
            self.item_index_ = index
            self.n_items_ = index.n_items
            if events.n_sessions <= _RECORDED_SESSIONS:
                self._fit_sessions_ = pd.Series(events.lengths, index=events.session_labels)
            self._fit(events, **fit_params)
        except BaseException:
            self._reset_fitted()
            raise
        return self

    @property
    def item_support_(self) -> pd.Series:
        """Number of training events of each item, indexed by item label."""
        check_is_fitted(self)
        return pd.Series(self.item_index_.support, index=self.item_index_.labels,
                         name="support")

    def _session_events(self, X) -> SessionEvents:
        check_is_fitted(self)
        events, _ = to_session_events(X, **self._column_kwargs(),
                                      item_index=self.item_index_)
        return events

    def _blocks(self, positions: np.ndarray, extra_cost: np.ndarray | None = None
                ) -> Iterator[np.ndarray]:
        """Split positions into blocks of rows that fit one score block.

        Each row costs ``n_items_`` values plus ``extra_cost`` (e.g. the length of the
        session history a model expands per row), so no block outgrows the budget.
        """
        if extra_cost is None:
            step = rows_per_block(self.n_items_, self.device_)
            for start in range(0, len(positions), step):
                yield positions[start:start + step]
            return
        cost = np.cumsum(self.n_items_ + np.asarray(extra_cost, dtype=np.int64))
        budget = block_values(self.device_)
        start = 0
        while start < len(positions):
            done = cost[start - 1] if start else 0
            stop = int(np.searchsorted(cost, done + budget, side="right"))
            stop = max(stop, start + 1)
            yield positions[start:stop]
            start = stop

    @staticmethod
    def _map_blocks(score: Callable, blocks: Iterable[np.ndarray]
                    ) -> Iterator[tuple[np.ndarray, object]]:
        """Yield ``(block, score(block))`` in order, computing several blocks at once.

        For models that score with numpy on the CPU (numpy releases the GIL in its
        kernels): as many blocks as torch has threads (``torch.set_num_threads``) are
        computed in worker threads, so that setting controls this parallelism as it does
        torch's. While the workers run, torch's own kernels (the ranking of the yielded
        blocks) run on one thread in the calling thread
        (:func:`~sessionrec._threads.torch_threads_limited`; other threads keep their
        count, and the caller gets its own back when the scoring ends): a torch thread
        pool competing with busy workers for the same cores was measured to slow the
        ranking tenfold. Results are identical to a serial loop.
        """
        n_threads = torch.get_num_threads()
        if n_threads <= 1:
            for block in blocks:
                yield block, score(block)
            return
        with (torch_threads_limited(1),
              ThreadPoolExecutor(n_threads, thread_name_prefix="sessionrec") as pool):
            pending: deque = deque()
            for block in blocks:
                pending.append((block, pool.submit(score, block)))
                if len(pending) > n_threads:
                    done, future = pending.popleft()
                    yield done, future.result()
            while pending:
                done, future = pending.popleft()
                yield done, future.result()

    def predict_next(self, X, k: int = 20, *, exclude_seen: bool = False,
                     return_scores: bool = False):
        """Recommend the ``k`` items most likely to come next in every session of ``X``.

        Parameters
        ----------
        X : pandas.DataFrame
            Events of the sessions to continue (e.g. live sessions so far).
        k : int, default=20
            Length of each list; at most the number of training items.
        exclude_seen : bool, default=False
            Leave out items that already occur in the session.
        return_scores : bool, default=False
            Also return the scores of the recommended items.

        Returns
        -------
        items : pandas.DataFrame
            One row per session of ``X`` (index: session label, sessions ordered by their
            first event's time), columns ``1 .. k`` (rank), cells are item labels.
        scores : pandas.DataFrame
            Only with ``return_scores=True``: same shape, the items' scores.
        """
        check_is_fitted(self)
        k = check_int("k", k, min_value=1)
        exclude_seen = check_bool("exclude_seen", exclude_seen)
        return_scores = check_bool("return_scores", return_scores)
        events = self._session_events(X)
        k = min(k, self.n_items_)
        n_sessions = events.n_sessions
        top_items = np.zeros((n_sessions, k), dtype=np.int64)
        top_scores = np.zeros((n_sessions, k), dtype=np.float64)
        lengths = events.lengths
        last = np.zeros(events.n_events, dtype=bool)
        last[events.offsets[1:][lengths > 0] - 1] = True
        session_of = events.session_of_event
        for positions, idx, values in self._iter_top(events, last, k, exclude_seen):
            sessions = session_of[positions]
            top_items[sessions] = idx.cpu().numpy()
            top_scores[sessions] = values.double().cpu().numpy()
        empty = np.flatnonzero(lengths == 0)
        if len(empty):  # no known event: nothing to exclude
            idx, values = top_of_scores(self._cold_scores(events, empty), k)
            top_items[empty] = idx.cpu().numpy()
            top_scores[empty] = values.double().cpu().numpy()

        index = pd.Index(events.session_labels, name=self.session_key)
        columns = pd.RangeIndex(1, k + 1, name="rank")
        labels = self.item_index_.decode(top_items.ravel()).reshape(n_sessions, k)
        items = pd.DataFrame(labels, index=index, columns=columns)
        if return_scores:
            return items, pd.DataFrame(top_scores, index=index, columns=columns)
        return items

    def _cold_scores(self, events: SessionEvents, sessions: np.ndarray) -> torch.Tensor:
        """:meth:`_empty_history_scores` as one row per session."""
        cold = self._empty_history_scores(events, sessions)
        if cold.ndim == 1:
            cold = cold.reshape(1, -1).expand(len(sessions), -1)
        return cold

    def _iter_top(self, events: SessionEvents, score_after: np.ndarray, k: int,
                  exclude_seen: bool) -> Iterator[tuple[np.ndarray, torch.Tensor,
                                                        torch.Tensor]]:
        """``(positions, items, scores)`` blocks: the ``k`` best items after each position
        that ``score_after`` selects (with ``exclude_seen``, none of the session's items up
        to there), by :func:`~sessionrec._topk.top_of_scores` of :meth:`_iter_scores`. The
        one selection of :meth:`predict_next` and of live sessions
        (:mod:`sessionrec.serving`); a model may select without a score matrix instead
        (the same lists)."""
        for positions, scores in self._iter_scores(events, score_after):
            exclude = history_exclusions(events, positions) if exclude_seen else None
            idx, values = top_of_scores(scores, k, exclude)
            yield positions, idx, values

    def predict(self, X, k: int = 20, *, exclude_seen: bool = False,
                return_scores: bool = False):
        """:meth:`predict_next`, under the name a ``Pipeline`` calls.

        ``pipe.predict(X, k=10, exclude_seen=True)`` passes the options through a
        Pipeline that ends in a recommender. With scikit-learn's metadata routing on,
        request them first: ``model.set_predict_request(k=True, exclude_seen=True)``.

        Parameters
        ----------
        X : pandas.DataFrame
            Events of the sessions to continue.
        k : int, default=20
        exclude_seen : bool, default=False
        return_scores : bool, default=False
            See :meth:`predict_next`.

        Returns
        -------
        items : pandas.DataFrame
            See :meth:`predict_next` (and the scores with ``return_scores=True``).
        """
        return self.predict_next(X, k, exclude_seen=exclude_seen, return_scores=return_scores)

    def live(self, **kwargs):
        """Live sessions answered click by click from kept state
        (:class:`sessionrec.serving.LiveSessions` of this fitted model).

        Parameters
        ----------
        **kwargs
            ``max_sessions``, ``idle_timeout``, ... of :class:`~sessionrec.serving.
            LiveSessions`.

        Returns
        -------
        LiveSessions

        Examples
        --------
        >>> from sessionrec import PopularityRecommender
        >>> from sessionrec.datasets import make_sessions
        >>> model = PopularityRecommender().fit(make_sessions(n_sessions=50, random_state=0))
        >>> live = model.live(max_sessions=1000)
        >>> len(live.click("s1", 3, k=5).items)
        5
        """
        from .serving import LiveSessions

        return LiveSessions(self, **kwargs)

    def _iter_ranks(self, events: SessionEvents, ties: str):
        """``(positions, ranks)`` blocks: the rank of the item after each position (all
        positions but the sessions' last), from :meth:`_iter_scores` and
        :func:`~sessionrec.evaluation.ranks_from_scores`. A model may count ranks
        without the score matrix instead (same definitions)."""
        items_t = torch.as_tensor(events.items, device=self.device_)
        step = rows_per_block(self.n_items_, self.device_)
        fused = _kernels.fused_for(self.device_)  # the evaluation's choice of backend
        for positions, scores in self._iter_scores(events, ~events.is_last):
            targets = items_t[torch.as_tensor(positions + 1, device=self.device_)]
            # Rank in blocks that stay in cache, whatever block size the model scores in.
            yield positions, torch.cat([
                ranks_from_scores(scores[a:a + step], targets[a:a + step], ties,
                                  fused=fused)
                for a in range(0, len(positions), step)])

    def rank_next_items(self, X, ties: str = "conservative") -> pd.Series:
        """Rank every true next item of ``X`` among all training items.

        For every event of ``X`` after its session's first, the rank (1 = best) of that
        event's item among all ``n_items_`` training items, given the session's events
        before it. This is the hook of :func:`sessionrec.evaluation.evaluate` and of the
        scorers.

        Parameters
        ----------
        X : pandas.DataFrame
            Test events.
        ties : {"conservative", "optimistic", "median"}, default="conservative"
            How tied scores count (see :mod:`sessionrec.evaluation`).

        Returns
        -------
        ranks : pandas.Series of float
            Indexed like the target rows of ``X``, in ``X``'s row order. NaN where the
            target's item was unseen in training, or every event before it was.
        """
        check_is_fitted(self)
        check_ties(ties)
        events = self._session_events(X)
        n_rows = len(X)
        ranks = np.full(n_rows, np.nan)
        for positions, block_ranks in self._iter_ranks(events, ties):
            ranks[events.rows[positions + 1]] = block_ranks.cpu().numpy()
        is_target = np.ones(n_rows, dtype=bool)
        is_target[events.first_rows] = False
        return pd.Series(ranks[is_target], index=X.index[is_target], name="rank")

    def score(self, X, y=None) -> float:
        """MRR@20 of the next-item protocol (conservative ties) on the events of ``X``.

        Parameters
        ----------
        X : pandas.DataFrame
            Test events.
        y : None
            Ignored.

        Returns
        -------
        float
            Mean reciprocal rank at 20 over the targets whose item was seen in training;
            NaN when there is none.
        """
        from .metrics import mrr_at_k

        ranks = self.rank_next_items(X).to_numpy()
        self._warn_if_sessions_cut(X)
        known = ranks[~np.isnan(ranks)]
        if len(known) == 0:
            warnings.warn(
                f"score: no event of X can be ranked ({len(ranks)} targets, none of whose "
                "item and earlier events were seen in training), so the score is NaN.",
                UserWarning, stacklevel=2)
        return mrr_at_k(known, 20)

    def _warn_if_sessions_cut(self, X) -> None:
        """Warn (:class:`~sessionrec.exceptions.SessionCutWarning`) when the evaluation
        frame ``X`` holds part of a training session: a session of the same label, with
        another number of events. That is what a row-based split does (an integer
        ``cv``, ``KFold``, ``learning_curve``, ``HalvingGridSearchCV``): it puts the start
        of a session in training and its end in the test, which leaks the session."""
        trained = vars(self).get("_fit_sessions_")
        if trained is None or self.session_key not in getattr(X, "columns", ()):
            return
        tested = X[self.session_key].value_counts(sort=False)
        shared = trained.index.get_indexer(tested.index)
        found = shared >= 0
        if (trained.to_numpy()[shared[found]] != tested.to_numpy()[found]).any():
            warnings.warn(
                f"the evaluation frame holds the rest of sessions that {type(self).__name__} "
                f"was trained on (same {self.session_key!r}, other events): the split cut "
                "sessions in two, as an integer cv=, KFold, learning_curve or "
                "HalvingGridSearchCV does with rows of events. Use a splitter that keeps "
                "sessions whole: sessionrec.model_selection.SessionKFold, TimeSplit or "
                "LastSessionSplit (cv=...).", SessionCutWarning, stacklevel=3)

    # -- persistence -------------------------------------------------------------------

    def __getstate__(self):
        # A copy: object.__getstate__ may hand back the live instance dict.
        state = dict(super().__getstate__())
        for name, value in list(state.items()):
            if isinstance(value, torch.Tensor):
                state[name] = value.detach().cpu()
            elif isinstance(value, torch.nn.Module):
                if any(p.device.type != "cpu" for p in value.parameters()) or any(
                        b.device.type != "cpu" for b in value.buffers()):
                    value = copy.deepcopy(value).cpu()
                state[name] = value
            elif isinstance(value, torch.Generator):
                state.pop(name)  # transient: not needed once fitted
        state.pop("_fit_sessions_", None)  # for evaluations right after fit, in memory only
        return state

    def __setstate__(self, state):
        for name, value in self._LEGACY_PARAMS.items():
            state.setdefault(name, value)
        super().__setstate__(state)
        if "device_" in state:
            # A model fitted on a GPU loads on a machine without one: map to the CPU.
            device = state["device_"]
            if device.type == "cuda" and not torch.cuda.is_available():
                device = torch.device("cpu")
            self._to_device(device)

    def _to_device(self, device: torch.device) -> None:
        self.device_ = device
        for name, value in list(vars(self).items()):
            if isinstance(value, torch.Tensor):
                setattr(self, name, value.to(device))
            elif isinstance(value, torch.nn.Module):
                value.to(device)

    def save(self, path) -> None:
        """Save the fitted model to ``path`` for long-term storage.

        The file holds the hyperparameters and the fitted state as plain types and
        tensors (no pickled code), so :meth:`load` reads it with
        ``torch.load(weights_only=True)``. Item labels must be ints, floats or strings.

        Parameters
        ----------
        path : str or path-like
        """
        check_is_fitted(self)
        params = self.get_params(deep=False)
        for name, value in params.items():
            if not _is_plain(value):
                raise TypeError(
                    f"save() stores only plain parameter values; {name}={value!r} is not "
                    "one. Set it to a plain value (e.g. an int random_state) or use joblib."
                )
        labels = plain_labels(self.item_index_.labels, "item")
        state = self._get_state()
        payload = {
            "format": _SAVE_FORMAT, "format_version": _SAVE_VERSION,
            "class": type(self).__name__, "params": params,
            "item_labels": labels,
            "item_support": torch.as_tensor(self.item_index_.support),
            "state": {k: (v.detach().cpu() if isinstance(v, torch.Tensor) else v)
                      for k, v in state.items()},
        }
        torch.save(payload, path)

    @classmethod
    def load(cls, path, *, device=None):
        """Load a model written by :meth:`save`.

        Parameters
        ----------
        path : str or path-like
        device : str or None, default=None
            Where to put the model; None means the saved ``device`` parameter, falling
            back to the CPU when that asks for CUDA and none is present.

        Returns
        -------
        estimator : fitted recommender
        """
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(payload, dict) or payload.get("format") != _SAVE_FORMAT:
            raise ValueError(f"{path!s} is not a sessionrec model file.")
        if payload.get("format_version", 0) > _SAVE_VERSION:
            raise ValueError(f"{path!s} was written by a newer sessionrec; upgrade to load it.")
        target = _REGISTRY.get(payload["class"])
        if target is None or not issubclass(target, cls):
            raise TypeError(f"{path!s} holds a {payload['class']}, not a {cls.__name__}.")
        est = target(**{**target._LEGACY_PARAMS, **payload["params"]})
        wanted = est.device if device is None else device
        try:
            resolved = resolve_device(wanted)
        except ValueError:
            if device is not None:
                raise
            resolved = torch.device("cpu")
        est.item_index_ = ItemIndex(pd.Index(payload["item_labels"]),
                                    payload["item_support"].numpy())
        est.n_items_ = est.item_index_.n_items
        est.device_ = torch.device("cpu")
        est._set_state(payload["state"])
        est._to_device(resolved)
        return est


def plain_labels(labels, what: str) -> list:
    """``labels`` as a list for :meth:`SessionRecommender.save`, which stores plain values
    only (``torch.load(weights_only=True)``); ``what`` names them in the error."""
    labels = list(labels.tolist())
    if not all(isinstance(v, (int, float, str)) for v in labels):
        raise TypeError(f"save() needs int, float or str {what} labels; use joblib instead.")
    return labels


def _is_plain(value) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (tuple, list)):
        return all(_is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain(v) for k, v in value.items())
    return False
