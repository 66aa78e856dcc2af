"""Negative sampling by popularity, from a store pre-generated on the training device."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["NegativeSampler"]

_CHUNK = 1 << 20
_MAX_BUCKETS = 1 << 22


class NegativeSampler:
    """Draw ``n_sample`` items per mini-batch with probability proportional to support^alpha.

    As in the official GRU4Rec code, samples come from a store of many mini-batches' worth
    that lives on the training device and is regenerated when used up, so a training step
    only takes the next row. The store holds 32-bit item indices where the catalogue
    allows (half the memory of int64: 40 MB for the official default of 10 million
    samples); each row is widened to int64 when taken. The store is filled by inverse-CDF
    sampling with a guide table (one lookup resolves most draws; the rest fall back to a
    binary search), which takes a few milliseconds per million samples where the official
    binary-search loop takes seconds.

    Parameters
    ----------
    support : ndarray of shape (n_items,)
        Training events per item.
    alpha : float
        Exponent of the support (0 = uniform, 1 = proportional to popularity).
    n_sample : int
        Samples per mini-batch (> 0).
    store_size : int
        Samples held at once (rounded down to whole mini-batches, at least one).
    device : torch.device
    generator : torch.Generator
        On ``device``; makes the draws reproducible.
    """

    def __init__(self, support: np.ndarray, alpha: float, n_sample: int, store_size: int,
                 device: torch.device, generator: torch.Generator):
        support = np.asarray(support, dtype=np.float64)
        # Items without training events (p-RNN's cold-start items) are never drawn, even
        # with alpha 0.
        weights = np.where(support > 0, support ** alpha, 0.0)
        cdf = np.cumsum(weights)
        cdf /= cdf[-1]
        self.cdf = torch.as_tensor(cdf, dtype=torch.float64, device=device)
        # guide[k] = the first item whose cumulative probability exceeds k / n_buckets: the
        # answer for any draw u in [k / n_buckets, (k + 1) / n_buckets) is guide[k] or a
        # later item. With 8 buckets per item, at most 1 draw in 8 needs the search.
        n_items = len(cdf)
        # The last item that can be drawn: rounding at the top of the cdf must not land
        # on trailing items of weight 0.
        self.top = int(np.flatnonzero(weights > 0)[-1])
        self.n_buckets = max(n_items, min(8 * n_items, _MAX_BUCKETS))
        grid = torch.arange(self.n_buckets, dtype=torch.float64, device=device)
        grid /= self.n_buckets
        self.guide = torch.searchsorted(self.cdf, grid, right=True).clamp_(max=self.top)
        self.n_sample = int(n_sample)
        self.n_rows = max(1, int(store_size) // self.n_sample)
        self.device = device
        self.generator = generator
        self.dtype = torch.int32 if n_items <= torch.iinfo(torch.int32).max else torch.int64
        self.store = torch.empty(0, self.n_sample, dtype=self.dtype, device=device)
        self.pointer = self.n_rows

    def _refill(self) -> None:
        total = self.n_rows * self.n_sample
        if self.store.numel() != total:
            self.store = torch.empty(self.n_rows, self.n_sample, dtype=self.dtype,
                                     device=self.device)
        flat = self.store.view(-1)
        # In chunks, so the temporaries of a refill stay small next to the store itself.
        for start in range(0, total, _CHUNK):
            stop = min(start + _CHUNK, total)
            u = torch.rand(stop - start, dtype=torch.float64, device=self.device,
                           generator=self.generator)
            flat[start:stop] = self.draw(u)
        self.pointer = 0

    def draw(self, u: torch.Tensor) -> torch.Tensor:
        """Items for uniform draws ``u`` in [0, 1): the inverse of the cumulative
        distribution, exactly what a binary search would give."""
        bucket = (u * self.n_buckets).long().clamp_(max=self.n_buckets - 1)
        drawn = self.guide[bucket]
        # The guide's item is the answer unless u lies beyond its cumulative probability;
        # those draws (a minority) get an exact binary search.
        unresolved = torch.nonzero(self.cdf[drawn] <= u).squeeze(1)
        if len(unresolved):
            drawn[unresolved] = torch.searchsorted(self.cdf, u[unresolved], right=True)
        return drawn.clamp_(max=self.top)  # u < 1 == cdf[-1]; guards rounding at the top

    def next(self) -> torch.Tensor:
        """The samples of the next mini-batch (int64)."""
        if self.pointer >= self.n_rows:
            self._refill()
        row = self.store[self.pointer].long()
        self.pointer += 1
        return row

    def next_address(self) -> int:
        """:meth:`next` as the address of the row in the store (``self.dtype``), for the
        fused step: the same draws, without making a tensor."""
        if self.pointer >= self.n_rows:
            self._refill()
        address = self.store.data_ptr() + self.pointer * self.n_sample * self.store.itemsize
        self.pointer += 1
        return address
