"""Symbolic tensors, graphs, and the sources of a graph: inputs, parameters, constants."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import _core

Error = _core.Error
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
DTypeLike = Any  # "float32", np.float32, np.dtype("float32")
ShapeLike = Sequence[int | None]


def _caller_site() -> str:
    """file:line of the first stack frame outside the kiln package."""
    f = sys._getframe(2)
    while f is not None and f.f_code.co_filename.startswith(_PACKAGE_DIR):
        f = f.f_back
    return f"{os.path.basename(f.f_code.co_filename)}:{f.f_lineno}" if f is not None else ""


def builds(fn):
    """Marks a public function that adds nodes: they get the user's file:line for errors."""

    def wrapper(*args, **kwargs):
        site = _caller_site()
        _core.set_site(site)
        try:
            return fn(*args, **kwargs)
        except Error as e:  # errors raised in Python name the user's line too, as C++ ones do
            if "\n  at " in str(e) or not site:
                raise
            raise Error(f"{e}\n  at {site}") from None

    wrapper.__name__, wrapper.__qualname__, wrapper.__doc__ = fn.__name__, fn.__qualname__, fn.__doc__
    wrapper.__wrapped__ = fn
    wrapper.__module__ = fn.__module__
    return wrapper


def dtype_name(dtype: DTypeLike) -> str:
    if isinstance(dtype, str):
        return "bool" if dtype == "bool_" else dtype
    return np.dtype(dtype).name


class Graph:
    """A graph of symbolic tensors, and the variables its functions share.

    Tensors are built in the current graph: a process-wide default one, or the graph of the
    innermost ``with kn.Graph():`` block.
    """

    _local = threading.local()

    def __init__(self) -> None:
        self._g = _core.Graph()
        self._saved: list[Graph] = []

    def __enter__(self) -> Graph:
        self._saved.append(current_graph())
        Graph._local.current = self
        return self

    def __exit__(self, *exc) -> None:
        Graph._local.current = self._saved.pop()

    def __len__(self) -> int:
        return len(self._g)


_default_graph = Graph()


def current_graph() -> Graph:
    g = getattr(Graph._local, "current", None)
    return _default_graph if g is None else g


class Tensor:
    """A symbolic tensor: one output of one node of a graph. Nothing is computed until a
    function built from it is called. Shapes may hold ``None`` (a size fixed per call)."""

    __slots__ = ("_v", "_graph")
    __array_priority__ = 1000  # numpy defers to our reflected operators

    def __init__(self, value: _core.Value, graph: Graph) -> None:
        self._v = value
        self._graph = graph

    @property
    def shape(self) -> tuple:
        return self._v.shape

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self._v.dtype)

    @property
    def ndim(self) -> int:
        return len(self._v.shape)

    @property
    def name(self) -> str:
        return self._v.name

    @property
    def op(self) -> str:
        return self._v.op

    def __repr__(self) -> str:
        label = f"{self.op} '{self.name}'" if self.name else self.op
        shape = (
            "("
            + ", ".join("None" if d is None else str(d) for d in self.shape)
            + ("," if self.ndim == 1 else "")
            + ")"
        )
        return f"kn.Tensor({label}, shape={shape}, dtype={self._v.dtype})"

    def __bool__(self) -> bool:
        raise Error(
            "a symbolic kn.Tensor has no truth value: it is computed only when a function runs "
            "(use kn.where for a data-dependent choice)"
        )

    __hash__ = object.__hash__

    def __len__(self) -> int:
        if not self.shape or self.shape[0] is None:
            raise Error(f"len() of a tensor of shape {self.shape} is not known before a call")
        return self.shape[0]

    def __iter__(self):
        raise Error("a symbolic kn.Tensor cannot be iterated; use kn.split or indexing")


def wrap(value: _core.Value, graph: Graph | None = None) -> Tensor:
    return Tensor(value, graph or current_graph())


@builds
def input(name: str, shape: ShapeLike, dtype: DTypeLike = "float32") -> Tensor:
    """A named input fed on every call. ``None`` in ``shape`` is a size fixed per call
    (a batch), e.g. ``kn.input("x", (None, 3, 32, 32))``."""
    g = current_graph()
    try:
        return Tensor(g._g.input(name, tuple(shape), dtype_name(dtype)), g)
    except Error as e:
        if "already used" in str(e):
            raise Error(
                f"input: the name '{name}' is already used in this graph; pick another name or build "
                "in a fresh graph with `with kn.Graph():`"
            ) from None
        raise


def _as_array(value: Any, dtype: DTypeLike | None) -> np.ndarray:
    """A contiguous array of a kiln dtype. Python data and float64 arrays become float32
    (kiln's default float) unless ``dtype`` says otherwise."""
    arr = np.asarray(value)
    if dtype is not None:
        arr = arr.astype(dtype_name(dtype), copy=False)
    elif arr.dtype == np.float64 or arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    elif arr.dtype.kind in "iu" and arr.dtype not in (np.int32, np.int64, np.uint8):
        arr = arr.astype(np.int64)
    return np.asarray(arr, order="C")  # (ascontiguousarray would make a 0-d array 1-d)


@builds
def constant(value: Any, dtype: DTypeLike | None = None) -> Tensor:
    """A constant held by the graph. Floats default to float32 unless ``dtype`` is given."""
    g = current_graph()
    return Tensor(g._g.constant(_as_array(value, dtype)), g)


class Parameter(Tensor):
    """A trainable variable held in the engine, initialised to ``value``.

    Floating-point values are stored as float32 unless ``dtype`` is given (so that
    ``kn.Parameter(np.random.randn(10, 5) * 0.01)`` trains in float32). Functions compiled from
    the graph read and update it in place; ``.numpy()`` returns a copy of its current value.
    """

    __slots__ = ("_var_name",)

    @builds
    def __init__(
        self, value: Any, name: str | None = None, dtype: DTypeLike | None = None, trainable: bool = True
    ) -> None:
        g = current_graph()
        v = g._g.variable(name or "param", _as_array(value, dtype), trainable)
        super().__init__(v, g)
        self._var_name = v.name

    def numpy(self) -> np.ndarray:
        """A copy of the variable's current value."""
        return self._graph._g.variable_value(self._var_name)

    def assign(self, value: Any) -> None:
        """Overwrites the value (same shape; converted to the variable's dtype)."""
        arr = np.asarray(np.asarray(value).astype(self.dtype, copy=False), order="C")
        self._graph._g.assign(self._var_name, arr)

    def __repr__(self) -> str:
        return f"kn.Parameter('{self._var_name}', shape={self.shape}, dtype={self._v.dtype})"


def as_tensor(x: Any, like: Tensor | None = None) -> Tensor:
    """``x`` as a Tensor; Python scalars take the dtype of ``like`` (``x * 0.5`` stays float32)."""
    if isinstance(x, Tensor):
        return x
    g = like._graph if like is not None else current_graph()
    if like is not None and isinstance(x, (bool, int, float)) and not isinstance(x, np.ndarray):
        if isinstance(x, float) and like.dtype.kind in "iub":
            return Tensor(g._g.constant(np.asarray(x, np.float32)), g)
        return Tensor(_core.constant_like(float(x), like._v), g)
    return Tensor(g._g.constant(_as_array(x, None)), g)
