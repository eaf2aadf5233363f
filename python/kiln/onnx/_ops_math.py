"""ONNX import handlers: the math ops."""

from __future__ import annotations
