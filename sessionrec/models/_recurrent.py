"""What the recurrent recommenders (GRU4Rec, HRNN, p-RNN) share beyond ``sessionrec.nn``.

The hyperparameters of sampled training (loss, negatives, optimiser, epochs) have the same
names, meanings and checks in every recurrent model; :class:`SampledTrainingMixin` holds
their validation and turns them into the training objects, so each model states only its
architecture. :class:`TrainingRun` is the fit skeleton they share: a network of the
recurrent network interface (:mod:`sessionrec.nn._interface`) trained on a slot-parallel
schedule, epoch by epoch, through the :class:`~sessionrec._training.Trainer`; and
:meth:`SampledTrainingMixin._walk` is the evaluation walk.
"""

from __future__ import annotations

from numbers import Real

import numpy as np
import torch
from sklearn.utils._param_validation import Interval, StrOptions

from .._base import rows_per_block
from .._batching import session_parallel_schedule
from .._native import kernels as _kernels
from .._topk import history_exclusions
from .._training import parallel_epoch, parallel_sizes
from .._validation import (
    NON_NEGATIVE_INT,
    NON_NEGATIVE_REAL,
    POSITIVE_INT,
    POSITIVE_REAL,
    RANDOM_STATE,
    init_generator,
    torch_generator,
)
from ..evaluation import ranks_from_counts
from ..nn._distributed import RankReducer, broadcast_seed, rank_share
from ..nn._interface import (
    CONTINUE,
    NEW_USER,
    OutputTableScores,
    TrainBatch,
    keep_rows,
    start_codes,
)
from ..nn._losses import FINAL_ACTIVATIONS, LOSS_FLOORS, LOSSES, StepConfig
from ..nn._optim import AdagradMomentum
from ..nn._sampling import NegativeSampler
from ._epochs import EpochTrainingMixin

__all__ = ["SampledTrainingMixin", "TrainingRun", "LogQShift", "EVAL_BATCH",
           "ranks_from_top_states", "gathered_state_rows", "counted_ranks"]

# Slots of a session-parallel evaluation batch: as many rows as one scoring block holds,
# within these bounds.
EVAL_BATCH = (64, 8192)

# Most state values ranks_from_top_states gathers before counting: 16 MiB in float32
# (about 42k states of 100 units; product_ranks copies the distinct ones once more).
_GATHERED_STATE_VALUES = 2**22


def gathered_state_rows(width: int) -> int:
    """How many states of ``width`` values :func:`ranks_from_top_states` counts at once."""
    return max(1, _GATHERED_STATE_VALUES // width)


def counted_ranks(states: torch.Tensor, matrix: torch.Tensor, items: torch.Tensor,
                  positions: np.ndarray, ties: str, rows: torch.Tensor | None = None
                  ) -> torch.Tensor:
    """The ranks of the items after ``positions`` (``items``: every event's item), counted
    by ``_kernels.product_ranks`` from the scores ``[states | 1] matrix``: of state ``i``
    for the ``i``-th position, or of state ``rows[i]``."""
    targets = items.index_select(0, torch.as_tensor(positions + 1))
    at_least, above, target_scores = _kernels.product_ranks(
        states, matrix, targets, ties != "conservative", rows=rows)
    return ranks_from_counts(at_least, above, target_scores, matrix.shape[1], ties)


def ranks_from_top_states(blocks, events, matrix: torch.Tensor, ties: str):
    """``(positions, ranks)`` blocks from ``(positions, top states)`` blocks, counted
    straight from the product of the states ``h`` and ``matrix`` (``[h | 1] matrix`` are
    the scores; ``(H + 1) x n_items``, the output weights and their biases in the last
    row) by ``_kernels.product_ranks``: 32 rows at a time while their scores are in the
    cache, never written out. The fused CPU kernels' evaluation path of the models that
    score with such a product (GRU4Rec, HRNN); same definitions as
    :func:`~sessionrec.evaluation.ranks_from_scores`.

    The walk's blocks are copied into one buffer (:func:`gathered_state_rows` rows, or
    one block) and counted together, so that states equal bit for bit anywhere in it are
    scored once: every session that starts with the same item has the same first state
    (30% of rsc15-100k's test targets repeat an earlier state).
    """
    items = torch.as_tensor(events.items)
    buffer, positions, filled = None, [], 0

    def flush():
        nonlocal positions, filled
        at = np.concatenate(positions)
        ranks = counted_ranks(buffer[:filled], matrix, items, at, ties)
        positions, filled = [], 0
        return at, ranks

    for block_positions, top in blocks:
        if buffer is None:
            rows = max(gathered_state_rows(top.shape[1]), top.shape[0])
            buffer = torch.empty(min(rows, len(events.items)), top.shape[1])
        if filled + top.shape[0] > buffer.shape[0]:
            yield flush()
            if top.shape[0] > buffer.shape[0]:
                buffer = torch.empty(top.shape[0], top.shape[1])
        # Copied now: the walk updates its states in place at its next step.
        buffer[filled:filled + top.shape[0]].copy_(top)
        positions.append(block_positions)
        filled += top.shape[0]
    if filled:
        yield flush()


class LogQShift:
    """The per-column score shift of the logQ correction (cross-entropy with ``logq``).

    In-batch targets occur by support and samples by support^alpha, so a column's score
    is shifted by ``-logq * log(support)`` (``batch``, per item) or that times alpha
    (``sample``); both None without the correction.
    """

    def __init__(self, batch: torch.Tensor | None, sample: torch.Tensor | None):
        self.batch, self.sample = batch, sample

    def __call__(self, targets: torch.Tensor, samples: torch.Tensor | None
                 ) -> torch.Tensor | None:
        """The shifts of the columns ``targets`` then ``samples`` (None: no shift)."""
        if self.batch is None:
            return None
        # index_select: several times cheaper than advanced indexing on the CPU.
        batch = self.batch.index_select(0, targets)
        if samples is None:
            return batch
        return torch.cat([batch, self.sample.index_select(0, samples)])


class TrainingRun:
    """One training run of a recurrent network on a slot-parallel schedule.

    Prepares, once, the schedule's inputs, targets and start codes on the device, the
    model's negative sampler and logQ shift, and the network's training state
    (``start_training`` with the model's optimiser: the run's one choice of backend);
    then :meth:`run` trains epochs through a :class:`~sessionrec._training.Trainer`, one
    ``network.train_step`` per mini-batch. A ``with`` block (or :meth:`close`) gives the
    item tables their own storage back, also when training fails.

    Parameters
    ----------
    model : SampledTrainingMixin
        Its sampling, loss, optimiser, ``batch_size`` and ``device_``.
    network : nn.Module
        A network of the recurrent network interface, initialised on the device.
    generator : torch.Generator
        The run's generator of samples and dropout.
    events : SessionEvents
    schedule : ParallelSchedule
        A session-parallel or (with ``user_start``) user-parallel schedule of ``events``.

    Notes
    -----
    With the model's ``distributed=True`` the run is this rank's part of a data-parallel
    run (:mod:`sessionrec.nn._distributed`): it trains its share of the schedule's slots
    (:func:`~sessionrec.nn._distributed.rank_share`), draws the same negative samples as
    the other ranks (the model's generator, seeded alike everywhere) and its own dropout
    masks (a generator of its own), and its optimiser merges every gradient over the
    ranks before stepping. The epoch's records count the pairs of all ranks.
    """

    def __init__(self, model, network, generator: torch.Generator, events, schedule):
        device = model.device_
        self.reducer = model._rank_reducer()
        self.sizes = parallel_sizes(schedule)
        masks_generator = generator
        if self.reducer is not None:
            schedule = rank_share(schedule, self.reducer.rank, self.reducer.world_size)
            # Each rank's own first mini-batch, for the loss per pair at the start.
            self.sizes["first_pairs"] = parallel_sizes(schedule)["first_pairs"]
            masks_generator = torch.Generator(device=generator.device).manual_seed(
                generator.initial_seed() + 1 + self.reducer.rank)
        self.network, self.schedule, self.device = network, schedule, device
        items = torch.as_tensor(events.items, device=device)
        self.positions = positions = torch.as_tensor(schedule.positions, device=device)
        self.inputs, self.targets = items[positions], items[positions + 1]
        self.starts = start_codes(schedule.session_start, schedule.user_start)
        self.keep = keep_rows(self.starts, device)
        self.sampler, self.score_shift = model._negatives(generator)
        self.config = model._step_config()
        self.training = network.start_training(model._optimizer(self.reducer), self.config,
                                               int(model.batch_size), masks_generator)

    def batch(self, start: int, stop: int) -> TrainBatch:
        """The mini-batch of schedule entries ``start:stop``, with fresh samples."""
        samples = self.sampler.next() if self.sampler is not None else None
        targets = self.targets[start:stop]
        return TrainBatch(self.inputs[start:stop], targets, samples,
                          self.score_shift(targets, samples), self.starts[start:stop],
                          self.keep[start:stop], self.positions[start:stop])

    def step(self, start: int, stop: int, state: list) -> torch.Tensor:
        """One training step on entries ``start:stop``; returns the summed loss."""
        return self.network.train_step(self.batch(start, stop), state, self.training)

    def idle_step(self, fresh_state) -> torch.Tensor:
        """A data-parallel rank's step when none of its slots is left (the end of an
        epoch): it meets the other ranks' collectives with nothing to add, and draws the
        step's samples as they do. A one-slot batch runs through the network (so every
        collective comes in the same order) while the reducer drops what it gives;
        ``fresh_state(1)`` is its state."""
        device = self.device
        item = torch.zeros(1, dtype=torch.long, device=device)
        samples = self.sampler.next() if self.sampler is not None else None
        batch = TrainBatch(item, item, samples, self.score_shift(item, samples),
                           start_codes(np.ones(1, bool), np.ones(1, bool)),
                           torch.zeros(1, 1, device=device), item)
        self.reducer.active = False
        try:
            self.network.train_step(batch, fresh_state(1), self.training)
        finally:
            self.reducer.active = True
        return torch.zeros((), device=device)

    def run(self, trainer, *, n_epochs: int, name: str | None = None,
            extra: dict | None = None, step=None, fresh_state=None) -> None:
        """Train ``n_epochs`` epochs (``trainer.run``). ``step(start, stop, state)``
        replaces :meth:`step` (a faster path for some mini-batches), ``fresh_state(width)``
        the network's ``zero_state`` at the start of each epoch."""
        step = step or self.step
        fresh_state = fresh_state or self.network.zero_state
        if self.reducer is not None:
            one_step = step

            def step(start: int, stop: int, state: list):
                if stop > start:
                    return one_step(start, stop, state)
                return self.idle_step(fresh_state)

        epoch = parallel_epoch(step, self.schedule, fresh_state, self.device)
        trainer.run(epoch, n_epochs=n_epochs, name=name, extra=extra,
                    reduce=None if self.reducer is None else self.reducer.sum_float,
                    **self.sizes)

    def close(self) -> None:
        self.training.finish()

    def __enter__(self) -> TrainingRun:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class SampledTrainingMixin(EpochTrainingMixin):
    """Validation and set-up of the shared training hyperparameters.

    Expects the attributes ``loss``, ``batch_size``, ``learning_rate``, ``momentum``,
    ``n_sample``, ``sample_alpha``, ``embedding``, ``constrained_embedding``, ``bpreg``,
    ``elu_param``, ``logq``, ``final_activation``, ``n_epochs``, ``sample_store_size``
    and ``random_state``, and a fitted ``item_index_`` / ``device_``.
    """

    # Trained on (item, next item) pairs: fit refuses a frame without any.
    _LEARNS_FROM_PAIRS = True

    # The valid values of the shared training parameters, for the models'
    # _parameter_constraints (a model without a choice of item input leaves out
    # "embedding" and "constrained_embedding").
    _training_constraints: dict = {
        "loss": [StrOptions(set(LOSSES))],
        "batch_size": POSITIVE_INT,
        "learning_rate": POSITIVE_REAL,
        "momentum": [Interval(Real, 0, 1, closed="left")],
        "n_sample": NON_NEGATIVE_INT,
        "sample_alpha": [Interval(Real, 0, 1, closed="both")],
        "embedding": NON_NEGATIVE_INT,
        "constrained_embedding": ["boolean"],
        "bpreg": NON_NEGATIVE_REAL,
        "elu_param": NON_NEGATIVE_REAL,
        "logq": NON_NEGATIVE_REAL,
        "final_activation": [StrOptions({"auto", *FINAL_ACTIVATIONS})],
        "n_epochs": POSITIVE_INT,
        "sample_store_size": POSITIVE_INT,
        "random_state": RANDOM_STATE,
        "distributed": ["boolean"],
        **EpochTrainingMixin._epoch_constraints,
    }

    def _rank_reducer(self) -> RankReducer | None:
        """The gradient merger of a data-parallel fit (``distributed``), else None."""
        return RankReducer(self.device_) if getattr(self, "distributed", False) else None

    def _loss_floor(self) -> float:
        return LOSS_FLOORS.get(self.loss, 0.0)

    def _divergence_advice(self) -> str:
        """What to change when training diverges, for the messages of the trainer."""
        advice = (f"Lower learning_rate (now {self.learning_rate}) or momentum (now "
                  f"{self.momentum})")
        if self.loss == "bpr-max":
            return (f"{advice}, or raise bpreg (now {self.bpreg}), the score regularisation "
                    "of bpr-max.")
        return f"{advice}, or use a loss with score regularisation (loss='bpr-max')."

    def _activation(self) -> str:
        """The final activation inside the loss: ``"auto"`` is ELU for bpr-max (official)."""
        if self.final_activation != "auto":
            return self.final_activation
        return "elu" if self.loss == "bpr-max" and self.elu_param > 0 else "linear"

    def _initialised(self, network: torch.nn.Module, seed: int | None = None):
        """``network`` initialised on the CPU (the same weights on any device), moved to
        the device, and the generator of the run's sampling and dropout.

        ``seed`` (the ``initial_seed()`` of an earlier call's generator) repeats that
        call's initial weights and generator; by default they come from ``random_state``.
        """
        _, generator = torch_generator(self.random_state if seed is None else seed,
                                       self.device_)
        if getattr(self, "distributed", False):  # every rank starts from rank 0's seed
            generator.manual_seed(broadcast_seed(generator.initial_seed(), self.device_))
        network.reset_parameters(init_generator(generator))
        network.to(self.device_)
        return network, generator

    def _step_config(self) -> StepConfig:
        """The loss's settings of a training step (a model adds its step's dropouts)."""
        return StepConfig(loss=self.loss, activation=self._activation(),
                          bpreg=float(self.bpreg), elu_param=float(self.elu_param))

    def _optimizer(self, reducer: RankReducer | None = None) -> AdagradMomentum:
        # The fit's one choice of backend: every table and step of the run reads it here;
        # ``reducer`` merges the gradients of a data-parallel run.
        return AdagradMomentum(float(self.learning_rate), float(self.momentum),
                               fused=_kernels.fused_for(self.device_), reducer=reducer)

    def _negatives(self, generator: torch.Generator):
        """The negative sampler (None for in-batch only) and the logQ shift function.

        The shift (a :class:`LogQShift`) maps ``(targets, samples)`` to the per-column
        score shift of the logQ correction, or None.
        """
        device, support = self.device_, self.item_index_.support
        sampler = None
        if self.n_sample > 0:
            sampler = NegativeSampler(support, float(self.sample_alpha), int(self.n_sample),
                                      int(self.sample_store_size), device, generator)
        if not (self.loss == "cross-entropy" and self.logq > 0):
            return sampler, LogQShift(None, None)
        log_support = torch.log(torch.as_tensor(support, dtype=torch.float32, device=device))
        shift_batch = -float(self.logq) * log_support
        return sampler, LogQShift(shift_batch, shift_batch * float(self.sample_alpha))

    def _walk_schedule(self, events, batch_size: int, include_last: bool):
        """The slots of an evaluation walk: sessions, longest first (HRNN: users)."""
        return session_parallel_schedule(events, batch_size, include_last=include_last,
                                         longest_first=True)

    def _walk(self, events, score_after, network, context=None, *, score_top: bool = True,
              resume=None, observe=None):
        """The evaluation walk of a recurrent network: yield ``(positions, scores)``.

        The frame's streams (:meth:`_walk_schedule`: sessions, or users' sessions in
        order) are fed in parallel slots to ``network`` through the recurrent network
        interface (:mod:`sessionrec.nn._interface`): ``step`` with each slot's code
        (a new session, a new user), from ``zero_state``; ``context`` is the network's
        ``walk_context`` (made here when None). The last event of a session is fed only
        if a score after it is wanted (prediction); ranking next items never needs it.
        Yields the scores after the positions ``score_after`` selects, or with
        ``score_top=False`` the ``top`` rows instead.

        ``resume(positions)``, optional, gives the state a stream continues from: for the
        positions where a user's stream starts, ``(has, rows)`` (bool per position; per
        state tensor, the rows of those that have one), fed as if continuing (HRNN: a
        known user from their stored state). ``observe(positions, state, context)``,
        optional, sees every step's new state (its rows: the slots whose events are at
        ``positions``).
        """
        device = self.device_
        batch = int(np.clip(rows_per_block(self.n_items_, device), *EVAL_BATCH))
        include_last = bool(score_after[events.is_last].any())
        schedule = self._walk_schedule(events, batch, include_last)
        if schedule.n_steps == 0:
            return
        if context is None:
            context = network.walk_context(len(events.items), feeds_last=include_last)
        matrix = network.scoring_matrix() if score_top else None
        items = torch.as_tensor(events.items, device=device)
        inputs = items[torch.as_tensor(schedule.positions, device=device)]
        # On the host: a network reads the codes without waiting for the device.
        starts = start_codes(schedule.session_start, schedule.user_start)
        scored = score_after[schedule.positions]
        bounds = schedule.step_offsets.tolist()
        state = network.zero_state(int(schedule.widths()[0]))
        for t in range(schedule.n_steps):
            start, stop = bounds[t], bounds[t + 1]
            if t in schedule.shrink:
                rows = torch.as_tensor(schedule.shrink[t], device=device)
                state = [h.index_select(0, rows) for h in state]
            codes = starts[start:stop]
            if resume is not None:
                codes = _resumed(codes, schedule.positions[start:stop], state, resume, device)
            state, top = network.step(inputs[start:stop], state, codes, context)
            if observe is not None:
                observe(schedule.positions[start:stop], state, context)
            selected = scored[start:stop]
            if not selected.any():
                continue
            if not selected.all():
                top = top.index_select(0, torch.as_tensor(np.flatnonzero(selected),
                                                          device=device))
            yield (schedule.positions[start:stop][selected],
                   network.score_top(top, matrix) if score_top else top)

    def _product_scores(self) -> bool:
        """Whether ranks and top lists come straight from the product of the top states
        and the output table, without a score matrix: on the CPU with the fused kernels
        (the evaluation's backend), for a network whose scores are that product
        (:class:`OutputTableScores`: GRU4Rec, HRNN without repeat-aware scores)."""
        return (isinstance(self.network_, OutputTableScores)
                and _kernels.fused_for(self.device_))

    def _iter_ranks(self, events, ties: str):
        """Where :meth:`_product_scores`, the ranks are counted straight from the
        product (:func:`ranks_from_top_states`: no score matrix); elsewhere from the
        scores."""
        if not self._product_scores():
            yield from super()._iter_ranks(events, ties)
            return
        yield from self._fused_ranks(events, ties)

    def _iter_top(self, events, score_after, k: int, exclude_seen: bool):
        """Where :meth:`_product_scores`, the ``k`` best items are selected while the
        scores are computed (:func:`~sessionrec._native.kernels.product_topk`: no score
        matrix, and scores that do not depend on how many rows are scored together);
        elsewhere from the scores."""
        if not self._product_scores():
            yield from super()._iter_top(events, score_after, k, exclude_seen)
            return
        packed = _kernels.PackedScores(self.network_.scoring_matrix())
        for positions, top in self._iter_scores(events, score_after, score_top=False):
            exclude = history_exclusions(events, positions) if exclude_seen else None
            idx, values = _kernels.product_topk(top, packed, k, exclude)
            yield positions, idx, values

    def _fused_ranks(self, events, ties: str, context=None):
        network = self.network_
        yield from ranks_from_top_states(
            self._iter_scores(events, ~events.is_last, score_top=False, context=context),
            events, network.scoring_matrix(), ties)


def _resumed(codes: torch.Tensor, positions: np.ndarray, state: list, resume, device
             ) -> torch.Tensor:
    """``codes`` with the user starts that ``resume`` gives a state for turned into
    :data:`CONTINUE`, their slots' state set to it."""
    host = codes.numpy()
    if not host.any():  # most steps start nothing
        return codes
    new = np.flatnonzero(host == NEW_USER)
    if not len(new):
        return codes
    has, rows = resume(positions[new])
    if not has.any():
        return codes
    chosen = new[has]
    slots = torch.as_tensor(chosen, device=device)
    for tensor, values in zip(state, rows, strict=True):
        tensor[slots] = values
    codes = codes.clone()
    codes[torch.as_tensor(chosen)] = CONTINUE
    return codes
