"""ONNX import handlers: the nn ops."""

from __future__ import annotations
