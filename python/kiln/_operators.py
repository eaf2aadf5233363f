"""Python operators and methods of kn.Tensor, each a call of the op of the same meaning."""

from __future__ import annotations

from . import ops
from ._graph import Tensor, builds


def _install() -> None:
    binary = {
        "add": ops.add,
        "sub": ops.sub,
        "mul": ops.mul,
        "truediv": ops.div,
        "pow": ops.pow,
        "matmul": ops.matmul,
        "and": ops.logical_and,
        "or": ops.logical_or,
        "xor": ops.logical_xor,
    }
    for name, fn in binary.items():
        setattr(Tensor, f"__{name}__", _forward(fn))
        setattr(Tensor, f"__r{name}__", _reflected(fn))
    for name, fn in {
        "lt": ops.lt,
        "le": ops.le,
        "gt": ops.gt,
        "ge": ops.ge,
        "eq": ops.eq,
        "ne": ops.ne,
    }.items():
        setattr(Tensor, f"__{name}__", _forward(fn))
    Tensor.__neg__ = _forward(ops.neg)
    Tensor.__pos__ = lambda self: self
    Tensor.__abs__ = _forward(ops.abs)
    Tensor.__invert__ = _forward(ops.logical_not)
    Tensor.__getitem__ = _forward(ops.getitem)

    for name in (
        "sum",
        "mean",
        "max",
        "min",
        "prod",
        "var",
        "std",
        "argmax",
        "argmin",
        "logsumexp",
        "exp",
        "log",
        "sqrt",
        "abs",
        "sigmoid",
        "tanh",
        "relu",
        "square",
        "clip",
        "flatten",
        "squeeze",
        "unsqueeze",
        "transpose",
        "permute",
        "reshape",
        "broadcast_to",
        "softmax",
        "log_softmax",
    ):
        setattr(Tensor, name, _forward(getattr(ops, name)))
    Tensor.view = Tensor.reshape
    Tensor.astype = _forward(ops.cast)
    Tensor.T = property(_forward(lambda x: ops.permute(x, list(range(x.ndim))[::-1])))
    Tensor.__hash__ = object.__hash__  # __eq__ is elementwise; identity still hashes


def _forward(fn):
    @builds
    def method(self, *args, **kwargs):
        return (
            fn.__wrapped__(self, *args, **kwargs) if hasattr(fn, "__wrapped__") else fn(self, *args, **kwargs)
        )

    method.__name__ = getattr(fn, "__name__", "method")
    method.__doc__ = fn.__doc__
    return method


def _reflected(fn):
    @builds
    def method(self, other):
        return fn.__wrapped__(other, self)

    return method


_install()
