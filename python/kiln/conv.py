"""Convolution, pooling and resampling, as torch.nn.functional (NCHW layout; NCW and NCDHW for
1-d and 3-d). Weights are (out, in / groups, *kernel) for convolutions and (in, out / groups,
*kernel) for transposed ones, as PyTorch's."""

from __future__ import annotations

from collections.abc import Sequence

from . import ops
from ._graph import Error, Tensor, builds
from .functional import _apply

IntOr = int | Sequence[int]


def _tuple(v: IntOr, n: int, name: str) -> list[int]:
    if isinstance(v, int):
        return [v] * n
    v = [int(x) for x in v]
    if len(v) != n:
        raise Error(f"{name} needs {n} values, got {tuple(v)}")
    return v


def _spatial(x: Tensor, dims: int, op: str) -> None:
    if x.ndim != dims + 2:
        shape = ("N", "C") + ("D", "H", "W")[3 - dims :]
        raise Error(f"{op} expects a {dims + 2}-d input {shape}, got shape {x.shape}")


def _conv_padding(padding, kernel: list[int], stride: list[int], dilation: list[int], n: int, name: str):
    if padding == "valid":
        return [0] * n, [0] * n
    if padding == "same":
        if any(s != 1 for s in stride):
            raise Error(f"{name}: padding='same' needs stride 1 (as in PyTorch), got stride {tuple(stride)}")
        total = [d * (k - 1) for d, k in zip(dilation, kernel)]
        return [t // 2 for t in total], [t - t // 2 for t in total]
    if isinstance(padding, str):
        raise Error(f"{name}: padding must be an int, a tuple, 'same' or 'valid', got {padding!r}")
    p = _tuple(padding, n, "padding")
    return p, p


def _conv(x, weight, bias, stride, padding, dilation, groups, dims, name):
    _spatial(x, dims, name)
    if weight.ndim != dims + 2:
        raise Error(f"{name}: weight must be {dims + 2}-d (out, in / groups, *kernel), got {weight.shape}")
    stride, dilation = _tuple(stride, dims, "stride"), _tuple(dilation, dims, "dilation")
    begin, end = _conv_padding(padding, list(weight.shape[2:]), stride, dilation, dims, name)
    inputs = [x, weight] + ([bias] if bias is not None else [])
    attrs = dict(stride=stride, pad_begin=begin, pad_end=end, dilation=dilation, groups=int(groups))
    return _apply("conv", inputs, **attrs)[0]


@builds
def conv1d(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride: IntOr = 1, padding: IntOr | str = 0,
           dilation: IntOr = 1, groups: int = 1) -> Tensor:  # fmt: skip
    """(N, C, W) * (K, C/groups, kw) -> (N, K, W'), W' = (W + 2p - d(kw - 1) - 1) // s + 1."""
    return _conv(x, weight, bias, stride, padding, dilation, groups, 1, "conv1d")


@builds
def conv2d(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride: IntOr = 1, padding: IntOr | str = 0,
           dilation: IntOr = 1, groups: int = 1) -> Tensor:  # fmt: skip
    """(N, C, H, W) * (K, C/groups, kh, kw) -> (N, K, H', W'); padding may be "same" or "valid";
    groups=C with K a multiple of C is a depthwise convolution."""
    return _conv(x, weight, bias, stride, padding, dilation, groups, 2, "conv2d")


@builds
def conv3d(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride: IntOr = 1, padding: IntOr | str = 0,
           dilation: IntOr = 1, groups: int = 1) -> Tensor:  # fmt: skip
    """(N, C, D, H, W) * (K, C/groups, kd, kh, kw) -> (N, K, D', H', W')."""
    return _conv(x, weight, bias, stride, padding, dilation, groups, 3, "conv3d")


def _conv_transpose(x, weight, bias, stride, padding, output_padding, groups, dilation, dims, name):
    _spatial(x, dims, name)
    if weight.ndim != dims + 2:
        raise Error(f"{name}: weight must be {dims + 2}-d (in, out / groups, *kernel), got {weight.shape}")
    p = _tuple(padding, dims, "padding")
    attrs = dict(stride=_tuple(stride, dims, "stride"), pad_begin=p, pad_end=p, dilation=_tuple(dilation, dims, "dilation"),
                 groups=int(groups), output_padding=_tuple(output_padding, dims, "output_padding"))  # fmt: skip
    inputs = [x, weight] + ([bias] if bias is not None else [])
    return _apply("conv_transpose", inputs, **attrs)[0]


@builds
def conv_transpose1d(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride: IntOr = 1, padding: IntOr = 0,
                     output_padding: IntOr = 0, groups: int = 1, dilation: IntOr = 1) -> Tensor:  # fmt: skip
    """The adjoint of conv1d: (N, C, W) -> (N, K, (W-1)s - 2p + d(kw-1) + output_padding + 1)."""
    return _conv_transpose(
        x, weight, bias, stride, padding, output_padding, groups, dilation, 1, "conv_transpose1d"
    )


@builds
def conv_transpose2d(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride: IntOr = 1, padding: IntOr = 0,
                     output_padding: IntOr = 0, groups: int = 1, dilation: IntOr = 1) -> Tensor:  # fmt: skip
    """The adjoint of conv2d, a learnable upsampling: weight (C, K/groups, kh, kw);
    H' = (H - 1) s - 2p + d (kh - 1) + output_padding + 1 (likewise W')."""
    return _conv_transpose(
        x, weight, bias, stride, padding, output_padding, groups, dilation, 2, "conv_transpose2d"
    )


@builds
def conv_transpose3d(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride: IntOr = 1, padding: IntOr = 0,
                     output_padding: IntOr = 0, groups: int = 1, dilation: IntOr = 1) -> Tensor:  # fmt: skip
    """The adjoint of conv3d: (N, C, D, H, W) -> (N, K, D', H', W')."""
    return _conv_transpose(
        x, weight, bias, stride, padding, output_padding, groups, dilation, 3, "conv_transpose3d"
    )


# ---- pooling ----


def _pool(op, x, kernel_size, stride, padding, ceil_mode, count_include_pad, dims, name):
    _spatial(x, dims, name)
    k = _tuple(kernel_size, dims, "kernel_size")
    s = (
        k
        if stride is None or (not isinstance(stride, int) and len(stride) == 0)
        else _tuple(stride, dims, "stride")
    )
    attrs = dict(kernel=k, stride=s, padding=_tuple(padding, dims, "padding"), ceil_mode=int(ceil_mode))
    if op == "avg_pool":
        attrs["count_include_pad"] = int(count_include_pad)
    return _apply(op, [x], **attrs)


def _max_pool(x, kernel_size, stride, padding, ceil_mode, return_indices, dims, name):
    y, idx = _pool("max_pool", x, kernel_size, stride, padding, ceil_mode, True, dims, name)
    return (y, idx) if return_indices else y


@builds
def max_pool1d(x: Tensor, kernel_size: IntOr, stride: IntOr | None = None, padding: IntOr = 0, ceil_mode: bool = False,
               return_indices: bool = False):  # fmt: skip
    """Max over windows of (N, C, W); stride defaults to the kernel size."""
    return _max_pool(x, kernel_size, stride, padding, ceil_mode, return_indices, 1, "max_pool1d")


@builds
def max_pool2d(x: Tensor, kernel_size: IntOr, stride: IntOr | None = None, padding: IntOr = 0, ceil_mode: bool = False,
               return_indices: bool = False):  # fmt: skip
    """Max over windows of (N, C, H, W) -> (N, C, H', W'); with return_indices, also the flat
    index (h * W + w) of each maximum, for max_unpool2d."""
    return _max_pool(x, kernel_size, stride, padding, ceil_mode, return_indices, 2, "max_pool2d")


@builds
def max_pool3d(x: Tensor, kernel_size: IntOr, stride: IntOr | None = None, padding: IntOr = 0, ceil_mode: bool = False,
               return_indices: bool = False):  # fmt: skip
    """Max over windows of (N, C, D, H, W)."""
    return _max_pool(x, kernel_size, stride, padding, ceil_mode, return_indices, 3, "max_pool3d")


@builds
def avg_pool1d(x: Tensor, kernel_size: IntOr, stride: IntOr | None = None, padding: IntOr = 0, ceil_mode: bool = False,
               count_include_pad: bool = True) -> Tensor:  # fmt: skip
    """Mean over windows of (N, C, W)."""
    return _pool("avg_pool", x, kernel_size, stride, padding, ceil_mode, count_include_pad, 1, "avg_pool1d")[
        0
    ]


@builds
def avg_pool2d(x: Tensor, kernel_size: IntOr, stride: IntOr | None = None, padding: IntOr = 0, ceil_mode: bool = False,
               count_include_pad: bool = True) -> Tensor:  # fmt: skip
    """Mean over windows of (N, C, H, W); count_include_pad counts padded zeros in the divisor."""
    return _pool("avg_pool", x, kernel_size, stride, padding, ceil_mode, count_include_pad, 2, "avg_pool2d")[
        0
    ]


@builds
def avg_pool3d(x: Tensor, kernel_size: IntOr, stride: IntOr | None = None, padding: IntOr = 0, ceil_mode: bool = False,
               count_include_pad: bool = True) -> Tensor:  # fmt: skip
    """Mean over windows of (N, C, D, H, W)."""
    return _pool("avg_pool", x, kernel_size, stride, padding, ceil_mode, count_include_pad, 3, "avg_pool3d")[
        0
    ]


def _adaptive(op, x, output_size, dims, name):
    _spatial(x, dims, name)
    size = [x.shape[2 + i] if s is None else s for i, s in enumerate(_tuple_or_none(output_size, dims))]
    return _apply(op, [x], output_size=[int(s) for s in size])


def _tuple_or_none(v, n):
    return [v] * n if v is None or isinstance(v, int) else list(v)


@builds
def adaptive_avg_pool1d(x: Tensor, output_size: int) -> Tensor:
    """Mean over the windows that split W into output_size parts (as torch)."""
    return _adaptive("adaptive_avg_pool", x, output_size, 1, "adaptive_avg_pool1d")[0]


@builds
def adaptive_avg_pool2d(x: Tensor, output_size: IntOr) -> Tensor:
    """(N, C, H, W) -> (N, C, *output_size), averaging windows [floor(i H / h), ceil((i+1) H / h))."""
    return _adaptive("adaptive_avg_pool", x, output_size, 2, "adaptive_avg_pool2d")[0]


@builds
def adaptive_avg_pool3d(x: Tensor, output_size: IntOr) -> Tensor:
    return _adaptive("adaptive_avg_pool", x, output_size, 3, "adaptive_avg_pool3d")[0]


@builds
def adaptive_max_pool2d(x: Tensor, output_size: IntOr, return_indices: bool = False):
    """(N, C, H, W) -> (N, C, *output_size), the max of each adaptive window."""
    y, idx = _adaptive("adaptive_max_pool", x, output_size, 2, "adaptive_max_pool2d")
    return (y, idx) if return_indices else y


@builds
def global_avg_pool2d(x: Tensor) -> Tensor:
    """(N, C, H, W) -> (N, C): the mean over each channel's plane."""
    _spatial(x, 2, "global_avg_pool2d")
    return ops.mean(x, axis=(2, 3))


@builds
def max_unpool2d(x: Tensor, indices: Tensor, kernel_size: IntOr, stride: IntOr | None = None, padding: IntOr = 0,
                 output_size: Sequence[int] | None = None) -> Tensor:  # fmt: skip
    """The partial inverse of max_pool2d: each value goes back to its max's position (indices
    from max_pool2d(return_indices=True)), zeros elsewhere. (N, C, h, w) -> (N, C, H, W)."""
    _spatial(x, 2, "max_unpool2d")
    k, s, p = (
        _tuple(kernel_size, 2, "kernel_size"),
        _tuple(stride or kernel_size, 2, "stride"),
        _tuple(padding, 2, "padding"),
    )
    if output_size is None:
        output_size = [(x.shape[2 + i] - 1) * s[i] - 2 * p[i] + k[i] for i in range(2)]
    h, w = list(output_size)[-2:]
    n, c = x.shape[0], x.shape[1]
    if c is None:
        raise Error(f"max_unpool2d: the channel count must be known, got {x.shape}")
    flat_x = ops.reshape(x, (-1, c, x.shape[2] * x.shape[3]))
    flat_i = ops.reshape(indices, (-1, c, x.shape[2] * x.shape[3]))
    # a (N, C, H*W) reference for the scatter: zeros shaped by x's batch
    ref = ops.broadcast_to(ops.reshape(ops.zeros_like(flat_x[:, :, :1]), (-1, c, 1)), (-1, c, h * w))
    out = _apply("gather_grad", [flat_x, flat_i, ref], axis=2)[0]
    return ops.reshape(out, (-1 if n is None else n, c, h, w))


# ---- resampling ----


@builds
def interpolate(x: Tensor, size: IntOr | None = None, scale_factor: float | Sequence[float] | None = None,
                mode: str = "nearest", align_corners: bool | None = None) -> Tensor:  # fmt: skip
    """Resize the spatial dims of (N, C, ...) as torch: mode "nearest", "linear" (1-d),
    "bilinear" (2-d) or "trilinear" (3-d); align_corners for the linear modes."""
    dims = x.ndim - 2
    if dims < 1 or dims > 3:
        raise Error(f"interpolate expects (N, C, ...) with 1-3 spatial dims, got {x.shape}")
    linear = {"linear": 1, "bilinear": 2, "trilinear": 3}
    if mode != "nearest" and linear.get(mode) != dims:
        raise Error(f"interpolate: mode {mode!r} does not fit a {dims}-d spatial input {x.shape}")
    if mode == "nearest" and align_corners is not None:
        raise Error("interpolate: align_corners only applies to the linear modes")
    if (size is None) == (scale_factor is None):
        raise Error("interpolate: give exactly one of size and scale_factor")
    if size is None:
        factors = [scale_factor] * dims if isinstance(scale_factor, (int, float)) else list(scale_factor)
        if any(d is None for d in x.shape[2:]):
            raise Error(f"interpolate: scale_factor needs known spatial dims, got {x.shape}")
        size = [int(d * f) for d, f in zip(x.shape[2:], factors)]
        # as torch: the source coordinate steps by 1 / scale_factor, not by in / out
        scales = {f"scale{i}": float(f) for i, f in enumerate(factors)}
    else:
        scales = {}
    size = _tuple(size, dims, "size")
    return _apply("upsample", [x], size=size, mode="nearest" if mode == "nearest" else "linear",
                  align_corners=int(bool(align_corners)), **scales)[0]  # fmt: skip


upsample = interpolate


@builds
def bed_of_nails(x: Tensor, scale: int = 2) -> Tensor:
    """Unpooling by zero insertion: each value at the top-left of a scale x scale block of
    zeros. (N, C, H, W) -> (N, C, H * scale, W * scale)."""
    _spatial(x, 2, "bed_of_nails")
    n, c, h, w = x.shape
    y = ops.reshape(x, (-1, c, h, 1, w, 1))
    y = ops.pad(y, (0, scale - 1, 0, 0, 0, scale - 1))
    return ops.reshape(y, (-1, c, h * scale, w * scale))


@builds
def pixel_shuffle(x: Tensor, upscale_factor: int) -> Tensor:
    """(N, C r^2, H, W) -> (N, C, H r, W r), as torch."""
    _spatial(x, 2, "pixel_shuffle")
    n, c, h, w = x.shape
    r = upscale_factor
    if c is None or c % (r * r):
        raise Error(f"pixel_shuffle: {c} channels are not divisible by upscale_factor**2 = {r * r}")
    y = ops.reshape(x, (-1, c // (r * r), r, r, h, w))
    y = ops.permute(y, (0, 1, 4, 2, 5, 3))
    return ops.reshape(y, (-1, c // (r * r), h * r, w * r))


@builds
def pixel_unshuffle(x: Tensor, downscale_factor: int) -> Tensor:
    """(N, C, H r, W r) -> (N, C r^2, H, W): the inverse of pixel_shuffle."""
    _spatial(x, 2, "pixel_unshuffle")
    n, c, h, w = x.shape
    r = downscale_factor
    if h % r or w % r:
        raise Error(f"pixel_unshuffle: {h}x{w} is not divisible by {r}")
    y = ops.reshape(x, (-1, c, h // r, r, w // r, r))
    y = ops.permute(y, (0, 1, 3, 5, 2, 4))
    return ops.reshape(y, (-1, c * r * r, h // r, w // r))


@builds
def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """Interleaves the channels of `groups` groups (ShuffleNet): (N, C, ...) -> same shape."""
    c = x.shape[1]
    if c is None or c % groups:
        raise Error(f"channel_shuffle: {c} channels are not divisible by {groups} groups")
    rest = tuple(x.shape[2:])
    y = ops.reshape(x, (-1, groups, c // groups) + rest)
    y = ops.transpose(y, 1, 2)
    return ops.reshape(y, (-1, c) + rest)


__all__ = [
    "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
    "max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d",
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool2d",
    "global_avg_pool2d", "max_unpool2d", "interpolate", "upsample", "bed_of_nails", "pixel_shuffle",
    "pixel_unshuffle", "channel_shuffle",
]  # fmt: skip
