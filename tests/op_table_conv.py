"""The op table's convolution, pooling and resampling entries (kiln.conv: torch.nn.functional
semantics, NCW / NCHW / NCDHW layouts). The numpy references are naive loops over output
positions and kernel offsets (vectorized over the batch and the channels only), written from
PyTorch's documented formulas, independently of kiln; they take the same arrays as the kiln build.

Gradient checks need a case's inputs to hold at most 80 elements in all (tests/test_ops.py), so the
differentiable cases are small; larger cases check the forward values only. The gradient kernels
(conv_input_grad, conv_weight_grad, max_pool_grad, avg_pool_grad, adaptive_avg_pool_grad,
upsample_grad) are internal: checked here through the ops' gradients, and their own VJPs by second
derivatives in tests/test_conv.py.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from op_table import C, F, op

import kiln as kn

# float32 convolutions sum tens of products: allow for their rounding
CONV_TOL = dict(rtol32=1e-5, atol32=2e-5)


def _t(v, n: int) -> tuple:
    return (v,) * n if isinstance(v, (int, float)) else tuple(v)


def _positions(shape):
    return itertools.product(*[range(s) for s in shape])


def _at(*index):
    """The index [:, :, *index] (all samples, all channels, one spatial position)."""
    return (slice(None), slice(None)) + tuple(index)


# ---------------------------------------------------------------------------------------------
# Convolutions
# ---------------------------------------------------------------------------------------------


def np_conv(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    """y[n, k, o] = b[k] + sum over c in k's group and kernel offsets t of
    x_padded[n, c, o * stride + t * dilation] * w[k, c - group start, t]."""
    nd = x.ndim - 2
    kernel = w.shape[2:]
    s, d = _t(stride, nd), _t(dilation, nd)
    if padding == "valid":
        before = after = (0,) * nd
    elif padding == "same":  # torch: total d (k - 1), the odd one on the right
        total = [d[i] * (kernel[i] - 1) for i in range(nd)]
        before, after = tuple(t // 2 for t in total), tuple(t - t // 2 for t in total)
    else:
        before = after = _t(padding, nd)
    xp = np.pad(x.astype(np.float64), [(0, 0), (0, 0)] + list(zip(before, after)))
    w64 = w.astype(np.float64)
    n, c = x.shape[:2]
    k = w.shape[0]
    cg, kg = c // groups, k // groups
    out = [(xp.shape[2 + i] - d[i] * (kernel[i] - 1) - 1) // s[i] + 1 for i in range(nd)]
    y = np.zeros((n, k, *out))
    for g in range(groups):
        xs, ws = xp[:, g * cg : (g + 1) * cg], w64[g * kg : (g + 1) * kg]
        for o in _positions(out):
            acc = np.zeros((n, kg))
            for t in _positions(kernel):
                src = tuple(o[i] * s[i] + t[i] * d[i] for i in range(nd))
                acc += xs[_at(*src)] @ ws[_at(*t)].T
            y[(slice(None), slice(g * kg, (g + 1) * kg)) + o] = acc
    if b is not None:
        y += b.astype(np.float64).reshape((-1,) + (1,) * nd)
    return y.astype(x.dtype)


def np_conv_transpose(x, w, b=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """Each input element scatters x[n, c, i] * w[c, k, t] to the output position
    i * stride - padding + t * dilation; weight (C, K / groups, kernel)."""
    nd = x.ndim - 2
    kernel = w.shape[2:]
    s, p, op_, d = _t(stride, nd), _t(padding, nd), _t(output_padding, nd), _t(dilation, nd)
    n, c = x.shape[:2]
    cg, kg = c // groups, w.shape[1]
    size = [(x.shape[2 + i] - 1) * s[i] - 2 * p[i] + d[i] * (kernel[i] - 1) + op_[i] + 1 for i in range(nd)]
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    y = np.zeros((n, kg * groups, *size))
    for g in range(groups):
        xs, ws = x64[:, g * cg : (g + 1) * cg], w64[g * cg : (g + 1) * cg]
        for i in _positions(x.shape[2:]):
            for t in _positions(kernel):
                dst = tuple(i[j] * s[j] - p[j] + t[j] * d[j] for j in range(nd))
                if all(0 <= dst[j] < size[j] for j in range(nd)):
                    y[(slice(None), slice(g * kg, (g + 1) * kg)) + dst] += xs[_at(*i)] @ ws[_at(*t)]
    if b is not None:
        y += b.astype(np.float64).reshape((-1,) + (1,) * nd)
    return y.astype(x.dtype)


def _conv_build(fn):
    return lambda x, w, b=None, **kw: fn(x, w, b, **kw)


op(
    "conv1d",
    _conv_build(kn.conv1d),
    np_conv,
    [
        C((2, 2, 7), (3, 2, 3), (3,)),
        C((1, 2, 9), (2, 2, 3), (2,), stride=2, padding=1, dilation=2),
        C((2, 2, 6), (3, 2, 4), padding="same"),  # an even kernel: the extra zero on the right
        C((1, 2, 5), (2, 2, 3), (2,), padding="same", dilation=2),
        C((1, 4, 5), (6, 2, 2), groups=2),  # no bias
        C((2, 3, 8), (3, 1, 2), (3,), groups=3, stride=3),  # depthwise, stride > kernel
        C((1, 1, 4), (2, 1, 3), (2,), padding=(2,)),  # padding larger than half the kernel
        C((1, 2, 5), (1, 2, 5), (1,), padding="valid"),  # kernel == input
        C((8, 16, 50), (32, 4, 5), (32,), groups=4, padding=2, id="large"),
    ],
    covers=("conv",),
    **CONV_TOL,
)
op(
    "conv2d",
    _conv_build(kn.conv2d),
    np_conv,
    [
        C((1, 2, 4, 5), (3, 2, 2, 2), (3,)),  # a batch of 1, H != W
        C((2, 1, 5, 4), (2, 1, 3, 3), (2,), stride=2, padding=1),  # padding half the kernel
        C((1, 1, 7, 6), (2, 1, 2, 2), (2,), stride=3),  # stride larger than the kernel
        C((1, 2, 5, 6), (2, 2, 2, 2), stride=(1, 2), padding=(2, 1), dilation=(2, 1)),
        C((1, 4, 3, 3), (4, 2, 2, 2), (4,), groups=2),
        C((1, 2, 4, 3), (4, 1, 3, 3), (4,), groups=2, padding=1),  # depthwise, multiplier 2
        C((1, 2, 4, 5), (2, 2, 3, 2), padding="same"),
        C((1, 1, 5, 6), (2, 1, 3, 3), (2,), padding="same", dilation=2),
        C((1, 2, 4, 4), (2, 2, 3, 3), padding="valid"),
        C((1, 1, 3, 4), (2, 1, 2, 2), (2,), padding=2),  # padding larger than half the kernel
        C((3, 2, 3, 3), (1, 2, 1, 1), (1,)),  # 1x1
        C((4, 6, 9, 7), (8, 3, 3, 3), (8,), stride=2, padding=1, groups=2, id="large"),
        C((2, 3, 12, 10), (5, 3, 5, 3), (5,), stride=(2, 3), padding=(2, 1), dilation=(1, 2), id="large2"),
    ],
    covers=("conv",),
    **CONV_TOL,
)
op(
    "conv3d",
    _conv_build(kn.conv3d),
    np_conv,
    [
        C((1, 1, 3, 4, 3), (2, 1, 2, 2, 2), (2,)),
        C((1, 1, 4, 3, 4), (1, 1, 3, 2, 2), (1,), stride=(2, 1, 2), padding=(1, 0, 1)),
        C((1, 2, 2, 3, 4), (2, 1, 2, 2, 2), groups=2, dilation=(1, 2, 1)),
        C((1, 1, 3, 3, 3), (1, 1, 3, 3, 3), (1,), padding="same"),
        C((2, 1, 2, 3, 3), (2, 1, 2, 2, 2), (2,), stride=(1, 2, 2)),
        C((2, 4, 6, 7, 5), (6, 2, 3, 3, 3), (6,), groups=2, padding=1, stride=(1, 2, 1), id="large"),
    ],
    covers=("conv",),
    **CONV_TOL,
)
op(
    "conv_transpose1d",
    _conv_build(kn.conv_transpose1d),
    np_conv_transpose,
    [
        C((2, 2, 5), (2, 3, 3), (3,), stride=2, padding=1, output_padding=1),
        C((1, 4, 4), (4, 2, 2), (4,), groups=2, dilation=2),
        C((1, 1, 3), (1, 1, 1)),
        C((2, 3, 4), (3, 2, 2), (2,), stride=3),  # stride larger than the kernel: gaps of bias only
        C((4, 6, 20), (6, 4, 5), (8,), stride=2, padding=2, groups=2, id="large"),
    ],
    covers=("conv_transpose",),
    **CONV_TOL,
)
op(
    "conv_transpose2d",
    _conv_build(kn.conv_transpose2d),
    np_conv_transpose,
    [
        C((1, 2, 3, 4), (2, 3, 2, 2), (3,)),
        C((1, 2, 3, 3), (2, 2, 3, 3), (2,), stride=2, padding=1, output_padding=1),
        C((1, 4, 2, 3), (4, 1, 2, 2), (2,), groups=2, stride=(2, 1)),
        C((1, 1, 3, 4), (1, 2, 2, 2), (2,), stride=2, dilation=2, output_padding=1),
        C((2, 1, 3, 2), (1, 2, 2, 2), stride=3),  # stride larger than the kernel
        C((2, 2, 3, 3), (2, 1, 3, 2), (1,), stride=2, padding=(1, 0)),
        C((3, 8, 7, 9), (8, 3, 4, 4), (6,), stride=2, padding=1, groups=2, id="large"),
    ],
    covers=("conv_transpose",),
    **CONV_TOL,
)
op(
    "conv_transpose3d",
    _conv_build(kn.conv_transpose3d),
    np_conv_transpose,
    [
        C((1, 2, 2, 2, 3), (2, 1, 2, 2, 2), (1,), stride=2, padding=(0, 1, 0), output_padding=(1, 0, 1)),
        C((1, 2, 2, 3, 2), (2, 2, 2, 2, 2), (4,), groups=2, dilation=(1, 1, 2)),
        C((2, 4, 3, 4, 3), (4, 3, 3, 2, 3), (3,), stride=(1, 2, 2), padding=1, id="large"),
    ],
    covers=("conv_transpose",),
    **CONV_TOL,
)
# output_padding below the dilation but not below the stride (torch allows either)


# ---------------------------------------------------------------------------------------------
# Pooling
# ---------------------------------------------------------------------------------------------


def _pool_size(size, k, s, p, ceil_mode):
    """torch's pooling output size: the last window must start inside the input or the left padding."""
    num = size + 2 * p - k
    out = (-(-num // s) if ceil_mode else num // s) + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def _pool_params(x, kernel_size, stride, padding):
    nd = x.ndim - 2
    k = _t(kernel_size, nd)
    s = k if stride is None else _t(stride, nd)
    return nd, k, s, _t(padding, nd)


def np_max_pool(x, kernel_size, stride=None, padding=0, ceil_mode=False, return_indices=False):
    """The max of each window (padding never wins), and the flat index of its first maximum in
    the sample's plane (d * H * W + h * W + w), as torch."""
    nd, k, s, p = _pool_params(x, kernel_size, stride, padding)
    spatial = x.shape[2:]
    out = [_pool_size(spatial[i], k[i], s[i], p[i], ceil_mode) for i in range(nd)]
    y = np.zeros(x.shape[:2] + tuple(out), x.dtype)
    idx = np.zeros(y.shape, np.int64)
    for o in _positions(out):
        lo = [max(o[i] * s[i] - p[i], 0) for i in range(nd)]
        hi = [min(o[i] * s[i] - p[i] + k[i], spatial[i]) for i in range(nd)]
        window = x[_at(*[slice(a, b) for a, b in zip(lo, hi)])]
        flat = window.reshape(x.shape[:2] + (-1,))
        arg = np.argmax(flat, axis=-1)  # the first maximum in row-major window order
        y[_at(*o)] = np.take_along_axis(flat, arg[..., None], -1)[..., 0]
        coords = np.unravel_index(arg, [b - a for a, b in zip(lo, hi)])
        idx[_at(*o)] = np.ravel_multi_index([c + a for c, a in zip(coords, lo)], spatial)
    return [y, idx] if return_indices else y


def np_avg_pool(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
    """The mean of each window. torch's divisor: with count_include_pad the window clipped to the
    padded input (windows that ceil_mode lets run past it are cut there), else the input elements."""
    nd, k, s, p = _pool_params(x, kernel_size, stride, padding)
    spatial = x.shape[2:]
    out = [_pool_size(spatial[i], k[i], s[i], p[i], ceil_mode) for i in range(nd)]
    x64 = x.astype(np.float64)
    y = np.zeros(x.shape[:2] + tuple(out))
    for o in _positions(out):
        start = [o[i] * s[i] - p[i] for i in range(nd)]
        end = [min(start[i] + k[i], spatial[i] + p[i]) for i in range(nd)]
        padded = math.prod(e - b for b, e in zip(start, end))
        lo, hi = [max(b, 0) for b in start], [min(e, n) for e, n in zip(end, spatial)]
        inside = math.prod(b - a for a, b in zip(lo, hi))
        total = x64[_at(*[slice(a, b) for a, b in zip(lo, hi)])].sum(axis=tuple(range(2, 2 + nd)))
        y[_at(*o)] = total / (padded if count_include_pad else inside)
    return y.astype(x.dtype)


def _adaptive_windows(size, out):
    return [((o * size) // out, -(-((o + 1) * size) // out)) for o in range(out)]


def _adaptive_size(x, output_size):
    nd = x.ndim - 2
    sizes = [output_size] * nd if output_size is None or isinstance(output_size, int) else list(output_size)
    return [x.shape[2 + i] if sizes[i] is None else sizes[i] for i in range(nd)]


def np_adaptive_avg_pool(x, output_size):
    """Window o along a dim of size n split into m: [floor(o n / m), ceil((o + 1) n / m))."""
    out = _adaptive_size(x, output_size)
    nd = len(out)
    wins = [_adaptive_windows(x.shape[2 + i], out[i]) for i in range(nd)]
    x64 = x.astype(np.float64)
    y = np.zeros(x.shape[:2] + tuple(out))
    for o in _positions(out):
        window = x64[_at(*[slice(*wins[i][o[i]]) for i in range(nd)])]
        y[_at(*o)] = window.mean(axis=tuple(range(2, 2 + nd)))
    return y.astype(x.dtype)


def np_adaptive_max_pool(x, output_size, return_indices=False):
    out = _adaptive_size(x, output_size)
    nd = len(out)
    spatial = x.shape[2:]
    wins = [_adaptive_windows(spatial[i], out[i]) for i in range(nd)]
    y = np.zeros(x.shape[:2] + tuple(out), x.dtype)
    idx = np.zeros(y.shape, np.int64)
    for o in _positions(out):
        lo, hi = [wins[i][o[i]][0] for i in range(nd)], [wins[i][o[i]][1] for i in range(nd)]
        flat = x[_at(*[slice(a, b) for a, b in zip(lo, hi)])].reshape(x.shape[:2] + (-1,))
        arg = np.argmax(flat, axis=-1)
        y[_at(*o)] = np.take_along_axis(flat, arg[..., None], -1)[..., 0]
        coords = np.unravel_index(arg, [b - a for a, b in zip(lo, hi)])
        idx[_at(*o)] = np.ravel_multi_index([c + a for c, a in zip(coords, lo)], spatial)
    return [y, idx] if return_indices else y


def np_max_unpool(v, idx, output_shape):
    """Each value to the flat position its index names in its (sample, channel) plane; zeros elsewhere."""
    n, c = v.shape[:2]
    y = np.zeros((n, c, math.prod(output_shape)), v.dtype)
    for a in range(n):
        for b in range(c):
            y[a, b, idx[a, b].ravel()] = v[a, b].ravel()
    return y.reshape((n, c) + tuple(output_shape))


MAX_POOL = {1: kn.max_pool1d, 2: kn.max_pool2d, 3: kn.max_pool3d}
AVG_POOL = {1: kn.avg_pool1d, 2: kn.avg_pool2d, 3: kn.avg_pool3d}
ADAPTIVE_AVG = {1: kn.adaptive_avg_pool1d, 2: kn.adaptive_avg_pool2d, 3: kn.adaptive_avg_pool3d}


def _by_rank(table):
    return lambda x, **kw: table[x.ndim - 2](x, **kw)


MAX_POOL_CASES = [
    C((2, 2, 7), kernel_size=3, stride=2),
    C((1, 3, 8), kernel_size=2, padding=1),
    C((1, 1, 9), kernel_size=4, stride=3, padding=2, ceil_mode=True),
    C((1, 2, 6, 5), kernel_size=2),  # a batch of 1, H != W, stride = kernel
    C((1, 1, 7, 6), kernel_size=3, stride=2, padding=1),  # padding half the kernel
    C((1, 2, 5, 6), kernel_size=2, stride=2, ceil_mode=True),
    C((1, 1, 5, 5), kernel_size=2, stride=2, padding=1, ceil_mode=True),  # ceil's last window dropped
    C((1, 1, 6, 6), kernel_size=3, stride=2, padding=1, ceil_mode=True),  # ceil's last window kept
    C((1, 2, 7, 5), kernel_size=2, stride=3),  # stride larger than the kernel
    C((2, 1, 5, 6), kernel_size=(3, 2), stride=(1, 2), padding=(1, 0)),
    C((1, 1, 4, 3), kernel_size=(4, 3)),  # one window: the whole plane
    C((1, 1, 3, 4, 5), kernel_size=2),
    C((1, 2, 4, 3, 3), kernel_size=(2, 3, 2), stride=(2, 1, 1), padding=(1, 1, 0)),
    C((1, 1, 5, 4, 3), kernel_size=2, ceil_mode=True),
    C((4, 8, 17, 13), kernel_size=3, stride=2, padding=1, ceil_mode=True, id="large"),
    C((2, 3, 9, 8, 7), kernel_size=3, stride=2, padding=1, id="large3d"),
]
op("max_pool", _by_rank(MAX_POOL), np_max_pool, MAX_POOL_CASES)
op(
    "max_pool_return_indices",
    lambda x, **kw: _by_rank(MAX_POOL)(x, return_indices=True, **kw),
    lambda x, **kw: np_max_pool(x, return_indices=True, **kw),
    MAX_POOL_CASES
    + [
        # ties: the first maximum in the window's row-major order, as torch
        C(F((2, 2, 6, 6), "ties"), kernel_size=3, stride=1),
        C(F((2, 2, 7, 5), "ties"), kernel_size=2, stride=2, padding=1, ceil_mode=True),
        C(F((1, 2, 9), "ties"), kernel_size=3, stride=2, padding=1),
        C(F((1, 2, 3, 4, 5), "ties"), kernel_size=(2, 2, 3), stride=(1, 2, 2)),
    ],
    grad=False,
    covers=("max_pool",),
)

AVG_POOL_CASES = []
for _include in (True, False):
    AVG_POOL_CASES += [
        C((2, 2, 7), kernel_size=3, stride=2, padding=1, count_include_pad=_include),
        C((1, 2, 8), kernel_size=4, stride=3, padding=2, ceil_mode=True, count_include_pad=_include),
        C((1, 2, 6, 5), kernel_size=2, count_include_pad=_include),
        C((1, 1, 7, 6), kernel_size=3, stride=2, padding=1, count_include_pad=_include),
        C((1, 2, 5, 5), kernel_size=2, stride=2, padding=1, ceil_mode=True, count_include_pad=_include),
        # a last window past the padded input: torch's divisor stops at the padded edge
        C((1, 1, 5, 7), kernel_size=3, stride=2, ceil_mode=True, count_include_pad=_include),
        C(
            (1, 1, 6, 7),
            kernel_size=(3, 4),
            stride=(2, 3),
            padding=(1, 2),
            ceil_mode=True,
            count_include_pad=_include,
        ),  # fmt: skip
        C((1, 2, 7, 5), kernel_size=2, stride=3, count_include_pad=_include),  # stride > kernel
        C((1, 1, 3, 4, 5), kernel_size=2, padding=1, count_include_pad=_include),
        C(
            (1, 2, 3, 4, 3),
            kernel_size=(3, 2, 2),
            stride=2,
            padding=(1, 0, 1),
            ceil_mode=True,
            count_include_pad=_include,
        ),  # fmt: skip
        C(
            (4, 8, 17, 13),
            kernel_size=3,
            stride=2,
            padding=1,
            ceil_mode=True,
            count_include_pad=_include,
            id=f"large-count_include_pad={_include}",
        ),  # fmt: skip
    ]
# linear in x: the centered differences carry only rounding, relatively large at the smallest entries
op("avg_pool", _by_rank(AVG_POOL), np_avg_pool, AVG_POOL_CASES, grad_tol=1e-5)
op("avg_pool_defaults", lambda x: kn.avg_pool2d(x, 3, 2, 1), lambda x: np_avg_pool(x, 3, 2, 1),
   [C((1, 2, 5, 6))], covers=("avg_pool",))  # fmt: skip

ADAPTIVE_CASES = [
    C((2, 2, 7), output_size=3),
    C((1, 3, 4), output_size=4),  # the identity
    C((1, 2, 5, 7), output_size=(3, 4)),  # uneven, overlapping windows
    C((1, 1, 5, 4), output_size=1),  # global
    C((1, 2, 5, 6), output_size=(2, 1)),  # whole rows, overlapping windows (summed as one run each)
    C((1, 1, 3, 2), output_size=(5, 4)),  # larger than the input
    C((2, 1, 6, 5), output_size=(2, None)),  # None keeps the input's size
    C((1, 1, 3, 4, 5), output_size=(2, 3, 2)),
    C((4, 8, 17, 13), output_size=(5, 6), id="large"),
]
op("adaptive_avg_pool", _by_rank(ADAPTIVE_AVG), np_adaptive_avg_pool, ADAPTIVE_CASES)
ADAPTIVE_MAX_CASES = [
    C((1, 2, 5, 7), output_size=(3, 4)),
    C((1, 1, 6, 6), output_size=4),
    C((1, 1, 3, 4), output_size=(5, 6)),  # windows overlap: gradients add up
    C((2, 1, 5, 4), output_size=1),
    C((4, 8, 17, 13), output_size=(5, 6), id="large"),
]
op("adaptive_max_pool2d", kn.adaptive_max_pool2d, np_adaptive_max_pool, ADAPTIVE_MAX_CASES,
   covers=("adaptive_max_pool",))  # fmt: skip
op(
    "adaptive_max_pool2d_return_indices",
    lambda x, **kw: kn.adaptive_max_pool2d(x, return_indices=True, **kw),
    lambda x, **kw: np_adaptive_max_pool(x, return_indices=True, **kw),
    ADAPTIVE_MAX_CASES + [C(F((2, 2, 7, 6), "ties"), output_size=(3, 4))],
    grad=False,
    covers=("adaptive_max_pool",),
)
op(
    "global_avg_pool2d",
    kn.global_avg_pool2d,
    lambda x: x.astype(np.float64).mean(axis=(2, 3)).astype(x.dtype),
    [C((1, 3, 4, 5)), C((2, 2, 1, 3)), C((4, 16, 7, 9), id="large")],
    covers=("mean",),
)


def kn_max_unpool(x, v, kernel_size, stride=None, padding=0, output_size=None):
    """Unpools v at the maxima of max_pool2d(x): the gradient reaches v (x's indices are constant)."""
    _, idx = kn.max_pool2d(x, kernel_size, stride, padding, return_indices=True)
    return kn.max_unpool2d(v, idx, kernel_size, stride, padding, output_size)


def np_max_unpool_of(x, v, kernel_size, stride=None, padding=0, output_size=None):
    _, idx = np_max_pool(x, kernel_size, stride, padding, return_indices=True)
    if output_size is None:
        k, s, p = _pool_params(x, kernel_size, stride, padding)[1:]
        output_size = [(v.shape[2 + i] - 1) * s[i] - 2 * p[i] + k[i] for i in range(2)]
    return np_max_unpool(v, idx, list(output_size)[-2:])


op(
    "max_unpool2d",
    kn_max_unpool,
    np_max_unpool_of,
    [
        C((1, 2, 4, 6), (1, 2, 2, 3), kernel_size=2),
        # windows that do not overlap: torch leaves the scatter of duplicate indices unspecified
        C((2, 1, 5, 5), (2, 1, 2, 2), kernel_size=3, stride=3, padding=1, output_size=(5, 5)),
        C((1, 1, 5, 7), (1, 1, 2, 3), kernel_size=2, output_size=(5, 7)),  # odd sizes: give the size
        C((1, 2, 6, 4), (1, 2, 2, 2), kernel_size=(3, 2), stride=(3, 2), output_size=(1, 2, 6, 4)),
        C((4, 8, 16, 12), (4, 8, 8, 6), kernel_size=2, id="large"),
    ],
    covers=("max_pool",),
)
# the round trip: the maxima back in place, zeros elsewhere
op(
    "max_unpool2d_of_max_pool2d",
    lambda x: kn.max_unpool2d(*kn.max_pool2d(x, 2, return_indices=True), 2),
    lambda x: np_max_unpool(*np_max_pool(x, 2, return_indices=True), x.shape[2:]),
    [C((1, 2, 4, 6)), C((3, 4, 8, 10), id="large")],
    covers=("max_pool",),
)


# ---------------------------------------------------------------------------------------------
# Resampling
# ---------------------------------------------------------------------------------------------


def _source(o, n_in, n_out, factor, mode, align_corners):
    """torch's source coordinate of output index o along a dim: with a scale factor given, the
    factor's reciprocal is the step (not n_in / n_out), except for the align_corners grid."""
    if mode == "nearest":
        if factor is None:
            return min((o * n_in) // n_out, n_in - 1)
        return min(math.floor(o / factor), n_in - 1)
    if align_corners:
        return o * (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    step = n_in / n_out if factor is None else 1.0 / factor
    return max((o + 0.5) * step - 0.5, 0.0)


def np_interpolate(x, size=None, scale_factor=None, mode="nearest", align_corners=None):
    nd = x.ndim - 2
    spatial = x.shape[2:]
    if size is not None:
        out, factors = list(_t(size, nd)), [None] * nd
    else:
        factors = list(_t(scale_factor, nd))
        out = [math.floor(spatial[i] * factors[i]) for i in range(nd)]
    y = x.astype(np.float64)
    for i in range(nd):  # separable: one dim at a time
        axis = 2 + i
        lo, hi, frac = [], [], []
        for o in range(out[i]):
            src = _source(o, spatial[i], out[i], factors[i], mode, bool(align_corners))
            i0 = min(int(src), spatial[i] - 1)
            lo.append(i0)
            hi.append(min(i0 + 1, spatial[i] - 1))
            frac.append(src - i0)
        shape = [1] * y.ndim
        shape[axis] = -1
        f = np.array(frac).reshape(shape)
        y = np.take(y, lo, axis=axis) * (1 - f) + np.take(y, hi, axis=axis) * f
    return y.astype(x.dtype)


INTERPOLATE_CASES = [
    # nearest
    C((2, 2, 5), size=8),
    C((1, 2, 3, 4), size=(5, 7)),
    C((2, 1, 4, 5), size=(2, 3)),  # downsampling
    C((1, 2, 3, 4), scale_factor=2),
    C((1, 1, 3, 2), scale_factor=(2, 3)),
    C((1, 1, 5, 4), size=(5, 4)),  # the identity
    C((1, 1, 2, 3, 2), scale_factor=2),
    C((1, 1, 3, 2, 4), size=(2, 5, 3)),
    C((1, 1, 5), scale_factor=1.3),  # a non-integral factor: torch steps by 1 / 1.3
    C((1, 1, 4, 5), scale_factor=1.5),
    C((3, 8, 16, 12), size=(37, 29), id="large"),
]
for _align in (False, True):
    INTERPOLATE_CASES += [
        C((2, 2, 5), size=8, mode="linear", align_corners=_align),
        C((1, 1, 7), size=3, mode="linear", align_corners=_align),
        C((1, 2, 3, 4), size=(5, 7), mode="bilinear", align_corners=_align),
        C((1, 1, 6, 5), size=(4, 3), mode="bilinear", align_corners=_align),  # downsampling
        C((1, 2, 3, 4), scale_factor=2, mode="bilinear", align_corners=_align),
        C((1, 1, 3, 4), size=(1, 3), mode="bilinear", align_corners=_align),  # a size of 1
        C((1, 1, 2, 3, 2), size=(3, 4, 3), mode="trilinear", align_corners=_align),
        C((1, 1, 2, 2, 3), scale_factor=2, mode="trilinear", align_corners=_align),
        C((3, 8, 16, 12), size=(37, 29), mode="bilinear", align_corners=_align, id=f"large-align={_align}"),
    ]
INTERPOLATE_CASES += [
    C((1, 2, 3, 4), size=(6, 5), mode="bilinear"),  # align_corners=None: False
    # non-integral factors: torch steps by 1 / factor when align_corners is False
    C((1, 1, 4), scale_factor=2.5, mode="linear", align_corners=False),
    C((1, 1, 3, 4), scale_factor=(1.5, 1.75), mode="bilinear", align_corners=False),
    C((1, 1, 3, 4), scale_factor=(1.5, 1.75), mode="bilinear", align_corners=True),
]
op("interpolate", kn.interpolate, np_interpolate, INTERPOLATE_CASES, covers=("upsample",))


def np_bed_of_nails(x, scale=2):
    n, c, h, w = x.shape
    y = np.zeros((n, c, h * scale, w * scale), x.dtype)
    for i in range(h):
        for j in range(w):
            y[:, :, i * scale, j * scale] = x[:, :, i, j]
    return y


def np_pixel_shuffle(x, upscale_factor):
    """y[n, c, h r + i, w r + j] = x[n, c r^2 + i r + j, h, w]."""
    r = upscale_factor
    n, c, h, w = x.shape
    y = np.zeros((n, c // (r * r), h * r, w * r), x.dtype)
    for ch in range(c // (r * r)):
        for i in range(r):
            for j in range(r):
                y[:, ch, i::r, j::r] = x[:, ch * r * r + i * r + j]
    return y


def np_pixel_unshuffle(x, downscale_factor):
    """y[n, c r^2 + i r + j, h, w] = x[n, c, h r + i, w r + j]."""
    r = downscale_factor
    n, c, h, w = x.shape
    y = np.zeros((n, c * r * r, h // r, w // r), x.dtype)
    for ch in range(c):
        for i in range(r):
            for j in range(r):
                y[:, ch * r * r + i * r + j] = x[:, ch, i::r, j::r]
    return y


def np_channel_shuffle(x, groups):
    """Channel j of group i (i * C/g + j) goes to j * g + i."""
    c = x.shape[1]
    per = c // groups
    y = np.zeros_like(x)
    for i in range(groups):
        for j in range(per):
            y[:, j * groups + i] = x[:, i * per + j]
    return y


op(
    "bed_of_nails",
    kn.bed_of_nails,
    np_bed_of_nails,
    [C((1, 2, 3, 4)), C((2, 1, 2, 3), scale=3), C((1, 1, 1, 1), scale=1)],
    covers=(),
)
op(
    "pixel_shuffle",
    kn.pixel_shuffle,
    np_pixel_shuffle,
    [C((1, 8, 2, 3), upscale_factor=2), C((2, 9, 2, 2), upscale_factor=3), C((1, 3, 2, 2), upscale_factor=1)],
    covers=(),
)
op(
    "pixel_unshuffle",
    kn.pixel_unshuffle,
    np_pixel_unshuffle,
    [C((1, 2, 4, 6), downscale_factor=2), C((1, 1, 6, 3), downscale_factor=3)],
    covers=(),
)
op(
    "pixel_unshuffle_of_pixel_shuffle",
    lambda x: kn.pixel_unshuffle(kn.pixel_shuffle(x, 2), 2),
    lambda x: x.copy(),
    [C((1, 8, 3, 2))],
    covers=(),
)
op(
    "channel_shuffle",
    kn.channel_shuffle,
    np_channel_shuffle,
    [C((2, 6, 2, 3), groups=3), C((1, 4, 5), groups=2), C((1, 6, 1, 2, 2), groups=2), C((1, 3, 2), groups=1)],
    covers=(),
)


# ---------------------------------------------------------------------------------------------
# Spatial batch norm (BatchNorm2d / BatchNorm3d) in a training function
# ---------------------------------------------------------------------------------------------


def np_spatial_batch_norm(x, weight, bias, eps=1e-5):
    """Per channel over (N, spatial...), with the biased batch variance."""
    x64 = x.astype(np.float64)
    axes = (0,) + tuple(range(2, x.ndim))
    mean = x64.mean(axis=axes, keepdims=True)
    var = ((x64 - mean) ** 2).mean(axis=axes, keepdims=True)
    per_channel = (-1,) + (1,) * (x.ndim - 2)
    y = (x64 - mean) / np.sqrt(var + eps) * weight.reshape(per_channel) + bias.reshape(per_channel)
    return y.astype(x.dtype)


def kn_spatial_batch_norm(x, weight, bias, eps=1e-5):
    c = x.shape[1]
    rm, rv = kn.constant(np.zeros(c), dtype=x.dtype), kn.constant(np.ones(c), dtype=x.dtype)
    return kn.batch_norm(x, rm, rv, weight, bias, eps=eps)


op(
    "batch_norm_spatial",
    kn_spatial_batch_norm,
    np_spatial_batch_norm,
    [
        C((2, 3, 3, 4), (3,), (3,)),
        C((1, 2, 3, 5), (2,), (2,)),  # a batch of 1: the statistics over H x W
        C((2, 2, 2, 2, 3), (2,), (2,)),
        C((1, 2, 2, 3, 2), (2,), (2,), eps=0.1),
        C((8, 16, 9, 7), (16,), (16,), id="large"),
    ],
    covers=("batch_norm",),
    atol32=1e-5,
)
