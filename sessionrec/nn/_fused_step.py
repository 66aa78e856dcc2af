"""GRU4Rec's training step as one call into the fused C kernels.

On two CPU cores a GRU4Rec step of the official configuration takes about 2 ms, and a
third of it went to Python and to the dispatch of some 40 small PyTorch operations
between the kernels of :mod:`._kernels`. :class:`FusedGRU4RecStep` prepares, once per
training run, the addresses of the network's buffers and of scratch space, and then runs
each step with one ``ctypes`` call of ``sr_gru4rec_step_f32`` (``csrc/``). That
function calls the same kernels, in the same order, on the same values as
:meth:`GRU4RecNetwork.train_step <._gru4rec_network.GRU4RecNetwork.train_step>` does through
:mod:`._kernels`, so a fit is bit for bit the same either way (a test checks it).

It covers the linear cross-entropy (the official default loss; with or without logQ and
samples) with every input (the output matrix, the official default
``constrained_embedding``; a separate embedding; one-hot), any number of layers of either
GRU, with or without dropout. Other losses, other dtypes and the GPU take the step of
``_gru4rec_network.py``.
"""

from __future__ import annotations

import torch

from .._native import kernels as _kernels
from ._gru4rec_network import GRU4RecNetwork, TrainingState
from ._losses import StepConfig

__all__ = ["FusedGRU4RecStep"]


class FusedGRU4RecStep:
    """Training steps of one fit on the mini-batches of a schedule, each one C call.

    Parameters
    ----------
    network : GRU4RecNetwork
    state : TrainingState
        From ``network.start_training`` (its item tables are packed).
    max_batch : int
        The widest mini-batch of the schedule.
    sampler : NegativeSampler or None
        Extra negatives; its store is read in place.
    shift_batch, shift_sample : Tensor (n_items,) or None
        The logQ shifts of an item as a target and as a sample (None: no correction).
    items, targets : LongTensor
        Inputs and next items of every schedule entry.
    keep : Tensor (entries, 1)
        0 where a session starts, else 1.

    Use :meth:`applies` first; a step then runs as ``step(start, stop, hidden)`` for
    the entries ``start:stop`` and returns the summed loss as a float.
    """

    def __init__(self, network: GRU4RecNetwork, state: TrainingState, max_batch: int,
                 sampler, shift_batch: torch.Tensor | None,
                 shift_sample: torch.Tensor | None, items: torch.Tensor,
                 targets: torch.Tensor, keep: torch.Tensor):
        optimizer = state.optimizer
        acc, mom, _ = optimizer.dense_state(network.dense)
        in_table = None
        if network.input_mode != "constrained":
            in_table = state.tables["embed" if network.input_mode == "embedding"
                                    else "onehot"].buffer
        self._kernel = _kernels.Gru4recStep(
            n_items=network.n_items, sizes=torch.tensor(network.layers),
            layout=network.layer_layout(),
            reset_after=torch.tensor(network.layer_resets_after, dtype=torch.int64),
            input_mode=network.input_mode, table=state.tables["out"].buffer,
            in_table=in_table, dense=network.dense.data, grad=state.grad_flat, acc=acc,
            mom=mom, lr=optimizer.lr, momentum=optimizer.momentum,
            n_sample=0 if sampler is None else sampler.n_sample,
            samples_int32=sampler is not None and sampler.dtype == torch.int32,
            max_batch=int(max_batch), shift_batch=shift_batch, shift_sample=shift_sample,
            items=items, targets=targets, keep=keep)
        self.max_batch = int(max_batch)
        self.n_sample = 0 if sampler is None else sampler.n_sample
        self.sampler = sampler
        self.embed_masks = state.embed_masks
        self.hidden_masks = state.hidden_masks

    @staticmethod
    def applies(network: GRU4RecNetwork, state: TrainingState, config: StepConfig) -> bool:
        """Whether the fused step computes this run's steps (see the module's docstring)."""
        # The run's choice of backend, made once (its tables carry it).
        return (state.tables["out"].fused and config.loss == "cross-entropy"
                and config.activation == "linear")

    def accepts(self, width: int) -> bool:
        """Whether a mini-batch of ``width`` rows can run here: one row with no sample
        has no negative, which the Python step handles."""
        return width <= self.max_batch and width + self.n_sample >= 2

    def __call__(self, start: int, stop: int, hidden: list[torch.Tensor]) -> float:
        # The random draws in the Python step's order: samples, then the embedding's
        # dropout mask, then each layer's.
        samples = None if self.sampler is None else self.sampler.next_address()
        embed = None if self.embed_masks is None else self.embed_masks.next_address()
        masks = (None if self.hidden_masks is None
                 else [store.next_address() for store in self.hidden_masks])
        return self._kernel(start, stop, hidden, samples, embed, masks)
