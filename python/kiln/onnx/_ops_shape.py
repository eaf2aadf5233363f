"""ONNX import handlers: the shape ops.

Shapes, axes, pads, starts and scales must be known at import time; data may be dynamic where the
op allows. A node whose data inputs are all constants is computed now (kn.eval of the same kiln
ops) and yields numpy arrays, so chains like Shape -> Slice -> Concat -> Reshape fold into a
constant shape. Resize, Upsample and the edge/reflect/wrap modes of Pad become kn.take along each
axis with index maps computed in numpy (and weighted sums with interpolation weights for linear and
cubic), which expresses every coordinate mode, rounding and kernel of ONNX's reference exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import onnx

import kiln as kn

from .._graph import Tensor
from ._registry import DYNAMIC, Handler, Unsupported, attrs, numpy_dtype, op

if TYPE_CHECKING:  # _import imports this module to fill the handler table
    from ._import import Ctx


def shape_op(*names: str) -> Callable[[Handler], Handler]:
    return op(*names, fold=True)


def _axis(axis: int, rank: int) -> int:
    if not -rank <= axis < rank:
        raise Unsupported(f"axis {axis} out of range for rank {rank}")
    return axis % rank


def _ints(v: np.ndarray | Sequence[int], dynamic_ok: bool = False) -> list[int]:
    out = [int(i) for i in np.asarray(v).reshape(-1)]
    if not dynamic_ok and DYNAMIC in out:
        raise Unsupported(
            "a dynamic size (the Shape of a tensor with a None dimension) used where kiln needs a number"
        )
    return out


def _static(x: Tensor, dims: Sequence[int], what: str) -> list[int]:
    sizes = [x.shape[d] for d in dims]
    if None in sizes:
        raise Unsupported(f"{what} needs the sizes of axes {list(dims)} known, got shape {x.shape}")
    return sizes


def _optional(ctx: Ctx, node: onnx.NodeProto, i: int, name: str) -> np.ndarray | None:
    """The value of optional input i: None when omitted, else it must be known."""
    return ctx.require(node, i, name) if i < len(node.input) and node.input[i] else None


def _input_or_attr(
    ctx: Ctx, node: onnx.NodeProto, i: int, name: str, since: int, dynamic_ok: bool = False
) -> list[int] | None:
    """An int list given as attribute ``name`` before opset ``since`` and as input i from it on."""
    if ctx.opset < since:
        v = attrs(node).get(name)
        return None if v is None else list(v)
    v = _optional(ctx, node, i, name)
    return None if v is None else _ints(v, dynamic_ok)


# ---- views: Reshape, Flatten, Transpose, Squeeze, Unsqueeze ----


@shape_op("Reshape")
def reshape(ctx: Ctx, node: onnx.NodeProto, inputs: list) -> list:
    x = inputs[0]
    shape = _input_or_attr(ctx, node, 1, "shape", 5, dynamic_ok=True)
    if shape is None:
        raise Unsupported("Reshape without a shape")
    shape = [None if s == DYNAMIC else s for s in shape]  # a size read from a dynamic dim (Shape)
    if not attrs(node).get("allowzero", 0):  # 0 copies the input's size there
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    if None in shape and -1 in shape and shape.count(None) == 1 and list(x.shape).count(None) == 1:
        # x.view(x.size(0), -1), as PyTorch exports it: the dynamic size is x's (the batch), so
        # the -1 is what x's static sizes leave once the target's are taken out
        known = math.prod(d for d in x.shape if d is not None)
        taken = math.prod(d for d in shape if d not in (None, -1))
        if taken and known % taken == 0:
            shape = [known // taken if s == -1 else s for s in shape]
    if None in shape:  # a copied dynamic size: kiln infers one -1
        if -1 in shape or shape.count(None) > 1:
            raise Unsupported(f"Reshape of shape {x.shape} to {shape}: more than one dynamic size")
        shape = [-1 if s is None else s for s in shape]
    return [kn.reshape(x, shape)]


@shape_op("Flatten")
def flatten(ctx: Ctx, node: onnx.NodeProto, inputs: list) -> list:
    x = inputs[0]
    axis = attrs(node).get("axis", 1)
    axis = axis + x.ndim if axis < 0 else axis
    sides = [x.shape[:axis], x.shape[axis:]]
    sizes = [-1 if None in dims else math.prod(dims) for dims in sides]
    if sizes == [-1, -1]:
        raise Unsupported(f"Flatten at axis {axis} of shape {x.shape}: dynamic sizes on both sides")
    return [kn.reshape(x, sizes)]


@shape_op("Transpose")
def transpose(ctx: Ctx, node: onnx.NodeProto, inputs: list) -> list:
    x = inputs[0]
    perm = attrs(node).get("perm", list(reversed(range(x.ndim))))
    return [kn.permute(x, [_axis(p, x.ndim) for p in perm])]


@shape_op("Squeeze")
def squeeze(ctx: Ctx, node: onnx.NodeProto, inputs: list) -> list:
    x = inputs[0]
    axes = _input_or_attr(ctx, node, 1, "axes", 13)
    if axes is None:  # every size-1 dim
        if None in x.shape:
            raise Unsupported(f"Squeeze without axes of shape {x.shape}: which dims are 1 is not known")
        return [kn.squeeze(x)]
    return [kn.squeeze(x, tuple(_axis(a, x.ndim) for a in axes))]


@shape_op("Unsqueeze")
def unsqueeze(ctx: Ctx, node: onnx.NodeProto, inputs: list) -> list:
    x = inputs[0]
    axes = _input_or_attr(ctx, node, 1, "axes", 13)
    rank = x.ndim + len(axes)
    for a in sorted(_axis(a, rank) for a in axes):  # ascending: each is its place in the output
        x = kn.unsqueeze(x, a)
    return [x]


# ---- joining and cutting: Concat, Split, Slice, Gather, GatherElements ----


@shape_op("Concat")
def concat(ctx: Ctx, node: onnx.NodeProto, inputs: list) -> list:
    xs = [t for t in inputs if t is not None]
    axis = attrs(node).get("axis", 1)  # the default of opset 1; later opsets require it
    return [kn.concat(xs, _axis(axis, xs[0].ndim))]


@shape_op("Split")
def split(ctx: Ctx, node: onnx.NodeProto, inputs: list) -> list:
    x = inputs[0]
    a = attrs(node)
    axis = _axis(a.get("axis", 0), x.ndim)
    n = len(node.output)
    sizes = _input_or_attr(ctx, node, 1, "split", 13)
    if sizes is None and ctx.opset < 13 and (given := _optional(ctx, node, 1, "split")) is not None:
        sizes = _ints(given)  # opset 1 also took it as an input
    if sizes is None:
        (dim,) = _static(x, [axis], "Split without sizes")
        if "num_outputs" in a:  # opset 18: ceil-sized chunks, the last one smaller
            n = a["num_outputs"]
            chunk = -(-dim // n)
            sizes = [chunk] * (n - 1) + [dim - chunk * (n - 1)]
        else:
            sizes = [dim // n] * n
    return kn.split(x, sizes, axis)


@shape_op("Slice")
def slice_(ctx: Ctx, node: onnx.NodeProto, inputs: list) -> list:
    x = inputs[0]
    if ctx.opset < 10:
        a = attrs(node)
        starts, ends, axes, steps = a["starts"], a["ends"], a.get("axes"), None
    else:
        starts, ends = (_ints(ctx.require(node, i, n)) for i, n in ((1, "starts"), (2, "ends")))
        axes, steps = (_input_or_attr(ctx, node, i, n, 10) for i, n in ((3, "axes"), (4, "steps")))
    axes = list(range(len(starts))) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    index = [slice(None)] * x.ndim
    for s, e, ax, st in zip(starts, ends, axes, steps):
        ax = _axis(ax, x.ndim)
        dim = x.shape[ax]
        if dim is not None:  # ONNX clamps as numpy does; resolve here, where ends may be +-INT64_MAX
            s, e, st = slice(s, e, st).indices(dim)
            e = None if e < 0 else e  # a negative step that runs past index 0
        index[ax] = slice(s, e, st)
    return [x[tuple(index)]]


@shape_op("Gather")
def gather(ctx: Ctx, node: onnx.NodeProto, inputs: list) -> list:
    x, indices = inputs
    return [kn.take(x, indices, _axis(attrs(node).get("axis", 0), x.ndim))]


@shape_op("GatherElements")
def gather_elements(ctx: Ctx, node: onnx.NodeProto, inputs: list) -> list:
    x, indices = inputs
    return [kn.take_along_axis(x, indices, _axis(attrs(node).get("axis", 0), x.ndim))]


# ---- shapes as values: Shape, Size, ConstantOfShape, Range ----


@shape_op("Shape")
def shape(ctx: Ctx, node: onnx.NodeProto, inputs: list) -> list:
    x = inputs[0]
    a = attrs(node)
    dims = x.shape[a.get("start", 0) : a.get("end", x.ndim)]  # ONNX clamps start/end as a Python slice
    # A dynamic size (the batch) is DYNAMIC: Gather, Slice, Concat and Unsqueeze move it along as
    # data, and Reshape reads it back as "this tensor's own size"
    if None in dims and len(dims) == x.ndim:
        ctx.shape_of[node.output[0]] = x
    return [np.array([DYNAMIC if d is None else d for d in dims], dtype=np.int64)]


@shape_op("Size")
def size(ctx: Ctx, node: onnx.NodeProto, inputs: list) -> list:
    x = inputs[0]
    if None in x.shape:
        raise Unsupported(f"Size of a tensor of dynamic shape {x.shape}")
    return [np.array(math.prod(x.shape), dtype=np.int64)]


@shape_op("ConstantOfShape")
def constant_of_shape(ctx: Ctx, node: onnx.NodeProto, inputs: list) -> list:
    value = attrs(node).get("value", np.zeros(1, np.float32))
    numpy_dtype(onnx.helper.np_dtype_to_tensor_dtype(value.dtype), "ConstantOfShape value")
    like = ctx.shape_of.get(node.input[0])
    if like is not None:  # the shape of a tensor with a dynamic size: a tensor shaped like it
        return [kn.cast(kn.zeros_like(like), value.dtype) + kn.constant(value.reshape(()), dtype=value.dtype)]
    return [np.full(_ints(ctx.require(node, 0, "shape")), value.reshape(-1)[0], dtype=value.dtype)]


@shape_op("Range")
def range_(ctx: Ctx, node: onnx.NodeProto, inputs: list) -> list:
    start, limit, delta = (
        ctx.require(node, i, n).reshape(-1)[0] for i, n in enumerate(("start", "limit", "delta"))
    )
    n = max(math.ceil((limit - start) / delta), 0)
    return [(start + np.arange(n) * delta).astype(np.asarray(start).dtype)]


# ---- broadcasting and repeating: Expand, Tile ----


@shape_op("Expand")
def expand(ctx: Ctx, node: onnx.NodeProto, inputs: list) -> list:
    x = inputs[0]
    like = ctx.shape_of.get(node.input[1])
    if like is not None:  # to the shape of a tensor with a dynamic size: broadcast against it
        return [x + kn.cast(kn.zeros_like(like), x.dtype)]
    target = _ints(ctx.require(node, 1, "shape"))
    # bidirectional broadcast: a 1 in the target keeps x's size (-1 tells kiln so for a dynamic one)
    n = max(len(target), x.ndim)
    dims = [None] * (n - x.ndim) + list(x.shape)
    target = [1] * (n - len(target)) + target
    out = [(-1 if d is None else d) if t == 1 else t for d, t in zip(dims, target)]
    return [kn.broadcast_to(x, out)]


def _repeat(x: Tensor, d: int, k: int, inner: bool) -> Tensor:
    """x repeated k times along axis d: each element (inner, numpy.repeat) or the whole axis
    (numpy.tile), as a broadcast of a new axis merged into d: faster than a gather."""
    y = kn.unsqueeze(x, d + 1 if inner else d)
    y = kn.broadcast_to(y, [-1] * (d + inner) + [k] + [-1] * (x.ndim - d - inner))
    return kn.flatten(y, d, d + 1)


@shape_op("Tile")
def tile(ctx: Ctx, node: onnx.NodeProto, inputs: list) -> list:
    x = inputs[0]
    for d, r in enumerate(_ints(ctx.require(node, 1, "repeats"))):
        if r != 1:
            x = _repeat(x, d, r, inner=False)
    return [x]


# ---- Pad ----


def _pad_index(n: int, before: int, after: int, mode: str) -> np.ndarray:
    """Source index of each output position along one axis padded by ``mode`` (numpy.pad's)."""
    i = np.arange(-before, n + after)
    if mode == "edge":
        return np.clip(i, 0, n - 1)
    if mode == "wrap":
        return i % n
    if n == 1:  # reflect of a single element repeats it
        return np.zeros_like(i)
    i %= 2 * n - 2  # reflect is periodic with period 2n-2
    return np.where(i < n, i, 2 * n - 2 - i)


@shape_op("Pad")
def pad(ctx: Ctx, node: onnx.NodeProto, inputs: list) -> list:
    x = inputs[0]
    a = attrs(node)
    mode = a.get("mode", "constant")
    if ctx.opset < 11:
        pads, value, axes = a.get("pads", a.get("paddings")), a.get("value", 0.0), None
    else:
        pads = _ints(ctx.require(node, 1, "pads"))
        given = _optional(ctx, node, 2, "constant_value")
        value = 0.0 if given is None or given.size == 0 else given.reshape(-1)[0].item()
        axes = _input_or_attr(ctx, node, 3, "axes", 18)
    r = x.ndim
    axes = list(range(r)) if axes is None else [_axis(d, r) for d in axes]
    before, after = [0] * r, [0] * r
    for i, d in enumerate(axes):
        before[d], after[d] = pads[i], pads[len(axes) + i]
    if mode == "constant":  # kn.pad: (before, after) pairs from the last dim; negative ones crop
        return [kn.pad(x, [p for d in reversed(range(r)) for p in (before[d], after[d])], value)]
    if mode not in ("edge", "reflect", "wrap"):
        raise Unsupported(f"Pad mode '{mode}'")
    # negative pads crop first; what remains is padded by gathering along each padded axis
    x = x[tuple(slice(max(-b, 0), min(e, 0) or None) for b, e in zip(before, after))]
    for d in range(r):
        b, e = max(before[d], 0), max(after[d], 0)
        if b or e:
            (n,) = _static(x, [d], f"Pad mode '{mode}'")
            x = kn.take(x, _pad_index(n, b, e, mode), d)
    return [x]


# ---- Resize and Upsample ----


def _source_coords(mode: str, n_in: int, n_out: int, scale: float, roi: tuple[float, float]) -> np.ndarray:
    """The input coordinate of each output position (the formulas of ONNX's reference Resize,
    which use the real-valued resized length ``scale * n_in``)."""
    y = np.arange(n_out, dtype=np.float64)
    length = scale * n_in
    if mode == "align_corners":
        return np.zeros(n_out) if length == 1 else y * (n_in - 1) / (length - 1)
    if mode == "asymmetric":
        return y / scale
    if mode == "tf_crop_and_resize":
        lo, hi = roi
        x = (
            np.full(n_out, (hi - lo) * (n_in - 1) / 2)
            if length == 1
            else y * (hi - lo) * (n_in - 1) / (length - 1)
        )
        return x + lo * (n_in - 1)
    if mode == "pytorch_half_pixel":
        return np.full(n_out, -0.5) if length == 1 else (y + 0.5) / scale - 0.5
    if mode == "half_pixel":
        return (y + 0.5) / scale - 0.5
    if mode == "half_pixel_symmetric":  # centres the output on the input when n_out != scale * n_in
        return n_in / 2 * (1 - n_out / length) + (y + 0.5) / scale - 0.5
    if mode == "tf_half_pixel_for_nn":  # opset 11-12
        return (y + 0.5) / scale
    raise Unsupported(f"Resize coordinate_transformation_mode '{mode}'")


def _nearest(x: np.ndarray, rounding: str, scale: float) -> np.ndarray:
    base = np.floor(x)
    frac = x - base
    up = {
        "round_prefer_floor": frac > 0.5,
        "round_prefer_ceil": frac >= 0.5,
        "floor": np.zeros_like(frac, bool),
        "ceil": frac > 0,
        "simple": frac > 0 if scale < 1 else np.zeros_like(frac, bool),  # opset <= 10 (onnxruntime's)
    }.get(rounding)
    if up is None:
        raise Unsupported(f"Resize nearest_mode '{rounding}'")
    return (base + up).astype(np.int64)


def _cubic(d: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic convolution kernel at distances d >= 0 (zero from 2 on)."""
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return np.where(d <= 1, near, np.where(d < 2, far, 0.0))


def _kernel(mode: str, ratio: np.ndarray, scale: float, a: float, antialias: bool) -> tuple[int, np.ndarray]:
    """(first, weights (n_out, taps)): the neighbours of each output position are left + first,
    left + first + 1, ..., ``ratio`` its distance from ``left`` in (0, 1]. Antialias stretches the
    kernel by 1 / scale when downsampling, normalised to sum 1."""
    support = 1 if mode == "linear" else 2
    s = min(scale, 1.0) if antialias else 1.0
    first = int(np.floor(-support / s) + 1)
    d = np.abs((np.arange(first, 2 - first) - ratio[:, None]) * s)
    w = np.clip(1 - d, 0, 1) if mode == "linear" else _cubic(d, a)
    return first, (w / w.sum(1, keepdims=True) if antialias else w)


def _axis_map(n_in: int, n_out: int, scale: float, roi: tuple[float, float], a: dict, opset: int):
    """(indices (n_out, taps), weights (n_out, taps), extrapolated (n_out,) or None): resizing one
    axis from n_in to n_out as ONNX's reference Resize does, output j = sum_t w[j, t] * x[idx[j, t]]."""
    mode = a.get("mode", "nearest")
    if opset < 11:  # Resize-10 and Upsample: asymmetric coordinates, onnxruntime's nearest rounding
        coord, rounding = "asymmetric", "simple"
    else:
        coord = a.get("coordinate_transformation_mode", "half_pixel")
        rounding = a.get("nearest_mode", "round_prefer_floor")
    x = _source_coords(coord, n_in, n_out, scale, roi)
    outside = (x < 0) | (x > n_in - 1) if coord == "tf_crop_and_resize" else None
    if mode == "nearest":
        idx = np.clip(_nearest(x, rounding, scale), 0, n_in - 1)[:, None]
        return idx, np.ones(idx.shape), outside
    if mode not in ("linear", "bilinear", "cubic"):
        raise Unsupported(f"Resize mode '{mode}'")
    left = np.floor(x)
    ratio = np.where(x == left, 1.0, x - left)  # an exact coordinate counts as 1 past its left neighbour
    left = (x - ratio).astype(np.int64)
    mode = "linear" if mode == "bilinear" else mode
    first, w = _kernel(mode, ratio, scale, a.get("cubic_coeff_a", -0.75), bool(a.get("antialias", 0)))
    idx = left[:, None] + np.arange(first, first + w.shape[1])
    if a.get("exclude_outside", 0):  # neighbours outside the input weigh nothing; the rest renormalise
        w = np.where((idx < 0) | (idx >= n_in), 0.0, w)
        total = w.sum(1, keepdims=True)
        w /= np.where(total == 0, 1.0, total)
    return np.clip(idx, 0, n_in - 1), w, outside  # clamping = the reference's edge padding


def _resample(x: Tensor, d: int, idx: np.ndarray, w: np.ndarray) -> Tensor:
    """x along axis d replaced by sum_t w[:, t] * x[idx[:, t]]."""
    if idx.shape[1] == 1 and (w == 1).all():  # nearest: a plain gather, exact for every dtype
        n, k = x.shape[d], len(idx) // x.shape[d]
        if k > 1 and np.array_equal(idx[:, 0], np.repeat(np.arange(n), k)):  # an integer upsampling
            return _repeat(x, d, k, inner=True)
        return kn.take(x, idx[:, 0], d)
    bcast = (-1,) + (1,) * (x.ndim - d - 1)
    out = None
    for t in range(idx.shape[1]):
        if w[:, t].any():
            term = kn.take(x, idx[:, t], d) * kn.constant(w[:, t].reshape(bcast).astype(x.dtype))
            out = term if out is None else out + term
    return out


def _resize(ctx: Ctx, x: Tensor, axes: list[int], scales: list[float] | None, sizes: list[int] | None,
            roi: np.ndarray | None, a: dict) -> Tensor:  # fmt: skip
    n_in = [x.shape[d] for d in axes]
    if sizes is not None:
        n_in = _static(x, axes, "Resize to sizes")
        scales = [o / i for o, i in zip(sizes, n_in)]
        policy = a.get("keep_aspect_ratio_policy", "stretch")
        if policy != "stretch":  # one scale for every axis, the sizes rounded half up
            scales = [(min if policy == "not_larger" else max)(scales)] * len(axes)
            sizes = [int(s * i + 0.5) for s, i in zip(scales, n_in)]
    else:
        sizes = [None if i is None else int(math.floor(s * i)) for s, i in zip(scales, n_in)]
    dtype = x.dtype
    if a.get("mode", "nearest") != "nearest" and dtype.kind != "f":  # interpolate integers in float
        x = kn.cast(x, np.float32)
    for k, d in enumerate(axes):  # separable: one axis at a time, in the reference's order
        lohi = (0.0, 1.0) if roi is None or roi.size == 0 else (float(roi[k]), float(roi[len(axes) + k]))
        if math.isclose(scales[k], 1) and sizes[k] == n_in[k] and np.allclose(lohi, (0, 1)):
            continue  # the reference leaves such an axis as it is, whatever the modes; so may a dynamic one
        if n_in[k] is None:
            raise Unsupported(f"Resize of axis {d} of dynamic size (shape {x.shape})")
        idx, w, outside = _axis_map(n_in[k], sizes[k], scales[k], lohi, a, ctx.opset)
        extrapolated = outside is not None and outside.any()
        x = _resample(x, d, idx, w)
        if extrapolated:
            mask = kn.constant(outside.reshape((-1,) + (1,) * (x.ndim - d - 1)))
            x = kn.where(mask, kn.constant(np.array(a.get("extrapolation_value", 0.0), x.dtype)), x)
    if x.dtype != dtype:  # back to integers: rounded (half up; the reference rounds half to even), saturated
        info = np.iinfo(dtype)
        x = kn.cast(kn.clip(kn.floor(x + 0.5), float(info.min), float(info.max)), dtype)
    return x


@shape_op("Resize")
def resize(ctx: Ctx, node: onnx.NodeProto, inputs: list) -> list:
    x = inputs[0]
    a = attrs(node)
    if ctx.opset < 11:  # X, scales
        roi, scales, sizes = None, ctx.require(node, 1, "scales"), None
    else:  # X, roi, scales, sizes; an empty scales means sizes
        roi, scales, sizes = (ctx.value(node, i) for i in (1, 2, 3))
        if a.get("coordinate_transformation_mode") == "tf_crop_and_resize":
            roi = ctx.require(node, 1, "roi")
    if scales is not None and scales.size == 0:
        scales = None
    if sizes is not None and sizes.size == 0:
        sizes = None
    if scales is None and sizes is None:
        raise Unsupported("Resize needs its scales or sizes known when the model is imported")
    axes = [_axis(d, x.ndim) for d in a.get("axes", range(x.ndim))]
    scales = None if scales is None else [float(s) for s in scales.reshape(-1)]
    sizes = None if sizes is None else _ints(sizes)
    return [_resize(ctx, x, axes, scales, sizes, roi, a)]


@shape_op("Upsample")
def upsample(ctx: Ctx, node: onnx.NodeProto, inputs: list) -> list:
    x = inputs[0]
    a = attrs(node)
    if ctx.opset >= 9:
        scales = [float(s) for s in ctx.require(node, 1, "scales").reshape(-1)]
    elif "scales" in a:
        scales = list(a["scales"])
    else:  # opset 1: height and width scales of NCHW
        scales = [1.0, 1.0, a["height_scale"], a["width_scale"]]
    return [_resize(ctx, x, list(range(x.ndim)), scales, None, None, {**a, "mode": a.get("mode", "nearest")})]
