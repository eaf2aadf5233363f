"""Shared by the .kiln file tests (test_save.py, test_damaged_files.py): small models with their
optimizers and batches, and helpers that take a file apart (8-byte header length, JSON header with
the graph in its metadata, data) and put it back together with an edit."""

from __future__ import annotations

import copy
import json
import struct

import numpy as np
import pytest

import kiln as kn

# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


def _convnet(lr=1e-3):
    """The ConvNet of the README example: conv, batch norm, max pool, dropout, linear; Adam."""
    kn.manual_seed(0)
    x, y = kn.input("x", (None, 3, 32, 32)), kn.input("y", (None,), "int64")
    model = kn.nn.Sequential(
        kn.nn.Conv2d(3, 8, 3, padding=1), kn.nn.BatchNorm2d(8), kn.nn.ReLU(), kn.nn.MaxPool2d(2),
        kn.nn.Flatten(), kn.nn.Dropout(0.3), kn.nn.Linear(8 * 16 * 16, 10),
    )  # fmt: skip
    logits = model(x)
    loss = kn.softmax_cross_entropy(logits, y)
    opt = kn.optim.Adam(model.parameters(), lr=lr)
    step = kn.function([x, y], loss, updates=opt.updates(loss))
    predict = kn.function([x], logits, training=False)
    return model, opt, step, predict


def _mlp(optimizer="adam"):
    kn.manual_seed(1)
    x, y = kn.input("x", (None, 4)), kn.input("y", (None,), "int64")
    model = kn.nn.Sequential(kn.nn.Linear(4, 8), kn.nn.ReLU(), kn.nn.Linear(8, 3))
    logits = model(x)
    loss = kn.softmax_cross_entropy(logits, y)
    if optimizer == "adam":
        opt = kn.optim.Adam(model.parameters(), lr=1e-2)
    else:
        opt = kn.optim.SGD(model.parameters(), lr=0.1)
    step = kn.function([x, y], loss, updates=opt.updates(loss))
    predict = kn.function([x], logits, training=False)
    return model, opt, step, predict


def _image_batches(n, batch=8, seed=0):
    rng = np.random.default_rng(seed)
    return [
        (rng.standard_normal((batch, 3, 32, 32)).astype(np.float32), rng.integers(0, 10, batch))
        for _ in range(n)
    ]


def _vector_batches(n, batch=16, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((batch, 4)).astype(np.float32), rng.integers(0, 3, batch)) for _ in range(n)]


def _var(p) -> str:
    """The engine's name of a kn.Parameter, under which the file stores it."""
    return p._var_name


# ---------------------------------------------------------------------------------------------
# 2. The safetensors layout
# ---------------------------------------------------------------------------------------------


def _split(raw: bytes) -> tuple[dict, bytes]:
    """(header JSON, data) of a safetensors file."""
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def _join(header, data: bytes, text: bytes | None = None) -> bytes:
    """A safetensors file of `header` (or of raw header bytes `text`) and `data`; N recomputed."""
    if text is None:
        text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def _graph(header: dict) -> dict:
    return json.loads(header["__metadata__"]["kiln.graph"])


def _with_graph(header: dict, graph: dict) -> dict:
    header = copy.deepcopy(header)
    header["__metadata__"]["kiln.graph"] = json.dumps(graph)
    return header


def _fn(graph: dict, name: str) -> dict:
    return next(f for f in graph["functions"] if f["name"] == name)


def _node(graph: dict, function: str, op: str, nth: int = 0) -> dict:
    return [n for n in _fn(graph, function)["nodes"] if n["op"] == op][nth]


_NUMPY_TYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "U8": "u1", "BOOL": "?"}


def _raw_tensors(raw: bytes) -> dict:
    """{name: array} of a safetensors file, read with numpy alone."""
    header, data = _split(raw)
    header.pop("__metadata__", None)
    return {
        name: np.frombuffer(
            data[t["data_offsets"][0] : t["data_offsets"][1]], _NUMPY_TYPES[t["dtype"]]
        ).reshape(t["shape"])
        for name, t in header.items()
    }


def _tensors(path) -> dict:
    st = pytest.importorskip(
        "safetensors.numpy", reason="the safetensors package reads .kiln files independently"
    )
    return st.load_file(str(path))


# ---------------------------------------------------------------------------------------------
# 3. Damaged and hand-edited files
# ---------------------------------------------------------------------------------------------


def _edit_header(edit):
    def mutate(raw):
        header, data = _split(raw)
        edit(header)
        return _join(header, data)

    return mutate


def _edit_graph(edit):
    def mutate(raw):
        header, data = _split(raw)
        graph = _graph(header)
        edit(graph)
        return _join(_with_graph(header, graph), data)

    return mutate


def _set(obj, key, value):
    obj[key] = value


def _header_length(raw) -> int:
    return struct.unpack("<Q", raw[:8])[0]


def _first_constant(header) -> str:
    return next(k for k in header if k.startswith("kiln.constant/"))


# name: (mutation of the bytes of an MLP file holding predict and train_step, fragments the
# message must hold besides the path)
