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

import ctypes

import torch

from .._native import kernels as _kernels
from ._gru4rec_network import GRU4RecNetwork, TrainingState
from ._losses import StepConfig

__all__ = ["FusedGRU4RecStep"]

# The C step's input modes (GRU4RecNetwork.input_mode): the output rows, a table of
# embeddings, or a table of the first layer's gate inputs.
_INPUT_MODES = {"constrained": 0, "embedding": 1, "onehot": 2}


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
        Inputs and next items of every schedule entry (contiguous).
    keep : Tensor (entries, 1)
        0 where a session starts, else 1 (float32, contiguous).

    Use :meth:`applies` first; a step then runs as ``step(start, stop, hidden)`` for
    the entries ``start:stop`` and returns the summed loss as a float.
    """

    def __init__(self, network: GRU4RecNetwork, state: TrainingState, max_batch: int,
                 sampler, shift_batch: torch.Tensor | None,
                 shift_sample: torch.Tensor | None, items: torch.Tensor,
                 targets: torch.Tensor, keep: torch.Tensor):
        table = state.tables["out"]
        optimizer = state.optimizer
        acc, mom, _ = optimizer.dense_state(network.dense)
        self._keep_alive = {
            "sizes": torch.tensor(network.layers, dtype=torch.int64),
            "layout": network.layer_layout(),
            "reset_after": torch.tensor(network.layer_resets_after, dtype=torch.int64),
            "shift_batch": _kernels._dense(shift_batch),
            "shift_sample": _kernels._dense(shift_sample),
            # what the C function reads: int64 items, float32 keep flags
            "items": items.to(torch.int64).contiguous(),
            "targets": targets.to(torch.int64).contiguous(),
            "keep": keep.to(torch.float32).contiguous(), "acc": acc, "mom": mom,
        }
        kept = self._keep_alive
        n_sample = 0 if sampler is None else sampler.n_sample
        plan = _kernels.Gru4recStepPlan(
            n_items=network.n_items, n_layers=len(network.layers), n_sample=n_sample,
            samples_int32=int(sampler is not None and sampler.dtype == torch.int32),
            max_batch=int(max_batch), n_threads=_kernels.threads(),
            sizes=kept["sizes"].data_ptr(), layout=kept["layout"].data_ptr(),
            reset_after=kept["reset_after"].data_ptr(), table=table.buffer.data_ptr(),
            n_planes=table.buffer.shape[0],
            plane_stride=table.buffer.shape[1] * table.buffer.shape[2],
            dense=network.dense.data_ptr(), grad=state.grad_flat.data_ptr(),
            acc=acc.data_ptr(), mom=_kernels._pointer(mom), n_dense=network.dense.numel(),
            shift_batch=_kernels._pointer(kept["shift_batch"]),
            shift_sample=_kernels._pointer(kept["shift_sample"]), lr=optimizer.lr,
            momentum=optimizer.momentum, input_mode=_INPUT_MODES[network.input_mode])
        if network.input_mode != "constrained":
            buffer = state.tables["embed" if network.input_mode == "embedding"
                                  else "onehot"].buffer
            plan.in_table, plan.in_planes = buffer.data_ptr(), buffer.shape[0]
            plan.in_plane_stride = buffer.shape[1] * buffer.shape[2]
            plan.in_width = buffer.shape[2]
        n_index, n_work = _kernels.gru4rec_step_scratch(plan)
        kept["index"] = torch.empty(n_index, dtype=torch.int64)
        kept["work"] = torch.empty(n_work)
        kept["parts"] = torch.empty(2 * int(max_batch), dtype=torch.float64)
        kept["keep_bias"] = torch.empty(2 * int(max_batch) + n_sample, dtype=torch.uint8)
        plan.index, plan.work = kept["index"].data_ptr(), kept["work"].data_ptr()
        plan.parts, plan.keep_bias = kept["parts"].data_ptr(), kept["keep_bias"].data_ptr()
        _kernels.gru4rec_step_init(plan)
        self._plan = plan  # the C function reads it at every step
        self._function = _kernels.gru4rec_step_function()
        self._plan_address = ctypes.addressof(plan)
        self.max_batch = int(max_batch)
        self.n_sample = n_sample
        self.sampler = sampler
        self.embed_masks = state.embed_masks
        self.hidden_masks = state.hidden_masks
        self._hidden = (ctypes.c_void_p * len(network.layers))()
        self._masks = (ctypes.c_void_p * len(network.layers))()
        self._loss = ctypes.c_double()
        self._loss_address = ctypes.addressof(self._loss)
        self._items = kept["items"].data_ptr()
        self._targets = kept["targets"].data_ptr()
        self._keep = kept["keep"].data_ptr()

    @staticmethod
    def applies(network: GRU4RecNetwork, state: TrainingState, config: StepConfig) -> bool:
        """Whether the fused step computes this run's steps (see the module's docstring)."""
        # The run's choice of backend, made once (the optimiser's; its tables carry it).
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
        masks = None
        if self.hidden_masks is not None:
            masks = self._masks
            for i, store in enumerate(self.hidden_masks):
                masks[i] = store.next_address()
        for i, h in enumerate(hidden):
            if not h.is_contiguous():  # pragma: no cover - the training loop's are
                raise ValueError("hidden states must be contiguous")
            self._hidden[i] = h.data_ptr()
        status = self._function(self._plan_address, stop - start, self._items + 8 * start,
                                self._targets + 8 * start, samples, self._keep + 4 * start,
                                self._hidden, embed, masks, self._loss_address)
        if status < 0:
            raise IndexError("an item of the mini-batch lies outside the catalogue")
        return self._loss.value
