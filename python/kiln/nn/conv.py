"""Convolution, pooling and resampling layers, as torch.nn, with PyTorch's default init."""

from __future__ import annotations

import math

from .. import conv as F
from .. import init
from .._graph import Error, Tensor
from .layers import _BatchNorm, _param
from .module import Module


def _ntuple(v, n):
    return (v,) * n if isinstance(v, int) else tuple(v)


class _ConvNd(Module):
    _dims = 2
    _transposed = False

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, output_padding=0, dtype="float32") -> None:  # fmt: skip
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise Error(f"{type(self).__name__}: in_channels {in_channels} and out_channels {out_channels} "
                        f"must be divisible by groups={groups}")  # fmt: skip
        n = self._dims
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size, self.stride = _ntuple(kernel_size, n), _ntuple(stride, n)
        self.padding = padding if isinstance(padding, str) else _ntuple(padding, n)
        self.dilation, self.output_padding = _ntuple(dilation, n), _ntuple(output_padding, n)
        if self._transposed:
            shape = (in_channels, out_channels // groups) + self.kernel_size
            fan_in = (out_channels // groups) * math.prod(self.kernel_size)  # torch's fan_in of that shape
        else:
            shape = (out_channels, in_channels // groups) + self.kernel_size
            fan_in = (in_channels // groups) * math.prod(self.kernel_size)
        name = type(self).__name__.lower()
        self.weight = _param(init.kaiming_uniform(shape, a=math.sqrt(5)), f"{name}.weight", dtype)
        bound = 1 / math.sqrt(fan_in) if fan_in else 0.0
        self.bias = (
            _param(init.uniform((out_channels,), -bound, bound), f"{name}.bias", dtype) if bias else None
        )

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding not in (0, (0,) * self._dims):
            s += f", padding={self.padding}"
        if self.dilation != (1,) * self._dims:
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        return s + ("" if self.bias is not None else ", bias=False")


class Conv1d(_ConvNd):
    """(N, C, W) -> (N, K, W')."""

    _dims = 1

    def forward(self, x: Tensor) -> Tensor:
        return F.conv1d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class Conv2d(_ConvNd):
    """(N, C, H, W) -> (N, K, H', W'); padding may be an int, a pair, "same" or "valid"."""

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class Conv3d(_ConvNd):
    """(N, C, D, H, W) -> (N, K, D', H', W')."""

    _dims = 3

    def forward(self, x: Tensor) -> Tensor:
        return F.conv3d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class ConvTranspose1d(_ConvNd):
    _dims, _transposed = 1, True

    def forward(self, x: Tensor) -> Tensor:
        return F.conv_transpose1d(x, self.weight, self.bias, self.stride, self.padding, self.output_padding,
                                  self.groups, self.dilation)  # fmt: skip


class ConvTranspose2d(_ConvNd):
    """The learnable upsampling of segmentation networks: weight (in, out / groups, kh, kw)."""

    _transposed = True

    def forward(self, x: Tensor) -> Tensor:
        return F.conv_transpose2d(x, self.weight, self.bias, self.stride, self.padding, self.output_padding,
                                  self.groups, self.dilation)  # fmt: skip


class ConvTranspose3d(_ConvNd):
    _dims, _transposed = 3, True

    def forward(self, x: Tensor) -> Tensor:
        return F.conv_transpose3d(x, self.weight, self.bias, self.stride, self.padding, self.output_padding,
                                  self.groups, self.dilation)  # fmt: skip


class _Pool(Module):
    _fn = None
    _dims = 2

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode: bool = False, **kw) -> None:
        super().__init__()
        self.kernel_size, self.stride, self.padding, self.ceil_mode = (
            kernel_size,
            stride or kernel_size,
            padding,
            ceil_mode,
        )
        self.kw = kw

    def forward(self, x: Tensor):
        return type(self)._fn(x, self.kernel_size, self.stride, self.padding, self.ceil_mode, **self.kw)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


def _pool_class(name, fn, dims, doc, **defaults):
    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, **kw):
        _Pool.__init__(self, kernel_size, stride, padding, ceil_mode, **{**defaults, **kw})

    return type(
        name, (_Pool,), {"_fn": staticmethod(fn), "_dims": dims, "__init__": __init__, "__doc__": doc}
    )


MaxPool1d = _pool_class("MaxPool1d", F.max_pool1d, 1, "Max pooling of (N, C, W).", return_indices=False)
MaxPool2d = _pool_class("MaxPool2d", F.max_pool2d, 2, "Max pooling of (N, C, H, W).", return_indices=False)
MaxPool3d = _pool_class("MaxPool3d", F.max_pool3d, 3, "Max pooling of (N, C, D, H, W).", return_indices=False)
AvgPool1d = _pool_class("AvgPool1d", F.avg_pool1d, 1, "Average pooling of (N, C, W).", count_include_pad=True)
AvgPool2d = _pool_class(
    "AvgPool2d", F.avg_pool2d, 2, "Average pooling of (N, C, H, W).", count_include_pad=True
)
AvgPool3d = _pool_class(
    "AvgPool3d", F.avg_pool3d, 3, "Average pooling of (N, C, D, H, W).", count_include_pad=True
)


class AdaptiveAvgPool2d(Module):
    """(N, C, H, W) -> (N, C, *output_size) whatever H and W."""

    def __init__(self, output_size) -> None:
        super().__init__()
        self.output_size = output_size

    def forward(self, x: Tensor) -> Tensor:
        return F.adaptive_avg_pool2d(x, self.output_size)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


class AdaptiveMaxPool2d(AdaptiveAvgPool2d):
    def forward(self, x: Tensor) -> Tensor:
        return F.adaptive_max_pool2d(x, self.output_size)


class Upsample(Module):
    """Resizing as F.interpolate: size or scale_factor; mode nearest / linear / bilinear / trilinear."""

    def __init__(
        self, size=None, scale_factor=None, mode: str = "nearest", align_corners: bool | None = None
    ) -> None:
        super().__init__()
        self.size, self.scale_factor, self.mode, self.align_corners = size, scale_factor, mode, align_corners

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x, self.size, self.scale_factor, self.mode, self.align_corners)

    def extra_repr(self) -> str:
        return f"size={self.size}, scale_factor={self.scale_factor}, mode={self.mode!r}"


class PixelShuffle(Module):
    def __init__(self, upscale_factor: int) -> None:
        super().__init__()
        self.upscale_factor = upscale_factor

    def forward(self, x: Tensor) -> Tensor:
        return F.pixel_shuffle(x, self.upscale_factor)


class ChannelShuffle(Module):
    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: Tensor) -> Tensor:
        return F.channel_shuffle(x, self.groups)


class BatchNorm3d(_BatchNorm):
    """Batch norm of (N, C, D, H, W) input, per channel."""

    _ranks = (5,)
