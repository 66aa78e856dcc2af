"""The GRU4Rec network: item tables, GRU layers, sampled training step, full scoring."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .._native import kernels as _kernels
from ._interface import OutputTableScores, TrainBatch, keep_rows, with_bias_input
from ._item_tables import ItemTables
from ._layers import (
    DropoutMasks,
    gru_forward,
    gru_layer_backward,
    gru_layer_forward,
    init_uniform_,
)
from ._losses import StepConfig, cross_entropy_distinct, loss_and_grad
from ._optim import AdagradMomentum

__all__ = ["GRU4RecNetwork", "TrainingState", "GATE_TABLE_VALUES"]

# Largest per-item gate table (values) an evaluation walk builds: 64 MiB in float32.
GATE_TABLE_VALUES = 2**24


def _output_layer(top_state, out_rows, columns, column_of, n, score_shift, config):
    """Loss and gradients of a training step's output layer over its distinct items.

    ``out_rows`` are the step's distinct items' rows of the output table (``[W_u | b_u]``,
    a :class:`~._optim.TableRows`); ``column_of`` maps the ``B + S`` columns (the ``n``
    targets first) to them. Returns the loss summed over the batch, the gradient of the
    distinct items' rows and that of ``top_state``.
    """
    fused = out_rows.table.fused  # the run's backend
    if (fused and config.loss == "cross-entropy" and config.activation == "linear"
            and len(columns) >= 2):
        # One C call: scores, sampled softmax and both gradient products
        # (csrc/output_xent.c); it reads the rows where they lie in the table.
        return _kernels.output_cross_entropy(top_state, out_rows.table.buffer[0],
                                             out_rows.index, column_of, score_shift)
    rows = out_rows.param
    # The bias rides along as an input of 1: one product gives the scores, and one the
    # output rows' weight and bias gradients (faster than addmm's bias broadcast).
    top = with_bias_input(top_state)
    scores = torch.mm(top, rows.t())
    if len(columns) < 2:  # one slot and no sample: no negative, no ranking signal
        loss, d_distinct = scores.new_zeros(()), torch.zeros_like(scores)
    elif config.loss == "cross-entropy" and config.activation == "linear":
        weight = (torch.ones_like(columns, dtype=scores.dtype) if score_shift is None
                  else score_shift.exp())
        log_weight = torch.zeros(len(rows), device=scores.device)
        log_weight.index_add_(0, column_of, weight).log_()
        target_cols = column_of[:n]
        loss, d_distinct = cross_entropy_distinct(scores, target_cols, log_weight)
        constant = log_weight.index_select(0, target_cols).sum()
        if score_shift is not None:
            constant = constant - score_shift[:n].sum()
        loss = loss + constant
    elif fused and config.loss == "bpr-max" and config.activation in ("linear", "elu"):
        # One C call: the columns' scores, bpr-max's closed form and the sum of the
        # columns' gradients onto their items (csrc/bpr_max.c).
        loss, d_distinct = _kernels.bpr_max(scores, column_of, score_shift, config.bpreg,
                                            config.activation == "elu", config.elu_param)
    else:
        col_scores = scores.index_select(1, column_of)
        if score_shift is not None:
            col_scores.add_(score_shift)
        loss, d_cols = loss_and_grad(col_scores, config.loss, bpreg=config.bpreg,
                                     activation=config.activation,
                                     elu_param=config.elu_param)
        d_distinct = torch.zeros_like(scores).index_add_(1, column_of, d_cols)
    return loss, torch.mm(d_distinct.t(), top), torch.mm(d_distinct, rows[:, :-1])


@dataclass
class _LayerViews:
    wx: torch.Tensor | None   # (in, 3H): input weights of [candidate, reset, update]
    wrz: torch.Tensor         # (H, 2H)
    wh: torch.Tensor          # (H, H)
    b: torch.Tensor           # (3H,)
    bh: torch.Tensor | None   # (3H,): GRUCell's recurrent bias (reset-after layers)


class GRU4RecNetwork(ItemTables, OutputTableScores, nn.Module):
    """Parameters of GRU4Rec and the maths of one step, forward and backward.

    Item tables (:class:`~._item_tables.ItemTables`, updated by sparse row steps): the
    output table ``out`` (``[W_y | b_y]``, n_items x (H_last + 1)) and the input: with
    ``constrained_embedding`` an item's row of ``W_y`` (the official default), with
    ``embedding > 0`` a separate table ``embed``, otherwise one-hot as in the GRU4Rec
    paper (a table ``onehot`` of the first layer's input weights, n_items x 3 H_0).

    GRU weights (updated densely) live in one flat buffer ``dense``, so that the optimiser
    updates all of them in a handful of operations.

    ``reset_after`` (True, False or ``"auto"``) picks each layer's GRU. A reset-after
    layer (the official PyTorch port's GRU) multiplies the recurrent product by the reset
    gate, ``c = tanh(x W_c + b_c + r * (h W_h + b_h_c))``; as in the port, a layer fed by
    a vector then has ``torch.nn.GRUCell``'s recurrent bias ``b_h`` (3H: its reset and
    update parts add to the gates' input bias, so their sum learns twice as fast, as in
    the port) and the one-hot input layer has none. Other layers use the GRU4Rec paper's
    ``(r * h) W_h``. ``"auto"``: reset-after for the one-hot input layer only.
    """

    def __init__(self, n_items: int, layers: tuple[int, ...], embedding: int = 0,
                 constrained_embedding: bool = True, reset_after: bool | str = "auto"):
        super().__init__()
        auto = isinstance(reset_after, str) and reset_after == "auto"
        self.reset_after = "auto" if auto else bool(reset_after)
        self.layers = tuple(int(h) for h in layers)
        self.embedding = int(embedding)
        self.constrained_embedding = bool(constrained_embedding)
        n_input = self._make_item_tables(n_items, self.layers[-1], self.layers[0],
                                         self.embedding, self.constrained_embedding)
        onehot = self.input_mode == "onehot"
        self.layer_resets_after = tuple(
            (i == 0 and onehot) if auto else self.reset_after
            for i in range(len(self.layers)))
        # Layout of the flat buffer of GRU weights: (name, layer, rows, cols).
        self._layout = []
        for i, size in enumerate(self.layers):
            fan_in = n_input if i == 0 else self.layers[i - 1]
            if not (i == 0 and self.input_mode == "onehot"):
                self._layout.append(("wx", i, fan_in, 3 * size))
            self._layout += [("wrz", i, size, 2 * size), ("wh", i, size, size),
                             ("b", i, 1, 3 * size)]
            if self.layer_resets_after[i] and not (i == 0 and onehot):
                self._layout.append(("bh", i, 1, 3 * size))
        total = sum(r * c for _, _, r, c in self._layout)
        self.dense = nn.Parameter(torch.zeros(total), requires_grad=False)

    def __setstate__(self, state):
        # Networks pickled before the option existed ran the paper's GRU.
        state.setdefault("reset_after", False)
        state.setdefault("layer_resets_after", (False,) * len(state["layers"]))
        super().__setstate__(state)

    # -- parameters -----------------------------------------------------------------------

    def views(self, flat: torch.Tensor) -> list[_LayerViews]:
        """Per-layer weight tensors as views into a flat buffer (weights or gradients)."""
        found: list[dict] = [{"wx": None, "bh": None} for _ in self.layers]
        offset = 0
        for name, i, rows, cols in self._layout:
            block = flat[offset:offset + rows * cols]
            found[i][name] = block if name in ("b", "bh") else block.view(rows, cols)
            offset += rows * cols
        return [_LayerViews(**f) for f in found]

    def weight_offsets(self) -> list[tuple[int, dict[str, int]]]:
        """Per layer: its input width (0 for the one-hot input) and the offset of each of
        its weights (``wx``, ``wrz``, ``wh``, ``b``, ``bh``, where it has them) in the
        flat buffer (the layout :meth:`views` reads)."""
        base = self.dense.storage_offset()
        return [(0 if view.wx is None else view.wx.shape[0],
                 {name: weight.storage_offset() - base
                  for name, weight in vars(view).items() if weight is not None})
                for view in self.views(self.dense)]

    def layer_layout(self) -> torch.Tensor:
        """:meth:`weight_offsets` as the fused C kernels read it: per layer, the input
        width and the offsets of ``wx``, ``wrz``, ``wh``, ``b``, ``bh`` (-1: none)."""
        return torch.tensor(
            [[width] + [offsets.get(name, -1) for name in ("wx", "wrz", "wh", "b", "bh")]
             for width, offsets in self.weight_offsets()], dtype=torch.int64)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """The papers' initialisation: per-gate-block uniform weights, zero biases."""
        self.reset_item_tables(generator)
        self.dense.zero_()
        for view in self.views(self.dense):
            if view.wx is not None:
                init_uniform_(view.wx, n_blocks=3, generator=generator)
            init_uniform_(view.wrz, n_blocks=2, generator=generator)
            init_uniform_(view.wh, generator=generator)

    def zero_state(self, batch_size: int) -> list[torch.Tensor]:
        """Zero hidden states for ``batch_size`` slots, one tensor per layer."""
        return [torch.zeros(batch_size, h, device=self.out.device) for h in self.layers]

    # -- inference ------------------------------------------------------------------------

    @torch.no_grad()
    def advance(self, items: torch.Tensor, hidden: list[torch.Tensor],
                views: list[_LayerViews], gate_table: torch.Tensor | None = None,
                fused: bool | None = None) -> torch.Tensor:
        """Feed one item per slot (no dropout); update ``hidden`` in place, return the top
        layer's state.

        ``gate_table`` (from :meth:`item_gate_table`) replaces the first layer's input
        product by a gather of its rows. ``fused``: the walk's choice of backend
        (:meth:`walk_context`; None applies the rule per call).
        """
        x = self.item_input(items) if gate_table is None else None
        for i, view in enumerate(views):
            reset_after = self.layer_resets_after[i]
            if view.wx is None or (i == 0 and gate_table is not None):
                gi = (gate_table.index_select(0, items) if gate_table is not None
                      else self.onehot.index_select(0, items).add_(view.b))
                x, _ = gru_forward(gi, hidden[i], view.wrz, view.wh, need_cache=False,
                                   reset_after=reset_after, b_h=view.bh, fused=fused)
            else:
                x, _ = gru_layer_forward(x, view.wx, view.b, hidden[i], view.wrz, view.wh,
                                         need_cache=False, reset_after=reset_after,
                                         b_h=view.bh, fused=fused)
            hidden[i] = x
        return x

    @torch.no_grad()
    def item_gate_table(self, views: list[_LayerViews], fused: bool = False) -> torch.Tensor:
        """The first layer's gate inputs ``x W_x + b`` of every item (n_items x 3 H_0).

        Without dropout the first layer's input contribution depends on the item alone,
        so an evaluation walk that feeds more events than there are items computes it
        once per item and gathers rows (as the one-hot input already does) instead of
        multiplying at every step. With the fused kernels (``fused``) the table is their
        product, each row bit for bit what the step computes from the item alone: a
        session's states then do not depend on whether its walk used the table (on how
        many events a prediction call fed).
        """
        first = views[0]
        if self.input_mode == "onehot":
            return self.onehot + first.b
        items = self.out[:, :-1] if self.input_mode == "constrained" else self.embed
        if fused:
            return _kernels.linear(items, first.wx, first.b)
        return torch.addmm(first.b, items, first.wx)

    # -- the recurrent network interface (see _interface.py) ----------------------------

    @torch.no_grad()
    def walk_context(self, n_fed: int, feeds_last: bool = True
                     ) -> tuple[list[_LayerViews], torch.Tensor | None, bool]:
        """The weight views, for a walk that feeds at least as many events as there are
        items the first layer's gate inputs per item (:meth:`item_gate_table`; it costs
        one product over the catalogue, and is capped at GATE_TABLE_VALUES), and the
        walk's choice of backend."""
        views = self.views(self.dense)
        fused = _kernels.fused_for(self.out.device)
        if n_fed < self.n_items or self.n_items * 3 * self.layers[0] > GATE_TABLE_VALUES:
            return views, None, fused
        return views, self.item_gate_table(views, fused), fused

    def step(self, items: torch.Tensor, state: list[torch.Tensor], starts: torch.Tensor,
             context=None) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Feed one item per slot, every layer's state zeroed where a session starts;
        the state is updated in place and the top layer's is returned as ``top``."""
        views, gates, fused = (context if context is not None
                               else (self.views(self.dense), None, None))
        if starts.numpy().any():  # most steps of a walk (and live clicks) start nothing
            keep = keep_rows(starts, self.out.device)
            for h in state:
                h.mul_(keep)
        return state, self.advance(items, state, views, gates, fused)

    # -- training -------------------------------------------------------------------------

    def start_training(self, optimizer: AdagradMomentum, config: StepConfig,
                       batch_size: int, generator: torch.Generator) -> TrainingState:
        """Pack the item tables with their optimiser state, cache the weight views and
        prepare the dropout masks of a training run."""
        tables = self.pack_item_tables(optimizer)
        grad_flat = torch.zeros_like(self.dense)
        device = self.out.device
        embed_masks = None
        if config.dropout_p_embed > 0 and self.input_mode != "onehot":
            width = self.layers[-1] if self.input_mode == "constrained" else self.embedding
            embed_masks = DropoutMasks(config.dropout_p_embed, batch_size, width,
                                       device=device, generator=generator)
        hidden_masks = [DropoutMasks(config.dropout_p_hidden, batch_size, h, device=device,
                                     generator=generator)
                        for h in self.layers] if config.dropout_p_hidden > 0 else None
        return TrainingState(optimizer, config, tables, grad_flat, self.views(self.dense),
                             self.views(grad_flat), embed_masks, hidden_masks)

    @torch.no_grad()
    def train_step(self, batch: TrainBatch, hidden: list[torch.Tensor],
                   state: TrainingState, hidden_inplace: bool = False) -> torch.Tensor:
        """One sampled training step; updates ``hidden`` and the parameters in place.

        Parameters
        ----------
        batch : TrainBatch
            The B active slots' items and targets, the samples and the logQ shift; each
            layer's state is zeroed where ``batch.keep`` is 0 (a session starts).
        hidden : list of Tensor (B, H_l)
            Hidden states; replaced by the new ones, or overwritten with them when
            ``hidden_inplace`` (for a replayed graph).
        state : TrainingState
            From :meth:`start_training`.

        Returns
        -------
        Tensor
            The loss summed over the batch (a 0-d tensor on the device, not synchronised).

        Notes
        -----
        The loss is defined over all ``B + S`` columns, duplicates included, as in the
        official code; but output rows are gathered, scored and updated once per
        *distinct* item. For the linear cross-entropy that is exact algebra (see
        :func:`cross_entropy_distinct`); other losses expand the distinct scores to the
        columns and sum the column gradients back. Popular items are sampled many times,
        so this saves much of the work.
        """
        items, targets, samples = batch.items, batch.targets, batch.samples
        score_shift, config = batch.score_shift, state.config
        for h in hidden:
            h.mul_(batch.keep)  # reset the slots whose session starts here
        n = items.shape[0]
        width = self.layers[-1]
        columns = targets if samples is None else torch.cat([targets, samples])
        views, grads = state.views, state.grad_views
        constrained = self.input_mode == "constrained"

        # The distinct rows of the item tables this step touches, each read once.
        rows = self.step_rows(state.tables, items, columns)
        fused = rows.out.table.fused  # the fused CPU kernels (decided once per training run)
        if constrained:
            x = self.out.index_select(0, items)[:, :width]
        else:
            x = (rows.inputs.param.index_select(0, rows.input_inverse)
                 if self.input_mode == "embedding" else None)
        embed_mask = None
        if x is not None and state.embed_masks is not None:
            embed_mask = state.embed_masks.next(n)
            x = x * embed_mask

        # Forward through the layers, keeping what the backward pass needs.
        caches, layer_inputs, hidden_masks, new_hidden = [], [], [], []
        layer_in = x
        for i, view in enumerate(views):
            mask = None
            if state.hidden_masks is not None:
                mask = state.hidden_masks[i].next(n)
                hidden_masks.append(mask)
            reset_after = self.layer_resets_after[i]
            if view.wx is None:  # one-hot input: gather the rows of the input table
                gi = rows.inputs.param.index_select(0, rows.input_inverse).add_(view.b)
                h, cache = gru_forward(gi, hidden[i], view.wrz, view.wh,
                                       reset_after=reset_after, b_h=view.bh, mask=mask,
                                       fused=fused)
            else:
                h, cache = gru_layer_forward(layer_in, view.wx, view.b, hidden[i], view.wrz,
                                             view.wh, reset_after=reset_after, b_h=view.bh,
                                             mask=mask, fused=fused)
            caches.append(cache)
            layer_inputs.append(layer_in)
            new_hidden.append(h)  # the official code carries the dropped-out state, as here
            layer_in = h

        # The output layer: scores of the distinct target and sample items only (never
        # the catalogue), the loss, and the gradients of the rows and of the last state.
        loss, out_grad, d_h = _output_layer(layer_in, rows.out, columns, rows.column_of, n,
                                            score_shift, config)

        # Backward through the layers, top-down (no step back in time).
        in_grad = None
        for i in reversed(range(len(views))):
            view, grad = views[i], grads[i]
            need_dx = view.wx is not None and (i > 0 or x is not None)
            d_gi, d_x = gru_layer_backward(
                d_h, caches[i], layer_inputs[i], view.wx, view.wh, grad.wx, grad.b,
                grad.wrz, grad.wh, grad.bh, mask=hidden_masks[i] if hidden_masks else None,
                need_dx=need_dx, need_dgi=view.wx is None)
            if view.wx is None:
                in_grad = d_gi
            elif need_dx:
                d_h = d_x
        if x is not None:
            if embed_mask is not None:
                d_h.mul_(embed_mask)
            in_grad = d_h

        # Updates, after every gradient is known.
        state.optimizer.dense_step(self.dense, state.grad_flat)
        merged = None
        if constrained:
            out_grad[:, :width].index_add_(0, rows.input_of, in_grad)
        else:
            merged = torch.zeros(len(rows.inputs.index), rows.inputs.table.width,
                                 device=in_grad.device)
            merged.index_add_(0, rows.input_inverse, in_grad)
        self.step_item_tables(state.tables, rows, out_grad, merged)
        for i, h in enumerate(new_hidden):
            if hidden_inplace:
                hidden[i].copy_(h)  # after the backward pass, which read the old state
            else:
                hidden[i] = h
        return loss


@dataclass
class TrainingState:
    """What a training run keeps between steps (see ``GRU4RecNetwork.start_training``)."""

    optimizer: AdagradMomentum
    config: StepConfig
    tables: dict
    grad_flat: torch.Tensor
    views: list
    grad_views: list
    embed_masks: DropoutMasks | None = None
    hidden_masks: list | None = None

    def finish(self) -> None:
        """Give the item tables their own storage again (drops the optimiser state)."""
        for table in self.tables.values():
            table.release()
