"""kiln -> ONNX."""

from __future__ import annotations


def export(function, path, opset: int = 17) -> None:  # filled in below
    raise NotImplementedError
