"""Adagrad with momentum: dense steps, and sparse row steps on packed item tables.

The rule (the official GRU4Rec optimiser), for every parameter element:
``acc += g^2``, ``step = lr * g / sqrt(acc + eps)``, ``mom = momentum * mom + step``
(``mom = step`` without momentum), ``p -= mom``.

Item tables get *sparse* steps: only the rows a mini-batch touched are updated, their
accumulator and momentum included, after the gradients of rows that occur several times
in the batch have been merged. To make that cheap, a :class:`PackedTable` keeps the
parameters, accumulator and momentum as planes of one buffer, so a step is one gather of
the touched rows of all planes, contiguous arithmetic on them, and one scatter back.
"""

from __future__ import annotations

import torch
from torch import nn

from .._native import kernels as _kernels

__all__ = ["AdagradMomentum", "PackedTable", "FusedPackedTable", "TableRows", "unique_rows",
           "unique_rows_padded"]


# On the CPU, rows touched by a step are deduplicated by marking them in a table of all
# rows when that table is at most this many times longer than the list of rows; a sort is
# cheaper beyond it (large catalogues).
_MARK_RATIO = 8


def unique_rows(rows: torch.Tensor, n_rows: int, fused: bool | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct values of ``rows`` and, for each element, the position of its value.

    On the CPU the result is exactly ``torch.unique(rows, return_inverse=True)`` (sorted
    distinct values). On a GPU it is padded to ``len(rows)`` with the index ``n_rows`` (a
    dummy row every :class:`PackedTable` has), because a data-dependent size would force
    the host to wait for the device at every step.
    """
    if rows.device.type != "cpu":
        return unique_rows_padded(rows, n_rows)
    if n_rows > _MARK_RATIO * len(rows):
        return torch.unique(rows, return_inverse=True)
    if fused is None:  # a direct call; training steps pass their run's decision
        fused = _kernels.available()
    if fused and rows.dtype == torch.int64:
        return _kernels.unique_rows_marked(rows, n_rows)
    # A step's rows cover much of a small catalogue (thousands of negative samples):
    # marking them in a table of all rows and counting the marks finds the same distinct
    # rows and positions in linear time, without torch.unique's sort.
    marked = torch.zeros(n_rows, dtype=torch.bool)
    marked.index_fill_(0, rows, True)
    position = torch.cumsum(marked, 0).sub_(1)
    return marked.nonzero().squeeze(1), position.index_select(0, rows)


def unique_rows_padded(rows: torch.Tensor, n_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`unique_rows` with a static output size (the GPU path; runs on any device)."""
    ordered, order = torch.sort(rows)
    new = torch.ones_like(ordered, dtype=torch.bool)
    new[1:] = ordered[1:] != ordered[:-1]
    segment = torch.cumsum(new, 0) - 1
    distinct = torch.full_like(rows, n_rows)
    distinct.scatter_(0, segment, ordered)  # equal values write equal entries
    inverse = torch.empty_like(rows)
    inverse[order] = segment
    return distinct, inverse


class AdagradMomentum:
    """Settings and dense state of the optimiser for one training run.

    Parameters
    ----------
    lr : float
        Learning rate.
    momentum : float
        Heavy-ball momentum on top of the Adagrad step (0 = none).
    eps : float, default=1e-6
        Added to the accumulator before the square root.
    fused : bool or None, default=None
        Whether the run's tables and steps use the fused CPU kernels: the fit's one
        decision (``_kernels.fused_for(device)``), which :meth:`table` and the
        training steps read from here. None applies that rule to each parameter.
    reducer : RankReducer or None, default=None
        Data-parallel training (:mod:`._distributed`): every gradient is merged over the
        ranks before the step that reads it, dense gradients summed, a table's rows
        gathered and summed per row, so that each rank takes the same step.
    """

    def __init__(self, lr: float, momentum: float, eps: float = 1e-6, *,
                 fused: bool | None = None, reducer=None):
        self.lr = float(lr)
        self.momentum = float(momentum)
        self.eps = float(eps)
        self.fused = fused
        self.reducer = reducer
        self._dense_state: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}

    @torch.no_grad()
    def dense_step(self, param: torch.Tensor, grad: torch.Tensor) -> None:
        """Update every element of ``param`` (e.g. the flat buffer of all GRU weights)."""
        acc, mom, fused = self.dense_state(param)
        if self.reducer is not None:
            self.reducer.sum_(grad)
        if fused:
            _kernels.dense_adagrad_(param, grad, acc, mom, self.lr, self.momentum)
            return
        acc.addcmul_(grad, grad)
        denom = acc.sqrt()
        if mom is None:
            param.addcdiv_(grad, denom, value=-self.lr)
        else:
            mom.mul_(self.momentum).addcdiv_(grad, denom, value=self.lr)
            param.sub_(mom)

    def dense_state(self, param: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor | None, bool]:
        """``(accumulator, momentum or None, fused)`` of ``param``, made at first use."""
        key = id(param)
        if key not in self._dense_state:
            # The accumulator starts at eps, so sqrt(acc) is sqrt(sum g^2 + eps): one
            # operation fewer per step than adding eps every time.
            self._dense_state[key] = (torch.full_like(param, self.eps),
                                      torch.zeros_like(param) if self.momentum > 0 else None,
                                      self.uses_kernels(param))
        return self._dense_state[key]

    def uses_kernels(self, param: torch.Tensor) -> bool:
        """The run's decision for ``param`` (see ``fused``)."""
        return _kernels.enabled_for(param) if self.fused is None else self.fused

    def table(self, param: nn.Parameter) -> PackedTable:
        """``param`` (an item table) packed with its optimiser state for this run, in the
        run's implementation (see ``fused``)."""
        kind = FusedPackedTable if self.uses_kernels(param) else PackedTable
        return kind(param, self)

    def rows_step(self, gathered: torch.Tensor, grad: torch.Tensor) -> None:
        """Sparse step on gathered rows of a :class:`PackedTable`, in place.

        ``gathered`` holds the planes ``[param, acc(, mom)]`` of the distinct touched rows
        (each plane contiguous), ``grad`` the merged gradient of those rows.
        """
        param, acc = gathered[0], gathered[1]
        acc.addcmul_(grad, grad)
        denom = acc.sqrt()  # the accumulator holds eps from the start (PackedTable)
        if self.momentum > 0:
            mom = gathered[2]
            mom.mul_(self.momentum).addcdiv_(grad, denom, value=self.lr)
            param.sub_(mom)
        else:
            param.addcdiv_(grad, denom, value=-self.lr)


class TableRows:
    """The rows ``index`` (distinct) of a :class:`PackedTable` that one step reads and
    then updates: ``param`` holds their parameters (rows x width)."""

    __slots__ = ("table", "index", "_planes", "_param")

    def __init__(self, table: PackedTable, index: torch.Tensor,
                 planes: torch.Tensor | None = None):
        self.table, self.index, self._planes = table, index, planes
        self._param = None if planes is None else planes[0]

    @property
    def param(self) -> torch.Tensor:
        if self._param is None:  # gathered when first read
            self._param = self.table.buffer[0].index_select(0, self.index)
        return self._param


class PackedTable:
    """An item table packed with its optimiser state, for the duration of a fit.

    The buffer holds planes ``[param, acc(, mom)]``, each (n_rows + 1) x width: the extra
    row is the dummy row of :func:`unique_rows`. The parameter's data becomes a view of
    the first plane (contiguous); :meth:`release` gives it storage of its own again.

    A step reads the rows it touches (:meth:`rows`) and then updates them with their
    merged gradient (:meth:`step`). Here (PyTorch's implementation) :meth:`rows` gathers
    the rows of every plane, the step updates that copy and scatters it back;
    :class:`FusedPackedTable` updates them in place. Make one with
    :meth:`AdagradMomentum.table`, which picks the run's implementation.
    """

    fused = False  # whether the table's steps run in the fused kernels

    def __init__(self, param: nn.Parameter, optimizer: AdagradMomentum):
        n_rows, width = param.shape
        planes = 3 if optimizer.momentum > 0 else 2
        self.param = param
        self.width = width
        self.n_rows = n_rows
        self.optimizer = optimizer
        self.buffer = torch.zeros(planes, n_rows + 1, width, dtype=param.dtype,
                                  device=param.device)
        self.buffer[0, :n_rows] = param.data
        self.buffer[1] = optimizer.eps  # see AdagradMomentum.dense_step
        param.data = self.buffer[0, :n_rows]

    def rows(self, index: torch.Tensor) -> TableRows:
        """The distinct rows ``index`` a step reads (``.param``) and will update."""
        return TableRows(self, index, self.buffer.index_select(1, index))

    def step(self, rows: TableRows, grad: torch.Tensor,
             keep_last_column: torch.Tensor | None = None) -> None:
        """Apply the sparse step to ``rows`` (from :meth:`rows`, read before any update)
        with their merged gradient ``grad``.

        ``keep_last_column`` (bool per row) marks rows whose last column must not
        change: a table that packs two parameters (output weights and bias) updates each
        only on the rows its own gradient touched, as two separate sparse tables would;
        otherwise momentum would still move an untouched element.
        """
        gathered = rows._planes
        reducer = self.optimizer.reducer
        if reducer is not None:
            index, grad, keep_last_column = reducer.rows(rows.index, grad, self.n_rows,
                                                         keep_last_column)
            rows = TableRows(self, index, self.buffer.index_select(1, index))
            gathered = rows._planes
        kept = None
        if keep_last_column is not None and self.optimizer.momentum > 0:
            kept = gathered[:, :, -1].clone()
        self.optimizer.rows_step(gathered, grad)
        if kept is not None:
            gathered[:, :, -1] = torch.where(keep_last_column, kept, gathered[:, :, -1])
        self.buffer.index_copy_(1, rows.index, gathered)

    def release(self) -> None:
        self.param.data = self.buffer[0, :self.n_rows].clone()
        self.buffer = None


class FusedPackedTable(PackedTable):
    """:class:`PackedTable` with its steps in the fused CPU kernels: a step updates the
    rows of every plane in place, in one pass (``sparse_adagrad_``), and :meth:`rows`
    copies only the parameters, and only if the step reads them."""

    fused = True

    def rows(self, index: torch.Tensor) -> TableRows:
        return TableRows(self, index)

    def step(self, rows: TableRows, grad: torch.Tensor,
             keep_last_column: torch.Tensor | None = None) -> None:
        index, reducer = rows.index, self.optimizer.reducer
        if reducer is not None:
            index, grad, keep_last_column = reducer.rows(index, grad, self.n_rows,
                                                         keep_last_column)
        _kernels.sparse_adagrad_(self.buffer, index, grad, keep_last_column,
                                 self.optimizer.lr, self.optimizer.momentum)
