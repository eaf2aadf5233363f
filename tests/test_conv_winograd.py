"""Winograd F(2x2, 3x3) convolutions (conv_winograd.cpp): float32 3x3 stride-1 layers of 32 channels
or more (16 from 128 tiles on) and at least 16 tiles of 2x2 outputs, against numpy in float64. The
cases cover odd heights and widths (tiles half outside the output), rows of more than 16 tiles (two runs
a row), rows of 8 tiles or fewer sharing a vector (2 or 4 rows of tiles, the last vector's rows
missing), chunks that end in a part-empty vector or take several samples, filters past a multiple of 8,
no padding and wide padding, one sample split over the threads mid-row or by filters (its transformed
weights over 512 KB, or fewer vectors of tiles than threads), batches split mid-sample, the fused
epilogue (a folded batch norm, a residual, the ReLU), the transformed weights renewed after an assign,
and a training function (the weights transformed on each call)."""

from __future__ import annotations

import numpy as np
import pytest
from op_table_conv import np_conv, np_conv_transpose

import kiln as kn

# (x shape, filters, padding)
CASES = {
    "12x12, one chunk of 36 tiles": ((1, 32, 12, 12), 32, 1),
    "odd height and width": ((2, 32, 13, 11), 32, 1),
    "rows of 17 tiles": ((1, 32, 9, 34), 40, 1),
    "33 channels, 40 filters, three samples": ((3, 33, 14, 14), 40, 1),
    "many chunks": ((1, 48, 40, 36), 64, 1),
    "no padding": ((2, 32, 15, 16), 32, 0),
    "padding 2": ((1, 32, 11, 12), 48, 2),
    # one sample with U over 512 KB: on two threads or more, split by filters
    "by filters": ((1, 96, 14, 14), 96, 1),
    "by filters, 100 filters, odd sizes": ((1, 96, 11, 13), 100, 1),
    # rows of 8 tiles or fewer: 2 or 4 rows of tiles a vector; chunks across samples
    "16x16, two rows of tiles a vector": ((2, 32, 16, 16), 32, 1),
    "8x8, four rows a vector, five samples in chunks of three": ((5, 32, 8, 8), 40, 1),
    "7x7, the last column of tiles half outside": ((3, 64, 7, 7), 32, 1),
    "11x7, a vector's last rows of tiles missing": ((3, 32, 11, 7), 48, 1),
    "10x12, rows of 6 tiles in lanes of 8": ((2, 32, 10, 12), 32, 1),
    "16 channels at 32x32 (256 tiles)": ((2, 16, 32, 32), 16, 1),
    # one sample of fewer vectors than threads: split by filters
    "8x8, one sample": ((1, 64, 8, 8), 64, 1),
}


def reference(xv, wv, bv=None, padding=1):
    return np_conv(xv.astype(np.float64), wv.astype(np.float64), None if bv is None else bv.astype(np.float64),
                   padding=padding)  # fmt: skip


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("case", list(CASES))
def test_winograd_conv_matches_numpy(case, threads):
    x_shape, k, padding = CASES[case]
    rng = np.random.default_rng(7)
    xv = rng.standard_normal(x_shape).astype(np.float32)
    wv = (rng.standard_normal((k, x_shape[1], 3, 3)) / np.sqrt(9 * x_shape[1])).astype(np.float32)
    bv = rng.standard_normal(k).astype(np.float32)
    x = kn.input("x", (None,) + x_shape[1:])
    W = kn.Parameter(wv, name="w")
    predict = kn.function([x], kn.relu(kn.conv2d(x, W, kn.constant(bv), padding=padding)), training=False)
    before = kn.num_threads()
    try:
        kn.set_num_threads(threads)
        for _ in range(2):  # the weights transformed, then read from the cache
            np.testing.assert_allclose(
                predict(xv), np.maximum(reference(xv, wv, bv, padding), 0), rtol=1e-4, atol=1e-4
            )
        W.assign(-wv)  # a new stamp: transformed again
        np.testing.assert_allclose(
            predict(xv), np.maximum(reference(xv, -wv, bv, padding), 0), rtol=1e-4, atol=1e-4
        )
        # a training function transforms the weights it is given on each call
        xi, wi = kn.input("xi", x_shape), kn.input("wi", wv.shape)
        y = kn.function([xi, wi], kn.conv2d(xi, wi, padding=padding))(xv, wv)
        np.testing.assert_allclose(y, reference(xv, wv, padding=padding), rtol=1e-4, atol=1e-4)
    finally:
        kn.set_num_threads(before)


def test_winograd_error_stays_within_a_few_times_the_direct_sums():
    """The transforms add and subtract up to 9 products per output: the error against float64 stays
    within 4x that of a float32 direct convolution (torch's, or numpy's einsum in float32)."""
    rng = np.random.default_rng(8)
    xv = rng.standard_normal((1, 64, 28, 28)).astype(np.float32)
    wv = (rng.standard_normal((64, 64, 3, 3)) / 24).astype(np.float32)
    x = kn.input("x", (None, 64, 28, 28))
    got = kn.function([x], kn.conv2d(x, kn.Parameter(wv), padding=1), training=False)(xv)
    want = reference(xv, wv)
    xp = np.pad(xv, [(0, 0), (0, 0), (1, 1), (1, 1)])
    direct32 = sum(
        np.einsum("nchw,kc->nkhw", xp[:, :, a : a + 28, b : b + 28], wv[:, :, a, b])
        for a in range(3)
        for b in range(3)
    )
    err, direct_err = np.abs(got - want).max(), np.abs(direct32 - want).max()
    assert err <= 4 * direct_err + 1e-7, (err, direct_err)


def test_winograd_applies_the_fused_batch_norm_residual_and_relu():
    """A ResNet basic block at 16x16 with 32 channels: both convolutions run Winograd with a folded batch
    norm, the second adding the shortcut and applying the ReLU as it stores."""
    rng = np.random.default_rng(9)
    c, h = 32, 16
    xv = rng.standard_normal((2, c, h, h)).astype(np.float32)
    w1, w2 = ((rng.standard_normal((c, c, 3, 3)) / np.sqrt(9 * c)).astype(np.float32) for _ in range(2))
    gamma, beta = rng.uniform(0.5, 1.5, c).astype(np.float32), rng.standard_normal(c).astype(np.float32)
    mean, var = rng.standard_normal(c).astype(np.float32), rng.uniform(0.5, 2, c).astype(np.float32)
    x = kn.input("x", (None, c, h, h))
    W1, W2 = kn.Parameter(w1), kn.Parameter(w2)
    stats = [kn.constant(v) for v in (mean, var, gamma, beta)]  # made before the convolutions read them

    def bn(t):
        return kn.batch_norm(t, *stats, eps=1e-5)

    a = kn.relu(bn(kn.conv2d(x, W1, padding=1)))
    y = kn.relu(bn(kn.conv2d(a, W2, padding=1)) + x)
    f = kn.function([x], y, training=False)
    assert "batch_norm" not in str(f) and "residual=1" in str(f)

    def np_bn(t):
        s = (1, c, 1, 1)
        return (t - mean.reshape(s)) / np.sqrt(var.reshape(s) + 1e-5) * gamma.reshape(s) + beta.reshape(s)

    av = np.maximum(np_bn(reference(xv, w1)), 0)
    want = np.maximum(np_bn(reference(av, w2)) + xv, 0)
    np.testing.assert_allclose(f(xv), want, rtol=1e-4, atol=1e-4)


def test_winograd_takes_asymmetric_onnx_padding(tmp_path):
    """ONNX pads (begin and end apart): 0 rows above, 2 below, 1 column left, 0 right."""
    onnx = pytest.importorskip("onnx", reason="the ONNX extra is not installed")
    from onnx import TensorProto, helper, numpy_helper

    import kiln.onnx  # noqa: F401

    rng = np.random.default_rng(10)
    xv = rng.standard_normal((1, 32, 14, 15)).astype(np.float32)
    wv = (rng.standard_normal((32, 32, 3, 3)) / 17).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3], pads=[0, 1, 2, 0])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(xv.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(wv, "w")],
    )
    path = tmp_path / "conv.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    got = kn.onnx.load(path).function(training=False)(xv)
    got = got["y"] if isinstance(got, dict) else got
    xp = np.pad(xv.astype(np.float64), [(0, 0), (0, 0), (0, 2), (1, 0)])
    np.testing.assert_allclose(got, np_conv(xp, wv.astype(np.float64)), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(
    "x_shape, k, padding",
    [
        ((2, 32, 12, 12), 40, 1),
        ((1, 33, 13, 11), 48, 0),
        ((3, 32, 10, 14), 32, 2),
        ((5, 64, 8, 8), 64, 1),
        ((1, 16, 32, 32), 16, 1),
    ],
    ids=["pad 1, 40 filters", "pad 0, odd sizes", "pad 2, three samples", "8x8, five samples", "16 channels"],
)
def test_winograd_input_gradient_matches_numpy(x_shape, k, padding, threads):
    """The input gradient of a 3x3 stride-1 convolution is a convolution of the output gradient by the
    filters turned 180 degrees (channels and filters swapped): a training step takes it by Winograd too,
    as does conv_transpose2d at stride 1."""
    rng = np.random.default_rng(12)
    xv = rng.standard_normal(x_shape).astype(np.float32)
    wv = (rng.standard_normal((k, x_shape[1], 3, 3)) / np.sqrt(9 * x_shape[1])).astype(np.float32)
    oh, ow = (x_shape[2] + 2 * padding - 2, x_shape[3] + 2 * padding - 2)
    gv = rng.standard_normal((x_shape[0], k, oh, ow)).astype(np.float32)
    x, w, g = kn.input("x", x_shape), kn.input("w", wv.shape), kn.input("g", gv.shape)
    (dx,) = kn.grad(kn.sum(kn.conv2d(x, w, padding=padding) * g), [x])
    want = np_conv_transpose(gv.astype(np.float64), wv.astype(np.float64), padding=padding)
    before = kn.num_threads()
    try:
        kn.set_num_threads(threads)
        np.testing.assert_allclose(kn.function([x, w, g], dx)(xv, wv, gv), want, rtol=1e-4, atol=1e-4)
        t = kn.conv_transpose2d(g, w, padding=padding)  # the same kernel, as an op of its own
        np.testing.assert_allclose(kn.function([g, w], t)(gv, wv), want, rtol=1e-4, atol=1e-4)
    finally:
        kn.set_num_threads(before)
