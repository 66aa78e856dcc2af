"""Ranking losses on the sampled score matrix, with their gradients.

Every loss takes the score matrix ``R`` of a mini-batch: ``R[i, j]`` is the score of output
column ``j`` (the batch's targets first, then the extra negative samples) after input
``i``; row ``i``'s target is column ``i`` (the diagonal). Every other column of a row is a
negative for it. A loss returns the **sum** over rows (for logging) and the gradient of
the **mean** over rows (the official code divides the summed loss by the batch size).

Definitions (r_i the target's score, r_j the negatives', N_S their number):

* ``cross-entropy``: ``-log softmax(R)[i, i]``; with ``logq`` the scores are first
  corrected by ``- logq * log Q(j)``, ``Q`` being the support of in-batch columns and
  support**sample_alpha of sampled ones, as in the official implementation.
* ``bpr`` (GRU4Rec paper): ``-mean_j log sigmoid(r_i - r_j)``.
* ``top1`` (GRU4Rec paper; the official code's normalisation):
  ``mean over all columns j of [sigmoid(r_j - r_i) + sigmoid(r_j^2)] - sigmoid(r_i^2) / N``
  where N counts all columns, so the target's own regulariser is removed.
* ``top1-max`` and ``bpr-max`` (Hidasi & Karatzoglou, CIKM 2018): negatives weighted by
  ``s_j = softmax over the negatives' scores`` (target excluded);
  ``top1-max = sum_j s_j [sigmoid(r_j - r_i) + sigmoid(r_j^2)]``,
  ``bpr-max = -log sum_j s_j sigmoid(r_i - r_j) + bpreg * sum_j s_j r_j^2``.

A final activation (``tanh`` as in the GRU4Rec paper, or ``elu`` as the official code uses
for bpr-max) is applied to the scores inside the loss only: it is monotonic, so it never
changes a ranking.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["StepConfig", "LOSSES", "LOSS_FLOORS", "FINAL_ACTIVATIONS", "loss_and_grad",
           "bpr_max_closed_form", "cross_entropy_distinct", "masked_loss_and_grad",
           "sampled_loss"]


@dataclass(frozen=True)
class StepConfig:
    """Settings of a training step that do not change the network's shape: the loss,
    the final activation inside it and its parameters, and the dropouts.

    ``dropout_p_hidden`` drops out the recurrent layers' outputs (GRU4Rec's layers,
    HRNN's session GRU, p-RNN's subnets); ``dropout_p_embed`` GRU4Rec's input
    embedding; ``dropout_p_user`` and ``dropout_p_init`` HRNN's user-GRU output and
    session initialisation; ``output_id_dropout`` p-RNN's dropout of the scored items'
    ID rows under its feature output. A network reads the ones it has.
    """

    loss: str = "cross-entropy"
    activation: str = "linear"
    bpreg: float = 1.0
    elu_param: float = 0.5
    dropout_p_embed: float = 0.0
    dropout_p_hidden: float = 0.0
    dropout_p_user: float = 0.0
    dropout_p_init: float = 0.0
    output_id_dropout: float = 0.0


LOSSES = ("cross-entropy", "bpr-max", "top1-max", "top1", "bpr")

# The least value of each loss per row (0 where not listed): TOP1 and TOP1-max keep the
# regulariser sigmoid(r_j^2) >= 1/2 of their negatives. Divergence is judged on the loss
# above this floor (see sessionrec._training.warn_if_diverged).
LOSS_FLOORS = {"top1": 0.5, "top1-max": 0.5}
FINAL_ACTIVATIONS = ("linear", "tanh", "elu")


def cross_entropy_distinct(scores: torch.Tensor, target_cols: torch.Tensor,
                           log_weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sampled softmax cross-entropy computed over *distinct* items (the hot path).

    With columns ``j`` mapping to items ``u(j)`` and column corrections ``s_j`` (logQ),
    the partition function ``sum_j exp(r_u(j) + s_j)`` equals ``sum_u exp(r_u + log w_u)``
    with ``w_u = sum_{j: u(j)=u} exp(s_j)``. So the loss over the ``B + S`` columns, with
    duplicates, is exactly a softmax over the ``U`` distinct items with log-weights
    ``log w_u``, and its gradient w.r.t. a distinct item's score is the sum of its
    columns' gradients.

    Parameters
    ----------
    scores : Tensor (B, U)
        Raw scores of the distinct items (overwritten).
    target_cols : LongTensor (B,)
        Distinct-item position of each row's target.
    log_weight : Tensor (U,)
        ``log w_u``.

    Returns
    -------
    loss : 0-d Tensor
        Sum over rows of ``logsumexp_u(r + log w) - (r_target + log w_target)``; the caller
        adds ``sum_i (log w_target(i) - s_i)``, constant w.r.t. the scores, to obtain the
        column-space loss.
    grad : Tensor (B, U)
        Gradient of the mean over rows.
    """
    n = scores.shape[0]
    logits = scores.add_(log_weight)
    logits.sub_(logits.max(dim=1, keepdim=True).values)
    column = target_cols.unsqueeze(1)
    target = logits.gather(1, column)
    prob = logits.exp_()
    total = prob.sum(dim=1, keepdim=True)
    loss = total.log().sub_(target).sum()
    grad = prob.div_(total)
    grad.scatter_add_(1, column, torch.full_like(target, -1.0))
    return loss, grad.mul_(1.0 / n)


def _negatives_mask(shape, device) -> torch.Tensor:
    eye = torch.zeros(shape, dtype=torch.bool, device=device)
    eye.diagonal().fill_(True)
    return eye


def _loss_autograd(scores: torch.Tensor, loss: str, bpreg: float, activation: str,
                   elu_param: float) -> torch.Tensor:
    """Per-row losses of the general path (differentiated by autograd)."""
    if activation == "tanh":
        scores = torch.tanh(scores)
    elif activation == "elu":
        scores = torch.nn.functional.elu(scores, elu_param)
    target = scores.diagonal().unsqueeze(1)
    if loss == "cross-entropy":
        return torch.logsumexp(scores, dim=1) - target.squeeze(1)
    n_cols = scores.shape[1]
    eye = _negatives_mask(scores.shape, scores.device)
    if loss == "top1":
        terms = torch.sigmoid(scores - target) + torch.sigmoid(scores * scores)
        return terms.mean(dim=1) - torch.sigmoid(target.squeeze(1) ** 2) / n_cols
    if loss == "bpr":
        log_sig = torch.nn.functional.logsigmoid(target - scores).masked_fill(eye, 0.0)
        return -log_sig.sum(dim=1) / (n_cols - 1)
    weights = scores.masked_fill(eye, float("-inf")).softmax(dim=1)
    if loss == "top1-max":
        terms = torch.sigmoid(scores - target) + torch.sigmoid(scores * scores)
        return (weights * terms).sum(dim=1)
    # bpr-max
    ranked = (weights * torch.sigmoid(target - scores)).sum(dim=1)
    return -torch.log(ranked + 1e-24) + bpreg * (weights * scores * scores).sum(dim=1)


def bpr_max_closed_form(scores: torch.Tensor, bpreg: float, activation: str,
                        elu_param: float) -> tuple[torch.Tensor, torch.Tensor]:
    """bpr-max loss (summed over rows) and its gradient (of the mean), in closed form.

    With ``s`` the activated scores, ``w_ij`` the softmax over row i's negatives,
    ``g_ij = sigmoid(s_ii - s_ij)``, ``R_i = sum_j w_ij g_ij`` and
    ``Q_i = sum_j w_ij s_ij^2``, the loss of row i is ``-log(R_i + 1e-24) + bpreg Q_i``
    and, for a negative j,
    ``dL/ds_ij = -w_ij (g_ij^2 - R_i) / (R_i + 1e-24) + bpreg w_ij (s_ij^2 - Q_i + 2 s_ij)``;
    for the target ``dL/ds_ii = -sum_j w_ij g_ij (1 - g_ij) / (R_i + 1e-24)``. This is the
    gradient autograd finds (checked in the tests) in a handful of passes over the score
    matrix, without building a graph at every step. ``activation`` is ``"linear"`` or
    ``"elu"``; ``scores`` (B x N, B <= N, target of row i in column i) is not modified.
    """
    n = scores.shape[0]
    rows = torch.arange(n, device=scores.device)
    if activation == "elu":
        s = torch.nn.functional.elu(scores, elu_param)
        slope = torch.where(scores > 0, torch.ones_like(s), s + elu_param)
    else:
        s, slope = scores, None
    target = s[rows, rows].unsqueeze(1)
    masked = s.clone()
    masked[rows, rows] = float("-inf")
    w = masked.softmax(dim=1)  # 0 on the target's column
    g = torch.sigmoid(target - s)
    wg = w * g
    ranked = wg.sum(dim=1, keepdim=True)
    square = s * s
    reg = (w * square).sum(dim=1, keepdim=True)
    inv = 1.0 / (ranked + 1e-24)
    loss = (-torch.log(ranked + 1e-24) + bpreg * reg).sum()
    grad = (wg * g - w * ranked).mul_(-inv)
    grad.add_(w * (square - reg + 2.0 * s), alpha=bpreg)
    grad[rows, rows] = -(wg * (1.0 - g)).sum(dim=1) * inv.squeeze(1)
    if slope is not None:
        grad.mul_(slope)
    return loss, grad.mul_(1.0 / n)


def loss_and_grad(scores: torch.Tensor, loss: str, *, bpreg: float = 1.0,
                  activation: str = "linear", elu_param: float = 0.5
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss summed over rows, and its gradient averaged over rows, w.r.t. ``scores``.

    The general path, differentiated by autograd on the score matrix alone (linear
    cross-entropy takes :func:`cross_entropy_distinct` instead, bpr-max with a linear or
    ELU activation :func:`bpr_max_closed_form`). ``scores`` (B x N, B <= N)
    may be overwritten. A single-column batch (one row, no
    negative) has no ranking signal; its loss and gradient are zero.
    """
    n_rows, n_cols = scores.shape
    if n_cols < 2:
        return scores.new_zeros(()), torch.zeros_like(scores)
    if loss == "bpr-max" and activation in ("linear", "elu"):
        return bpr_max_closed_form(scores, bpreg, activation, elu_param)
    leaf = scores.detach().requires_grad_(True)
    with torch.enable_grad():
        per_row = _loss_autograd(leaf, loss, bpreg, activation, elu_param)
        total = per_row.sum()
        (grad,) = torch.autograd.grad(total, leaf)
    return total.detach(), grad.mul_(1.0 / n_rows)


def masked_loss_and_grad(scores: torch.Tensor, excluded: torch.Tensor, loss: str, *,
                         bpreg: float = 1.0, activation: str = "linear",
                         elu_param: float = 0.5, unregularised: torch.Tensor | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`loss_and_grad` where each row ranks its target (column ``i`` of row ``i``)
    against its own set of negatives: the columns where ``excluded`` (bool, B x N) is
    False. Each loss keeps its definition over the row's negatives (TOP1: the mean of
    its terms with the target's own column; BPR: the mean; the ``-max`` losses: the
    softmax over them). ``unregularised`` (bool, B x N, optional): negatives left out
    of the score regulariser (TOP1's ``sigmoid(r_j^2)``, bpr-max's ``bpreg r_j^2``).
    ``scores`` is not modified. TOP1 with a linear activation (HRNN's default) has its
    gradient in closed form; the others are differentiated by autograd."""
    if loss == "top1" and activation == "linear":
        return _masked_top1(scores, excluded, unregularised)
    return _masked_autograd(scores, excluded, loss, bpreg, activation, elu_param,
                            unregularised)


def _masked_autograd(scores, excluded, loss, bpreg, activation, elu_param, unregularised):
    """:func:`masked_loss_and_grad` differentiated by autograd (any loss)."""
    n_rows = scores.shape[0]
    leaf = scores.detach().requires_grad_(True)
    with torch.enable_grad():
        s = leaf
        if activation == "tanh":
            s = torch.tanh(s)
        elif activation == "elu":
            s = torch.nn.functional.elu(s, elu_param)
        target = s.diagonal().unsqueeze(1)
        negative = ~excluded
        negative.diagonal().fill_(False)
        n_negative = negative.sum(dim=1)
        regularised = negative if unregularised is None else negative & ~unregularised
        if loss == "cross-entropy":
            per_row = (torch.logsumexp(s.masked_fill(excluded, float("-inf")), dim=1)
                       - target.squeeze(1))
        elif loss == "top1":
            terms = (torch.sigmoid(s - target) * negative
                     + torch.sigmoid(s * s) * regularised)
            per_row = (terms.sum(dim=1) + 0.5) / (n_negative + 1)
        elif loss == "bpr":
            log_sig = torch.nn.functional.logsigmoid(target - s) * negative
            per_row = -log_sig.sum(dim=1) / n_negative.clamp(min=1)
        else:
            weights = s.masked_fill(~negative, float("-inf")).softmax(dim=1)
            weights = torch.nan_to_num(weights)  # a row without negatives
            if loss == "top1-max":
                terms = torch.sigmoid(s - target) + torch.sigmoid(s * s) * regularised
                per_row = (weights * terms).sum(dim=1)
            else:  # bpr-max
                ranked = (weights * torch.sigmoid(target - s)).sum(dim=1)
                per_row = (-torch.log(ranked + 1e-24)
                           + bpreg * (weights * s * s * regularised).sum(dim=1))
        per_row = per_row * (n_negative > 0)  # no negative: no ranking signal
        total = per_row.sum()
        (grad,) = torch.autograd.grad(total, leaf)
    return total.detach(), grad.mul_(1.0 / n_rows)


def _masked_top1(scores: torch.Tensor, excluded: torch.Tensor,
                 unregularised: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`masked_loss_and_grad` of TOP1 with a linear activation, in closed form.

    Row ``i``: ``(sum_j n_ij a_ij + sum_j g_ij b_ij + 1/2) / (N_i + 1)`` with
    ``a = sigmoid(s - s_ii)``, ``b = sigmoid(s^2)``, ``n`` the negatives, ``g`` those
    regularised and ``N_i`` their number; so ``dL/ds_ij = (n_ij a (1 - a) + g_ij b (1 - b)
    2 s_ij) / (N_i + 1)`` and ``dL/ds_ii = -sum_j n_ij a_ij (1 - a_ij) / (N_i + 1)``.
    """
    n_rows = scores.shape[0]
    s = scores.detach()
    negative = ~excluded
    negative.diagonal().fill_(False)
    regularised = negative if unregularised is None else negative & ~unregularised
    negative, regularised = negative.to(s.dtype), regularised.to(s.dtype)
    n_negative = negative.sum(dim=1, keepdim=True)
    scale = 1.0 / (n_negative + 1.0)
    a = torch.sigmoid(s - s.diagonal().unsqueeze(1))
    b = torch.sigmoid(s * s)
    per_row = ((negative * a).sum(dim=1, keepdim=True)
               + (regularised * b).sum(dim=1, keepdim=True) + 0.5) * scale
    da = negative * a * (1.0 - a)
    grad = (da + regularised * b * (1.0 - b) * 2.0 * s) * scale
    grad.diagonal().copy_(-(da.sum(dim=1, keepdim=True) * scale).squeeze(1))
    has = (n_negative > 0).to(s.dtype)  # no negative: no ranking signal
    return (per_row * has).sum(), grad.mul_(has / n_rows)


def sampled_loss(scores, columns, column_of, n, config, score_shift):
    """Loss of a step whose scores are computed over *distinct* columns, for autograd.

    ``scores`` (n x D) holds the scores of the D distinct items among ``columns`` (the n
    targets, then the samples); ``column_of`` maps each column to its distinct item.
    ``config`` gives ``loss``, ``activation``, ``bpreg`` and ``elu_param``;
    ``score_shift`` (len(columns),) or None is the logQ shift.

    Returns
    -------
    loss : Tensor
        The loss summed over rows (0-d).
    grad, output : Tensor
        Call ``torch.autograd.backward(output, grad)`` to back-propagate the gradient of
        the mean loss.
    """
    if len(columns) < 2:  # one slot and no sample: no negative, no ranking signal
        return scores.new_zeros(()), torch.zeros_like(scores), scores
    if config.loss == "cross-entropy" and config.activation == "linear":
        weight = (torch.ones_like(columns, dtype=scores.dtype) if score_shift is None
                  else score_shift.exp())
        log_weight = torch.zeros(scores.shape[1], device=scores.device)
        log_weight.index_add_(0, column_of, weight).log_()
        target_cols = column_of[:n]
        loss, grad = cross_entropy_distinct(scores.detach().clone(), target_cols,
                                            log_weight)
        constant = log_weight.index_select(0, target_cols).sum()
        if score_shift is not None:
            constant = constant - score_shift[:n].sum()
        return loss + constant, grad, scores
    col_scores = scores.index_select(1, column_of)
    if score_shift is not None:
        col_scores = col_scores + score_shift
    loss, grad = loss_and_grad(col_scores.detach().clone(), config.loss,
                               bpreg=config.bpreg, activation=config.activation,
                               elu_param=config.elu_param)
    return loss, grad, col_scores
