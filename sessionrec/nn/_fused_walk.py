"""GRU4Rec's evaluation walk as a few calls into the fused C kernels.

Ranking the next items of rsc15-100k's test set feeds 10k events in 77 session-parallel
steps. Each step's GRU is one C call already, but the Python around it (the state
resets, the gather of the gate inputs, the kernel's wrapper, the bookkeeping of the
schedule) cost about as much again: some 17 ms of a 36 ms walk on two cores.
:class:`FusedGRUWalk` prepares the schedule and the network's buffers once and runs
whole runs of steps with one ``ctypes`` call of ``sr_gru_walk_f32`` (``_fused.c``),
which calls the same GRU kernel on the same values, so its states are bit for bit those
of the Python walk (a test checks it).
"""

from __future__ import annotations

import ctypes

import numpy as np
import torch

from . import _kernels
from ._network import GRU4RecNetwork

__all__ = ["FusedGRUWalk"]


class FusedGRUWalk:
    """The top-layer states of an evaluation walk, computed by the C kernels.

    Parameters
    ----------
    network : GRU4RecNetwork
    gate_table : Tensor (n_items, 3 H_0)
        The first layer's gate inputs per item (``network.item_gate_table``).
    schedule : ParallelSchedule
        A session-parallel schedule of the events (``session_parallel_schedule``).
    items : ndarray of int
        The item of every event position.

    ``blocks(max_rows)`` yields ``(positions, states)``: the schedule's entries (event
    positions) in order and the top layer's state after each, at most ``max_rows`` rows
    per block (or one step, if wider).
    """

    def __init__(self, network: GRU4RecNetwork, gate_table: torch.Tensor, schedule,
                 items: np.ndarray):
        self.schedule = schedule
        self.top_size = network.layers[-1]
        width = int(schedule.widths()[0])
        shrink_offsets = np.zeros(schedule.n_steps + 1, dtype=np.int64)
        shrink_rows = [np.zeros(0, dtype=np.int64)]
        for t, rows in sorted(schedule.shrink.items()):
            shrink_offsets[t + 1] = len(rows)
            shrink_rows.append(np.asarray(rows, dtype=np.int64))
        np.cumsum(shrink_offsets, out=shrink_offsets)
        sizes = torch.tensor(network.layers, dtype=torch.int64)
        # Everything the C function reads, kept alive for as long as the walk runs.
        self._kept = {
            "sizes": sizes, "layout": network.layer_layout(),
            "reset_after": torch.tensor(network.layer_resets_after, dtype=torch.int64),
            "dense": network.dense.detach().contiguous(),
            "gate_table": gate_table.detach().contiguous(),
            "step_offsets": torch.as_tensor(schedule.step_offsets, dtype=torch.int64),
            "shrink_offsets": torch.from_numpy(shrink_offsets),
            "shrink_rows": torch.from_numpy(np.concatenate(shrink_rows)),
            "items": torch.as_tensor(np.asarray(items)[schedule.positions],
                                     dtype=torch.int64).contiguous(),
            "starts": torch.as_tensor(schedule.session_start, dtype=torch.uint8),
            "work": torch.empty(_kernels.gru_walk_scratch(sizes, width)),
            "state": [torch.zeros(width, size) for size in network.layers],
        }
        kept = self._kept
        self._width = width
        self._state = (ctypes.c_void_p * len(network.layers))(
            *[h.data_ptr() for h in kept["state"]])
        self._arguments = (
            len(network.layers), sizes.data_ptr(), kept["layout"].data_ptr(),
            kept["reset_after"].data_ptr(), kept["dense"].data_ptr(),
            kept["gate_table"].data_ptr(), gate_table.shape[0],
            kept["step_offsets"].data_ptr(), kept["shrink_offsets"].data_ptr(),
            kept["shrink_rows"].data_ptr(), kept["items"].data_ptr(),
            kept["starts"].data_ptr())
        self._function = _kernels.gru_walk_function()

    def run(self, first_step: int, stop_step: int) -> torch.Tensor:
        """Steps ``[first_step, stop_step)``, in order after the steps run before: the top
        layer's state after each of their entries (rows x H)."""
        offsets = self.schedule.step_offsets
        out = torch.empty(int(offsets[stop_step] - offsets[first_step]), self.top_size)
        status = self._function(*self._arguments, first_step, stop_step, self._state,
                                self._width, self._kept["work"].data_ptr(), out.data_ptr(),
                                _kernels.threads())
        if status < 0:
            raise IndexError(f"an item lies outside [0, {self._arguments[6]})")
        return out

    def blocks(self, max_rows: int):
        """``(positions, states)`` of every entry, in runs of whole steps of at most
        ``max_rows`` rows (or one step)."""
        offsets = self.schedule.step_offsets
        first = 0
        while first < self.schedule.n_steps:
            stop = int(np.searchsorted(offsets, offsets[first] + max_rows, side="right")) - 1
            stop = min(max(stop, first + 1), self.schedule.n_steps)
            yield (self.schedule.positions[offsets[first]:offsets[stop]],
                   self.run(first, stop))
            first = stop
