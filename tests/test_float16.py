"""float16 tensors: conversion to and from every other dtype bit for bit as numpy converts (every
half, the ties between halves, doubles that a float would round twice), and matmul with its
gradient against numpy's float32 product rounded once. On a GPU the same checks run on CUDA."""

from __future__ import annotations

import numpy as np
import pytest

import kiln as kn

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not kn.cuda.is_available(), reason="no CUDA device")),
]
# numpy warns when a value overflows to inf, as it should: here that is the case under test.
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
ALL_HALVES = np.arange(1 << 16, dtype=np.uint16).view(np.float16)


def _cast(x: np.ndarray, dtype: str, device: str) -> np.ndarray:
    with kn.Graph():
        X = kn.input("x", x.shape, x.dtype)
        return kn.function([X], kn.cast(X, dtype), device=device)(x)


def _same_bits(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    nan = np.isnan(want)
    np.testing.assert_array_equal(np.isnan(got), nan)
    bits = {2: np.uint16, 4: np.uint32, 8: np.uint64}[want.itemsize]
    np.testing.assert_array_equal(got[~nan].view(bits), want[~nan].view(bits))


def _floats_around_every_tie() -> np.ndarray:
    """The float32 midpoints between neighbouring finite halves, and the floats just beside each."""
    finite = ALL_HALVES[np.isfinite(ALL_HALVES)].astype(np.float32)
    finite = np.unique(finite[finite >= 0])
    mid = (finite[:-1].astype(np.float64) + finite[1:]) / 2  # exact in float32: halves have 11 bits
    mid = mid.astype(np.float32)
    near = [mid, np.nextafter(mid, np.float32(np.inf)), np.nextafter(mid, np.float32(0))]
    edge = np.array(
        [65504, 65519.99, 65520, 65536, 1e30, np.inf, np.nan, 2.0**-25, 2.0**-26, 1e-40], np.float32
    )
    out = np.concatenate(near + [edge, finite])
    return np.concatenate([out, -out])


@pytest.mark.parametrize("device", DEVICES)
def test_every_half_widens_exactly(device):
    for dtype in ("float32", "float64"):
        _same_bits(_cast(ALL_HALVES, dtype, device), ALL_HALVES.astype(dtype))


@pytest.mark.parametrize("device", DEVICES)
def test_floats_round_to_nearest_even_half(device):
    x = _floats_around_every_tie()
    _same_bits(_cast(x, "float16", device), x.astype(np.float16))
    rng = np.random.default_rng(0)
    wide = (rng.standard_normal(100_000) * 2.0 ** rng.integers(-30, 20, 100_000)).astype(np.float32)
    _same_bits(_cast(wide, "float16", device), wide.astype(np.float16))


@pytest.mark.parametrize("device", DEVICES)
def test_doubles_round_once(device):
    # 1 + 2^-11 + 2^-40 is just above the tie between 1 and the next half: through a float it
    # would become the tie itself and round down to 1.
    d = np.array(
        [1 + 2.0**-11 + 2.0**-40, 1 + 2.0**-11, -(1 + 3 * 2.0**-11 - 2.0**-45), 2.0**-24 * 1.5000001],
        np.float64,
    )
    rng = np.random.default_rng(1)
    mids = _floats_around_every_tie().astype(np.float64)
    jitter = mids * (1 + rng.choice([-1.0, 1.0], mids.size) * 2.0**-35)
    x = np.concatenate([d, jitter, rng.standard_normal(10_000) * 100])
    _same_bits(_cast(x, "float16", device), x.astype(np.float16))
    assert _cast(d[:1], "float16", device)[0] == np.float16(1 + 2.0**-10)


@pytest.mark.parametrize("device", DEVICES)
def test_integers_and_bools_convert_like_numpy(device):
    ints = np.arange(-70000, 70000, 7, dtype=np.int64)
    _same_bits(_cast(ints, "float16", device), ints.astype(np.float16))
    _same_bits(_cast(ints.astype(np.int32), "float16", device), ints.astype(np.int32).astype(np.float16))
    u8 = np.arange(256, dtype=np.uint8)
    _same_bits(_cast(u8, "float16", device), u8.astype(np.float16))
    flags = np.array([True, False])
    _same_bits(_cast(flags, "float16", device), flags.astype(np.float16))
    in_range = ALL_HALVES[np.isfinite(ALL_HALVES) & (np.abs(ALL_HALVES.astype(np.float32)) < 30000)]
    np.testing.assert_array_equal(_cast(in_range, "int64", device), in_range.astype(np.int64))
    np.testing.assert_array_equal(_cast(in_range, "int32", device), in_range.astype(np.int32))
    small = in_range[(in_range >= 0) & (in_range < 256)]
    np.testing.assert_array_equal(_cast(small, "uint8", device), small.astype(np.uint8))
    np.testing.assert_array_equal(_cast(ALL_HALVES, "bool", device), ALL_HALVES.astype(bool))


def _half_product(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.matmul(a.astype(np.float32), b.astype(np.float32)).astype(np.float16)


def _close_in_halves(got: np.ndarray, want: np.ndarray) -> None:
    """Within one half ulp: the float32 sums may run in another order before the one rounding."""
    assert got.dtype == np.float16 and got.shape == want.shape
    np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), rtol=2.0**-10, atol=2.0**-20)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "sa, sb", [((5, 7), (7, 3)), ((2, 33, 64), (64, 17)), ((3, 4, 8), (3, 8, 5)), ((1, 4, 8), (6, 8, 2))]
)
def test_matmul_rounds_the_float32_product_once(device, sa, sb):
    rng = np.random.default_rng(len(sa) * 10 + sa[-1])
    a = rng.standard_normal(sa).astype(np.float16)
    b = rng.standard_normal(sb).astype(np.float16)
    with kn.Graph():
        A, B = kn.input("a", a.shape, "float16"), kn.input("b", b.shape, "float16")
        got = kn.function([A, B], A @ B, device=device)(a, b)
    _close_in_halves(got, _half_product(a, b))


@pytest.mark.parametrize("device", DEVICES)
def test_matmul_gradient_in_float16(device):
    rng = np.random.default_rng(3)
    a = rng.standard_normal((6, 9)).astype(np.float16)
    b = rng.standard_normal((4, 9)).astype(np.float16)
    w = rng.standard_normal((6, 4)).astype(np.float32)
    with kn.Graph():
        A, B = kn.input("a", a.shape, "float16"), kn.input("b", b.shape, "float16")
        loss = kn.sum(kn.cast(A @ kn.transpose(B), "float32") * kn.constant(w))
        ga, gb = kn.function([A, B], kn.grad(loss, [A, B]), device=device)(a, b)
    g = w.astype(np.float16)  # the cast's gradient rounds the float32 seed to half
    _close_in_halves(ga, _half_product(g, b))
    _close_in_halves(gb, _half_product(g.T, a))


def test_float16_variables_keep_their_dtype_and_save(tmp_path):
    a = np.random.default_rng(4).standard_normal((3, 5)).astype(np.float16)
    with kn.Graph():
        W = kn.Parameter(a, name="w", dtype="float16")
        X = kn.input("x", (2, 3), "float16")
        f = kn.function([X], X @ W)
        x = np.ones((2, 3), np.float16)
        np.testing.assert_array_equal(f(x), _half_product(x, a))
        kn.save(tmp_path / "half.kiln", f, name="predict")
    g = kn.load(tmp_path / "half.kiln")
    np.testing.assert_array_equal(g(x), _half_product(x, a))
    safetensors = pytest.importorskip("safetensors.numpy", reason="the safetensors package reads the file")
    stored = safetensors.load_file(str(tmp_path / "half.kiln"))
    _same_bits(stored["w"], a)


def test_ops_without_float16_say_so():
    with kn.Graph():
        X = kn.input("x", (4,), "float16")
        f = kn.function([X], kn.exp(X))
        with pytest.raises(kn.Error, match=r"dtype float16 is not supported.*cast to float32.*\n.*in exp"):
            f(np.ones(4, np.float16))
