"""ONNX -> kiln: a model's graph rebuilt from kiln ops, one handler per ONNX op (_ops_*.py).

Float initializers become trainable kn.Parameters (fine-tune them, save them), other initializers
constants. Values known at import time (initializers, Constant nodes, shapes of static tensors)
are followed through the graph as numpy arrays, so ops that take shapes, axes or pads as inputs
(Reshape, Slice, Pad, Resize, ...) become plain kiln ops. Every unsupported node is reported in one
kn.Error.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from .._graph import Graph, Parameter, Tensor, constant, input
from ..function import Function, function
from . import _ops_math, _ops_nn, _ops_shape  # noqa: F401  (they fill the handler table)
from ._registry import DYNAMIC, HANDLERS, TAKES_DYNAMIC, Unsupported, numpy_dtype


class Ctx:
    """What a handler sees besides its node: known values and the model's opset."""

    def __init__(self, known: dict[str, np.ndarray], opset: int) -> None:
        self.known = known
        self.opset = opset
        # Shape outputs that hold a dynamic size, and the tensor whose whole shape they are: ops
        # sized by them (ConstantOfShape, Expand) become ops shaped like that tensor
        self.shape_of: dict[str, Tensor] = {}

    def value(self, node: onnx.NodeProto, i: int) -> np.ndarray | None:
        """The value of input i when known at import time, else None (also for an omitted input)."""
        if i >= len(node.input) or not node.input[i]:
            return None
        return self.known.get(node.input[i])

    def require(self, node: onnx.NodeProto, i: int, what: str) -> np.ndarray:
        """The value of input i, which kiln needs at import time (a shape, axes, pads...)."""
        v = self.value(node, i)
        if v is None:
            raise Unsupported(
                f"{what} (input {i}) must be known when the model is imported: a constant or an initializer"
            )
        return v


@dataclass
class Imported:
    """An ONNX model as a kiln graph: its inputs and outputs as kn.Tensors (by ONNX name), its
    float initializers as trainable kn.Parameters. ``function()`` compiles it; calling the object
    runs the inference function. Differentiate ``outputs`` with kn.grad, train the parameters with
    kn.optim, save the functions with kn.save."""

    graph: Graph
    inputs: dict[str, Tensor]
    outputs: dict[str, Tensor]
    parameters: dict[str, Parameter] = field(default_factory=dict)
    _predict: Function | None = None

    def function(self, training: bool = False, device: str = "cpu") -> Function:
        """The model compiled: its inputs in order, a dict of its outputs."""
        return function(list(self.inputs.values()), dict(self.outputs), training=training, device=device)

    def __call__(self, *arrays: Any, **named: Any) -> dict[str, np.ndarray]:
        if self._predict is None:
            self._predict = self.function()
        return self._predict(*arrays, **named)


def _opset(model: onnx.ModelProto) -> int:
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            return o.version
    return 1


def _input_spec(vi: onnx.ValueInfoProto, batch_dynamic: bool) -> tuple[tuple, np.dtype]:
    t = vi.type.tensor_type
    if not vi.type.HasField("tensor_type"):
        raise Unsupported(f"input '{vi.name}' is not a tensor")
    dtype = numpy_dtype(t.elem_type, f"input '{vi.name}'")
    dims = []
    for i, d in enumerate(t.shape.dim):
        if d.HasField("dim_value") and not (batch_dynamic and i == 0):
            dims.append(d.dim_value)
        else:
            dims.append(None)
    return tuple(dims), dtype


def build(
    model: onnx.ModelProto,
    feeds: Mapping[str, np.ndarray] | None = None,
    batch_dynamic: bool = False,
) -> Imported:
    """The graph of ``model``. ``feeds``: values of inputs known now (the backend passes every
    input, so that shape-like inputs fold into constants); their shapes become exact."""
    feeds = dict(feeds or {})
    g = Graph()
    known: dict[str, np.ndarray] = {}
    env: dict[str, Any] = {}
    params: dict[str, Parameter] = {}
    inputs: dict[str, Tensor] = {}
    problems: list[str] = []
    ctx = Ctx(known, _opset(model))
    with g:
        for init in model.graph.initializer:
            arr = numpy_helper.to_array(init)
            try:
                numpy_dtype(init.data_type, f"initializer '{init.name}'")
            except Unsupported as e:
                problems.append(str(e))
                continue
            known[init.name] = arr
            if arr.dtype.kind == "f":
                env[init.name] = params[init.name] = Parameter(arr, name=init.name, dtype=arr.dtype)
            else:
                env[init.name] = constant(arr, dtype=arr.dtype)
        for vi in model.graph.input:
            if vi.name in env:
                continue
            try:
                shape, dtype = _input_spec(vi, batch_dynamic)
            except Unsupported as e:
                problems.append(str(e))
                continue
            if vi.name in feeds:
                known[vi.name] = np.asarray(feeds[vi.name])
                shape = known[vi.name].shape
            env[vi.name] = inputs[vi.name] = input(vi.name, shape, dtype)
        for node in model.graph.node:
            where = f"node '{node.name or node.output[0]}' ({node.op_type})"
            handler = HANDLERS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
            if handler is None:
                domain = f" of domain '{node.domain}'" if node.domain not in ("", "ai.onnx") else ""
                problems.append(f"{where}: op {node.op_type}{domain} is not supported")
                continue
            # the marker lives in values computed at import time: the weights are not scanned
            reads_dynamic = any(
                n in known and n not in params and np.any(known[n] == DYNAMIC) for n in node.input if n
            )
            if reads_dynamic and node.op_type not in TAKES_DYNAMIC:
                problems.append(
                    f"{where}: computes with the size of a dynamic dimension (the Shape of a tensor whose "
                    "batch is not fixed); load with batch_dynamic=False to fix the batch"
                )
                continue
            args = [env.get(n) if n else None for n in node.input]
            if any(n and n not in env for n in node.input):
                continue  # fed by a node already reported
            try:
                outs = handler(ctx, node, args)
            except Unsupported as e:
                problems.append(f"{where}: {e}")
                continue
            for name, o in zip(node.output, outs):
                if not name or o is None:
                    continue
                if isinstance(o, np.ndarray):  # computed at import time: known, and a constant
                    known[name] = o
                    o = constant(o, dtype=o.dtype)
                env[name] = o
        if problems:
            raise Unsupported(
                f"kn.onnx: {len(problems)} part(s) of the model kiln cannot import:\n  "
                + "\n  ".join(problems)
            )
        outputs = {vi.name: env[vi.name] for vi in model.graph.output}
    return Imported(g, inputs, outputs, params)


def load(model: str | os.PathLike | onnx.ModelProto, batch_dynamic: bool = True) -> Imported:
    """Reads an ONNX model (opset 13 or newer; a path or a ModelProto) into a kiln graph.
    ``batch_dynamic``: the first dimension of every input takes any size. Raises kn.Error listing
    every node kiln cannot import."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(os.fspath(model))
    opset = _opset(model)
    if opset < 13:
        raise Unsupported(f"kn.onnx.load: the model uses opset {opset}; kiln imports opset 13 and newer")
    return build(model, batch_dynamic=batch_dynamic)


__all__ = ["Imported", "build", "load"]
