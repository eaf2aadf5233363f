"""The import's op table: one handler per ONNX op type, in the _ops_*.py modules.

A handler is ``fn(ctx, node, inputs) -> list of outputs``: ``inputs`` holds a kn.Tensor per node
input (None for an omitted optional input), the outputs are kn.Tensors (None for an output it does
not produce). Attributes come from ``attrs(node)``; the value of an input known at import time (an
initializer, a Constant, or in the backend an input fed with the model) from ``ctx.value(node, i)``.
A handler that meets a case kiln cannot express raises ``Unsupported`` with the reason.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
from onnx import helper

from .._graph import Error

Handler = Callable[..., list]
HANDLERS: dict[str, Handler] = {}

# The value Shape gives a dynamic dimension (the batch of a model loaded with batch_dynamic): never
# a real size (sizes are >= 0, and -1 means "infer"). Only the ops that move it along as data, and
# those that read it back as "that tensor's size", may see it: arithmetic on it would give a number
# that means nothing, so the import refuses every other op that reads one.
DYNAMIC = -(2**62)
TAKES_DYNAMIC = {"Gather", "Slice", "Concat", "Unsqueeze", "Squeeze", "Identity", "Cast", "Reshape",
                 "ConstantOfShape", "Expand"}  # fmt: skip


class Unsupported(Error):
    """A node kiln cannot import: the op, an attribute value or a dtype it does not have."""


_FOLD_MAX = 1 << 16  # larger results stay graph ops: folding them would only copy constants


def folding(fn: Handler) -> Handler:
    """Evaluates the node now when every input is a constant (never a fed input or a trainable
    parameter), so its outputs become known values: shape arithmetic (Shape -> Gather -> Concat ->
    Reshape) folds into constants that the ops taking shapes, axes or pads can read."""
    from .._graph import Tensor
    from ..function import eval as evaluate

    @functools.wraps(fn)
    def handler(ctx: Any, node: onnx.NodeProto, inputs: list) -> list:
        outs = fn(ctx, node, inputs)
        given = [t for t in inputs if t is not None]
        if not given or not all(isinstance(t, Tensor) and t.op == "constant" for t in given):
            return outs
        built = [o for o in outs if isinstance(o, Tensor)]
        if not built or any(None in o.shape or math.prod(o.shape) > _FOLD_MAX for o in built):
            return outs
        values = iter(evaluate(built))
        return [next(values) if isinstance(o, Tensor) else o for o in outs]

    return handler


def op(*names: str, fold: bool = False) -> Callable[[Handler], Handler]:
    """Registers a handler for one or more ONNX op types (default domain); with ``fold``, a node
    of constant inputs is computed at import time."""

    def register(fn: Handler) -> Handler:
        handler = folding(fn) if fold else fn
        for n in names:
            if n in HANDLERS:
                raise RuntimeError(f"kn.onnx: two handlers for {n}")
            HANDLERS[n] = handler
        return fn

    return register


def attrs(node: onnx.NodeProto) -> dict[str, Any]:
    """The node's attributes as Python values (tensors as numpy arrays, strings as str)."""
    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, onnx.TensorProto):
            v = onnx.numpy_helper.to_array(v)
        elif isinstance(v, list) and v and isinstance(v[0], bytes):
            v = [s.decode() for s in v]
        out[a.name] = v
    return out


# ONNX element types kiln has, and their numpy dtypes.
ONNX_TO_NUMPY = {
    onnx.TensorProto.FLOAT: np.float32,
    onnx.TensorProto.DOUBLE: np.float64,
    onnx.TensorProto.INT32: np.int32,
    onnx.TensorProto.INT64: np.int64,
    onnx.TensorProto.UINT8: np.uint8,
    onnx.TensorProto.BOOL: np.bool_,
}


def numpy_dtype(elem_type: int, what: str) -> np.dtype:
    if elem_type not in ONNX_TO_NUMPY:
        name = onnx.TensorProto.DataType.Name(elem_type)
        raise Unsupported(
            f"{what}: element type {name} (kiln has float32, float64, int32, int64, uint8, bool)"
        )
    return np.dtype(ONNX_TO_NUMPY[elem_type])
