"""kn.nn: modules (layers), as torch.nn."""

from .layers import (
    ELU, GELU, SELU, BatchNorm1d, BatchNorm2d, Dropout, Embedding, Flatten, GroupNorm, Hardtanh, Identity,
    LayerNorm, LeakyReLU, Linear, LogSoftmax, Maxout, PReLU, ReLU, Sigmoid, Softmax, Softplus, Tanh,
)  # fmt: skip
from .module import Module, ModuleList, Sequential
from .conv import (
    AdaptiveAvgPool2d, AdaptiveMaxPool2d, AvgPool1d, AvgPool2d, AvgPool3d, BatchNorm3d, ChannelShuffle, Conv1d, Conv2d,
    Conv3d, ConvTranspose1d, ConvTranspose2d, ConvTranspose3d, MaxPool1d, MaxPool2d, MaxPool3d, PixelShuffle, Upsample,
)  # fmt: skip
