"""Weight initializers, as torch.nn.init. Each ``name(shape, ...)`` returns a new numpy array;
each ``name_(param, ...)`` fills a Parameter in place and returns it. Draws come from kiln's
generator, seeded with ``kn.manual_seed``."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ._graph import Error, Parameter

_rng = np.random.default_rng()


def manual_seed(seed: int) -> None:
    """Seeds the generator behind initializers and layer construction (and nothing else)."""
    global _rng
    _rng = np.random.default_rng(seed)


def generator() -> np.random.Generator:
    return _rng


def _fans(shape: Sequence[int]) -> tuple[int, int]:
    if len(shape) < 2:
        raise Error(f"fan in and fan out need at least 2 dimensions, got shape {tuple(shape)}")
    receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """The recommended gain for a nonlinearity (torch.nn.init.calculate_gain)."""
    if nonlinearity in ("linear", "conv1d", "conv2d", "conv3d", "sigmoid", "identity"):
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else param
        return math.sqrt(2.0 / (1 + slope**2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise Error(f"calculate_gain: unknown nonlinearity {nonlinearity!r}")


def _fan(shape, mode: str) -> int:
    fan_in, fan_out = _fans(shape)
    if mode not in ("fan_in", "fan_out"):
        raise Error(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")
    return fan_in if mode == "fan_in" else fan_out


def uniform(shape: Sequence[int], a: float = 0.0, b: float = 1.0, dtype="float32") -> np.ndarray:
    """U(a, b) of the given shape."""
    return _rng.uniform(a, b, tuple(shape)).astype(dtype)


def normal(shape: Sequence[int], mean: float = 0.0, std: float = 1.0, dtype="float32") -> np.ndarray:
    """N(mean, std**2) of the given shape."""
    return (mean + std * _rng.standard_normal(tuple(shape))).astype(dtype)


def constant(shape: Sequence[int], value: float, dtype="float32") -> np.ndarray:
    return np.full(tuple(shape), value, dtype=dtype)


def zeros(shape: Sequence[int], dtype="float32") -> np.ndarray:
    return np.zeros(tuple(shape), dtype=dtype)


def ones(shape: Sequence[int], dtype="float32") -> np.ndarray:
    return np.ones(tuple(shape), dtype=dtype)


def xavier_uniform(shape: Sequence[int], gain: float = 1.0, dtype="float32") -> np.ndarray:
    """Glorot: U(-a, a) with a = gain * sqrt(6 / (fan_in + fan_out))."""
    fan_in, fan_out = _fans(shape)
    a = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return uniform(shape, -a, a, dtype)


def xavier_normal(shape: Sequence[int], gain: float = 1.0, dtype="float32") -> np.ndarray:
    """Glorot: N(0, std**2) with std = gain * sqrt(2 / (fan_in + fan_out))."""
    fan_in, fan_out = _fans(shape)
    return normal(shape, 0.0, gain * math.sqrt(2.0 / (fan_in + fan_out)), dtype)


def kaiming_uniform(
    shape: Sequence[int],
    a: float = 0.0,
    mode: str = "fan_in",
    nonlinearity: str = "leaky_relu",
    dtype="float32",
) -> np.ndarray:
    """He: U(-b, b) with b = gain * sqrt(3 / fan); a is the leaky_relu slope."""
    bound = calculate_gain(nonlinearity, a) * math.sqrt(3.0 / _fan(shape, mode))
    return uniform(shape, -bound, bound, dtype)


def kaiming_normal(
    shape: Sequence[int],
    a: float = 0.0,
    mode: str = "fan_in",
    nonlinearity: str = "leaky_relu",
    dtype="float32",
) -> np.ndarray:
    """He: N(0, std**2) with std = gain / sqrt(fan)."""
    return normal(shape, 0.0, calculate_gain(nonlinearity, a) / math.sqrt(_fan(shape, mode)), dtype)


def orthogonal(shape: Sequence[int], gain: float = 1.0, dtype="float32") -> np.ndarray:
    """A (semi-)orthogonal matrix from the QR of a Gaussian one, over the flattened trailing dims."""
    if len(shape) < 2:
        raise Error(f"orthogonal needs at least 2 dimensions, got {tuple(shape)}")
    rows, cols = shape[0], int(np.prod(shape[1:]))
    a = _rng.standard_normal((max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(a)
    q *= np.sign(np.diag(r))
    if rows < cols:
        q = q.T
    return (gain * q[:rows, :cols]).reshape(tuple(shape)).astype(dtype)


def _in_place(fn):
    def fill(param: Parameter, *args, **kwargs) -> Parameter:
        param.assign(fn(param.shape, *args, dtype=param.dtype, **kwargs))
        return param

    fill.__name__ = fn.__name__ + "_"
    fill.__doc__ = f"Fills a Parameter in place with {fn.__name__}(param.shape, ...)."
    return fill


uniform_ = _in_place(uniform)
normal_ = _in_place(normal)
constant_ = _in_place(constant)
zeros_ = _in_place(zeros)
ones_ = _in_place(ones)
xavier_uniform_ = _in_place(xavier_uniform)
xavier_normal_ = _in_place(xavier_normal)
kaiming_uniform_ = _in_place(kaiming_uniform)
kaiming_normal_ = _in_place(kaiming_normal)
orthogonal_ = _in_place(orthogonal)
glorot_uniform, glorot_normal, he_uniform, he_normal = (
    xavier_uniform,
    xavier_normal,
    kaiming_uniform,
    kaiming_normal,
)
