"""kiln as an ONNX backend (onnx.backend.base.Backend), for ONNX's backend test suite: each model is
rebuilt with every input known (shape-like inputs fold into constants), compiled and run."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx.backend.base import Backend, BackendRep

from .. import cuda
from ._import import build


class KilnRep(BackendRep):
    def __init__(self, model: onnx.ModelProto, device: str) -> None:
        self.model = model
        self.device = "cuda" if device.upper().startswith("CUDA") else "cpu"
        initialized = {i.name for i in model.graph.initializer}
        self.input_names = [vi.name for vi in model.graph.input if vi.name not in initialized]

    def run(self, inputs: Any, **kwargs: Any) -> tuple:
        if isinstance(inputs, dict):
            feeds = dict(inputs)
        else:
            if isinstance(inputs, np.ndarray):
                inputs = [inputs]
            feeds = dict(zip(self.input_names, inputs))
        imported = build(self.model, feeds=feeds)
        f = imported.function(device=self.device)
        out = f(*[feeds[n] for n in imported.inputs])
        return tuple(out[vi.name] for vi in self.model.graph.output)


class KilnBackend(Backend):
    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> KilnRep:
        super().prepare(model, device, **kwargs)
        return KilnRep(model, device)

    @classmethod
    def run_model(cls, model: onnx.ModelProto, inputs: Any, device: str = "CPU", **kwargs: Any) -> tuple:
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device.upper() == "CPU" or (device.upper().startswith("CUDA") and cuda.is_available())


prepare = KilnBackend.prepare
run_model = KilnBackend.run_model
supports_device = KilnBackend.supports_device
