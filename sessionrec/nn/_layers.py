"""GRU layers with a hand-written single-step backward, and the papers' initialisation."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import _kernels

__all__ = ["init_uniform_", "GRUCache", "gru_forward", "gru_backward", "dropout_mask",
           "DropoutMasks"]


@torch.no_grad()
def init_uniform_(tensor: torch.Tensor, n_blocks: int = 1, generator=None) -> torch.Tensor:
    """Uniform in +-sqrt(6 / (fan_in + fan_out)), computed per gate block.

    ``tensor`` is (rows x cols) with its columns made of ``n_blocks`` equal gate blocks
    (e.g. 3 for the [candidate, reset, update] input weights of a GRU); each block's
    range uses ``rows + cols / n_blocks``, as the official GRU4Rec code does.
    """
    rows, cols = tensor.shape
    sigma = (6.0 / (rows + cols / n_blocks)) ** 0.5
    return tensor.uniform_(-sigma, sigma, generator=generator)


@dataclass
class GRUCache:
    """What the backward pass of one GRU step needs."""

    h: torch.Tensor    # previous hidden state (B, H)
    rz: torch.Tensor   # reset and update gates (B, 2H)
    rec: torch.Tensor  # (r * h) before the recurrent product, or h W_h + b_h after it
    c: torch.Tensor    # candidate state (B, H)
    reset_after: bool = False


def gru_forward(gi: torch.Tensor, h: torch.Tensor, w_rz: torch.Tensor, w_h: torch.Tensor,
                need_cache: bool = True, reset_after: bool = False,
                b_h: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                fused: bool | None = None) -> tuple[torch.Tensor, GRUCache | None]:
    """One GRU step.

    ``gi`` holds the input contributions ``x W + b`` of the candidate, reset and update
    gates, in that order (B, 3H). Then ``r, z = sigmoid(gi_rz + h W_rz)`` and
    ``h' = (1 - z) h + z c``, with the candidate

    * ``c = tanh(gi_c + (r * h) W_h)`` (``reset_after=False``): the GRU4Rec paper's
      equation 4 and the Theano original;
    * ``c = tanh(gi_c + r * (h W_h + b_h_c))`` (``reset_after=True``): the official
      PyTorch port (its one-hot input layer, without ``b_h``, and ``torch.nn.GRUCell``),
      called ``reset_after`` in Keras.

    ``b_h`` (3H,), optional and only with ``reset_after``, is ``GRUCell``'s recurrent
    bias ``[b_h_c, b_h_r, b_h_z]``: its reset and update parts add to the gates' input
    bias (a second parameter of the same sum, as in ``GRUCell``).

    ``mask`` (B, H), optional, multiplies the new state (dropout). ``fused`` picks the
    fused CPU kernels for the element-wise parts (None: wherever they apply, see
    :mod:`._kernels`, and autograd is not recording: the kernels have no autograd
    formula, so HRNN and p-RNN, which differentiate through this step, keep PyTorch's
    operations while training); both ways compute the same values up to rounding.
    """
    size = h.shape[1]
    rz_in = gi[:, size:] if b_h is None else gi[:, size:] + b_h[size:]
    rz = torch.addmm(rz_in, h, w_rz)
    if fused is None:
        recording = rz.requires_grad or (torch.is_grad_enabled() and w_h.requires_grad)
        fused = _kernels.enabled_for(h) and not recording
    if reset_after:  # the recurrent product needs no gate: h W_h (+ b_h_c)
        rec = torch.mm(h, w_h) if b_h is None else torch.addmm(b_h[:size], h, w_h)
    if fused:
        h_new = torch.empty_like(rz[:, :size])
        if reset_after:
            _kernels.gru_gates_(rz, h, None)
            c = torch.empty_like(h_new)
            _kernels.gru_candidate_(c, h, rz, gi, rec, mask, h_new)
        else:
            rec = torch.empty_like(h_new)
            _kernels.gru_gates_(rz, h, rec)
            c = torch.addmm(gi[:, :size], rec, w_h)
            _kernels.gru_candidate_(c, h, rz, gi, None, mask, h_new)
    else:
        rz.sigmoid_()
        if reset_after:
            c = torch.addcmul(gi[:, :size], rz[:, :size], rec).tanh_()
        else:
            rec = rz[:, :size] * h
            c = torch.addmm(gi[:, :size], rec, w_h).tanh_()
        h_new = torch.addcmul(h, rz[:, size:], c - h)
        if mask is not None:
            h_new.mul_(mask)
    return h_new, (GRUCache(h, rz, rec, c, reset_after) if need_cache else None)


def gru_backward(dh_new: torch.Tensor, cache: GRUCache, w_h: torch.Tensor,
                 dw_rz: torch.Tensor, dw_h: torch.Tensor,
                 db_h: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                 fused: bool | None = None) -> torch.Tensor:
    """Gradients of one GRU step (no back-propagation into the previous state).

    Writes the weight gradients into ``dw_rz`` and ``dw_h`` (and, for a step with a
    recurrent bias, ``db_h``) and returns the gradient of the gate inputs ``gi``
    (B, 3H), from which the caller gets the input weights', bias's and input's gradients.
    ``mask`` is the forward step's dropout mask, ``fused`` as in :func:`gru_forward`.
    """
    h, rz, rec, c = cache.h, cache.rz, cache.rec, cache.c
    size = h.shape[1]
    z = rz[:, size:]
    dgi = torch.empty(h.shape[0], 3 * size, dtype=h.dtype, device=h.device)
    d_cand, d_rz = dgi[:, :size], dgi[:, size:]
    if fused is None:
        fused = _kernels.enabled_for(h)
    d_rec = None  # reset-after: the gradient of h W_h + b_h_c
    if fused:
        d_rec = torch.empty_like(c) if cache.reset_after else None
        _kernels.gru_backward_(dh_new, mask, rz, c, h, rec if cache.reset_after else None,
                               dgi, d_rec)
        if not cache.reset_after:
            _kernels.gru_reset_grad_(torch.mm(d_cand, w_h.t()), rz, h, dgi)
    else:
        if mask is not None:
            dh_new = dh_new * mask
        # d(candidate pre-activation) = dh' * z * (1 - c^2)
        torch.mul(dh_new, z, out=d_cand)
        d_cand.mul_(1.0 - c * c)
        if cache.reset_after:
            d_rec = d_cand * rz[:, :size]
            torch.mul(d_cand, rec, out=d_rz[:, :size])             # d r
        else:
            d_rz[:, :size] = torch.mm(d_cand, w_h.t()).mul_(h)     # d r
        torch.mul(dh_new, c - h, out=d_rz[:, size:])               # d z
        d_rz.mul_(rz * (1.0 - rz))                                 # through the sigmoids
    # Weight gradients, the same for both ways of computing the gate gradients.
    if cache.reset_after:
        torch.mm(h.t(), d_rec, out=dw_h)
        if db_h is not None:
            torch.sum(d_rec, dim=0, out=db_h[:size])
    else:
        torch.mm(rec.t(), d_cand, out=dw_h)
    torch.mm(h.t(), d_rz, out=dw_rz)
    if db_h is not None:
        torch.sum(d_rz, dim=0, out=db_h[size:])
    return dgi


def dropout_mask(shape, p: float, *, device, generator, dtype=torch.float32) -> torch.Tensor:
    """An inverted-dropout mask: 0 with probability ``p``, else ``1 / (1 - p)``."""
    # rand + compare is about twice as fast as bernoulli_ on the CPU.
    mask = torch.rand(shape, dtype=dtype, device=device, generator=generator)
    return mask.lt_(1.0 - p).mul_(1.0 / (1.0 - p))


class DropoutMasks:
    """Inverted-dropout masks of up to ``rows x width``, generated in bulk.

    Generating one small mask per step costs more in per-call overhead than in random
    numbers; a block of masks for many steps is generated at once (about ``block_values``
    numbers) on the device, and each step takes a view.
    """

    def __init__(self, p: float, rows: int, width: int, *, device, generator,
                 block_values: int = 2**22):
        self.p = float(p)
        self.rows, self.width = int(rows), int(width)
        self.n_masks = max(1, block_values // (self.rows * self.width))
        self.device, self.generator = device, generator
        self.block = None
        self.pointer = self.n_masks

    def next(self, rows: int) -> torch.Tensor:
        """A mask for ``rows`` rows (at most the ``rows`` given at construction)."""
        if self.pointer >= self.n_masks:
            self.block = dropout_mask((self.n_masks, self.rows, self.width), self.p,
                                      device=self.device, generator=self.generator)
            self.pointer = 0
        mask = self.block[self.pointer, :rows]
        self.pointer += 1
        return mask
