"""kn.onnx.export: kiln inference functions written as ONNX models, run in ONNX Runtime with the same
outputs at any batch size, and read back by kn.onnx.load (run, fine-tuned, saved, run by kiln-run)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="the onnx package is not installed (pip install kiln[onnx])")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install kiln[onnx])")

import kiln as kn  # noqa: E402
import kiln.onnx  # noqa: E402,F401
from kiln import _run  # noqa: E402
from kiln._graph import wrap  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from test_conv_bench import resnet8  # noqa: E402

TOL = 1e-5


# ---------------------------------------------------------------- models


def mlp(lib=kn):
    """CS231n's two-layer net: 3072-100-10."""
    nn = lib.nn
    return nn.Sequential(nn.Flatten(), nn.Linear(3072, 100), nn.ReLU(), nn.Linear(100, 10))


def three_layer(lib=kn):
    """CS231n's three-layer ConvNet: conv 7x7 32 filters pad 3, ReLU, max pool 2, affine 100, ReLU, affine 10."""
    nn = lib.nn
    return nn.Sequential(nn.Conv2d(3, 32, 7, padding=3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(32 * 16 * 16, 100), nn.ReLU(), nn.Linear(100, 10))  # fmt: skip


MODELS = {"mlp": mlp, "three_layer_convnet": three_layer, "resnet8": lambda: resnet8(kn)}


def randomize_state(model: kn.nn.Module, seed: int = 0) -> None:
    """Every vector (biases, batch-norm scales, shifts and running statistics) away from its
    initial value, so that the test sees each one used."""
    rng = np.random.default_rng(seed)
    state = model.state_dict()
    for k, v in state.items():
        if k.endswith("running_var"):
            state[k] = rng.uniform(0.5, 2.0, v.shape).astype(v.dtype)
        elif v.ndim == 1:
            state[k] = (v + rng.normal(0, 0.1, v.shape)).astype(v.dtype)
    model.load_state_dict(state)


def compiled(name: str, seed: int = 0) -> kn.Function:
    """The named model's inference function: x (None, 3, 32, 32) -> {logits, probs}."""
    with kn.Graph():
        kn.manual_seed(seed)
        x = kn.input("x", (None, 3, 32, 32))
        model = MODELS[name]()
        randomize_state(model, seed)
        logits = model(x)
        return kn.function([x], {"logits": logits, "probs": kn.softmax(logits, axis=1)}, training=False)


def batch(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 32, 32), dtype=np.float32)


def session(path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def max_diff(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, a.dtype, b.shape, b.dtype)
    if a.size == 0:
        return 0.0
    if a.dtype == bool or a.dtype.kind in "iu":
        return float(np.abs(a.astype(np.int64) - b.astype(np.int64)).max())
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


# ---------------------------------------------------------------- the three CS231n models


@pytest.mark.parametrize("name", list(MODELS))
def test_model_matches_onnxruntime_at_two_batch_sizes(tmp_path, name):
    f = compiled(name)
    path = tmp_path / f"{name}.onnx"
    model = kn.onnx.export(f, path)
    onnx.checker.check_model(onnx.load(str(path)))
    assert [i.name for i in model.graph.input] == ["x"]
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [3, 32, 32]
    assert [o.name for o in model.graph.output] == ["logits", "probs"]
    assert model.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    # the weights are initializers under their kiln names
    inits = {t.name for t in model.graph.initializer}
    assert {"linear.weight", "linear.bias"} <= inits
    sess = session(path)
    for n in (1, 7):
        xv = batch(n, seed=n)
        want = f(xv)
        got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"x": xv})))
        for k in ("logits", "probs"):
            assert max_diff(want[k], got[k]) <= TOL, (name, n, k)


def test_exported_graphs_use_onnx_s_own_ops(tmp_path):
    ops = {
        name: [n.op_type for n in kn.onnx.export(compiled(name), tmp_path / "m.onnx").graph.node]
        for name in MODELS
    }
    assert ops["mlp"] == ["Flatten", "Gemm", "Relu", "Gemm", "Softmax"]
    assert ops["three_layer_convnet"] == [
        "Conv",
        "Relu",
        "MaxPool",
        "Flatten",
        "Gemm",
        "Relu",
        "Gemm",
        "Softmax",
    ]
    resnet = ops["resnet8"]
    assert resnet.count("Conv") == 9 and resnet.count("BatchNormalization") == 9
    assert "GlobalAveragePool" in resnet and resnet.count("Add") == 3


@pytest.mark.parametrize("opset", [13, 14, 18, 20])
def test_other_opsets(tmp_path, opset):
    f = compiled("resnet8")
    path = tmp_path / "m.onnx"
    model = kn.onnx.export(f, path, opset=opset)
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [opset]
    xv = batch(3)
    got = session(path).run(None, {"x": xv})
    assert max_diff(f(xv)["logits"], got[0]) <= TOL


def test_single_output_and_several_inputs_keep_kiln_names(tmp_path):
    with kn.Graph():
        a = kn.input("image", (None, 4))
        b = kn.input("mask", (None, 4))
        w = kn.Parameter(np.arange(12, dtype=np.float32).reshape(3, 4) / 10, name="proj")
        f = kn.function([a, b], kn.tanh((a * b) @ w.T), training=False)
    model = kn.onnx.export(f, tmp_path / "m.onnx")
    assert [i.name for i in model.graph.input] == ["image", "mask"]
    assert [o.name for o in model.graph.output] == ["output"]
    assert [t.name for t in model.graph.initializer] == ["proj"]
    av, bv = np.ones((2, 4), np.float32), np.full((2, 4), 0.5, np.float32)
    (got,) = session(tmp_path / "m.onnx").run(None, {"image": av, "mask": bv})
    assert max_diff(f(av, bv), got) <= TOL


def test_an_output_that_is_an_input_or_a_weight_or_repeated(tmp_path):
    with kn.Graph():
        x = kn.input("x", (None, 3))
        w = kn.Parameter(np.ones((3,), np.float32), name="w")
        y = x * w
        f = kn.function([x], {"same": x, "weight": w, "y": y, "y_again": y}, training=False)
    kn.onnx.export(f, tmp_path / "m.onnx")
    xv = np.arange(6, dtype=np.float32).reshape(2, 3)
    sess = session(tmp_path / "m.onnx")
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"x": xv})))
    want = f(xv)
    assert set(got) == set(want)
    for k in want:
        assert max_diff(want[k], got[k]) == 0


# ---------------------------------------------------------------- op by op


def raw(op: str, *xs: kn.Tensor, **attrs) -> kn.Tensor:
    """A kiln op applied as is, without the promotions of kn's functions (integer division)."""
    g = xs[0]._graph
    return wrap(g._g.apply(op, [x._v for x in xs], attrs)[0], g)


def _rng(seed=0):
    return np.random.default_rng(seed)


def param(shape, seed=0, scale=0.5):
    return kn.Parameter((_rng(seed).standard_normal(shape) * scale).astype(np.float32))


# name -> (input specs [(name, shape, dtype)], build(*inputs) -> output or dict of outputs, feeds(batch) -> arrays)
def _f32(*shape):
    return lambda n, seed=0: _rng(seed).standard_normal((n, *shape)).astype(np.float32)


def _ints(high, *shape):
    return lambda n, seed=0: _rng(seed).integers(0, high, (n, *shape)).astype(np.int64)


CASES = {
    "unary math": (
        [("x", (None, 5), _f32(5))],
        lambda x: {
            "neg": -x,
            "abs": kn.abs(x),
            "sign": kn.sign(x),
            "square": kn.square(x),
            "exp": kn.exp(x),
            "log": kn.log(kn.abs(x) + 1),
            "sqrt": kn.sqrt(kn.abs(x)),
            "rsqrt": kn.rsqrt(kn.abs(x) + 1),
            "sigmoid": kn.sigmoid(x),
            "tanh": kn.tanh(x),
            "floor": kn.floor(x * 3),
            "cos": kn.cos(x),
            "sin": kn.sin(x),
            "erf": kn.erf(x),
        },
    ),
    "binary math and broadcasting": (
        [("x", (None, 4, 5), _f32(4, 5)), ("y", (None, 1, 5), _f32(1, 5))],
        lambda x, y: {
            "add": x + y,
            "sub": x - y,
            "mul": x * y,
            "div": x / (kn.abs(y) + 1),
            "pow": kn.abs(x) ** 1.5,
            "max": kn.maximum(x, y),
            "min": kn.minimum(x, y),
            "scalar": 2.0 * x - 1.0,
            "rsub": 1.0 - y,
        },
    ),
    "comparisons and logic": (
        [("x", (None, 6), _f32(6)), ("y", (None, 6), _f32(6))],
        lambda x, y: {
            "eq": kn.eq(x, x),
            "ne": kn.ne(x, y),
            "lt": x < y,
            "le": x <= y,
            "gt": x > y,
            "ge": x >= y,
            "and": kn.logical_and(x > 0, y > 0),
            "or": kn.logical_or(x > 0, y > 0),
            "xor": kn.logical_xor(x > 0, y > 0),
            "not": kn.logical_not(x > 0),
            "where": kn.where(x > y, x, y),
            "clip": kn.clip(x, -0.5, 0.5),
            "clip_lo": kn.clip(x, min=0.0),
            "hardtanh": kn.hardtanh(x),
        },
    ),
    "integers and casts": (
        [("i", (None, 5), _ints(20, 5)), ("x", (None, 5), _f32(5))],
        lambda i, x: {
            "floordiv": raw("div", i - 9, raw("sub", i, kn.constant(np.full((1,), 12, np.int64)))),
            "floordiv_zero": raw("div", i, i * 0),
            "to_int": kn.cast(x * 10, "int32"),
            "int_add": i + i * 2,
            "to_float": kn.cast(i, "float32") / 4,
            "to_bool": kn.cast(i, "bool"),
            "from_bool": kn.cast(x > 0, "float32"),
            "relu_int": kn.relu(i - 10),
            "abs_int": kn.abs(i - 10),
        },
    ),
    "reductions": (
        [("x", (None, 3, 4), _f32(3, 4))],
        lambda x: {
            "sum": kn.sum(x, axis=1),
            "sum_all": kn.sum(x),
            "mean": kn.mean(x, axis=(1, 2), keepdims=True),
            "max": kn.max(x, axis=-1),
            "min": kn.min(x, axis=1, keepdims=True),
            "prod": kn.prod(x, axis=2),
            "argmax": kn.argmax(x, axis=2),
            "argmin": kn.argmin(x, axis=1, keepdims=True),
            "var": kn.var(x, axis=1),
            "std": kn.std(x, axis=(1, 2), ddof=1),
            "logsumexp": kn.logsumexp(x, axis=2),
            "mean_batch": kn.mean(x, axis=0),
            "scalar": kn.sum(x) * 2.0 + 1.0,
            "topk_values": kn.topk(x, 3)[0],
            "topk_indices": kn.topk(x, 3)[1],
            "bottom2_axis1": kn.topk(x, 2, axis=1, largest=False)[1],
        },
    ),
    "softmax family": (
        [("x", (None, 3, 7), _f32(3, 7))],
        lambda x: {
            "softmax": kn.softmax(x, axis=-1),
            "softmax1": kn.softmax(x, axis=1),
            "log_softmax": kn.log_softmax(x, axis=2),
        },
    ),
    "shapes": (
        [("x", (None, 2, 3, 4), _f32(2, 3, 4))],
        lambda x: {
            "reshape": kn.reshape(x, (-1, 12)),
            "flatten": kn.flatten(x),
            "flatten_mid": kn.flatten(x, 1, 2),
            "flatten_tail": kn.flatten(x, 2),
            "flatten_all": kn.flatten(x, 0),
            "permute": kn.permute(x, 0, 3, 1, 2),
            "transpose": kn.transpose(x),
            "unsqueeze": kn.unsqueeze(x, 1),
            "squeeze": kn.squeeze(x[:, :1], 1),
            "concat": kn.concat([x, x * 2], axis=2),
            "stack": kn.stack([x, x], axis=1),
            "slice": x[:, 1:, ::2, -3:],
            "reverse": x[:, ::-1, :, 1:-1],
            "index": x[:, 0, 2],
            "pad": kn.pad(x, (1, 2, 0, 1), value=0.5),
            "crop": kn.pad(x, (-1, 0, 1, -1)),
            "split0": kn.split(x, [1, 3], axis=3)[0],
            "split1": kn.split(x, [1, 3], axis=3)[1],
            "broadcast": kn.broadcast_to(x[:, :, :1], (-1, 2, 3, 4)),
            "broadcast_new": kn.broadcast_to(x[0, 0], (2, 3, 4)),
            "zeros": kn.zeros_like(x),
            "ones": kn.ones_like(x[0]),
        },
    ),
    "shape-reading ops": (
        [("x", (None, 3, 4), _f32(3, 4)), ("y", (None, 1, 4), _f32(1, 4))],
        lambda x, y: {
            "sum_to_like": raw("sum_to_like", x, y),
            "sum_to_vector": raw("sum_to_like", x, kn.constant(np.zeros(4, np.float32))),
            "broadcast_like": raw("broadcast_like", y, x),
            "reshape_like": raw("reshape_like", x, kn.flatten(x)),
            "split_like0": raw("split_like", x, x[:, :1], x[:, 1:], axis=1),
            "count": raw("count", x, axes=[0, 2], dtype="float32"),
            "full_like": raw("full_like", x, value=3.0),
            "flatten_lead": kn.flatten(kn.unsqueeze(x, 3), 0, 1),
        },
    ),
    "indexing": (
        [("i", (None, 3), _ints(6, 3)), ("x", (None, 6), _f32(6))],
        lambda i, x: {
            "embedding": kn.embedding(i, param((6, 4))),
            "take": kn.take(param((6, 2)), i, axis=0),
            "take_along": kn.take_along_axis(x, i, axis=1),
            "one_hot": kn.one_hot(i, 6),
            "one_hot_int": kn.one_hot(i, 7, dtype="int64"),
        },
    ),
    "activations": (
        [("x", (None, 8), lambda n, seed=0: _f32(8)(n, seed) * 4)],
        lambda x: {
            "relu": kn.relu(x),
            "leaky": kn.leaky_relu(x, 0.2),
            "elu": kn.elu(x, 0.7),
            "selu": kn.selu(x),
            "softplus": kn.softplus(x),
            "softplus_beta": kn.softplus(x, beta=2.0, threshold=5.0),
            "gelu": kn.gelu(x),
            "gelu_tanh": kn.gelu(x, approximate="tanh"),
            "dropout": kn.dropout(x, 0.5),
            "prelu": kn.prelu(x, kn.Parameter(np.full((1,), 0.25, np.float32))),
        },
    ),
    "matmul forms": (
        [("x", (None, 3, 4), _f32(3, 4))],
        lambda x: {
            "batched": x @ param((4, 5)),
            "batched_t": kn.matmul(x, kn.transpose(x)),
            "vec": x @ param((4,)),
            "linear": kn.nn.Linear(4, 6)(kn.flatten(x, 0, 1)),
            "plain": kn.flatten(x, 0, 1) @ param((4, 2), seed=1),
        },
    ),
    "convolutions": (
        [("x", (None, 4, 9, 9), _f32(4, 9, 9))],
        lambda x: {
            "strided": kn.conv2d(x, param((6, 4, 3, 3)), param((6,)), stride=2, padding=1),
            "dilated": kn.conv2d(x, param((4, 4, 3, 3)), dilation=2, padding=(2, 1)),
            "grouped": kn.conv2d(x, param((8, 2, 3, 3)), groups=2),
            "depthwise_relu": kn.relu(kn.conv2d(x, param((4, 1, 5, 5)), param((4,)), groups=4, padding=2)),
            "transposed": kn.conv_transpose2d(
                x, param((4, 3, 3, 3)), param((3,)), stride=2, padding=1, output_padding=1
            ),
            "conv1d": kn.conv1d(kn.flatten(x, 2), param((2, 4, 5)), padding=2),
        },
    ),
    "pooling": (
        [("x", (None, 3, 10, 10), _f32(3, 10, 10))],
        lambda x: {
            "max": kn.max_pool2d(x, 3, 2, padding=1),
            "avg": kn.avg_pool2d(x, 2),
            "avg_pad": kn.avg_pool2d(x, 3, 2, padding=1),
            "avg_pad_excl": kn.avg_pool2d(x, 3, 2, 1, count_include_pad=False),
            "global": kn.adaptive_avg_pool2d(x, 1),
            "adaptive": kn.adaptive_avg_pool2d(x, (5, 2)),
            "adaptive_odd": kn.adaptive_avg_pool2d(x, (3, 4)),
            "adaptive_max": kn.adaptive_max_pool2d(x, (3, 1)),
            "global_max": kn.adaptive_max_pool2d(x, 1),
            "max_1d": kn.max_pool1d(kn.flatten(x, 2), 4),
            "max_ceil": kn.max_pool2d(x, 3, 2, ceil_mode=True),
            "avg_ceil": kn.avg_pool2d(x, 3, 2, ceil_mode=True),
        },
    ),
    "ceil-mode pooling": (
        [("x", (None, 2, 7, 7), _f32(2, 7, 7))],
        lambda x: {
            f"{op.__name__}_{k}_{s}_{p}_{inc}": op(
                x, k, s, p, ceil_mode=True, **({} if op is kn.max_pool2d else {"count_include_pad": inc})
            )
            for op in (kn.max_pool2d, kn.avg_pool2d)
            for k, s, p in ((3, 3, 1), (2, 3, 1), (3, 2, 1), (4, 4, 2), (3, 3, 0))
            for inc in (True, False)
        },
    ),
    "max pool indices": (
        [("x", (None, 2, 8, 6), _f32(2, 8, 6))],
        lambda x: dict(zip(("values", "indices"), kn.max_pool2d(x, 2, return_indices=True))),
    ),
    "upsampling": (
        [("x", (None, 2, 5, 4), _f32(2, 5, 4))],
        lambda x: {
            "nearest": kn.interpolate(x, scale_factor=2),
            "nearest_size": kn.interpolate(x, size=(7, 9)),
            "bilinear": kn.interpolate(x, scale_factor=2, mode="bilinear"),
            "bilinear_size": kn.interpolate(x, size=(3, 7), mode="bilinear"),
            "bilinear_corners": kn.interpolate(x, size=(9, 6), mode="bilinear", align_corners=True),
            "nearest_frac": kn.interpolate(x, scale_factor=1.5),
        },
    ),
    "normalization": (
        [("x", (None, 6, 5), _f32(6, 5))],
        lambda x: {
            "batch_norm": kn.nn.BatchNorm1d(6)(x),
            "layer_norm": kn.nn.LayerNorm(5)(x),
            "group_norm": kn.nn.GroupNorm(3, 6)(kn.unsqueeze(x, -1)),
        },
    ),
    "cross entropy": (
        [("z", (None, 5), _f32(5)), ("y", (None,), _ints(5))],
        lambda z, y: {
            "mean": kn.softmax_cross_entropy(z, y),
            "sum": kn.softmax_cross_entropy(z, y, reduction="sum"),
            "none": kn.softmax_cross_entropy(z, y, reduction="none"),
            "smooth": kn.softmax_cross_entropy(z, y, label_smoothing=0.1),
            "weighted": kn.softmax_cross_entropy(
                z, y, weight=kn.constant(np.linspace(0.5, 2, 5).astype(np.float32))
            ),
            "ignored": kn.softmax_cross_entropy(z, y, ignore_index=2, reduction="none"),
        },
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_op_matches_onnxruntime(tmp_path, case):
    specs, build, *_ = CASES[case]
    with kn.Graph():
        kn.manual_seed(0)
        ins = []
        for name, shape, make in specs:
            dtype = make(1).dtype
            ins.append(kn.input(name, shape, dtype))
        outs = build(*ins)
        f = kn.function(ins, outs if isinstance(outs, dict) else {"output": outs}, training=False)
    path = tmp_path / "m.onnx"
    kn.onnx.export(f, path)
    sess = session(path)
    names = [o.name for o in sess.get_outputs()]
    for n in (2, 3):
        feeds = [make(n, seed=n) for _, _, make in specs]
        want = f(*feeds)
        got = dict(zip(names, sess.run(None, {s[0]: v for s, v in zip(specs, feeds)})))
        bad = {
            k: max_diff(want[k], got[k])
            for k in want
            if max_diff(want[k], got[k]) > TOL * max(1, np.abs(want[k]).max())
        }
        assert not bad, bad


def test_random_draws_keep_their_shape_and_range(tmp_path):
    with kn.Graph():
        x = kn.input("x", (None, 5))
        f = kn.function([x], {"u": kn.uniform(x, 2.0, 3.0), "n": kn.normal((4, 3))}, training=False)
    kn.onnx.export(f, tmp_path / "m.onnx")
    u, n = session(tmp_path / "m.onnx").run(["u", "n"], {"x": np.zeros((6, 5), np.float32)})
    assert u.shape == (6, 5) and u.dtype == np.float32 and (u >= 2).all() and (u < 3).all() and u.std() > 0
    assert n.shape == (4, 3) and n.std() > 0


# What kn.onnx.load cannot read back yet of what these cases export: case -> the missing piece.
IMPORT_GAPS = {
    "max pool indices": "MaxPool's Indices with a run-time batch size",
    "upsampling": "Shape of a tensor with a run-time batch size (Resize sizes before opset 18)",
    "shape-reading ops": "arithmetic on a run-time batch size (count over the batch axis): refused, not guessed",
}


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(c, marks=pytest.mark.xfail(reason=f"kn.onnx.load: {IMPORT_GAPS[c]}", strict=False))
        if c in IMPORT_GAPS
        else c
        for c in CASES
    ],
)
def test_op_round_trip_through_import(tmp_path, case):
    specs, build = CASES[case]
    with kn.Graph():
        kn.manual_seed(0)
        ins = [kn.input(name, shape, make(1).dtype) for name, shape, make in specs]
        f = kn.function(ins, build(*ins), training=False)
    kn.onnx.export(f, tmp_path / "m.onnx")
    imported = kn.onnx.load(tmp_path / "m.onnx")
    for n in (2, 3):
        feeds = [make(n, seed=n) for _, _, make in specs]
        want, got = f(*feeds), imported(*feeds)
        bad = {
            k: max_diff(want[k], got[k])
            for k in want
            if max_diff(want[k], got[k]) > TOL * max(1, np.abs(want[k]).max())
        }
        assert not bad, bad


def test_a_function_loaded_from_a_kiln_file_exports(tmp_path):
    f = compiled("resnet8", seed=5)
    kn.save(tmp_path / "m.kiln", f)
    loaded = kn.load(tmp_path / "m.kiln")
    kn.onnx.export(loaded, tmp_path / "m.onnx")
    xv = batch(2)
    got = session(tmp_path / "m.onnx").run(["logits"], {"x": xv})[0]
    assert max_diff(f(xv)["logits"], got) <= TOL


# ---------------------------------------------------------------- what cannot be exported


def test_a_training_function_is_refused(tmp_path):
    with kn.Graph():
        x = kn.input("x", (None, 3, 32, 32))
        f = kn.function([x], mlp()(x))
    with pytest.raises(kn.Error, match="training=False"):
        kn.onnx.export(f, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_every_op_without_a_translation_is_named_at_once(tmp_path):
    with kn.Graph():
        x = kn.input("x", (None, 3, 32, 32))
        y = three_layer()(x)
        gx = kn.grad(kn.sum(y), x)  # a saliency map: gradient ops, which ONNX has no ops for
        f = kn.function([x], {"y": y, "saliency": gx}, training=False)
    ops = {n["op"] for n in f._f.program()["nodes"]}
    unsupported = sorted(op for op in ops if op.endswith("_grad"))
    assert len(unsupported) >= 2
    with pytest.raises(kn.Error) as e:
        kn.onnx.export(f, tmp_path / "m.onnx")
    for op in unsupported:
        assert f"'{op}'" in str(e.value)
    assert "inference function" in str(e.value)


def test_bad_opset(tmp_path):
    with pytest.raises(kn.Error, match="opset"):
        kn.onnx.export(compiled("mlp"), tmp_path / "m.onnx", opset=11)


# ---------------------------------------------------------------- back through kn.onnx.load


@pytest.mark.parametrize("name", list(MODELS))
def test_round_trip_through_import(tmp_path, name):
    f = compiled(name)
    path = tmp_path / "m.onnx"
    kn.onnx.export(f, path)
    imported = kn.onnx.load(path)
    assert list(imported.inputs) == ["x"] and list(imported.outputs) == ["logits", "probs"]
    assert "linear.weight" in imported.parameters
    for n in (1, 4):
        xv = batch(n, seed=10 + n)
        want, got = f(xv), imported(xv)
        for k in ("logits", "probs"):
            assert max_diff(want[k], got[k]) <= TOL, (name, n, k)


def test_import_names_every_unsupported_op(tmp_path):
    h = onnx.helper
    nodes = [
        h.make_node("Frobnicate", ["x"], ["a"], domain="kiln.test"),
        h.make_node("Relu", ["a"], ["b"]),
        h.make_node("Twiddle", ["b"], ["y"], domain="kiln.test"),
    ]
    graph = h.make_graph(
        nodes,
        "g",
        [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 4])],
        [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 4])],
    )
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17), h.make_opsetid("kiln.test", 1)])
    with pytest.raises(kn.Error) as e:
        kn.onnx.load(model)
    assert "Frobnicate" in str(e.value) and "Twiddle" in str(e.value)


def test_an_imported_model_fine_tunes_saves_and_runs_in_kiln_run(tmp_path):
    f = compiled("three_layer_convnet", seed=3)
    kn.onnx.export(f, tmp_path / "m.onnx")
    imported = kn.onnx.load(tmp_path / "m.onnx")
    rng = np.random.default_rng(0)
    xv = rng.standard_normal((16, 3, 32, 32), dtype=np.float32)
    yv = rng.integers(0, 10, 16)
    params = list(imported.parameters.values())
    with imported.graph:
        x = imported.inputs["x"]
        y = kn.input("labels", (None,), "int64")
        loss = kn.softmax_cross_entropy(imported.outputs["logits"], y)
        grads = kn.grad(loss, params)
        step = kn.function([x, y], loss, updates=[(p, p - 0.01 * g) for p, g in zip(params, grads)])
    losses = [float(step(xv, yv)) for _ in range(5)]
    assert all(b < a for a, b in zip(losses, losses[1:])), losses

    predict = imported.function()
    want = predict(xv[:4])
    kn.save(tmp_path / "tuned.kiln", predict)
    again = kn.load(tmp_path / "tuned.kiln")(xv[:4])
    for k in want:
        assert max_diff(want[k], again[k]) == 0
    if not os.access(_run.binary(), os.X_OK):
        pytest.skip("kiln-run is not installed beside the package")
    np.save(tmp_path / "x.npy", xv[:4])
    subprocess.run(
        [_run.binary(), str(tmp_path / "tuned.kiln"), "--input", f"x={tmp_path / 'x.npy'}",
         "--output", f"logits={tmp_path / 'logits.npy'}"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    assert max_diff(want["logits"], np.load(tmp_path / "logits.npy")) <= 1e-6


def test_flatten_by_the_dynamic_batch_as_pytorch_exports_it():
    """x.view(x.size(0), -1) exports as Shape -> Gather -> Unsqueeze -> Concat([., -1]) -> Reshape: with
    a dynamic batch the batch size is unknown at import, and the Reshape still resolves."""
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus_one"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["y"]),
    ]
    inits = [
        helper.make_tensor("zero", TensorProto.INT64, [], [0]),
        helper.make_tensor("axes", TensorProto.INT64, [1], [0]),
        helper.make_tensor("minus_one", TensorProto.INT64, [1], [-1]),
    ]
    graph = helper.make_graph(
        nodes,
        "flatten",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2, 3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 24])],
        inits,
    )
    m = kn.onnx.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    for n in (1, 5):
        xv = np.arange(n * 24, dtype=np.float32).reshape(n, 2, 3, 4)
        np.testing.assert_array_equal(m(xv)["y"], xv.reshape(n, 24))


def test_a_model_exported_by_pytorch_imports_and_agrees(tmp_path):
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8)
            self.fc = torch.nn.Linear(8 * 8 * 8, 10)

        def forward(self, x):
            y = torch.nn.functional.max_pool2d(torch.relu(self.bn(self.conv(x))), 2)
            return torch.log_softmax(self.fc(y.view(y.size(0), -1)), dim=1)

    torch.manual_seed(0)
    net = Net().eval()
    path = tmp_path / "net.onnx"
    torch.onnx.export(net, (torch.randn(2, 3, 16, 16),), str(path), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "batch"}}, opset_version=17, dynamo=False)  # fmt: skip
    m = kn.onnx.load(path)
    for n in (1, 6):
        x = torch.randn(n, 3, 16, 16)
        np.testing.assert_allclose(m(x.numpy())["y"], net(x).detach().numpy(), rtol=1e-5, atol=1e-5)


def test_topk_of_no_entries_has_no_onnx_form(tmp_path):
    with kn.Graph():
        x = kn.input("x", (None, 5))
        f = kn.function([x], kn.topk(x, 0)[1], training=False)
    with pytest.raises(kn.Error, match="topk with k = 0"):
        kn.onnx.export(f, tmp_path / "m.onnx")
