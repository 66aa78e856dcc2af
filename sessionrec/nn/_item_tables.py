"""The item tables of GRU4Rec's and HRNN's networks, and their sparse training steps.

Both networks score with one output table and feed their first GRU layer an item's
output row, a row of a separate embedding, or (one-hot input) a row of gate inputs; a
training step reads and updates only the rows its items, targets and samples touch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ._layers import init_uniform_
from ._optim import AdagradMomentum, PackedTable, TableRows, unique_rows

__all__ = ["ItemTables", "StepRows"]


@dataclass
class StepRows:
    """The item-table rows one training step touches (see :meth:`ItemTables.step_rows`).

    ``out``: the distinct output rows (the inputs' too with the constrained input, then
    the columns'); ``column_of``: each column's row among them (targets first);
    ``input_of``: each input's row among them (constrained input only); ``inputs`` and
    ``input_inverse``: the inputs' distinct rows of the input table and each input's
    position among them (the other inputs).
    """

    out: TableRows
    column_of: torch.Tensor
    input_of: torch.Tensor | None
    inputs: TableRows | None
    input_inverse: torch.Tensor | None


class ItemTables:
    """Item tables of a network, updated by sparse row steps (a mixin of ``nn.Module``).

    * ``out`` (n_items x (H + 1)): the output weights ``W_y`` and, in the last column,
      the output bias ``b_y`` (one table, so one sparse update serves both);
    * the input (``input_mode``): with ``constrained`` embedding an item's input *is* its
      row of ``W_y`` (the official GRU4Rec default); with ``embedding > 0`` a separate
      table ``embed``; otherwise one-hot, as in the papers: the first layer's input
      weights are a table ``onehot`` (n_items x 3 H_0) whose rows are gathered.
    """

    def _make_item_tables(self, n_items: int, width: int, first_size: int, embedding: int,
                          constrained: bool) -> int:
        """Make the tables for a top layer of ``width`` units and a first layer of
        ``first_size``; returns the width of the first layer's vector input (0: one-hot)."""
        self.n_items = int(n_items)
        if constrained:
            self.input_mode, n_input = "constrained", int(width)
        elif embedding > 0:
            self.input_mode, n_input = "embedding", int(embedding)
        else:
            self.input_mode, n_input = "onehot", 0
        self.out = nn.Parameter(torch.zeros(n_items, width + 1), requires_grad=False)
        self.embed = (nn.Parameter(torch.zeros(n_items, n_input), requires_grad=False)
                      if self.input_mode == "embedding" else None)
        self.onehot = (nn.Parameter(torch.zeros(n_items, 3 * first_size), requires_grad=False)
                       if self.input_mode == "onehot" else None)
        return n_input

    @torch.no_grad()
    def reset_item_tables(self, generator: torch.Generator | None = None) -> None:
        """GRU4Rec's initialisation of the tables: zero biases, per-gate-block uniform
        weights."""
        self.out.zero_()
        init_uniform_(self.out[:, :-1], generator=generator)
        if self.embed is not None:
            init_uniform_(self.embed, generator=generator)
        if self.onehot is not None:
            init_uniform_(self.onehot, n_blocks=3, generator=generator)

    def item_input(self, items: torch.Tensor) -> torch.Tensor | None:
        """The items' vector inputs (their output rows' weights, or embeddings); None for
        the one-hot input (gather :attr:`onehot` rows instead)."""
        if self.input_mode == "constrained":
            return self.out[:, :-1].index_select(0, items)
        if self.input_mode == "embedding":
            return self.embed.index_select(0, items)
        return None

    @property
    def _input_table(self) -> str | None:
        return {"embedding": "embed", "onehot": "onehot"}.get(self.input_mode)

    def pack_item_tables(self, optimizer: AdagradMomentum) -> dict[str, PackedTable]:
        """The tables packed with the optimiser's state for a training run (the run's
        implementation; ``finish`` of the training state releases them)."""
        tables = {"out": optimizer.table(self.out)}
        if self._input_table is not None:
            tables[self._input_table] = optimizer.table(getattr(self, self._input_table))
        return tables

    def step_rows(self, tables: dict, items: torch.Tensor, columns: torch.Tensor
                  ) -> StepRows:
        """The rows a step with ``items`` as inputs and ``columns`` (targets, then
        samples) touches, each distinct row read once."""
        n = items.shape[0]
        out_table = tables["out"]
        fused = out_table.fused  # the run's backend
        constrained = self.input_mode == "constrained"
        touched = torch.cat([items, columns]) if constrained else columns
        distinct, inverse = unique_rows(touched, self.n_items, fused)
        out = out_table.rows(distinct)
        if constrained:
            return StepRows(out, inverse[n:], inverse[:n], None, None)
        in_distinct, in_inverse = unique_rows(items, self.n_items, fused)
        return StepRows(out, inverse, None, tables[self._input_table].rows(in_distinct),
                        in_inverse)

    def step_item_tables(self, tables: dict, rows: StepRows, out_grad: torch.Tensor,
                         input_grad: torch.Tensor | None) -> None:
        """The sparse steps of the touched rows: ``out_grad`` of the output rows (the
        constrained inputs' gradients already added), ``input_grad`` of the input rows.

        Output rows touched only as inputs have no bias gradient: their bias (and its
        momentum) is left alone, as with the official code's separate bias table.
        """
        keep_bias = None
        if rows.input_of is not None:
            keep_bias = torch.ones(len(rows.out.index), dtype=torch.bool,
                                   device=out_grad.device)
            keep_bias.index_fill_(0, rows.column_of, False)
        else:
            tables[self._input_table].step(rows.inputs, input_grad)
        tables["out"].step(rows.out, out_grad, keep_bias)
