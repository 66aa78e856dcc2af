"""An autograd reference of one GRU4Rec training step, to check the hand-written backward.

Written independently of sessionrec.nn: plain tensor maths from the paper's equations,
differentiated by autograd.
"""

from __future__ import annotations

import torch


def reference_gradients(net, items, targets, samples, hidden, config, score_shift=None):
    """Loss (mean over rows) and gradients of every parameter, by autograd.

    ``config`` must have no dropout. Returns (loss_sum, {name: grad}) with dense-gradient
    views matching ``net.views``, and dense tensors (n_items x ...) for the item tables.
    """
    params = {"out": net.out.detach().clone().requires_grad_(True),
              "dense": net.dense.detach().clone().requires_grad_(True)}
    if net.embed is not None:
        params["embed"] = net.embed.detach().clone().requires_grad_(True)
    if net.onehot is not None:
        params["onehot"] = net.onehot.detach().clone().requires_grad_(True)
    width = net.layers[-1]
    with torch.enable_grad():
        views = net.views(params["dense"])
        columns = targets if samples is None else torch.cat([targets, samples])
        if net.input_mode == "constrained":
            x = params["out"][items, :width]
        elif net.input_mode == "embedding":
            x = params["embed"][items]
        else:
            x = None
        layer_in = x
        for i, v in enumerate(views):
            h_prev = hidden[i]
            size = h_prev.shape[1]
            if v.wx is None:
                gi = params["onehot"][items] + v.b
            else:
                gi = layer_in @ v.wx + v.b
            bh = torch.zeros(3 * size) if v.bh is None else v.bh  # GRUCell's bias_hh
            r = torch.sigmoid(gi[:, size:2 * size] + bh[size:2 * size]
                              + h_prev @ v.wrz[:, :size])
            z = torch.sigmoid(gi[:, 2 * size:] + bh[2 * size:] + h_prev @ v.wrz[:, size:])
            if net.layer_resets_after[i]:  # the official port's GRU: r scales h W_h + b_h
                rec = h_prev @ v.wh + bh[:size]
                c = torch.tanh(gi[:, :size] + r * rec)
            else:  # the paper's equation 4
                c = torch.tanh(gi[:, :size] + (r * h_prev) @ v.wh)
            layer_in = (1 - z) * h_prev + z * c
        w = params["out"][columns, :width]
        b = params["out"][columns, width]
        if score_shift is not None:
            b = b + score_shift
        scores = layer_in @ w.t() + b
        if config.activation == "tanh":
            scores = torch.tanh(scores)
        elif config.activation == "elu":
            scores = torch.nn.functional.elu(scores, config.elu_param)
        n, n_cols = scores.shape
        t = scores.diagonal()
        eye = torch.eye(n, n_cols, dtype=torch.bool)
        if config.loss == "cross-entropy":
            per_row = -torch.log_softmax(scores, dim=1).diagonal()
        elif config.loss == "bpr":
            per_row = -(torch.log(torch.sigmoid(t[:, None] - scores)) * ~eye).sum(1) / (n_cols - 1)
        elif config.loss == "top1":
            per_row = ((torch.sigmoid(scores - t[:, None]) + torch.sigmoid(scores ** 2)).mean(1)
                       - torch.sigmoid(t ** 2) / n_cols)
        else:
            e = torch.exp(scores - scores.max(1, keepdim=True).values) * ~eye
            s = e / e.sum(1, keepdim=True)
            if config.loss == "top1-max":
                per_row = (s * (torch.sigmoid(scores - t[:, None])
                                + torch.sigmoid(scores ** 2))).sum(1)
            else:
                per_row = (-torch.log((s * torch.sigmoid(t[:, None] - scores)).sum(1) + 1e-24)
                           + config.bpreg * (s * scores ** 2).sum(1))
        loss_sum = per_row.sum()
        (loss_sum / n).backward()
    return loss_sum.detach(), {k: v.grad for k, v in params.items()}


def recorded_gradients(net, items, targets, samples, hidden, config, score_shift=None):
    """Run ``net.train_step`` without applying updates; return its merged gradients.

    Returns (loss_sum, {"dense": flat gradient, table name: dense (n_items x width)}).
    """
    from sessionrec.nn._interface import TrainBatch
    from sessionrec.nn._optim import AdagradMomentum

    recorded = {}

    class Recording(AdagradMomentum):
        def dense_step(self, param, grad):
            recorded["dense"] = grad.clone()

    optimizer = Recording(0.1, 0.0)
    training = net.start_training(optimizer, config, len(items),
                                  torch.Generator().manual_seed(0))
    for name, table in training.tables.items():
        def step(rows, grad, keep_last_column=None, name=name, table=table):
            full = torch.zeros(table.n_rows + 1, table.width)
            full.index_add_(0, rows.index, grad)
            recorded[name] = full[:table.n_rows]
        table.step = step
    loss = net.train_step(TrainBatch(items, targets, samples, score_shift, None,
                                     torch.ones(len(items), 1)), hidden, training)
    training.finish()
    return loss, recorded
