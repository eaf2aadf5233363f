"""Neural-network functions, as torch.nn.functional: activations, linear, dropout and
normalization. Each is a registered C++ op or a composition of them."""

from __future__ import annotations

import random as _random
from collections.abc import Sequence

from . import ops
from ._graph import Error, Tensor, builds, wrap


def _apply(op: str, inputs: list[Tensor], **attrs) -> list[Tensor]:
    g = inputs[0]._graph
    return [wrap(v, g) for v in g._g.apply(op, [t._v for t in inputs], attrs)]


def _float(x: Tensor, what: str) -> None:
    if x.dtype.kind != "f":
        raise Error(f"{what} expects a float tensor, got {x.dtype}")


# ---- activations ----


@builds
def leaky_relu(x: Tensor, negative_slope: float = 0.01) -> Tensor:
    """x if x > 0 else negative_slope * x. Shape: x's."""
    return _apply("leaky_relu", [x], negative_slope=float(negative_slope))[0]


@builds
def elu(x: Tensor, alpha: float = 1.0) -> Tensor:
    """x if x > 0 else alpha * (exp(x) - 1). Shape: x's."""
    return _apply("elu", [x], alpha=float(alpha))[0]


@builds
def selu(x: Tensor) -> Tensor:
    """scale * elu(x, alpha) with the self-normalizing constants. Shape: x's."""
    return _apply("selu", [x])[0]


@builds
def gelu(x: Tensor, approximate: str = "none") -> Tensor:
    """x * Phi(x) (exact, with erf), or its tanh approximation with approximate="tanh"."""
    if approximate not in ("none", "tanh"):
        raise Error(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    return _apply("gelu", [x], approximate=approximate)[0]


@builds
def softplus(x: Tensor, beta: float = 1.0, threshold: float = 20.0) -> Tensor:
    """log(1 + exp(beta * x)) / beta, linear where beta * x > threshold. Shape: x's."""
    return _apply("softplus", [x], beta=float(beta), threshold=float(threshold))[0]


@builds
def hardtanh(x: Tensor, min_val: float = -1.0, max_val: float = 1.0) -> Tensor:
    """x clipped to [min_val, max_val]. Shape: x's."""
    return ops.clip(x, min_val, max_val)


@builds
def prelu(x: Tensor, weight: Tensor) -> Tensor:
    """x if x > 0 else weight * x, with one learned slope per channel (axis 1) or one in all.
    x: (N, C, ...); weight: (C,) or (1,)."""
    if weight.ndim != 1:
        raise Error(f"prelu: weight must be 1-d (C,) or (1,), got {weight.shape}")
    w = weight
    if x.ndim >= 2 and weight.shape[0] != 1:
        w = ops.reshape(weight, (weight.shape[0],) + (1,) * (x.ndim - 2))
    return ops.where(x > 0, x, w * x)


@builds
def maxout(x: Tensor, pieces: int) -> Tensor:
    """The max over ``pieces`` consecutive channels: (N, C * pieces, ...) -> (N, C, ...)."""
    c = x.shape[1]
    if c is None or c % pieces:
        raise Error(f"maxout: {c} channels do not split into groups of {pieces}")
    grouped = ops.reshape(x, (-1, c // pieces, pieces) + tuple(x.shape[2:]))
    return ops.max(grouped, axis=2)


# ---- layers ----


@builds
def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """x @ weight.T + bias. x: (..., in); weight: (out, in); bias: (out,) -> (..., out)."""
    from . import _core

    y = wrap(_core.matmul(x._v, weight._v, False, True), x._graph)
    return y if bias is None else y + bias


def _seed(seed: int | None) -> int:
    return _random.SystemRandom().randrange(2**62) if seed is None else int(seed)


@builds
def dropout(x: Tensor, p: float = 0.5, seed: int | None = None) -> Tensor:
    """Inverted dropout: zeroes each element with probability p and scales the rest by 1/(1-p)
    in a function compiled with training=True (a fresh mask every call); the identity when
    compiled with training=False. Shape: x's."""
    return _apply("dropout", [x], p=float(p), seed=_seed(seed))[0]


@builds
def batch_norm(
    x: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """Batch normalization over axis 1 of (N, C, ...): batch statistics in a training function,
    which also updates the running statistics (when they are variables) after every call; the
    running statistics in an inference function. weight, bias, running_*: (C,)."""
    _float(x, "batch_norm")
    c = x.shape[1] if x.ndim > 1 else None
    weight = weight if weight is not None else _const_like(x, c, 1.0)
    bias = bias if bias is not None else _const_like(x, c, 0.0)
    return _apply(
        "batch_norm", [x, weight, bias, running_mean, running_var], eps=float(eps), momentum=float(momentum)
    )[0]


def _const_like(x: Tensor, n: int | None, value: float) -> Tensor:
    import numpy as np

    from ._graph import constant

    if n is None:
        raise Error(f"normalization needs a known channel count, got shape {x.shape}")
    return constant(np.full(n, value), dtype=x.dtype)


@builds
def layer_norm(
    x: Tensor,
    normalized_shape: int | Sequence[int],
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """Normalizes over the last len(normalized_shape) dims (biased variance), then applies the
    elementwise affine weight and bias of shape normalized_shape. Shape: x's."""
    _float(x, "layer_norm")
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if tuple(x.shape[-len(shape) :]) != shape:
        raise Error(f"layer_norm: normalized_shape {shape} does not match the last dims of {x.shape}")
    axes = tuple(range(x.ndim - len(shape), x.ndim))
    y = _normalize(x, axes, eps)
    if weight is not None:
        y = y * weight
    return y if bias is None else y + bias


def _normalize(x: Tensor, axes: tuple, eps: float) -> Tensor:
    mean = ops.mean(x, axis=axes, keepdims=True)
    centered = x - mean
    var = ops.mean(ops.square(centered), axis=axes, keepdims=True)
    return centered * ops.rsqrt(var + eps)


@builds
def group_norm(
    x: Tensor, num_groups: int, weight: Tensor | None = None, bias: Tensor | None = None, eps: float = 1e-5
) -> Tensor:
    """Normalizes each of num_groups channel groups of (N, C, ...) per sample, then applies the
    per-channel weight and bias (C,). Shape: x's."""
    _float(x, "group_norm")
    c = x.shape[1]
    if c is None or c % num_groups:
        raise Error(f"group_norm: {c} channels do not split into {num_groups} groups")
    rest = tuple(x.shape[2:])
    if any(d is None for d in rest):
        raise Error(f"group_norm: spatial dims must be known, got {x.shape}")
    grouped = ops.reshape(x, (-1, num_groups, c // num_groups) + rest)
    y = ops.reshape(_normalize(grouped, tuple(range(2, grouped.ndim)), eps), (-1, c) + rest)
    per_channel = (c,) + (1,) * len(rest)
    if weight is not None:
        y = y * ops.reshape(weight, per_channel)
    return y if bias is None else y + ops.reshape(bias, per_channel)


@builds
def embedding(indices: Tensor, weight: Tensor) -> Tensor:
    """Rows of weight (num_embeddings, dim) picked by integer indices: indices.shape + (dim,)."""
    return ops.take(weight, indices, 0)


__all__ = [
    "leaky_relu", "elu", "selu", "gelu", "softplus", "hardtanh", "prelu", "maxout",
    "linear", "dropout", "batch_norm", "layer_norm", "group_norm", "embedding",
]  # fmt: skip
