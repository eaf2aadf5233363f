"""Tiled execution (runtime/row_tiles.cpp): an inference function runs a chain of small convolutions
as one step, each thread computing at batch 1 its band of rows of every layer (copying the rows next to
it from the other threads' bands between the layers that read them), and at larger batches whole
samples through the chain. Checked against numpy and against the
same function planned for one thread (no groups), over the kernels' row layouts (rows of 16 pixels
and more, of 8 and of 4, odd heights), strides, dilation, folded batch norms, residuals from inside
and outside a group, and thread counts that divide neither the rows nor the batch."""

from __future__ import annotations

import numpy as np
import pytest
from op_table_conv import np_conv

import kiln as kn


def np_bn(x, gamma, beta, mean, var, eps=1e-5):
    shape = (1, -1, 1, 1)
    return (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps) * gamma.reshape(
        shape
    ) + beta.reshape(shape)


class Net:
    """A stem, a residual block, a strided block with a 1x1 projection, and a dilated layer: the
    kiln graph and its float64 numpy reference from the same weights."""

    def __init__(self, c: int, seed: int = 0):
        rng = np.random.default_rng(seed)

        def w(k, ci, kk):
            return (rng.standard_normal((k, ci, kk, kk)) * (2.0 / (ci * kk * kk)) ** 0.5).astype(np.float32)

        def bn(k):
            return [
                rng.uniform(0.5, 1.5, k).astype(np.float32),
                rng.standard_normal(k).astype(np.float32) * 0.1,
                rng.standard_normal(k).astype(np.float32) * 0.1,
                rng.uniform(0.5, 2.0, k).astype(np.float32),
            ]

        self.w = {
            "stem": w(c, 3, 3),
            "a1": w(c, c, 3),
            "a2": w(c, c, 3),
            "b1": w(2 * c, c, 3),
            "b2": w(2 * c, 2 * c, 3),
            "proj": w(2 * c, c, 1),
            "dil": w(2 * c, 2 * c, 3),
        }
        self.bias = rng.standard_normal(c).astype(np.float32) * 0.1
        self.bn = {"a1": bn(c), "b2": bn(2 * c)}

    def kiln(self, x: kn.Tensor, extra_output: bool = False):
        P = {k: kn.Parameter(v, name=k) for k, v in self.w.items()}
        stats = {k: [kn.Parameter(a, name=f"{k}_{i}") for i, a in enumerate(v)] for k, v in self.bn.items()}

        def bn(h, k):  # batch_norm takes the running statistics first
            gamma, beta, mean, var = stats[k]
            return kn.batch_norm(h, mean, var, gamma, beta)

        stem = kn.relu(kn.conv2d(x, P["stem"], kn.constant(self.bias), padding=1))
        a = kn.relu(bn(kn.conv2d(stem, P["a1"], padding=1), "a1"))
        a = kn.relu(kn.conv2d(a, P["a2"], padding=1) + stem)
        b = kn.relu(kn.conv2d(a, P["b1"], stride=2, padding=1))
        b = bn(kn.conv2d(b, P["b2"], padding=1), "b2")
        b = kn.relu(b + kn.conv2d(a, P["proj"], stride=2))
        out = kn.relu(kn.conv2d(b, P["dil"], padding=2, dilation=2))
        return {"out": out, "a": a} if extra_output else out

    def numpy(self, xv: np.ndarray) -> dict:
        w = {k: v.astype(np.float64) for k, v in self.w.items()}
        bn = {k: [a.astype(np.float64) for a in v] for k, v in self.bn.items()}
        relu = lambda v: np.maximum(v, 0)  # noqa: E731
        stem = relu(np_conv(xv.astype(np.float64), w["stem"], self.bias.astype(np.float64), padding=1))
        a = relu(np_bn(np_conv(stem, w["a1"], padding=1), *bn["a1"]))
        a = relu(np_conv(a, w["a2"], padding=1) + stem)
        b = relu(np_conv(a, w["b1"], stride=2, padding=1))
        b = np_bn(np_conv(b, w["b2"], padding=1), *bn["b2"])
        b = relu(b + np_conv(a, w["proj"], stride=2))
        return {"out": relu(np_conv(b, w["dil"], padding=2, dilation=2)), "a": a}


def compiled(net: Net, shape, threads: int, extra_output: bool = False):
    """The net's inference function, planned (at its first call) for `threads` threads."""
    kn.set_num_threads(threads)
    with kn.Graph():
        x = kn.input("x", (None, *shape[1:]))
        return kn.function([x], net.kiln(x, extra_output), training=False)


@pytest.fixture
def restore_threads():
    before = kn.num_threads()
    yield
    kn.set_num_threads(before)


# (channels, height, width): rows of 32 pixels (two vectors a row), of 20 (a partial vector), of 8 and
# of 4 (two and four rows a vector), of 14 (the filter-lane kernel at stride 1), odd heights; Winograd's
# layers (conv_winograd.cpp) by bands of rows of tiles (16 channels at 32x32: 16 tiles a row; 32 at 16x16
# and 14x14: two rows of tiles a vector; 32 at 20x12: rows of 6 tiles in 8 lanes) and, rows of 4 tiles
# or fewer, in pairs (64 channels at 8x8, 7x7 and 10x6, an odd number of rows of tiles; 32 at 40x8 and
# 64 at 20x4, bands of several chunks).
SHAPES = [(8, 32, 32), (8, 13, 20), (8, 16, 8), (8, 12, 4), (32, 14, 14), (8, 9, 16), (16, 32, 32), (32, 16, 16),
          (32, 20, 12), (32, 40, 8)]  # fmt: skip


@pytest.mark.parametrize("threads", [2, 3, 4])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_row_tiled_net_matches_numpy_and_one_thread(restore_threads, shape, threads):
    c, h, w = shape
    net = Net(c)
    xv = np.random.default_rng(1).standard_normal((1, 3, h, w)).astype(np.float32)
    want = net.numpy(xv)["out"]
    x3 = np.concatenate([xv, -xv, 2 * xv])
    one = compiled(net, xv.shape, 1)  # each shape is planned at its first call, for the pool's size then
    ref, ref3 = one(xv), one(x3)
    tiled = compiled(net, xv.shape, threads)
    for _ in range(2):  # the second call: the plan's memory and the packed weights reused
        got = tiled(xv)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
        # atol 1e-5: ungrouped, the 32-channel layers run Winograd's sums (conv_winograd.cpp)
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    # the chain ran as fewer steps than one thread's plan has (where nothing is grouped)
    assert tiled.plan_stats()["steps"] < one.plan_stats()["steps"]
    # a batch of three: parts of whole samples, each through the chain (where its values fit)
    steps3 = one.plan_stats()["steps"]
    want3 = np.concatenate([net.numpy(a[None])["out"] for a in x3])
    np.testing.assert_allclose(tiled(x3), want3, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(tiled(x3), ref3, rtol=1e-5, atol=1e-5)
    if threads == 2:
        assert tiled.plan_stats()["steps"] < steps3


def test_a_value_also_returned_is_not_kept_private(restore_threads):
    """A block's output is both read inside a chain and returned: it must be written to the plan's
    memory whole, so no group passes it privately."""
    net = Net(8)
    xv = np.random.default_rng(2).standard_normal((1, 3, 16, 16)).astype(np.float32)
    want = net.numpy(xv)
    got = compiled(net, xv.shape, 2, extra_output=True)(xv)
    for k in ("out", "a"):
        np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-4)


def test_new_weights_reach_a_row_tiled_chain(restore_threads):
    """The packed weights are cached per variable and renewed when it is written."""
    kn.set_num_threads(2)
    rng = np.random.default_rng(3)
    w1, w2 = (rng.standard_normal((8, 8, 3, 3)).astype(np.float32) * 0.3 for _ in range(2))
    xv = rng.standard_normal((1, 8, 16, 16)).astype(np.float32)
    with kn.Graph():
        x = kn.input("x", (None, 8, 16, 16))
        W1, W2 = kn.Parameter(w1, name="w1"), kn.Parameter(w2, name="w2")
        f = kn.function([x], kn.conv2d(kn.relu(kn.conv2d(x, W1, padding=1)), W2, padding=1), training=False)

    def want(a, b):
        h = np.maximum(np_conv(xv.astype(np.float64), a.astype(np.float64), padding=1), 0)
        return np_conv(h, b.astype(np.float64), padding=1)

    np.testing.assert_allclose(f(xv), want(w1, w2), rtol=1e-4, atol=1e-4)
    W1.assign(-w1)
    np.testing.assert_allclose(f(xv), want(-w1, w2), rtol=1e-4, atol=1e-4)


def test_new_batch_norm_and_bias_reach_a_row_tiled_chain(restore_threads):
    """A grouped convolution folds its batch norm and bias once and keeps them while those variables are
    unchanged: writing any one of them, or feeding a bias that is an input, must reach the next call."""
    kn.set_num_threads(2)
    rng = np.random.default_rng(6)
    w1, w2 = (rng.standard_normal((8, 8, 3, 3)).astype(np.float32) * 0.3 for _ in range(2))
    stats = [
        rng.uniform(0.5, 1.5, 8),
        rng.standard_normal(8) * 0.1,
        rng.standard_normal(8) * 0.1,
        rng.uniform(0.5, 2, 8),
    ]
    stats = [a.astype(np.float32) for a in stats]
    bias = rng.standard_normal(8).astype(np.float32)
    xv = rng.standard_normal((1, 8, 16, 16)).astype(np.float32)
    with kn.Graph():
        x, b2 = kn.input("x", (None, 8, 16, 16)), kn.input("b2", (8,))
        W1, W2, B1 = kn.Parameter(w1, name="w1"), kn.Parameter(w2, name="w2"), kn.Parameter(bias, name="b1")
        gamma, beta, mean, var = (kn.Parameter(a, name=f"s{i}") for i, a in enumerate(stats))
        h = kn.relu(kn.batch_norm(kn.conv2d(x, W1, B1, padding=1), mean, var, gamma, beta))
        f = kn.function([x, b2], kn.conv2d(h, W2, b2, padding=1), training=False)

    def want(b1, st, b2v):
        h = np_conv(xv.astype(np.float64), w1.astype(np.float64), b1.astype(np.float64), padding=1)
        h = np.maximum(np_bn(h, *[a.astype(np.float64) for a in st]), 0)
        return np_conv(h, w2.astype(np.float64), b2v.astype(np.float64), padding=1)

    zero, one = np.zeros(8, np.float32), np.ones(8, np.float32)
    np.testing.assert_allclose(f(xv, zero), want(bias, stats, zero), rtol=1e-4, atol=1e-4)
    assert f.plan_stats()["steps"] < 4  # the two convolutions run as one group
    np.testing.assert_allclose(f(xv, one), want(bias, stats, one), rtol=1e-4, atol=1e-4)
    B1.assign(-bias)
    np.testing.assert_allclose(f(xv, one), want(-bias, stats, one), rtol=1e-4, atol=1e-4)
    var.assign(stats[3] * 4)
    np.testing.assert_allclose(f(xv, one), want(-bias, [*stats[:3], stats[3] * 4], one), rtol=1e-4, atol=1e-4)


def resnet8_like(x: kn.Tensor) -> kn.Tensor:
    """ResNet-8's layout at 32x32: a stem and three basic blocks, the last two strided (16, 32, 64
    channels), then global average pooling and a linear layer."""
    nn = kn.nn

    def block(h, cin, cout, stride):
        y = kn.relu(nn.BatchNorm2d(cout)(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)(h)))
        y = nn.BatchNorm2d(cout)(nn.Conv2d(cout, cout, 3, padding=1, bias=False)(y))
        short = (
            h if stride == 1 else nn.BatchNorm2d(cout)(nn.Conv2d(cin, cout, 1, stride=stride, bias=False)(h))
        )
        return kn.relu(y + short)

    h = kn.relu(nn.BatchNorm2d(16)(nn.Conv2d(3, 16, 3, padding=1, bias=False)(x)))
    h = block(block(block(h, 16, 16, 1), 16, 32, 2), 32, 64, 2)
    return nn.Linear(64, 10)(kn.mean(h, axis=(2, 3)))


@pytest.mark.parametrize("threads", [2, 3, 4])
def test_bands_exchange_rows_instead_of_recomputing_them(restore_threads, threads):
    """At batch 1 the values passed inside a chain are exchanged between the bands (each computes its
    own rows, then copies its neighbours' from their memory) rather than recomputed, so that chains
    need not end where a strided layer would double the rows to recompute: ResNet-8's nine
    convolutions run as one chain, and agree with the one-thread plan."""
    xv = np.random.default_rng(7).standard_normal((1, 3, 32, 32)).astype(np.float32)
    with kn.Graph():
        kn.manual_seed(0)
        x = kn.input("x", (None, 3, 32, 32))
        f = kn.function([x], resnet8_like(x), training=False)
    kn.set_num_threads(1)
    want, layer_by_layer = f(xv), f.plan_stats()["steps"]
    kn.set_num_threads(threads)
    np.testing.assert_allclose(f(xv), want, rtol=1e-5, atol=1e-6)
    assert f.plan_stats()["steps"] == layer_by_layer - 8  # the nine convolutions: one step


def test_8x8_bands_take_winograd_in_pairs(restore_threads):
    """Bands of 4 rows of an 8x8 image (8 tiles) run Winograd with two of a tile's values a vector
    ("pairs"), summing the same products in the same order as the whole sample's layout: the chain on
    two threads gives the one-thread plan's values bit for bit (the direct kernels would not)."""
    rng = np.random.default_rng(8)
    xv = rng.standard_normal((1, 64, 8, 8)).astype(np.float32)
    w1, w2 = (rng.standard_normal((64, 64, 3, 3)).astype(np.float32) * 0.05 for _ in range(2))
    with kn.Graph():
        x = kn.input("x", (None, 64, 8, 8))
        W1, W2 = kn.Parameter(w1, name="w1"), kn.Parameter(w2, name="w2")
        f = kn.function([x], kn.conv2d(kn.relu(kn.conv2d(x, W1, padding=1)), W2, padding=1), training=False)
    kn.set_num_threads(1)
    whole = f(xv)
    kn.set_num_threads(2)
    banded = f(xv)
    assert f.plan_stats()["steps"] == 1
    np.testing.assert_array_equal(banded, whole)
    h = np.maximum(np_conv(xv.astype(np.float64), w1.astype(np.float64), padding=1), 0)
    np.testing.assert_allclose(banded, np_conv(h, w2.astype(np.float64), padding=1), rtol=1e-4, atol=1e-4)


def test_a_new_thread_count_makes_a_new_plan(restore_threads):
    """Plans are cut for the pool's size (tiled groups, workspaces): after set_num_threads the next call
    plans again, and gets the same values."""
    net = Net(8)
    xv = np.random.default_rng(4).standard_normal((1, 3, 16, 16)).astype(np.float32)
    f = compiled(net, xv.shape, 2)
    two = f(xv)
    grouped = f.plan_stats()["steps"]
    kn.set_num_threads(1)
    np.testing.assert_allclose(f(xv), two, rtol=1e-5, atol=1e-6)
    assert f.plan_stats()["steps"] > grouped  # one thread: no groups
    kn.set_num_threads(2)
    np.testing.assert_allclose(f(xv), two, rtol=1e-5, atol=1e-6)
    assert f.plan_stats()["steps"] == grouped


def test_branches_of_other_batch_sizes_stay_apart(restore_threads):
    """Two independent chains, consecutive in the program, fed batches of 1 and of 3 (a Siamese
    net's template and search images): a group runs one batch size, so they are not grouped
    together, and each gets its own values."""
    kn.set_num_threads(2)
    rng = np.random.default_rng(5)
    ws = [rng.standard_normal((8, 8, 3, 3)).astype(np.float32) * 0.3 for _ in range(4)]
    z = rng.standard_normal((1, 8, 12, 12)).astype(np.float32)
    xs = rng.standard_normal((3, 8, 12, 12)).astype(np.float32)
    with kn.Graph():
        zi, xi = kn.input("z", (None, 8, 12, 12)), kn.input("x", (None, 8, 12, 12))
        W = [kn.Parameter(w, name=f"w{i}") for i, w in enumerate(ws)]
        a = kn.conv2d(kn.relu(kn.conv2d(zi, W[0], padding=1)), W[1], padding=1)
        b = kn.conv2d(kn.relu(kn.conv2d(xi, W[2], padding=1)), W[3], padding=1)
        f = kn.function([zi, xi], {"a": a, "b": b}, training=False)

    def chain(v, w1, w2):
        h = np.maximum(np_conv(v.astype(np.float64), w1.astype(np.float64), padding=1), 0)
        return np_conv(h, w2.astype(np.float64), padding=1)

    got = f(z, xs)
    np.testing.assert_allclose(got["a"], chain(z, ws[0], ws[1]), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got["b"], chain(xs, ws[2], ws[3]), rtol=1e-4, atol=1e-4)
