"""Layers, as torch.nn, with PyTorch's default initialization. Every layer takes ``dtype=``
(float32 by default; float64 for gradient checks)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .. import functional as F
from .. import init, ops
from .._graph import Error, Parameter, Tensor, _caller_site
from .module import Module


def _param(value: np.ndarray, name: str, dtype, trainable: bool = True) -> Parameter:
    return Parameter(value, name=name, dtype=dtype, trainable=trainable)


class Identity(Module):
    def forward(self, x: Tensor) -> Tensor:
        return x


class Flatten(Module):
    """(N, d1, d2, ...) -> (N, d1 * d2 * ...) (dims start_dim..end_dim merged)."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1) -> None:
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x: Tensor) -> Tensor:
        return ops.flatten(x, self.start_dim, self.end_dim)

    def extra_repr(self) -> str:
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class Linear(Module):
    """y = x @ weight.T + bias. weight (out, in) and bias (out,) start U(-1/sqrt(in), 1/sqrt(in)),
    PyTorch's default. x: (..., in) -> (..., out)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dtype="float32") -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        bound = 1.0 / math.sqrt(in_features) if in_features else 0.0
        self.weight = _param(
            init.kaiming_uniform((out_features, in_features), a=math.sqrt(5)), "linear.weight", dtype
        )
        self.bias = (
            _param(init.uniform((out_features,), -bound, bound), "linear.bias", dtype) if bias else None
        )

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] is not None and x.shape[-1] != self.in_features:
            raise Error(
                f"Linear({self.in_features}, {self.out_features}) got input of shape {x.shape} at {_caller_site()}"
            )
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
        )


class Dropout(Module):
    """Inverted dropout with probability p in training functions; the identity in inference ones."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0 <= p <= 1:
            raise Error(f"Dropout: p must be in [0, 1], got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return F.dropout(x, self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class _BatchNorm(Module):
    _ranks: tuple = ()

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True,
                 track_running_stats: bool = True, dtype="float32") -> None:  # fmt: skip
        super().__init__()
        self.num_features, self.eps, self.momentum, self.affine = num_features, eps, momentum, affine
        name = type(self).__name__.lower()
        self.weight = _param(np.ones(num_features), f"{name}.weight", dtype) if affine else None
        self.bias = _param(np.zeros(num_features), f"{name}.bias", dtype) if affine else None
        if not track_running_stats:
            raise Error(f"{type(self).__name__}: track_running_stats=False is not supported")
        self.register_buffer(
            "running_mean", _param(np.zeros(num_features), f"{name}.running_mean", dtype, False)
        )
        self.register_buffer(
            "running_var", _param(np.ones(num_features), f"{name}.running_var", dtype, False)
        )

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim not in self._ranks or x.shape[1] != self.num_features:
            raise Error(f"{type(self).__name__}({self.num_features}) expects input of rank {self._ranks} with "
                        f"{self.num_features} channels on axis 1, got {x.shape} at {_caller_site()}")  # fmt: skip
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, self.momentum, self.eps
        )

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}"


class BatchNorm1d(_BatchNorm):
    """Batch norm of (N, C) or (N, C, L) input; running statistics update on every training call."""

    _ranks = (2, 3)


class BatchNorm2d(_BatchNorm):
    """Batch norm of (N, C, H, W) input, per channel."""

    _ranks = (4,)


class LayerNorm(Module):
    """Normalizes over the trailing normalized_shape dims, with an elementwise affine."""

    def __init__(self, normalized_shape: int | Sequence[int], eps: float = 1e-5, elementwise_affine: bool = True,
                 dtype="float32") -> None:  # fmt: skip
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        self.normalized_shape, self.eps = shape, eps
        self.weight = _param(np.ones(shape), "layernorm.weight", dtype) if elementwise_affine else None
        self.bias = _param(np.zeros(shape), "layernorm.bias", dtype) if elementwise_affine else None

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}"


class GroupNorm(Module):
    """Normalizes num_groups groups of channels per sample, with a per-channel affine."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True,
                 dtype="float32") -> None:  # fmt: skip
        super().__init__()
        if num_channels % num_groups:
            raise Error(f"GroupNorm: {num_channels} channels do not split into {num_groups} groups")
        self.num_groups, self.num_channels, self.eps = num_groups, num_channels, eps
        self.weight = _param(np.ones(num_channels), "groupnorm.weight", dtype) if affine else None
        self.bias = _param(np.zeros(num_channels), "groupnorm.bias", dtype) if affine else None

    def forward(self, x: Tensor) -> Tensor:
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}"


class Embedding(Module):
    """A lookup table (num_embeddings, embedding_dim), N(0, 1) initialized: indices -> vectors."""

    def __init__(self, num_embeddings: int, embedding_dim: int, dtype="float32") -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.weight = _param(init.normal((num_embeddings, embedding_dim)), "embedding.weight", dtype)

    def forward(self, indices: Tensor) -> Tensor:
        return F.embedding(indices, self.weight)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}"


class PReLU(Module):
    """Leaky ReLU with a learned slope: one shared (num_parameters=1) or one per channel."""

    def __init__(self, num_parameters: int = 1, init: float = 0.25, dtype="float32") -> None:
        super().__init__()
        self.weight = _param(np.full(num_parameters, init), "prelu.weight", dtype)

    def forward(self, x: Tensor) -> Tensor:
        return F.prelu(x, self.weight)


class Maxout(Module):
    """max over `pieces` linear maps: (N, in) -> (N, out)."""

    def __init__(self, in_features: int, out_features: int, pieces: int, dtype="float32") -> None:
        super().__init__()
        self.pieces = pieces
        self.linear = Linear(in_features, out_features * pieces, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        return F.maxout(self.linear(x), self.pieces)


def _activation(name: str, fn, doc: str, **defaults):
    def __init__(self, **kwargs) -> None:
        Module.__init__(self)
        unknown = set(kwargs) - set(defaults)
        if unknown:
            raise Error(f"{name}: unknown arguments {sorted(unknown)}")
        self.kwargs = {**defaults, **kwargs}

    def forward(self, x: Tensor) -> Tensor:
        return fn(x, **self.kwargs)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.kwargs.items())

    return type(
        name, (Module,), {"__init__": __init__, "forward": forward, "extra_repr": extra_repr, "__doc__": doc}
    )


ReLU = _activation("ReLU", lambda x: ops.relu(x), "max(x, 0)")
Sigmoid = _activation("Sigmoid", lambda x: ops.sigmoid(x), "1 / (1 + exp(-x))")
Tanh = _activation("Tanh", lambda x: ops.tanh(x), "tanh(x)")
SELU = _activation("SELU", lambda x: F.selu(x), "Scaled ELU")
LeakyReLU = _activation("LeakyReLU", F.leaky_relu, "Leaky ReLU", negative_slope=0.01)
ELU = _activation("ELU", F.elu, "ELU", alpha=1.0)
GELU = _activation("GELU", F.gelu, "GELU", approximate="none")
Softplus = _activation("Softplus", F.softplus, "Softplus", beta=1.0, threshold=20.0)
Hardtanh = _activation("Hardtanh", F.hardtanh, "Hardtanh", min_val=-1.0, max_val=1.0)
Softmax = _activation("Softmax", lambda x, dim: ops.softmax(x, dim), "softmax along dim", dim=-1)
LogSoftmax = _activation(
    "LogSoftmax", lambda x, dim: ops.log_softmax(x, dim), "log_softmax along dim", dim=-1
)
