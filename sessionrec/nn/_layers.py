"""GRU layers with a hand-written single-step backward, and the papers' initialisation."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._native import kernels as _kernels

__all__ = ["init_uniform_", "GRUCache", "FusedGRUCache", "gru_forward",
           "gru_backward", "gru_layer_forward", "gru_layer_backward", "dropout_mask",
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
    """What the backward pass of one GRU step of PyTorch's implementation needs."""

    h: torch.Tensor           # previous hidden state (B, H)
    rz: torch.Tensor          # reset and update gates (B, 2H)
    rec: torch.Tensor         # (r * h) before the recurrent product, or h W_h + b_h after
    c: torch.Tensor           # candidate state (B, H)
    reset_after: bool = False


@dataclass
class FusedGRUCache:
    """What the backward pass of one GRU step of the fused kernels needs: the previous
    state and the kernel's own record of the step (opaque here)."""

    h: torch.Tensor
    state: _kernels.GruStepState


def gru_forward(gi: torch.Tensor, h: torch.Tensor, w_rz: torch.Tensor, w_h: torch.Tensor,
                need_cache: bool = True, reset_after: bool = False,
                b_h: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                fused: bool | None = None
                ) -> tuple[torch.Tensor, GRUCache | FusedGRUCache | None]:
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
    fused CPU kernel, one call for the whole step, products included. The models decide
    it once per training run (the optimiser's ``fused``) or walk (the network's
    ``walk_context``), and pass False where autograd differentiates the step (HRNN's and
    p-RNN's training: the kernels have no autograd formula). None, for a direct call,
    applies the same rule here (:func:`~sessionrec._native.kernels.fused_for`, and not
    while autograd records). Both ways compute the same values up to rounding; the
    cache (for :func:`gru_backward`) is the implementation's own.
    """
    if fused is None:
        fused = _use_kernels(h, gi, w_rz, w_h, b_h)
    if fused:
        h_new, state = _kernels.gru_step(h, w_rz, w_h, b_h, gi=gi, reset_after=reset_after,
                                         mask=mask)
        return h_new, (FusedGRUCache(h, state) if need_cache else None)
    size = h.shape[1]
    rz_in = gi[:, size:] if b_h is None else gi[:, size:] + b_h[size:]
    rz = torch.addmm(rz_in, h, w_rz).sigmoid_()
    if reset_after:  # the recurrent product needs no gate: h W_h (+ b_h_c)
        rec = torch.mm(h, w_h) if b_h is None else torch.addmm(b_h[:size], h, w_h)
        c = torch.addcmul(gi[:, :size], rz[:, :size], rec).tanh_()
    else:
        rec = rz[:, :size] * h
        c = torch.addmm(gi[:, :size], rec, w_h).tanh_()
    h_new = torch.addcmul(h, rz[:, size:], c - h)
    if mask is not None:
        h_new.mul_(mask)
    return h_new, (GRUCache(h, rz, rec, c, reset_after) if need_cache else None)


def _use_kernels(h: torch.Tensor, *tensors: torch.Tensor | None) -> bool:
    """The default of ``fused``: the kernels have no autograd formula, so a step that
    autograd records (HRNN and p-RNN train through it) takes PyTorch's operations."""
    recording = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (h, *tensors))
    return _kernels.enabled_for(h) and not recording


def gru_layer_forward(x: torch.Tensor, w_x: torch.Tensor, b: torch.Tensor, h: torch.Tensor,
                      w_rz: torch.Tensor, w_h: torch.Tensor, need_cache: bool = True,
                      reset_after: bool = False, b_h: torch.Tensor | None = None,
                      mask: torch.Tensor | None = None, fused: bool | None = None
                      ) -> tuple[torch.Tensor, GRUCache | FusedGRUCache | None]:
    """:func:`gru_forward` from the layer's input ``x`` (B x I): the gate inputs are
    ``x W_x + b`` (``w_x``: I x 3H). The fused kernel computes them in the same call."""
    if fused is None:
        fused = _use_kernels(h, x, w_x, b, w_rz, w_h, b_h)
    if fused:
        h_new, state = _kernels.gru_step(h, w_rz, w_h, b_h, x=x, w_x=w_x, b=b,
                                         reset_after=reset_after, mask=mask)
        return h_new, (FusedGRUCache(h, state) if need_cache else None)
    return gru_forward(torch.addmm(b, x, w_x), h, w_rz, w_h, need_cache=need_cache,
                       reset_after=reset_after, b_h=b_h, mask=mask, fused=False)


def gru_backward(dh_new: torch.Tensor, cache: GRUCache | FusedGRUCache, w_h: torch.Tensor,
                 dw_rz: torch.Tensor, dw_h: torch.Tensor,
                 db_h: torch.Tensor | None = None, mask: torch.Tensor | None = None
                 ) -> torch.Tensor:
    """Gradients of one GRU step (no back-propagation into the previous state).

    Writes the weight gradients into ``dw_rz`` and ``dw_h`` (and, for a step with a
    recurrent bias, ``db_h``) and returns the gradient of the gate inputs ``gi``
    (B, 3H), from which the caller gets the input weights', bias's and input's gradients.
    ``mask`` is the forward step's dropout mask. The step's implementation is the one
    that made ``cache``.
    """
    if isinstance(cache, FusedGRUCache):
        return gru_layer_backward(dh_new, cache, None, None, w_h, None, None, dw_rz, dw_h,
                                  db_h, mask=mask)[0]
    h, rz, rec, c = cache.h, cache.rz, cache.rec, cache.c
    size = h.shape[1]
    z = rz[:, size:]
    dgi = torch.empty(h.shape[0], 3 * size, dtype=h.dtype, device=h.device)
    d_cand, d_rz = dgi[:, :size], dgi[:, size:]
    if mask is not None:
        dh_new = dh_new * mask
    # d(candidate pre-activation) = dh' * z * (1 - c^2)
    torch.mul(dh_new, z, out=d_cand)
    d_cand.mul_(1.0 - c * c)
    d_rec = None  # reset-after: the gradient of h W_h + b_h_c
    if cache.reset_after:
        d_rec = d_cand * rz[:, :size]
        torch.mul(d_cand, rec, out=d_rz[:, :size])             # d r
    else:
        d_rz[:, :size] = torch.mm(d_cand, w_h.t()).mul_(h)     # d r
    torch.mul(dh_new, c - h, out=d_rz[:, size:])               # d z
    d_rz.mul_(rz * (1.0 - rz))                                 # through the sigmoids
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


def gru_layer_backward(dh_new: torch.Tensor, cache: GRUCache | FusedGRUCache,
                       x: torch.Tensor | None, w_x: torch.Tensor | None, w_h: torch.Tensor,
                       dw_x: torch.Tensor | None, db: torch.Tensor | None, dw_rz: torch.Tensor,
                       dw_h: torch.Tensor, db_h: torch.Tensor | None = None,
                       mask: torch.Tensor | None = None, need_dx: bool = False,
                       need_dgi: bool = True
                       ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """:func:`gru_backward` with the gate inputs' bias ``db`` (if not None) and, for a
    layer fed by ``x`` through ``w_x`` (None for a one-hot layer), ``dw_x = x^T dgi``.

    Returns ``(dgi, dx)``: the gradient of the gate inputs (None unless ``need_dgi``) and,
    with ``need_dx``, that of the layer's input, ``dgi W_x^T`` (else None). The fused
    kernel computes them all in one call.
    """
    if isinstance(cache, FusedGRUCache):
        return _kernels.gru_step_backward(
            dh_new, mask, cache.state, cache.h, w_h, dw_rz, dw_h, db=db, db_h=db_h, x=x,
            w_x=w_x, dw_x=dw_x, need_dx=need_dx, need_dgi=need_dgi)
    dgi = gru_backward(dh_new, cache, w_h, dw_rz, dw_h, db_h, mask=mask)
    if db is not None:
        torch.sum(dgi, dim=0, out=db)
    if dw_x is not None:
        torch.mm(x.t(), dgi, out=dw_x)
    return (dgi if need_dgi else None), (torch.mm(dgi, w_x.t()) if need_dx else None)


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

    def _take(self) -> int:
        """The index of the next mask in the block, made anew when used up."""
        if self.pointer >= self.n_masks:
            self.block = dropout_mask((self.n_masks, self.rows, self.width), self.p,
                                      device=self.device, generator=self.generator)
            self.pointer = 0
        self.pointer += 1
        return self.pointer - 1

    def next(self, rows: int) -> torch.Tensor:
        """A mask for ``rows`` rows (at most the ``rows`` given at construction)."""
        index = self._take()  # first: it may make the block
        return self.block[index, :rows]

    def next_address(self) -> int:
        """:meth:`next` as the address of the mask (its rows of ``width`` float32 are
        contiguous), for the fused step: the same masks, without making a tensor."""
        index = self._take()
        return self.block.data_ptr() + index * self.rows * self.width * self.block.itemsize
