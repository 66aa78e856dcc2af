"""The HRNN network: a session-level GRU personalised by a user-level GRU.

Quadrana et al. (RecSys 2017). The session GRU is GRU4Rec's (same GRU step, item tables,
losses, sampler and optimiser); the user GRU reads the session GRU's last hidden state
when a session ends, and the next session starts from ``tanh(W_init c + b_init)``.

The training step is differentiated by autograd over one step (no back-propagation
through time, as in GRU4Rec): the graph of a step runs from the stored states (hidden
state of the session GRU, user state) through the user update (for the slots whose
session starts here), the session initialisation, one session-GRU step and the sampled
scores to the loss. So the user GRU and ``W_init`` learn at session starts, and with
``user_propagation="all"`` the user-input weights of the session GRU learn at every step.
Item tables still get sparse row updates. With ``repeats`` the scores of the items of
the user's own history get the gated bonus of :mod:`._repeats`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .._native import kernels as _kernels
from ._interface import (
    CONTINUE,
    NEW_SESSION,
    NEW_USER,
    OutputTableScores,
    TrainBatch,
    keep_rows,
    slots_with,
)
from ._item_tables import ItemTables
from ._layers import DropoutMasks, gru_forward, init_uniform_
from ._losses import StepConfig, masked_loss_and_grad, sampled_loss
from ._optim import AdagradMomentum
from ._repeats import N_REPEAT_FEATURES, UserHistories, repeat_bonus

__all__ = ["HRNNNetwork", "HRNNTraining"]


@dataclass
class HRNNTraining:
    """What a training run keeps between steps (see :meth:`HRNNNetwork.start_training`)."""

    optimizer: AdagradMomentum
    config: StepConfig
    tables: dict
    grad_flat: torch.Tensor
    user_masks: DropoutMasks | None
    session_masks: DropoutMasks | None
    init_masks: DropoutMasks | None
    # Repeat-aware networks: where each training event's user history lies (set by the
    # model, which knows the events).
    histories: UserHistories | None = None

    def finish(self) -> None:
        """Give the item tables their own storage again (drops the optimiser state)."""
        for table in self.tables.values():
            table.release()


class HRNNNetwork(ItemTables, OutputTableScores, nn.Module):
    """Parameters of HRNN and the maths of its steps.

    Item tables as GRU4Rec's (:class:`~._item_tables.ItemTables`, sparse row steps):
    ``out`` (n_items x (H_s + 1), output weights with the bias in the last column) and the
    input: ``onehot`` (n_items x 3 H_s, the paper's one-hot input), ``embed`` (a separate
    embedding) or, with ``constrained_embedding``, the output weights themselves. Every
    other weight lives in the flat buffer ``dense``: the session GRU (``wx`` unless
    one-hot, ``wrz``, ``wh``, ``b``), the user GRU (``u_wx``, ``u_wrz``, ``u_wh``,
    ``u_b``), the initialisation (``w_init``, ``b_init``) and, for
    ``user_propagation="all"``, ``w_user`` (user state to the reset and update gates),
    and with ``repeats`` the gates of the repeat-aware scores (``w_rep``, ``b_rep``,
    zero-initialised: training starts from the plain network's scores).
    """

    def __init__(self, n_items: int, session_size: int, user_size: int, *,
                 embedding: int = 0, constrained_embedding: bool = False,
                 user_propagation: str = "init", repeats: bool = False):
        super().__init__()
        self.session_size = hs = int(session_size)
        self.user_size = hu = int(user_size)
        self.user_propagation = user_propagation
        self.repeats = bool(repeats)
        n_input = self._make_item_tables(n_items, hs, hs, int(embedding),
                                         bool(constrained_embedding))
        # (name, rows, cols, gate blocks for the initialisation; 0 = zero-initialised bias)
        layout = []
        if self.input_mode != "onehot":
            layout.append(("wx", n_input, 3 * hs, 3))
        layout += [("wrz", hs, 2 * hs, 2), ("wh", hs, hs, 1), ("b", 1, 3 * hs, 0),
                   ("u_wx", hs, 3 * hu, 3), ("u_wrz", hu, 2 * hu, 2), ("u_wh", hu, hu, 1),
                   ("u_b", 1, 3 * hu, 0), ("w_init", hu, hs, 1), ("b_init", 1, hs, 0)]
        if user_propagation == "all":
            layout.append(("w_user", hu, 2 * hs, 2))
        if self.repeats:
            layout += [("w_rep", hs, N_REPEAT_FEATURES, 0), ("b_rep", 1, N_REPEAT_FEATURES, 0)]
        self._layout = layout
        self.dense = nn.Parameter(torch.zeros(sum(r * c for _, r, c, _ in layout)),
                                  requires_grad=False)

    def views(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named weight tensors as views into a flat buffer (biases are 1-d)."""
        found, offset = {}, 0
        for name, rows, cols, _ in self._layout:
            block = flat[offset:offset + rows * cols]
            found[name] = block if rows == 1 else block.view(rows, cols)
            offset += rows * cols
        return found

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """GRU4Rec's initialisation: per-gate-block uniform weights, zero biases."""
        self.reset_item_tables(generator)
        self.dense.zero_()
        views = self.views(self.dense)
        for name, _, _, blocks in self._layout:
            if blocks:
                init_uniform_(views[name], n_blocks=blocks, generator=generator)

    def zero_state(self, batch_size: int) -> list[torch.Tensor]:
        """Zero states for ``batch_size`` slots: the session state, the user state and
        the session state before the latest event (what the user GRU reads when the
        next session starts; training uses the first two)."""
        device = self.out.device
        return [torch.zeros(batch_size, self.session_size, device=device),
                torch.zeros(batch_size, self.user_size, device=device),
                torch.zeros(batch_size, self.session_size, device=device)]

    # -- the maths shared by training and inference ---------------------------------------

    @staticmethod
    def user_update(w: dict, last_session: torch.Tensor, user: torch.Tensor,
                    fused: bool | None = None) -> torch.Tensor:
        """``GRU_usr(last session state, user state)`` (the paper's equation 3).
        ``fused``: the backend of the GRU step (False where autograd records it, as in
        training; None applies the rule per call)."""
        gi = torch.addmm(w["u_b"], last_session, w["u_wx"])
        return gru_forward(gi, user, w["u_wrz"], w["u_wh"], need_cache=False,
                           fused=fused)[0]

    @staticmethod
    def repeat_gates(w: dict, hidden: torch.Tensor) -> torch.Tensor:
        """The gates ``h W_rep + b_rep`` of the repeat-aware scores (rows x 4)."""
        return torch.addmm(w["b_rep"], hidden, w["w_rep"])

    @staticmethod
    def session_init(w: dict, user: torch.Tensor) -> torch.Tensor:
        """``tanh(W_init c + b_init)`` (the paper's equation 4)."""
        return torch.addmm(w["b_init"], user, w["w_init"]).tanh()

    def session_step(self, w: dict, x: torch.Tensor | None, onehot_rows: torch.Tensor | None,
                     hidden: torch.Tensor, user: torch.Tensor, fused: bool | None = None
                     ) -> torch.Tensor:
        """One session-GRU step (the paper's equation 5 with ``user_propagation="all"``)."""
        gi = onehot_rows + w["b"] if x is None else torch.addmm(w["b"], x, w["wx"])
        if self.user_propagation == "all":
            # The reference feeds the user state to the reset and update gates only.
            size = self.session_size
            gi = torch.cat([gi[:, :size], gi[:, size:] + user @ w["w_user"]], dim=1)
        return gru_forward(gi, hidden, w["wrz"], w["wh"], need_cache=False, fused=fused)[0]

    # -- inference ------------------------------------------------------------------------

    @torch.no_grad()
    def advance(self, items: torch.Tensor, hidden: torch.Tensor, user: torch.Tensor,
                w: dict, fused: bool | None = None) -> torch.Tensor:
        """Feed one item per slot (no dropout); return the new session state."""
        x = self.item_input(items)
        onehot_rows = self.onehot.index_select(0, items) if x is None else None
        return self.session_step(w, x, onehot_rows, hidden, user, fused)

    # -- the recurrent network interface (see _interface.py) ----------------------------

    def walk_context(self, n_fed: int, feeds_last: bool = True) -> tuple[dict, bool, bool]:
        """The weight views, the walk's choice of backend, and whether the walk feeds
        each session's last event (which decides the state the user GRU reads)."""
        return self.views(self.dense), _kernels.fused_for(self.out.device), feeds_last

    @torch.no_grad()
    def step(self, items: torch.Tensor, state: list[torch.Tensor], starts: torch.Tensor,
             context=None) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Feed one item per slot. Where a user starts, both states start from zero;
        where a user's next session starts, the user state is updated from the session
        state after the previous session's last event but one (the last input of that
        session in training, where a session's last event is only a target) and the
        session state initialised from it (the paper's equations 3 and 4). A walk that
        feeds sessions' last events (``feeds_last`` of :meth:`walk_context`) keeps that
        state in ``state[2]``, the session state before the latest event; one that does
        not has it as the session state."""
        w, fused, feeds_last = (context if context is not None
                                else (self.views(self.dense), None, True))
        hidden, user, before = state
        starting = bool(starts.numpy().any())  # most steps start nothing
        new_user = slots_with(starts, NEW_USER, hidden.device) if starting else ()
        if len(new_user):
            hidden[new_user] = 0.0
            user[new_user] = 0.0
        new_session = slots_with(starts, NEW_SESSION, hidden.device) if starting else ()
        if len(new_session):
            last = before if feeds_last else hidden
            c = self.user_update(w, last[new_session], user[new_session], fused)
            user[new_session] = c
            hidden[new_session] = self.session_init(w, c)
        if feeds_last:
            before = hidden.clone()
        hidden = self.advance(items, hidden, user, w, fused)
        return [hidden, user, before], hidden

    # -- training -------------------------------------------------------------------------

    def start_training(self, optimizer: AdagradMomentum, config: StepConfig,
                       batch_size: int, generator: torch.Generator) -> HRNNTraining:
        """Pack the item tables with their optimiser state and prepare dropout masks:
        ``config.dropout_p_user`` on the user GRU's output, ``dropout_p_hidden`` on the
        session GRU's and ``dropout_p_init`` on the session initialisation."""
        tables = self.pack_item_tables(optimizer)
        device = self.out.device

        def masks(p, width):
            return (DropoutMasks(p, batch_size, width, device=device, generator=generator)
                    if p > 0 else None)

        return HRNNTraining(optimizer, config, tables, torch.zeros_like(self.dense),
                            masks(config.dropout_p_user, self.user_size),
                            masks(config.dropout_p_hidden, self.session_size),
                            masks(config.dropout_p_init, self.session_size))

    def train_step(self, batch: TrainBatch, state: list[torch.Tensor],
                   training: HRNNTraining) -> torch.Tensor:
        """One sampled training step; updates ``state`` and the parameters in place.

        Parameters
        ----------
        batch : TrainBatch
            The B active slots' items, targets, samples, logQ shift and codes of a
            user-parallel schedule: where a user starts (:data:`NEW_USER`) both states
            start from zero; where a user's next session starts (:data:`NEW_SESSION`)
            the user state is updated from the carried session state, and the session
            state re-initialised from it.
        state : [session state (B, H_s), user state (B, H_u)]
            Replaced by the new states. A repeat-aware network reads the slots' user
            histories at ``batch.positions`` (``training.histories``).

        Returns
        -------
        Tensor
            The loss summed over the batch (0-d, not synchronised).
        """
        items, targets, samples = batch.items, batch.targets, batch.samples
        score_shift, config = batch.score_shift, training.config
        device = items.device
        restart = keep_rows(batch.starts, device, codes=(CONTINUE, NEW_SESSION))
        for s in state:
            s.mul_(restart)  # a new user: both states restart from zero
        start_rows = slots_with(batch.starts, NEW_SESSION, device)
        n = items.shape[0]
        size = self.session_size
        columns = targets if samples is None else torch.cat([targets, samples])
        constrained = self.input_mode == "constrained"
        history = padded = None  # the repeat-aware step's user histories
        if self.repeats:
            # Each slot's own history items are scored too (their rows trained as well).
            history = training.histories.step(batch.positions)
            padded = history.padded()
            rows = self.step_rows(training.tables, items,
                                  torch.cat([columns, padded[0][padded[3]]]))
        else:
            rows = self.step_rows(training.tables, items, columns)
        out_rows = rows.out.param.detach().requires_grad_(True)
        in_leaf = None if constrained else rows.inputs.param.detach().requires_grad_(True)
        # One leaf per weight (views of the flat buffer): a leaf that is the whole buffer
        # would make autograd build a buffer-sized gradient for every view it feeds.
        w = {name: view.detach().requires_grad_(True)
             for name, view in self.views(self.dense).items()}

        with torch.enable_grad():
            hidden, user = state
            if len(start_rows):
                # Where a session starts: user update from the last session state, then
                # the new session state from the user state (each with its dropout).
                # fused=False: autograd differentiates these steps, and the kernels
                # have no autograd formula.
                new_user = self.user_update(w, hidden.index_select(0, start_rows),
                                            user.index_select(0, start_rows), fused=False)
                if training.user_masks is not None:
                    new_user = new_user * training.user_masks.next(len(start_rows))
                init = self.session_init(w, new_user)
                if training.init_masks is not None:
                    init = init * training.init_masks.next(len(start_rows))
                user = user.index_put((start_rows,), new_user)
                hidden = hidden.index_put((start_rows,), init)
            x = onehot_rows = None
            if constrained:
                x = out_rows[:, :size].index_select(0, rows.input_of)
            elif self.input_mode == "embedding":
                x = in_leaf.index_select(0, rows.input_inverse)
            else:
                onehot_rows = in_leaf.index_select(0, rows.input_inverse)
            h = self.session_step(w, x, onehot_rows, hidden, user, fused=False)
            if training.session_masks is not None:
                h = h * training.session_masks.next(n)
            # The scores of the distinct items (with repeats, the slots' histories too: one
            # product, faster than gathering each history entry's row for its slot).
            scores = torch.addmm(out_rows[:, size], h, out_rows[:, :size].t())
            if self.repeats:
                loss, d_scores, d_target = self._repeat_loss(
                    config, batch, self.repeat_gates(w, h), scores, columns,
                    rows.column_of, history, padded, score_shift)
            else:
                loss, d_scores, d_target = sampled_loss(scores, columns, rows.column_of, n,
                                                      config, score_shift)
            torch.autograd.backward(d_target, d_scores)

        grads = self.views(training.grad_flat)
        for name, leaf in w.items():
            if leaf.grad is None:  # e.g. the user GRU in a step where no session starts
                grads[name].zero_()
            else:
                grads[name].copy_(leaf.grad)
        training.optimizer.dense_step(self.dense, training.grad_flat)
        self.step_item_tables(training.tables, rows, out_rows.grad,
                              None if in_leaf is None else in_leaf.grad)
        state[0], state[1] = h.detach(), user.detach()
        return loss

    @staticmethod
    def _repeat_loss(config: StepConfig, batch: TrainBatch, gates: torch.Tensor,
                     scores: torch.Tensor, columns: torch.Tensor, column_of: torch.Tensor,
                     history, padded: tuple, score_shift: torch.Tensor | None):
        """The loss of a repeat-aware step (see :mod:`._repeats`): each slot's target
        against the sampled ``columns`` that are not in its user's history and against
        every item of that history (``history``, a :class:`~._repeats.StepHistory`, and
        its :meth:`~._repeats.StepHistory.padded` form), each with its repeat bonus; the
        history columns without the losses' score regulariser. ``scores``: of the
        distinct items; ``column_of`` maps the columns, then the history entries, to
        them. Returns ``(loss, grad, output)`` as :func:`~._losses.sampled_loss`."""
        n, n_columns = len(batch.targets), len(columns)
        items, past, now, valid = padded
        col_scores = scores.index_select(1, column_of[:n_columns])
        if score_shift is not None:
            col_scores = col_scores + score_shift
        # A sampled column that is an item of the slot's history counts there instead.
        col_past, col_now = history.lookup(columns)
        excluded = (col_past + col_now) > 0
        excluded[:, :n].diagonal().fill_(False)
        col_scores = col_scores + repeat_bonus(gates, col_past, col_now)
        lookup = torch.zeros(items.shape, dtype=torch.int64, device=items.device)
        lookup[valid] = column_of[n_columns:]
        in_history = scores.gather(1, lookup) + repeat_bonus(gates, past, now)
        full = torch.cat([col_scores, in_history], dim=1)
        excluded_history = ~valid | (items == batch.targets.unsqueeze(1))
        unregularised = torch.zeros_like(full, dtype=torch.bool)
        unregularised[:, n_columns:] = True
        loss, grad = masked_loss_and_grad(
            full.detach(), torch.cat([excluded, excluded_history], dim=1), config.loss,
            bpreg=config.bpreg, activation=config.activation, elu_param=config.elu_param,
            unregularised=unregularised)
        # The loss reported (history_, the divergence check) is the network's sampled
        # loss, as without repeats: comparable between the two, and it grows when the
        # scores blow up (the history columns, without a regulariser, would hide it). A
        # NaN anywhere still shows.
        with torch.no_grad():
            reported = sampled_loss(scores.detach(), columns, column_of[:n_columns], n,
                                    config, score_shift)[0]
        return reported + 0.0 * loss, grad, full
