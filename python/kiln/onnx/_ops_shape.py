"""ONNX import handlers: the shape ops."""

from __future__ import annotations
