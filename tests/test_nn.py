"""kn.nn modules, kn.init, and the train/inference differences of dropout and batch norm.

Layers' functional forms and losses are checked value by value in the op table
(tests/op_table_nn.py); here: module structure (names, state_dict, repr), initialization
statistics, dtype, the mode-dependent behaviour of Dropout and BatchNorm1d, the modules against
numpy, and training (an MLP overfits a small batch).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import kiln as kn

nn = kn.nn


def _mlp(dtype="float32"):
    return nn.Sequential(
        nn.Linear(4, 8, dtype=dtype),
        nn.BatchNorm1d(8, dtype=dtype),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(8, 3, dtype=dtype),
    )


# torch.nn.Sequential(Linear(4, 8), BatchNorm1d(8), ReLU(), Dropout(0.5), Linear(8, 3)).state_dict()
# keys, in order, less "1.num_batches_tracked" (kiln's momentum is never None, so it keeps no count)
TORCH_KEYS = [
    "0.weight",
    "0.bias",
    "1.weight",
    "1.bias",
    "1.running_mean",
    "1.running_var",
    "4.weight",
    "4.bias",
]
SHAPES = {"0.weight": (8, 4), "0.bias": (8,), "4.weight": (3, 8), "4.bias": (3,)}


# ---------------------------------------------------------------------------------------------
# Module structure
# ---------------------------------------------------------------------------------------------


def test_named_parameters_and_buffers_as_torch():
    m = _mlp()
    assert [n for n, _ in m.named_parameters()] == [
        "0.weight",
        "0.bias",
        "1.weight",
        "1.bias",
        "4.weight",
        "4.bias",
    ]
    assert [n for n, _ in m.named_buffers()] == ["1.running_mean", "1.running_var"]
    params = m.parameters()
    assert len(params) == 6 and all(isinstance(p, kn.Parameter) for p in params)
    assert [p.shape for p in params] == [(8, 4), (8,), (8,), (8,), (3, 8), (3,)]
    buffers = m.buffers()
    assert len(buffers) == 2
    assert not any(b is p for b in buffers for p in params), (
        "running statistics must not be trainable parameters"
    )
    assert m[1].running_mean is buffers[0] and m[1].running_var is buffers[1]
    assert [type(c).__name__ for c in m.children()] == ["Linear", "BatchNorm1d", "ReLU", "Dropout", "Linear"]
    assert [n for n, _ in m.named_modules()] == ["", "0", "1", "2", "3", "4"]
    assert len(m) == 5 and m[4] is list(m)[4]


def test_parameters_are_listed_once_when_shared():
    shared = nn.Linear(3, 3)
    m = nn.Sequential(shared, nn.ReLU(), shared)
    assert len(m.parameters()) == 2
    assert [n for n, _ in m.named_parameters()] == ["0.weight", "0.bias", "2.weight", "2.bias"]


def test_nested_module_names():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 2)
            self.norm = nn.LayerNorm(2)

        def forward(self, x):
            return self.norm(self.fc(x))

    m = nn.Sequential(Block(), nn.Sequential(nn.Linear(2, 1, bias=False)))
    assert list(m.state_dict()) == ["0.fc.weight", "0.fc.bias", "0.norm.weight", "0.norm.bias", "1.0.weight"]


def test_state_dict_keys_order_and_values():
    m = _mlp()
    sd = m.state_dict()
    assert list(sd) == TORCH_KEYS
    assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 for v in sd.values())
    for k, shape in SHAPES.items():
        assert sd[k].shape == shape
    np.testing.assert_array_equal(sd["1.weight"], np.ones(8))
    np.testing.assert_array_equal(sd["1.bias"], np.zeros(8))
    np.testing.assert_array_equal(sd["1.running_mean"], np.zeros(8))
    np.testing.assert_array_equal(sd["1.running_var"], np.ones(8))
    sd["0.weight"][:] = 123.0  # a copy: the model is unchanged
    assert not np.any(m.state_dict()["0.weight"] == 123.0)


def test_load_state_dict_round_trip():
    x = kn.input("x", (None, 4))
    kn.manual_seed(1)
    a = _mlp()
    kn.manual_seed(2)
    b = _mlp()
    fa = kn.function([x], a(x), training=False)
    fb = kn.function([x], b(x), training=False)  # compiled before the load: it sees the new values
    batch = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    assert not np.allclose(fa(batch), fb(batch))
    state = a.state_dict()
    state["1.running_mean"] = np.linspace(-1, 1, 8).astype(np.float32)
    state["1.running_var"] = np.linspace(0.5, 2, 8).astype(np.float32)
    state["1.weight"] = np.linspace(0.5, 1.5, 8).astype(np.float32)
    a.load_state_dict(state)
    b.load_state_dict(a.state_dict())
    for k, v in b.state_dict().items():
        np.testing.assert_array_equal(v, state[k], err_msg=k)
    np.testing.assert_array_equal(fa(batch), fb(batch))


def test_load_state_dict_accepts_torch_num_batches_tracked():
    m = _mlp()
    state = dict(m.state_dict())
    state["1.num_batches_tracked"] = np.array(7, np.int64)
    state["0.bias"] = np.arange(8, dtype=np.float64)  # converted to the parameter's dtype
    m.load_state_dict(state)
    got = m.state_dict()["0.bias"]
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, np.arange(8))


def test_load_state_dict_strict_missing_key():
    m = _mlp()
    state = m.state_dict()
    del state["1.running_var"]
    with pytest.raises(kn.Error, match="running_var"):
        m.load_state_dict(state)


def test_load_state_dict_strict_unexpected_key():
    m = _mlp()
    state = m.state_dict()
    state["5.weight"] = np.zeros((2, 2), np.float32)
    with pytest.raises(kn.Error, match="5.weight"):
        m.load_state_dict(state)


def test_load_state_dict_not_strict_loads_the_rest():
    m = _mlp()
    state = {"0.bias": np.full(8, 2.0, np.float32), "9.weight": np.zeros(3, np.float32)}
    m.load_state_dict(state, strict=False)
    np.testing.assert_array_equal(m.state_dict()["0.bias"], np.full(8, 2.0))


@pytest.mark.parametrize("strict", [True, False])
def test_load_state_dict_shape_mismatch(strict):
    m = _mlp()
    state = m.state_dict()
    state["4.weight"] = np.zeros((8, 3), np.float32)
    before = m.state_dict()["4.weight"]
    with pytest.raises(kn.Error, match=r"4\.weight"):
        m.load_state_dict(state, strict=strict)
    np.testing.assert_array_equal(m.state_dict()["4.weight"], before)


def test_repr_like_torch():
    text = repr(_mlp())
    lines = text.split("\n")
    assert lines[0] == "Sequential("
    assert lines[1] == "  (0): Linear(in_features=4, out_features=8, bias=True)"
    assert lines[2].startswith("  (1): BatchNorm1d(8, eps=1e-05, momentum=0.1, affine=True")
    assert lines[3] == "  (2): ReLU()"
    assert lines[4].startswith("  (3): Dropout(p=0.5")
    assert lines[5] == "  (4): Linear(in_features=8, out_features=3, bias=True)"
    assert lines[6] == ")" and len(lines) == 7
    assert repr(nn.LeakyReLU(negative_slope=0.2)) == "LeakyReLU(negative_slope=0.2)"
    assert repr(nn.LayerNorm((3, 4))).startswith("LayerNorm((3, 4), eps=1e-05")
    assert repr(nn.GroupNorm(2, 4)).startswith("GroupNorm(2, 4, eps=1e-05")
    assert repr(nn.Embedding(10, 3)) == "Embedding(10, 3)"
    assert repr(nn.Flatten()) == "Flatten(start_dim=1, end_dim=-1)"


def test_sequential_rejects_non_modules():
    with pytest.raises(kn.Error, match="Module"):
        nn.Sequential(nn.ReLU(), lambda x: x)


# ---------------------------------------------------------------------------------------------
# Initialization
# ---------------------------------------------------------------------------------------------


def _uniform_ok(a: np.ndarray, bound: float):
    """a looks like U(-bound, bound): within the bound, reaching near it, with the right moments."""
    n = a.size
    assert np.abs(a).max() <= bound * (1 + 1e-6)
    assert np.abs(a).max() > bound * 0.99
    assert abs(a.mean()) < 5 * bound / math.sqrt(3 * n)
    assert abs(a.std() / (bound / math.sqrt(3)) - 1) < 0.02


def _normal_ok(a: np.ndarray, std: float):
    n = a.size
    assert abs(a.mean()) < 5 * std / math.sqrt(n)
    assert abs(a.std() / std - 1) < 0.02
    assert abs(np.mean(np.abs(a) < std) - 0.6827) < 0.01


def test_linear_default_init():
    kn.manual_seed(0)
    layer = nn.Linear(400, 300)
    w, b = layer.weight.numpy(), layer.bias.numpy()
    assert w.shape == (300, 400) and b.shape == (300,) and w.dtype == np.float32
    bound = 1 / math.sqrt(400)
    _uniform_ok(w, bound)
    assert np.abs(b).max() <= bound and np.abs(b).max() > 0.9 * bound
    assert len(np.unique(b)) == 300


def test_default_init_of_other_layers():
    kn.manual_seed(0)
    bn = nn.BatchNorm1d(5)
    np.testing.assert_array_equal(bn.weight.numpy(), np.ones(5))
    np.testing.assert_array_equal(bn.bias.numpy(), np.zeros(5))
    np.testing.assert_array_equal(bn.running_mean.numpy(), np.zeros(5))
    np.testing.assert_array_equal(bn.running_var.numpy(), np.ones(5))
    ln = nn.LayerNorm((2, 3))
    np.testing.assert_array_equal(ln.weight.numpy(), np.ones((2, 3)))
    np.testing.assert_array_equal(ln.bias.numpy(), np.zeros((2, 3)))
    np.testing.assert_array_equal(nn.PReLU(4).weight.numpy(), np.full(4, 0.25, np.float32))
    _normal_ok(nn.Embedding(1000, 100).weight.numpy(), 1.0)  # N(0, 1), as torch


def test_manual_seed_makes_init_reproducible():
    kn.manual_seed(5)
    a = nn.Linear(6, 4).weight.numpy()
    kn.manual_seed(5)
    b = nn.Linear(6, 4).weight.numpy()
    kn.manual_seed(6)
    c = nn.Linear(6, 4).weight.numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


SHAPE = (300, 500)  # fan_in 500, fan_out 300
CONV = (64, 16, 5, 5)  # fan_in 16 * 25 = 400, fan_out 64 * 25 = 1600


def test_xavier_uniform_and_normal():
    kn.manual_seed(0)
    _uniform_ok(kn.init.xavier_uniform(SHAPE), math.sqrt(6 / 800))
    _uniform_ok(kn.init.xavier_uniform(CONV, gain=2.0), 2.0 * math.sqrt(6 / 2000))
    _normal_ok(kn.init.xavier_normal(SHAPE), math.sqrt(2 / 800))
    _normal_ok(kn.init.xavier_normal(CONV, gain=0.5), 0.5 * math.sqrt(2 / 2000))
    assert kn.init.glorot_uniform is kn.init.xavier_uniform


@pytest.mark.parametrize("mode, fan", [("fan_in", 500), ("fan_out", 300)])
def test_kaiming(mode, fan):
    kn.manual_seed(0)
    relu = math.sqrt(2)
    _uniform_ok(kn.init.kaiming_uniform(SHAPE, mode=mode, nonlinearity="relu"), relu * math.sqrt(3 / fan))
    _normal_ok(kn.init.kaiming_normal(SHAPE, mode=mode, nonlinearity="relu"), relu / math.sqrt(fan))
    leaky = math.sqrt(2 / (1 + 0.2**2))
    _uniform_ok(kn.init.kaiming_uniform(SHAPE, a=0.2, mode=mode), leaky * math.sqrt(3 / fan))
    _normal_ok(kn.init.kaiming_normal(SHAPE, a=0.2, mode=mode), leaky / math.sqrt(fan))


def test_kaiming_conv_fans():
    kn.manual_seed(0)
    _normal_ok(kn.init.kaiming_normal(CONV, nonlinearity="relu"), math.sqrt(2 / 400))
    _normal_ok(kn.init.kaiming_normal(CONV, mode="fan_out", nonlinearity="relu"), math.sqrt(2 / 1600))


@pytest.mark.parametrize("shape", [(50, 30), (30, 50), (40, 40), (8, 3, 2, 2)])
def test_orthogonal(shape):
    kn.manual_seed(0)
    q = kn.init.orthogonal(shape, dtype="float64").reshape(shape[0], -1)
    rows, cols = q.shape
    if rows >= cols:
        np.testing.assert_allclose(q.T @ q, np.eye(cols), atol=1e-12)
    else:
        np.testing.assert_allclose(q @ q.T, np.eye(rows), atol=1e-12)
    q2 = kn.init.orthogonal((20, 20), gain=3.0, dtype="float64")
    np.testing.assert_allclose(q2.T @ q2, 9.0 * np.eye(20), atol=1e-11)


def test_calculate_gain():
    g = kn.init.calculate_gain
    for name in ("linear", "conv1d", "conv2d", "sigmoid", "identity"):
        assert g(name) == 1.0
    assert g("tanh") == pytest.approx(5 / 3)
    assert g("relu") == pytest.approx(math.sqrt(2))
    assert g("leaky_relu") == pytest.approx(math.sqrt(2 / (1 + 0.01**2)))
    assert g("leaky_relu", 0.2) == pytest.approx(math.sqrt(2 / 1.04))
    assert g("selu") == pytest.approx(0.75)
    with pytest.raises(kn.Error):
        g("softsign_typo")


def test_simple_initializers_and_in_place_fills():
    assert kn.init.zeros((2, 3)).tolist() == [[0.0] * 3] * 2
    assert kn.init.ones((2,)).tolist() == [1.0, 1.0]
    np.testing.assert_array_equal(kn.init.constant((2, 2), 0.5), np.full((2, 2), 0.5))
    kn.manual_seed(0)
    u = kn.init.uniform((20000,), -2.0, 3.0)
    assert u.min() >= -2.0 and u.max() < 3.0 and abs(u.mean() - 0.5) < 0.05
    _normal_ok(kn.init.normal((20000,), 1.0, 2.0) - 1.0, 2.0)
    p = kn.Parameter(np.zeros((100, 200)), name="w", dtype="float64")
    assert kn.init.xavier_uniform_(p) is p
    w = p.numpy()
    assert w.dtype == np.float64
    _uniform_ok(w, math.sqrt(6 / 300))
    kn.init.constant_(p, 0.25)
    np.testing.assert_array_equal(p.numpy(), np.full((100, 200), 0.25))
    kn.init.orthogonal_(p)
    np.testing.assert_allclose(p.numpy() @ p.numpy().T, np.eye(100), atol=1e-12)
    with pytest.raises(kn.Error):
        kn.init.xavier_uniform((5,))  # fans need 2 dims


# ---------------------------------------------------------------------------------------------
# dtype
# ---------------------------------------------------------------------------------------------


def test_float64_layers():
    layers = [
        nn.Linear(3, 2, dtype="float64"),
        nn.BatchNorm1d(3, dtype="float64"),
        nn.LayerNorm(3, dtype="float64"),
        nn.GroupNorm(1, 3, dtype="float64"),
        nn.Embedding(5, 3, dtype="float64"),
        nn.PReLU(3, dtype="float64"),
        nn.Maxout(3, 2, 2, dtype="float64"),
    ]
    for layer in layers:
        for name, v in layer.state_dict().items():
            assert v.dtype == np.float64, f"{type(layer).__name__} {name}"
    x = kn.input("x", (None, 3), "float64")
    m = nn.Sequential(nn.Linear(3, 4, dtype="float64"), nn.BatchNorm1d(4, dtype="float64"), nn.Tanh(),
                      nn.LayerNorm(4, dtype="float64"), nn.Linear(4, 2, dtype="float64"))  # fmt: skip
    y = m(x)
    assert y.dtype == np.float64
    out = kn.function([x], y)(np.random.default_rng(0).standard_normal((5, 3)))
    assert out.dtype == np.float64 and out.shape == (5, 2)


def test_float32_default():
    for layer in (nn.Linear(3, 2), nn.BatchNorm1d(3), nn.LayerNorm(3), nn.Embedding(4, 2)):
        assert all(v.dtype == np.float32 for v in layer.state_dict().values())


def test_float64_parameter_gradient_matches_numpy():
    """dL/dW and dL/db of a float64 Linear, through a compiled function, against the closed form."""
    kn.manual_seed(0)
    layer = nn.Linear(3, 2, dtype="float64")
    x = kn.input("x", (None, 3), "float64")
    g = kn.input("g", (None, 2), "float64")
    loss = kn.sum(layer(x) * g)
    gw, gb = kn.grad(loss, [layer.weight, layer.bias])
    rng = np.random.default_rng(1)
    xv, gv = rng.standard_normal((4, 3)), rng.standard_normal((4, 2))
    gwv, gbv = kn.function([x, g], [gw, gb])(xv, gv)
    np.testing.assert_allclose(gwv, gv.T @ xv, rtol=1e-12)
    np.testing.assert_allclose(gbv, gv.sum(0), rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# Dropout
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [0.2, 0.5, 0.8])
def test_dropout_training(p):
    x = kn.input("x", (200, 500))
    y = nn.Dropout(p)(x)
    g = kn.grad(kn.sum(y), x)
    f = kn.function([x], [y, g])
    ones = np.ones((200, 500), np.float32)
    y1, g1 = f(ones)
    y2, g2 = f(ones)
    n = ones.size
    for out in (y1, y2):
        kept = out != 0
        assert abs(1 - kept.mean() - p) < 5 * math.sqrt(p * (1 - p) / n)
        np.testing.assert_allclose(out[kept], 1 / (1 - p), rtol=1e-6)  # survivors scaled by 1/(1-p)
    assert np.mean((y1 != 0) != (y2 != 0)) > 0.5 * 2 * p * (1 - p), "a fresh mask on every call"
    # the gradient of sum(dropout(x)) uses the same call's mask: mask / (1 - p)
    np.testing.assert_allclose(g1, (y1 != 0) / (1 - p), rtol=1e-6)
    np.testing.assert_allclose(g2, (y2 != 0) / (1 - p), rtol=1e-6)


def test_dropout_gradient_mask_with_nonuniform_input():
    x = kn.input("x", (50, 40), "float64")
    w = kn.input("w", (50, 40), "float64")
    y = kn.dropout(x, 0.3)
    f = kn.function([x, w], [y, kn.grad(kn.sum(y * w), x)])
    rng = np.random.default_rng(0)
    xv, wv = rng.uniform(0.5, 2, (50, 40)), rng.standard_normal((50, 40))
    yv, gv = f(xv, wv)
    mask = yv != 0
    np.testing.assert_allclose(yv, xv * mask / 0.7, rtol=1e-12)
    np.testing.assert_allclose(gv, wv * mask / 0.7, rtol=1e-12)


def test_dropout_inference_is_identity():
    x = kn.input("x", (None, 30))
    layer = nn.Dropout(0.5)
    y = layer(x)
    f = kn.function([x], [y, kn.grad(kn.sum(y * y), x)], training=False)
    xv = np.random.default_rng(0).standard_normal((20, 30)).astype(np.float32)
    for _ in range(2):
        yv, gv = f(xv)
        np.testing.assert_array_equal(yv, xv)
        np.testing.assert_allclose(gv, 2 * xv, rtol=1e-6)
    train = kn.function([x], y)  # the same node, compiled for training, drops
    assert np.any(train(xv) == 0)


def test_dropout_extremes():
    x = kn.input("x", (10, 10))
    ones = np.ones((10, 10), np.float32)
    y0, y1 = kn.dropout(x, 0.0), kn.dropout(x, 1.0)
    out0, out1, g1 = kn.function([x], [y0, y1, kn.grad(kn.sum(y1), x)])(ones)
    np.testing.assert_array_equal(out0, ones)
    np.testing.assert_array_equal(out1, np.zeros((10, 10)))
    np.testing.assert_array_equal(g1, np.zeros((10, 10)))
    with pytest.raises(kn.Error):
        nn.Dropout(1.5)


def test_two_dropouts_draw_different_masks():
    x = kn.input("x", (100, 100))
    a, b = kn.function([x], [kn.dropout(x, 0.5), kn.dropout(x, 0.5)])(np.ones((100, 100), np.float32))
    assert not np.array_equal(a != 0, b != 0)


def test_dropout_seed_reproducible():
    def first_mask(seed):
        with kn.Graph():
            x = kn.input("x", (50, 50))
            return kn.function([x], kn.dropout(x, 0.5, seed=seed))(np.ones((50, 50), np.float32)) != 0

    np.testing.assert_array_equal(first_mask(11), first_mask(11))
    assert not np.array_equal(first_mask(11), first_mask(12))


# ---------------------------------------------------------------------------------------------
# BatchNorm1d
# ---------------------------------------------------------------------------------------------

EPS = 1e-5


def _bn_setup(shape=(None, 3), seed=0):
    kn.manual_seed(seed)
    bn = nn.BatchNorm1d(shape[1], dtype="float64")
    rng = np.random.default_rng(seed)
    gamma, beta = rng.uniform(0.5, 2, shape[1]), rng.standard_normal(shape[1])
    bn.weight.assign(gamma)
    bn.bias.assign(beta)
    x = kn.input("x", shape, "float64")
    return bn, x, gamma, beta, rng


@pytest.mark.parametrize("shape", [(None, 3), (None, 3, 4)])
def test_batchnorm_training_updates_running_stats(shape):
    bn, x, gamma, beta, rng = _bn_setup(shape)
    f = kn.function([x], bn(x))
    axes = (0,) if len(shape) == 2 else (0, 2)
    per_channel = (1, -1) + (1,) * (len(shape) - 2)
    rm, rv = np.zeros(shape[1]), np.ones(shape[1])
    for call in range(3):
        xv = rng.standard_normal((6,) + shape[1:]) * (call + 1) + call
        y = f(xv)
        mean, var = xv.mean(axis=axes), xv.var(axis=axes)
        expected = (xv - mean.reshape(per_channel)) / np.sqrt(var.reshape(per_channel) + EPS)
        np.testing.assert_allclose(y, expected * gamma.reshape(per_channel) + beta.reshape(per_channel), rtol=1e-10,
                                   atol=1e-12)  # fmt: skip
        m = xv.size // shape[1]
        rm = 0.9 * rm + 0.1 * mean
        rv = 0.9 * rv + 0.1 * var * m / (m - 1)  # unbiased, as torch
        np.testing.assert_allclose(bn.running_mean.numpy(), rm, rtol=1e-12, err_msg=f"call {call}")
        np.testing.assert_allclose(bn.running_var.numpy(), rv, rtol=1e-12, err_msg=f"call {call}")


def test_batchnorm_inference_uses_and_keeps_running_stats():
    bn, x, gamma, beta, rng = _bn_setup()
    y = bn(x)
    train, infer = kn.function([x], y), kn.function([x], y, training=False)
    for _ in range(2):
        train(rng.standard_normal((8, 3)) * 2 + 1)
    rm, rv = bn.running_mean.numpy(), bn.running_var.numpy()
    assert not np.allclose(rm, 0) and not np.allclose(rv, 1)
    xv = rng.standard_normal((5, 3))
    for _ in range(3):
        out = infer(xv)
        np.testing.assert_allclose(out, (xv - rm) / np.sqrt(rv + EPS) * gamma + beta, rtol=1e-12)
        np.testing.assert_array_equal(bn.running_mean.numpy(), rm)
        np.testing.assert_array_equal(bn.running_var.numpy(), rv)
    one = infer(xv[:1])  # a batch of one is fine in inference
    np.testing.assert_allclose(one, out[:1], rtol=1e-12)


def test_batchnorm_gradient_in_inference_mode():
    bn, x, gamma, beta, rng = _bn_setup()
    bn.load_state_dict({**bn.state_dict(), "running_mean": np.array([0.5, -1.0, 2.0]),
                        "running_var": np.array([0.25, 4.0, 1.5])})  # fmt: skip
    g = kn.input("g", (None, 3), "float64")
    y = bn(x)
    dx, dgamma, dbeta = kn.grad(kn.sum(y * g), [x, bn.weight, bn.bias])
    f = kn.function([x, g], [dx, dgamma, dbeta], training=False)
    xv, gv = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    dxv, dgv, dbv = f(xv, gv)
    rv, rm = np.array([0.25, 4.0, 1.5]), np.array([0.5, -1.0, 2.0])
    np.testing.assert_allclose(dxv, gv * gamma / np.sqrt(rv + EPS), rtol=1e-12)
    np.testing.assert_allclose(dgv, (gv * (xv - rm) / np.sqrt(rv + EPS)).sum(0), rtol=1e-12)
    np.testing.assert_allclose(dbv, gv.sum(0), rtol=1e-12)


def test_batchnorm_running_stats_update_once_per_call():
    """A training function with the output and its gradient still updates the statistics once."""
    bn, x, gamma, beta, rng = _bn_setup()
    y = bn(x)
    f = kn.function([x], [y, kn.grad(kn.sum(y * y * y), x)])
    xv = rng.standard_normal((10, 3)) + 3.0
    f(xv)
    np.testing.assert_allclose(bn.running_mean.numpy(), 0.1 * xv.mean(0), rtol=1e-12)
    np.testing.assert_allclose(bn.running_var.numpy(), 0.9 + 0.1 * xv.var(0, ddof=1), rtol=1e-12)


def test_batchnorm_momentum():
    kn.manual_seed(0)
    bn = nn.BatchNorm1d(2, momentum=0.5, dtype="float64")
    x = kn.input("x", (None, 2), "float64")
    xv = np.array([[1.0, 2.0], [3.0, 6.0], [5.0, 10.0]])
    kn.function([x], bn(x))(xv)
    np.testing.assert_allclose(bn.running_mean.numpy(), 0.5 * xv.mean(0), rtol=1e-12)
    np.testing.assert_allclose(bn.running_var.numpy(), 0.5 + 0.5 * xv.var(0, ddof=1), rtol=1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_batchnorm_without_affine(dtype):
    bn = nn.BatchNorm1d(3, affine=False, dtype=dtype)
    assert bn.parameters() == [] and list(bn.state_dict()) == ["running_mean", "running_var"]
    x = kn.input("x", (None, 3), dtype)
    y = bn(x)
    xv = np.random.default_rng(0).standard_normal((6, 3)).astype(dtype)
    out = kn.function([x], y)(xv)
    assert out.dtype == np.dtype(dtype)
    np.testing.assert_allclose(out, _normalize(xv.astype(np.float64), (0,)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(bn.running_mean.numpy(), 0.1 * xv.mean(0), rtol=1e-5)


def test_batchnorm_training_needs_more_than_one_value_per_channel():
    bn, x, *_ = _bn_setup()
    f = kn.function([x], bn(x))
    with pytest.raises(kn.Error, match="batch_norm"):
        f(np.ones((1, 3)))


def test_batchnorm_rejects_wrong_channels():
    x = kn.input("x", (None, 4))
    with pytest.raises(kn.Error, match="BatchNorm1d"):
        nn.BatchNorm1d(3)(x)


# ---------------------------------------------------------------------------------------------
# Other modules against numpy
# ---------------------------------------------------------------------------------------------


def _normalize(a, axes, eps=1e-5):
    mean = a.mean(axis=axes, keepdims=True)
    return (a - mean) / np.sqrt(a.var(axis=axes, keepdims=True) + eps)


def test_layernorm_module():
    layer = nn.LayerNorm((3, 4), dtype="float64")
    rng = np.random.default_rng(0)
    w, b = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    layer.load_state_dict({"weight": w, "bias": b})
    x = kn.input("x", (None, 3, 4), "float64")
    xv = rng.standard_normal((2, 3, 4)) * 3 + 1
    for training in (True, False):  # no mode dependence
        out = kn.function([x], layer(x), training=training)(xv)
        np.testing.assert_allclose(out, _normalize(xv, (1, 2)) * w + b, rtol=1e-10, atol=1e-12)


def test_groupnorm_module():
    layer = nn.GroupNorm(2, 4, dtype="float64")
    rng = np.random.default_rng(1)
    w, b = rng.standard_normal(4), rng.standard_normal(4)
    layer.weight.assign(w)
    layer.bias.assign(b)
    x = kn.input("x", (None, 4, 5), "float64")
    xv = rng.standard_normal((3, 4, 5))
    out = kn.function([x], layer(x))(xv)
    expected = _normalize(xv.reshape(3, 2, 10), (2,)).reshape(3, 4, 5) * w[:, None] + b[:, None]
    np.testing.assert_allclose(out, expected, rtol=1e-10, atol=1e-12)
    with pytest.raises(kn.Error):
        nn.GroupNorm(3, 4)


def test_embedding_module_and_its_gradient():
    kn.manual_seed(0)
    layer = nn.Embedding(10, 3, dtype="float64")
    idx = kn.input("idx", (None, 5), "int64")
    y = layer(idx)
    assert y.shape == (None, 5, 3)
    g = kn.grad(kn.sum(y), layer.weight)
    iv = np.array([[0, 3, 3, 9, 1], [3, 0, 2, 2, 2]])
    out, gv = kn.function([idx], [y, g])(iv)
    np.testing.assert_array_equal(out, layer.weight.numpy()[iv])
    np.testing.assert_array_equal(gv, np.bincount(iv.ravel(), minlength=10)[:, None] * np.ones((1, 3)))


def test_prelu_and_maxout_modules():
    kn.manual_seed(0)
    prelu = nn.PReLU(3, init=0.1, dtype="float64")
    maxout = nn.Maxout(3, 2, pieces=4, dtype="float64")
    x = kn.input("x", (None, 3), "float64")
    rng = np.random.default_rng(2)
    xv = rng.standard_normal((5, 3))
    a, m, gw = kn.function([x], [prelu(x), maxout(x), kn.grad(kn.sum(prelu(x)), prelu.weight)])(xv)
    np.testing.assert_allclose(a, np.where(xv > 0, xv, 0.1 * xv), rtol=1e-12)
    np.testing.assert_allclose(gw, np.minimum(xv, 0).sum(0), rtol=1e-12)
    lin = maxout.state_dict()
    assert list(lin) == ["linear.weight", "linear.bias"] and lin["linear.weight"].shape == (8, 3)
    z = xv @ lin["linear.weight"].T + lin["linear.bias"]
    np.testing.assert_allclose(m, z.reshape(5, 2, 4).max(axis=2), rtol=1e-12)


def test_activation_modules_match_functions():
    x = kn.input("x", (4, 5), "float64")
    xv = np.random.default_rng(3).standard_normal((4, 5))
    pairs = [
        (nn.ReLU(), np.maximum(xv, 0)),
        (nn.LeakyReLU(negative_slope=0.2), np.where(xv > 0, xv, 0.2 * xv)),
        (nn.ELU(alpha=0.5), np.where(xv > 0, xv, 0.5 * np.expm1(np.minimum(xv, 0)))),
        (nn.Sigmoid(), 1 / (1 + np.exp(-xv))),
        (nn.Tanh(), np.tanh(xv)),
        (nn.Hardtanh(min_val=-0.5, max_val=0.5), np.clip(xv, -0.5, 0.5)),
        (nn.Softplus(beta=2.0), np.log1p(np.exp(2 * xv)) / 2),
        (nn.Softmax(dim=1), np.exp(xv) / np.exp(xv).sum(1, keepdims=True)),
        (nn.Identity(), xv),
        (nn.Flatten(start_dim=0), xv.reshape(-1)),
    ]
    outs = kn.function([x], [m(x) for m, _ in pairs])(xv)
    for (m, expected), out in zip(pairs, outs):
        np.testing.assert_allclose(out, expected, rtol=1e-12, err_msg=repr(m))
    with pytest.raises(kn.Error):
        nn.LeakyReLU(slope=0.2)


def test_linear_rejects_wrong_features():
    x = kn.input("x", (None, 5))
    with pytest.raises(kn.Error, match="Linear"):
        nn.Linear(4, 2)(x)


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def _twenty_examples():
    rng = np.random.default_rng(0)
    return rng.standard_normal((20, 10)).astype(np.float32), rng.integers(0, 5, 20)


def test_mlp_overfits_twenty_examples():
    kn.manual_seed(0)
    xv, yv = _twenty_examples()
    model = nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 5))
    x, y = kn.input("x", (None, 10)), kn.input("y", (None,), "int64")
    logits = model(x)
    loss = kn.softmax_cross_entropy(logits, y)
    opt = kn.optim.Adam(model.parameters(), lr=1e-2)
    step = kn.function([x, y], loss, updates=opt.updates(loss))
    first = float(step(xv, yv))
    assert abs(first - math.log(5)) < 0.5  # small logits at initialization
    for _ in range(300):
        last = float(step(xv, yv))
    assert last < 1e-2, f"loss {first:.3f} -> {last:.4f}"
    pred = kn.function([x], logits, training=False)(xv)
    assert (pred.argmax(1) == yv).all()


def test_mlp_with_batchnorm_and_dropout_overfits():
    """Training mode (batch stats, dropout) learns; inference (running stats, no dropout) agrees."""
    kn.manual_seed(0)
    xv, yv = _twenty_examples()
    model = nn.Sequential(
        nn.Linear(10, 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Dropout(0.1), nn.Linear(128, 5)
    )
    x, y = kn.input("x", (None, 10)), kn.input("y", (None,), "int64")
    logits = model(x)
    loss = kn.softmax_cross_entropy(logits, y)
    step = kn.function([x, y], loss, updates=kn.optim.Adam(model.parameters(), lr=1e-2).updates(loss))
    for _ in range(300):
        step(xv, yv)
    # a training function without updates still updates the statistics: 200 calls on the one batch
    # bring them to its statistics (0.9**200 of the old values remain)
    forward = kn.function([x], logits)
    for _ in range(200):
        forward(xv)
    bn = model[1]
    h = xv.astype(np.float64) @ model[0].weight.numpy().T + model[0].bias.numpy()
    np.testing.assert_allclose(bn.running_mean.numpy(), h.mean(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(bn.running_var.numpy(), h.var(0, ddof=1), rtol=1e-4, atol=1e-6)
    infer = kn.function([x, y], [logits, loss], training=False)
    pred, eval_loss = infer(xv, yv)
    assert (pred.argmax(1) == yv).all()
    assert eval_loss < 0.05


def test_cross_entropy_gradient_for_class_weights_is_an_error_not_zero():
    z = kn.input("z", (2, 3), "float64")
    w = kn.input("w", (3,), "float64")
    loss = kn.softmax_cross_entropy(z, kn.constant(np.array([0, 2])), w, reduction="sum")
    with pytest.raises(kn.Error, match="class weights is not implemented"):
        kn.grad(loss, [w])
    (gz,) = kn.grad(loss, [z])  # the logits' gradient is fine
    out = kn.function([z, w], gz)(np.zeros((2, 3)), np.ones(3))
    np.testing.assert_allclose(out, [[1 / 3 - 1, 1 / 3, 1 / 3], [1 / 3, 1 / 3, 1 / 3 - 1]])
