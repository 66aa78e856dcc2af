"""Data-parallel training over the ranks of a ``torch.distributed`` process group.

Every rank holds the whole model and the whole epoch's schedule (the same events give the
same schedule everywhere). A step of ``batch_size`` slots is shared out: rank ``r`` trains
the slots whose number (in the schedule's first step, kept as the batch shrinks) is ``r``
modulo the number of ranks, so a session stays on one rank from its first event to its
last and its hidden state never crosses ranks (:func:`rank_share`). The negative samples
of a step are the same on every rank (one sampler stream, seeded alike).

After its backward pass each rank hands its gradients to the optimiser, which merges
them before any update (:class:`RankReducer`, called by
:class:`~._optim.AdagradMomentum` and its packed tables):

* dense gradients (the GRU weights) are summed over the ranks (``all_reduce``);
* the sparse row gradients of an item table are summed per row over the ranks (the row
  indices gathered from every rank, ``all_gather``; the gradients summed in the rows of
  their union, ``all_reduce``), so that each row that any
  rank touched takes *one* sparse Adagrad-momentum step with the summed gradient, and a
  row that no rank touched is left alone, its momentum included: exactly the step of one
  process whose mini-batch holds all the ranks' slots.

So every rank applies the same update and the replicas stay equal without ever sending
parameters. What differs from one process at the same global batch size: each rank's
loss scores its own slots' targets (in-batch negatives of its share of the batch, plus
the shared samples), and floating-point sums run in another order.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

__all__ = ["RankReducer", "rank_share", "require_process_group", "broadcast_seed"]


def require_process_group(parameter: str = "distributed"):
    """``torch.distributed`` once its default process group is up; a clear error
    otherwise (naming ``parameter``)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            f"{parameter}=True trains across the processes of a torch.distributed "
            "process group, and none is initialised: launch the script with torchrun "
            "(torchrun --nproc-per-node 2 train.py) and call "
            "torch.distributed.init_process_group('gloo') (CPU) or ('nccl') (GPUs) "
            "before fit.")
    return dist


def broadcast_seed(seed: int, device: torch.device) -> int:
    """Rank 0's ``seed`` on every rank (so that ``random_state=None`` gives every rank
    the same initial weights and samples)."""
    dist = require_process_group()
    value = torch.tensor([seed], dtype=torch.int64, device=_comm_device(device))
    dist.broadcast(value, src=0)
    return int(value.item())


def _comm_device(device: torch.device) -> torch.device:
    """Where a collective's tensors must lie: the GPU for NCCL, the CPU for gloo."""
    import torch.distributed as dist

    return device if dist.get_backend() == "nccl" else torch.device("cpu")


class RankReducer:
    """Merges one step's gradients over the ranks (see the module's docstring).

    ``active`` is False on a step in which this rank has no slot (the end of an epoch,
    when its sessions are done before the others'): the rank still takes part in every
    collective, with zero dense gradients and no rows.
    """

    def __init__(self, device: torch.device):
        self.dist = require_process_group()
        self.comm = _comm_device(torch.device(device))  # where collectives run
        self.rank = self.dist.get_rank()
        self.world_size = self.dist.get_world_size()
        self.active = True

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over the ranks, in place (this rank's part zeroed when not
        :attr:`active`)."""
        if not self.active:
            tensor.zero_()
        if tensor.device == self.comm:
            self.dist.all_reduce(tensor)
            return tensor
        moved = tensor.to(self.comm)
        self.dist.all_reduce(moved)
        return tensor.copy_(moved)

    def sum_float(self, value: float) -> float:
        """``value`` summed over the ranks (in float64)."""
        tensor = torch.tensor([value], dtype=torch.float64, device=self.comm)
        self.dist.all_reduce(tensor)
        return float(tensor.item())

    def rows(self, index: torch.Tensor, grad: torch.Tensor, n_rows: int,
             keep_last_column: torch.Tensor | None = None):
        """Merge the sparse gradients of a table's rows over the ranks.

        Parameters
        ----------
        index : LongTensor (k,)
            This rank's distinct rows (the value ``n_rows`` marks padding, as the GPU's
            :func:`~._optim.unique_rows_padded` makes it).
        grad : Tensor (k, width)
        n_rows : int
            Rows of the table.
        keep_last_column : BoolTensor (k,) or None
            Rows whose last column this rank's gradient does not touch.

        Returns
        -------
        index, grad, keep_last_column
            The rows any rank touched (distinct, sorted), their summed gradients, and
            which of them no rank touched in the last column (None when no rank passed
            ``keep_last_column``: every table is stepped the same way on every rank).
        """
        dist, device, comm = self.dist, index.device, self.comm
        if not self.active:
            index, grad = index[:0], grad[:0]
            keep_last_column = None if keep_last_column is None else keep_last_column[:0]
        length = torch.tensor([len(index)], dtype=torch.int64, device=comm)
        dist.all_reduce(length, op=dist.ReduceOp.MAX)
        size = int(length.item())
        # Row codes: 2 * row + (1 if the row's last column is kept), padded with the
        # padding row (kept): one gather of indices carries both. The gradients then
        # travel once, summed (all_reduce) in the rows of the union of every rank's rows.
        codes = torch.full((size,), 2 * n_rows + 1, dtype=torch.int64, device=comm)
        kept = (torch.ones(len(index), dtype=torch.int64, device=device)
                if keep_last_column is None else keep_last_column.to(torch.int64))
        codes[:len(index)] = (2 * index + kept).to(comm)
        all_codes = [torch.empty_like(codes) for _ in range(self.world_size)]
        dist.all_gather(all_codes, codes)
        codes = torch.cat(all_codes).to(device)
        merged_rows, inverse = torch.unique(codes // 2, return_inverse=True)
        mine = inverse[self.rank * size:self.rank * size + len(index)]
        merged = torch.zeros(len(merged_rows), grad.shape[1], dtype=grad.dtype, device=comm)
        merged.index_copy_(0, mine.to(comm), grad.to(comm))
        dist.all_reduce(merged)
        merged = merged.to(device)
        # A row keeps its last column only if every rank that touched it kept it.
        touched_last = torch.zeros(len(merged_rows), dtype=torch.bool, device=device)
        touched_last.index_fill_(0, inverse[codes % 2 == 0], True)
        real = merged_rows < n_rows  # the padding row goes
        merged_rows, merged, keep = merged_rows[real], merged[real], ~touched_last[real]
        return merged_rows, merged, (None if keep_last_column is None else keep)


def rank_share(schedule, rank: int, world_size: int):
    """Rank ``rank``'s share of a slot-parallel schedule (a ``ParallelSchedule``).

    The slots of the schedule's first step are numbered; a slot keeps its number while
    the batch shrinks (``schedule.shrink`` lists the surviving rows), and the rank takes
    the slots whose number is ``rank`` modulo ``world_size``, at every step. The share
    has the schedule's number of steps: a step in which the rank has no slot left has
    width 0 (its ``shrink`` empties the state), so that every rank steps, and meets the
    others' collectives, the same number of times.
    """
    widths = schedule.widths()
    n_steps = schedule.n_steps
    if n_steps == 0:
        return schedule
    slots = np.arange(int(widths[0]), dtype=np.int64)
    bounds = sorted(t for t in schedule.shrink if 0 < t < n_steps)
    segments = list(zip([0, *bounds], [*bounds, n_steps], strict=True))
    take = []
    shrink = {}
    mine = slots[slots % world_size == rank]
    for first, stop in segments:
        if first in schedule.shrink:
            slots = slots[schedule.shrink[first]]
            now = slots[slots % world_size == rank]
            if len(now) != len(mine):
                shrink[first] = np.searchsorted(mine, now).astype(np.int64)
            mine = now
        assert widths[first:stop].min() == widths[first:stop].max() == len(slots)
        take.append(np.tile(slots % world_size == rank, stop - first))
    take = np.concatenate(take)
    # Every step of the schedule has a slot, so no segment of reduceat is empty.
    local_widths = np.add.reduceat(take.astype(np.int64), schedule.step_offsets[:-1])
    step_offsets = np.zeros(n_steps + 1, dtype=np.int64)
    np.cumsum(local_widths, out=step_offsets[1:])
    return replace(schedule, positions=schedule.positions[take], step_offsets=step_offsets,
                   session_start=schedule.session_start[take],
                   user_start=(None if schedule.user_start is None
                               else schedule.user_start[take]),
                   shrink=shrink)
