"""Compiling graphs into functions, symbolic gradients, one-off evaluation, gradient checks."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from . import _core
from ._graph import Error, Graph, Tensor, builds, current_graph, input, wrap

Outputs = Tensor | Sequence[Tensor] | Mapping[str, Tensor]
Updates = Sequence[tuple[Tensor, Tensor]] | Mapping[Tensor, Tensor] | None


class Function:
    """A compiled program. Call it with numpy arrays, positionally in the order of its inputs
    or by input name; it returns numpy arrays in the structure its outputs were given (one
    array for a single Tensor, a list for a list, a dict for a dict). A new shape for a
    ``None`` dimension compiles a new memory plan once; later calls reuse it."""

    def __init__(
        self,
        inputs: Sequence[Tensor],
        outputs: Outputs,
        updates: Updates = None,
        training: bool = True,
        device: str = "cpu",
    ) -> None:
        if isinstance(inputs, Tensor):
            inputs = [inputs]
        structure, named = _name_outputs(outputs)
        pairs = _update_pairs(updates)
        core = _core.Function(
            [t._v for t in inputs],
            [(n, t._v) for n, t in named],
            [(v._v, t._v) for v, t in pairs],
            training,
            device,
        )
        self._adopt(core, structure)

    @classmethod
    def _from_core(cls, core: Any) -> Function:
        """A Function around a compiled program read from a file."""
        f = cls.__new__(cls)
        f._adopt(core, core.annotations.get("python.outputs", "list"))
        return f

    def _adopt(self, core: Any, structure: str) -> None:
        self._f = core
        self._structure = structure
        self.input_names: list[str] = list(self._f.input_names)
        self.output_names: list[str] = list(self._f.output_names)
        self._dtypes = [np.dtype(d) for d, _ in self._f.input_specs]
        self.training: bool = self._f.training

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        arrays = self._feeds(args, kwargs)
        out = self._f.run(arrays)
        if self._structure == "tensor":
            return out[0]
        if self._structure == "dict":
            return dict(zip(self.output_names, out))
        return out

    def _feeds(self, args: tuple, kwargs: dict) -> list:
        names = self.input_names
        if len(args) > len(names):
            raise Error(f"function takes {len(names)} inputs ({', '.join(names)}), got {len(args)}")
        feeds = list(args) + [None] * (len(names) - len(args))
        for k, v in kwargs.items():
            if k not in names:
                raise Error(f"function: unknown input '{k}' (inputs: {', '.join(names)})")
            i = names.index(k)
            if i < len(args):
                raise Error(f"function: input '{k}' given twice")
            feeds[i] = v
        for i, v in enumerate(feeds):
            if v is None:
                raise Error(f"function: missing input '{names[i]}'")
            if type(v) is not np.ndarray:  # Python data takes the input's dtype
                if isinstance(v, Tensor):
                    raise Error(f"function: input '{names[i]}' got a symbolic kn.Tensor; feed a numpy array")
                v = np.asarray(v, dtype=self._dtypes[i])
            elif v.dtype != self._dtypes[i]:
                raise Error(
                    f"function: input '{names[i]}' expects {self._dtypes[i]}, got a {v.dtype} array "
                    f"of shape {v.shape} (convert it with .astype(np.{self._dtypes[i]}))"
                )
            if not v.flags.c_contiguous:
                v = np.ascontiguousarray(v)
            feeds[i] = v
        return feeds

    @property
    def device(self) -> str:
        """Where the function runs: "cpu" or "cuda"."""
        return self._f.device

    def to(self, device: str) -> Function:
        """Moves the function to ``device`` ("cpu" or "cuda") and returns it. On the GPU the
        variables it reads move there on its next call and stay there; reading or saving them
        copies them back. Raises kn.Error naming every op without a kernel on that device."""
        self._f.device = device
        return self

    def plan_stats(self) -> dict:
        """Of the last call's memory plan: steps, buffers, buffer_bytes, values, in_place."""
        return self._f.plan_stats()

    def profile(self, *args: Any, calls: int = 10, **kwargs: Any) -> list[tuple[str, int, float]]:
        """Runs the function `calls` times on the given inputs, timing every node; returns
        (node description, calls, mean microseconds), slowest first. Note: a training
        function's updates are applied on each of these calls."""
        self._f.set_profiling(True)
        try:
            for _ in range(calls):
                self(*args, **kwargs)
            rows = self._f.profile()
        finally:
            self._f.set_profiling(False)
        rows = [(f"%{node} {op}", n, seconds / n * 1e6) for node, op, n, seconds in rows]
        return sorted(rows, key=lambda r: -r[2])

    @property
    def num_nodes(self) -> int:
        """Nodes in the optimised program."""
        return self._f.num_nodes

    def __str__(self) -> str:
        return str(self._f)


def _name_outputs(outputs: Outputs):
    if isinstance(outputs, Tensor):
        return "tensor", [("output", outputs)]
    if isinstance(outputs, Mapping):
        return "dict", [(str(k), v) for k, v in outputs.items()]
    if not isinstance(outputs, (list, tuple)) or not all(isinstance(t, Tensor) for t in outputs):
        raise Error("function: outputs must be a Tensor, a list of Tensors, or a dict {name: Tensor}")
    return "list", [(f"output{i}", t) for i, t in enumerate(outputs)]


def _update_pairs(updates: Updates) -> list:
    if updates is None:
        return []
    items = list(updates.items()) if isinstance(updates, Mapping) else list(updates)
    for pair in items:
        if not (isinstance(pair, tuple) and len(pair) == 2 and all(isinstance(t, Tensor) for t in pair)):
            raise Error(
                "function: updates must be (variable, new_value) pairs or a dict {variable: new_value}"
            )
    return items


@builds
def function(
    inputs: Sequence[Tensor],
    outputs: Outputs,
    updates: Updates = None,
    training: bool = True,
    device: str = "cpu",
) -> Function:
    """Compiles ``inputs -> outputs`` (plus ``updates``, (variable, new value) pairs applied after
    every call) into a Function. ``training=False`` gives an inference program, which never
    writes state. ``device="cuda"`` runs it on the GPU: numpy arrays in, numpy arrays out, the
    variables kept on the device between calls."""
    return Function(inputs, outputs, updates, training, device)


@builds
def grad(y: Tensor, wrt: Tensor | Sequence[Tensor], grad_output: Tensor | None = None) -> Any:
    """Symbolic gradient of ``y`` with respect to each tensor in ``wrt``, added to the graph.
    ``y`` must have one element unless ``grad_output`` (shaped like y) is given. Returns a
    Tensor for a Tensor, a list for a list; zeros where y does not depend on a tensor."""
    single = isinstance(wrt, Tensor)
    ws = [wrt] if single else list(wrt)
    go = None if grad_output is None else grad_output._v
    gs = [wrap(v, y._graph) for v in _core.grad(y._v, [w._v for w in ws], go)]
    return gs[0] if single else gs


@builds
def eval(outputs: Outputs, feed: Mapping[Tensor, Any] | None = None) -> Any:
    """Compiles and runs ``outputs`` once, feeding ``{input tensor: array}``."""
    feed = dict(feed or {})
    f = Function(list(feed.keys()), outputs)
    return f(*feed.values())


_gradcheck_ids = itertools.count()


def gradcheck(f: Callable[..., Tensor], inputs: Sequence[np.ndarray], eps: float = 1e-6) -> float:
    """Compares kiln's symbolic gradient of the scalar ``f(*tensors)`` with float64 centered
    differences at ``inputs``; returns the max relative error |a - n| / max(|a|, |n|) (0 where
    both are 0), as in CS231n. Inputs are taken as float64."""
    xs = [np.array(a, dtype=np.float64) for a in inputs]
    with Graph():
        syms = [input(f"gradcheck{next(_gradcheck_ids)}_{i}", x.shape, "float64") for i, x in enumerate(xs)]
        y = f(*syms)
        if not isinstance(y, Tensor):
            raise Error("gradcheck: f must return a kn.Tensor")
        if y.shape and int(np.prod([d or 0 for d in y.shape])) != 1:
            raise Error(f"gradcheck: f must return one element, got shape {y.shape}")
        grads = grad(y, syms)
        fn = Function(syms, [y] + grads)
        value = Function(syms, y)
    analytic = fn(*xs)[1:]
    worst = 0.0
    for i, x in enumerate(xs):
        a = np.asarray(analytic[i], dtype=np.float64).ravel()
        flat = x.reshape(-1)
        for j in range(flat.size):
            old = flat[j]
            flat[j] = old + eps
            hi = float(value(*xs))
            flat[j] = old - eps
            lo = float(value(*xs))
            flat[j] = old
            n = (hi - lo) / (2 * eps)
            denom = np.maximum(np.abs(a[j]), np.abs(n))
            if denom > 0:
                worst = np.maximum(worst, float(np.abs(a[j] - n) / denom))
    return float(worst)


def save(
    path: str, *functions: Function | Mapping[str, Function], name: str | Sequence[str] | None = None
) -> None:
    """Writes compiled functions of one graph, e.g. ``predict`` and ``train_step``, with all their
    variables (parameters, batch-norm statistics, optimizer slots, step counters, random-stream
    positions) to one .kiln file: a safetensors file that any safetensors reader opens, whose
    metadata holds the graph. Name the functions with ``name=`` (a string for one function, a list
    for several) or pass a dict ``{name: function}``; unnamed ones are "main" (one) or "function0",
    "function1", ... ``kn.load``, ``kiln::load`` and ``kiln-run`` read it back, without Python."""
    if len(functions) == 1 and isinstance(functions[0], Mapping):
        pairs = list(functions[0].items())
        if name is not None:
            raise Error("save: give names either as the dict's keys or as name=, not both")
    else:
        if isinstance(name, str):
            name = [name]
        if name is None:
            name = ["main"] if len(functions) == 1 else [f"function{i}" for i in range(len(functions))]
        if len(name) != len(functions):
            raise Error(f"save: {len(functions)} functions but {len(name)} names")
        pairs = list(zip(name, functions))
    for n, f in pairs:
        if not isinstance(f, Function):
            raise Error(f"save: '{n}' is a {type(f).__name__}, not a compiled kn.Function")
        f._f.annotations = {**f._f.annotations, "python.outputs": f._structure}
    _core.save(str(path), [(str(n), f._f) for n, f in pairs])


def load(path: str) -> Function | dict[str, Function]:
    """Reads a .kiln file: its function when it holds one, else a dict {name: function} in the
    order they were saved. The functions share their variables, as when they were compiled: a
    loaded training step trains the weights the loaded predict function reads."""
    loaded = [(n, Function._from_core(f)) for n, f in _core.load(str(path))]
    return loaded[0][1] if len(loaded) == 1 else dict(loaded)


__all__ = ["Function", "function", "grad", "eval", "gradcheck", "current_graph", "save", "load"]
