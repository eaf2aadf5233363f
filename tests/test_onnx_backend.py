"""ONNX's own backend node tests (onnx.backend.test) run on kiln: every case of the ops kiln
supports, expanded variants included, except those listed with a reason in tests/onnx_skips.txt
(dtypes kiln does not have). The pass count is printed at the end of the test run (conftest)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("onnx", reason="the onnx package is not installed (pip install kiln[onnx])")

import onnx  # noqa: E402
import onnx.backend.test  # noqa: E402
from onnx.backend.test.loader import load_model_tests  # noqa: E402

from kiln.onnx.backend import KilnBackend  # noqa: E402

# The ops of the list (and the primitives their expanded variants use), and TopK.
OPS = """Gemm MatMul Conv ConvTranspose MaxPool AveragePool GlobalAveragePool BatchNormalization
LayerNormalization GroupNormalization Relu LeakyRelu PRelu Elu Selu Gelu Sigmoid Tanh Softplus Softmax
LogSoftmax SoftmaxCrossEntropyLoss NegativeLogLikelihoodLoss Dropout Add Sub Mul Div Pow Sqrt Exp Log
Abs Neg Max Min Clip Where Equal Less Greater ReduceSum ReduceMean ReduceMax ReduceMin ArgMax ArgMin TopK
Reshape Flatten Transpose Squeeze Unsqueeze Concat Split Slice Gather Expand Pad Cast Identity
Constant Shape Resize Upsample""".split()

SKIPS_FILE = Path(__file__).with_name("onnx_skips.txt")


def _skips() -> list[tuple[str, str]]:
    out = []
    for line in SKIPS_FILE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, reason = line.partition("#")
            out.append((name.strip(), reason.strip()))
    return out


def _selected() -> list[str]:
    """Node test cases whose op (for an expanded variant: the op it expands) is in OPS."""
    cases = {c.name: c for c in load_model_tests(kind="node")}
    names = []
    for name, case in cases.items():
        base = name.split("_expanded")[0] if "_expanded" in name else name
        ops = {n.op_type for n in cases.get(base, case).model.graph.node}
        if len(ops) == 1 and ops <= set(OPS):
            names.append(name)
    return sorted(names)


SELECTED = _selected()
SKIPPED = dict(_skips())

backend_test = onnx.backend.test.BackendTest(KilnBackend, __name__)
for _name in SELECTED:
    backend_test.include(f"^{re.escape(_name)}_cpu$")
for _name in SKIPPED:
    backend_test.exclude(f"^{re.escape(_name)}_cpu$")
globals().update(backend_test.enable_report().test_cases)


KILN_DTYPES = {"FLOAT", "DOUBLE", "INT32", "INT64", "UINT8", "BOOL"}


def _dtypes(model) -> set[str]:
    """The element types a model's inputs, outputs, initializers, casts and constants use."""
    g = model.graph
    values = [*g.input, *g.output, *g.value_info]
    kinds = {vi.type.WhichOneof("value") for vi in values} - {"tensor_type"}  # optional, sequence, map
    types = {vi.type.tensor_type.elem_type for vi in values if vi.type.HasField("tensor_type")}
    types |= {init.data_type for init in g.initializer}
    for n in g.node:
        for a in n.attribute:
            if n.op_type == "Cast" and a.name == "to":
                types.add(a.i)
            if a.type == onnx.AttributeProto.TENSOR:
                types.add(a.t.data_type)
    return {onnx.TensorProto.DataType.Name(t) for t in types if t} | {k.replace("_type", "") for k in kinds}


def _draws_at_random(model) -> bool:
    """Dropout in training mode: the expected output is one draw of numpy's generator."""
    return any(n.op_type == "Dropout" and len(n.input) > 2 and n.input[2] for n in model.graph.node)


def test_every_skip_is_a_dtype_kiln_does_not_have_or_a_random_draw():
    """A skip may not hide a failure: each names a selected case whose model uses a dtype (or a
    non-tensor type) kiln lacks, or whose expected output is a random draw."""
    cases = {c.name: c for c in load_model_tests(kind="node")}
    for name, reason in SKIPPED.items():
        assert name in SELECTED, f"{name} in onnx_skips.txt is not a selected case"
        model = cases[name].model
        if reason.startswith("random"):
            assert _draws_at_random(model), f"{name} in onnx_skips.txt draws nothing at random"
            continue
        foreign = _dtypes(model) - KILN_DTYPES
        assert foreign, f"{name} in onnx_skips.txt uses only kiln's dtypes"
        assert reason.startswith("dtype") and all(t.lower() in reason for t in foreign), (name, reason)
