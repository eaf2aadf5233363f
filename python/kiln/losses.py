"""Losses (torch.nn.functional names and defaults) and regularizers over parameter lists.
Shapes: input (N, C) and integer targets (N,) for classification; matching shapes otherwise.
``reduction`` is "mean" (default), "sum" or "none"."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from . import ops
from ._graph import Error, Tensor, builds
from .functional import _apply


def _reduce(per_sample: Tensor, reduction: str, weights: Tensor | None = None) -> Tensor:
    if reduction == "none":
        return per_sample
    if reduction == "sum":
        return ops.sum(per_sample)
    if reduction == "mean":
        return ops.sum(per_sample) / ops.sum(weights) if weights is not None else ops.mean(per_sample)
    raise Error(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def _targets(target: Tensor | np.ndarray, like: Tensor) -> Tensor:
    return target if isinstance(target, Tensor) else ops._t(np.asarray(target), like)


@builds
def softmax_cross_entropy(
    logits: Tensor,
    labels: Tensor,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> Tensor:
    """Cross-entropy of softmax(logits) against integer labels, fused and stable (torch's
    F.cross_entropy): logits (N, C), labels (N,) int; optional class weights (C,); samples with
    label ignore_index count for nothing; the mean is over the weights of counted samples."""
    labels = _targets(labels, logits)
    inputs = [logits, labels] + ([weight] if weight is not None else [])
    loss, w = _apply(
        "softmax_cross_entropy",
        inputs,
        ignore_index=int(ignore_index),
        label_smoothing=float(label_smoothing),
    )
    return _reduce(loss, reduction, w)


cross_entropy = softmax_cross_entropy


@builds
def nll_loss(
    log_probs: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> Tensor:
    """Negative log-likelihood of integer targets (N,) under log-probabilities (N, C)."""
    target = _targets(target, log_probs)
    valid = target != ignore_index
    safe = ops.where(valid, target, 0)
    picked = ops.take_along_axis(log_probs, ops.unsqueeze(safe, 1), 1)[:, 0]
    w = ops.cast(valid, log_probs.dtype)
    if weight is not None:
        w = w * ops.take(weight, safe)
    return _reduce(-picked * w, reduction, w)


@builds
def multi_margin_loss(
    x: Tensor,
    y: Tensor,
    p: int = 1,
    margin: float = 1.0,
    weight: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Multiclass hinge (SVM) loss as torch: sum over j != y of max(0, margin - x_y + x_j)**p,
    divided by C (multiply by C for CS231n's convention). x (N, C), y (N,) int; p is 1 or 2."""
    if p not in (1, 2):
        raise Error(f"multi_margin_loss: p must be 1 or 2, got {p}")
    y = _targets(y, x)
    c = x.shape[1]
    if c is None:
        raise Error(f"multi_margin_loss: the number of classes must be known, got {x.shape}")
    correct = ops.take_along_axis(x, ops.unsqueeze(y, 1), 1)
    hinge = ops.relu(x - correct + margin)
    if p == 2:
        hinge = ops.square(hinge)
    others = ops.one_hot(y, c, x.dtype) * -1.0 + 1.0  # the j == y term is margin**p: drop it
    per = ops.sum(hinge * others, axis=1) / float(c)
    if weight is not None:
        per = per * ops.take(weight, y)
    return _reduce(per, reduction)


@builds
def binary_cross_entropy_with_logits(
    x: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    pos_weight: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Stable binary cross-entropy of sigmoid(x) against targets in [0, 1] of x's shape."""
    target = _targets(target, x)
    # log sigmoid(x) = -(max(-x, 0) + log(1 + exp(-|x|))), and log(1 - sigmoid(x)) likewise
    log1p_term = ops.log(ops.exp(-ops.abs(x)) + 1.0)
    log_sig = -(ops.relu(-x) + log1p_term)
    log_one_minus = -(ops.relu(x) + log1p_term)
    if pos_weight is not None:
        per = -(pos_weight * target * log_sig + (1.0 - target) * log_one_minus)
    else:
        per = -(target * log_sig + (1.0 - target) * log_one_minus)
    if weight is not None:
        per = per * weight
    return _reduce(per, reduction)


@builds
def mse_loss(x: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """(x - target)**2, reduced."""
    return _reduce(ops.square(x - _targets(target, x)), reduction)


@builds
def l1_loss(x: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """|x - target|, reduced."""
    return _reduce(ops.abs(x - _targets(target, x)), reduction)


@builds
def smooth_l1_loss(x: Tensor, target: Tensor, reduction: str = "mean", beta: float = 1.0) -> Tensor:
    """0.5 d**2 / beta where |d| < beta, else |d| - 0.5 beta (d = x - target)."""
    d = ops.abs(x - _targets(target, x))
    if beta == 0:
        return _reduce(d, reduction)
    return _reduce(ops.where(d < beta, 0.5 * ops.square(d) / beta, d - 0.5 * beta), reduction)


@builds
def huber_loss(x: Tensor, target: Tensor, reduction: str = "mean", delta: float = 1.0) -> Tensor:
    """0.5 d**2 where |d| < delta, else delta (|d| - 0.5 delta): smooth_l1 scaled by delta."""
    d = ops.abs(x - _targets(target, x))
    return _reduce(ops.where(d < delta, 0.5 * ops.square(d), delta * (d - 0.5 * delta)), reduction)


@builds
def kl_div(log_q: Tensor, target: Tensor, reduction: str = "mean", log_target: bool = False) -> Tensor:
    """KL(target || q) pointwise as torch: target * (log target - log_q), with log_q the input's
    log-probabilities. reduction "batchmean" divides the sum by the batch size (the true KL)."""
    target = _targets(target, log_q)
    if log_target:
        per = ops.exp(target) * (target - log_q)
    else:  # 0 * log 0 = 0
        safe = ops.where(target > 0, target, 1.0)
        per = ops.where(target > 0, target * (ops.log(safe) - log_q), 0.0)
    if reduction == "batchmean":
        row = int(np.prod(per.shape[1:]))
        if any(d is None for d in per.shape[1:]):
            raise Error(f"kl_div: batchmean needs known dims after the batch, got {per.shape}")
        return ops.sum(per) * float(row) / ops.sum(ops.ones_like(per))
    return _reduce(per, reduction)


# ---- regularizers ----


@builds
def l2_regularization(params: Sequence[Tensor], half: bool = True) -> Tensor:
    """sum of squares of every parameter; times 1/2 when half (CS231n's 0.5 * reg * ||W||^2)."""
    total = _add_all([ops.sum(ops.square(p)) for p in params])
    return total * 0.5 if half else total


@builds
def l1_regularization(params: Sequence[Tensor]) -> Tensor:
    """sum of absolute values of every parameter."""
    return _add_all([ops.sum(ops.abs(p)) for p in params])


@builds
def elastic_net(params: Sequence[Tensor], l1: float, l2: float, half: bool = True) -> Tensor:
    """l1 * sum|w| + l2 * sum w**2 (times 1/2 when half)."""
    return l1 * l1_regularization(params) + l2 * l2_regularization(params, half)


def _add_all(terms: list[Tensor]) -> Tensor:
    if not terms:
        raise Error("a regularizer needs at least one parameter")
    total = terms[0]
    for t in terms[1:]:
        total = total + t
    return total


__all__ = [
    "softmax_cross_entropy", "cross_entropy", "nll_loss", "multi_margin_loss", "binary_cross_entropy_with_logits",
    "mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss", "kl_div",
    "l2_regularization", "l1_regularization", "elastic_net",
]  # fmt: skip
