"""HRNN: personalised session-based recommendations with a hierarchical GRU."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import torch
from sklearn.utils._param_validation import StrOptions

from .._base import SessionRecommender, plain_labels, rows_per_block
from .._batching import user_parallel_schedule
from .._events import SessionEvents, user_codes
from .._native import kernels as _kernels
from .._topk import top_of_scores
from .._user_history import UserHistory, training_counts, user_item_counts
from .._validation import DROPOUT, POSITIVE_INT, USER_COLUMN
from ..nn._hrnn_network import HRNNNetwork
from ..nn._losses import StepConfig
from ..nn._repeats import UserHistories, add_repeat_bonus_
from ._epochs import document_epochs, mrr_of_score_blocks
from ._item_matrix import csr_from_state, csr_state
from ._recurrent import (
    SampledTrainingMixin,
    TrainingRun,
)

__all__ = ["HRNNRecommender"]


@document_epochs
class HRNNRecommender(SampledTrainingMixin, SessionRecommender):
    """HRNN: a session GRU whose sessions start from a user GRU's state.

    The hierarchical RNN of Quadrana et al. (RecSys 2017). A session-level GRU works as in
    GRU4Rec. When one of a user's sessions ends, a user-level GRU reads the session GRU's
    last hidden state and updates the user state ``c``; the user's next session starts
    from ``tanh(W_init c + b_init)`` instead of zero. With ``user_propagation="all"``,
    ``c`` also enters the session GRU's reset and update gates at every step. A user's
    first session starts from zero, as does every session of a user unknown at training.

    Training uses the paper's user-parallel mini-batches: each of ``batch_size`` slots
    walks one user's sessions in time order; at a session change the user state is
    updated and the session state re-initialised, at a user change both are reset. As in
    GRU4Rec there is no back-propagation through time: each step is differentiated from
    the stored states, so the user GRU and ``W_init`` learn at session starts. Losses,
    negative sampling, Adagrad with momentum and sparse item-row updates are GRU4Rec's.
    Dropout applies at three places, in the paper's order: the user GRU's output, the
    session GRU's output, and the initialisation vector.

    Prediction with history: after ``fit`` the model keeps every training user's state
    after their last training session (``user_states_``). ``predict_next``,
    ``rank_next_items`` and ``score`` need the user column; a known user's sessions in the
    frame are taken as following the training history (the first starts from the stored
    state), and the frame's earlier sessions of a user advance the state before the
    later ones (the paper's bootstrapping); unknown users start from zero, like a
    session-only RNN.

    Repeat-aware scores (``repeat_aware=True``, the default; beyond the paper): users
    come back to the very items of their earlier sessions, which a softmax over item
    rows can only learn item by item, user by user, and which the paper's HRNN
    therefore misses (it loses to Personal POP on such data). Every item the user had
    gets, on top of its network score, a bonus from its counts among the user's events
    of earlier sessions (``n_past``, training history included) and of the current
    session so far (``n_now``): ``g_1 log(1 + n_past) + g_2 log(1 + n_now) + g_3
    [n_past > 0] + g_4 [n_now > 0]``, with gates read from the session state (``g = h
    W_rep + b_rep``, learned; the session state starts from the user state). In
    training, each slot's target is ranked against every item of its
    user's history besides the sampled negatives, so the gates learn how a target
    compares with the rest of the user's history. ``repeat_aware=False`` is the paper's
    model. Costs: a training step reads its slots' histories (the users' events so
    far), a prediction adds the user's counts to the scores, and the fitted model keeps
    the training users' item counts (``user_items_``). See
    ``docs/personalisation.md`` for the measurements behind the default.

    Parameters
    ----------
    session_size : int, default=100
        Hidden units of the session GRU (the paper's "small" networks: 100).
    user_size : int, default=100
        Hidden units of the user GRU.
    user_propagation : {"init", "all"}, default="init"
        HRNN Init (the user state only initialises sessions) or HRNN All (also fed to
        the session GRU at every step).
    repeat_aware : bool, default=True
        Score the items of the user's own history through the gated bonus above;
        False gives the paper's HRNN.
    loss : {"top1", "cross-entropy", "bpr-max", "top1-max", "bpr"}, default="top1"
        Training loss; the paper uses TOP1. Definitions as in :class:`GRU4RecRecommender`.
    batch_size : int, default=50
        Parallel user slots.
    dropout_p_user : float in [0, 1), default=0.0
        Dropout on the user GRU's output.
    dropout_p_session : float in [0, 1), default=0.1
        Dropout on the session GRU's output (the carried state, as in GRU4Rec).
    dropout_p_init : float in [0, 1), default=0.0
        Dropout on the session initialisation vector.
    learning_rate : float, default=0.1
    momentum : float in [0, 1), default=0.0
    n_sample : int, default=0
        Extra negatives per mini-batch; 0 = in-batch negatives only (the paper).
    sample_alpha : float in [0, 1], default=0.75
        Negatives drawn with probability proportional to support^sample_alpha.
    embedding : int, default=0
        Size of a separate item embedding; 0 = one-hot input (the paper).
    constrained_embedding : bool, default=False
        Use the output weights as the input embedding (GRU4Rec's official default).
    bpreg, elu_param, logq, final_activation
        As in :class:`GRU4RecRecommender`.
    n_epochs : int, default=10
    {epoch_parameters}
    sample_store_size : int, default=10_000_000
    user_key : str, default="UserId"
        Column of user labels, required in every frame.
    session_key, item_key, time_key : str
        Column names.
    device : str, default="auto"
        ``"auto"`` trains on CUDA when available, else on the CPU; or ``"cpu"``, ``"cuda"``.
    {distributed}
    random_state : int or None, default=None
        Seed; with an int, CPU training is repeatable bit for bit.
    {epoch_verbose}

    Attributes
    ----------
    network_ : HRNNNetwork
    {epoch_attributes}
    user_labels_ : pandas.Index
        Training users.
    user_states_ : torch.Tensor of shape (n_users, user_size)
        Each training user's state after their last training session.
    user_items_ : scipy.sparse.csr_matrix of shape (n_users, n_items) or None
        With ``repeat_aware``, each training user's event counts per item (the history
        the repeat bonus reads in prediction); None otherwise.

    Notes
    -----
    Choices where the paper is silent:

    * Users are walked in order of decreasing number of events (the paper orders them at
      random). With few heavy users, as in MovieLens, any other order leaves a long tail
      of narrow mini-batches at the end of every epoch (on ml-latest-small prepared as in
      the paper, half the steps had fewer than half the slots filled), which then pull
      the model towards the last users' sequences; longest first keeps the batch full.
    * Sessions of one event have no (input, target) pair and are skipped in training
      (the paper keeps sessions of at least 3 events); in prediction they are fed.
    * The state the user GRU reads is the session state after the session's last input
      event (the last event is only a target), in training and in prediction alike.
    * The carried user state is the dropped-out one during training, like GRU4Rec's
      hidden state.
    * A session with no known event, of a known user, is scored from the user's stored
      state (the recommendation at the start of a session); of an unknown user, by the
      output bias.
    * With repeat-aware scores, the loss in ``history_`` (and the divergence check) is
      the network's sampled loss, as without them, so that runs compare; the gradient
      is that of the repeat-aware loss.

    References
    ----------
    Quadrana, Karatzoglou, Hidasi, Cremonesi. Personalizing session-based
    recommendations with hierarchical recurrent neural networks. RecSys 2017.

    Examples
    --------
    >>> from sessionrec import HRNNRecommender
    >>> from sessionrec.datasets import make_sessions
    >>> events = make_sessions(n_sessions=200, n_items=50, n_users=20, random_state=0)
    >>> model = HRNNRecommender(session_size=16, user_size=16, n_epochs=2, device="cpu",
    ...                         random_state=0).fit(events)
    >>> model.user_states_.shape
    torch.Size([20, 16])
    >>> model.predict_next(events[events["SessionId"] == 0], k=3).shape
    (1, 3)
    """

    def __init__(self, *, session_size=100, user_size=100, user_propagation="init",
                 repeat_aware=True, loss="top1", batch_size=50, dropout_p_user=0.0,
                 dropout_p_session=0.1, dropout_p_init=0.0, learning_rate=0.1, momentum=0.0,
                 n_sample=0, sample_alpha=0.75, embedding=0, constrained_embedding=False, bpreg=1.0,
                 elu_param=0.5, logq=0.0, final_activation="auto", n_epochs=10,
                 early_stopping=False, validation_fraction=0.1, n_iter_no_change=None,
                 refit=True, callbacks=None, sample_store_size=10_000_000,
                 user_key="UserId", session_key="SessionId",
                 item_key="ItemId", time_key="Time", device="auto", distributed=False,
                 random_state=None,
                 verbose=False):
        self.session_size = session_size
        self.user_size = user_size
        self.user_propagation = user_propagation
        self.repeat_aware = repeat_aware
        self.loss = loss
        self.batch_size = batch_size
        self.dropout_p_user = dropout_p_user
        self.dropout_p_session = dropout_p_session
        self.dropout_p_init = dropout_p_init
        self.learning_rate = learning_rate
        self.momentum = momentum
        self.n_sample = n_sample
        self.sample_alpha = sample_alpha
        self.embedding = embedding
        self.constrained_embedding = constrained_embedding
        self.bpreg = bpreg
        self.elu_param = elu_param
        self.logq = logq
        self.final_activation = final_activation
        self.n_epochs = n_epochs
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.refit = refit
        self.callbacks = callbacks
        self.sample_store_size = sample_store_size
        self.user_key = user_key
        self.session_key = session_key
        self.item_key = item_key
        self.time_key = time_key
        self.device = device
        self.distributed = distributed
        self.random_state = random_state
        self.verbose = verbose

    # -- parameters -----------------------------------------------------------------------

    _parameter_constraints: dict = {
        **SessionRecommender._parameter_constraints,
        **SampledTrainingMixin._training_constraints,
        "session_size": POSITIVE_INT,
        "user_size": POSITIVE_INT,
        "user_propagation": [StrOptions({"init", "all"})],
        "repeat_aware": ["boolean"],
        "dropout_p_user": DROPOUT,
        "dropout_p_session": DROPOUT,
        "dropout_p_init": DROPOUT,
        "user_key": USER_COLUMN,
    }

    # Models saved before repeat-aware scores existed load as the paper's model.
    _LEGACY_PARAMS = {"distributed": False, **SampledTrainingMixin._epoch_legacy,
                      "repeat_aware": False}

    _trainer_name = "HRNN"

    def _build_network(self) -> HRNNNetwork:
        return HRNNNetwork(self.n_items_, int(self.session_size), int(self.user_size),
                           embedding=int(self.embedding),
                           constrained_embedding=bool(self.constrained_embedding),
                           user_propagation=self.user_propagation,
                           repeats=bool(self.repeat_aware))

    # -- training -------------------------------------------------------------------------

    def _fit(self, events: SessionEvents) -> None:
        self._fit_in_epochs(events)
        del self._training_events_
        self.user_states_ = self._final_user_states(events)
        self.user_items_ = (user_item_counts(events, self.n_items_) if self.repeat_aware
                            else None)

    def _final_user_states(self, events: SessionEvents) -> torch.Tensor:
        """Every training user's state after their last session of ``events``: the user
        GRU applied, at each user's last input, to the session state there (as at the
        start of a next session)."""
        device, network = self.device_, self.network_
        states = torch.zeros(len(events.user_labels), int(self.user_size), device=device)
        user_of = events.users[events.session_of_event]
        last_input = np.full(len(events.user_labels), -1, dtype=np.int64)
        np.maximum.at(last_input, user_of[~events.is_last], np.flatnonzero(~events.is_last))
        ending = np.zeros(events.n_events, dtype=bool)
        ending[last_input[last_input >= 0]] = True
        found_users, found_states = [], []

        def observe(at, state, context):
            rows = np.flatnonzero(ending[at])
            if len(rows):
                w, fused, _ = context
                slots = torch.as_tensor(rows, device=device)
                found_users.append(user_of[at[rows]])
                found_states.append(network.user_update(w, state[0][slots], state[1][slots],
                                                        fused))

        for _ in self._walk(events, np.zeros(events.n_events, dtype=bool), network,
                            observe=observe):
            pass
        if found_users:
            states[torch.as_tensor(np.concatenate(found_users), device=device)] = torch.cat(
                found_states)
        return states

    def _user_states(self) -> torch.Tensor:
        """``user_states_``; during a fit (a callback scoring the model between epochs)
        computed from the network as trained so far, once per epoch."""
        if "user_states_" not in vars(self):
            self.user_states_ = self._final_user_states(self._training_events_)
        return self.user_states_

    def _trained_parameters(self) -> list[torch.Tensor]:
        return list(self.network_.parameters())

    def _validation_score(self, events, train, valid) -> float:
        """MRR@20 on the held-out sessions, each user's earlier sessions walked first:
        the walk over all the fit's events from zero user states (the held-out sessions
        are the last ones, so every user's training sessions come before them), ranking
        only the targets of held-out sessions."""
        held_out = np.zeros(events.n_events, dtype=bool)
        held_out[train.n_events:] = True
        score_after = held_out & ~events.is_last
        if not self._fitted_repeats:
            return mrr_of_score_blocks(self._walk(events, score_after, self.network_),
                                       events, self.device_)
        # The users' histories: the walked events alone (no training counts).
        return mrr_of_score_blocks(self._with_repeats(
            events, self._walk(events, score_after, self.network_, score_top=False),
            training=False), events, self.device_)

    def _step_config(self) -> StepConfig:
        return replace(super()._step_config(), dropout_p_user=float(self.dropout_p_user),
                       dropout_p_hidden=float(self.dropout_p_session),
                       dropout_p_init=float(self.dropout_p_init))

    def _train_epochs(self, events: SessionEvents, trainer, n_epochs: int, *, seed=None,
                      name: str | None = None, extra: dict | None = None) -> int:
        network, generator = self._initialised(self._build_network(), seed)
        schedule = user_parallel_schedule(events, int(self.batch_size), longest_first=True)
        # Callbacks may score the model between epochs: the users' states then follow
        # the network as trained so far (_user_states).
        self.network_ = network
        self.user_labels_, self._training_events_ = events.user_labels, events
        vars(self).pop("user_items_", None)  # of the events this run trains on

        def fresh_state(width: int) -> list:
            vars(self).pop("user_states_", None)  # out of date once training goes on
            return network.zero_state(width)[:2]  # training carries no earlier state

        with TrainingRun(self, network, generator, events, schedule) as run:
            if network.repeats:
                run.training.histories = self._user_histories(events)
            run.run(trainer, n_epochs=n_epochs, name=name, extra=extra,
                    fresh_state=fresh_state)
        return generator.initial_seed()

    def _user_histories(self, events: SessionEvents) -> UserHistories:
        """Where each training event's user history lies (repeat-aware training)."""
        device = self.device_
        history = UserHistory(events, device)
        positions = np.arange(events.n_events)
        start, _ = history.through(positions)
        session_start = history.rank[events.offsets[events.session_of_event]]
        by_user = torch.as_tensor(history.by_user, device=device)
        return UserHistories(torch.as_tensor(start, device=device),
                             torch.as_tensor(history.rank, device=device),
                             torch.as_tensor(session_start, device=device),
                             history.items.index_select(0, by_user), self.n_items_)

    # -- inference ------------------------------------------------------------------------

    def _known_users(self, events: SessionEvents) -> np.ndarray:
        """Training-user index of each frame user (-1 if unknown)."""
        return user_codes(self.user_labels_, events, self.user_key)

    def _walk_schedule(self, events, batch_size: int, include_last: bool):
        """The walk's slots: each walks one user's sessions in order."""
        return user_parallel_schedule(events, batch_size, include_last=include_last)

    def _user_resume_rows(self, known: np.ndarray) -> tuple[torch.Tensor, ...]:
        """The state rows a stream of the training users ``known`` (codes) continues
        from: their stored user state, and the session state initialised from it (the
        walk's ``resume``, and a live session's first click)."""
        c = self._user_states()[torch.as_tensor(known, device=self.device_)]
        network = self.network_
        with torch.no_grad():
            hidden = network.session_init(network.views(network.dense), c)
        return hidden, c, hidden

    def _resume_known_users(self, events: SessionEvents):
        """The walk's ``resume``: a known user's first frame session follows their
        training history, so their stream starts from their stored user state and the
        session state initialised from it."""
        known = self._known_users(events)[events.users]

        def resume(positions: np.ndarray):
            k = known[events.session_of_event[positions]]
            has = k >= 0
            if not has.any():
                return has, None
            return has, self._user_resume_rows(k[has])

        return resume

    def _iter_scores(self, events: SessionEvents, score_after: np.ndarray, *,
                     score_top: bool = True, context=None):
        """The users' sessions walked in parallel (:meth:`_walk`), known users continuing
        from their stored state; with repeat-aware scores, the bonus of each user's
        history added (training events included)."""
        repeats = self._fitted_repeats and score_top
        blocks = self._walk(events, score_after, self.network_, context,
                            score_top=score_top and not repeats,
                            resume=self._resume_known_users(events))
        yield from self._with_repeats(events, blocks) if repeats else blocks

    # -- repeat-aware scores --------------------------------------------------------------

    @property
    def _fitted_repeats(self) -> bool:
        """Whether the fitted network scores with the repeat bonus (what it was fitted
        with, whatever ``repeat_aware`` says now; False for a model saved before)."""
        return bool(getattr(self.network_, "repeats", False))

    @property
    def _scores_read_history(self) -> bool:
        """Whether a list depends on the user's history beyond the network state (live
        sessions then score through :meth:`_top_of_states`)."""
        return self._fitted_repeats

    def _product_scores(self) -> bool:
        return not self._fitted_repeats and super()._product_scores()

    @staticmethod
    def _rows_product(rows: torch.Tensor, weights: torch.Tensor, bias: torch.Tensor,
                      fused: bool) -> torch.Tensor:
        """``rows weights + bias``; with the fused kernels (``fused``: the call's one
        choice of backend) each row bit for bit the same whatever the rows computed
        with it (a click alone or in a batch), as the product top-k of the plain
        network."""
        if fused:
            return _kernels.linear(rows, weights, bias)
        return torch.addmm(bias, rows, weights)

    def _user_item_counts(self):
        """``user_items_``; during a fit (a callback scoring the model between epochs)
        computed from the fit's events."""
        if "user_items_" not in vars(self):
            self.user_items_ = user_item_counts(self._training_events_, self.n_items_)
        return self.user_items_

    def _repeat_scores(self, history: UserHistory, users: np.ndarray,
                       positions: np.ndarray | None, top: torch.Tensor, fused: bool,
                       sessions: np.ndarray | None = None) -> torch.Tensor:
        """Every item's score after each position (or, with ``sessions``, before each
        session's first event): the network's, plus the repeat bonus from the user's
        training counts (``users``: training codes, -1 for none) and frame history."""
        network, device = self.network_, self.device_
        matrix = network.scoring_matrix()
        w = network.views(network.dense)
        with torch.no_grad():
            scores = self._rows_product(top, matrix[:-1], matrix[-1], fused)
            gates = self._rows_product(top, w["w_rep"], w["b_rep"], fused)
        counts = self._user_item_counts() if (users >= 0).any() else None
        total = training_counts(counts, users, self.n_items_, dtype=torch.float32,
                                device=device)
        now = torch.zeros_like(total)
        if sessions is None:
            history.add(total, *history.through(positions))
            history.add_session(now, positions)
        else:
            history.add(total, *history.before(sessions))
        return add_repeat_bonus_(scores, gates, total.sub_(now), now)

    def _with_repeats(self, events: SessionEvents, blocks, *, training: bool = True):
        """``(positions, scores)`` blocks from the walk's ``(positions, top)`` blocks,
        the user's history from the frame and (``training``) the training counts."""
        history = UserHistory(events, self.device_)
        users = (self._known_users(events)[events.users] if training
                 else np.full(events.n_sessions, -1))
        fused = _kernels.fused_for(self.device_)  # the walk's one choice of backend
        # A chunk holds three score-sized buffers (scores, counts of the history and of
        # the session): a third of the rows of the walk's blocks keeps to its memory.
        step = max(1, rows_per_block(self.n_items_, self.device_) // 3)
        for positions, top in blocks:
            for at in range(0, len(positions), step):
                chunk = positions[at:at + step]
                yield chunk, self._repeat_scores(
                    history, users[events.session_of_event[chunk]], chunk,
                    top[at:at + step], fused)

    def _top_of_states(self, events: SessionEvents, positions: np.ndarray,
                       top: torch.Tensor, k: int, exclude=None):
        """The ``k`` best items after ``positions`` of ``events`` given the walk's top
        states there (a live session's click), as :meth:`predict_next` selects them."""
        scores = self._repeat_scores(UserHistory(events, self.device_),
                                     self._known_users(events)[
                                         events.users[events.session_of_event[positions]]],
                                     positions, top, _kernels.fused_for(self.device_))
        return top_of_scores(scores, k, exclude)

    def _empty_history_scores(self, events, sessions) -> torch.Tensor:
        network = self.network_
        known = self._known_users(events)[events.users[sessions]]
        hidden = torch.zeros(len(sessions), int(self.session_size), device=self.device_)
        has = np.flatnonzero(known >= 0)
        with torch.no_grad():
            if len(has):
                c = self._user_states()[torch.as_tensor(known[has], device=self.device_)]
                hidden[torch.as_tensor(has, device=self.device_)] = network.session_init(
                    network.views(network.dense), c)
            if self._fitted_repeats:
                return self._repeat_scores(UserHistory(events, self.device_), known, None,
                                           hidden, _kernels.fused_for(self.device_),
                                           sessions=sessions)
            scores = network.score_all(hidden)
        # Unknown users: the output bias alone (a zero state), as GRU4Rec.
        return scores

    # -- persistence ----------------------------------------------------------------------

    def _get_state(self) -> dict:
        labels = plain_labels(self.user_labels_, "user")
        state = {"network": dict(self.network_.state_dict()), "history": self.history_,
                 "user_states": self.user_states_, "user_labels": labels,
                 "selection": self._selection_state()}
        if getattr(self, "user_items_", None) is not None:
            state.update(csr_state(self.user_items_, "user_"))
        return state

    def _set_state(self, state: dict) -> None:
        self._set_selection_state(state)
        network = self._build_network()
        network.load_state_dict(state["network"])
        self.network_ = network
        self.history_ = state["history"]
        self.user_states_ = state["user_states"]
        self.user_labels_ = pd.Index(state["user_labels"])
        self.user_items_ = (csr_from_state(state, self.n_items_, "user_")
                            if network.repeats else None)
