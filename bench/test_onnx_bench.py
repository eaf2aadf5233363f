"""Imported ONNX models: kiln running a model read by kn.onnx.load against ONNX Runtime (2 threads)
on the same .onnx file, in the same run, at batch 1 and batch 32. The files are kiln's own exports
(kn.onnx.export) of the CS231n two-layer net and three-layer ConvNet, a ResNet-8 (32x32) and
torchvision's ResNet-18 layout (224x224). The same model built in Python ("kiln, built in
Python") shows what the trip through ONNX costs kiln."""

from __future__ import annotations

import numpy as np
import pytest
from test_conv_bench import resnet8
from test_deploy_bench import resnet18, three_layer

import kiln as kn

onnx = pytest.importorskip("onnx", reason="the onnx package is not installed (pip install kiln[onnx])")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install kiln[onnx])")
import kiln.onnx  # noqa: E402,F401


def mlp(lib):
    nn = lib.nn
    return nn.Sequential(nn.Flatten(), nn.Linear(3072, 100), nn.ReLU(), nn.Linear(100, 10))


# name -> (model builder, image size)
MODELS = {
    "two-layer net": (mlp, 32),
    "three-layer ConvNet": (three_layer, 32),
    "ResNet-8": (resnet8, 32),
    "ResNet-18 224x224": (resnet18, 224),
}
BATCHES = (1, 32)


def rounds(name: str, n: int) -> int:
    if "ResNet-18" in name:
        return 10 if n == 1 else 3
    return 100 if n == 1 else 30


def native(name: str) -> kn.Function:
    """The model as built in Python: the function the .onnx file was exported from."""
    make, size = MODELS[name]
    with kn.Graph():
        kn.manual_seed(0)
        x = kn.input("x", (None, 3, size, size))
        return kn.function([x], make(kn)(x), training=False)


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory):
    """name -> the .onnx file kiln exported for it (made once per run)."""
    out = {}
    folder = tmp_path_factory.mktemp("onnx")
    for name in MODELS:
        out[name] = folder / f"{name.split()[0]}.onnx"
        kn.onnx.export(native(name), out[name])
    return out


def images(n: int, size: int) -> np.ndarray:
    return np.random.default_rng(n).standard_normal((n, 3, size, size), dtype=np.float32)


def time_it(benchmark, record_value, case: str, engine: str, fn, x, n_rounds: int) -> None:
    benchmark.group = case
    benchmark.extra_info["engine"] = engine
    benchmark.pedantic(fn, args=(x,), rounds=n_rounds, iterations=1, warmup_rounds=2)
    record_value(case, engine, benchmark.stats.stats.median)


@pytest.mark.parametrize("n", BATCHES)
@pytest.mark.parametrize("name", list(MODELS))
def test_kiln_on_imported_model(benchmark, record_value, onnx_files, name, n):
    size = MODELS[name][1]
    predict = kn.onnx.load(onnx_files[name]).function()
    x = images(n, size)
    time_it(benchmark, record_value, f"{name} from ONNX, batch {n}", "kiln", predict, x, rounds(name, n))


@pytest.mark.parametrize("n", BATCHES)
@pytest.mark.parametrize("name", list(MODELS))
def test_kiln_on_the_model_built_in_python(benchmark, record_value, onnx_files, name, n):
    """The same weights and layers without the trip through ONNX: what the import costs."""
    x = images(n, MODELS[name][1])
    time_it(benchmark, record_value, f"{name} from ONNX, batch {n}", "kiln, built in Python", native(name), x,
            rounds(name, n))  # fmt: skip


@pytest.mark.parametrize("n", BATCHES)
@pytest.mark.parametrize("name", list(MODELS))
def test_onnxruntime_on_the_same_file(benchmark, record_value, onnx_files, name, n):
    size = MODELS[name][1]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(onnx_files[name]), opts, providers=["CPUExecutionProvider"])
    x = images(n, size)
    time_it(
        benchmark,
        record_value,
        f"{name} from ONNX, batch {n}",
        "onnxruntime",
        lambda v: sess.run(None, {"x": v}),
        x,
        rounds(name, n),
    )


def test_the_imported_model_computes_what_onnxruntime_does(onnx_files):
    """Not a timing: the two engines agree on every file benchmarked here."""
    for name, path in onnx_files.items():
        size = MODELS[name][1]
        x = images(2, size)
        got = kn.onnx.load(path)(x)["output"]
        want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        assert np.abs(got - want).max() <= 1e-4 * max(1.0, float(np.abs(want).max())), name
