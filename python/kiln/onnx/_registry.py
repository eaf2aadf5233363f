"""The import's op table: one handler per ONNX op type, in the _ops_*.py modules.

A handler is ``fn(ctx, node, inputs) -> list of outputs``: ``inputs`` holds a kn.Tensor per node
input (None for an omitted optional input), the outputs are kn.Tensors (None for an output it does
not produce). Attributes come from ``attrs(node)``; the value of an input known at import time (an
initializer, a Constant, or in the backend an input fed with the model) from ``ctx.value(node, i)``.
A handler that meets a case kiln cannot express raises ``Unsupported`` with the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
from onnx import helper

from .._graph import Error

Handler = Callable[..., list]
HANDLERS: dict[str, Handler] = {}


class Unsupported(Error):
    """A node kiln cannot import: the op, an attribute value or a dtype it does not have."""


def op(*names: str) -> Callable[[Handler], Handler]:
    """Registers a handler for one or more ONNX op types (default domain)."""

    def register(fn: Handler) -> Handler:
        for n in names:
            HANDLERS[n] = fn
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
        raise Unsupported(f"{what}: element type {name} (kiln has float32, float64, int32, int64, uint8, bool)")
    return np.dtype(ONNX_TO_NUMPY[elem_type])
