"""How fast this machine is right now, printed beside every benchmark table.

A shared virtual machine's speed drifts (the same code has run 2x faster or slower from
one hour to the next), so a throughput figure means little without the machine's own
speed at the time. Two numbers are measured in about a second:

* the matrix product of next-item scoring (2048 x 101 by 101 x 2933: 100 hidden units
  plus the bias against rsc15-100k's items), in GFLOP/s;
* the cost of one small in-place tensor operation (32 x 100), in microseconds: the
  per-operation overhead that bounds a mini-batch step of a small batch.
"""

from __future__ import annotations

import time

import torch

__all__ = ["machine_speed", "machine_line"]


def _best_seconds(fn, repeats: int, inner: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        best = min(best, (time.perf_counter() - start) / inner)
    return best


def machine_speed() -> dict:
    """``{"gflops": ..., "op_us": ...}`` on the CPU (best of a few repeats)."""
    gen = torch.Generator().manual_seed(0)
    left = torch.randn(2048, 101, generator=gen)
    right = torch.randn(101, 2933, generator=gen)
    out = torch.empty(2048, 2933)
    seconds = _best_seconds(lambda: torch.mm(left, right, out=out), repeats=5, inner=5)
    small = torch.zeros(32, 100)
    op = _best_seconds(lambda: small.add_(1.0), repeats=5, inner=2000)
    return {"gflops": 2 * 2048 * 101 * 2933 / seconds / 1e9, "op_us": op * 1e6}


def machine_line() -> str:
    """One line for the head of a benchmark's output."""
    speed = machine_speed()
    return (f"machine now: scoring product {speed['gflops']:.1f} GFLOP/s, small tensor op "
            f"{speed['op_us']:.1f} us (threads {torch.get_num_threads()})")
