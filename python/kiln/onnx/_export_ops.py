"""kiln -> ONNX, op by op: one handler per kiln op (or family of ops), each writing the ONNX nodes
that compute it through the exporter (_export.py)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from onnx import numpy_helper

from .. import _core
from ._export import (
    FLOATS,
    INT64_MAX,
    INT64_MIN,
    ONNX_TYPES,
    ExportError,
    Node,
    _Exporter,
    _handles,
    _known,
    _np_dtype,
)

# ---------------------------------------------------------------- elementwise

_UNARY = {
    "neg": "Neg",
    "abs": "Abs",
    "sign": "Sign",
    "exp": "Exp",
    "log": "Log",
    "sqrt": "Sqrt",
    "sigmoid": "Sigmoid",
    "tanh": "Tanh",
    "floor": "Floor",
    "cos": "Cos",
    "sin": "Sin",
    "logical_not": "Not",
    "erf": "Erf",
}

_BINARY = {
    "add": "Add",
    "sub": "Sub",
    "mul": "Mul",
    "pow": "Pow",
    "maximum": "Max",
    "minimum": "Min",
    "eq": "Equal",
    "lt": "Less",
    "le": "LessOrEqual",
    "gt": "Greater",
    "ge": "GreaterOrEqual",
    "logical_and": "And",
    "logical_or": "Or",
    "logical_xor": "Xor",
}


@_handles(*_UNARY)
def _unary(ex: _Exporter, n: Node) -> list:
    if n.op == "exp" and n.id in ex.softmax:
        x, axis = ex.softmax[n.id]
        return [ex.add("Softmax", [ex.names[x]], {"axis": axis})]
    return [ex.add(_UNARY[n.op], n.ins)]


@_handles("relu")
def _relu(ex: _Exporter, n: Node) -> list:
    dtype = n.out_specs[0][0]
    if dtype in FLOATS:
        return [ex.add("Relu", n.ins)]
    return [ex.add("Max", [n.ins[0], ex.scalar(0, dtype)])]


@_handles("square")
def _square(ex: _Exporter, n: Node) -> list:
    return [ex.add("Mul", [n.ins[0], n.ins[0]])]


@_handles("rsqrt")
def _rsqrt(ex: _Exporter, n: Node) -> list:
    return [ex.add("Reciprocal", [ex.add("Sqrt", n.ins)])]


@_handles(*_BINARY)
def _binary(ex: _Exporter, n: Node) -> list:
    if n.op == "add" and n.id in ex.gemm_bias:
        mm, bias = ex.gemm_bias[n.id]
        m = ex.nodes[mm]
        a, b = (ex.names[tuple(e)] for e in m["inputs"])
        attrs = {
            "transA": m["attrs"].get("transpose_a", 0) or None,
            "transB": m["attrs"].get("transpose_b", 0) or None,
        }
        return [ex.add("Gemm", [a, b, ex.names[bias]], attrs)]
    if n.op == "sub" and n.id in ex.log_softmax:
        x, axis = ex.log_softmax[n.id]
        return [ex.add("LogSoftmax", [ex.names[x]], {"axis": axis})]
    return [ex.add(_BINARY[n.op], n.ins)]


@_handles("ne")
def _ne(ex: _Exporter, n: Node) -> list:
    return [ex.add("Not", [ex.add("Equal", n.ins)])]


@_handles("div")
def _div(ex: _Exporter, n: Node) -> list:
    dtype = n.out_specs[0][0]
    if dtype in FLOATS:
        return [ex.add("Div", n.ins)]
    # kiln divides integers as numpy's //: floor division, 0 where the divisor is 0.
    a, b = n.ins
    zero = ex.add("Equal", [b, ex.scalar(0, dtype)])
    safe = ex.add("Where", [zero, ex.scalar(1, dtype), b])
    exact = ex.add("Sub", [a, ex.add("Mod", [a, safe], {"fmod": 0})])
    return [ex.add("Where", [zero, ex.scalar(0, dtype), ex.add("Div", [exact, safe])])]


@_handles("where")
def _where(ex: _Exporter, n: Node) -> list:
    return [ex.add("Where", n.ins)]


@_handles("clip")
def _clip(ex: _Exporter, n: Node) -> list:
    dtype = n.out_specs[0][0]
    bounds = []
    for key in ("min", "max"):
        v = n.attrs.get(key)
        if v is None or (dtype not in FLOATS and math.isinf(v)):
            bounds.append("")
        else:
            bounds.append(ex.scalar(float(v) if dtype in FLOATS else int(v), dtype))
    while bounds and not bounds[-1]:
        bounds.pop()
    return [ex.add("Clip", [n.ins[0], *bounds])]


@_handles("cast")
def _cast(ex: _Exporter, n: Node) -> list:
    return [ex.cast(n.ins[0], n.attrs["dtype"])]


@_handles("stop_gradient", "dropout")
def _identity(ex: _Exporter, n: Node) -> list:
    return [n.ins[0]]  # the same value: dropout is the identity in an inference function


_BROADCASTING = {"where", "div", "ne", *_BINARY}


@_handles("full_like")
def _full_like(ex: _Exporter, n: Node) -> list:
    """A constant where x's shape is known, or where every consumer is an elementwise op that also
    reads x (its output has x's shape either way: kiln's guarded logsumexp); else
    ConstantOfShape(Shape(x))."""
    dtype, shape = n.out_specs[0]
    value = np.asarray(n.attrs["value"]).astype(_np_dtype(dtype))
    if _known(shape):
        return [ex.const(np.full(shape, value, dtype=value.dtype), base="full")]
    users = ex.consumers.get((n.id, 0), [])
    if ex.uses[(n.id, 0)] == len(users) and all(
        ex.nodes[u]["op"] in _BROADCASTING and n.in_edges[0] in [tuple(e) for e in ex.nodes[u]["inputs"]]
        for u in users
    ):
        return [ex.const(value, base="scalar")]
    fill = numpy_helper.from_array(value.reshape(1), "value")
    return [ex.add("ConstantOfShape", [ex.shape(n.ins[0])], {"value": fill})]


# ---------------------------------------------------------------- activations


@_handles("leaky_relu")
def _leaky_relu(ex: _Exporter, n: Node) -> list:
    return [ex.add("LeakyRelu", n.ins, {"alpha": float(n.attrs.get("negative_slope", 0.01))})]


@_handles("elu")
def _elu(ex: _Exporter, n: Node) -> list:
    return [ex.add("Elu", n.ins, {"alpha": float(n.attrs.get("alpha", 1.0))})]


@_handles("selu")
def _selu(ex: _Exporter, n: Node) -> list:
    return [ex.add("Selu", n.ins, {"alpha": 1.6732632423543772, "gamma": 1.0507009873554805})]


@_handles("softplus")
def _softplus(ex: _Exporter, n: Node) -> list:
    dtype = n.out_specs[0][0]
    x = n.ins[0]
    beta, threshold = float(n.attrs.get("beta", 1.0)), float(n.attrs.get("threshold", 20.0))
    bx = x if beta == 1.0 else ex.add("Mul", [x, ex.scalar(beta, dtype)])
    soft = ex.add("Softplus", [bx])
    if beta != 1.0:
        soft = ex.add("Div", [soft, ex.scalar(beta, dtype)])
    linear = ex.add("Greater", [bx, ex.scalar(threshold, dtype)])  # as torch: x itself above the threshold
    return [ex.add("Where", [linear, x, soft])]


@_handles("gelu")
def _gelu(ex: _Exporter, n: Node) -> list:
    dtype = n.out_specs[0][0]
    x = n.ins[0]
    approximate = n.attrs.get("approximate", "none")
    if ex.opset >= 20:
        return [ex.add("Gelu", [x], {"approximate": "tanh" if approximate == "tanh" else "none"})]
    if approximate == "tanh":  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        cube = ex.add("Mul", [ex.add("Mul", [x, x]), x])
        inner = ex.add("Add", [x, ex.add("Mul", [cube, ex.scalar(0.044715, dtype)])])
        t = ex.add("Tanh", [ex.add("Mul", [inner, ex.scalar(math.sqrt(2 / math.pi), dtype)])])
    else:  # 0.5 x (1 + erf(x / sqrt 2))
        t = ex.add("Erf", [ex.add("Mul", [x, ex.scalar(1 / math.sqrt(2), dtype)])])
    half_x = ex.add("Mul", [x, ex.scalar(0.5, dtype)])
    return [ex.add("Mul", [half_x, ex.add("Add", [t, ex.scalar(1.0, dtype)])])]


# ---------------------------------------------------------------- reductions

_REDUCE = {
    "sum": "ReduceSum",
    "mean": "ReduceMean",
    "prod": "ReduceProd",
    "max": "ReduceMax",
    "min": "ReduceMin",
}


@_handles(*_REDUCE)
def _reduce(ex: _Exporter, n: Node) -> list:
    axes = n.attrs["axes"]
    if not axes:  # kiln reduces over no axis: the identity (ONNX would reduce over all)
        return [n.ins[0]]
    return [ex.reduce(_REDUCE[n.op], n.ins[0], axes, bool(n.attrs.get("keepdims", 0)))]


@_handles("argmax", "argmin")
def _arg(ex: _Exporter, n: Node) -> list:
    attrs = {"axis": int(n.attrs["axis"]), "keepdims": int(n.attrs.get("keepdims", 0))}
    return [ex.add("ArgMax" if n.op == "argmax" else "ArgMin", n.ins, attrs)]


@_handles("topk")
def _topk(ex: _Exporter, n: Node) -> list:
    # ONNX's TopK also keeps the lower index first among equal values
    k = int(n.attrs["k"])
    if k < 1:
        raise ExportError("topk with k = 0 (ONNX's TopK takes a positive K)")
    attrs = {"axis": int(n.attrs["axis"]), "largest": int(n.attrs.get("largest", 1)), "sorted": 1}
    return list(ex.add("TopK", [n.ins[0], ex.ints([k])], attrs, outputs=2))


@_handles("count")
def _count(ex: _Exporter, n: Node) -> list:
    """How many elements a reduction over ``axes`` sees: a constant when those dims are known."""
    dtype = n.attrs["dtype"]
    shape = n.in_specs[0][1]
    axes = [a % len(shape) for a in n.attrs["axes"]] if shape else []
    dims = [shape[a] for a in axes]
    if _known(dims):
        return [ex.scalar(int(np.prod(dims, dtype=np.int64)), dtype)]
    picked = ex.add("Gather", [ex.shape(n.ins[0]), ex.ints(axes)], {"axis": 0})
    return [ex.cast(ex.reduce("ReduceProd", picked, [0], False), dtype)]


@_handles("sum_to_like")
def _sum_to_like(ex: _Exporter, n: Node) -> list:
    """Sums x down to the shape of ``like`` (the gradient of broadcasting): over x's leading axes,
    and over the axes where ``like`` has size 1 and x does not."""
    x = n.ins[0]
    xs, ts = n.in_specs[0][1], n.in_specs[1][1]
    lead = len(xs) - len(ts)
    axes = list(range(lead))
    for i, t in enumerate(ts):
        d = xs[lead + i]
        if t == 1 and d != 1:
            axes.append(lead + i)
        elif t is None and d is not None and d != 1:
            raise ExportError(
                f"summing {xs} to a shape {ts} whose size along axis {i} is only known at run time"
            )
    if not axes:
        return [x]
    y = ex.reduce("ReduceSum", x, axes, True)
    if lead:
        y = ex.add("Squeeze", [y, ex.ints(range(lead))])
    return [y]


# ---------------------------------------------------------------- shapes


@_handles("reshape")
def _reshape(ex: _Exporter, n: Node) -> list:
    target = [int(d) for d in n.attrs["shape"]]
    if 0 in target:  # a literal empty dimension: ONNX's 0 would copy the input's
        if -1 in target or ex.opset < 14:
            raise ExportError(f"reshape to {target}: an empty dimension beside -1 (or before opset 14)")
        return [ex.add("Reshape", [n.ins[0], ex.ints(target)], {"allowzero": 1})]
    return [ex.add("Reshape", [n.ins[0], ex.ints(target)])]


@_handles("flatten")
def _flatten(ex: _Exporter, n: Node) -> list:
    shape = n.in_specs[0][1]
    r = len(shape)
    if r == 0:
        return [ex.add("Reshape", [n.ins[0], ex.ints([1])])]
    b, e = n.attrs["start_dim"] % r, n.attrs["end_dim"] % r
    if b == 1 and e == r - 1:
        return [ex.add("Flatten", n.ins, {"axis": 1})]
    pieces: list[Any] = [(i, i + 1) for i in range(b)] + [(b, e + 1)] + [(i, i + 1) for i in range(e + 1, r)]
    return [ex.reshape(n.ins[0], shape, pieces)]


@_handles("reshape_like")
def _reshape_like(ex: _Exporter, n: Node) -> list:
    shape = n.out_specs[0][1]
    if _known(shape):
        target = ex.ints(shape)
        return [
            ex.add("Reshape", [n.ins[0], target], {"allowzero": 1} if 0 in shape and ex.opset >= 14 else None)
        ]
    return [ex.add("Reshape", [n.ins[0], ex.shape(n.ins[1])])]


@_handles("squeeze")
def _squeeze(ex: _Exporter, n: Node) -> list:
    axes = n.attrs["axes"]
    if not axes:
        return [n.ins[0]]
    return [ex.add("Squeeze", [n.ins[0], ex.ints(axes)])]


@_handles("unsqueeze")
def _unsqueeze(ex: _Exporter, n: Node) -> list:
    return [ex.add("Unsqueeze", [n.ins[0], ex.ints([n.attrs["axis"]])])]


@_handles("permute")
def _permute(ex: _Exporter, n: Node) -> list:
    dims = [int(d) for d in n.attrs["dims"]]
    if dims == list(range(len(dims))):
        return [n.ins[0]]
    return [ex.add("Transpose", n.ins, {"perm": dims})]


@_handles("broadcast_to")
def _broadcast_to(ex: _Exporter, n: Node) -> list:
    if n.in_specs[0][1] == n.out_specs[0][1] and _known(n.out_specs[0][1]):
        return [n.ins[0]]
    target = [1 if d == -1 else int(d) for d in n.attrs["shape"]]  # -1 keeps x's size: Expand's 1 does too
    return [ex.add("Expand", [n.ins[0], ex.ints(target)])]


@_handles("broadcast_like")
def _broadcast_like(ex: _Exporter, n: Node) -> list:
    xs, out = n.in_specs[0][1], n.out_specs[0][1]
    if xs == out and _known(out):
        return [n.ins[0]]
    target = ex.ints(out) if _known(out) else ex.shape(n.ins[1])
    return [ex.add("Expand", [n.ins[0], target])]


@_handles("concat")
def _concat(ex: _Exporter, n: Node) -> list:
    return [ex.add("Concat", n.ins, {"axis": int(n.attrs["axis"])})]


def _split(ex: _Exporter, x: str, sizes: str, axis: int, count: int) -> list:
    if count == 1:
        return [ex.add("Identity", [x])]
    outs = ex.add("Split", [x, sizes], {"axis": axis}, outputs=count)
    return list(outs)


@_handles("split")
def _split_op(ex: _Exporter, n: Node) -> list:
    sizes = [int(s) for s in n.attrs["sizes"]]
    return _split(ex, n.ins[0], ex.ints(sizes), int(n.attrs["axis"]), len(sizes))


@_handles("split_like")
def _split_like(ex: _Exporter, n: Node) -> list:
    axis = int(n.attrs["axis"]) % len(n.in_specs[0][1])
    sizes = [s[1][axis] for s in n.in_specs[1:]]
    if _known(sizes):
        split = ex.ints(sizes)
    else:
        parts = [ex.add("Gather", [ex.shape(like), ex.ints([axis])], {"axis": 0}) for like in n.ins[1:]]
        split = parts[0] if len(parts) == 1 else ex.add("Concat", parts, {"axis": 0})
    return _split(ex, n.ins[0], split, axis, len(sizes))


@_handles("slice")
def _slice(ex: _Exporter, n: Node) -> list:
    none = _core.SLICE_NONE
    starts, ends, axes, steps = [], [], [], []
    for ax, (b, e, s) in enumerate(zip(n.attrs["starts"], n.attrs["stops"], n.attrs["steps"])):
        if b == none:
            b = 0 if s > 0 else INT64_MAX
        if e == none:
            e = INT64_MAX if s > 0 else INT64_MIN
        if b == 0 and e == INT64_MAX and s == 1:
            continue
        starts.append(b)
        ends.append(e)
        axes.append(ax)
        steps.append(s)
    if not axes:
        return [n.ins[0]]
    inputs = [n.ins[0], ex.ints(starts), ex.ints(ends), ex.ints(axes)]
    if any(s != 1 for s in steps):
        inputs.append(ex.ints(steps))
    return [ex.add("Slice", inputs)]


@_handles("pad")
def _pad(ex: _Exporter, n: Node) -> list:
    dtype, shape = n.in_specs[0]
    r = len(shape)
    pads = [int(p) for p in n.attrs["pads"]]  # (before, after) pairs from the last dimension, as torch
    before, after = [0] * r, [0] * r
    for k in range(len(pads) // 2):
        before[r - 1 - k], after[r - 1 - k] = pads[2 * k], pads[2 * k + 1]
    value = float(n.attrs.get("value", 0.0))
    fill = ex.scalar(value if dtype in FLOATS else int(value), dtype)
    return [ex.add("Pad", [n.ins[0], ex.ints(before + after), fill], {"mode": "constant"})]


@_handles("take")
def _take(ex: _Exporter, n: Node) -> list:
    return [ex.add("Gather", n.ins, {"axis": int(n.attrs["axis"])})]


@_handles("gather")
def _gather(ex: _Exporter, n: Node) -> list:
    return [ex.add("GatherElements", n.ins, {"axis": int(n.attrs["axis"])})]


@_handles("one_hot")
def _one_hot(ex: _Exporter, n: Node) -> list:
    dtype = n.attrs["dtype"]
    idx = n.ins[0] if n.in_specs[0][0] == "int64" else ex.cast(n.ins[0], "int64")
    classes = ex.const(np.arange(int(n.attrs["num_classes"]), dtype=np.int64), base="classes")
    hot = ex.add("Equal", [ex.add("Unsqueeze", [idx, ex.ints([-1])]), classes])
    return [hot if dtype == "bool" else ex.cast(hot, dtype)]


# ---------------------------------------------------------------- linear algebra, convolution, pooling


@_handles("matmul")
def _matmul(ex: _Exporter, n: Node) -> list:
    a, b = n.ins
    ta, tb = n.attrs.get("transpose_a", 0), n.attrs.get("transpose_b", 0)
    ra, rb = len(n.in_specs[0][1]), len(n.in_specs[1][1])
    if ra == 2 and rb == 2 and n.out_specs[0][0] in ("float32", "float64"):
        return [ex.add("Gemm", [a, b], {"transA": ta or None, "transB": tb or None})]

    def t(x: str, r: int) -> str:
        perm = list(range(r))
        perm[-2], perm[-1] = perm[-1], perm[-2]
        return ex.add("Transpose", [x], {"perm": perm})

    return [ex.add("MatMul", [t(a, ra) if ta else a, t(b, rb) if tb else b])]


def _conv_attrs(n: Node) -> dict[str, Any]:
    a = n.attrs
    return {
        "kernel_shape": [int(k) for k in n.in_specs[1][1][2:]],
        "strides": [int(s) for s in a["stride"]],
        "pads": [int(p) for p in a["pad_begin"]] + [int(p) for p in a["pad_end"]],
        "dilations": [int(d) for d in a["dilation"]],
        "group": int(a.get("groups", 1)),
    }


@_handles("conv")
def _conv(ex: _Exporter, n: Node) -> list:
    """Conv, and what kiln's compiler fused into it, in order: an inference batch norm (attribute
    bn_eps; gamma, beta, mean and var after the bias), a residual added (attribute residual; the
    last input) and a ReLU."""
    ins = list(n.ins)
    residual = ins.pop() if n.attrs.get("residual", 0) else None
    stats = None
    if "bn_eps" in n.attrs:
        stats, ins = ins[-4:], ins[:-4]
    y = ex.add("Conv", ins, _conv_attrs(n))
    if stats:
        y = ex.add("BatchNormalization", [y, *stats], {"epsilon": float(n.attrs["bn_eps"])})
    if residual is not None:
        y = ex.add("Add", [y, residual])
    return [ex.add("Relu", [y]) if n.attrs.get("relu", 0) else y]


@_handles("conv_transpose")
def _conv_transpose(ex: _Exporter, n: Node) -> list:
    attrs = _conv_attrs(n)
    op = [int(p) for p in n.attrs["output_padding"]]
    if any(op):
        attrs["output_padding"] = op
    return [ex.add("ConvTranspose", n.ins, attrs)]


def _plane_size(ex: _Exporter, x: str, shape: Sequence) -> str:
    """The number of pixels in one (N, C) plane of x, as an int64 scalar."""
    sp = shape[2:]
    if _known(sp):
        return ex.scalar(int(np.prod(sp, dtype=np.int64)), "int64")
    return ex.reduce(
        "ReduceProd", ex.add("Slice", [ex.shape(x), ex.ints([2]), ex.ints([len(shape)])]), [0], False
    )


def _max_pool(ex: _Exporter, n: Node, x: str, attrs: dict[str, Any]) -> list:
    """MaxPool, with kiln's indices (flat within each plane, as torch) when they are used: ONNX
    counts them across the whole tensor."""
    if not n.used(1):
        return [ex.add("MaxPool", [x], attrs), None]
    y, idx = ex.add("MaxPool", [x], attrs, outputs=2)
    return [y, ex.add("Mod", [idx, _plane_size(ex, x, n.in_specs[0][1])])]


def _pool(ex: _Exporter, n: Node, op_type: str) -> tuple[str, dict[str, Any]]:
    """The input and attributes of MaxPool / AveragePool as kiln (and torch) pool. With ceil_mode
    and known sizes, the windows are spelled out as end padding instead (the ceil_mode of ONNX's
    older opsets counts one more window where the last would start in the right padding); an
    average that counts the padding pads explicitly, so that windows stop counting at its end."""
    a = n.attrs
    x = n.ins[0]
    k = [int(v) for v in a["kernel"]]
    st = [int(v) for v in a["stride"]]
    pad = [int(v) for v in a["padding"]]
    attrs: dict[str, Any] = {"kernel_shape": k, "strides": st, "pads": pad + pad}
    if op_type == "AveragePool":
        attrs["count_include_pad"] = int(a.get("count_include_pad", 1))
    if not a.get("ceil_mode", 0):
        return x, attrs
    sizes, outs = n.in_specs[0][1][2:], n.out_specs[0][1][2:]
    if not (_known(sizes) and _known(outs)):
        attrs["ceil_mode"] = 1
        return x, attrs
    if all((i + 2 * p - kk) // s + 1 == o for o, s, kk, i, p in zip(outs, st, k, sizes, pad)):
        return x, attrs  # ceil_mode changes nothing at these sizes
    ends = [max(p, (o - 1) * s + kk - i - p) for o, s, kk, i, p in zip(outs, st, k, sizes, pad)]
    if op_type == "AveragePool" and attrs["count_include_pad"]:
        if any(pad):
            zeros = [0, 0]
            pads = ex.ints(zeros + pad + zeros + pad)
            x = ex.add("Pad", [x, pads, ex.scalar(0.0, n.in_specs[0][0])], {"mode": "constant"})
        attrs["pads"] = [0] * len(pad) + [e - p for e, p in zip(ends, pad)]
        attrs["count_include_pad"] = 0
    else:
        attrs["pads"] = pad + ends
    return x, attrs


@_handles("max_pool")
def _max_pool_op(ex: _Exporter, n: Node) -> list:
    x, attrs = _pool(ex, n, "MaxPool")
    return _max_pool(ex, n, x, attrs)


@_handles("avg_pool")
def _avg_pool(ex: _Exporter, n: Node) -> list:
    x, attrs = _pool(ex, n, "AveragePool")
    return [ex.add("AveragePool", [x], attrs)]


@_handles("adaptive_avg_pool", "adaptive_max_pool")
def _adaptive_pool(ex: _Exporter, n: Node) -> list:
    """Global pooling for a 1x1 output; pooling with a fixed window where the output size divides
    the input's; else the windows of torch's adaptive pooling, one axis at a time."""
    is_max = n.op == "adaptive_max_pool"
    x = n.ins[0]
    shape = n.in_specs[0][1]
    out = [int(o) for o in n.attrs["output_size"]]
    sp = shape[2:]
    wants_idx = is_max and n.used(1)
    if all(o == 1 for o in out) and not wants_idx:
        y = ex.add("GlobalMaxPool" if is_max else "GlobalAveragePool", [x])
        return [y, None] if is_max else [y]
    if not _known(sp):
        raise ExportError(f"adaptive pooling of {shape} to {out}: the spatial size must be known")
    if all(s % o == 0 for s, o in zip(sp, out)):
        k = [s // o for s, o in zip(sp, out)]
        attrs = {"kernel_shape": k, "strides": k}
        if is_max:
            return _max_pool(ex, n, x, attrs)
        return [ex.add("AveragePool", [x], attrs)]
    if wants_idx:
        raise ExportError(f"the indices of adaptive max pooling from {sp} to {out} (not a whole multiple)")
    y = x
    for d, (size, o) in enumerate(zip(sp, out)):
        axis = 2 + d
        if size == o:
            continue
        cells = []
        for i in range(o):
            lo, hi = (i * size) // o, -(-((i + 1) * size) // o)
            part = ex.add("Slice", [y, ex.ints([lo]), ex.ints([hi]), ex.ints([axis])])
            cells.append(ex.reduce("ReduceMax" if is_max else "ReduceMean", part, [axis], True))
        y = cells[0] if len(cells) == 1 else ex.add("Concat", cells, {"axis": axis})
    return [y, None] if is_max else [y]


@_handles("upsample")
def _upsample(ex: _Exporter, n: Node) -> list:
    """Resize: nearest as kiln's (floor of the output index times the step), linear with half
    pixel centres or aligned corners. A user's scale factor sets the step where it differs from
    the ratio of the sizes."""
    x = n.ins[0]
    shape = n.in_specs[0][1]
    size = [int(s) for s in n.attrs["size"]]
    mode = n.attrs["mode"]
    scales = [float(n.attrs.get(f"scale{d}", 0.0)) for d in range(len(size))]
    use_scales = all(s > 0 for s in scales) and any(
        shape[2 + d] is None or abs(1 / scales[d] - shape[2 + d] / size[d]) > 1e-12 for d in range(len(size))
    )
    if use_scales:
        for d, s in enumerate(scales):
            if shape[2 + d] is not None and math.floor(shape[2 + d] * s) != size[d]:
                raise ExportError(f"upsample to {size} with scale factors {scales} from {shape}")
        inputs = [x, "", ex.const(np.asarray([1.0, 1.0, *scales], dtype=np.float32), base="scales")]
    elif _known(shape[2:]) and all(o % i == 0 for o, i in zip(size, shape[2:])):  # whole factors: exact
        factors = [1.0, 1.0, *(o / i for o, i in zip(size, shape[2:]))]
        inputs = [x, "", ex.const(np.asarray(factors, dtype=np.float32), base="scales")]
    elif ex.opset >= 18 or _known(shape[:2]):  # the output size: of the spatial axes only from opset 18
        inputs = [x, "", "", ex.ints(size if ex.opset >= 18 else [*shape[:2], *size])]
    else:
        inputs = [x, "", "", ex.dims(x, shape, [(0, 1), (1, 2), *size])]
    if mode == "nearest":
        attrs = {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}
    else:
        align = n.attrs.get("align_corners", 0)
        attrs = {
            "mode": "linear",
            "coordinate_transformation_mode": "align_corners" if align else "half_pixel",
        }
    if len(inputs) == 4 and ex.opset >= 18:
        attrs["axes"] = list(range(2, len(shape)))
    return [ex.add("Resize", inputs, attrs)]


# ---------------------------------------------------------------- neural-network ops


@_handles("batch_norm")
def _batch_norm(ex: _Exporter, n: Node) -> list:
    """Inference batch norm over the running statistics. Its other outputs, where used: the
    statistics unchanged, the mean used, and 1 / sqrt(var + eps)."""
    x, gamma, beta, mean, var = n.ins
    eps = float(n.attrs["eps"])
    attrs = {"epsilon": eps, "momentum": 1.0 - float(n.attrs["momentum"])}  # ONNX weighs the old value
    outs: list = [ex.add("BatchNormalization", [x, gamma, beta, mean, var], attrs), mean, var, mean, None]
    if n.used(4):
        dtype = n.in_specs[4][0]
        outs[4] = ex.add("Reciprocal", [ex.add("Sqrt", [ex.add("Add", [var, ex.scalar(eps, dtype)])])])
    return outs


@_handles("softmax_cross_entropy")
def _softmax_cross_entropy(ex: _Exporter, n: Node) -> list:
    """Per-sample losses w[y] (logsumexp(z) - z[y]) (with label smoothing: (1 - s) of that plus
    s / C of the sum over all classes) and per-sample weights w[y]; 0 for ignored labels."""
    z, labels = n.ins[0], n.ins[1]
    weights = n.ins[2] if len(n.ins) > 2 else None
    dtype, zshape = n.in_specs[0]
    ignore = int(n.attrs.get("ignore_index", -100))
    smoothing = float(n.attrs.get("label_smoothing", 0.0))
    if n.in_specs[1][0] != "int64":
        labels = ex.cast(labels, "int64")
    ignored = ex.add("Equal", [labels, ex.scalar(ignore, "int64")])
    safe = ex.add("Where", [ignored, ex.scalar(0, "int64"), labels])
    logp = ex.add("LogSoftmax", [z], {"axis": 1})
    col = ex.add("Unsqueeze", [safe, ex.ints([1])])
    nll = ex.add(
        "Neg", [ex.add("Squeeze", [ex.add("GatherElements", [logp, col], {"axis": 1}), ex.ints([1])])]
    )
    if weights is not None:
        wy = ex.add("Gather", [weights, safe], {"axis": 0})
        nll = ex.add("Mul", [nll, wy])
    else:
        wy = None
    loss = nll
    if smoothing > 0:
        weighted = logp if weights is None else ex.add("Mul", [logp, weights])
        smooth = ex.add("Neg", [ex.reduce("ReduceSum", weighted, [1], False)])
        classes = zshape[1]
        if classes is None:
            raise ExportError("label smoothing over a class count only known at run time")
        loss = ex.add(
            "Add",
            [
                ex.add("Mul", [nll, ex.scalar(1 - smoothing, dtype)]),
                ex.add("Mul", [smooth, ex.scalar(smoothing / classes, dtype)]),
            ],
        )
    zero = ex.scalar(0.0, dtype)
    outs = [ex.add("Where", [ignored, zero, loss]), None]
    if n.used(1):  # the condition's shape (N,) broadcasts a scalar weight
        outs[1] = ex.add("Where", [ignored, zero, wy if wy is not None else ex.scalar(1.0, dtype)])
    return outs


@_handles("uniform", "normal")
def _random(ex: _Exporter, n: Node) -> list:
    """ONNX's random draws: the same distribution, other numbers than kiln's."""
    a = n.attrs
    attrs: dict[str, Any] = {"dtype": ONNX_TYPES[a["dtype"]], "seed": float(a["seed"] % (1 << 24))}
    if n.op == "uniform":
        attrs.update(low=float(a["low"]), high=float(a["high"]))
    else:
        attrs.update(mean=float(a["mean"]), scale=float(a["std"]))
    base = "RandomUniform" if n.op == "uniform" else "RandomNormal"
    if n.ins:
        return [ex.add(base + "Like", n.ins, attrs)]
    attrs["shape"] = [int(s) for s in a["shape"]]
    return [ex.add(base, [], attrs)]
