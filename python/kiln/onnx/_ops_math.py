"""ONNX import handlers: the math ops (elementwise arithmetic, comparisons, logic, activations,
casts, constants, reductions, softmax, dropout).

A node whose inputs are all import-time constants (initializers that are not trainable, Constant
nodes, values the shape ops computed) is evaluated once with kiln and becomes a known value, so
that shape arithmetic (Shape -> Cast -> Mul -> Reshape) folds into constants."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import onnx

import kiln as kn

from .._graph import Tensor
from ._registry import Handler, Unsupported, attrs, numpy_dtype, op

if TYPE_CHECKING:
    from ._import import Ctx

Inputs = list[Tensor | None]
Outputs = list[Tensor | np.ndarray | None]


def _math_op(*names: str, fold: bool = True) -> Callable[[Handler], Handler]:
    """Registers a handler; with ``fold``, a node of constant inputs gives known values."""
    return op(*names, fold=fold)


def _legacy_broadcast(node: onnx.NodeProto, a: Tensor, b: Tensor) -> Tensor:
    """Opsets < 7: with broadcast=1, b's dimensions align with a's starting at ``axis``
    (default: the trailing ones)."""
    at = attrs(node)
    if not at.get("broadcast", 0) or "axis" not in at:
        return b
    axis = at["axis"] % a.ndim
    return kn.reshape(b, tuple(b.shape) + (1,) * (a.ndim - axis - b.ndim)) if b.ndim else b


def _binary(fn: Callable[[Tensor, Tensor], Tensor]) -> Handler:
    def handler(ctx: Ctx, node: onnx.NodeProto, inputs: Inputs) -> Outputs:
        a, b = inputs
        return [fn(a, _legacy_broadcast(node, a, b))]

    return handler


for _name, _fn in {
    "Add": kn.add,
    "Sub": kn.sub,
    "Mul": kn.mul,
    "Equal": kn.eq,
    "Less": kn.lt,
    "Greater": kn.gt,
    "LessOrEqual": kn.le,
    "GreaterOrEqual": kn.ge,
    "And": kn.logical_and,
    "Or": kn.logical_or,
    "Xor": kn.logical_xor,
}.items():
    _math_op(_name)(_binary(_fn))


def _floor_div(a: Tensor, b: Tensor) -> Tensor:
    """Integer division as kiln's kernel does it (floor); kn.div would give floats."""
    return kn.functional._apply("div", [a, b])[0]


def _div(a: Tensor, b: Tensor) -> Tensor:
    if a.dtype.kind == "f" or b.dtype.kind == "f":
        return kn.div(a, b)
    b = kn.cast(b, a.dtype)
    if a.dtype.kind == "u":
        return _floor_div(a, b)
    # ONNX (as C) truncates toward zero: |a| // |b| with the sign of a * b.
    return _floor_div(kn.abs(a), kn.abs(b)) * (kn.sign(a) * kn.sign(b))


_math_op("Div")(_binary(_div))


@_math_op("Mod")
def _mod(ctx: Ctx, node: onnx.NodeProto, inputs: Inputs) -> Outputs:
    """fmod=0: the remainder takes the divisor's sign (Python's %); fmod=1: the dividend's (C's fmod)."""
    a, b = inputs
    if attrs(node).get("fmod", 0):
        q = kn.div(a, b) if a.dtype.kind == "f" else _div(a, b)
        if a.dtype.kind == "f":  # truncate toward zero
            q = kn.sign(q) * kn.floor(kn.abs(q))
        return [a - q * b]
    q = kn.floor(kn.div(a, b)) if a.dtype.kind == "f" else _floor_div(a, kn.cast(b, a.dtype))
    return [a - q * b]


@_math_op("Pow")
def _pow(ctx: Ctx, node: onnx.NodeProto, inputs: Inputs) -> Outputs:
    x, y = inputs
    if x.dtype == y.dtype:
        return [kn.pow(x, y)]
    # Mixed types (float base, int exponent or the reverse): computed in float64, the result
    # has the base's type (truncated toward zero for an integer base, as ONNX's reference).
    z = kn.pow(kn.cast(x, np.float64), kn.cast(y, np.float64))
    return [kn.cast(z, x.dtype)]


def _unary(fn: Callable[[Tensor], Tensor]) -> Handler:
    return lambda ctx, node, inputs: [fn(inputs[0])]


for _name, _fn in {
    "Sqrt": kn.sqrt,
    "Exp": kn.exp,
    "Log": kn.log,
    "Abs": kn.abs,
    "Neg": kn.neg,
    "Sign": kn.sign,
    "Floor": kn.floor,
    "Ceil": lambda x: -kn.floor(-x),
    "Sin": kn.sin,
    "Cos": kn.cos,
    "Reciprocal": lambda x: 1.0 / x,
    "Not": kn.logical_not,
    "Relu": kn.relu,
    "Sigmoid": kn.sigmoid,
    "Tanh": kn.tanh,
    "Softplus": kn.softplus,
    "Erf": kn.erf,
    "Identity": lambda x: x,
}.items():
    _math_op(_name)(_unary(_fn))


def _variadic(fn: Callable[[Tensor, Tensor], Tensor]) -> Callable[[Inputs], Tensor]:
    return lambda xs: functools.reduce(fn, [x for x in xs if x is not None])


for _name, _reduce in {
    "Max": _variadic(kn.maximum),  # NaN propagates, as ONNX's reference
    "Min": _variadic(kn.minimum),
    "Sum": _variadic(kn.add),
    "Mean": lambda xs: _variadic(kn.add)(xs) / float(len(xs)),
}.items():
    _math_op(_name)(lambda ctx, node, inputs, f=_reduce: [f(inputs)])


@_math_op("Clip")
def _clip(ctx: Ctx, node: onnx.NodeProto, inputs: Inputs) -> Outputs:
    x = inputs[0]
    if len(node.input) > 1:  # opset 11+: optional inputs min, max
        bounds = [inputs[i] if i < len(inputs) else None for i in (1, 2)]
        values = [ctx.value(node, i) for i in (1, 2)]
    else:  # before: attributes
        a = attrs(node)
        bounds, values = [None, None], [a.get("min"), a.get("max")]
    if x.dtype.kind == "f" and all(b is None or v is not None for b, v in zip(bounds, values)):
        lo, hi = (None if v is None else float(v) for v in values)
        if lo is not None and hi is not None and lo > hi:
            lo = hi  # ONNX: min > max gives max everywhere; kn.clip would give min below it
        return [kn.clip(x, lo, hi)]
    # Integers, or bounds known only at run time: max then min, as ONNX defines Clip.
    y = x
    for bound, value, fn in zip(bounds, values, (kn.maximum, kn.minimum)):
        if bound is None and value is not None:
            bound = kn.constant(np.asarray(value), dtype=x.dtype)
        if bound is not None:
            y = fn(y, kn.cast(bound, x.dtype))
    return [y]


@_math_op("Where")
def _where(ctx: Ctx, node: onnx.NodeProto, inputs: Inputs) -> Outputs:
    return [kn.where(*inputs)]


# ---- activations ----


@_math_op("LeakyRelu")
def _leaky_relu(ctx: Ctx, node: onnx.NodeProto, inputs: Inputs) -> Outputs:
    return [kn.leaky_relu(inputs[0], attrs(node).get("alpha", 0.01))]


@_math_op("PRelu")
def _prelu(ctx: Ctx, node: onnx.NodeProto, inputs: Inputs) -> Outputs:
    # The slope broadcasts to x in any layout (kn.prelu wants it per channel on axis 1).
    x, slope = inputs
    return [kn.where(x < 0, x * slope, x)]


@_math_op("Elu")
def _elu(ctx: Ctx, node: onnx.NodeProto, inputs: Inputs) -> Outputs:
    return [kn.elu(inputs[0], attrs(node).get("alpha", 1.0))]


@_math_op("Selu")
def _selu(ctx: Ctx, node: onnx.NodeProto, inputs: Inputs) -> Outputs:
    # ONNX's defaults are kn.selu's constants rounded to float32; any alpha, gamma: gamma * elu.
    a = attrs(node)
    return [
        kn.elu(inputs[0], a.get("alpha", 1.67326319217681884765625))
        * a.get("gamma", 1.05070102214813232421875)
    ]


@_math_op("Gelu")
def _gelu(ctx: Ctx, node: onnx.NodeProto, inputs: Inputs) -> Outputs:
    return [kn.gelu(inputs[0], approximate=attrs(node).get("approximate", "none"))]


def _softmax(fn: Callable[[Tensor, int], Tensor]) -> Handler:
    def handler(ctx: Ctx, node: onnx.NodeProto, inputs: Inputs) -> Outputs:
        x = inputs[0]
        if ctx.opset >= 13:
            return [fn(x, attrs(node).get("axis", -1))]
        # Before opset 13: x flattened to 2-D at axis, normalized over the second dimension.
        axis = attrs(node).get("axis", 1) % x.ndim
        if axis == x.ndim - 1:
            return [fn(x, -1)]
        if sum(d is None for d in x.shape) > 1:
            raise Unsupported(
                f"softmax over axes {axis}.. of a tensor of shape {x.shape} needs its sizes known"
            )
        y = fn(kn.flatten(x, start_dim=axis), -1)
        return [kn.reshape(y, [-1 if d is None else d for d in x.shape])]

    return handler


_math_op("Softmax")(_softmax(kn.softmax))
_math_op("LogSoftmax")(_softmax(kn.log_softmax))


@_math_op("Dropout", fold=False)
def _dropout(ctx: Ctx, node: onnx.NodeProto, inputs: Inputs) -> Outputs:
    x = inputs[0]
    a = attrs(node)
    given = [i < len(inputs) and inputs[i] is not None for i in range(3)]
    ratio = float(ctx.require(node, 1, "Dropout's ratio")) if given[1] else a.get("ratio", 0.5)
    if ctx.opset < 7:  # is_test, whose default 0 means training
        training = not a.get("is_test", 0)
    else:  # since opset 12 an optional input; absent, inference
        training = given[2] and bool(ctx.require(node, 2, "Dropout's training_mode"))
    seed = a.get("seed")
    if training:  # dropout on every run, whatever the function is compiled for
        keep = kn.bernoulli(1.0 - ratio, x, seed=seed, dtype=bool)
        scale = 1.0 / (1.0 - ratio) if ratio < 1 else 0.0
        y, mask = kn.where(keep, x * scale, kn.zeros_like(x)), keep
    else:
        # Inference: the identity; kiln's dropout is that too, and drops when the model is
        # compiled for training (fine-tuning).
        y = kn.dropout(x, ratio, seed=seed) if ratio > 0 else x
        mask = kn.cast(kn.ones_like(x), bool)
    if ctx.opset < 10:
        mask = kn.cast(mask, x.dtype)  # before opset 10 the mask has x's type
    return [y, mask]


# ---- casts and constants ----


@_math_op("Cast")
def _cast(ctx: Ctx, node: onnx.NodeProto, inputs: Inputs) -> Outputs:
    to = attrs(node)["to"]
    return [kn.cast(inputs[0], numpy_dtype(to, "Cast's target"))]


@_math_op("CastLike")
def _cast_like(ctx: Ctx, node: onnx.NodeProto, inputs: Inputs) -> Outputs:
    x, like = inputs
    value = ctx.value(node, 0)
    if value is not None and x.op == "constant":  # only the target's dtype matters
        return [value.astype(like.dtype)]
    return [kn.cast(x, like.dtype)]


@_math_op("Constant")
def _constant(ctx: Ctx, node: onnx.NodeProto, inputs: Inputs) -> Outputs:
    (attr,) = node.attribute
    if attr.name == "value":
        numpy_dtype(attr.t.data_type, "Constant")
        return [np.array(onnx.numpy_helper.to_array(attr.t))]  # a copy: to_array's may be read-only
    if attr.name == "sparse_value":
        numpy_dtype(attr.sparse_tensor.values.data_type, "Constant")
        return [_dense(attr.sparse_tensor)]
    value = attrs(node)[attr.name]
    dtypes = {
        "value_float": np.float32,
        "value_floats": np.float32,
        "value_int": np.int64,
        "value_ints": np.int64,
    }
    if attr.name not in dtypes:
        raise Unsupported(f"Constant's {attr.name} (kiln has no string tensors)")
    return [np.asarray(value, dtypes[attr.name])]


def _dense(sparse: onnx.SparseTensorProto) -> np.ndarray:
    values = onnx.numpy_helper.to_array(sparse.values)
    indices = onnx.numpy_helper.to_array(sparse.indices)
    out = np.zeros(tuple(sparse.dims), values.dtype)
    # indices: (nnz,) linear indices, or (nnz, rank) coordinates.
    if indices.ndim == 1:
        out.reshape(-1)[indices] = values
    else:
        out[tuple(indices.T)] = values
    return out


# ---- reductions ----


def _reduction(fn: Callable[..., Tensor], empty: str | None = None) -> Handler:
    """ReduceX: axes from an attribute (older opsets) or the optional input 1 (ReduceSum since
    13, the others since 18); no axes reduce all unless noop_with_empty_axes. ``empty``: what max
    or min give over an empty set (ONNX: the identity of the operation), where kiln raises."""

    def handler(ctx: Ctx, node: onnx.NodeProto, inputs: Inputs) -> Outputs:
        x = inputs[0]
        a = attrs(node)
        keepdims = bool(a.get("keepdims", 1))
        axes = ctx.require(node, 1, "axes") if len(inputs) > 1 and inputs[1] is not None else a.get("axes")
        if axes is None or len(axes) == 0:
            if a.get("noop_with_empty_axes", 0):
                return [x]
            axes = range(x.ndim)
        axes = sorted({int(i) % x.ndim for i in np.asarray(axes).reshape(-1)}) if x.ndim else []
        if empty and any(x.shape[i] == 0 for i in axes):
            return [_empty_reduction(x, axes, keepdims, empty)]
        y = fn(x, axis=tuple(axes), keepdims=keepdims)
        # kiln sums integers in int64, averages them in float64 and takes max/min of bool as
        # uint8; ONNX keeps the input's type.
        return [kn.cast(y, x.dtype) if y.dtype != x.dtype else y]

    return handler


def _empty_reduction(x: Tensor, axes: Sequence[int], keepdims: bool, which: str) -> np.ndarray:
    shape = [1 if i in axes else d for i, d in enumerate(x.shape) if keepdims or i not in axes]
    if None in shape:
        raise Unsupported(
            f"a max or min over an empty axis of a tensor of shape {x.shape} needs its other sizes known"
        )
    dt = x.dtype
    if dt.kind == "b":
        fill = which == "min"
    elif dt.kind == "f":
        fill = -np.inf if which == "max" else np.inf
    else:
        fill = np.iinfo(dt).min if which == "max" else np.iinfo(dt).max
    return np.full(shape, fill, dt)


_math_op("ReduceSum")(_reduction(kn.sum))
_math_op("ReduceMean")(_reduction(kn.mean))
_math_op("ReduceMax")(_reduction(kn.max, empty="max"))
_math_op("ReduceMin")(_reduction(kn.min, empty="min"))
_math_op("ReduceProd")(_reduction(kn.prod))


def _arg_reduction(fn: Callable[..., Tensor]) -> Handler:
    def handler(ctx: Ctx, node: onnx.NodeProto, inputs: Inputs) -> Outputs:
        x = inputs[0]
        a = attrs(node)
        axis, keepdims = a.get("axis", 0) % x.ndim, bool(a.get("keepdims", 1))
        if not a.get("select_last_index", 0):
            return [fn(x, axis=axis, keepdims=keepdims)]
        # The last extreme: the first one of x reversed along axis, counted from the end.
        n = x.shape[axis]
        if n is None:
            raise Unsupported(f"select_last_index needs the size of axis {axis} of {x.shape} known")
        flipped = x[(slice(None),) * axis + (slice(None, None, -1),)]
        return [(n - 1) - fn(flipped, axis=axis, keepdims=keepdims)]

    return handler


_math_op("ArgMax")(_arg_reduction(kn.argmax))
_math_op("ArgMin")(_arg_reduction(kn.argmin))


@_math_op("TopK")
def _top_k(ctx: Ctx, node: onnx.NodeProto, inputs: Inputs) -> Outputs:
    """Sorted whether or not ``sorted`` asks for it (any order is allowed then); equal values keep
    the lower index first, as ONNX requires."""
    x, k = inputs[0], ctx.value(node, 1)
    if k is None:
        raise Unsupported("TopK's K must be known when the model is imported (an initializer or a Constant)")
    a = attrs(node)
    values, indices = kn.topk(
        x, int(k.reshape(-1)[0]), axis=a.get("axis", -1), largest=bool(a.get("largest", 1))
    )
    return [values, indices]
