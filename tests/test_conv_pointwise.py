"""Strided 1x1 convolutions (conv_pointwise.cpp: the input pixels gathered, then a GEMM with pixels in the
lanes), against numpy in float64: strides 2 and 3 (and 2 x 1), rows whose gathered pixels end part-way
through a vector, filters past a multiple of 8, one sample split over the threads by rows, batches split
by samples, a ResNet shortcut with its batch norm, residual and ReLU fused (alone and inside a
row-tiled group), and the gradients of a training step."""

from __future__ import annotations

import numpy as np
import pytest
from op_table_conv import np_conv

import kiln as kn

# (x shape, filters, stride)
CASES = {
    "ResNet-8's first shortcut": ((3, 16, 32, 32), 32, 2),
    "ResNet-8's second, 8x8 outputs": ((2, 32, 16, 16), 64, 2),
    "odd size, 13 filters": ((2, 5, 15, 17), 13, 2),
    "stride 3": ((1, 8, 20, 22), 24, 3),
    "stride 2 x 1": ((2, 4, 9, 40), 9, (2, 1)),
    "one sample, rows over the threads": ((1, 64, 56, 56), 128, 2),
    "a wide row of 40 outputs": ((1, 3, 6, 80), 8, 2),
}


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("case", list(CASES))
def test_strided_1x1_conv_matches_numpy(case, threads):
    x_shape, k, stride = CASES[case]
    rng = np.random.default_rng(3)
    xv = rng.standard_normal(x_shape).astype(np.float32)
    wv = rng.standard_normal((k, x_shape[1], 1, 1)).astype(np.float32)
    bv = rng.standard_normal(k).astype(np.float32)
    want = np_conv(xv.astype(np.float64), wv.astype(np.float64), bv.astype(np.float64), stride=stride)
    before = kn.num_threads()
    try:
        kn.set_num_threads(threads)
        with kn.Graph():
            x = kn.input("x", (None,) + x_shape[1:])
            W = kn.Parameter(wv, name="w")
            predict = kn.function(
                [x], kn.relu(kn.conv2d(x, W, kn.constant(bv), stride=stride)), training=False
            )
            for _ in range(2):  # the weights packed, then read from the cache
                np.testing.assert_allclose(predict(xv), np.maximum(want, 0), rtol=1e-5, atol=1e-4)
            W.assign(-wv)  # a new stamp: packed again
            want_neg = np_conv(
                xv.astype(np.float64), -wv.astype(np.float64), bv.astype(np.float64), stride=stride
            )
            np.testing.assert_allclose(predict(xv), np.maximum(want_neg, 0), rtol=1e-5, atol=1e-4)
    finally:
        kn.set_num_threads(before)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("n", [1, 4])
def test_resnet_downsampling_block_with_the_shortcut_fused(threads, n):
    """A ResNet basic block that halves the image: 3x3 stride 2 -> BN -> ReLU -> 3x3 -> BN, plus the 1x1
    stride-2 shortcut with its BN, then ReLU. The compiler folds the norms, the add and the ReLU into the
    1x1 convolution, and at two threads runs the chain as a row-tiled group; against the same block in
    training mode's arithmetic (numpy, running statistics)."""
    rng = np.random.default_rng(5)
    c, k = 16, 32
    xv = rng.standard_normal((n, c, 16, 16)).astype(np.float32)
    w1 = (rng.standard_normal((k, c, 3, 3)) / 12).astype(np.float32)
    w2 = (rng.standard_normal((k, k, 3, 3)) / 17).astype(np.float32)
    ws = (rng.standard_normal((k, c, 1, 1)) / 4).astype(np.float32)
    stats = [(rng.uniform(0.5, 2, k), rng.standard_normal(k), rng.standard_normal(k) * 0.1, rng.uniform(0.5, 2, k))
             for _ in range(3)]  # fmt: skip

    def bn_np(y, s):
        g, b, m, v = (a.reshape(1, -1, 1, 1) for a in s)
        return (y - m) / np.sqrt(v + 1e-5) * g + b

    x64 = xv.astype(np.float64)
    h = np.maximum(bn_np(np_conv(x64, w1.astype(np.float64), stride=2, padding=1), stats[0]), 0)
    main = bn_np(np_conv(h, w2.astype(np.float64), padding=1), stats[1])
    short = bn_np(np_conv(x64, ws.astype(np.float64), stride=2), stats[2])
    want = np.maximum(main + short, 0)

    before = kn.num_threads()
    try:
        kn.set_num_threads(threads)
        with kn.Graph():
            x = kn.input("x", (None, c, 16, 16))
            W1, W2, Ws = (kn.Parameter(v) for v in (w1, w2, ws))
            # running mean, running var, gamma, beta: made before the convolutions that read them
            norms = [[kn.constant(a.astype(np.float32)) for a in (s[2], s[3], s[0], s[1])] for s in stats]

            def bn(v, i):
                return kn.batch_norm(v, *norms[i], eps=1e-5)

            h = kn.relu(bn(kn.conv2d(x, W1, stride=2, padding=1), 0))
            y = kn.relu(bn(kn.conv2d(h, W2, padding=1), 1) + bn(kn.conv2d(x, Ws, stride=2), 2))
            f = kn.function([x], y, training=False)
            assert "batch_norm" not in str(f) and "residual=1" in str(f)
            np.testing.assert_allclose(f(xv), want, rtol=1e-4, atol=1e-4)
    finally:
        kn.set_num_threads(before)


def test_a_training_step_through_a_strided_1x1_conv_matches_finite_differences():
    """The forward of a training function runs the same kernel (its weights packed on every call); the
    gradients go through conv_input_grad / conv_weight_grad, checked against central differences in
    float64 arithmetic of the float32 loss."""
    rng = np.random.default_rng(9)
    xv = rng.standard_normal((2, 6, 9, 11)).astype(np.float32)
    wv = rng.standard_normal((10, 6, 1, 1)).astype(np.float32)
    with kn.Graph():
        x, w = kn.input("x", xv.shape), kn.input("w", wv.shape)
        loss = kn.sum(kn.conv2d(x, w, stride=2) ** 2)
        f = kn.function([x, w], [loss, *kn.grad(loss, [w])])
        value, gw = f(xv, wv)
    y = np_conv(xv.astype(np.float64), wv.astype(np.float64), stride=2)
    np.testing.assert_allclose(value, (y**2).sum(), rtol=1e-5)
    # d/dw[k, c] of sum y^2 = sum over n, pixels of 2 y[n, k] x[n, c, 2i, 2j]
    xs = xv.astype(np.float64)[:, :, ::2, ::2]
    np.testing.assert_allclose(gw[:, :, 0, 0], np.einsum("nkij,ncij->kc", 2 * y, xs), rtol=1e-4, atol=1e-3)
