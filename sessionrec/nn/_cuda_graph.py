"""Replay of a fixed-shape training step through one captured CUDA graph.

A GRU4Rec step is about a hundred small kernels; at the batch sizes session models use,
launching them from Python costs more than running them. On CUDA every full-width step has
the same shapes (the deduplication of rows is padded to a static size), so the step is
captured once and replayed: its inputs, negative samples and dropout masks are copied
into static buffers first, and all randomness comes from stores filled outside the graph.
On the CPU the same body runs without capture, which is what the tests check it against.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ._layers import DropoutMasks

__all__ = ["StaticMasks", "ReplayedStep"]

# One warm-up stream per device for the whole process: PyTorch caches a cuBLAS workspace
# for every stream that runs a matrix product, so a new stream per fit would keep tens of
# megabytes per fit alive until the process ends.
_SIDE_STREAMS: dict = {}


def _side_stream(device: torch.device):
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SIDE_STREAMS:
        _SIDE_STREAMS[index] = torch.cuda.Stream(device=index)
    return _SIDE_STREAMS[index]


class StaticMasks:
    """Dropout masks served from one fixed buffer, refilled from a mask store per step."""

    def __init__(self, masks: DropoutMasks, rows: int):
        self.masks = masks
        self.rows = rows
        # Zeros, not a draw: building the buffer must not consume the random stream.
        self.buffer = torch.zeros(rows, masks.width, device=masks.device)

    def refresh(self) -> None:
        self.buffer.copy_(self.masks.next(self.rows))

    def next(self, rows: int) -> torch.Tensor:
        return self.buffer if rows == self.rows else self.buffer[:rows]


class ReplayedStep:
    """Call ``body`` (which reads and writes only static tensors) as a CUDA graph.

    The first ``warmup`` calls run eagerly on a side stream (CUDA requires warmed-up
    kernels and allocator state before capture); the next call captures the graph and
    replays it, and every later call only replays. Each call is a real training step. On a
    CPU device, or with ``capture=False``, every call simply runs ``body``.
    """

    def __init__(self, body: Callable[[], torch.Tensor], device: torch.device, *,
                 warmup: int = 3, capture: bool = True):
        self.body = body
        self.device = device
        self.capture = capture and device.type == "cuda"
        self.warmup = warmup
        self.calls = 0
        self.graph = None
        self.output = None

    def __call__(self) -> torch.Tensor:
        if not self.capture:
            return self.body()
        if self.graph is not None:
            self.graph.replay()
            return self.output
        self.calls += 1
        if self.calls <= self.warmup:
            side = _side_stream(self.device)
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                output = self.body()
            torch.cuda.current_stream().wait_stream(side)
            return output
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.output = self.body()
        self.graph.replay()
        return self.output

    def close(self) -> None:
        """Free the graph and its memory pool (and break the reference to ``body``)."""
        self.graph = self.output = None
        self.body = None
