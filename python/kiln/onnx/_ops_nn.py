"""ONNX import handlers: the nn ops."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import onnx

import kiln as kn

from .._graph import Tensor
from ._registry import Unsupported, attrs, numpy_dtype, op

if TYPE_CHECKING:  # _import imports this module to fill the handler table
    from ._import import Ctx

# ---- matrix products ----


@op("MatMul")
def matmul(ctx: Ctx, node: onnx.NodeProto, inputs: list) -> list:
    return [kn.matmul(inputs[0], inputs[1])]  # kiln's matmul has numpy's rules, 1-d operands included


@op("Gemm")
def gemm(ctx: Ctx, node: onnx.NodeProto, inputs: list) -> list:
    a, b, c = (inputs + [None])[:3]
    at = attrs(node)
    alpha, beta = at.get("alpha", 1.0), at.get("beta", 1.0)
    y = kn.matmul(
        kn.transpose(a) if at.get("transA", 0) else a, kn.transpose(b) if at.get("transB", 0) else b
    )
    if alpha != 1.0:  # scaling only when needed keeps integer Gemms integer
        y = y * alpha
    if c is not None:
        y = y + (c * beta if beta != 1.0 else c)
    return [y]


# ---- padding and window geometry shared by convolutions and pooling ----


def _spatial_sizes(x: Tensor, n: int, what: str) -> list[int]:
    sizes = list(x.shape[-n:])
    if any(s is None for s in sizes):
        raise Unsupported(f"{what} needs the spatial sizes of its input known, got shape {x.shape}")
    return sizes


def _pads(
    a: dict, x: Tensor, kernel: Sequence[int], strides: Sequence[int], dilations: Sequence[int], what: str
) -> tuple[list[int], list[int]]:
    """(begin, end) padding of each spatial dim from ``auto_pad`` or ``pads``."""
    n = len(kernel)
    auto = a.get("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        # the output is ceil(in / stride) long; the odd pixel of padding goes to the end for UPPER
        total = [
            max(0, (-(-i // s) - 1) * s + (k - 1) * d + 1 - i)
            for i, k, s, d in zip(_spatial_sizes(x, n, what), kernel, strides, dilations)
        ]
        small, big = [t // 2 for t in total], [t - t // 2 for t in total]
        return (small, big) if auto == "SAME_UPPER" else (big, small)
    if auto == "VALID":
        return [0] * n, [0] * n
    pads = list(a.get("pads", [0] * 2 * n))
    return pads[:n], pads[n:]


def _pad_arg(begin: Sequence[int], end: Sequence[int]) -> list[int]:
    """kn.pad's argument, (before, after) pairs from the last dim, for the spatial dims."""
    return [v for b, e in zip(reversed(begin), reversed(end)) for v in (b, e)]


def _by_rank(fns: tuple, n: int, what: str):
    if not 1 <= n <= len(fns):
        raise Unsupported(f"{what} over {n} spatial dims (kiln has 1 to {len(fns)})")
    return fns[n - 1]


# ---- convolutions ----


@op("Conv")
def conv(ctx: Ctx, node: onnx.NodeProto, inputs: list) -> list:
    x, w, b = (inputs + [None])[:3]
    a = attrs(node)
    n = w.ndim - 2
    strides, dilations = a.get("strides", [1] * n), a.get("dilations", [1] * n)
    begin, end = _pads(a, x, w.shape[2:], strides, dilations, "Conv")
    # kiln pads symmetrically: the asymmetric remainder is padded beforehand
    sym = [min(p, q) for p, q in zip(begin, end)]
    if begin != end:
        x = kn.pad(x, _pad_arg([p - s for p, s in zip(begin, sym)], [q - s for q, s in zip(end, sym)]))
    fn = _by_rank((kn.conv1d, kn.conv2d, kn.conv3d), n, "Conv")
    return [fn(x, w, b, stride=strides, padding=sym, dilation=dilations, groups=a.get("group", 1))]


@op("ConvTranspose")
def conv_transpose(ctx: Ctx, node: onnx.NodeProto, inputs: list) -> list:
    x, w, b = (inputs + [None])[:3]
    a = attrs(node)
    n = w.ndim - 2
    strides, dilations = a.get("strides", [1] * n), a.get("dilations", [1] * n)
    out_pad = a.get("output_padding", [0] * n)
    auto = a.get("auto_pad", "NOTSET")
    if "output_shape" in a or auto in ("SAME_UPPER", "SAME_LOWER"):
        # ONNX derives the pads from the requested output size (in * stride for SAME)
        sizes = _spatial_sizes(x, n, "ConvTranspose")
        out = a.get("output_shape") or [i * s for i, s in zip(sizes, strides)]
        full = [
            s * (i - 1) + (k - 1) * d + 1 + p
            for i, s, k, d, p in zip(sizes, strides, w.shape[2:], dilations, out_pad)
        ]
        total = [f - o for f, o in zip(full, out[-n:])]
        small, big = [t // 2 for t in total], [t - t // 2 for t in total]
        begin, end = (small, big) if auto == "SAME_UPPER" else (big, small)
    elif auto == "VALID":
        begin, end = [0] * n, [0] * n
    else:
        pads = list(a.get("pads", [0] * 2 * n))
        begin, end = pads[:n], pads[n:]
    fn = _by_rank((kn.conv_transpose1d, kn.conv_transpose2d, kn.conv_transpose3d), n, "ConvTranspose")
    kw = dict(stride=strides, groups=a.get("group", 1), dilation=dilations)
    if (
        begin == end
        and min(begin) >= 0
        and all(p < max(s, d) for p, s, d in zip(out_pad, strides, dilations))
    ):
        return [fn(x, w, b, padding=begin, output_padding=out_pad, **kw)]
    # otherwise the full output, cropped (positive pads) or extended with zeros (negative pads and
    # output_padding) at each end, then the bias, which the extension receives too
    y = kn.pad(fn(x, w, **kw), _pad_arg([-p for p in begin], [o - q for o, q in zip(out_pad, end)]))
    return [y if b is None else y + kn.reshape(b, (-1,) + (1,) * n)]


# ---- pooling ----


def _pool_geometry(a: dict, x: Tensor, what: str) -> tuple:
    k = list(a["kernel_shape"])
    n = len(k)
    s, d = list(a.get("strides", [1] * n)), list(a.get("dilations", [1] * n))
    sizes = _spatial_sizes(x, n, what)
    begin, end = _pads(a, x, k, s, d, what)
    out = []
    for i, kk, ss, dd, b, e in zip(sizes, k, s, d, begin, end):
        span = i + b + e - (kk - 1) * dd - 1
        o = (-(-span // ss) if a.get("ceil_mode", 0) else span // ss) + 1
        out.append(o - 1 if (o - 1) * ss >= i + b else o)  # the last window must start before the end pad
    return k, s, d, sizes, begin, end, out


def _native_pool(k: list[int], d: list[int], begin: list[int], end: list[int]) -> bool:
    """Whether kiln's pooling computes these windows: symmetric padding of at most half the kernel."""
    return all(dd == 1 for dd in d) and begin == end and all(2 * p <= kk for p, kk in zip(begin, k))


def _windows(x: Tensor, k, s, d, sizes, begin, end, out, fill: float) -> list[Tensor]:
    """Every kernel tap's strided view of x padded with ``fill``: the windows of any pooling,
    dilated, asymmetric or ceil-mode, as slices (one per tap)."""
    need = [(o - 1) * ss + (kk - 1) * dd + 1 for o, ss, kk, dd in zip(out, s, k, d)]
    extra = [m - (i + b + e) for m, i, b, e in zip(need, sizes, begin, end)]  # ceil mode: more; else crop
    xp = kn.pad(x, _pad_arg(begin, [e + more for e, more in zip(end, extra)]), value=fill)
    taps = itertools.product(*[range(kk) for kk in k])
    head = (slice(None),) * (x.ndim - len(k))
    return [
        xp[head + tuple(slice(t * dd, t * dd + (o - 1) * ss + 1, ss) for t, dd, o, ss in zip(tap, d, out, s))]
        for tap in taps
    ]


@op("MaxPool")
def max_pool(ctx: Ctx, node: onnx.NodeProto, inputs: list) -> list:
    x = inputs[0]
    a = attrs(node)
    k, s, d, sizes, begin, end, out = _pool_geometry(a, x, "MaxPool")
    want_indices = len(node.output) > 1 and bool(node.output[1])
    if not _native_pool(k, d, begin, end):
        if want_indices:
            raise Unsupported("MaxPool's Indices with dilations or pads beyond half the kernel")
        fill = -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min
        return [functools.reduce(kn.maximum, _windows(x, k, s, d, sizes, begin, end, out, fill))]
    fn = _by_rank((kn.max_pool1d, kn.max_pool2d, kn.max_pool3d), len(k), "MaxPool")
    xf = x if x.dtype.kind == "f" else kn.cast(x, np.float32)  # kiln pools floats; uint8/int8 fit float32
    y, idx = fn(xf, k, s, begin, ceil_mode=bool(a.get("ceil_mode", 0)), return_indices=True)
    y = y if xf is x else kn.cast(y, x.dtype)
    if not want_indices:
        return [y]
    # kiln's index is row-major within one (n, c) plane; ONNX's is over the whole tensor, and
    # column-major within the plane with storage_order=1
    plane = int(np.prod(sizes))
    if a.get("storage_order", 0):
        rows = np.unravel_index(np.arange(plane), sizes)
        idx = kn.take(kn.constant(np.ravel_multi_index(rows[::-1], sizes[::-1]).astype(np.int64)), idx)
    if None in x.shape[:2]:
        raise Unsupported(f"MaxPool's Indices need the batch and channel sizes known, got shape {x.shape}")
    nc = x.shape[0] * x.shape[1]
    offsets = (np.arange(nc, dtype=np.int64) * plane).reshape(x.shape[:2] + (1,) * len(k))
    return [y, idx + kn.constant(offsets, dtype=np.int64)]


@op("AveragePool")
def avg_pool(ctx: Ctx, node: onnx.NodeProto, inputs: list) -> list:
    x = inputs[0]
    a = attrs(node)
    k, s, d, sizes, begin, end, out = _pool_geometry(a, x, "AveragePool")
    include_pad = bool(a.get("count_include_pad", 0))
    if _native_pool(k, d, begin, end):
        fn = _by_rank((kn.avg_pool1d, kn.avg_pool2d, kn.avg_pool3d), len(k), "AveragePool")
        return [fn(x, k, s, begin, ceil_mode=bool(a.get("ceil_mode", 0)), count_include_pad=include_pad)]
    # the sum of the taps over the number of them in the input (and in the explicit pads with
    # count_include_pad; never in the ceil-mode overhang), counted here per dim
    counts = np.ones(out)
    for dim, (i, kk, ss, dd, b, e, o) in enumerate(zip(sizes, k, s, d, begin, end, out)):
        pos = np.arange(o)[:, None] * ss + np.arange(kk)[None, :] * dd
        inside = pos < i + b + e if include_pad else (pos >= b) & (pos < b + i)
        counts = counts * inside.sum(1).reshape((-1,) + (1,) * (len(k) - dim - 1))
    total = functools.reduce(kn.add, _windows(x, k, s, d, sizes, begin, end, out, 0.0))
    return [total / kn.constant(counts, dtype=x.dtype)]


@op("GlobalAveragePool")
def global_avg_pool(ctx: Ctx, node: onnx.NodeProto, inputs: list) -> list:
    x = inputs[0]
    return [kn.mean(x, axis=tuple(range(2, x.ndim)), keepdims=True)]


@op("GlobalMaxPool")
def global_max_pool(ctx: Ctx, node: onnx.NodeProto, inputs: list) -> list:
    x = inputs[0]
    return [kn.max(x, axis=tuple(range(2, x.ndim)), keepdims=True)]


# ---- normalizations ----


def _per_channel(v: Tensor, ndim: int) -> Tensor:
    """A (C,) tensor shaped to broadcast over axis 1 of an ndim-d (N, C, ...) tensor."""
    return kn.reshape(v, (-1,) + (1,) * (ndim - 2))


@op("BatchNormalization")
def batch_norm(ctx: Ctx, node: onnx.NodeProto, inputs: list) -> list:
    x, scale, bias, mean, var = inputs[:5]
    a = attrs(node)
    eps, momentum = a.get("epsilon", 1e-5), a.get("momentum", 0.9)
    if not a.get("training_mode", 0):
        # kiln's momentum weighs the new batch, ONNX's the running statistic: a training
        # function of the imported model updates them as ONNX's training mode would
        return [kn.batch_norm(x, mean, var, scale, bias, momentum=1.0 - momentum, eps=eps)]
    # training mode: normalize with the batch's statistics, and output the running ones updated
    axes = (0, *range(2, x.ndim))
    batch_mean, batch_var = kn.mean(x, axis=axes), kn.var(x, axis=axes)
    mean_c, var_c, scale_c, bias_c = (_per_channel(v, x.ndim) for v in (batch_mean, batch_var, scale, bias))
    y = (x - mean_c) * kn.rsqrt(var_c + eps) * scale_c + bias_c
    return [y, mean * momentum + batch_mean * (1.0 - momentum), var * momentum + batch_var * (1.0 - momentum)]


def _stashed(x: Tensor, a: dict) -> Tensor:
    """x in the precision of the statistics: the stash type (float32 by default) when wider than
    x's; a float64 x stays float64 (as in onnxruntime and ONNX's reference)."""
    dtype = np.promote_types(numpy_dtype(a.get("stash_type", onnx.TensorProto.FLOAT), "stash_type"), x.dtype)
    return x if x.dtype == dtype else kn.cast(x, dtype)


@op("LayerNormalization")
def layer_norm(ctx: Ctx, node: onnx.NodeProto, inputs: list) -> list:
    x, scale, bias = (inputs + [None])[:3]
    a = attrs(node)
    axes = tuple(range(a.get("axis", -1) % x.ndim, x.ndim))
    xs = _stashed(x, a)
    # written out rather than kn.layer_norm: ONNX also outputs the mean and the inverse deviation,
    # and its scale and bias only broadcast to the normalized dims
    mean = kn.mean(xs, axis=axes, keepdims=True)
    centered = xs - mean
    inv_std = kn.rsqrt(kn.mean(kn.square(centered), axis=axes, keepdims=True) + a.get("epsilon", 1e-5))
    y = centered * inv_std
    y = (y if y.dtype == x.dtype else kn.cast(y, x.dtype)) * scale
    return [y if bias is None else y + bias, mean, inv_std]


@op("GroupNormalization")
def group_norm(ctx: Ctx, node: onnx.NodeProto, inputs: list) -> list:
    x, scale, bias = inputs[:3]
    a = attrs(node)
    groups = a["num_groups"]
    if ctx.opset < 21:  # opset 18's scale and bias hold one value per group: repeat it per channel
        c = x.shape[1]
        if c is None:
            raise Unsupported(f"GroupNormalization needs the channel count known, got shape {x.shape}")
        scale, bias = (
            kn.reshape(kn.broadcast_to(kn.reshape(v, (groups, 1)), (groups, c // groups)), (c,))
            for v in (scale, bias)
        )
    xs = _stashed(x, a)
    y = kn.group_norm(xs, groups, eps=a.get("epsilon", 1e-5))
    y = y if y.dtype == x.dtype else kn.cast(y, x.dtype)
    return [y * _per_channel(scale, x.ndim) + _per_channel(bias, x.ndim)]


# ---- losses ----


def _class_last(x: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """(N, C, d1, ...) scores and (N, d1, ...) targets as kiln's (M, C) and (M,)."""
    if x.ndim == 2:
        return x, target
    rows = kn.reshape(kn.permute(x, (0, *range(2, x.ndim), 1)), (-1, x.shape[1]))
    return rows, kn.reshape(target, (-1,))


def _loss(fn, x: Tensor, target: Tensor, weight: Tensor | None, a: dict) -> Tensor:
    reduction = a.get("reduction", "mean")
    # without ignore_index every target counts; kiln's default (-100) is no class either
    ignore = a.get("ignore_index", -100)
    rows, flat = _class_last(x, target)
    loss = fn(rows, flat, weight, ignore_index=ignore, reduction=reduction)
    if reduction == "none" and x.ndim > 2:  # back to the targets' shape
        loss = kn.reshape(loss, tuple(-1 if s is None else s for s in target.shape))
    return loss


@op("NegativeLogLikelihoodLoss")
def nll_loss(ctx: Ctx, node: onnx.NodeProto, inputs: list) -> list:
    x, target, weight = (inputs + [None])[:3]
    return [_loss(kn.nll_loss, x, target, weight, attrs(node))]


@op("SoftmaxCrossEntropyLoss")
def softmax_cross_entropy(ctx: Ctx, node: onnx.NodeProto, inputs: list) -> list:
    x, target, weight = (inputs + [None])[:3]
    loss = _loss(kn.softmax_cross_entropy, x, target, weight, attrs(node))
    want_log_prob = len(node.output) > 1 and bool(node.output[1])
    return [loss, kn.log_softmax(x, axis=1) if want_log_prob else None]
