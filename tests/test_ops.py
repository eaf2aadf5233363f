"""The tests the op table drives (DESIGN.md section 9), and op tests outside the table.

The table lives in ``tests/op_table.py`` (its machinery and the core ops),
``tests/op_table_nn.py`` (activations, layers, losses) and ``tests/op_table_conv.py`` (convolution,
pooling, resampling). The tests below check, for every entry and every case: the forward values,
shape and dtype against numpy (float32 and float64), and, for differentiable entries, the float64
gradient against centered differences with ``kn.gradcheck``. Further tests check that the table
covers every registered op, the random ops' statistics, and dtype promotion.
"""

from __future__ import annotations

import itertools
import zlib
from typing import Any

import numpy as np
import op_table_conv  # noqa: F401  (adds the convolution, pooling and resampling entries to OPS)
import op_table_nn  # noqa: F401  (adds the nn entries to OPS)
import pytest
from op_table import OPS, Case, Op, make_input

import kiln as kn

# ---------------------------------------------------------------------------------------------
# Tests driven by the table
# ---------------------------------------------------------------------------------------------

INTERNAL = {
    # relu's gradient, emitted by its VJP (second derivatives: tests/test_function.py)
    "relu_grad",
    # sources
    "input",
    "constant",
    "variable",
    # emitted by VJPs and composite ops, not built directly by users
    "sum_to_like",
    "broadcast_like",
    "reshape_like",
    "full_like",
    "split_like",
    "slice_grad",
    "take_grad",
    "gather_grad",
    "count",
    # the gradient kernels of fused ops, emitted by their VJPs (checked through the ops' gradients)
    "gelu_grad",
    "batch_norm_grad",
    "softmax_cross_entropy_grad",
    "dropout_grad",
    # the gradient kernels of convolution, pooling and upsampling, emitted by their VJPs: checked
    # through the ops' gradients in the table, and their own VJPs by second derivatives in
    # tests/test_conv.py
    "conv_input_grad",
    "conv_weight_grad",
    "max_pool_grad",
    "avg_pool_grad",
    "adaptive_avg_pool_grad",
    "upsample_grad",
}
NOT_IN_TABLE = {
    # random: checked by their statistics below
    "uniform",
    "normal",
    # dropout's mask is random and depends on the function's mode: tests/test_nn.py checks it
    # (the drop rate, the 1/(1-p) scaling, a fresh mask per call, the gradient's mask, inference)
    "dropout",
    # the fused optimizer updates: tests/test_optim.py checks them against hand-computed steps
    "sgd_update",
    "adam_update",
    "adagrad_update",
    "rmsprop_update",
}


def _rng(*parts) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32("/".join(map(str, parts)).encode()))


def _has_float_input(case: Case) -> bool:
    return any(s.is_float for s in case.inputs)


FORWARD = [
    pytest.param(o, c, dt, id=f"{o.name}-{c.id}-{dt}")
    for o in OPS
    for c in o.cases
    for dt in (o.dtypes if _has_float_input(c) else o.dtypes[:1])
]


def _size(case: Case) -> int:
    return sum(int(np.prod(s.shape, dtype=np.int64)) for s in case.inputs)


GRADIENT = [
    pytest.param(o, c, id=f"{o.name}-{c.id}")
    for o in OPS
    if o.grad
    for c in o.cases
    if c.grad
    and _has_float_input(c)
    and all(int(np.prod(s.shape)) > 0 for s in c.inputs if s.is_float)
    and _size(c) <= 80
]


def _outputs(out) -> list:
    return list(out) if isinstance(out, (list, tuple)) else [out]


@pytest.mark.parametrize("entry, case, dtype", FORWARD)
def test_forward(entry: Op, case: Case, dtype: str):
    rng = _rng(entry.name, case.id)
    arrays = [make_input(s, dtype, rng) for s in case.inputs]
    syms = [kn.input(f"x{i}", a.shape, a.dtype) for i, a in enumerate(arrays)]
    outs = _outputs(entry.build(*syms, **case.kw))
    # The reference: numpy on the same arrays gives the dtype and shape; the values are taken from
    # numpy in float64 on the same (exactly representable) values, so that only kiln's rounding counts.
    refs = [np.asarray(r) for r in _outputs(entry.ref(*[a.copy() for a in arrays], **case.kw))]
    wide = [a.astype(np.float64) if a.dtype == np.float32 else a.copy() for a in arrays]
    refs64 = [np.asarray(r) for r in _outputs(entry.ref(*wide, **case.kw))]
    assert len(outs) == len(refs)

    f = kn.function(syms, outs)
    got = f(*arrays)
    for t, g, r, r64 in zip(outs, got, refs, refs64):
        assert t.shape == r.shape, f"symbolic shape {t.shape}, numpy {r.shape}"
        assert t.dtype == r.dtype, f"symbolic dtype {t.dtype}, numpy {r.dtype}"
        assert isinstance(g, np.ndarray)
        assert g.shape == r.shape, f"result shape {g.shape}, numpy {r.shape}"
        assert g.dtype == r.dtype, f"result dtype {g.dtype}, numpy {r.dtype}"
        if r.dtype.kind == "f":
            if r.dtype == np.float32:
                atol = entry.atol32 if case.atol32 is None else case.atol32
                np.testing.assert_allclose(g, r64, rtol=entry.rtol32, atol=atol)
            else:
                np.testing.assert_allclose(g, r64, rtol=1e-10, atol=1e-12)
        else:
            np.testing.assert_array_equal(g, r)
    # a second call of the same function (the cached plan) gives the same result
    again = f(*arrays)
    for g, h in zip(got, again):
        np.testing.assert_array_equal(g, h)


@pytest.mark.parametrize("entry, case", GRADIENT)
def test_gradient(entry: Op, case: Case):
    rng = _rng("grad", entry.name, case.id)
    arrays = [make_input(s, "float64", rng) for s in case.inputs]
    floats = [i for i, s in enumerate(case.inputs) if s.is_float]
    refs = _outputs(entry.ref(*[a.copy() for a in arrays], **case.kw))
    weights = [rng.standard_normal(np.shape(r)) for r in refs]

    def loss(*syms):
        full: list[Any] = [kn.constant(a) for a in arrays]
        for i, s in zip(floats, syms):
            full[i] = s
        total = None
        for o, w in zip(_outputs(entry.build(*full, **case.kw)), weights):
            term = kn.sum(o * kn.constant(w, dtype="float64"))
            total = term if total is None else total + term
        return total

    err = kn.gradcheck(loss, [arrays[i] for i in floats], eps=1e-6)
    tol = entry.grad_tol if case.grad_tol is None else case.grad_tol
    assert err < tol, f"max relative gradient error {err:.3g}"


def test_table_covers_every_registered_op():
    registered = set(kn._core.op_names())
    covered = {name for o in OPS for name in o.registered}
    missing = registered - covered - INTERNAL - NOT_IN_TABLE
    assert not missing, f"registered ops neither in the op table nor listed as internal: {sorted(missing)}"
    unknown = (INTERNAL | NOT_IN_TABLE) - registered
    assert not unknown, f"listed as internal but not registered: {sorted(unknown)}"
    stale = {name for o in OPS for name in o.registered} - registered
    assert not stale, f"the table names ops that are not registered: {sorted(stale)}"


def test_every_registered_op_has_vjp_or_is_marked():
    bad = []
    for name in kn._core.op_names():
        info = kn._core.op_info(name)
        if info["differentiable"] and not info["has_vjp"]:
            bad.append(name)
        if info["kind"] != "source" and not info["has_cpu_kernel"]:
            bad.append(f"{name} (no CPU kernel)")
    assert not bad, f"ops that are differentiable without a VJP: {bad}"


def test_every_differentiable_op_is_gradient_checked():
    checked = {name for o in OPS if o.grad and any(c.grad for c in o.cases) for name in o.registered}
    differentiable = {n for n in kn._core.op_names() if kn._core.op_info(n)["differentiable"]}
    # stop_gradient: tested below; dropout (in NOT_IN_TABLE): its gradient is checked in tests/test_nn.py
    missing = differentiable - checked - INTERNAL - NOT_IN_TABLE - {"stop_gradient"}
    assert not missing, f"differentiable ops without a gradient check in the table: {sorted(missing)}"


def test_non_differentiable_ops_are_marked():
    for name in (
        "eq",
        "ne",
        "lt",
        "le",
        "gt",
        "ge",
        "logical_and",
        "logical_or",
        "logical_xor",
        "logical_not",
        "argmax",
        "argmin",
        "one_hot",
        "uniform",
        "normal",
    ):
        info = kn._core.op_info(name)
        assert not info["differentiable"] and not info["has_vjp"], name


def test_stop_gradient_blocks_the_gradient():
    x = kn.input("x", (3,), "float64")
    y = kn.sum(kn.stop_gradient(x) * x)
    g = kn.function([x], kn.grad(y, x))(np.array([1.0, -2.0, 3.0]))
    np.testing.assert_allclose(g, [1.0, -2.0, 3.0])  # d/dx (c * x) with c = x held constant


def test_sign_has_zero_gradient():
    x = kn.input("x", (3,), "float64")
    g = kn.function([x], kn.grad(kn.sum(kn.sign(x) * x), x))(np.array([1.5, -2.0, 0.5]))
    np.testing.assert_array_equal(g, np.sign([1.5, -2.0, 0.5]))


def test_cast_gradient_between_float_dtypes():
    x = kn.input("x", (3,), "float32")
    w = np.array([0.5, -1.0, 2.0])
    g = kn.function([x], kn.grad(kn.sum(kn.cast(x, "float64") * kn.constant(w, dtype="float64")), x))(
        np.ones(3, np.float32)
    )
    assert g.dtype == np.float32
    np.testing.assert_array_equal(g, w.astype(np.float32))


def test_max_ties_share_the_gradient():
    x = kn.input("x", (4,), "float64")
    g = kn.function([x], kn.grad(kn.max(x), x))(np.array([1.0, 3.0, 3.0, 0.0]))
    np.testing.assert_allclose(g, [0.0, 0.5, 0.5, 0.0])


# ---------------------------------------------------------------------------------------------
# Random ops
# ---------------------------------------------------------------------------------------------

N_DRAWS = 100_000


def _within(value, expected, sd, sigmas=5.0):
    assert abs(value - expected) < sigmas * sd, f"{value} is not within {sigmas} sd ({sd:.3g}) of {expected}"


def test_uniform_moments():
    low, high = -2.0, 3.0
    u = kn.function([], kn.uniform((N_DRAWS,), low=low, high=high, seed=1))()
    assert u.shape == (N_DRAWS,) and u.dtype == np.float32
    assert u.min() >= low and u.max() < high
    var = (high - low) ** 2 / 12
    _within(u.mean(), (low + high) / 2, np.sqrt(var / N_DRAWS))
    _within(u.var(), var, np.sqrt((high - low) ** 4 / 180 / N_DRAWS))
    counts = np.histogram(u, bins=10, range=(low, high))[0]
    expected = N_DRAWS / 10
    chi2 = float(np.sum((counts - expected) ** 2 / expected))
    assert chi2 < 40.0, f"uniform histogram chi2 {chi2} (9 dof) for counts {counts}"


def test_normal_moments():
    mean, std = 1.0, 2.0
    z = kn.function([], kn.normal((N_DRAWS,), mean=mean, std=std, seed=2, dtype="float64"))()
    assert z.shape == (N_DRAWS,) and z.dtype == np.float64
    _within(z.mean(), mean, std / np.sqrt(N_DRAWS))
    _within(z.std(), std, std / np.sqrt(2 * N_DRAWS))
    s = (z - mean) / std
    _within(np.mean(s**3), 0.0, np.sqrt(15 / N_DRAWS))  # skewness
    _within(np.mean(s**4), 3.0, np.sqrt(96 / N_DRAWS))  # kurtosis
    _within(np.mean(np.abs(s) < 1), 0.682689, np.sqrt(0.683 * 0.317 / N_DRAWS))


def test_bernoulli_moments():
    p = 0.3
    b = kn.function([], kn.bernoulli(p, (N_DRAWS,), seed=3))()
    assert b.shape == (N_DRAWS,) and b.dtype == np.float32
    assert set(np.unique(b).tolist()) == {0.0, 1.0}
    _within(b.mean(), p, np.sqrt(p * (1 - p) / N_DRAWS))


def test_bernoulli_extremes():
    z = kn.function([], [kn.bernoulli(0.0, (1000,), seed=1), kn.bernoulli(1.0, (1000,), seed=1)])()
    np.testing.assert_array_equal(z[0], 0.0)
    np.testing.assert_array_equal(z[1], 1.0)


@pytest.mark.parametrize("draw", ["uniform", "normal", "bernoulli"])
def test_random_same_seed_same_first_draw(draw):
    def make(seed):
        if draw == "uniform":
            return kn.uniform((4, 5), seed=seed)
        if draw == "normal":
            return kn.normal((4, 5), seed=seed)
        return kn.bernoulli(0.5, (4, 5), seed=seed)

    t = make(7)
    first = kn.function([], t)()
    assert kn.function([], t)().tolist() == first.tolist()  # a new function over the same node
    with kn.Graph():
        assert kn.function([], make(7))().tolist() == first.tolist()  # a new graph, the same seed
    with kn.Graph():
        assert kn.function([], make(8))().tolist() != first.tolist()  # another seed


@pytest.mark.parametrize("draw", ["uniform", "normal", "bernoulli"])
def test_random_successive_calls_differ(draw):
    t = {
        "uniform": lambda: kn.uniform((4, 5), seed=3),
        "normal": lambda: kn.normal((4, 5), seed=3),
        "bernoulli": lambda: kn.bernoulli(0.5, (4, 5), seed=3),
    }[draw]()
    f = kn.function([], t)
    a, b, c = f(), f(), f()
    assert a.tolist() != b.tolist() and b.tolist() != c.tolist()


def test_random_unseeded_draws_differ_between_nodes():
    f = kn.function([], [kn.uniform((10,)), kn.uniform((10,))])
    a, b = f()
    assert a.tolist() != b.tolist()


def test_random_shape_of_a_tensor():
    x = kn.input("x", (None, 3))
    u = kn.uniform(x, low=5.0, high=6.0, seed=4)
    out = kn.function([x], u)(np.zeros((7, 3), np.float32))
    assert out.shape == (7, 3)
    assert out.min() >= 5.0 and out.max() < 6.0


# ---------------------------------------------------------------------------------------------
# dtype promotion
# ---------------------------------------------------------------------------------------------

DTYPES = ["float32", "float64", "int32", "int64", "uint8", "bool"]


@pytest.mark.parametrize("da, db", list(itertools.product(DTYPES, DTYPES)), ids=lambda d: d)
def test_add_promotion_matches_numpy(da, db):
    a = (np.arange(6).reshape(2, 3) % 4).astype(da)
    b = (np.array([1, 0, 2]) % 2).astype(db)
    x, y = kn.input("a", a.shape, da), kn.input("b", b.shape, db)
    out = kn.add(x, y)
    expected = a + b
    assert expected.dtype == np.result_type(a, b)
    assert out.dtype == expected.dtype, f"{da} + {db}: kiln {out.dtype}, numpy {expected.dtype}"
    got = kn.function([x, y], out)(a, b)
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_python_scalars_adopt_the_tensor_dtype(dtype):
    x = kn.input("x", (3,), dtype)
    outs = [x * 0.5, 0.5 * x, x + 1, 2 - x, x / 3, x**2, kn.maximum(x, 0.0), kn.where(x > 0, x, -1.0)]
    a = np.array([1.0, -2.0, 3.0], dtype)
    got = kn.function([x], outs)(a)
    expected = [a * 0.5, 0.5 * a, a + 1, 2 - a, a / 3, a**2, np.maximum(a, 0.0), np.where(a > 0, a, -1.0)]
    for t, g, e in zip(outs, got, expected):
        assert t.dtype == np.dtype(dtype) and g.dtype == np.dtype(dtype)
        np.testing.assert_allclose(g, e.astype(dtype), rtol=1e-6)


def test_int_tensor_with_int_scalar_stays_int():
    x = kn.input("x", (3,), "int32")
    outs = [x + 1, 3 * x, x - 2]
    got = kn.function([x], outs)(np.array([1, 2, 3], np.int32))
    for t, g in zip(outs, got):
        assert t.dtype == np.int32 and g.dtype == np.int32
    np.testing.assert_array_equal(got[0], [2, 3, 4])
    np.testing.assert_array_equal(got[1], [3, 6, 9])
    np.testing.assert_array_equal(got[2], [-1, 0, 1])
