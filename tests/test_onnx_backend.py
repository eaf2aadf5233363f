"""ONNX's own backend node tests (onnx.backend.test) run on kiln: every case of the ops kiln
supports, expanded variants included, except those listed with a reason in tests/onnx_skips.txt
(dtypes kiln does not have). The pass count is printed at the end of the test run (conftest)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

onnx = pytest.importorskip("onnx", reason="the onnx package is not installed (pip install kiln[onnx])")

import onnx.backend.test  # noqa: E402
from onnx.backend.test.loader import load_model_tests  # noqa: E402

from kiln.onnx.backend import KilnBackend  # noqa: E402

# The ops of the list (and the primitives their expanded variants use).
OPS = """Gemm MatMul Conv ConvTranspose MaxPool AveragePool GlobalAveragePool BatchNormalization
LayerNormalization GroupNormalization Relu LeakyRelu PRelu Elu Selu Gelu Sigmoid Tanh Softplus Softmax
LogSoftmax SoftmaxCrossEntropyLoss NegativeLogLikelihoodLoss Dropout Add Sub Mul Div Pow Sqrt Exp Log
Abs Neg Max Min Clip Where Equal Less Greater ReduceSum ReduceMean ReduceMax ReduceMin ArgMax ArgMin
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


def test_every_skip_names_a_selected_case_and_gives_a_reason():
    for name, reason in SKIPPED.items():
        assert name in SELECTED, f"{name} in onnx_skips.txt is not a selected case"
        assert reason, f"{name} in onnx_skips.txt has no reason"
