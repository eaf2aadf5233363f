"""Damaged and hand-edited .kiln files: each is a kn.Error naming the file and the problem, never
a crash, a hang or a huge allocation.

A fuzz test: thousands of deterministically mutated files never crash, hang, or raise anything
but kn.Error. A long run is one command:

    KILN_FUZZ_CASES=100000 python -m pytest tests/test_damaged_files.py -q -k fuzz

(about 0.5 ms a case; 100,000 cases passed in 54 s on 2026-11-29, and again on 2026-11-30). A failing case is reproduced
alone with ``python tests/test_damaged_files.py --fuzz-case N``.
"""

from __future__ import annotations

import copy
import json
import os
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
import traceback
from pathlib import Path

import numpy as np
import pytest
from kiln_files import (
    _convnet,
    _edit_graph,
    _edit_header,
    _first_constant,
    _fn,
    _graph,
    _header_length,
    _image_batches,
    _join,
    _mlp,
    _node,
    _set,
    _split,
    _with_graph,
)

import kiln as kn

FUZZ_CASES = int(os.environ.get("KILN_FUZZ_CASES", "2000"))
FUZZ_SEED = 20261129


BAD_FILES = {
    "empty": (lambda raw: b"", ["truncated", "0 bytes"]),
    "five_bytes": (lambda raw: raw[:5], ["truncated", "5 bytes"]),
    "only_the_length": (lambda raw: raw[:8], ["truncated", "header length says"]),
    "truncated_in_header": (
        lambda raw: raw[: 8 + _header_length(raw) // 2],
        ["truncated", "header length says"],
    ),
    "truncated_before_last_header_byte": (lambda raw: raw[: 8 + _header_length(raw) - 1], ["truncated"]),
    "truncated_after_header": (lambda raw: raw[: 8 + _header_length(raw)], ["outside the data (0 bytes)"]),
    "truncated_in_data": (lambda raw: raw[:-5], ["outside the data"]),
    "truncated_mid_data": (
        lambda raw: raw[: 8 + _header_length(raw) + 300],
        ["outside the data (300 bytes)"],
    ),
    "header_length_past_end": (
        lambda raw: struct.pack("<Q", len(raw)) + raw[8:],
        ["truncated", "header length says"],
    ),
    "header_length_2_62": (
        lambda raw: struct.pack("<Q", 2**62) + raw[8:],
        ["header length 4611686018427387904", "implausible"],
    ),
    "header_length_max": (lambda raw: b"\xff" * 8 + raw[8:], ["implausible"]),
    "header_not_json": (lambda raw: _join(None, _split(raw)[1], b"{not json"), ["not valid JSON"]),
    "header_not_utf8": (lambda raw: _join(None, _split(raw)[1], b'{"\xff\xfe": 1}'), ["not valid JSON"]),
    "invalid_utf8_inside_the_graph_text": (  # one byte of an op name (the fuzz test's typical failure)
        lambda raw: raw.replace(b"relu", b"\xf2elu", 1),
        ["not valid JSON"],
    ),
    "header_is_a_list": (lambda raw: _join(None, _split(raw)[1], b"[1, 2]"), ["not a JSON object"]),
    "header_is_a_number": (lambda raw: _join(None, _split(raw)[1], b"12"), ["not a JSON object"]),
    "offsets_past_end": (
        _edit_header(lambda h: _set(h["linear.bias"], "data_offsets", [1080, 1112])),
        ["'linear.bias'", "data_offsets [1080,1112] fall outside the data"],
    ),
    "offsets_end_before_begin": (
        _edit_header(lambda h: _set(h["linear.bias"], "data_offsets", [56, 24])),
        ["'linear.bias'", "outside the data"],
    ),
    "offsets_2_64": (
        _edit_header(lambda h: _set(h["linear.bias"], "data_offsets", [2**64 - 8, 2**64 + 24])),
        ["'linear.bias'", "data_offsets"],
    ),
    "offsets_negative": (
        _edit_header(lambda h: _set(h["linear.bias"], "data_offsets", [-32, 0])),
        ["'linear.bias'", "data_offsets must be [begin, end]"],
    ),
    "offsets_not_a_pair": (
        _edit_header(lambda h: _set(h["linear.bias"], "data_offsets", [24])),
        ["'linear.bias'", "data_offsets must be [begin, end]"],
    ),
    "two_tensors_overlap": (
        _edit_header(
            lambda h: _set(h["linear.weight.exp_avg"], "data_offsets", h["linear.weight"]["data_offsets"])
        ),
        ["'linear.weight'", "'linear.weight.exp_avg'", "overlap"],
    ),
    "two_tensors_overlap_partly": (
        _edit_header(lambda h: _set(h["linear.bias_1"], "data_offsets", [148, 160])),
        ["'linear.bias_1'", "overlap"],
    ),
    "unknown_dtype": (
        _edit_header(lambda h: _set(h["linear.bias"], "dtype", "F33")),
        ["'linear.bias'", 'unknown dtype "F33"'],
    ),
    "dtype_not_a_string": (
        _edit_header(lambda h: _set(h["linear.bias"], "dtype", 32)),
        ["'linear.bias'", "unknown dtype 32"],
    ),
    "shape_size_does_not_match_offsets": (
        _edit_header(lambda h: _set(h["linear.weight"], "shape", [8, 5])),
        ["'linear.weight'", "hold 128 bytes", "needs 160"],
    ),
    "dtype_size_does_not_match_offsets": (
        _edit_header(lambda h: _set(h["linear.weight"], "dtype", "F64")),
        ["'linear.weight'", "hold 128 bytes", "needs 256"],
    ),
    "huge_shape": (
        _edit_header(lambda h: _set(h["linear.weight"], "shape", [2**40, 2**40])),
        ["'linear.weight'", "larger than the file's data"],
    ),
    "huge_shape_with_a_zero": (  # 0 elements, but no size overflows on the way
        _edit_header(lambda h: _set(h["linear.weight"], "shape", [2**40, 2**40, 0])),
        ["'linear.weight'", "larger than the file's data"],
    ),
    "negative_size": (
        _edit_header(lambda h: _set(h["linear.weight"], "shape", [-8, -4])),
        ["'linear.weight'", "not a natural number"],
    ),
    "rank_9": (
        _edit_header(lambda h: _set(h["linear.weight"], "shape", [1] * 9)),
        ["'linear.weight'", "shape must be a list of at most"],
    ),
    "tensor_entry_incomplete": (
        _edit_header(lambda h: h["linear.weight"].pop("shape")),
        ["'linear.weight'", "needs dtype, shape and data_offsets"],
    ),
    "metadata_not_strings": (
        _edit_header(lambda h: _set(h["__metadata__"], "kiln.format", 1)),
        ["kiln.format", "is not a string"],
    ),
    "format_99": (
        _edit_header(lambda h: _set(h["__metadata__"], "kiln.format", "99")),
        ["version '99'", "1 to 2", "newer kiln"],
    ),
    "format_0": (
        _edit_header(lambda h: _set(h["__metadata__"], "kiln.format", "0")),
        ["version '0'", "1 to 2"],
    ),
    "format_not_a_number": (
        _edit_header(lambda h: _set(h["__metadata__"], "kiln.format", "one")),
        ["version 'one'", "1 to 2"],
    ),
    "no_kiln_metadata": (_edit_header(lambda h: h.pop("__metadata__")), ["not a kiln file", "kiln.format"]),
    "no_graph": (_edit_header(lambda h: h["__metadata__"].pop("kiln.graph")), ["no kiln.graph"]),
    "graph_not_json": (
        _edit_header(lambda h: _set(h["__metadata__"], "kiln.graph", "{oops")),
        ["kiln.graph", "parse error"],
    ),
    "graph_without_functions": (_edit_graph(lambda g: _set(g, "functions", [])), ["holds no functions"]),
    "graph_field_missing": (
        _edit_graph(lambda g: _fn(g, "predict").pop("updates")),
        ["kiln.graph", "function 'predict'", "updates"],
    ),
    "graph_field_wrong_type": (
        _edit_graph(lambda g: _set(_fn(g, "predict"), "training", "no")),
        ["kiln.graph", "function 'predict'", "boolean"],
    ),
    "two_functions_one_name": (
        _edit_graph(lambda g: _set(_fn(g, "train_step"), "name", "predict")),
        ["two functions named 'predict'"],
    ),
    "unknown_op": (
        _edit_graph(lambda g: _set(_node(g, "predict", "relu"), "op", "relu_v2")),
        ["function 'predict'", "unknown op 'relu_v2'"],
    ),
    "unknown_attribute": (
        _edit_graph(lambda g: _set(_node(g, "predict", "matmul")["attrs"], "alpha", 2)),
        ["(matmul)", "unknown attribute 'alpha'"],
    ),
    "missing_attribute": (
        _edit_graph(lambda g: _node(g, "predict", "variable")["attrs"].pop("shape")),
        ["(variable)", "missing attribute 'shape'"],
    ),
    "attribute_of_another_kind": (
        _edit_graph(lambda g: _set(_node(g, "predict", "matmul")["attrs"], "transpose_b", {"x": 1})),
        ["(matmul)", "not an integer, a number, a string or a list of integers"],
    ),
    "linear_weight_shape_attr_edited": (
        _edit_graph(lambda g: _set(_node(g, "predict", "variable")["attrs"], "shape", [8, 5])),
        ["function 'predict'", "(variable)", "file says it gives float32(8, 4)", "give float32(8, 5)"],
    ),
    "stored_output_shape_edited": (
        _edit_graph(lambda g: _set(_node(g, "predict", "matmul"), "outputs", [["float32", [-1, 9]]])),
        ["(matmul)", "file says it gives float32(None, 9)", "give float32(None, 8)"],
    ),
    "input_shape_edited": (  # the input now has 5 features: the first matmul no longer fits
        _edit_graph(
            lambda g: _node(g, "predict", "input").update(
                attrs={"dtype": "float32", "shape": [-1, 5]}, outputs=[["float32", [-1, 5]]]
            )
        ),
        ["function 'predict'", "(matmul)"],
    ),  # fmt: skip
    "variable_edited_consistently_but_not_like_its_tensor": (
        _edit_graph(
            lambda g: _node(g, "predict", "variable", 1).update(
                attrs={"dtype": "float32", "name": "linear.bias", "shape": [4], "trainable": 1},
                outputs=[["float32", [4]]],
            )
        ),
        ["variable 'linear.bias' is float32(8,)", "the node reads float32(4,)"],
    ),  # fmt: skip
    "input_edge_points_forward": (
        _edit_graph(lambda g: _set(_node(g, "predict", "matmul"), "inputs", [[0, 0], [7, 0]])),
        ["(matmul)", "edge [7,0] does not name an output of an earlier node"],
    ),
    "input_edge_points_to_itself": (
        _edit_graph(lambda g: _set(_node(g, "predict", "matmul"), "inputs", [[0, 0], [5, 0]])),
        ["(matmul)", "edge [5,0] does not name an output of an earlier node"],
    ),
    "input_edge_to_a_missing_output": (
        _edit_graph(lambda g: _set(_node(g, "predict", "matmul"), "inputs", [[0, 0], [1, 1]])),
        ["(matmul)", "edge [1,1]"],
    ),
    "input_edge_negative": (
        _edit_graph(lambda g: _set(_node(g, "predict", "matmul"), "inputs", [[0, 0], [-1, 0]])),
        ["(matmul)", "edge [-1,0]"],
    ),
    "wrong_number_of_inputs": (
        _edit_graph(lambda g: _set(_node(g, "predict", "relu"), "inputs", [[6, 0], [6, 0]])),
        ["(relu)", "has 2 inputs, the op takes 1"],
    ),
    "output_edge_out_of_range": (
        _edit_graph(lambda g: _set(_fn(g, "predict"), "outputs", [[99, 0]])),
        ["function 'predict'", "edge [99,0]"],
    ),
    "function_input_is_not_an_input_node": (
        _edit_graph(lambda g: _set(_fn(g, "predict"), "inputs", [1])),
        ["input 1 is not an input node"],
    ),
    "update_of_a_variable_not_in_the_file": (
        _edit_graph(lambda g: _set(_fn(g, "train_step")["updates"][0], 0, "no.such.variable")),
        ["function 'train_step'", "'no.such.variable', which the file does not hold"],
    ),
    "missing_variable_tensor": (
        _edit_header(lambda h: h.pop("linear.bias")),
        ["variable 'linear.bias' has no tensor in the file"],
    ),
    "variable_node_reads_a_variable_not_in_the_file": (
        _edit_graph(lambda g: _set(_node(g, "predict", "variable")["attrs"], "name", "ghost")),
        ["(variable)", "reads variable 'ghost', which the file does not hold"],
    ),
    "missing_constant_tensor": (
        _edit_header(lambda h: h.pop(_first_constant(h))),
        ["function 'train_step'", "(constant)", "is not in the file"],
    ),
}


@pytest.fixture
def mlp_file(tmp_path) -> Path:
    model, opt, step, predict = _mlp()
    path = tmp_path / "mlp.kiln"
    kn.save(path, predict, step, name=["predict", "train_step"])
    return path


def test_the_bad_file_cases_edit_what_they_mean_to(mlp_file):
    """The byte offsets and node positions BAD_FILES relies on."""
    raw = mlp_file.read_bytes()
    header, data = _split(raw)
    assert _split(_join(header, data)) == (header, data)
    assert header["linear.bias"]["data_offsets"] == [24, 56] and header["linear.bias_1"]["data_offsets"] == [
        152,
        164,
    ]
    assert len(data) == 1096
    nodes = _fn(_graph(header), "predict")["nodes"]
    assert [n["op"] for n in nodes] == ["input"] + ["variable"] * 4 + [
        "matmul",
        "add",
        "relu",
        "matmul",
        "add",
    ]
    assert nodes[1]["attrs"]["name"] == "linear.weight" and nodes[2]["attrs"]["name"] == "linear.bias"
    assert kn.load(mlp_file)  # the unedited file loads


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_file_is_an_error_naming_the_file_and_the_problem(mlp_file, tmp_path, case):
    mutate, fragments = BAD_FILES[case]
    bad = tmp_path / f"{case}.kiln"
    bad.write_bytes(mutate(mlp_file.read_bytes()))
    with pytest.raises(kn.Error) as e:
        kn.load(bad)
    message = str(e.value)
    assert message.startswith(f"{bad}: "), message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_variable_name_attribute_of_the_wrong_type_names_the_file(mlp_file, tmp_path):
    bad = tmp_path / "name_is_a_number.kiln"
    bad.write_bytes(
        _edit_graph(lambda g: _set(_node(g, "predict", "variable")["attrs"], "name", 5))(
            mlp_file.read_bytes()
        )
    )
    with pytest.raises(kn.Error) as e:
        kn.load(bad)
    assert str(bad) in str(e.value), str(e.value)
    assert "attribute 'name' is not a string" in str(e.value)


def test_plain_safetensors_file_is_not_a_kiln_file(tmp_path):
    st = pytest.importorskip("safetensors.numpy", reason="writes a plain safetensors file to read back")
    path = tmp_path / "weights.safetensors"
    st.save_file({"w": np.ones((2, 3), np.float32)}, str(path))
    with pytest.raises(kn.Error) as e:
        kn.load(path)
    assert str(e.value).startswith(f"{path}: not a kiln file")
    st.save_file({"w": np.ones((2, 3), np.float32)}, str(path), metadata={"format": "pt"})
    with pytest.raises(kn.Error, match="no kiln.format"):
        kn.load(path)


def test_shape_whose_element_count_overflows_is_rejected(mlp_file, tmp_path):
    """A reshape of linear.weight (8 x 4 = 32 elements) into (4, 2**62 + 8): 4 * (2**62 + 8) is
    2**64 + 32, which wraps to 32 in int64 arithmetic. The file must be refused (or the call must
    fail with a kn.Error); the engine must never produce a tensor claiming 2**64 elements."""
    big = 2**62 + 8

    def edit(g):
        f = _fn(g, "predict")
        f["nodes"].append({"op": "reshape", "attrs": {"shape": [4, big]}, "inputs": [[1, 0]],
                           "outputs": [["float32", [4, big]]]})  # fmt: skip
        f["outputs"] = [[len(f["nodes"]) - 1, 0]]

    bad = tmp_path / "overflow.kiln"
    bad.write_bytes(_edit_graph(edit)(mlp_file.read_bytes()))
    try:
        fs = kn.load(bad)
    except kn.Error as e:
        assert str(bad) in str(e)
        return
    with pytest.raises(kn.Error):
        fs["predict"](np.ones((2, 4), np.float32))


_LOAD_AND_CALL_CHILD = """
import sys, numpy as np, kiln as kn
path, inputs = sys.argv[1:]
try:
    loaded = kn.load(path)
except kn.Error as e:
    print("load-error" if path in str(e) else "load-error-without-path", flush=True)
    sys.exit(0)
arrays = dict(np.load(inputs))
functions = loaded if isinstance(loaded, dict) else {"main": loaded}
for name, f in functions.items():
    try:
        f(**{k: arrays[k] for k in f.input_names})
    except kn.Error:
        print("call-error", flush=True)
        sys.exit(0)
print("ran", flush=True)
"""


def _load_and_call_in_child(path: Path, **inputs) -> str:
    """Loads `path` and calls each of its functions in a child process (a crash there fails the
    test, not the test run): "load-error", "call-error" or "ran"."""
    npz = path.with_suffix(".npz")
    np.savez(npz, **inputs)
    result = subprocess.run(
        [sys.executable, "-X", "faulthandler", "-c", _LOAD_AND_CALL_CHILD, str(path), str(npz)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"the process died (rc {result.returncode}):\n{result.stderr[-2000:]}"
    return result.stdout.strip().splitlines()[-1]


# Consistent-looking edits of a ConvNet training step that the loader's checks (op, attributes,
# shape inference) must still refuse: gradient ops are only ever built by kn.grad, with the inputs
# their kernels expect, so their inference must check what a file can wire into them.
# name: (train_step node op, nth such node, edit of that node)
WIRED_WRONG = {
    # the labels input dropped: the kernel reads a third input that is not there (SIGSEGV)
    "softmax_cross_entropy_grad_without_labels": ("softmax_cross_entropy_grad", 0, lambda n: n["inputs"].pop(2)),
    # the logits given twice: float logits read as int64 labels, labels read as class weights (SIGSEGV)
    "softmax_cross_entropy_grad_logits_twice": (
        "softmax_cross_entropy_grad", 0, lambda n: n["inputs"].insert(1, n["inputs"][1])),
    # the incoming gradient of batch norm replaced by an 8-vector: the kernel reads N x 8 x 32 x 32
    # floats from it (out of bounds; the loss turns NaN)
    "batch_norm_grad_with_a_vector_gradient": ("batch_norm_grad", 0, lambda n: n["inputs"].__setitem__(0, [3, 0])),
    # max pooling's int64 argmax indices replaced by a float32 vector
    "max_pool_grad_with_float_indices": ("max_pool_grad", 0, lambda n: n["inputs"].__setitem__(1, [3, 0])),
}  # fmt: skip


@pytest.mark.parametrize("case", list(WIRED_WRONG))
def test_gradient_ops_wired_wrong_are_refused(tmp_path, case):
    model, opt, step, predict = _convnet()
    path = tmp_path / "model.kiln"
    kn.save(path, predict, step, name=["predict", "train_step"])
    op, nth, edit = WIRED_WRONG[case]
    bad = tmp_path / f"{case}.kiln"
    bad.write_bytes(_edit_graph(lambda g: edit(_node(g, "train_step", op, nth)))(path.read_bytes()))
    x, y = _image_batches(1, batch=4)[0]
    outcome = _load_and_call_in_child(bad, x=x, y=y)
    assert outcome in ("load-error", "call-error"), f"{case}: {outcome}"


def test_a_negative_axis_in_a_file_counts_from_the_end(tmp_path):
    """sum over axis -1 of a vector is the sum over axis 0, as in numpy (the kernel once indexed a
    mask with -1 and aborted: "double free or corruption")."""
    model, opt, step, predict = _convnet()
    path = tmp_path / "model.kiln"
    kn.save(path, predict, step, name=["predict", "train_step"])
    bad = tmp_path / "minus_one.kiln"
    bad.write_bytes(
        _edit_graph(lambda g: _node(g, "train_step", "sum", 0)["attrs"].__setitem__("axes", [-1]))(
            path.read_bytes()
        )
    )
    x, y = _image_batches(1, batch=4)[0]
    assert _load_and_call_in_child(bad, x=x, y=y) == "ran"


def test_the_child_process_check_sees_a_good_file_run(tmp_path):
    model, opt, step, predict = _convnet()
    path = tmp_path / "model.kiln"
    kn.save(path, predict, step, name=["predict", "train_step"])
    x, y = _image_batches(1, batch=4)[0]
    assert _load_and_call_in_child(path, x=x, y=y) == "ran"


_REWRITE_CHILD = """
import os, sys, numpy as np, kiln as kn
src, path, mode = sys.argv[1:]
with open(src, "rb") as f:
    raw = f.read()
with open(path, "wb") as f:
    f.write(raw)
predict = kn.load(path)["predict"]
x = np.ones((2, 4), np.float32)
before = predict(x)
if mode == "truncate":
    open(path, "wb").close()  # the same file (inode), now empty
else:
    n = int.from_bytes(raw[:8], "little")
    with open(path, "r+b") as f:  # the same file, its data overwritten with zeros
        f.write(raw[: 8 + n] + bytes(len(raw) - 8 - n))
try:
    after = predict(x)
except kn.Error:
    sys.exit(0)
sys.exit(0 if np.array_equal(before, after) else 3)
"""


@pytest.mark.parametrize("mode", ["truncate", "overwrite"])
def test_a_loaded_function_survives_its_file_being_rewritten(mlp_file, tmp_path, mode):
    """A loaded function must not depend on the file staying as it was: rewriting the file in
    place (cp, an editor, another program's writer) must neither crash the process (SIGBUS on the
    memory-mapped pages) nor silently change the loaded weights."""
    result = subprocess.run(
        [sys.executable, "-X", "faulthandler", "-c", _REWRITE_CHILD, str(mlp_file), str(tmp_path / "rewritten.kiln"), mode],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode != 3, "the loaded weights changed with the file"
    assert result.returncode == 0, f"child died (rc {result.returncode}): {result.stderr[-2000:]}"


# ---------------------------------------------------------------------------------------------
# 4. Fuzz
# ---------------------------------------------------------------------------------------------


def _fuzz_base_file(path: str) -> None:
    """A small MLP's predict and SGD train_step (header of about 5 KB)."""
    with kn.Graph():
        model, opt, step, predict = _mlp(optimizer="sgd")
        kn.save(path, predict, step, name=["predict", "train_step"])


def _text_edit(rng, text: bytes) -> tuple[str, bytes]:
    """Replaces a digit by another, deletes a character, or swaps two bytes."""
    kind = rng.integers(3)
    if kind == 0:
        digits = [i for i, c in enumerate(text) if 48 <= c <= 57]
        if digits:
            i = int(rng.choice(digits))
            d = (text[i] - 48 + int(rng.integers(1, 10))) % 10  # another digit
            return f"digit at {i} -> {d}", text[:i] + bytes([48 + d]) + text[i + 1 :]
        kind = 1
    if kind == 1:
        i = int(rng.integers(len(text)))
        return f"delete {i}", text[:i] + text[i + 1 :]
    i, j = sorted(int(v) for v in rng.integers(len(text), size=2))
    b = bytearray(text)
    b[i], b[j] = b[j], b[i]
    return f"swap {i} {j}", bytes(b)


# Values a graph edit puts in place of another: sizes and indices at the edges of int32, int64
# and uint64, wrong types, other ops' and dtypes' names.
_GRAPH_VALUES = [
    0, 1, -1, -2, 3, 8, 2**31 - 1, 2**31, 2**32 + 1, 2**62 + 8, 2**63 - 1, -(2**63), 2**64 - 1, 0.5, -1e300,
    "", "float32", "int64", "bool", "bfloat16", "input", "variable", "constant", "reshape", "relu", "sum",
    "uniform", "broadcast_to", "x", "linear.weight", [], [0], [-1], [2**40, 2**40], [[0, 0]], [0, 0], {}, None,
    True, {"float": "nan"},
]  # fmt: skip


def _graph_slots(value, slots, where=""):
    """Every (container, key, path) of a parsed JSON value."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        slots.append((value, key, f"{where}/{key}"))
        _graph_slots(child, slots, f"{where}/{key}")
    return slots


def _graph_value_edit(rng, graph: dict) -> str:
    """Replaces, deletes or duplicates one value anywhere in the parsed graph."""
    slots = _graph_slots(graph, [])
    container, key, where = slots[int(rng.integers(len(slots)))]
    action = rng.integers(4)
    if action == 0:
        del container[key]
        return f"delete {where}"
    if action == 1 and isinstance(container, list):
        container.insert(key, copy.deepcopy(container[key]))
        return f"duplicate {where}"
    new = copy.deepcopy(_GRAPH_VALUES[int(rng.integers(len(_GRAPH_VALUES)))])
    old = container[key]
    container[key] = new
    return f"{where}: {json.dumps(old)[:40]} -> {json.dumps(new)}"


def _mutate(raw: bytes, case: int) -> tuple[str, bytes]:
    """The case-th mutation of `raw` (deterministic: a generator seeded by the case alone)."""
    rng = np.random.default_rng([FUZZ_SEED, case])
    n = _header_length(raw)
    kind = case % 7
    if kind in (0, 1):  # bit flips in the header (its length field included) or in the data
        lo, hi = (0, 8 + n) if kind == 0 else (8 + n, len(raw))
        b = bytearray(raw)
        flips = [(int(rng.integers(lo, hi)), int(rng.integers(8))) for _ in range(int(rng.integers(1, 5)))]
        for i, bit in flips:
            b[i] ^= 1 << bit
        return f"{'header' if kind == 0 else 'data'} bit flips (byte, bit) {flips}", bytes(b)
    if kind == 2:
        cut = int(rng.integers(len(raw)))
        return f"truncate to {cut} bytes", raw[:cut]
    if kind == 3:  # an edit of the header text, N recomputed
        text = raw[8 : 8 + n]
        edits = []
        for _ in range(int(rng.integers(1, 3))):
            what, text = _text_edit(rng, text)
            edits.append(what)
        return f"header text: {edits}", struct.pack("<Q", len(text)) + text + raw[8 + n :]
    # kinds 4 to 6: edits of the graph JSON itself (kiln.graph), re-escaped into a valid header, so
    # that the mutation reaches the graph reader; kind 5 edits only digits (shapes, edges, attrs),
    # kind 6 replaces, deletes or duplicates parsed values (the graph stays valid JSON)
    header, data = _split(raw)
    if kind == 6:
        graph = _graph(header)
        edits = [_graph_value_edit(rng, graph) for _ in range(int(rng.integers(1, 3)))]
        return f"graph values: {edits}", _join(_with_graph(header, graph), data)
    text = header["__metadata__"]["kiln.graph"].encode()
    edits = []
    for _ in range(int(rng.integers(1, 4))):
        if kind == 5:
            digits = [i for i, c in enumerate(text) if 48 <= c <= 57]
            i = int(rng.choice(digits))
            d = (text[i] - 48 + int(rng.integers(1, 10))) % 10
            what, text = f"digit at {i} -> {d}", text[:i] + bytes([48 + d]) + text[i + 1 :]
        else:
            what, text = _text_edit(rng, text)
        edits.append(what)
    header["__metadata__"]["kiln.graph"] = text.decode("utf-8", "replace")
    return f"graph text: {edits}", _join(header, data)


def _fuzz_one(raw: bytes, case: int, path: str) -> str | None:
    """Runs one case; None when kiln behaved, else what went wrong (with the traceback)."""
    what, mutated = _mutate(raw, case)
    if os.path.exists(path):
        os.unlink(path)  # a new file: never rewrite one a loaded function may still map
    with open(path, "wb") as f:
        f.write(mutated)
    try:
        try:
            loaded = kn.load(path)
        except kn.Error as e:
            if path not in str(e):
                return f"case {case} ({what}): kn.Error without the path: {e}"
            return None
        functions = loaded if isinstance(loaded, dict) else {"predict": loaded}
        x = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)
        for name, f in functions.items():
            args = (x, np.array([0, 2])) if len(f.input_names) == 2 else (x,)
            try:
                out = f(*args)
            except kn.Error:
                continue
            arrays = out if isinstance(out, list) else list(out.values()) if isinstance(out, dict) else [out]
            if not all(isinstance(a, np.ndarray) for a in arrays):
                return f"case {case} ({what}): {name} returned {type(out).__name__}, not arrays"
    except Exception:
        return f"case {case} ({what}): {traceback.format_exc()}"
    return None


def _fuzz_child(start: int, stop: int, progress: str) -> None:
    """Runs cases [start, stop), printing each failure as a line of JSON as it happens; writes the
    case number to `progress` before each case, so that a crash names its case."""
    kn.set_num_threads(1)
    work = tempfile.mkdtemp(prefix="kiln_fuzz_", dir=os.path.dirname(progress))
    base = os.path.join(work, "base.kiln")
    _fuzz_base_file(base)
    with open(base, "rb") as f:
        raw = f.read()
    path = os.path.join(work, "case.kiln")
    fd = os.open(progress, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    for case in range(start, stop):
        os.pwrite(fd, f"{case:12d}".encode(), 0)
        failure = _fuzz_one(raw, case, path)
        if failure:
            print(json.dumps(failure), flush=True)
    os.close(fd)
    print(json.dumps("done"), flush=True)


def _fuzz_describe(case: int) -> str:
    with tempfile.TemporaryDirectory() as d:
        _fuzz_base_file(os.path.join(d, "base.kiln"))
        with open(os.path.join(d, "base.kiln"), "rb") as f:
            return _mutate(f.read(), case)[0]


def test_fuzz_mutated_files_load_or_fail_with_kiln_errors(tmp_path):
    """KILN_FUZZ_CASES (default 2000) mutated copies of a small MLP file: header and data bit
    flips, truncations, header and graph text edits, graph value edits. Each either fails to load
    with a kn.Error naming the file, or loads into functions whose calls return arrays or raise
    kn.Error. The cases run in a child process; when it crashes or hangs, the case is recorded and
    a new child goes on after it, so that one run reports every misbehaving case."""
    progress = tmp_path / "progress"
    failures, start, began = [], 0, time.monotonic()
    while start < FUZZ_CASES and len(failures) < 10_000:
        code = textwrap.dedent(f"""
            import sys
            sys.path.insert(0, {str(Path(__file__).parent)!r})
            import test_damaged_files
            test_damaged_files._fuzz_child({start}, {FUZZ_CASES}, {str(progress)!r})
        """)
        try:
            result = subprocess.run(
                [sys.executable, "-X", "faulthandler", "-c", code], capture_output=True, text=True,
                timeout=60 + (FUZZ_CASES - start) * 0.05,
            )  # fmt: skip
            stdout, how = result.stdout, f"died (rc {result.returncode})"
        except subprocess.TimeoutExpired as e:
            stdout, how = (e.stdout or b"").decode(errors="replace"), "hung"
        lines = [json.loads(line) for line in stdout.splitlines() if line.startswith('"')]
        failures += [line for line in lines if line != "done"]
        if "done" in lines:
            break
        case = int(progress.read_text())
        failures.append(
            f"case {case} ({_fuzz_describe(case)}): the process {how}; "
            f"rerun alone: python {__file__} --fuzz-case {case}"
        )
        start = case + 1
    elapsed = time.monotonic() - began
    if failures:  # grouped by what went wrong, with the first case of each group
        groups: dict[str, list[str]] = {}
        for f in failures:
            key = f.strip().splitlines()[-1].split(":")[0] if "Traceback" in f else f.split("): ", 1)[-1]
            key = key.split(";")[0][:70]
            groups.setdefault(key, []).append(f)
        report = [f"{len(v)} x {k}\n  first: {v[0][:1500]}" for k, v in groups.items()]
        pytest.fail(
            f"{len(failures)} of {FUZZ_CASES} cases misbehaved ({elapsed:.0f} s):\n" + "\n".join(report)
        )
    print(f"{FUZZ_CASES} fuzz cases in {elapsed:.1f} s")


def test_fuzz_mutations_are_deterministic_and_varied():
    with tempfile.TemporaryDirectory() as d:
        _fuzz_base_file(os.path.join(d, "base.kiln"))
        raw = Path(d, "base.kiln").read_bytes()
    assert _header_length(raw) < 16000  # a small header: many cases per second
    first = [_mutate(raw, i) for i in range(60)]
    assert first == [_mutate(raw, i) for i in range(60)]
    assert (
        len({m for _, m in first}) >= 58 and sum(m != raw for _, m in first) >= 58
    )  # a swap may swap equals


if __name__ == "__main__":  # python tests/test_damaged_files.py --fuzz-case N: one fuzz case, in this process
    if len(sys.argv) == 3 and sys.argv[1] == "--fuzz-case":
        with tempfile.TemporaryDirectory() as d:
            base = os.path.join(d, "base.kiln")
            _fuzz_base_file(base)
            with open(base, "rb") as f:
                raw_bytes = f.read()
            n_case = int(sys.argv[2])
            print(_mutate(raw_bytes, n_case)[0])
            print(_fuzz_one(raw_bytes, n_case, os.path.join(d, "case.kiln")) or "ok")
