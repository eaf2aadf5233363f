"""kn.nn: modules (layers), as torch.nn."""

from .layers import (
    ELU, GELU, SELU, BatchNorm1d, BatchNorm2d, Dropout, Embedding, Flatten, GroupNorm, Hardtanh, Identity,
    LayerNorm, LeakyReLU, Linear, LogSoftmax, Maxout, PReLU, ReLU, Sigmoid, Softmax, Softplus, Tanh,
)  # fmt: skip
from .module import Module, ModuleList, Sequential
