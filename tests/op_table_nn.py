"""The op table's neural-network entries: activations, layers (functional forms), losses and
regularizers. The numpy references follow PyTorch's formulas (torch.nn.functional semantics),
written independently of kiln; they take the same arrays as the kiln build.
"""

from __future__ import annotations

import math

import numpy as np
from op_table import C, F, I, _unary_cases, np_log_softmax, op

import kiln as kn

erf = np.vectorize(math.erf, otypes=[np.float64])

SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


def _like(value, x: np.ndarray) -> np.ndarray:
    """value as an array of x's dtype (the references compute in float64 where they need to)."""
    return np.asarray(value).astype(x.dtype)


def _reduce(per: np.ndarray, reduction: str) -> np.ndarray:
    if reduction == "none":
        return per
    if reduction == "sum":
        return np.sum(per)
    assert reduction == "mean", reduction
    return np.mean(per)


# ---- elementwise math ----

op("floor", lambda x: kn.floor(x), np.floor, _unary_cases("wide") + [C(F((3, 4), "ties"), grad=False)])
op("cos", lambda x: kn.cos(x), np.cos, _unary_cases() + [C(F((3, 4), "wide"))])
op("sin", lambda x: kn.sin(x), np.sin, _unary_cases() + [C(F((3, 4), "wide"))])


# ---- activations ----


def np_leaky_relu(x, negative_slope=0.01):
    return _like(np.where(x > 0, x, x * negative_slope), x)


def np_elu(x, alpha=1.0):
    return _like(np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0))), x)


def np_selu(x):
    return _like(SELU_SCALE * np.where(x > 0, x, SELU_ALPHA * np.expm1(np.minimum(x, 0))), x)


def np_gelu(x, approximate="none"):
    x64 = x.astype(np.float64)
    if approximate == "tanh":
        y = 0.5 * x64 * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x64 + 0.044715 * x64**3)))
    else:
        y = 0.5 * x64 * (1.0 + erf(x64 / math.sqrt(2.0)))
    return _like(y, x)


def np_softplus(x, beta=1.0, threshold=20.0):
    x64 = x.astype(np.float64)
    bx = beta * x64
    return _like(np.where(bx > threshold, x64, np.log1p(np.exp(np.minimum(bx, threshold))) / beta), x)


def np_prelu(x, weight):
    w = weight.reshape((-1,) + (1,) * (x.ndim - 2)) if x.ndim >= 2 else weight
    return np.where(x > 0, x, w * x)


def np_maxout(x, pieces):
    return x.reshape((x.shape[0], x.shape[1] // pieces, pieces) + x.shape[2:]).max(axis=2)


ACT_CASES = _unary_cases("away") + [C(F((3, 4), "wide"), grad=False)]

op("leaky_relu", kn.leaky_relu, np_leaky_relu, ACT_CASES + [C(F((3, 4), "away"), negative_slope=0.2),
   C(F((3, 4), "away"), negative_slope=1.5), C(F((2, 3), "away"), negative_slope=0.0)])  # fmt: skip
op("elu", kn.elu, np_elu, ACT_CASES + [C(F((3, 4), "away"), alpha=0.5), C(F((3, 4), "away"), alpha=2.0)])
op("selu", kn.selu, np_selu, ACT_CASES)
op(
    "gelu",
    kn.gelu,
    np_gelu,
    _unary_cases() + [C(F((3, 4), "wide"), grad=False), C((3, 4), approximate="none")]
    + [C(F(c.inputs[0].shape, "real"), approximate="tanh") for c in _unary_cases()]
    + [C(F((3, 4), "wide"), approximate="tanh", grad=False)],
)  # fmt: skip
op(
    "softplus",
    kn.softplus,
    np_softplus,
    _unary_cases()
    + [
        C(F((3, 4), "wide"), grad=False),  # the linear branch above the threshold, and exp underflow
        C((3, 4), beta=2.0),
        C((3, 4), beta=0.5, threshold=5.0),
        # beta * x above the threshold: the identity there, and its derivative 1 (as torch)
        C(F((4, 5), "nz"), beta=2.0, threshold=1.0),
    ],
)
op(
    "hardtanh",
    kn.hardtanh,
    lambda x, min_val=-1.0, max_val=1.0: np.clip(x, _like(min_val, x), _like(max_val, x)),
    [C(F((3, 4), "nz")), C(F((2, 3, 4), "away"), min_val=-0.5, max_val=0.5), C(F((5,), "wide"), min_val=0.0,
     max_val=6.0)],
    covers=("clip",),
)  # fmt: skip
op(
    "prelu",
    kn.prelu,
    np_prelu,
    [
        C(F((4, 3), "away"), (3,)),
        C(F((2, 3, 4), "away"), (3,)),
        C(F((2, 2, 3, 2), "away"), (2,)),
        C(F((4, 3), "away"), (1,)),  # one slope shared by all channels
        C(F((2, 3, 2), "away"), (1,)),
    ],
    covers=(),
)
op(
    "maxout",
    kn.maxout,
    np_maxout,
    [
        C((4, 6), pieces=2),
        C((4, 6), pieces=3),
        C((2, 6, 3), pieces=2),
        C((3, 4), pieces=4),
        C((3, 4), pieces=1),
    ],
    covers=(),
)


# ---- layers (functional forms) ----


def np_linear(x, weight, bias=None):
    y = x @ weight.T
    return y if bias is None else y + bias


def _normalize(x, axes, eps):
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=axes, keepdims=True)
    var = ((x64 - mean) ** 2).mean(axis=axes, keepdims=True)  # biased, as torch
    return (x64 - mean) / np.sqrt(var + eps)


def np_layer_norm(x, weight=None, bias=None, normalized_shape=(), eps=1e-5):
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    y = _normalize(x, tuple(range(x.ndim - len(shape), x.ndim)), eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return _like(y, x)


def np_group_norm(x, weight=None, bias=None, num_groups=1, eps=1e-5):
    n, c = x.shape[:2]
    y = _normalize(x.reshape(n, num_groups, -1), (2,), eps).reshape(x.shape)
    per_channel = (c,) + (1,) * (x.ndim - 2)
    if weight is not None:
        y = y * weight.reshape(per_channel)
    if bias is not None:
        y = y + bias.reshape(per_channel)
    return _like(y, x)


def np_batch_norm_train(x, weight=None, bias=None, eps=1e-5, momentum=0.1):
    """Training mode: normalized with the batch statistics (biased variance), per channel (axis 1)."""
    y = _normalize(x, (0,) + tuple(range(2, x.ndim)), eps)
    per_channel = (x.shape[1],) + (1,) * (x.ndim - 2)
    if weight is not None:
        y = y * weight.reshape(per_channel)
    if bias is not None:
        y = y + bias.reshape(per_channel)
    return _like(y, x)


def kn_batch_norm_train(x, weight=None, bias=None, **kw):
    """kn.batch_norm in a training function, its running statistics constants."""
    c = x.shape[1]
    rm, rv = kn.constant(np.zeros(c), dtype=x.dtype), kn.constant(np.ones(c), dtype=x.dtype)
    return kn.batch_norm(x, rm, rv, weight, bias, **kw)


op(
    "linear",
    kn.linear,
    np_linear,
    [
        C((4, 3), (5, 3), (5,)),
        C((2, 4, 3), (5, 3), (5,)),
        C((3,), (2, 3), (2,)),
        C((4, 3), (5, 3)),  # no bias
        C((1, 1), (1, 1), (1,)),
        C((0, 3), (2, 3), (2,)),
    ],
    covers=("matmul", "add"),
)
op(
    "layer_norm",
    lambda x, weight=None, bias=None, **kw: kn.layer_norm(x, kw.pop("normalized_shape"), weight, bias, **kw),
    np_layer_norm,
    [
        C((4, 5), (5,), (5,), normalized_shape=5),
        C((2, 3, 4), (3, 4), (3, 4), normalized_shape=(3, 4)),
        C((2, 3, 4), (4,), (4,), normalized_shape=[4]),
        C((3, 6), normalized_shape=6),  # no affine
        C((3, 4), (4,), (4,), normalized_shape=4, eps=0.5),
        C(F((2, 5), "huge"), (5,), (5,), normalized_shape=5, grad=False, atol32=1e-3),
    ],
    covers=(),
)
op(
    "group_norm",
    lambda x, weight=None, bias=None, **kw: kn.group_norm(x, kw.pop("num_groups"), weight, bias, **kw),
    np_group_norm,
    [
        C((2, 6, 3), (6,), (6,), num_groups=3),
        C((2, 4, 2, 2), (4,), (4,), num_groups=2),
        C((3, 6), (6,), (6,), num_groups=2),  # no spatial dims
        C((2, 4, 3), (4,), (4,), num_groups=1),  # layer norm over (C, L)
        C((2, 3, 4), (3,), (3,), num_groups=3),  # instance norm
        C((2, 6, 2), num_groups=2),  # no affine
        C((2, 4, 3), (4,), (4,), num_groups=2, eps=0.5),
    ],
    covers=(),
)
op(
    "embedding",
    kn.embedding,
    lambda idx, weight: weight[idx],
    [
        C(I((5,), high=7), (7, 3)),
        C(I((2, 3), high=4), (4, 2)),
        C(I((7,), high=2), (2, 3)),  # repeated rows: their gradients add up
        C(I((), high=3), (3, 4)),
        C(I((4,), dtype="int32", high=3), (3, 2)),
        C(I((0,), high=3), (3, 2)),
    ],
    covers=("take",),
)
op(
    "batch_norm",
    kn_batch_norm_train,
    np_batch_norm_train,
    [
        C((4, 3), (3,), (3,)),
        C((2, 3, 4), (3,), (3,)),
        C((2, 2, 3, 2), (2,), (2,)),
        C((5, 2), (2,), (2,), eps=0.1, momentum=0.5),
        C((2, 1), (1,), (1,)),
        C((4, 3)),  # weight and bias default to ones and zeros
        C(F((6, 2), "huge"), (2,), (2,), grad=False, atol32=2e-3),
    ],
)
op(
    "batch_norm_running_stats_inputs",
    lambda x, m, v, w, b: kn.batch_norm(x, m, v, w, b),
    lambda x, m, v, w, b: np_batch_norm_train(x, w, b),  # a training function ignores them
    [C((4, 3), (3,), F((3,), "pos"), (3,), (3,)), C((3, 2, 2), (2,), F((2,), "pos"), (2,), (2,))],
    covers=("batch_norm",),
)


# ---- softmax cross-entropy ----


def np_cross_entropy(z, y, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    """torch.nn.functional.cross_entropy with integer targets."""
    logp = np_log_softmax(z.astype(np.float64), axis=1)
    n, c = z.shape
    w = np.ones(c) if weight is None else np.asarray(weight, np.float64)
    valid = y != ignore_index
    ys = np.where(valid, y, 0)
    wy = w[ys] * valid
    nll = -logp[np.arange(n), ys] * wy
    smooth = -(logp * w).sum(axis=1) * valid
    per = (1 - label_smoothing) * nll + label_smoothing / c * smooth
    if reduction == "mean":
        return _like(per.sum() / wy.sum(), z)  # divided by the weights of the counted targets
    return _like(_reduce(per, reduction), z)


def kn_cross_entropy(z, y, weight=None, labels=None, **kw):
    """weight: a numpy array (a constant of z's dtype); labels: a numpy array that replaces y."""
    if isinstance(weight, np.ndarray):
        weight = kn.constant(weight, dtype=z.dtype)
    return kn.softmax_cross_entropy(z, y if labels is None else kn.constant(labels), weight, **kw)


def np_cross_entropy_labels(z, y, labels=None, **kw):
    return np_cross_entropy(z, y if labels is None else labels, **kw)


W5 = np.array([0.5, 2.0, 1.0, 0.25, 3.0])
W4 = W5[:4]
LABELS_IGNORED = np.array([2, -100, 0, 3, -100, 1])
LABELS_IGNORED_1 = np.array([1, -1, 0, -1, 3])

op(
    "softmax_cross_entropy",
    kn_cross_entropy,
    np_cross_entropy_labels,
    [
        C((4, 5), I((4,), high=5)),
        C((4, 5), I((4,), high=5), reduction="sum"),
        C((4, 5), I((4,), high=5), reduction="none"),
        C((1, 3), I((1,), high=3)),
        C((6, 2), I((6,), dtype="int32", high=2)),
        C((5, 1), I((5,), high=1)),  # one class: zero loss
        C(F((3, 4), "wide"), I((3,), high=4), grad=False),
        C(F((3, 4), "huge"), I((3,), high=4), grad=False, atol32=1e-4),
        # class weights: the mean divides by the weights of the counted targets
        C((6, 5), I((6,), high=5), weight=W5),
        C((6, 5), I((6,), high=5), weight=W5, reduction="sum"),
        # a gradient component near 3e-5 sits within the centered differences' roundoff (~1e-9)
        C((6, 5), I((6,), high=5), weight=W5, reduction="none", grad_tol=1e-4),
        # ignore_index: ignored targets count for nothing, not even in the mean's denominator
        C((6, 4), I((6,), high=4), labels=LABELS_IGNORED),
        C((6, 4), I((6,), high=4), labels=LABELS_IGNORED, reduction="sum"),
        C((6, 4), I((6,), high=4), labels=LABELS_IGNORED, reduction="none"),
        C((5, 4), I((5,), high=4), labels=LABELS_IGNORED_1, ignore_index=-1),
        C((6, 4), I((6,), high=4), labels=LABELS_IGNORED, weight=W4),
        # label smoothing (torch: (1 - e) * nll + e / C * sum_j w_j * -log p_j)
        C((4, 5), I((4,), high=5), label_smoothing=0.1),
        C((4, 5), I((4,), high=5), label_smoothing=0.3, reduction="sum"),
        C((4, 5), I((4,), high=5), label_smoothing=1.0, reduction="none"),
        C((6, 5), I((6,), high=5), label_smoothing=0.2, weight=W5),
        C((6, 5), I((6,), high=5), label_smoothing=0.2, weight=W5, reduction="none"),
        C((6, 4), I((6,), high=4), labels=LABELS_IGNORED, label_smoothing=0.25, weight=W4),
        C((6, 4), I((6,), high=4), labels=LABELS_IGNORED, label_smoothing=0.25, reduction="sum"),
    ],
)
# the class weights as a float input: forward only (their gradient is not implemented, as in
# torch, and asking for it is an error: see test_nn.py)
op(
    "softmax_cross_entropy_weight_input",
    lambda z, y, w, **kw: kn.softmax_cross_entropy(z, y, w, **kw),
    lambda z, y, w, **kw: np_cross_entropy(z, y, w, **kw),
    [
        C((4, 5), I((4,), high=5), F((5,), "pos")),
        C((4, 5), I((4,), high=5), F((5,), "pos"), reduction="sum"),
        C((4, 5), I((4,), high=5), F((5,), "pos"), label_smoothing=0.2, reduction="none"),
    ],
    grad=False,
    covers=("softmax_cross_entropy",),
)

# ---- losses composed in Python (kiln/losses.py) ----


def np_nll_loss(x, y, weight=None, ignore_index=-100, reduction="mean"):
    n, c = x.shape
    w = np.ones(c) if weight is None else weight
    valid = y != ignore_index
    ys = np.where(valid, y, 0)
    wy = w[ys] * valid
    per = -x[np.arange(n), ys] * wy
    if reduction == "mean":
        return _like(per.sum() / wy.sum(), x)
    return _like(_reduce(per, reduction), x)


def np_multi_margin_loss(x, y, p=1, margin=1.0, weight=None, reduction="mean"):
    """torch: sum over j != y of max(0, margin - x_y + x_j)**p (times weight[y]), divided by C."""
    n, c = x.shape
    x64 = x.astype(np.float64)
    z = np.maximum(margin - x64[np.arange(n), y][:, None] + x64, 0.0) ** p
    z[np.arange(n), y] = 0.0
    per = z.sum(axis=1) / c
    if weight is not None:
        per = per * weight[y]
    return _like(_reduce(per, reduction), x)


def np_bce_with_logits(x, t, weight=None, pos_weight=None, reduction="mean"):
    x64 = x.astype(np.float64)
    log_sig, log_one_minus = -np.logaddexp(0.0, -x64), -np.logaddexp(0.0, x64)
    pw = 1.0 if pos_weight is None else pos_weight
    per = -(pw * t * log_sig + (1 - t) * log_one_minus)
    if weight is not None:
        per = per * weight
    return _like(_reduce(per, reduction), x)


def np_smooth_l1(x, t, reduction="mean", beta=1.0):
    d = np.abs(x.astype(np.float64) - t)
    per = d if beta == 0 else np.where(d < beta, 0.5 * d**2 / beta, d - 0.5 * beta)
    return _like(_reduce(per, reduction), x)


def np_huber(x, t, reduction="mean", delta=1.0):
    d = np.abs(x.astype(np.float64) - t)
    return _like(_reduce(np.where(d < delta, 0.5 * d**2, delta * (d - 0.5 * delta)), reduction), x)


def np_kl_div(log_q, t, reduction="mean", log_target=False):
    lq, t64 = log_q.astype(np.float64), t.astype(np.float64)
    if log_target:
        per = np.exp(t64) * (t64 - lq)
    else:
        per = np.where(t64 > 0, t64 * (np.log(np.where(t64 > 0, t64, 1.0)) - lq), 0.0)  # xlogy: 0 log 0 = 0
    if reduction == "batchmean":
        return _like(per.sum() / log_q.shape[0], log_q)
    return _like(_reduce(per, reduction), log_q)


REDUCTIONS = ("mean", "sum", "none")

op(
    "nll_loss",
    lambda x, y, w=None, labels=None, **kw: kn.nll_loss(
        x, y if labels is None else kn.constant(labels), w, **kw
    ),
    lambda x, y, w=None, labels=None, **kw: np_nll_loss(x, y if labels is None else labels, w, **kw),
    [C((4, 5), I((4,), high=5), reduction=r) for r in REDUCTIONS]
    + [
        C((6, 5), I((6,), high=5), F((5,), "pos")),  # class weights (gradient-checked too)
        C((6, 5), I((6,), high=5), F((5,), "pos"), reduction="sum"),
        C((6, 4), I((6,), high=4), labels=LABELS_IGNORED),
        C((6, 4), I((6,), high=4), F((4,), "pos"), labels=LABELS_IGNORED),
        C((5, 4), I((5,), high=4), labels=LABELS_IGNORED_1, ignore_index=-1, reduction="none"),
        C((3, 4), I((3,), dtype="int32", high=4)),
    ],
    covers=(),
)
op(
    "nll_loss_of_log_softmax",
    lambda z, y: kn.nll_loss(kn.log_softmax(z), y),
    lambda z, y: np_cross_entropy(z, y),
    [C((4, 5), I((4,), high=5))],
    covers=(),
)
op(
    "multi_margin_loss",
    lambda x, y, w=None, **kw: kn.multi_margin_loss(x, y, weight=w, **kw),
    lambda x, y, w=None, **kw: np_multi_margin_loss(x, y, weight=w, **kw),
    [C((4, 5), I((4,), high=5), p=p, reduction=r) for p in (1, 2) for r in REDUCTIONS]
    + [
        C((4, 5), I((4,), high=5), margin=0.5),
        C((4, 5), I((4,), high=5), p=2, margin=2.0, reduction="sum"),
        C((4, 5), I((4,), high=5), F((5,), "pos")),  # per-class weights
        C((4, 5), I((4,), high=5), F((5,), "pos"), p=2, reduction="none"),
        C(F((3, 4), "wide"), I((3,), high=4), grad=False),
    ],
    covers=(),
)
op(
    "binary_cross_entropy_with_logits",
    lambda x, t, w=None, **kw: kn.binary_cross_entropy_with_logits(x, t, w, **kw),
    lambda x, t, w=None, **kw: np_bce_with_logits(x, t, w, **kw),
    [C((4, 3), F((4, 3), "unit"), reduction=r) for r in REDUCTIONS]
    + [
        C((5,), F((5,), "unit")),
        C((4, 3), (4, 3)),  # targets outside [0, 1] are still a smooth function
        C((4, 3), F((4, 3), "unit"), F((4, 3), "pos")),  # weight
        C((4, 3), F((4, 3), "unit"), F((3,), "pos"), reduction="sum"),  # weight broadcast over the batch
        C(F((4, 3), "wide"), F((4, 3), "unit"), grad=False),  # stable for large |x|
    ],
    covers=(),
)
op(
    "binary_cross_entropy_with_logits_pos_weight",
    lambda x, t, pw, w=None, **kw: kn.binary_cross_entropy_with_logits(x, t, w, pw, **kw),
    lambda x, t, pw, w=None, **kw: np_bce_with_logits(x, t, w, pw, **kw),
    [
        C((4, 3), F((4, 3), "unit"), F((3,), "pos")),  # one positive weight per class
        C((4, 3), F((4, 3), "unit"), F((3,), "pos"), reduction="sum"),
        C((4, 3), F((4, 3), "unit"), F((3,), "pos"), F((4, 3), "pos"), reduction="none"),
        C(F((4, 3), "wide"), F((4, 3), "unit"), F((3,), "pos"), grad=False),
    ],
    covers=(),
)
op(
    "mse_loss",
    kn.mse_loss,
    lambda x, t, reduction="mean": _like(_reduce((x.astype(np.float64) - t) ** 2, reduction), x),
    [C((4, 3), (4, 3), reduction=r) for r in REDUCTIONS] + [C((5,), (5,)), C((2, 3, 2), (2, 3, 2))],
    covers=(),
)
op(
    "l1_loss",
    kn.l1_loss,
    lambda x, t, reduction="mean": _like(_reduce(np.abs(x.astype(np.float64) - t), reduction), x),
    [C((4, 3), (4, 3), reduction=r) for r in REDUCTIONS] + [C((5,), (5,))],
    covers=(),
)
op(
    "smooth_l1_loss",
    kn.smooth_l1_loss,
    np_smooth_l1,
    [C((4, 3), (4, 3), reduction=r) for r in REDUCTIONS]
    + [
        C((4, 3), (4, 3), beta=0.5),
        C((4, 3), (4, 3), beta=2.0, reduction="sum"),
        C((4, 3), (4, 3), beta=0.0),
    ],
    covers=(),
)
op(
    "huber_loss",
    kn.huber_loss,
    np_huber,
    [C((4, 3), (4, 3), reduction=r) for r in REDUCTIONS]
    + [C((4, 3), (4, 3), delta=0.5), C((4, 3), (4, 3), delta=2.0, reduction="sum")],
    covers=(),
)
op(
    "kl_div",
    kn.kl_div,
    np_kl_div,
    [C((4, 3), F((4, 3), "unit"), reduction=r) for r in REDUCTIONS + ("batchmean",)]
    + [C((4, 3), (4, 3), log_target=True, reduction=r) for r in REDUCTIONS + ("batchmean",)]
    + [
        C((2, 3, 2), F((2, 3, 2), "unit"), reduction="batchmean"),
        # zero targets count 0 (0 log 0 = 0); the derivative in such a target is -inf: forward only
        C((4, 3), F((4, 3), "unit0"), grad=False),
        C((4, 3), F((4, 3), "unit0"), reduction="none", grad=False),
    ],
    covers=(),
)


# ---- regularizers over parameter lists ----

op(
    "l2_regularization",
    lambda a, b, **kw: kn.l2_regularization([a, b], **kw),
    lambda a, b, half=True: _like(
        (np.sum(a.astype(np.float64) ** 2) + np.sum(b**2.0)) * (0.5 if half else 1.0), a
    ),
    [C((3, 4), (4,)), C((3, 4), (4,), half=False), C((2, 2), ())],
    covers=(),
)
op(
    "l1_regularization",
    lambda a, b: kn.l1_regularization([a, b]),
    lambda a, b: _like(np.sum(np.abs(a.astype(np.float64))) + np.sum(np.abs(b)), a),
    [C(F((3, 4), "away"), F((4,), "away"))],
    covers=(),
)
op(
    "elastic_net",
    lambda a, b, **kw: kn.elastic_net([a, b], **kw),
    lambda a, b, l1, l2, half=True: _like(
        l1 * (np.abs(a.astype(np.float64)).sum() + np.abs(b).sum())
        + l2 * (0.5 if half else 1.0) * (np.sum(a.astype(np.float64) ** 2) + np.sum(b**2.0)),
        a,
    ),
    [C(F((3, 4), "away"), F((4,), "away"), l1=0.3, l2=0.7), C(F((3, 4), "away"), F((4,), "away"), l1=1e-2, l2=2.0,
     half=False)],
    covers=(),
)  # fmt: skip
