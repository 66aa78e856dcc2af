"""GRU4Rec: session-based recommendations with a recurrent network."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from sklearn.utils._param_validation import StrOptions

from .._base import SessionRecommender
from .._batching import session_parallel_schedule
from .._events import SessionEvents
from .._validation import DROPOUT, check_int_tuple, int_tuple_constraint
from ..nn._cuda_graph import ReplayedStep, StaticMasks
from ..nn._fused_step import FusedGRU4RecStep
from ..nn._fused_walk import FusedGRUWalk, session_runs
from ..nn._gru4rec_network import GRU4RecNetwork
from ..nn._interface import TrainBatch
from ..nn._losses import StepConfig
from ._epochs import document_epochs
from ._recurrent import (
    SampledTrainingMixin,
    TrainingRun,
    counted_ranks,
    gathered_state_rows,
)

__all__ = ["GRU4RecRecommender"]


@document_epochs
class GRU4RecRecommender(SampledTrainingMixin, SessionRecommender):
    """GRU4Rec: a GRU over the session's items, trained with sampled ranking losses.

    The model of Hidasi et al. (ICLR 2016) with the improvements of the official
    implementation (Hidasi & Karatzoglou, CIKM 2018; the official PyTorch port): extra
    negative samples drawn by popularity, the cross-entropy and BPR-max losses, logQ
    correction, shared input/output embeddings and momentum. Defaults are the official
    port's.

    Training (Hidasi et al., section 3.1): sessions, ordered by start time, are walked in
    ``batch_size`` parallel slots (session-parallel mini-batches); a slot's hidden state is
    reset to zero when a new session takes it, and detached every step (no
    back-propagation through time). At each step the target items of all slots are each
    other's negatives, and ``n_sample`` extra negatives shared by the batch are drawn with
    probability proportional to support to the power ``sample_alpha``. Only the scores of
    the targets and samples are computed, a ``B x (B + n_sample)`` matrix. Updates use Adagrad with
    momentum; the item tables get sparse row updates (rows repeated in a batch merged).

    Prediction and evaluation run the same network session-parallel over the given
    sessions, from a zero state, and score the whole catalogue in blocks on the device.

    Parameters
    ----------
    layers : int or tuple of int, default=(100,)
        Sizes of the stacked GRU layers (paper: one layer is usually best).
    loss : {"cross-entropy", "bpr-max", "top1-max", "top1", "bpr"}, default="cross-entropy"
        Training loss. ``top1`` and ``bpr`` are the ICLR 2016 paper's; ``top1-max``,
        ``bpr-max`` (CIKM 2018) and ``cross-entropy`` are the official implementation's.
        See :mod:`sessionrec.nn._losses` for the exact definitions.
    batch_size : int, default=64
        Number of parallel session slots (official port: 64; Theano original: 32).
    dropout_p_embed : float in [0, 1), default=0.0
        Dropout on the input embedding (constrained or separate; no effect with one-hot
        input, which has no embedding vector).
    dropout_p_hidden : float in [0, 1), default=0.0
        Dropout on the output of every GRU layer. As in the official code, the dropped-out
        state is the one carried to the next step.
    learning_rate : float, default=0.05
        Adagrad learning rate.
    momentum : float in [0, 1), default=0.0
        Heavy-ball momentum on top of the Adagrad step.
    n_sample : int, default=2048
        Extra negatives per mini-batch, shared by all slots; 0 = in-batch negatives only
        (the ICLR 2016 paper).
    sample_alpha : float in [0, 1], default=0.5
        Negatives are drawn with probability proportional to support^sample_alpha.
    embedding : int, default=0
        Size of a separate input embedding (used when ``constrained_embedding=False``);
        0 = one-hot input to the first GRU layer, as in the ICLR 2016 paper.
    constrained_embedding : bool, default=True
        Use the output weight matrix as the input embedding (official default); then
        ``embedding`` is ignored.
    reset_after : {"auto", True, False}, default="auto"
        Where the reset gate ``r`` acts in the GRU's candidate state.

        * ``True``: the official PyTorch port's GRU (``torch.nn.GRUCell``; Keras's
          ``reset_after``), ``tanh(x W + b + r * (h U + b_u))``. As in the port, layers
          fed by a vector have the recurrent bias ``b_u`` and the one-hot input layer has
          none.
        * ``False``: the ICLR 2016 paper's equation 4 and the Theano original,
          ``tanh(x W + b + (r * h) U)``.
        * ``"auto"``: ``True`` for the one-hot input layer (the port's GRU embedding),
          ``False`` for layers fed by a vector. On rsc15-100k (6 seeds, see
          ``docs/gru4rec.md``) the paper's GRU scored MRR@20 0.005 higher with the
          official rsc15 configuration, and the one-hot input with the paper's GRU
          landed in a worse solution from 1 start in 6 with bpr-max, which the port's
          never did.
    bpreg : float, default=1.0
        Score regularisation weight of bpr-max.
    elu_param : float, default=0.5
        Alpha of the ELU applied to the scores by bpr-max (0 = none), as in the official
        code (``final_activation="auto"``) or with ``final_activation="elu"``.
    logq : float, default=0.0
        Strength of the logQ correction of the cross-entropy loss under sampling.
    final_activation : {"auto", "linear", "tanh", "elu"}, default="auto"
        Activation of the scores inside the training loss. ``"auto"``: ELU(elu_param)
        for bpr-max when ``elu_param > 0`` (official), linear otherwise. ``"tanh"`` is the
        ICLR 2016 paper's output activation. Monotonic, so rankings never depend on it.
    n_epochs : int, default=10
        Passes over the training sessions.
    {epoch_parameters}
    sample_store_size : int, default=10_000_000
        Negative samples generated at once and kept on the device (official default).
    session_key : str, default="SessionId"
        Column of session labels.
    item_key : str, default="ItemId"
        Column of item labels.
    time_key : str, default="Time"
        Column of event times.
    device : str, default="auto"
        ``"auto"`` trains on CUDA when available, else on the CPU; or ``"cpu"``, ``"cuda"``.
    {distributed}
    random_state : int or None, default=None
        Seed of the initialisation, sampling and dropout; with an int, training on the CPU
        is repeatable bit for bit.
    {epoch_verbose}

    Attributes
    ----------
    network_ : GRU4RecNetwork
        The trained network (a ``torch.nn.Module`` on ``device_``).
    {epoch_attributes}
    item_index_ : ItemIndex
    n_items_ : int
    device_ : torch.device

    Notes
    -----
    Choices where the references differ, and why:

    * The GRU of each layer (``reset_after``): by default the official port's for the
      one-hot input layer and the paper's for layers fed by a vector, the pairing that
      measured best on rsc15-100k; either reference's GRU throughout on request.
    * Models pickled or saved before ``reset_after`` existed load with
      ``reset_after=False``, the formulation they were trained with.
    * Weights are initialised uniformly in +-sqrt(6 / (fan_in + fan_out)) per gate block,
      biases at zero.
    * The score of an unknown session (no known item) is the output bias.

    The HRNN paper's *RNN Concat* baseline (all of a user's sessions concatenated into
    one) is this model behind :class:`~sessionrec.preprocessing.ConcatenateUserSessions`:
    ``make_pipeline(ConcatenateUserSessions(), GRU4RecRecommender(...))``, evaluated with
    the users' earlier events as history, ``evaluate(model, test, history=train)``, so
    that each test session continues its user's sequence.

    References
    ----------
    Hidasi, Karatzoglou, Baltrunas, Tikk. Session-based recommendations with recurrent
    neural networks. ICLR 2016.
    Hidasi, Karatzoglou. Recurrent neural networks with top-k gains for session-based
    recommendations. CIKM 2018.

    Examples
    --------
    >>> from sessionrec import GRU4RecRecommender
    >>> from sessionrec.datasets import make_sessions
    >>> events = make_sessions(n_sessions=200, n_items=50, random_state=0)
    >>> model = GRU4RecRecommender(layers=(16,), n_epochs=2, n_sample=16, batch_size=16,
    ...                            device="cpu", random_state=0).fit(events)
    >>> live = events[events["SessionId"] == 0]
    >>> model.predict_next(live, k=3).shape
    (1, 3)
    >>> len(model.history_)
    2
    """

    _parameter_constraints: dict = {
        **SessionRecommender._parameter_constraints,
        **SampledTrainingMixin._training_constraints,
        "layers": [int_tuple_constraint(1)],
        "dropout_p_embed": DROPOUT,
        "dropout_p_hidden": DROPOUT,
        "reset_after": [StrOptions({"auto"}), "boolean"],
    }

    _trainer_name = "GRU4Rec"

    # Pickles and saved files from before ``reset_after`` existed were trained with the
    # paper's GRU; they load with that value (see SessionRecommender._LEGACY_PARAMS).
    _LEGACY_PARAMS = {"distributed": False, "reset_after": False,
                      **SampledTrainingMixin._epoch_legacy}

    def __init__(self, *, layers=(100,), loss="cross-entropy", batch_size=64,
                 dropout_p_embed=0.0, dropout_p_hidden=0.0, learning_rate=0.05, momentum=0.0,
                 n_sample=2048, sample_alpha=0.5, embedding=0, constrained_embedding=True,
                 reset_after="auto", bpreg=1.0, elu_param=0.5, logq=0.0,
                 final_activation="auto", n_epochs=10, early_stopping=False,
                 validation_fraction=0.1, n_iter_no_change=None, refit=True,
                 callbacks=None, sample_store_size=10_000_000,
                 session_key="SessionId", item_key="ItemId", time_key="Time",
                 device="auto", distributed=False, random_state=None, verbose=False):
        self.layers = layers
        self.loss = loss
        self.batch_size = batch_size
        self.dropout_p_embed = dropout_p_embed
        self.dropout_p_hidden = dropout_p_hidden
        self.learning_rate = learning_rate
        self.momentum = momentum
        self.n_sample = n_sample
        self.sample_alpha = sample_alpha
        self.embedding = embedding
        self.constrained_embedding = constrained_embedding
        self.reset_after = reset_after
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
        self.session_key = session_key
        self.item_key = item_key
        self.time_key = time_key
        self.device = device
        self.distributed = distributed
        self.random_state = random_state
        self.verbose = verbose

    # -- parameters -----------------------------------------------------------------------

    def _step_config(self) -> StepConfig:
        return replace(super()._step_config(), dropout_p_embed=float(self.dropout_p_embed),
                       dropout_p_hidden=float(self.dropout_p_hidden))

    def _build_network(self) -> GRU4RecNetwork:
        return GRU4RecNetwork(self.n_items_, check_int_tuple("layers", self.layers),
                              embedding=int(self.embedding),
                              constrained_embedding=bool(self.constrained_embedding),
                              reset_after=self.reset_after)

    # -- training -------------------------------------------------------------------------

    def _fit(self, events: SessionEvents) -> None:
        self._fit_in_epochs(events)

    def _trained_parameters(self) -> list[torch.Tensor]:
        return list(self.network_.parameters())

    def _train_epochs(self, events: SessionEvents, trainer, n_epochs: int, *, seed=None,
                      name: str | None = None, extra: dict | None = None) -> int:
        """The shared fit skeleton (:class:`TrainingRun`), with GRU4Rec's two faster
        paths for its mini-batches: a replayed CUDA graph on the GPU, and on the CPU with
        the fused kernels one C call per step (:class:`FusedGRU4RecStep`) for the linear
        cross-entropy; both train exactly as ``network.train_step``."""
        network, generator = self._initialised(self._build_network(), seed)
        schedule = session_parallel_schedule(events, int(self.batch_size))
        with TrainingRun(self, network, generator, events, schedule) as run:
            # A data-parallel run merges gradients between the backward pass and the
            # update, which the replayed graph and the one-call step hold together.
            whole_steps = run.reducer is None
            replay = _static_step(network, run, schedule) if whole_steps else None
            fused = None
            if (whole_steps and replay is None and schedule.n_steps > 0
                    and FusedGRU4RecStep.applies(network, run.training, run.config)):
                fused = FusedGRU4RecStep(network, run.training,
                                         int(run.schedule.widths().max()),
                                         run.sampler, run.score_shift.batch,
                                         run.score_shift.sample, run.inputs, run.targets,
                                         run.keep)

            def step(start: int, stop: int, hidden: list) -> torch.Tensor | float:
                if replay is not None and replay.accepts(stop - start, hidden):
                    return replay(run, start, stop)
                if fused is not None and fused.accepts(stop - start):
                    return fused(start, stop, hidden)
                return run.step(start, stop, hidden)

            def fresh_state(width: int) -> list:
                if replay is not None and replay.width == width:
                    return replay.fresh_hidden()
                return network.zero_state(width)

            self.network_ = network  # callbacks may score the model between epochs
            try:
                run.run(trainer, n_epochs=n_epochs, name=name, extra=extra, step=step,
                        fresh_state=fresh_state)
            finally:
                if replay is not None:
                    replay.step.close()
        return generator.initial_seed()

    # -- prediction -----------------------------------------------------------------------

    def _iter_scores(self, events: SessionEvents, score_after: np.ndarray, *,
                     score_top: bool = True, context=None):
        """Session-parallel scores (:meth:`_walk`); with ``score_top=False`` the top
        layer's states instead (for :meth:`_iter_ranks`, which passes the walk's
        ``context``)."""
        yield from self._walk(events, score_after, self.network_, context,
                              score_top=score_top)

    def _fused_ranks(self, events: SessionEvents, ties: str, context=None):
        """Ranks counted from the product of the top states and the output matrix
        (:meth:`_iter_ranks`). Where the walk gathers its gate inputs from a per-item
        table, the C kernels compute the states too, once per distinct session prefix
        (:class:`~sessionrec.nn._fused_walk.FusedGRUWalk`: the Python walk's states, bit
        for bit), and each state's scores are counted for every target that follows it."""
        network = self.network_
        context = network.walk_context(len(events.items), feeds_last=False)
        _, gates, _ = context
        if gates is None:
            yield from super()._fused_ranks(events, ties, context)
            return
        matrix = network.scoring_matrix()
        walk = FusedGRUWalk(network, gates)
        items = torch.as_tensor(events.items, dtype=torch.int64)
        offsets = torch.as_tensor(events.offsets, dtype=torch.int64)
        fed = np.flatnonzero(~events.is_last)  # every event but a session's last
        for first, stop in session_runs(events.offsets,
                                        gathered_state_rows(network.layers[-1])):
            node_of, states = walk.states(items, offsets, first, stop)
            positions = fed[np.searchsorted(fed, events.offsets[first]):
                            np.searchsorted(fed, events.offsets[stop])]
            yield positions, counted_ranks(states, matrix, items, positions, ties,
                                           rows=node_of)

    def _empty_history_scores(self, events, sessions) -> torch.Tensor:
        return self.network_.out[:, -1].detach()

    # -- persistence ----------------------------------------------------------------------

    def _get_state(self) -> dict:
        return {"network": dict(self.network_.state_dict()), "history": self.history_,
                "selection": self._selection_state()}

    def _set_state(self, state: dict) -> None:
        self._set_selection_state(state)
        network = self._build_network()
        network.load_state_dict(state["network"])
        self.network_ = network
        self.history_ = state["history"]


# Use the static-buffer step (a replayed CUDA graph) on CUDA devices. The tests also force
# it on the CPU, where it runs uncaptured, to check it trains exactly like the plain step.
_STATIC_STEP = {"cuda": True, "cpu": False}


class _StaticStep:
    """Full-width training steps through static buffers (see ``nn._cuda_graph``)."""

    def __init__(self, network, run, width):
        device = run.device
        self.width = width
        self.sampler = run.sampler
        self.hidden = network.zero_state(width)
        self.keep = torch.ones(width, 1, device=device)
        self.items = torch.zeros(width, dtype=torch.long, device=device)
        self.targets = torch.zeros(width, dtype=torch.long, device=device)
        self.samples = (None if run.sampler is None else
                        torch.zeros(run.sampler.n_sample, dtype=torch.long, device=device))
        masks = []
        state = run.training
        if state.embed_masks is not None:
            masks.append(StaticMasks(state.embed_masks, width))
            state = replace(state, embed_masks=masks[-1])
        if state.hidden_masks is not None:
            hidden_masks = [StaticMasks(m, width) for m in state.hidden_masks]
            masks += hidden_masks
            state = replace(state, hidden_masks=hidden_masks)
        self.masks = masks

        def captured():
            # GRU4Rec reads the codes through ``keep`` alone: no host-side codes here.
            batch = TrainBatch(self.items, self.targets, self.samples,
                               run.score_shift(self.targets, self.samples), None, self.keep)
            return network.train_step(batch, self.hidden, state, hidden_inplace=True)

        self.step = ReplayedStep(captured, device)

    def accepts(self, width: int, hidden: list) -> bool:
        return width == self.width and hidden[0] is self.hidden[0]

    def fresh_hidden(self) -> list:
        for h in self.hidden:
            h.zero_()
        return list(self.hidden)

    def __call__(self, run, start: int, stop: int) -> torch.Tensor:
        self.keep.copy_(run.keep[start:stop])
        self.items.copy_(run.inputs[start:stop])
        self.targets.copy_(run.targets[start:stop])
        if self.sampler is not None:
            self.samples.copy_(self.sampler.next())
        for mask in self.masks:
            mask.refresh()
        return self.step()


def _static_step(network, run, schedule):
    if not _STATIC_STEP.get(run.device.type, False) or schedule.n_steps == 0:
        return None
    return _StaticStep(network, run, int(schedule.widths()[0]))
