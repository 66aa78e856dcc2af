"""An official-style GRU4Rec training loop: a yardstick for speed on the same machine.

The speed target of GRU4RecRecommender is a multiple of the official GRU4Rec PyTorch
port's. That port does not run on today's torch, and a shared machine's speed drifts 2-3x
within a day, so a figure for it measured at another time compares little. This module
trains the same network (one GRU layer; constrained embedding with cross-entropy and
logQ, or the one-hot GRU embedding with bpr-max and ELU) *the way the port does*, from
the mechanics described in ``../shared/reference/algorithms.md`` (the code is written
here):

* autograd through the forward pass, on a fresh graph every mini-batch;
* item tables as sparse-gradient embeddings: output weights, output biases, and the
  one-hot input's gate weights (with constrained embedding the input embedding is the
  output weight table);
* scores over all ``B + n_sample`` columns, duplicate items included;
* Adagrad with momentum applied row by row after coalescing the sparse gradients (index
  reads and writes of accumulator and momentum rows), dense for the GRU weights;
* the loss copied to the host every mini-batch to check it for NaN.

It reuses sessionrec's session-parallel schedule and negative-sample store, so that only
the training step differs, and it leaves out the port's one-off store generation (about
9 s per fit by binary search): if anything it is faster than the port, which makes the
ratio reported against it conservative.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch import nn

from sessionrec._batching import session_parallel_schedule
from sessionrec._events import to_session_events
from sessionrec.nn._layers import init_uniform_
from sessionrec.nn._sampling import NegativeSampler

__all__ = ["train_official_style"]


class _Network(nn.Module):
    """One GRU layer with the port's item tables.

    ``input_mode="constrained"``: the input embedding is the output weight table.
    ``input_mode="onehot"``: the port's GRU embedding, a sparse table of the first layer's
    input weights (one row of 3 gate blocks per item).
    ``reset_after``: the port's GRU, where the reset gate scales the recurrent product;
    a layer fed by the constrained embedding then has ``torch.nn.GRUCell``'s recurrent
    bias ``b_hh`` too. Otherwise the paper's ``(r * h) W_h``.
    """

    def __init__(self, n_items: int, hidden: int, input_mode: str,
                 generator: torch.Generator, reset_after: bool = True):
        super().__init__()
        self.hidden, self.input_mode, self.reset_after = hidden, input_mode, reset_after
        self.b_hh = (nn.Parameter(torch.zeros(3 * hidden))
                     if reset_after and input_mode != "onehot" else None)
        self.out_weight = nn.Embedding(n_items, hidden, sparse=True)
        self.out_bias = nn.Embedding(n_items, 1, sparse=True)
        if input_mode == "onehot":
            self.in_weight = nn.Embedding(n_items, 3 * hidden, sparse=True)
        else:
            self.w_x = nn.Parameter(torch.empty(hidden, 3 * hidden))
        self.w_rz = nn.Parameter(torch.empty(hidden, 2 * hidden))
        self.w_h = nn.Parameter(torch.empty(hidden, hidden))
        self.b_h = nn.Parameter(torch.zeros(3 * hidden))
        with torch.no_grad():  # the papers' initialisation, per gate block
            init_uniform_(self.out_weight.weight, generator=generator)
            self.out_bias.weight.zero_()
            if input_mode == "onehot":
                init_uniform_(self.in_weight.weight, n_blocks=3, generator=generator)
            else:
                init_uniform_(self.w_x, n_blocks=3, generator=generator)
            init_uniform_(self.w_rz, n_blocks=2, generator=generator)
            init_uniform_(self.w_h, generator=generator)

    def forward(self, items, columns, h, dropout_p: float):
        n, size = len(items), self.hidden
        if self.input_mode == "onehot":
            gx = self.in_weight(items) + self.b_h
            out = self.out_weight(columns)
        else:
            embedded = self.out_weight(torch.cat([items, columns]))
            out = embedded[n:]
            gx = embedded[:n] @ self.w_x + self.b_h
        grz = h @ self.w_rz
        b_hh = torch.zeros(3 * size) if self.b_hh is None else self.b_hh
        r = torch.sigmoid(gx[:, size:2 * size] + grz[:, :size] + b_hh[size:2 * size])
        z = torch.sigmoid(gx[:, 2 * size:] + grz[:, size:] + b_hh[2 * size:])
        if self.reset_after:
            c = torch.tanh(r * (h @ self.w_h + b_hh[:size]) + gx[:, :size])
        else:
            c = torch.tanh((r * h) @ self.w_h + gx[:, :size])
        h = (1.0 - z) * h + z * c
        if dropout_p > 0:
            h = nn.functional.dropout(h, dropout_p, training=True)
        return h @ out.t() + self.out_bias(columns).t(), h

    def _pairs(self, network) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(this loop's tensor, the same weights in a ``GRU4RecNetwork``) pairs."""
        view = network.views(network.dense)[0]
        first = ((self.in_weight.weight, network.onehot) if self.input_mode == "onehot"
                 else (self.w_x, view.wx))
        if (view.bh is not None) != (self.b_hh is not None) or (
                network.layer_resets_after[0] != self.reset_after):
            raise ValueError("the networks run different GRUs (reset_after)")
        pairs = [(self.out_weight.weight, network.out[:, :-1]),
                 (self.out_bias.weight, network.out[:, -1:]), first,
                 (self.w_rz, view.wrz), (self.w_h, view.wh), (self.b_h, view.b)]
        return pairs + ([(self.b_hh, view.bh)] if self.b_hh is not None else [])

    @torch.no_grad()
    def copy_from(self, network) -> None:
        """Start from the weights of a ``GRU4RecNetwork`` of the same shape."""
        for mine, theirs in self._pairs(network):
            mine.copy_(theirs)

    @torch.no_grad()
    def copy_into(self, network) -> None:
        """Write these weights into a fitted ``GRU4RecNetwork`` of the same shape, so
        sessionrec's evaluation engine can rank with them."""
        for mine, theirs in self._pairs(network):
            theirs.copy_(mine)


def _loss(scores, loss: str, bpreg: float, elu_param: float) -> torch.Tensor:
    """The port's losses, summed over rows; the target of row i is column i."""
    if loss == "cross-entropy":
        return -torch.log_softmax(scores, dim=1).diagonal().sum()
    if elu_param > 0:
        scores = nn.functional.elu(scores, elu_param)
    # bpr-max: negatives weighted by a softmax over the negatives (target excluded).
    negative = 1.0 - torch.eye(*scores.shape)
    masked = scores * negative
    weights = torch.exp(masked - masked.max(dim=1, keepdim=True).values) * negative
    weights = weights / weights.sum(dim=1, keepdim=True)
    target = scores.diagonal().unsqueeze(1)
    ranked = (torch.sigmoid(target - scores) * weights).sum(dim=1)
    return (-torch.log(ranked + 1e-24) + bpreg * (scores ** 2 * weights).sum(dim=1)).sum()


class _AdagradMomentum:
    """Adagrad with momentum; sparse gradients are coalesced and applied per row."""

    def __init__(self, params, lr: float, momentum: float, eps: float = 1e-6):
        self.params, self.lr, self.momentum, self.eps = list(params), lr, momentum, eps
        self.acc = [torch.zeros_like(p) for p in self.params]
        self.mom = [torch.zeros_like(p) for p in self.params]

    @torch.no_grad()
    def step(self):
        for p, acc, mom in zip(self.params, self.acc, self.mom):
            grad = p.grad
            if grad.is_sparse:
                grad = grad.coalesce()
                rows, values = grad.indices()[0], grad.values()
                acc_rows = acc[rows] + values.pow(2)
                acc.index_copy_(0, rows, acc_rows)
                denom = acc_rows.add_(self.eps).sqrt_().mul_(-1.0 / self.lr)
                mom_rows = mom[rows].mul_(self.momentum).add_(values / denom)
                mom.index_copy_(0, rows, mom_rows)
                p.index_add_(0, rows, mom_rows)
            else:
                acc.add_(grad.pow(2))
                mom.mul_(self.momentum).addcdiv_(grad, acc.add(self.eps).sqrt_(),
                                                 value=-self.lr)
                p.add_(mom)
            p.grad = None


def train_official_style(train, *, n_epochs: int, batch_size: int = 32, hidden: int = 100,
                         input_mode: str = "constrained", loss: str = "cross-entropy",
                         n_sample: int = 2048, sample_alpha: float = 0.5,
                         logq: float = 1.0, bpreg: float = 1.0, elu_param: float = 0.0,
                         dropout_p: float = 0.4, lr: float = 0.2, momentum: float = 0.2,
                         reset_after: bool | str = "auto", seed: int = 0, start=None):
    """Train the official-style loop on the events ``train``.

    The defaults are the official rsc15 parameter file's. ``start``, a pair
    ``(network, generator)`` as ``GRU4RecRecommender._initialised`` returns it, makes the
    loop start from the same weights and draw the same negative samples as a
    GRU4RecRecommender fit; otherwise ``seed`` seeds both. Returns ``(history, network,
    item_index)``: one dict per epoch with ``events_per_s``, ``batches_per_s``,
    ``seconds`` and ``loss`` (mean per pair); the trained network (see
    ``_Network.copy_into``); the item codes it used.
    """
    events, index = to_session_events(train)
    generator = torch.Generator().manual_seed(seed)
    if reset_after == "auto":  # as GRU4RecRecommender: the port's GRU for one-hot input
        reset_after = input_mode == "onehot"
    net = _Network(index.n_items, hidden, input_mode, generator, bool(reset_after))
    if start is not None:
        net.copy_from(start[0])
        generator = start[1]
    optimizer = _AdagradMomentum(net.parameters(), lr, momentum)
    schedule = session_parallel_schedule(events, batch_size)
    items = torch.as_tensor(events.items)
    positions = torch.as_tensor(schedule.positions)
    inputs, targets = items[positions], items[positions + 1]
    keep = torch.as_tensor(~schedule.session_start, dtype=torch.float32).unsqueeze(1)
    bounds = schedule.step_offsets.tolist()
    shrink = {t: torch.as_tensor(rows) for t, rows in schedule.shrink.items()}
    sampler = NegativeSampler(index.support, sample_alpha, n_sample, 10_000_000,
                              torch.device("cpu"), generator)
    log_support = torch.log(torch.as_tensor(np.asarray(index.support), dtype=torch.float32))
    history = []
    for epoch in range(n_epochs):
        start_time = time.perf_counter()
        h = torch.zeros(int(schedule.widths()[0]), hidden)
        total = 0.0
        for t in range(schedule.n_steps):
            start, stop = bounds[t], bounds[t + 1]
            if t in shrink:
                h = h[shrink[t]]
            h = (h * keep[start:stop]).detach()
            batch_targets = targets[start:stop]
            samples = sampler.next()
            columns = torch.cat([batch_targets, samples])
            scores, h = net(inputs[start:stop], columns, h, dropout_p)
            if loss == "cross-entropy" and logq > 0:
                scores = scores - logq * torch.cat([log_support[batch_targets],
                                                    sample_alpha * log_support[samples]])
            summed = _loss(scores, loss, bpreg, elu_param)
            (summed / (stop - start)).backward()
            optimizer.step()
            value = summed.item()  # the port checks every mini-batch's loss on the host
            if not math.isfinite(value):
                raise FloatingPointError(f"loss {value} in epoch {epoch + 1}")
            total += value
        seconds = time.perf_counter() - start_time
        history.append({"epoch": epoch + 1, "loss": total / schedule.n_entries,
                        "seconds": seconds,
                        "events_per_s": schedule.n_entries / seconds,
                        "batches_per_s": schedule.n_steps / seconds})
    return history, net, index
