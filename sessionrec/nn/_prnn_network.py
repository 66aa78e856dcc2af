"""The p-RNN network: GRU subnets over item IDs and item features, merged for scoring.

Hidasi, Quadrana, Karatzoglou, Tikk (RecSys 2016). Each *subnet* is a one-layer GRU in
the formulation of GRU4Rec whose input is some of the item's representations: its one-hot
ID (a row of an ``n_items x 3H`` input table, the paper's one-hot input), dense feature
vectors (``x W``, one device-side row lookup of the feature matrix) and sparse feature
vectors (``x W`` as a weighted sum of the rows of ``W`` at the row's non-zero columns:
the features are never densified, and only the touched rows of ``W`` are updated).

The subnets' hidden states are merged by a *head* into item scores:

* ``"sum"``: each subnet has its own output matrix and bias; the scores are the sum of
  the subnets' scores (the paper's parallel architecture: concatenated hidden states
  times the stacked output matrices, its footnote 3);
* ``"interaction"``: as ``"sum"``, but a feature subnet's state is multiplied element-wise
  by the ID subnet's (subnet 0) before its output matrix;
* ``"shared"``: one output matrix for the weighted sum of the subnets' hidden states.

Training steps are differentiated by autograd over one step (no back-propagation
through time, as in GRU4Rec). A step is a list of *updates*, each naming the subnets it
trains and the subnets whose scores enter its loss (the others being frozen but in the
forward pass); this is how the training strategies are expressed (see
:class:`~sessionrec.ParallelRNNRecommender`). Parameters of subnets an update does not
train get no gradient and no optimiser step, so their values, accumulators and momenta
stay exactly as they were.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from .._native import kernels as _kernels
from ._interface import TrainBatch, keep_rows, with_bias_input
from ._layers import DropoutMasks, gru_backward, gru_forward, init_uniform_
from ._losses import StepConfig, sampled_loss
from ._optim import AdagradMomentum, unique_rows

__all__ = ["ParallelNetwork", "ParallelTraining", "SubnetSpec"]

HEADS = ("sum", "interaction", "shared")


@dataclass(frozen=True)
class SubnetSpec:
    """One GRU subnet: its name, hidden size, and which representations it reads."""

    name: str
    hidden: int
    uses_id: bool
    features: tuple[int, ...]  # indices into the network's feature sets


@dataclass
class ParallelTraining:
    """What a training run keeps between steps (see :meth:`ParallelNetwork.start_training`).

    ``updates`` (list of ``(trained, included)`` subnet indices) is what a step does: for
    each update in order, the loss of the merged scores of the ``included`` subnets, and
    a step of the parameters of the ``trained`` ones. The training strategies set it per
    phase; it starts as one update that trains every subnet together.
    """

    optimizer: AdagradMomentum
    config: StepConfig
    tables: dict
    grad_flat: list
    masks: list
    updates: list
    generator: torch.Generator | None = None

    def finish(self) -> None:
        """Give the tables their own storage again (drops the optimiser state)."""
        for table in self.tables.values():
            table.release()


class _Batch:
    """Per-step lookups shared by the subnets: distinct ID rows, sparse feature rows."""

    def __init__(self, network: ParallelNetwork, items: torch.Tensor,
                 fused: bool | None = None):
        self.network = network
        self.items = items
        self.fused = fused
        self._id = None
        self._sparse = {}

    def id_rows(self):
        if self._id is None:
            self._id = unique_rows(self.items, self.network.n_items, self.fused)
        return self._id

    def sparse(self, j: int, distinct: bool):
        """(columns, values, offsets) of the items' rows of sparse feature set ``j``;
        with ``distinct`` the columns are positions into ``distinct columns``, also
        returned."""
        key = (j, distinct)
        if key not in self._sparse:
            self._sparse[key] = self.network.sparse_rows(j, self.items, distinct, self.fused)
        return self._sparse[key]


@dataclass
class _StepData:
    """What the passes of one training step share (see :meth:`ParallelNetwork.train_step`)."""

    batch: _Batch
    state: list
    training: ParallelTraining
    distinct: torch.Tensor
    column_of: torch.Tensor
    columns: torch.Tensor
    score_shift: torch.Tensor | None
    n: int
    id_kept: torch.Tensor | None
    sparse_of_columns: object
    new_state: dict
    fused: bool


def _bag_ids(offsets: torch.Tensor, total: int) -> torch.Tensor:
    """The bag of each of ``total`` non-zeros, from embedding_bag's ``offsets``."""
    lengths = torch.diff(offsets, append=offsets.new_tensor([total]))
    return torch.repeat_interleave(torch.arange(len(offsets), device=offsets.device),
                                   lengths, output_size=total)


class ParallelNetwork(nn.Module):
    """Parameters of a p-RNN and the maths of its steps.

    Parameters
    ----------
    n_items : int
    subnets : list of SubnetSpec
        Subnet 0 is the ID subnet of the ``"interaction"`` head.
    head : {"sum", "interaction", "shared"}
    features : list of ndarray or scipy.sparse matrix, each (n_items, d_j), float32
        The feature sets, rows in item-code order.
    subnet_weights : sequence of float or None
        Weights of the subnets' states for the ``"shared"`` head (None: all 1).
    feature_output : bool, default=False
        Score items through their features as well as their ID rows: the output row (and
        bias) of item ``j`` in a subnet that reads feature sets is its ID row plus
        ``sum_f x_fj Q_f``, with one learned ``d_f x (H + 1)`` matrix ``Q_f`` per feature
        set the subnet reads (dense sets: in the subnet's flat parameters; sparse sets: a
        row-updated table ``s{i}_oq{f}``, only the rows at the targets' non-zero columns
        are touched). Not for the ``"shared"`` head.
    n_known : int or None, default=None
        Items ``n_known ..`` have no training events (cold-start items, known by their
        features only): their ID input and output rows start at zero and, as no step
        reads them, stay there. None: every item is known.
    """

    # Train every head through autograd (the "sum" head has a hand-written backward
    # pass, the default; the tests compare the two).
    autograd_steps = False

    def __init__(self, n_items: int, subnets: list[SubnetSpec], head: str, features: list,
                 subnet_weights=None, feature_output: bool = False,
                 n_known: int | None = None):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}; got {head!r}.")
        self.n_items = int(n_items)
        self.subnets = list(subnets)
        self.head = head
        self.feature_dims = [int(f.shape[1]) for f in features]
        self.feature_sparse = [bool(sp.issparse(f)) for f in features]
        self.feature_output = bool(feature_output)
        if self.feature_output and head == "shared":
            raise ValueError("feature_output needs a head with an output table per subnet "
                             "('sum' or 'interaction'); the 'shared' head has one for all.")
        self.n_known = self.n_items if n_known is None else int(n_known)
        if head in ("interaction", "shared"):
            sizes = {s.hidden for s in self.subnets}
            if len(sizes) > 1:
                raise ValueError(f"the {head!r} head needs subnets of equal hidden size; got "
                                 f"{[s.hidden for s in self.subnets]}.")
        weights = [1.0] * len(self.subnets) if subnet_weights is None else subnet_weights
        self.subnet_weights = [float(w) for w in weights]
        # Which subnets take part in scoring (prediction and evaluation). A subnet is left
        # out while residual training has not reached it, or for good when early stopping
        # found that it does not help (see ParallelRNNRecommender).
        self.active = [True] * len(self.subnets)
        # Feature data, as buffers: saved with the network and moved with it.
        for j, f in enumerate(features):
            if sp.issparse(f):
                f = sp.csr_matrix(f, dtype=np.float32)
                f.sort_indices()
                self.register_buffer(f"f{j}_crow", torch.as_tensor(f.indptr.astype(np.int64)))
                self.register_buffer(f"f{j}_col", torch.as_tensor(f.indices.astype(np.int64)))
                self.register_buffer(f"f{j}_val", torch.as_tensor(f.data))
            else:
                self.register_buffer(f"f{j}_dense", torch.as_tensor(
                    np.ascontiguousarray(f, dtype=np.float32)))
        self._layouts = []
        for i, spec in enumerate(self.subnets):
            h = spec.hidden
            layout = [(f"wx{j}", self.feature_dims[j], 3 * h, 3) for j in spec.features
                      if not self.feature_sparse[j]]
            if self.feature_output:  # Q of the dense sets, zero at the start
                layout += [(f"q{j}", self.feature_dims[j], h + 1, 0) for j in spec.features
                           if not self.feature_sparse[j]]
            layout += [("wrz", h, 2 * h, 2), ("wh", h, h, 1), ("b", 1, 3 * h, 0)]
            self._layouts.append(layout)
            self.register_parameter(f"s{i}_dense", nn.Parameter(
                torch.zeros(sum(r * c for _, r, c, _ in layout)), requires_grad=False))
            if spec.uses_id:
                self.register_parameter(f"s{i}_onehot", nn.Parameter(
                    torch.zeros(n_items, 3 * h), requires_grad=False))
            for j in spec.features:
                if self.feature_sparse[j]:
                    self.register_parameter(f"s{i}_sparse{j}", nn.Parameter(
                        torch.zeros(self.feature_dims[j], 3 * h), requires_grad=False))
                    if self.feature_output:
                        self.register_parameter(f"s{i}_oq{j}", nn.Parameter(
                            torch.zeros(self.feature_dims[j], h + 1), requires_grad=False))
            if head != "shared":
                self.register_parameter(f"s{i}_out", nn.Parameter(
                    torch.zeros(n_items, h + 1), requires_grad=False))
        if head == "shared":
            self.shared_out = nn.Parameter(torch.zeros(n_items, self.subnets[0].hidden + 1),
                                           requires_grad=False)

    # -- parameters -----------------------------------------------------------------------

    def views(self, i: int, flat: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Named weights of subnet ``i`` as views into its flat buffer (biases 1-d)."""
        flat = getattr(self, f"s{i}_dense") if flat is None else flat
        found, offset = {}, 0
        for name, rows, cols, _ in self._layouts[i]:
            block = flat[offset:offset + rows * cols]
            found[name] = block if rows == 1 else block.view(rows, cols)
            offset += rows * cols
        return found

    def out_table_name(self, i: int) -> str:
        return "shared_out" if self.head == "shared" else f"s{i}_out"

    def table_names(self, i: int) -> list[str]:
        """The row-updated tables owned by subnet ``i`` (not the shared output)."""
        spec = self.subnets[i]
        names = [f"s{i}_onehot"] if spec.uses_id else []
        names += [f"s{i}_sparse{j}" for j in spec.features if self.feature_sparse[j]]
        if self.feature_output:
            names += [f"s{i}_oq{j}" for j in spec.features if self.feature_sparse[j]]
        if self.head != "shared":
            names.append(f"s{i}_out")
        return names

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """GRU4Rec's initialisation: per-gate-block uniform weights, zero biases."""
        for i in range(len(self.subnets)):
            dense = getattr(self, f"s{i}_dense")
            dense.zero_()
            views = self.views(i)
            for name, _, _, blocks in self._layouts[i]:
                if blocks:
                    init_uniform_(views[name], n_blocks=blocks, generator=generator)
            for name in self.table_names(i):
                table = getattr(self, name)
                table.zero_()
                if name.endswith("_out"):
                    if not (self.feature_output and self.subnets[i].features):
                        # (With the feature output, the ID rows start at zero: the
                        # shared feature part learns what items have in common first,
                        # the ID rows what is left.)
                        init_uniform_(table[:, :-1], generator=generator)
                elif "_oq" not in name:  # the feature output starts at zero
                    init_uniform_(table, n_blocks=3, generator=generator)
        if self.head == "shared":
            self.shared_out.zero_()
            init_uniform_(self.shared_out[:, :-1], generator=generator)
        # Cold-start items: no random ID rows (nothing would train them away); their
        # scores come from their features alone.
        for i in range(len(self.subnets)):
            for name in self.table_names(i):
                if name.endswith(("_onehot", "_out")):
                    getattr(self, name)[self.n_known:].zero_()
        if self.head == "shared":
            self.shared_out[self.n_known:].zero_()

    def zero_state(self, batch_size: int) -> list[torch.Tensor]:
        """Zero hidden states of every subnet for ``batch_size`` slots."""
        device = self.s0_dense.device
        return [torch.zeros(batch_size, s.hidden, device=device) for s in self.subnets]

    # -- inputs ---------------------------------------------------------------------------

    def sparse_rows(self, j: int, items: torch.Tensor, distinct: bool,
                    fused: bool | None = None):
        """Non-zeros of the rows ``items`` of sparse feature set ``j``, for embedding_bag.

        Returns ``(columns, values, offsets, distinct_columns)``; with ``distinct`` the
        columns are positions into ``distinct_columns`` (the distinct feature columns
        touched, whose weight rows a training step gathers), else feature indices and
        ``distinct_columns`` is None.
        """
        crow = getattr(self, f"f{j}_crow")
        starts = crow.index_select(0, items)
        lengths = crow.index_select(0, items + 1) - starts
        offsets = torch.cumsum(lengths, 0) - lengths
        total = int(lengths.sum())  # the size of the gather (a sync on a GPU)
        position = (torch.repeat_interleave(starts - offsets, lengths, output_size=total)
                    + torch.arange(total, device=items.device))
        columns = getattr(self, f"f{j}_col").index_select(0, position)
        values = getattr(self, f"f{j}_val").index_select(0, position)
        found = None
        if distinct:
            found, columns = unique_rows(columns, self.feature_dims[j], fused)
        return columns, values, offsets, found

    @staticmethod
    def _bag(weight: torch.Tensor, columns, values, offsets, n: int) -> torch.Tensor:
        """``sum_k values_k * weight[columns_k]`` per bag; zero rows for empty bags."""
        if len(columns) == 0:
            return weight.new_zeros(n, weight.shape[1])
        return F.embedding_bag(columns, weight, offsets, mode="sum",
                               per_sample_weights=values)

    def feature_rows(self, i: int, w: dict, items: torch.Tensor, tables: dict | None = None,
                     sparse: dict | None = None) -> torch.Tensor | None:
        """The feature part ``sum_f x_f[items] Q_f`` of subnet ``i``'s output rows
        (``len(items) x (H + 1)``), or None without ``feature_output`` or features.

        ``tables`` maps a sparse ``Q`` table's name to its gathered rows (a training
        step), in which case ``sparse[j]`` is :meth:`sparse_rows` of ``items`` with
        ``distinct``; without them the full tables are read.
        """
        spec = self.subnets[i]
        if not (self.feature_output and spec.features):
            return None
        found = None
        for j in spec.features:
            if self.feature_sparse[j]:
                name = f"s{i}_oq{j}"
                if tables is not None and name in tables:
                    columns, values, offsets, _ = sparse[j]
                    part = self._bag(tables[name], columns, values, offsets, len(items))
                else:
                    columns, values, offsets, _ = self.sparse_rows(j, items, False)
                    part = self._bag(getattr(self, name), columns, values, offsets,
                                     len(items))
            else:
                x = getattr(self, f"f{j}_dense").index_select(0, items)
                part = torch.mm(x, w[f"q{j}"])
            found = part if found is None else found + part
        return found

    def gate_inputs(self, i: int, w: dict, batch: _Batch, tables: dict | None = None
                    ) -> torch.Tensor:
        """``x W + b`` of subnet ``i`` for the batch's items (B, 3H).

        ``tables`` maps a table name to ``(gathered rows, inverse)`` for a training step
        (leaves of the distinct rows); without it the full tables are read.
        """
        spec, items = self.subnets[i], batch.items
        gi = w["b"].expand(len(items), -1)
        if spec.uses_id:
            name = f"s{i}_onehot"
            if tables is not None and name in tables:
                rows, inverse = tables[name]
                gi = gi + rows.index_select(0, inverse)
            else:
                gi = gi + getattr(self, name).index_select(0, items)
        for j in spec.features:
            if self.feature_sparse[j]:
                name = f"s{i}_sparse{j}"
                if tables is not None and name in tables:
                    rows, _ = tables[name]
                    columns, values, offsets, _ = batch.sparse(j, True)
                    gi = gi + self._bag(rows, columns, values, offsets, len(items))
                else:
                    columns, values, offsets, _ = batch.sparse(j, False)
                    gi = gi + self._bag(getattr(self, name), columns, values, offsets,
                                        len(items))
            else:
                x = getattr(self, f"f{j}_dense").index_select(0, items)
                gi = torch.addmm(gi, x, w[f"wx{j}"])
        return gi

    def subnet_step(self, i: int, w: dict, batch: _Batch, hidden: torch.Tensor,
                    tables: dict | None = None, fused: bool | None = None) -> torch.Tensor:
        """Subnet ``i``'s GRU step; ``fused``: its backend (False where autograd records
        it; None applies the rule per call)."""
        gi = self.gate_inputs(i, w, batch, tables)
        return gru_forward(gi, hidden, w["wrz"], w["wh"], need_cache=False, fused=fused)[0]

    # -- inference ------------------------------------------------------------------------

    @torch.no_grad()
    def advance(self, items: torch.Tensor, hidden: list[torch.Tensor],
                fused: bool | None = None) -> list[torch.Tensor]:
        """Feed one item per slot to every subnet (no dropout); return the new states."""
        batch = _Batch(self, items)
        return [self.subnet_step(i, self.views(i), batch, h, fused=fused)
                for i, h in enumerate(hidden)]

    def _tops(self, hidden: list[torch.Tensor], included
              ) -> list[tuple[int | None, str, torch.Tensor]]:
        """(subnet, output table, vector) triples whose scores sum to the merged scores
        (subnet None for the shared output)."""
        if self.head == "shared":
            top = sum(self.subnet_weights[i] * hidden[i] for i in included)
            return [(None, "shared_out", top)]
        tops = []
        for i in included:
            top = hidden[i]
            if self.head == "interaction" and i > 0:
                top = top * hidden[0]
            tops.append((i, f"s{i}_out", top))
        return tops

    def active_subnets(self) -> list[int]:
        """Indices of the subnets that take part in scoring."""
        return [i for i, on in enumerate(self.active) if on]

    @torch.no_grad()
    def scoring_matrix(self) -> torch.Tensor:
        """The output tables (weights and bias) of the active subnets, stacked and
        transposed, for :meth:`score_all`."""
        if self.head == "shared":
            return self.shared_out.t().contiguous()
        tables, every = [], None
        for i in self.active_subnets():
            table = getattr(self, f"s{i}_out")
            if self.feature_output and self.subnets[i].features:
                if every is None:
                    every = torch.arange(self.n_items, device=table.device)
                table = table + self.feature_rows(i, self.views(i), every)
            tables.append(table)
        return torch.cat(tables, dim=1).t().contiguous()

    @torch.no_grad()
    def top_vector(self, hidden: list[torch.Tensor]) -> torch.Tensor:
        """Per slot, the row that :meth:`scoring_matrix` turns into the merged scores."""
        parts = []
        for _, _, top in self._tops(hidden, self.active_subnets()):
            parts += [top, top.new_ones(len(top), 1)]
        return torch.cat(parts, dim=1)

    @torch.no_grad()
    def score_all(self, hidden: list[torch.Tensor], matrix: torch.Tensor | None = None
                  ) -> torch.Tensor:
        """Merged scores of every item for each slot (one matrix product)."""
        if matrix is None:
            matrix = self.scoring_matrix()
        return torch.mm(self.top_vector(hidden), matrix)

    # -- the recurrent network interface (see _interface.py) ----------------------------

    def walk_context(self, n_fed: int, feeds_last: bool = True) -> bool:
        """The walk's choice of backend."""
        return _kernels.fused_for(self.s0_dense.device)

    def step(self, items: torch.Tensor, state: list[torch.Tensor], starts: torch.Tensor,
             context=None) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Feed one item per slot to every subnet, states zeroed where a session starts;
        ``top`` is :meth:`top_vector`."""
        keep = keep_rows(starts, self.s0_dense.device)
        hidden = self.advance(items, [h * keep for h in state], context)
        return hidden, self.top_vector(hidden)

    @torch.no_grad()
    def score_top(self, top: torch.Tensor, matrix: torch.Tensor | None = None
                  ) -> torch.Tensor:
        """Merged scores of every item for each row of :meth:`top_vector`."""
        if matrix is None:
            matrix = self.scoring_matrix()
        return torch.mm(top, matrix)

    @torch.no_grad()
    def score_items(self, top: torch.Tensor, items: torch.Tensor,
                    matrix: torch.Tensor | None = None) -> torch.Tensor:
        if matrix is None:
            matrix = self.scoring_matrix()
        return torch.mm(top, matrix.index_select(1, items))

    # -- training -------------------------------------------------------------------------

    def start_training(self, optimizer: AdagradMomentum, config: StepConfig,
                       batch_size: int, generator: torch.Generator) -> ParallelTraining:
        """Pack the row-updated tables with their optimiser state; prepare the subnets'
        dropout masks (``config.dropout_p_hidden``)."""
        dropout = config.dropout_p_hidden
        names = [n for i in range(len(self.subnets)) for n in self.table_names(i)]
        if self.head == "shared":
            names.append("shared_out")
        tables = {n: optimizer.table(getattr(self, n)) for n in names}
        device = self.s0_dense.device
        masks = [DropoutMasks(dropout, batch_size, s.hidden, device=device,
                              generator=generator) if dropout > 0 else None
                 for s in self.subnets]
        grads = [torch.zeros_like(getattr(self, f"s{i}_dense"))
                 for i in range(len(self.subnets))]
        every = tuple(range(len(self.subnets)))
        return ParallelTraining(optimizer, config, tables, grads, masks, [(every, every)],
                                generator)

    def train_step(self, batch: TrainBatch, state: list[torch.Tensor],
                   training: ParallelTraining) -> torch.Tensor:
        """One sampled training step; updates ``state`` and the trained parameters.

        Parameters
        ----------
        batch : TrainBatch
            The B active slots' items, targets, samples and logQ shift; each subnet's
            state is zeroed where ``batch.keep`` is 0 (a session starts).
        state : list of Tensor (B, H_i)
            Hidden states of the subnets, replaced by the new ones.
        training : ParallelTraining
            Its ``updates`` are done in order; each computes the loss of the merged
            scores of the ``included`` subnets and steps the parameters of the
            ``trained`` ones (and, with the ``"shared"`` head, the shared output). A
            subnet's new state is computed once per step, by the first update that
            includes it.

        Returns
        -------
        Tensor
            The summed loss of the last update (0-d, not synchronised).
        """
        items, targets, samples = batch.items, batch.targets, batch.samples
        score_shift, config, updates = batch.score_shift, training.config, training.updates
        for h in state:
            h.mul_(batch.keep)  # reset the slots whose session starts
        n = items.shape[0]
        columns = targets if samples is None else torch.cat([targets, samples])
        fused = training.optimizer.fused  # the run's choice of backend
        distinct, column_of = unique_rows(columns, self.n_items, fused)
        batch = _Batch(self, items, fused)
        # The non-zeros of the scored columns' sparse features (feature output), by set.
        column_sparse: dict[int, tuple] = {}

        def sparse_of_columns(j: int) -> tuple:
            if j not in column_sparse:
                column_sparse[j] = self.sparse_rows(j, distinct, True, fused)
            return column_sparse[j]

        # ID dropout of the feature output: the same scored columns lose their ID rows in
        # every subnet, as if they were cold-start items.
        id_kept = None
        if self.feature_output and config.output_id_dropout > 0:
            id_kept = (torch.rand(len(distinct), 1, device=distinct.device,
                                  generator=training.generator)
                       >= config.output_id_dropout).to(self.s0_dense.dtype)
        new_state: dict[int, torch.Tensor] = {}
        loss = None
        # The hand-written pass sets the gradients itself: no autograd leaves needed.
        autograd = self.head != "sum" or self.autograd_steps
        for trained, included in updates:
            packed, leaves = {}, {}
            weights = {}
            for i in trained:
                weights[i] = {name: view.detach().requires_grad_(autograd)
                              for name, view in self.views(i).items()}
                for name in self.table_names(i):
                    if "_sparse" in name:
                        rows = batch.sparse(int(name.rsplit("sparse", 1)[1]), True)[3]
                    elif "_oq" in name:
                        rows = sparse_of_columns(int(name.rsplit("_oq", 1)[1]))[3]
                    elif name.endswith("_onehot"):
                        rows = batch.id_rows()[0]
                    else:
                        rows = distinct
                    packed[name] = training.tables[name].rows(rows)
                    leaves[name] = packed[name].param.detach().requires_grad_(autograd)
            if self.head == "shared":
                packed["shared_out"] = training.tables["shared_out"].rows(distinct)
                leaves["shared_out"] = packed["shared_out"].param.detach().requires_grad_(True)
            step = _StepData(batch, state, training, distinct, column_of, columns,
                             score_shift, n, id_kept, sparse_of_columns, new_state, fused)
            if self.head == "sum" and not self.autograd_steps:
                loss, hidden = self._manual_pass(step, trained, included, weights, leaves)
            else:
                loss, hidden = self._autograd_pass(step, trained, included, weights,
                                                   leaves)
            for i in trained:
                grads = self.views(i, training.grad_flat[i])
                for name, leaf in weights[i].items():
                    if leaf.grad is None:
                        grads[name].zero_()
                    else:
                        grads[name].copy_(leaf.grad)
                training.optimizer.dense_step(getattr(self, f"s{i}_dense"),
                                              training.grad_flat[i])
                new_state[i] = hidden[i].detach()
            for name, leaf in leaves.items():
                grad = leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)
                training.tables[name].step(packed[name], grad)
        for i, h in new_state.items():
            state[i] = h
        return loss

    def _input_tables(self, i: int, leaves: dict, batch: _Batch) -> dict:
        """The gathered input-table rows of trained subnet ``i``, for
        :meth:`gate_inputs`."""
        tables = {}
        for name in self.table_names(i):
            if name.endswith("_onehot"):
                tables[name] = (leaves[name], batch.id_rows()[1])
            elif "_sparse" in name:
                tables[name] = (leaves[name], None)
        return tables

    @torch.no_grad()
    def _frozen_state(self, i: int, step: _StepData) -> torch.Tensor:
        """The new state of subnet ``i``, in the forward pass but not trained; computed
        once per step (by the first update that includes it)."""
        if i not in step.new_state:
            h = self.subnet_step(i, self.views(i), step.batch, step.state[i],
                                 fused=step.fused)
            mask = step.training.masks[i]
            step.new_state[i] = h if mask is None else h * mask.next(step.n)
        return step.new_state[i]

    def _score_rows(self, i, name: str, step: _StepData, trained, weights: dict,
                    leaves: dict) -> torch.Tensor:
        """The output rows (weights and bias) of the step's distinct items in table
        ``name`` of subnet ``i`` (None: the shared table): ID rows, under ID dropout,
        plus the feature part."""
        rows = (leaves[name] if name in leaves
                else getattr(self, name).index_select(0, step.distinct))
        if step.id_kept is not None:
            rows = rows * step.id_kept
        if i is not None and self.feature_output and self.subnets[i].features:
            if i in trained:
                sparse = {j: step.sparse_of_columns(j) for j in self.subnets[i].features
                          if self.feature_sparse[j]}
                rows = rows + self.feature_rows(i, weights[i], step.distinct, leaves,
                                                sparse)
            else:
                rows = rows + self.feature_rows(i, self.views(i), step.distinct)
        return rows

    def _autograd_pass(self, step: _StepData, trained, included, weights: dict,
                       leaves: dict):
        """One update's loss and gradients by autograd (every head): the gradients are
        left in the ``.grad`` of ``weights``' and ``leaves``' tensors. Returns the loss
        and the subnets' new states."""
        batch, state, training, n = step.batch, step.state, step.training, step.n
        config = training.config
        with torch.enable_grad():
            hidden = {}
            for i in included:
                if i in trained:
                    # Differentiated by autograd: PyTorch's GRU, not the kernel.
                    h = self.subnet_step(i, weights[i], batch, state[i],
                                         self._input_tables(i, leaves, batch), fused=False)
                    if training.masks[i] is not None:
                        h = h * training.masks[i].next(n)
                    hidden[i] = h
                else:
                    hidden[i] = self._frozen_state(i, step)
            scores = None
            for i, name, top in self._tops(hidden, included):
                rows = self._score_rows(i, name, step, trained, weights, leaves)
                size = rows.shape[1] - 1
                part = torch.addmm(rows[:, size], top, rows[:, :size].t())
                scores = part if scores is None else scores + part
            loss, d_scores, d_output = sampled_loss(scores, step.columns, step.column_of,
                                                    n, config, step.score_shift)
            if d_output.requires_grad:
                torch.autograd.backward(d_output, d_scores)
        return loss, hidden

    @torch.no_grad()
    def _manual_pass(self, step: _StepData, trained, included, weights: dict,
                     leaves: dict):
        """:meth:`_autograd_pass` for the ``"sum"`` head with a hand-written backward
        pass, as GRU4Rec's: the GRU steps of the trained subnets run in the run's backend
        (the fused kernel on the CPU) and keep what their backward needs."""
        batch, state, training, n = step.batch, step.state, step.training, step.n
        hidden, caches, masks = {}, {}, {}
        for i in included:
            if i in trained:
                w = weights[i]
                gi = self.gate_inputs(i, w, batch, self._input_tables(i, leaves, batch))
                masks[i] = (training.masks[i].next(n) if training.masks[i] is not None
                            else None)
                hidden[i], caches[i] = gru_forward(gi, state[i], w["wrz"], w["wh"],
                                                   mask=masks[i], fused=step.fused)
            else:
                hidden[i] = self._frozen_state(i, step)
        scores, rows_of = None, {}
        for i, name, top in self._tops(hidden, included):
            rows = rows_of[i] = self._score_rows(i, name, step, trained, weights, leaves)
            size = rows.shape[1] - 1
            part = torch.addmm(rows[:, size], top, rows[:, :size].t())
            scores = part if scores is None else scores + part
        loss, grad, output = sampled_loss(scores, step.columns, step.column_of, n,
                                          training.config, step.score_shift)
        if output is scores:
            d_scores = grad
        else:  # the gradient of the columns' scores, merged onto the distinct items
            d_scores = torch.zeros_like(scores).index_add_(1, step.column_of, grad)
        for i in trained:
            if i not in included:
                continue
            w, top, rows = weights[i], hidden[i], rows_of[i]
            size = rows.shape[1] - 1
            # Output rows (weights and bias) of the distinct items: d^T [top, 1].
            d_rows = torch.mm(d_scores.t(), with_bias_input(top))
            name = f"s{i}_out"
            if name in leaves:
                leaves[name].grad = (d_rows if step.id_kept is None
                                     else d_rows * step.id_kept)
            for j in (self.subnets[i].features if self.feature_output else ()):
                if self.feature_sparse[j]:
                    columns, values, offsets, found = step.sparse_of_columns(j)
                    bags = _bag_ids(offsets, len(columns))
                    leaves[f"s{i}_oq{j}"].grad = torch.zeros(
                        len(found), size + 1, device=rows.device).index_add_(
                        0, columns, d_rows.index_select(0, bags) * values.unsqueeze(1))
                else:
                    x = getattr(self, f"f{j}_dense").index_select(0, step.distinct)
                    w[f"q{j}"].grad = torch.mm(x.t(), d_rows)
            d_top = torch.mm(d_scores, rows[:, :size])
            d_wrz, d_wh = torch.empty_like(w["wrz"]), torch.empty_like(w["wh"])
            dgi = gru_backward(d_top, caches[i], w["wh"], d_wrz, d_wh, mask=masks[i])
            w["wrz"].grad, w["wh"].grad, w["b"].grad = d_wrz, d_wh, dgi.sum(0)
            spec = self.subnets[i]
            if spec.uses_id:
                ids, inverse = batch.id_rows()
                leaves[f"s{i}_onehot"].grad = torch.zeros(
                    len(ids), dgi.shape[1], device=dgi.device).index_add_(0, inverse, dgi)
            for j in spec.features:
                if self.feature_sparse[j]:
                    columns, values, offsets, found = batch.sparse(j, True)
                    bags = _bag_ids(offsets, len(columns))
                    leaves[f"s{i}_sparse{j}"].grad = torch.zeros(
                        len(found), dgi.shape[1], device=dgi.device).index_add_(
                        0, columns, dgi.index_select(0, bags) * values.unsqueeze(1))
                else:
                    x = getattr(self, f"f{j}_dense").index_select(0, batch.items)
                    w[f"wx{j}"].grad = torch.mm(x.t(), dgi)
        return loss, hidden
