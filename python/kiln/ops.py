"""kiln's ops as functions of symbolic tensors. Shapes in docstrings use numpy's notation;
broadcasting follows numpy; axis/keepdims follow numpy; names follow PyTorch where both exist."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from . import _core
from ._graph import DTypeLike, Error, Tensor, as_tensor, builds, current_graph, dtype_name, wrap

TensorLike = Any  # a Tensor, a Python scalar, or an array-like (made a constant)
Axis = int | Sequence[int] | None


def _t(x: TensorLike, like: Tensor | None = None) -> Tensor:
    return as_tensor(x, like)


def _pair(a: TensorLike, b: TensorLike) -> tuple[Tensor, Tensor]:
    if isinstance(a, Tensor):
        return a, _t(b, a)
    if isinstance(b, Tensor):
        return _t(a, b), b
    return _t(a), _t(b)


def _w(v, like: Tensor) -> Tensor:
    return wrap(v, like._graph)


def _axes(axis: Axis) -> list[int] | None:
    if axis is None:
        return None
    return [int(axis)] if isinstance(axis, int) else [int(a) for a in axis]


def _binary(op: str, a: TensorLike, b: TensorLike) -> Tensor:
    a, b = _pair(a, b)
    return _w(_core.binary(op, a._v, b._v), a)


def _unary(op: str, x: TensorLike) -> Tensor:
    x = _t(x)
    return _w(_core.unary(op, x._v), x)


# ---- elementwise ----


def _make_binary(op: str, doc: str):
    @builds
    def f(a: TensorLike, b: TensorLike) -> Tensor:
        return _binary(op, a, b)

    f.__name__ = f.__qualname__ = op
    f.__doc__ = doc + " Broadcast: the output shape is numpy's broadcast of a's and b's."
    return f


add = _make_binary("add", "a + b.")
sub = _make_binary("sub", "a - b.")
mul = _make_binary("mul", "a * b.")
div = _make_binary("div", "a / b, true division (integers give float32).")
pow = _make_binary("pow", "a ** b.")
maximum = _make_binary("maximum", "Elementwise max of a and b (NaN propagates).")
minimum = _make_binary("minimum", "Elementwise min of a and b (NaN propagates).")
eq = _make_binary("eq", "a == b, a bool tensor.")
ne = _make_binary("ne", "a != b, a bool tensor.")
lt = _make_binary("lt", "a < b, a bool tensor.")
le = _make_binary("le", "a <= b, a bool tensor.")
gt = _make_binary("gt", "a > b, a bool tensor.")
ge = _make_binary("ge", "a >= b, a bool tensor.")
logical_and = _make_binary("logical_and", "a and b (as bool).")
logical_or = _make_binary("logical_or", "a or b (as bool).")
logical_xor = _make_binary("logical_xor", "a xor b (as bool).")


def _make_unary(op: str, doc: str):
    @builds
    def f(x: TensorLike) -> Tensor:
        return _unary(op, x)

    f.__name__ = f.__qualname__ = op
    f.__doc__ = doc + " Elementwise; the output has x's shape."
    return f


neg = _make_unary("neg", "-x.")
exp = _make_unary("exp", "e ** x (integers become float32).")
log = _make_unary("log", "Natural logarithm.")
sqrt = _make_unary("sqrt", "Square root.")
rsqrt = _make_unary("rsqrt", "1 / sqrt(x).")
abs = _make_unary("abs", "|x|.")
sign = _make_unary("sign", "-1, 0 or 1 (gradient zero).")
square = _make_unary("square", "x * x.")
sigmoid = _make_unary("sigmoid", "1 / (1 + exp(-x)), computed stably.")
tanh = _make_unary("tanh", "Hyperbolic tangent.")
relu = _make_unary("relu", "max(x, 0).")
logical_not = _make_unary("logical_not", "not x (as bool).")
floor = _make_unary("floor", "The largest integer <= x (gradient zero).")
cos = _make_unary("cos", "Cosine.")
sin = _make_unary("sin", "Sine.")


@builds
def erf(x: TensorLike) -> Tensor:
    """The error function, 2 / sqrt(pi) * integral of exp(-t**2) from 0 to x (integers become
    float32). Elementwise; the output has x's shape."""
    x = _t(x)
    return _unary("erf", x if x.dtype.kind == "f" else cast(x, "float32"))


@builds
def clip(x: TensorLike, min: float | None = None, max: float | None = None) -> Tensor:
    """x limited to [min, max] (either bound may be None). Gradient 1 inside, 0 outside."""
    x = _t(x)
    return _w(_core.clip(x._v, None if min is None else float(min), None if max is None else float(max)), x)


@builds
def where(cond: TensorLike, a: TensorLike, b: TensorLike) -> Tensor:
    """a where cond is true, else b; all three broadcast together."""
    a, b = _pair(a, b)
    cond = _t(cond, a)
    return _w(_core.where(cond._v, a._v, b._v), a)


@builds
def cast(x: TensorLike, dtype: DTypeLike) -> Tensor:
    """x converted to ``dtype``; same shape."""
    x = _t(x)
    return _w(_core.cast(x._v, dtype_name(dtype)), x)


@builds
def stop_gradient(x: Tensor) -> Tensor:
    """x, with no gradient flowing back through it."""
    return _w(_core.stop_gradient(x._v), x)


# ---- reductions ----


def _make_reduce(op: str, doc: str):
    @builds
    def f(x: TensorLike, axis: Axis = None, keepdims: bool = False) -> Tensor:
        x = _t(x)
        return _w(_core.reduce(op, x._v, _axes(axis), keepdims), x)

    f.__name__ = f.__qualname__ = op
    f.__doc__ = (
        doc + " over ``axis`` (an int, a tuple, or None for all), as numpy. Shape: x's without the "
        "reduced axes, or with them as 1 when keepdims."
    )
    return f


sum = _make_reduce("sum", "Sum (integers and bool sum to int64)")
mean = _make_reduce("mean", "Mean (integers give float64, as numpy)")
prod = _make_reduce("prod", "Product")
max = _make_reduce("max", "Maximum (ties share the gradient)")
min = _make_reduce("min", "Minimum (ties share the gradient)")
amax, amin = max, min


@builds
def var(x: TensorLike, axis: Axis = None, keepdims: bool = False, ddof: int = 0) -> Tensor:
    """Variance over ``axis`` with numpy's ``ddof`` (0: population variance)."""
    x = _t(x)
    return _w(_core.var(x._v, _axes(axis), keepdims, ddof), x)


@builds
def std(x: TensorLike, axis: Axis = None, keepdims: bool = False, ddof: int = 0) -> Tensor:
    """Standard deviation over ``axis`` with numpy's ``ddof``."""
    x = _t(x)
    return _w(_core.std(x._v, _axes(axis), keepdims, ddof), x)


@builds
def logsumexp(x: TensorLike, axis: Axis = None, keepdims: bool = False) -> Tensor:
    """log(sum(exp(x))) over ``axis``, shifted by the max for stability."""
    x = _t(x)
    return _w(_core.logsumexp(x._v, _axes(axis), keepdims), x)


@builds
def argmax(x: TensorLike, axis: int | None = None, keepdims: bool = False) -> Tensor:
    """Index of the first maximum along ``axis`` (of the flattened x when None); int64."""
    x = _t(x)
    return _w(_core.argmax(x._v, axis, keepdims), x)


@builds
def argmin(x: TensorLike, axis: int | None = None, keepdims: bool = False) -> Tensor:
    """Index of the first minimum along ``axis`` (of the flattened x when None); int64."""
    x = _t(x)
    return _w(_core.argmin(x._v, axis, keepdims), x)


@builds
def topk(x: TensorLike, k: int, axis: int = -1, largest: bool = True) -> tuple[Tensor, Tensor]:
    """The k largest (or smallest, ``largest=False``) entries along ``axis``, best first, and their
    int64 indices, as torch.topk: both of x's shape with that axis k long. NaN ranks above every
    number; equal values keep the lower index first. The values are differentiable."""
    x = _t(x)
    values, indices = _core.topk(x._v, int(k), int(axis), bool(largest))
    return _w(values, x), _w(indices, x)


@builds
def softmax(x: TensorLike, axis: int = -1) -> Tensor:
    """exp(x) / sum(exp(x)) along ``axis``, computed stably. Shape: x's."""
    x = _t(x)
    return _w(_core.softmax(x._v, axis), x)


@builds
def log_softmax(x: TensorLike, axis: int = -1) -> Tensor:
    """x - logsumexp(x) along ``axis``. Shape: x's."""
    x = _t(x)
    return _w(_core.log_softmax(x._v, axis), x)


# ---- linear algebra ----


@builds
def matmul(a: TensorLike, b: TensorLike) -> Tensor:
    """Matrix product with numpy's rules: (..., m, k) @ (..., k, n) -> (..., m, n), batch dims
    broadcast; a 1-d operand is a vector. BLAS-backed for floats."""
    a, b = _pair(a, b)
    return _w(_core.matmul(a._v, b._v), a)


@builds
def transpose(x: Tensor, dim0: int = -2, dim1: int = -1) -> Tensor:
    """x with dimensions dim0 and dim1 swapped (torch.transpose; default: the last two)."""
    return _w(_core.transpose(x._v, dim0, dim1), x)


@builds
def permute(x: Tensor, *dims: int | Sequence[int]) -> Tensor:
    """x with its dimensions reordered: ``permute(x, 0, 2, 1)`` or ``permute(x, (0, 2, 1))``."""
    if len(dims) == 1 and not isinstance(dims[0], int):
        dims = tuple(dims[0])
    return _w(_core.permute(x._v, [int(d) for d in dims]), x)


# ---- shape ----


@builds
def reshape(x: Tensor, *shape: int | Sequence[int]) -> Tensor:
    """x viewed with a new shape (one entry may be -1). No copy."""
    if len(shape) == 1 and not isinstance(shape[0], int):
        shape = tuple(shape[0])
    return _w(_core.reshape(x._v, [int(d) for d in shape]), x)


@builds
def flatten(x: Tensor, start_dim: int = 1, end_dim: int = -1) -> Tensor:
    """Dimensions start_dim..end_dim merged into one. The default keeps the batch dimension,
    as nn.Flatten: (N, C, H, W) -> (N, C*H*W). No copy."""
    return _w(_core.flatten(x._v, start_dim, end_dim), x)


@builds
def squeeze(x: Tensor, axis: Axis = None) -> Tensor:
    """x without size-1 dimensions (those in ``axis``, or all known ones when None)."""
    return _w(_core.squeeze(x._v, _axes(axis)), x)


@builds
def unsqueeze(x: Tensor, axis: int) -> Tensor:
    """x with a new size-1 dimension at ``axis``."""
    return _w(_core.unsqueeze(x._v, axis), x)


expand_dims = unsqueeze


@builds
def broadcast_to(x: TensorLike, shape: Sequence[int]) -> Tensor:
    """x broadcast to ``shape`` (an entry of -1 keeps x's size there), materialised."""
    x = _t(x)
    return _w(_core.broadcast_to(x._v, [int(d) for d in shape]), x)


@builds
def zeros_like(x: Tensor) -> Tensor:
    """Zeros of x's shape and dtype."""
    return _w(_core.zeros_like(x._v), x)


@builds
def ones_like(x: Tensor) -> Tensor:
    """Ones of x's shape and dtype."""
    return _w(_core.ones_like(x._v), x)


@builds
def concat(xs: Sequence[TensorLike], axis: int = 0) -> Tensor:
    """The tensors joined along ``axis``; other dimensions must agree."""
    ts = _list(xs)
    return _w(_core.concat([t._v for t in ts], axis), ts[0])


cat = concatenate = concat


@builds
def stack(xs: Sequence[TensorLike], axis: int = 0) -> Tensor:
    """Same-shaped tensors joined along a new dimension ``axis``."""
    ts = _list(xs)
    return _w(_core.stack([t._v for t in ts], axis), ts[0])


def _list(xs: Sequence[TensorLike]) -> list[Tensor]:
    if isinstance(xs, Tensor) or not len(xs):
        raise Error("expected a non-empty list of tensors")
    first = next((x for x in xs if isinstance(x, Tensor)), None)
    return [_t(x, first) for x in xs]


@builds
def split(x: Tensor, split_size_or_sections: int | Sequence[int], axis: int = 0) -> list[Tensor]:
    """x cut along ``axis`` as torch.split: an int is the size of each chunk (the last may be
    smaller), a list gives every chunk's size."""
    n = x.shape[axis]
    if isinstance(split_size_or_sections, int):
        if n is None:
            raise Error(f"split: axis {axis} of {x.shape} has no known size; give the sizes as a list")
        step = split_size_or_sections
        if step <= 0:
            raise Error(f"split: chunk size must be positive, got {step}")
        sizes = [step] * (n // step) + ([n % step] if n % step else [])
    else:
        sizes = [int(s) for s in split_size_or_sections]
    return [_w(v, x) for v in _core.split(x._v, sizes, axis)]


@builds
def pad(x: Tensor, pad: Sequence[int], value: float = 0.0) -> Tensor:
    """Constant padding as torch.nn.functional.pad: ``pad`` holds (before, after) pairs starting
    from the last dimension, e.g. (1, 1, 2, 2) pads W by 1 and H by 2. Negative pads crop."""
    return _w(_core.pad(x._v, [int(p) for p in pad], float(value)), x)


# ---- indexing ----


@builds
def take(x: Tensor, indices: TensorLike, axis: int = 0) -> Tensor:
    """numpy.take: out = x.shape[:axis] + indices.shape + x.shape[axis+1:]. Negative indices
    count from the end; out-of-range ones raise kn.Error at run time."""
    idx = _index_tensor(indices, x)
    return _w(_core.take(x._v, idx._v, axis), x)


@builds
def index_select(x: Tensor, dim: int, index: TensorLike) -> Tensor:
    """torch.index_select: the entries of 1-d ``index`` along ``dim``."""
    idx = _index_tensor(index, x)
    if idx.ndim != 1:
        raise Error(f"index_select: index must be 1-d, got shape {idx.shape}")
    return _w(_core.take(x._v, idx._v, dim), x)


@builds
def gather(x: Tensor, dim: int, index: TensorLike) -> Tensor:
    """torch.gather: out[i][j] = x[index[i][j]][j] along ``dim``; index has x's rank and its
    shape is the output's."""
    idx = _index_tensor(index, x)
    return _w(_core.gather(x._v, idx._v, dim), x)


@builds
def take_along_axis(x: Tensor, indices: TensorLike, axis: int) -> Tensor:
    """numpy.take_along_axis (the same op as gather)."""
    idx = _index_tensor(indices, x)
    return _w(_core.gather(x._v, idx._v, axis), x)


def _index_tensor(indices: TensorLike, like: Tensor) -> Tensor:
    if isinstance(indices, Tensor):
        return indices
    import numpy as np

    g = like._graph
    return wrap(g._g.constant(np.asarray(indices, dtype=np.int64, order="C")), g)


@builds
def one_hot(indices: Tensor, num_classes: int, dtype: DTypeLike = "float32") -> Tensor:
    """indices.shape + (num_classes,), 1 at each index. float32 by default (torch: int64),
    since it is usually multiplied with float data."""
    return _w(_core.one_hot(indices._v, int(num_classes), dtype_name(dtype)), indices)


# ---- random ----


def _shape_and_like(shape: Any) -> tuple[list[int], Any]:
    if isinstance(shape, Tensor):
        return [], shape._v
    dims = [shape] if isinstance(shape, int) else list(shape)
    if any(d is None for d in dims):
        raise Error(f"random shapes must be fully known, got {tuple(dims)}; pass a tensor to draw its shape")
    return [int(d) for d in dims], None


@builds
def uniform(
    shape: Sequence[int] | Tensor,
    low: float = 0.0,
    high: float = 1.0,
    seed: int | None = None,
    dtype: DTypeLike = "float32",
) -> Tensor:
    """Uniform draws in [low, high), fresh on every call of the function. ``shape`` may be a
    tensor, whose shape is used. A given seed makes the sequence of draws reproducible."""
    dims, like = _shape_and_like(shape)
    g = current_graph()
    return wrap(
        _core.uniform(g._g, dims, low, high, -1 if seed is None else seed, dtype_name(dtype), like), g
    )


@builds
def normal(
    shape: Sequence[int] | Tensor,
    mean: float = 0.0,
    std: float = 1.0,
    seed: int | None = None,
    dtype: DTypeLike = "float32",
) -> Tensor:
    """Gaussian draws N(mean, std**2), fresh on every call; reproducible for a given seed."""
    dims, like = _shape_and_like(shape)
    g = current_graph()
    return wrap(_core.normal(g._g, dims, mean, std, -1 if seed is None else seed, dtype_name(dtype), like), g)


@builds
def bernoulli(
    p: float, shape: Sequence[int] | Tensor, seed: int | None = None, dtype: DTypeLike = "float32"
) -> Tensor:
    """1 with probability p, else 0; fresh on every call; reproducible for a given seed."""
    dims, like = _shape_and_like(shape)
    g = current_graph()
    return wrap(
        _core.bernoulli(g._g, float(p), dims, -1 if seed is None else seed, dtype_name(dtype), like), g
    )


# ---- indexing with x[...] ----


def getitem(x: Tensor, key: Any) -> Tensor:
    """Basic and strided slicing (ints, slices, None, ...) plus one integer-array index."""
    import numpy as np

    key = key if isinstance(key, tuple) else (key,)
    consuming = [k for k in key if k is not None and k is not Ellipsis]
    if len(consuming) > x.ndim:
        raise Error(f"too many indices ({len(consuming)}) for a tensor of shape {x.shape}")
    n_ellipsis = builtins_sum(k is Ellipsis for k in key)  # `in` would compare arrays elementwise
    if n_ellipsis > 1:
        raise Error("an index can only have a single ellipsis ('...')")
    fill = [slice(None)] * (x.ndim - len(consuming))
    entries = []
    for k in key:
        entries.extend(fill if k is Ellipsis else [k])
    if not n_ellipsis:
        entries.extend(fill)

    none = _core.SLICE_NONE
    starts, stops, steps, ints, new_axes = [], [], [], [], []
    advanced = None  # (axis, index tensor)
    ax = out_pos = 0
    for k in entries:
        if k is None:
            new_axes.append(out_pos)
            out_pos += 1
            continue
        if isinstance(k, slice):
            starts.append(none if k.start is None else int(k.start))
            stops.append(none if k.stop is None else int(k.stop))
            steps.append(1 if k.step is None else int(k.step))
            if steps[-1] == 0:
                raise Error("slice step cannot be zero")
            out_pos += 1
        elif isinstance(k, (int, np.integer)) and not isinstance(k, bool):
            k = int(k)
            dim = x.shape[ax]
            if dim is not None and not -dim <= k < dim:
                raise Error(f"index {k} is out of bounds for axis {ax} with size {dim} (shape {x.shape})")
            starts.append(k)
            stops.append(none if k == -1 else k + 1)
            steps.append(1)
            ints.append(ax)
        elif isinstance(k, (Tensor, np.ndarray, list)):
            if advanced is not None:
                raise Error("only one integer-array index is supported; apply them one at a time")
            idx = _index_tensor(k, x)
            if idx.dtype.kind == "b":
                raise Error("boolean-mask indexing has a data-dependent shape; use kn.where instead")
            advanced = (ax, idx)
            starts.append(none), stops.append(none), steps.append(1)
            out_pos += idx.ndim
        else:
            raise Error(f"unsupported index {k!r} (use ints, slices, None, ... or an integer array)")
        ax += 1

    y = x
    if any(s != none or e != none or st != 1 for s, e, st in zip(starts, stops, steps)):
        y = _w(_core.slice(y._v, starts, stops, steps), x)
    if advanced is not None:
        y = _w(_core.take(y._v, advanced[1]._v, advanced[0]), x)
    if ints:
        shift = advanced[1].ndim - 1 if advanced is not None else 0
        y = _w(
            _core.squeeze(y._v, [a + shift if advanced is not None and a > advanced[0] else a for a in ints]),
            x,
        )
    for pos in new_axes:
        y = _w(_core.unsqueeze(y._v, pos), x)
    return y


import builtins as _builtins  # noqa: E402  (sum and max are shadowed above by the ops)

builtins_sum = _builtins.sum

__all__ = [
    "add", "sub", "mul", "div", "pow", "maximum", "minimum", "eq", "ne", "lt", "le", "gt", "ge",
    "logical_and", "logical_or", "logical_xor", "logical_not", "neg", "exp", "log", "sqrt", "rsqrt", "abs",
    "sign", "square", "sigmoid", "tanh", "relu", "floor", "cos", "sin", "erf", "clip", "where", "cast", "stop_gradient",
    "sum", "mean", "prod", "max", "min", "amax", "amin", "var", "std", "logsumexp", "argmax", "argmin", "topk",
    "softmax", "log_softmax", "matmul", "transpose", "permute", "reshape", "flatten", "squeeze", "unsqueeze",
    "expand_dims", "broadcast_to", "zeros_like", "ones_like", "concat", "cat", "concatenate", "stack", "split",
    "pad", "take", "index_select", "gather", "take_along_axis", "one_hot", "uniform", "normal", "bernoulli",
]  # fmt: skip
