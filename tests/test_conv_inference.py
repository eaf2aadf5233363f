"""Inference convolutions: the filter-lane kernels (conv_lanes.cpp) against numpy, and what the
compiler fuses into a convolution in an inference function (graph/passes.cpp): the ReLU, a batch
norm's running statistics and a ResNet block's residual add, each checked against numpy, against
the unfused program and through a saved file."""

from __future__ import annotations

import numpy as np
import pytest
from op_table_conv import np_conv

import kiln as kn

# float32 forward with the filters in the lanes (conv_lanes.cpp: blocks of 7 pixels x 32 filters):
# every stride above 1, and stride 1 where rows of 7, 14, ... pixels would leave the direct kernel's
# vectors part empty. Cases cover rows that end in a short block (20 = 7 + 7 + 6), a filter block
# past the last filter (K = 40), 1x1 layers read in place (no padding), uneven strides and stride 3
# (the stride not a compile-time constant), dilation, 1-D, one sample (a band of rows per thread,
# each padding what it reads) and more samples than threads (a sample per thread).
LANES_CASES = {
    "7x7 stride 2 stem, 3 channels": ((1, 3, 40, 40), (64, 3, 7, 7), dict(stride=2, padding=3)),
    "3x3 stride 2, K = 40, five samples": ((5, 16, 15, 15), (40, 16, 3, 3), dict(stride=2, padding=1)),
    "1x1 stride 2, read in place": ((3, 24, 14, 14), (32, 24, 1, 1), dict(stride=2)),
    "strides (1, 2)": ((2, 8, 17, 19), (32, 8, 3, 3), dict(stride=(1, 2), padding=(2, 0))),
    "strides (2, 3), dilation 2": ((2, 8, 17, 23), (32, 8, 3, 3), dict(stride=(2, 3), padding=2, dilation=2)),
    "1-d stride 2": ((3, 6, 50), (32, 6, 5), dict(stride=2, padding=2)),
    "stride 1, rows of 14": ((2, 16, 14, 14), (32, 16, 3, 3), dict(padding=1)),
    "stride 1, one 7x7 sample": ((1, 32, 7, 7), (64, 32, 3, 3), dict(padding=1)),
    "one sample, strides (2, 3), dilation 2": (
        (1, 8, 17, 23),
        (32, 8, 3, 3),
        dict(stride=(2, 3), padding=2, dilation=2),
    ),
    "one sample, 1x1 stride 2, read in place": ((1, 24, 14, 14), (40, 24, 1, 1), dict(stride=2)),
    "rows of 56 in blocks of 8 pixels": ((2, 8, 112, 112), (32, 8, 3, 3), dict(stride=2, padding=1)),
}


@pytest.mark.parametrize("case", list(LANES_CASES))
def test_filter_lane_float32_conv_matches_numpy(case):
    x_shape, w_shape, kw = LANES_CASES[case]
    rng = np.random.default_rng(2)
    xv, wv, bv = (rng.standard_normal(s).astype(np.float32) for s in (x_shape, w_shape, (w_shape[0],)))
    conv = kn.conv1d if len(x_shape) == 3 else kn.conv2d
    x, w, b = kn.input("x", x_shape), kn.input("w", w_shape), kn.input("b", bv.shape)
    y = kn.function([x, w, b], conv(x, w, b, **kw))(xv, wv, bv)  # a training function: packed on each call
    ref = np_conv(xv.astype(np.float64), wv.astype(np.float64), bv.astype(np.float64), **kw)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)
    # Inference with weights in a variable (packed once, kept until written) and the ReLU fused.
    W = kn.Parameter(wv, name="w_var")
    predict = kn.function([x], kn.relu(conv(x, W, kn.constant(bv), **kw)), training=False)
    for _ in range(2):
        np.testing.assert_allclose(predict(xv), np.maximum(ref, 0), rtol=1e-4, atol=1e-4)
    W.assign(-wv)
    ref_neg = np_conv(xv.astype(np.float64), -wv.astype(np.float64), bv.astype(np.float64), **kw)
    np.testing.assert_allclose(predict(xv), np.maximum(ref_neg, 0), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "dtype, stride",
    [("float32", 1), ("float32", 2), ("float64", 1)],
    ids=["direct", "filter lanes", "float64"],
)
def test_inference_fuses_relu_into_the_convolution(dtype, stride):
    """conv -> relu compiles to one node in an inference function (the convolution applies the ReLU
    as it stores); its values are numpy's max(0, conv). A training step keeps them apart (relu's
    gradient reads the convolution's output)."""
    rng = np.random.default_rng(4)
    xv, wv, bv = (
        rng.standard_normal((2, 4, 20, 20)),
        rng.standard_normal((6, 4, 3, 3)),
        rng.standard_normal(6),
    )
    xv, wv, bv = xv.astype(dtype), wv.astype(dtype), bv.astype(dtype)
    x = kn.input("x", xv.shape, dtype)
    conv_out = kn.conv2d(
        x, kn.constant(wv, dtype=dtype), kn.constant(bv, dtype=dtype), stride=stride, padding=1
    )
    y = kn.relu(conv_out)
    fused = kn.function([x], y, training=False)
    apart = kn.function([x], [y, conv_out], training=False)  # the conv output is used twice: no fusion
    assert fused.num_nodes == apart.num_nodes - 1
    ref = np.maximum(
        np_conv(
            xv.astype(np.float64), wv.astype(np.float64), bv.astype(np.float64), stride=stride, padding=1
        ),
        0,
    )
    tol = 1e-4 if dtype == "float32" else 1e-10
    np.testing.assert_allclose(fused(xv), ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(apart(xv)[0], ref, rtol=tol, atol=tol)
    loss = kn.sum(y)
    (gw,) = kn.grad(loss, [x])
    step = kn.function([x], [loss, gw])
    np.testing.assert_allclose(step(xv)[0], ref.sum(), rtol=tol)


@pytest.mark.parametrize(
    "dtype, stride, width, bias",
    [
        ("float32", 1, 16, True),
        ("float32", 2, 20, False),
        ("float32", 1, 14, False),
        ("float64", 2, 20, True),
    ],
    ids=["direct kernel", "filter lanes", "filter lanes, stride 1", "float64 im2col"],
)
def test_inference_folds_batch_norm_into_the_convolution(tmp_path, dtype, stride, width, bias):
    """conv -> batch_norm (-> relu) compiles to one convolution in an inference function, which
    scales and shifts each filter's output by the running statistics as it stores it; the values
    are numpy's. The statistics are read on every call (an assign is seen); a training step, which
    normalises by the batch, keeps the batch norm."""
    rng = np.random.default_rng(5)
    k = 32
    xv = rng.standard_normal((2, 4, width, width)).astype(dtype)
    wv = rng.standard_normal((k, 4, 3, 3)).astype(dtype)
    bv = rng.standard_normal(k).astype(dtype) if bias else None
    gamma, beta = rng.standard_normal(k).astype(dtype), rng.standard_normal(k).astype(dtype)
    mean, var = rng.standard_normal(k).astype(dtype), rng.uniform(0.5, 2, k).astype(dtype)
    x = kn.input("x", xv.shape, dtype)
    G, B = kn.Parameter(gamma, name="g", dtype=dtype), kn.Parameter(beta, name="b", dtype=dtype)
    M = kn.Parameter(mean, name="m", dtype=dtype, trainable=False)
    V = kn.Parameter(var, name="v", dtype=dtype, trainable=False)
    conv = kn.conv2d(
        x,
        kn.constant(wv, dtype=dtype),
        None if bv is None else kn.constant(bv, dtype=dtype),
        stride=stride,
        padding=1,
    )
    y = kn.relu(kn.batch_norm(conv, M, V, G, B, eps=1e-3))
    folded = kn.function([x], y, training=False)
    assert "batch_norm" not in str(folded) and "bn_eps" in str(folded) and "relu=1" in str(folded)
    kept = kn.function([x], [y, conv], training=False)  # the conv output read twice: nothing folds
    assert "batch_norm" in str(kept)

    def ref(m: np.ndarray, v: np.ndarray) -> np.ndarray:
        c = np_conv(xv.astype(np.float64), wv.astype(np.float64), None if bv is None else bv.astype(np.float64),
                    stride=stride, padding=1)  # fmt: skip
        shape = (1, k, 1, 1)
        return np.maximum((c - m.reshape(shape)) / np.sqrt(v.reshape(shape) + 1e-3) * gamma.reshape(shape)
                          + beta.reshape(shape), 0)  # fmt: skip

    tol = 1e-4 if dtype == "float32" else 1e-10
    np.testing.assert_allclose(folded(xv), ref(mean, var), rtol=tol, atol=tol)
    np.testing.assert_allclose(kept(xv)[0], ref(mean, var), rtol=tol, atol=tol)
    V.assign(var * 4)
    np.testing.assert_allclose(folded(xv), ref(mean, var * 4), rtol=tol, atol=tol)
    kn.save(tmp_path / "folded.kiln", folded, name="predict")  # the file holds the folded program
    np.testing.assert_allclose(kn.load(tmp_path / "folded.kiln")(xv), ref(mean, var * 4), rtol=tol, atol=tol)
    step = kn.function([x], kn.sum(y))  # training: the batch's statistics
    assert "batch_norm" in str(step)


@pytest.mark.parametrize(
    "dtype, width",
    [("float32", 16), ("float32", 14), ("float32", 24), ("float64", 14)],
    ids=["direct kernel", "filter lanes, blocks of 7", "filter lanes, blocks of 8", "float64 im2col"],
)
def test_inference_adds_the_shortcut_inside_the_convolution(tmp_path, dtype, width):
    """relu(conv(h) + shortcut) of a ResNet block compiles to convolutions that add the shortcut and
    apply the ReLU as they store: an identity shortcut goes into the block's last convolution, a
    projection (a 1x1 convolution made after it) takes that convolution's output as its residual.
    A broadcast add stays an add. The values are numpy's; the file keeps the fused program."""
    rng = np.random.default_rng(9)
    c = 32
    xv = rng.standard_normal((2, c, width, width)).astype(dtype)
    w1, w2, w3 = (rng.standard_normal((c, c, 3, 3)).astype(dtype) * 0.2 for _ in range(3))
    wp = rng.standard_normal((c, c, 1, 1)).astype(dtype) * 0.2
    bv = rng.standard_normal((c, 1, 1)).astype(dtype)
    x = kn.input("x", xv.shape, dtype)
    const = lambda a: kn.constant(a, dtype=dtype)  # noqa: E731
    h = kn.relu(kn.conv2d(x, const(w1), padding=1))
    identity = kn.relu(kn.conv2d(h, const(w2), padding=1) + x)
    projection = kn.relu(kn.conv2d(h, const(w3), padding=1) + kn.conv2d(x, const(wp)))
    broadcast = kn.relu(kn.conv2d(x, const(w1), padding=1) + const(bv))
    f = kn.function([x], [identity, projection, broadcast], training=False)
    program = str(f)
    assert program.count("residual=1") == 2 and " add(" in program  # the broadcast add stays

    def conv(a, w, pad):
        return np_conv(a.astype(np.float64), w.astype(np.float64), padding=pad)

    hv = np.maximum(conv(xv, w1, 1), 0)
    want = [
        np.maximum(conv(hv, w2, 1) + xv, 0),
        np.maximum(conv(hv, w3, 1) + conv(xv, wp, 0), 0),
        np.maximum(conv(xv, w1, 1) + bv, 0),
    ]
    tol = 1e-4 if dtype == "float32" else 1e-10
    for got, ref in zip(f(xv), want):
        np.testing.assert_allclose(got, ref, rtol=tol, atol=tol)
    kn.save(tmp_path / "fused.kiln", f, name="predict")
    for got, ref in zip(kn.load(tmp_path / "fused.kiln")(xv), want):
        np.testing.assert_allclose(got, ref, rtol=tol, atol=tol)


@pytest.mark.parametrize("width, batch", [(20, 2), (20, 1), (8, 3), (4, 1)], ids=lambda v: str(v))
def test_the_direct_kernel_adds_a_residual_to_whole_and_partial_vectors(width, batch):
    """The direct kernel adds a fused residual to whole vectors of 16 pixels in registers and to the
    rest (rows of 20 end in a vector of 4; rows of 8 and 4 share a vector) after storing them; 24
    filters keep the filter-lane kernel out. Against numpy, with the ReLU after the add."""
    rng = np.random.default_rng(12)
    c, k = 8, 24
    xv = rng.standard_normal((batch, c, 12, width)).astype(np.float32)
    rv = rng.standard_normal((batch, k, 12, width)).astype(np.float32)
    wv = rng.standard_normal((k, c, 3, 3)).astype(np.float32) * 0.3
    x, r = kn.input("x", (None, c, 12, width)), kn.input("r", (None, k, 12, width))
    f = kn.function([x, r], kn.relu(kn.conv2d(x, kn.Parameter(wv), padding=1) + r), training=False)
    assert "residual=1" in str(f)
    want = np.maximum(np_conv(xv.astype(np.float64), wv.astype(np.float64), padding=1) + rv, 0)
    np.testing.assert_allclose(f(xv, rv), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "dtype, width",
    [("float32", 16), ("float32", 14), ("float64", 14)],
    ids=["direct", "filter lanes", "float64"],
)
def test_a_fused_residual_of_a_batch_of_one_is_added_to_every_sample(dtype, width):
    """Two unknown batches may differ at run time: a residual of batch 1 fused into a convolution of
    batch 3 is added to every sample, as the unfused add broadcasts it (a training function keeps the
    add apart: the reference)."""
    rng = np.random.default_rng(10)
    c = 32
    xv = rng.standard_normal((3, c, width, width)).astype(dtype)
    rv = rng.standard_normal((1, c, width, width)).astype(dtype)
    wv = rng.standard_normal((c, c, 3, 3)).astype(dtype) * 0.2
    x, r = kn.input("x", (None, c, width, width), dtype), kn.input("r", (None, c, width, width), dtype)
    y = kn.relu(kn.conv2d(x, kn.constant(wv, dtype=dtype), padding=1) + r)
    fused = kn.function([x, r], y, training=False)
    assert "residual=1" in str(fused)
    want = np.maximum(np_conv(xv.astype(np.float64), wv.astype(np.float64), padding=1) + rv, 0)
    tol = 1e-4 if dtype == "float32" else 1e-10
    np.testing.assert_allclose(fused(xv, rv), want, rtol=tol, atol=tol)
    np.testing.assert_allclose(fused(xv, np.broadcast_to(rv, xv.shape).copy()), want, rtol=tol, atol=tol)


@pytest.mark.parametrize("stride, padding", [(2, 1), (1, 0)])
def test_convolution_of_no_channels_is_its_bias(stride, padding):
    """No input channels: every output is a sum of nothing plus the bias (the filter-lane kernel
    takes no such layer)."""
    x = kn.input("x", (1, 0, 8, 8))
    b = np.arange(4, dtype=np.float32)
    y = kn.conv2d(
        x, kn.constant(np.zeros((4, 0, 3, 3), np.float32)), kn.constant(b), stride=stride, padding=padding
    )
    out = kn.function([x], y, training=False)(np.zeros((1, 0, 8, 8), np.float32))
    np.testing.assert_array_equal(out, np.broadcast_to(b[None, :, None, None], out.shape))


@pytest.mark.parametrize("threads", [1, 3, 5])
def test_one_sample_splits_its_rows_over_any_number_of_threads(threads):
    """At batch 1 each thread computes every filter of a band of output rows and pads the rows it
    reads (conv_direct.cpp, conv_lanes.cpp); with two threads or more the block runs as one tiled
    group (runtime/row_tiles.cpp). A ResNet block, planned for each pool size, against numpy: the
    direct kernel with a fused ReLU, the strided filter-lane kernel, and a stride-1 filter-lane
    convolution adding a 1x1 projection as its residual."""
    rng = np.random.default_rng(11)
    xv = rng.standard_normal((1, 16, 20, 20)).astype(np.float32)
    w1 = rng.standard_normal((16, 16, 3, 3)).astype(np.float32) * 0.2
    w2 = rng.standard_normal((32, 16, 3, 3)).astype(np.float32) * 0.2
    w3 = rng.standard_normal((32, 32, 3, 3)).astype(np.float32) * 0.2
    wp = rng.standard_normal((32, 16, 1, 1)).astype(np.float32) * 0.2
    x = kn.input("x", (None, 16, 20, 20))
    h = kn.relu(kn.conv2d(x, kn.Parameter(w1), padding=1))
    g = kn.relu(kn.conv2d(h, kn.Parameter(w2), stride=2, padding=1))
    y = kn.relu(kn.conv2d(g, kn.Parameter(w3), padding=1) + kn.conv2d(h, kn.Parameter(wp), stride=2))
    f = kn.function([x], y, training=False)
    assert "residual=1" in str(f)

    def conv(a, w, **kw):
        return np_conv(a, w.astype(np.float64), **kw)

    hv = np.maximum(conv(xv.astype(np.float64), w1, padding=1), 0)
    gv = np.maximum(conv(hv, w2, stride=2, padding=1), 0)
    want = np.maximum(conv(gv, w3, padding=1) + conv(hv, wp, stride=2), 0)
    before = kn.num_threads()
    try:
        kn.set_num_threads(threads)
        for _ in range(2):
            np.testing.assert_allclose(f(xv), want, rtol=1e-4, atol=1e-4)
    finally:
        kn.set_num_threads(before)
