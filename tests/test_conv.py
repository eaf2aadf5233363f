"""Convolutional networks beyond the op table (tests/op_table_conv.py checks the ops' values and
gradients): build-time errors naming the user's line, second derivatives through the gradient
kernels, the convolution across the engine's workspace chunks, the kn.nn modules against the
functional forms and PyTorch's defaults, a ConvNet that overfits, and kn.summary on a real layer.
"""

from __future__ import annotations

import inspect
import itertools
import math

import numpy as np
import pytest
from op_table_conv import (
    _t,
    np_adaptive_avg_pool,
    np_avg_pool,
    np_channel_shuffle,
    np_conv,
    np_conv_transpose,
    np_interpolate,
    np_max_pool,
    np_pixel_shuffle,
    np_spatial_batch_norm,
)

import kiln as kn

nn = kn.nn


def here(offset: int = 0) -> str:
    frame = inspect.currentframe().f_back
    return f"test_conv.py:{frame.f_lineno + offset}"


# ---------------------------------------------------------------------------------------------
# Build-time errors: the op, the shapes and the user's line
# ---------------------------------------------------------------------------------------------


def test_kernel_larger_than_the_padded_input():
    x = kn.input("x", (None, 3, 4, 5))
    w = kn.input("w", (8, 3, 5, 5))
    with pytest.raises(kn.Error) as e:
        line = here(1)
        kn.conv2d(x, w)
    msg = str(e.value)
    assert "conv" in msg and "(8, 3, 5, 5)" in msg and "(None, 3, 4, 5)" in msg and line in msg, msg
    assert kn.conv2d(x, w, padding=1).shape == (None, 8, 2, 3)  # padded, it fits
    with pytest.raises(kn.Error, match="dilated extent 7") as e:
        line = here(1)
        kn.conv2d(x, kn.input("w3", (8, 3, 3, 3)), padding=1, dilation=3)
    assert line in str(e.value)
    with pytest.raises(kn.Error) as e:
        line = here(1)
        kn.conv1d(kn.input("x1", (2, 1, 3)), kn.input("w1", (1, 1, 4)))
    assert "conv" in str(e.value) and line in str(e.value)


def test_pool_kernel_larger_than_the_padded_input():
    x = kn.input("x", (None, 2, 3, 6))
    for pool in (kn.max_pool2d, kn.avg_pool2d):
        with pytest.raises(kn.Error) as e:
            line = here(1)
            pool(x, 4)
        msg = str(e.value)
        assert "pool" in msg and "(None, 2, 3, 6)" in msg and line in msg, msg
    assert kn.max_pool2d(x, 4, padding=1).shape == (None, 2, 1, 2)


def test_channels_not_divisible_by_groups():
    x = kn.input("x", (None, 6, 5, 5))
    with pytest.raises(kn.Error) as e:
        line = here(1)
        kn.conv2d(x, kn.input("w", (8, 1, 3, 3)), groups=4)  # 6 input channels in 4 groups
    msg = str(e.value)
    assert "conv" in msg and "groups=4" in msg and line in msg, msg
    with pytest.raises(kn.Error) as e:
        line = here(1)
        kn.conv2d(x, kn.input("w2", (5, 3, 3, 3)), groups=2)  # 5 output channels in 2 groups
    assert "groups=2" in str(e.value) and line in str(e.value)
    with pytest.raises(kn.Error) as e:
        line = here(1)
        kn.conv_transpose2d(kn.input("xt", (None, 3, 4, 4)), kn.input("wt", (3, 2, 3, 3)), groups=2)
    assert "groups" in str(e.value) and line in str(e.value)
    with pytest.raises(kn.Error, match="groups=4"):
        nn.Conv2d(6, 8, 3, groups=4)


def test_weight_channel_mismatch():
    x = kn.input("x", (None, 3, 8, 8))
    with pytest.raises(kn.Error) as e:
        line = here(1)
        kn.conv2d(x, kn.input("w", (4, 2, 3, 3)))
    msg = str(e.value)
    assert "conv" in msg and "(4, 2, 3, 3)" in msg and "(None, 3, 8, 8)" in msg and line in msg, msg
    layer = nn.Conv2d(4, 5, 3)
    with pytest.raises(kn.Error) as e:
        line = here(1)
        layer(x)  # the module's forward: the error names the line that calls it
    assert "(5, 4, 3, 3)" in str(e.value) and line in str(e.value)
    with pytest.raises(kn.Error) as e:
        line = here(1)
        kn.conv_transpose2d(x, kn.input("wt", (2, 3, 3, 3)))
    assert "conv_transpose" in str(e.value) and line in str(e.value)


def test_padding_same_needs_stride_one():
    x, w = kn.input("x", (None, 3, 8, 8)), kn.input("w", (4, 3, 3, 3))
    with pytest.raises(kn.Error) as e:
        line = here(1)
        kn.conv2d(x, w, stride=2, padding="same")
    msg = str(e.value)
    assert "same" in msg and "stride" in msg and line in msg, msg
    with pytest.raises(kn.Error, match="padding"):
        kn.conv2d(x, w, padding="full")


def test_wrong_input_rank():
    w = kn.input("w", (4, 3, 3, 3))
    with pytest.raises(kn.Error) as e:
        line = here(1)
        kn.conv2d(kn.input("x", (3, 8, 8)), w)
    msg = str(e.value)
    assert "conv2d" in msg and "(3, 8, 8)" in msg and line in msg, msg
    with pytest.raises(kn.Error) as e:
        line = here(1)
        kn.max_pool2d(kn.input("x3", (None, 3, 8)), 2)
    assert "max_pool2d" in str(e.value) and line in str(e.value)
    with pytest.raises(kn.Error) as e:
        line = here(1)
        kn.conv2d(kn.input("x4", (None, 3, 8, 8)), kn.input("w4", (4, 3, 3)))  # a 3-d weight
    assert "weight" in str(e.value) and line in str(e.value)


def test_other_impossible_arguments():
    x = kn.input("x", (None, 4, 6, 6))
    with pytest.raises(kn.Error, match="output_padding"):
        kn.conv_transpose2d(x, kn.input("w", (4, 2, 3, 3)), stride=2, output_padding=2)
    with pytest.raises(kn.Error, match="half the kernel"):
        kn.max_pool2d(x, 2, padding=2)  # torch: padding at most half the kernel
    with pytest.raises(kn.Error, match="pixel_shuffle"):
        kn.pixel_shuffle(kn.input("p", (None, 6, 2, 2)), 2)
    with pytest.raises(kn.Error, match="channel_shuffle"):
        kn.channel_shuffle(x, 3)
    with pytest.raises(kn.Error, match="bilinear"):
        kn.interpolate(kn.input("x1", (None, 2, 5)), size=7, mode="bilinear")
    with pytest.raises(kn.Error, match="size and scale_factor"):
        kn.interpolate(x, size=(3, 3), scale_factor=2)
    with pytest.raises(kn.Error, match="bias"):
        kn.conv2d(x, kn.input("w2", (3, 4, 3, 3)), kn.input("b2", (4,)))


# ---------------------------------------------------------------------------------------------
# Second derivatives: the VJPs of the gradient kernels (internal ops, not in the table)
# ---------------------------------------------------------------------------------------------


def _c(a):
    return kn.constant(a, dtype="float64")


def _check(loss, arrays, tol=1e-5):
    """The losses below are quartic in the inputs, their smallest gradient entries small: the
    centered differences' rounding shows above 1e-6 (the analytic gradients match torch's double
    backward to 1e-15 in a cross-check)."""
    err = kn.gradcheck(loss, arrays)
    assert err < tol, f"max relative gradient error {err:.3g}"


def test_conv_second_derivatives():
    """d/dx, d/dw of |dL/dx|^2 + |dL/dw|^2 + dL/db . r with L = sum(c conv(x, w, b)^2): through
    conv_input_grad's and conv_weight_grad's VJPs, in both of their arguments."""
    rng = np.random.default_rng(0)
    x, w, b = rng.standard_normal((2, 2, 4, 5)), rng.standard_normal((4, 1, 2, 3)), rng.standard_normal(4)
    c, r = rng.standard_normal((2, 4, 4, 2)), rng.standard_normal(4)

    def loss(x, w, b):
        y = kn.conv2d(x, w, b, stride=(1, 2), padding=(1, 0), dilation=(2, 1), groups=2)
        gx, gw, gb = kn.grad(kn.sum(kn.square(y) * _c(c)), [x, w, b])
        return kn.sum(kn.square(gx)) + kn.sum(kn.square(gw)) + kn.sum(gb * _c(r))

    _check(loss, [x, w, b])


def test_conv_transpose_second_derivatives():
    rng = np.random.default_rng(1)
    x, w, b = rng.standard_normal((1, 2, 3, 2)), rng.standard_normal((2, 2, 3, 2)), rng.standard_normal(2)
    c = rng.standard_normal((1, 2, 6, 3))

    def loss(x, w, b):
        y = kn.conv_transpose2d(x, w, b, stride=2, padding=1, output_padding=1)
        gx, gw = kn.grad(kn.sum(kn.square(y) * _c(c)), [x, w])
        return kn.sum(kn.square(gx)) + kn.sum(kn.square(gw))

    _check(loss, [x, w, b])


def test_conv1d_and_conv3d_second_derivatives():
    rng = np.random.default_rng(2)
    x1, w1 = rng.standard_normal((2, 2, 6)), rng.standard_normal((3, 2, 3))
    c1 = rng.standard_normal((2, 3, 3))

    def loss1(x, w):
        gx, gw = kn.grad(kn.sum(kn.square(kn.conv1d(x, w, stride=2, padding=1)) * _c(c1)), [x, w])
        return kn.sum(kn.square(gx)) + kn.sum(kn.square(gw))

    _check(loss1, [x1, w1])
    x3, w3 = rng.standard_normal((1, 1, 3, 3, 2)), rng.standard_normal((2, 1, 2, 2, 2))
    c3 = rng.standard_normal((1, 2, 2, 2, 3))

    def loss3(x, w):
        gx, gw = kn.grad(kn.sum(kn.square(kn.conv3d(x, w, padding=(0, 0, 1))) * _c(c3)), [x, w])
        return kn.sum(kn.square(gx)) + kn.sum(kn.square(gw))

    _check(loss3, [x3, w3])


def _pool_second(pool, x_shape, y_shape, seed):
    """|dL/dx|^2 with L = sum(g pool(x)^2): the gradient kernel's VJP, in g and through pool(x)."""
    rng = np.random.default_rng(seed)
    x, g = rng.standard_normal(x_shape), rng.standard_normal(y_shape)

    def loss(x, g):
        (gx,) = kn.grad(kn.sum(kn.square(pool(x)) * g), [x])
        return kn.sum(kn.square(gx))

    _check(loss, [x, g])


def test_max_pool_grad_second_derivative():
    _pool_second(lambda x: kn.max_pool2d(x, 3, 2, 1), (1, 2, 5, 4), (1, 2, 3, 2), 3)
    _pool_second(lambda x: kn.max_pool1d(x, 3, 1), (2, 1, 5), (2, 1, 3), 4)  # overlapping windows


def test_avg_pool_grad_second_derivative():
    _pool_second(lambda x: kn.avg_pool2d(x, 3, 2, 1, count_include_pad=False), (1, 2, 5, 4), (1, 2, 3, 2), 5)
    _pool_second(lambda x: kn.avg_pool3d(x, 2, ceil_mode=True), (1, 1, 3, 2, 3), (1, 1, 2, 1, 2), 6)


def test_adaptive_avg_pool_grad_second_derivative():
    _pool_second(lambda x: kn.adaptive_avg_pool2d(x, (2, 3)), (1, 2, 5, 4), (1, 2, 2, 3), 7)


def test_adaptive_max_pool_grad_second_derivative():
    _pool_second(lambda x: kn.adaptive_max_pool2d(x, (3, 2)), (1, 2, 5, 4), (1, 2, 3, 2), 8)


def test_upsample_grad_second_derivative():
    _pool_second(lambda x: kn.interpolate(x, size=(5, 4), mode="bilinear"), (1, 2, 3, 2), (1, 2, 5, 4), 9)
    _pool_second(
        lambda x: kn.interpolate(x, size=(5, 3), mode="bilinear", align_corners=True),
        (1, 1, 2, 2),
        (1, 1, 5, 3),
        10,
    )
    _pool_second(lambda x: kn.interpolate(x, scale_factor=2), (1, 2, 2, 3), (1, 2, 4, 6), 11)


# ---------------------------------------------------------------------------------------------
# The engine's two convolution algorithms and their tiling: im2col + GEMM over tiles of output rows
# (tiles that split a sample, and tiles that span samples), and, for stride 1 with >= 16 channels a
# group on images large enough, one GEMM per kernel tap over a padded grid (several tiles of samples
# spread over the threads). Forward, both gradients and the transposed convolution against numpy.
# ---------------------------------------------------------------------------------------------


def np_conv_weight_grad(x, g, w_shape, stride=1, padding=0, dilation=1, groups=1):
    """dw[k, c, t] = sum over n and output positions o of g[n, k, o] * x_padded[n, c, o s + t d]."""
    nd = x.ndim - 2
    s, d, p = _t(stride, nd), _t(dilation, nd), _t(padding, nd)
    xp = np.pad(x, [(0, 0), (0, 0)] + [(v, v) for v in p])
    dw = np.zeros(w_shape)
    kg, cg = w_shape[0] // groups, w_shape[1]
    for t in itertools.product(*[range(k) for k in w_shape[2:]]):
        window = tuple(
            slice(t[i] * d[i], t[i] * d[i] + s[i] * (g.shape[2 + i] - 1) + 1, s[i]) for i in range(nd)
        )
        for grp in range(groups):
            xs = xp[(slice(None), slice(grp * cg, (grp + 1) * cg)) + window]
            gs = g[:, grp * kg : (grp + 1) * kg]
            axes = [0] + list(range(2, 2 + nd))
            dw[(slice(grp * kg, (grp + 1) * kg), slice(None)) + t] = np.tensordot(gs, xs, axes=(axes, axes))
    return dw


ALGORITHM_CASES = {
    # 50,000 one-channel samples: im2col tiles span many samples
    "im2col, tiles across samples": ((50_000, 1, 4, 4), (2, 1, 3, 3), dict(padding=1)),
    # 200 columns x 40 outputs a row: a tile holds 32 of a sample's 40 rows
    "im2col, tiles within a sample": ((3, 8, 40, 40), (6, 8, 5, 5), dict(padding=2)),
    "im2col, stride 2": ((4, 16, 31, 29), (8, 16, 3, 3), dict(stride=2, padding=1)),
    "shifted, three tiles": ((30, 32, 20, 18), (16, 32, 3, 3), dict(padding=1)),
    "shifted, groups and dilation": (
        (3, 32, 40, 40),
        (16, 16, 3, 4),
        dict(padding=(1, 3), dilation=(1, 2), groups=2),
    ),
    "shifted, 1-d": ((5, 16, 200), (8, 16, 5), dict(padding=2)),
    "shifted, 3-d": ((2, 16, 24, 24, 24), (8, 16, 3, 3, 3), dict(padding=1)),
}


@pytest.mark.parametrize("case", list(ALGORITHM_CASES))
def test_conv_algorithms_and_tiling_match_numpy(case):
    x_shape, w_shape, kw = ALGORITHM_CASES[case]
    rng = np.random.default_rng(0)
    xv, wv, bv = rng.standard_normal(x_shape), rng.standard_normal(w_shape), rng.standard_normal(w_shape[0])
    conv, conv_t = {3: (kn.conv1d, kn.conv_transpose1d), 4: (kn.conv2d, kn.conv_transpose2d),
                    5: (kn.conv3d, kn.conv_transpose3d)}[len(x_shape)]  # fmt: skip
    x, w, b = (
        kn.input("x", x_shape, "float64"),
        kn.input("w", w_shape, "float64"),
        kn.input("b", bv.shape, "float64"),
    )
    y = conv(x, w, b, **kw)
    gv = rng.standard_normal(y.shape)
    g = kn.input("g", gv.shape, "float64")
    dx, dw, db = kn.grad(y, [x, w, b], grad_output=g)
    t_kw = {k: v for k, v in kw.items() if k != "padding"}
    yt = conv_t(g, w, padding=kw.get("padding", 0), **t_kw)  # the adjoint as a layer
    out = kn.function([x, w, b, g], [y, dx, dw, db, yt])(xv, wv, bv, gv)
    np.testing.assert_allclose(out[0], np_conv(xv, wv, bv, **kw), rtol=1e-10, atol=1e-10)
    ref_dx = np_conv_transpose(gv, wv, **kw)
    if ref_dx.shape != x_shape:  # stride 2: the rows no output reads get no gradient
        ref_dx = np.pad(
            ref_dx, [(0, 0), (0, 0)] + [(0, a - r) for a, r in zip(x_shape[2:], ref_dx.shape[2:])]
        )
    np.testing.assert_allclose(out[1], ref_dx, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(out[2], np_conv_weight_grad(xv, gv, w_shape, **kw), rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(out[3], gv.sum(axis=tuple(i for i in range(gv.ndim) if i != 1)), rtol=1e-10)
    if ref_dx.shape == out[4].shape:
        np.testing.assert_allclose(out[4], ref_dx, rtol=1e-10, atol=1e-10)


# float32, stride 1, rows of >= 12 pixels: the direct kernel (8 filters x 3 vectors of 16 pixels a
# block) for the forward and, on flipped weights, the input gradient. Cases cover partial vectors
# (rows of 13 and 20), partial filter blocks (K = 5, 13), groups, depthwise, dilation, even kernels
# with uneven "same" padding, 1-D, a batch of one (blocks spread over threads) and several samples.
DIRECT_CASES = {
    "3x3, rows of 20": ((3, 16, 14, 20), (13, 16, 3, 3), dict(padding=1)),
    "7x7 first layer": ((2, 3, 32, 32), (32, 3, 7, 7), dict(padding=3)),
    "batch of one, 5 filters": ((1, 4, 13, 13), (5, 4, 3, 3), dict(padding="same")),
    "even kernel, dilation 2, same": ((2, 6, 15, 17), (8, 6, 4, 4), dict(padding="same", dilation=2)),
    "groups": ((2, 8, 12, 16), (12, 4, 3, 3), dict(padding=1, groups=2)),
    "depthwise": ((2, 8, 12, 16), (8, 1, 5, 5), dict(padding=2, groups=8)),
    "no padding": ((3, 5, 18, 24), (9, 5, 3, 5), dict()),
    "1-d": ((4, 6, 40), (10, 6, 5), dict(padding=2)),
    "rows of 8: two rows a vector": ((3, 16, 8, 8), (16, 16, 3, 3), dict(padding=1)),
    "rows of 8, odd height, 1x1": ((2, 6, 7, 8), (9, 6, 1, 1), dict()),
    "rows of 4: four rows a vector": ((5, 8, 4, 4), (8, 8, 3, 3), dict(padding=1)),
    "1-d of 8": ((3, 4, 8), (6, 4, 3), dict(padding=1)),
    "rows of 7: two rows in 16 lanes": ((2, 16, 7, 7), (16, 16, 3, 3), dict(padding=1)),
    "one 7x7 image: blocks of 2 vectors": ((1, 24, 7, 7), (20, 24, 3, 3), dict(padding=1)),
    "rows of 6 and 5": ((2, 8, 6, 7), (8, 8, 3, 3), dict(padding=(1, 0))),
    "rows of 3: four rows a vector": ((3, 4, 5, 4), (6, 4, 3, 2), dict(padding=(1, 0))),
    # one sample of enough rows: each thread takes a band of rows and pads what it reads
    "one sample in bands, groups, dilation 2": (
        (1, 8, 20, 24),
        (12, 4, 3, 3),
        dict(padding=2, dilation=2, groups=2),
    ),
    "one sample in bands, rows of 8": ((1, 16, 24, 8), (16, 16, 3, 3), dict(padding=1)),
    "one sample in bands, rows of 4": ((1, 8, 40, 4), (8, 8, 3, 3), dict(padding=(0, 1))),
    "1-d, one sample in bands": ((1, 6, 300), (10, 6, 5), dict(padding=2)),
}


@pytest.mark.parametrize("case", list(DIRECT_CASES))
def test_direct_float32_conv_matches_numpy(case):
    x_shape, w_shape, kw = DIRECT_CASES[case]
    rng = np.random.default_rng(1)
    xv, wv, bv = (rng.standard_normal(s).astype(np.float32) for s in (x_shape, w_shape, (w_shape[0],)))
    conv, conv_t = (kn.conv1d, kn.conv_transpose1d) if len(x_shape) == 3 else (kn.conv2d, kn.conv_transpose2d)
    x, w, b = kn.input("x", x_shape), kn.input("w", w_shape), kn.input("b", bv.shape)
    y = conv(x, w, b, **kw)
    gv = rng.standard_normal(y.shape).astype(np.float32)
    g = kn.input("g", gv.shape)
    dx, dw, db = kn.grad(y, [x, w, b], grad_output=g)
    out = kn.function([x, w, b, g], [y, dx, dw, db])(xv, wv, bv, gv)
    x64, w64, g64 = xv.astype(np.float64), wv.astype(np.float64), gv.astype(np.float64)
    ref_y = np_conv(x64, w64, bv.astype(np.float64), **kw)
    np.testing.assert_allclose(out[0], ref_y, rtol=1e-4, atol=1e-4)
    pad = kw.get("padding", 0)
    if pad == "same":  # the adjoint of torch's uneven "same" padding: pad both sides, crop the end
        d = kw.get("dilation", 1)
        total = [d * (k - 1) for k in w_shape[2:]]
        full = np_conv_transpose(g64, w64, padding=0, dilation=d, groups=kw.get("groups", 1))
        ref_dx = full[
            (slice(None), slice(None)) + tuple(slice(t // 2, t // 2 + n) for t, n in zip(total, x_shape[2:]))
        ]
    else:
        ref_dx = np_conv_transpose(g64, w64, **kw)
    np.testing.assert_allclose(out[1], ref_dx, rtol=1e-4, atol=1e-4)
    if pad == "same":  # the reference pads explicitly
        xpad = np.pad(x64, [(0, 0), (0, 0)] + [(t // 2, t - t // 2) for t in total])
        ref_dw = np_conv_weight_grad(xpad, g64, w_shape, dilation=d, groups=kw.get("groups", 1))
    else:
        ref_dw = np_conv_weight_grad(x64, g64, w_shape, **kw)
    np.testing.assert_allclose(out[2], ref_dw, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(
        out[3], g64.sum(axis=tuple(i for i in range(gv.ndim) if i != 1)), rtol=1e-4, atol=1e-4
    )


@pytest.mark.parametrize("padding", [0, 1])
def test_direct_float32_transposed_conv_matches_numpy(padding):
    """conv_transpose2d with stride 1 runs the direct kernel as its forward."""
    rng = np.random.default_rng(2)
    xv, wv = (
        rng.standard_normal((2, 16, 14, 18)).astype(np.float32),
        rng.standard_normal((16, 8, 3, 3)).astype(np.float32),
    )
    x = kn.input("x", xv.shape)
    y = kn.conv_transpose2d(x, kn.constant(wv), padding=padding)
    ref = np_conv_transpose(xv.astype(np.float64), wv.astype(np.float64), padding=padding)
    np.testing.assert_allclose(kn.function([x], y)(xv), ref, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# kn.nn modules: the functional forms' shapes and values, PyTorch's init and state_dict keys
# ---------------------------------------------------------------------------------------------


def _run(module, xv, training=True):
    x = kn.input("x", (None,) + xv.shape[1:], str(xv.dtype))
    y = module(x)
    return y, kn.function([x], y, training=training)(xv)


CONV_MODULES = [
    # (module, input shape, the functional form's keyword arguments)
    (
        lambda: nn.Conv1d(4, 6, 3, stride=2, padding=1, groups=2),
        (2, 4, 9),
        dict(stride=2, padding=1, groups=2),
    ),
    (
        lambda: nn.Conv2d(3, 5, (3, 2), stride=(2, 1), padding=(1, 0)),
        (2, 3, 7, 6),
        dict(stride=(2, 1), padding=(1, 0)),
    ),
    (lambda: nn.Conv2d(3, 4, 3, padding="same", dilation=2), (1, 3, 6, 5), dict(padding="same", dilation=2)),
    (lambda: nn.Conv2d(4, 8, 3, groups=4, bias=False), (2, 4, 5, 5), dict(groups=4)),  # depthwise
    (lambda: nn.Conv3d(2, 3, 3, padding=1), (1, 2, 3, 4, 5), dict(padding=1)),
]


@pytest.mark.parametrize(
    "make, shape, kw", CONV_MODULES, ids=["conv1d", "conv2d", "same", "depthwise", "conv3d"]
)
def test_conv_modules_match_the_functional_forms(make, shape, kw):
    kn.manual_seed(0)
    m = make()
    dims = len(shape) - 2
    xv = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    y, out = _run(m, xv)
    wv = m.weight.numpy()
    bv = None if m.bias is None else m.bias.numpy()
    fn = {1: kn.conv1d, 2: kn.conv2d, 3: kn.conv3d}[dims]
    x = kn.input("x2", (None,) + shape[1:])
    functional = kn.function([x], fn(x, m.weight, m.bias, **kw))(xv)
    expected = np_conv(xv, wv, bv, **kw)
    assert y.shape == (None,) + expected.shape[1:]
    np.testing.assert_array_equal(out, functional)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_conv_transpose_module_matches_the_functional_form():
    kn.manual_seed(0)
    m = nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2)
    assert m.weight.shape == (4, 3, 3, 3) and m.bias.shape == (6,)  # (in, out / groups, kh, kw)
    xv = np.random.default_rng(1).standard_normal((2, 4, 3, 5)).astype(np.float32)
    y, out = _run(m, xv)
    assert y.shape == (None, 6, 6, 10) and out.shape == (2, 6, 6, 10)
    kw = dict(stride=2, padding=1, output_padding=1, groups=2)
    x = kn.input("x2", (None, 4, 3, 5))
    np.testing.assert_array_equal(out, kn.function([x], kn.conv_transpose2d(x, m.weight, m.bias, **kw))(xv))
    np.testing.assert_allclose(out, np_conv_transpose(xv, m.weight.numpy(), m.bias.numpy(), **kw), rtol=1e-5,
                               atol=1e-6)  # fmt: skip


OTHER_MODULES = [
    (lambda: nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True), (2, 3, 6, 7),
     lambda x: np_max_pool(x, 3, 2, 1, ceil_mode=True)),
    (lambda: nn.MaxPool2d(2), (1, 2, 5, 4), lambda x: np_max_pool(x, 2)),  # stride defaults to the kernel
    (lambda: nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False), (2, 3, 6, 7),
     lambda x: np_avg_pool(x, 3, 2, 1, count_include_pad=False)),
    (lambda: nn.AvgPool2d(2, ceil_mode=True), (1, 2, 5, 3), lambda x: np_avg_pool(x, 2, ceil_mode=True)),
    (lambda: nn.AdaptiveAvgPool2d((2, 3)), (2, 3, 5, 7), lambda x: np_adaptive_avg_pool(x, (2, 3))),
    (lambda: nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True), (1, 2, 3, 4),
     lambda x: np_interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)),
    (lambda: nn.Upsample(size=(5, 7)), (2, 1, 3, 4), lambda x: np_interpolate(x, size=(5, 7))),
    (lambda: nn.PixelShuffle(2), (2, 8, 3, 2), lambda x: np_pixel_shuffle(x, 2)),
    (lambda: nn.ChannelShuffle(3), (2, 6, 2, 3), lambda x: np_channel_shuffle(x, 3)),
]  # fmt: skip


@pytest.mark.parametrize(
    "make, shape, ref",
    OTHER_MODULES,
    ids=[
        "maxpool",
        "maxpool-default-stride",
        "avgpool",
        "avgpool-ceil",
        "adaptive",
        "upsample-bilinear",
        "upsample-nearest",
        "pixel-shuffle",
        "channel-shuffle",
    ],  # fmt: skip
)
def test_pool_and_resampling_modules_match_numpy(make, shape, ref):
    m = make()
    assert m.parameters() == [] and list(m.state_dict()) == []
    xv = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    y, out = _run(m, xv)
    expected = ref(xv)
    assert y.shape == (None,) + expected.shape[1:] and out.shape == expected.shape
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-7)


def _uniform_ok(a: np.ndarray, bound: float):
    """a looks like U(-bound, bound): within the bound, reaching near it, with the right moments."""
    assert np.abs(a).max() <= bound * (1 + 1e-6)
    assert np.abs(a).max() > bound * 0.99
    assert abs(a.mean()) < 5 * bound / math.sqrt(3 * a.size)
    assert abs(a.std() / (bound / math.sqrt(3)) - 1) < 0.02


@pytest.mark.parametrize(
    "make, weight_shape, fan_in",
    [
        (lambda: nn.Conv2d(64, 128, 5), (128, 64, 5, 5), 64 * 25),
        (lambda: nn.Conv1d(256, 128, 7), (128, 256, 7), 256 * 7),
        (lambda: nn.Conv3d(16, 32, 3), (32, 16, 3, 3, 3), 16 * 27),
        (lambda: nn.Conv2d(256, 256, 3, groups=8), (256, 32, 3, 3), 32 * 9),
        # torch's fan_in of the (in, out / groups, kh, kw) weight: out / groups * kh * kw
        (lambda: nn.ConvTranspose2d(64, 32, 4), (64, 32, 4, 4), 32 * 16),
    ],
    ids=["conv2d", "conv1d", "conv3d", "grouped", "transpose"],
)
def test_conv_default_init_as_torch(make, weight_shape, fan_in):
    kn.manual_seed(0)
    m = make()
    w, b = m.weight.numpy(), m.bias.numpy()
    assert w.shape == weight_shape and w.dtype == np.float32
    bound = 1 / math.sqrt(fan_in)  # kaiming_uniform(a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    _uniform_ok(w, bound)
    assert b.shape == (m.out_channels,)
    assert np.abs(b).max() <= bound and np.abs(b).max() > 0.9 * bound and len(np.unique(b)) == b.size


def test_state_dict_keys_as_torch():
    kn.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, bias=False),
        nn.ConvTranspose2d(16, 4, 2, stride=2),
        nn.Upsample(scale_factor=2),
    )
    # torch's keys, in order, less "1.num_batches_tracked"
    shapes = {
        "0.weight": (8, 3, 3, 3),
        "0.bias": (8,),
        "1.weight": (8,),
        "1.bias": (8,),
        "1.running_mean": (8,),
        "1.running_var": (8,),
        "4.weight": (16, 8, 3, 3),
        "5.weight": (16, 4, 2, 2),
        "5.bias": (4,),
    }
    state = net.state_dict()
    assert list(state) == list(shapes)
    assert {k: v.shape for k, v in state.items()} == shapes
    assert [n for n, _ in net.named_parameters()] == [k for k in shapes if "running" not in k]
    x = kn.input("x", (None, 3, 10, 12))
    assert net(x).shape == (None, 4, 12, 16)


@pytest.mark.parametrize("cls, shape", [(nn.BatchNorm2d, (6, 3, 4, 5)), (nn.BatchNorm3d, (3, 2, 3, 4, 2))])
def test_spatial_batchnorm_modules(cls, shape):
    """Per channel over (N, spatial...): batch statistics in training (the running ones updated with
    the unbiased variance, momentum 0.1), the running statistics in inference."""
    kn.manual_seed(0)
    c = shape[1]
    bn = cls(c, dtype="float64")
    rng = np.random.default_rng(0)
    gamma, beta = rng.uniform(0.5, 2, c), rng.standard_normal(c)
    bn.weight.assign(gamma)
    bn.bias.assign(beta)
    assert list(bn.state_dict()) == ["weight", "bias", "running_mean", "running_var"]
    x = kn.input("x", (None,) + shape[1:], "float64")
    y = bn(x)
    xv = rng.standard_normal(shape) * 2 + 1
    out = kn.function([x], y)(xv)
    np.testing.assert_allclose(out, np_spatial_batch_norm(xv, gamma, beta), rtol=1e-10, atol=1e-12)
    rm0, rv0 = kn.constant(np.zeros(c), dtype="float64"), kn.constant(np.ones(c), dtype="float64")
    functional = kn.batch_norm(x, rm0, rv0, bn.weight, bn.bias)
    np.testing.assert_allclose(kn.function([x], functional)(xv), out, rtol=1e-12, atol=1e-12)
    axes = (0,) + tuple(range(2, len(shape)))
    m = xv.size // c
    rm, rv = 0.1 * xv.mean(axis=axes), 0.9 + 0.1 * xv.var(axis=axes) * m / (m - 1)
    np.testing.assert_allclose(bn.running_mean.numpy(), rm, rtol=1e-12)
    np.testing.assert_allclose(bn.running_var.numpy(), rv, rtol=1e-12)
    per_channel = (1, -1) + (1,) * (len(shape) - 2)
    infer = kn.function([x], y, training=False)(xv[:1])
    expected = (xv[:1] - rm.reshape(per_channel)) / np.sqrt(rv.reshape(per_channel) + 1e-5)
    np.testing.assert_allclose(
        infer, expected * gamma.reshape(per_channel) + beta.reshape(per_channel), rtol=1e-10
    )
    with pytest.raises(kn.Error, match=cls.__name__):
        bn(kn.input("z", (None, c) + shape[3:], "float64"))  # one spatial dim short


# ---------------------------------------------------------------------------------------------
# Training and kn.summary
# ---------------------------------------------------------------------------------------------


def test_convnet_overfits_fifty_images():
    """CS231n's sanity check: conv - relu - pool - affine learns 50 random images' 10 labels."""
    kn.manual_seed(0)
    rng = np.random.default_rng(0)
    xv = rng.standard_normal((50, 3, 16, 16)).astype(np.float32)
    yv = rng.permutation(np.arange(50) % 10)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * 8 * 8, 10)
    )
    x, y = kn.input("x", (None, 3, 16, 16)), kn.input("y", (None,), "int64")
    logits = model(x)
    loss = kn.softmax_cross_entropy(logits, y)
    step = kn.function([x, y], loss, updates=kn.optim.Adam(model.parameters(), lr=1e-3).updates(loss))
    first = float(step(xv, yv))
    assert abs(first - math.log(10)) < 0.5
    for _ in range(100):
        last = float(step(xv, yv))
    pred = kn.function([x], logits, training=False)(xv)
    accuracy = float((pred.argmax(1) == yv).mean())
    assert accuracy == 1.0, f"train accuracy {accuracy}, loss {first:.3f} -> {last:.4f}"
    assert last < 0.05, f"loss {first:.3f} -> {last:.4f}"


def test_summary_of_a_real_alexnet_conv1():
    """CS231n's AlexNet CONV1 with kn.nn's Conv2d: 96 11x11 filters at stride 4 on 227x227x3."""
    kn.manual_seed(0)
    conv = nn.Conv2d(3, 96, 11, stride=4)
    model = nn.Sequential(conv, nn.ReLU(), nn.MaxPool2d(3, stride=2))
    r = kn.summary(model, (3, 227, 227), print_fn=None)
    row, _, pool = r["layers"]
    assert row["name"] == "Conv2d-1" and row["type"] == "Conv2d"
    assert row["output_shape"] == (96, 55, 55)  # (227 - 11) / 4 + 1
    assert row["params"] == 11 * 11 * 3 * 96 + 96 == 34_944
    assert row["flops"] == 55 * 55 * 96 * (11 * 11 * 3) == 105_415_200
    assert row["memory_kb"] == 290_400 * 4 / 1024
    assert pool["output_shape"] == (96, 27, 27)
    # the layer really computes that: the corner outputs against the patches
    xv = np.random.default_rng(0).standard_normal((1, 3, 227, 227)).astype(np.float32)
    x = kn.input("x", (None, 3, 227, 227))
    out = kn.function([x], conv(x))(xv)
    assert out.shape == (1, 96, 55, 55)
    w, b = conv.weight.numpy().astype(np.float64), conv.bias.numpy()
    for i, j in [(0, 0), (54, 54), (3, 41)]:
        patch = xv[0, :, 4 * i : 4 * i + 11, 4 * j : 4 * j + 11].astype(np.float64)
        np.testing.assert_allclose(
            out[0, :, i, j], np.einsum("kchw,chw->k", w, patch) + b, rtol=1e-4, atol=1e-5
        )


def test_conv_transpose_output_padding_must_be_below_the_stride_or_the_dilation():
    x = kn.input("x", (1, 1, 3, 4))
    w = kn.input("w", (1, 2, 2, 2))
    with pytest.raises(
        kn.Error, match="output_padding must be smaller than the stride 1 or the dilation 2, got 2"
    ):
        kn.conv_transpose2d(x, w, dilation=2, output_padding=2)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_conv_transpose_output_padding_below_the_dilation(dtype):
    """As torch: output_padding may reach past the stride when below the dilation; the extra rows
    and columns get only the bias. Values against numpy, gradients by finite differences."""
    rng = np.random.default_rng(5)
    xv, wv, bv = rng.standard_normal((2, 3, 5, 6)), rng.standard_normal((3, 4, 3, 3)), rng.standard_normal(4)
    kw = dict(stride=1, padding=1, dilation=3, output_padding=(2, 1))
    x = kn.input("x", xv.shape, dtype)
    y = kn.conv_transpose2d(x, kn.constant(wv, dtype=dtype), kn.constant(bv, dtype=dtype), **kw)
    ref = np_conv_transpose(xv, wv, bv, **kw)
    assert y.shape == ref.shape == (2, 4, 11, 11)  # (H - 1) s - 2p + d (k - 1) + output_padding + 1, as torch
    tol = 1e-4 if dtype == "float32" else 1e-10
    np.testing.assert_allclose(kn.function([x], y)(xv.astype(dtype)), ref, rtol=tol, atol=tol)
    if dtype == "float64":
        small = [rng.standard_normal((1, 2, 3, 2)), rng.standard_normal((2, 2, 2, 2)), rng.standard_normal(2)]
        err = kn.gradcheck(
            lambda a, w, b: kn.sum(kn.conv_transpose2d(a, w, b, dilation=2, output_padding=1) ** 2), small
        )
        assert err < 1e-6


@pytest.mark.parametrize(
    "window",
    [(2, 2, 0), (2, 2, 1), (3, 2, 0), (3, 2, 1), (3, 1, 1)],
    ids=["2x2", "2x2 pad 1", "3x3 s2", "3x3 s2 pad 1", "3x3 s1 pad 1"],
)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("width", [37, 112])
def test_max_pool_ties_and_nans_on_wide_rows(dtype, window, width):
    """Rows of 18 or more outputs: vectors of 16 through stride-2 pooling's vector path (a last one
    overlapping the one before), the rest (and the padded border windows) through the scalar one.
    Ties keep the first maximum in window order and a NaN wins, as torch (numpy's argmax agrees).
    Where nothing reads the indices the compiler has the kernel skip them: the values stay."""
    rng = np.random.default_rng(3)
    xv = rng.integers(0, 3, (2, 3, 34, width)).astype(dtype)  # many ties
    xv.flat[rng.choice(xv.size, 40, replace=False)] = np.nan
    x = kn.input("x", xv.shape, dtype)
    k, stride, pad = window  # padded windows clip at the borders, where the loop is not unrolled
    y, idx = kn.max_pool2d(x, k, stride, pad, return_indices=True)
    got_y, got_idx = kn.function([x], [y, idx])(xv)
    ref_y, ref_idx = np_max_pool(xv, k, stride, pad, return_indices=True)
    np.testing.assert_array_equal(got_y, ref_y)
    np.testing.assert_array_equal(got_idx, ref_idx)
    values_only = kn.function([x], y, training=False)
    assert "values_only=1" in str(values_only)
    np.testing.assert_array_equal(values_only(xv), ref_y)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_global_and_adaptive_average_pooling_of_wide_windows(dtype):
    """Windows of 8 or more values per row sum over 8 partial sums: the means are numpy's."""
    xv = np.random.default_rng(8).standard_normal((2, 3, 13, 21)).astype(dtype)
    x = kn.input("x", xv.shape, dtype)
    f = kn.function([x], [kn.adaptive_avg_pool2d(x, 1), kn.adaptive_avg_pool2d(x, (1, 2))], training=False)
    whole, halves = f(xv)
    tol = 1e-6 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(whole, xv.mean(axis=(2, 3), keepdims=True), rtol=tol, atol=tol)
    # torch's adaptive windows of 21 columns in 2: [0, 11) and [10, 21)
    want = np.stack([xv[..., :11].mean(axis=(2, 3)), xv[..., 10:].mean(axis=(2, 3))], axis=-1)[:, :, None, :]
    np.testing.assert_allclose(halves, want, rtol=tol, atol=tol)


def test_inference_sees_weights_written_since_its_last_call():
    """An inference function keeps the direct convolution's packed weights between calls; a
    training step (in place), an assign, and a state_dict load each change what the next call reads."""
    rng = np.random.default_rng(7)
    xv = rng.standard_normal((1, 8, 16, 16)).astype(np.float32)
    x = kn.input("x", xv.shape)
    conv = kn.nn.Conv2d(8, 16, 3, padding=1, bias=False)
    y = conv(x)
    predict = kn.function([x], y, training=False)
    loss = kn.sum(y * y)
    step = kn.function([x], loss, updates=kn.optim.SGD(conv.parameters(), lr=1e-3).updates(loss))

    def check():
        want = np_conv(xv.astype(np.float64), conv.weight.numpy().astype(np.float64), padding=1)
        np.testing.assert_allclose(predict(xv), want, rtol=1e-4, atol=1e-4)

    check()
    check()  # the cached packing
    step(xv)
    check()
    conv.weight.assign(rng.standard_normal(conv.weight.shape).astype(np.float32))
    check()
    conv.load_state_dict({k: v * 2 for k, v in conv.state_dict().items()})
    check()
