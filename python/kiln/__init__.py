"""kiln: a deep-learning engine. Build a graph of symbolic tensors, take symbolic gradients,
compile it into a static program, and run it on numpy arrays.

    import numpy as np, kiln as kn
    x = kn.input("x", (None, 3))
    w = kn.Parameter(np.ones((3, 2)), name="w")
    loss = kn.sum(kn.relu(x @ w))
    f = kn.function([x], [loss, kn.grad(loss, w)])
    loss_v, gw = f(np.ones((4, 3), np.float32))
"""

from __future__ import annotations


def _load_blas() -> None:
    # The extension links libscipy_openblas.so from the scipy-openblas32 wheel; load it first so
    # that the extension finds it wherever pip put the two packages.
    import ctypes
    import os

    try:
        import scipy_openblas32
    except ImportError:  # a build against the system BLAS
        return
    path = os.path.join(scipy_openblas32.get_lib_dir(), scipy_openblas32.get_library() + ".so")
    if os.path.exists(path):
        ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)


_load_blas()

from . import _core
from ._core import num_threads, set_num_threads
from ._graph import Error, Graph, Parameter, Tensor, constant, current_graph, input
from . import _operators  # installs Tensor's operators and methods
from .function import Function, eval, function, grad, gradcheck, load, save
from .ops import *
from .functional import *
from .losses import *
from .conv import *
from . import classic, cuda, data, init, nn, optim, train
from .init import manual_seed
from .summary import summary

__version__ = "0.1.0"
