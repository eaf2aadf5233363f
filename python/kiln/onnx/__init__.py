"""ONNX interop: ``kn.onnx.load`` turns an ONNX model into a kiln graph (run it, differentiate it,
fine-tune it, save it as .kiln), ``kn.onnx.export`` writes a kiln inference function as an ONNX
model, and ``kn.onnx.backend`` runs ONNX's own backend test suite on kiln. Needs the ``onnx``
package (``pip install kiln[onnx]``), imported only when this module is."""

from __future__ import annotations

try:
    import onnx  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("kn.onnx needs the onnx package: pip install kiln[onnx] (or pip install onnx)") from e

from ._import import Imported, load
from ._export import export, to_model

__all__ = ["Imported", "load", "export", "to_model"]
