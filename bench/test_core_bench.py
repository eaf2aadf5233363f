"""Core engine speed: dispatch overhead, GEMM, and a memory-bound elementwise op."""

import numpy as np
import pytest

import kiln as kn

try:
    import torch
except ImportError:  # PyTorch is optional: its rows are skipped
    torch = None

CHAIN = 200


def chain_ops(x, lib):
    """The 200-op elementwise chain, written once for kiln, numpy and torch."""
    for i in range(CHAIN // 4):
        x = lib.tanh(x)
        x = x * 0.5
        x = x + 0.25
        x = lib.exp(x) if i % 2 else lib.sqrt(x * x + 1.0)
    return x


@pytest.fixture(scope="module")
def chain_function():
    with kn.Graph():
        x = kn.input("x", (10,))
        f = kn.function([x], chain_ops(x, kn))
    return f


def test_dispatch_kiln(record, chain_function):
    x = np.linspace(-1, 1, 10, dtype=np.float32)
    record("dispatch: 200-op chain, 10 elts", "kiln", chain_function, x)


def test_dispatch_numpy(record):
    x = np.linspace(-1, 1, 10, dtype=np.float32)
    record("dispatch: 200-op chain, 10 elts", "numpy", chain_ops, x, np)


@pytest.mark.skipif(torch is None, reason="PyTorch is not installed")
def test_dispatch_torch(record):
    x = torch.linspace(-1, 1, 10)
    with torch.no_grad():
        record("dispatch: 200-op chain, 10 elts", "torch", chain_ops, x, torch)


def test_dispatch_is_correct(chain_function):
    x = np.linspace(-1, 1, 10, dtype=np.float32)
    np.testing.assert_allclose(chain_function(x), chain_ops(x.astype(np.float64), np), rtol=1e-4)


@pytest.fixture(scope="module")
def square_matrices():
    rng = np.random.default_rng(0)
    return rng.standard_normal((1024, 1024), dtype=np.float32), rng.standard_normal(
        (1024, 1024), dtype=np.float32
    )


def test_sgemm_kiln(record, square_matrices):
    a, b = square_matrices
    with kn.Graph():
        x, y = kn.input("a", a.shape), kn.input("b", b.shape)
        f = kn.function([x, y], x @ y)
    np.testing.assert_allclose(f(a, b), a @ b, rtol=1e-3, atol=1e-3)
    record("sgemm 1024x1024", "kiln", f, a, b)


def test_sgemm_numpy(record, square_matrices):
    a, b = square_matrices
    record("sgemm 1024x1024", "numpy", np.matmul, a, b)


@pytest.mark.skipif(torch is None, reason="PyTorch is not installed")
def test_sgemm_torch(record, square_matrices):
    a, b = (torch.from_numpy(m) for m in square_matrices)
    record("sgemm 1024x1024", "torch", torch.matmul, a, b)


@pytest.fixture(scope="module")
def big_vectors():
    rng = np.random.default_rng(1)
    n = 16 * 1024 * 1024
    return rng.standard_normal(n, dtype=np.float32), rng.standard_normal(n, dtype=np.float32)


def test_add_kiln(record, big_vectors):
    a, b = big_vectors
    with kn.Graph():
        x, y = kn.input("a", a.shape), kn.input("b", b.shape)
        f = kn.function([x, y], x + y)
    np.testing.assert_array_equal(f(a, b), a + b)
    record("add 16M float32", "kiln", f, a, b)


def test_add_numpy(record, big_vectors):
    a, b = big_vectors
    record("add 16M float32", "numpy", np.add, a, b)


@pytest.mark.skipif(torch is None, reason="PyTorch is not installed")
def test_add_torch(record, big_vectors):
    a, b = (torch.from_numpy(v) for v in big_vectors)
    record("add 16M float32", "torch", torch.add, a, b)
