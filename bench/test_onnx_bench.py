"""Imported ONNX models: kiln running a model read by kn.onnx.load against ONNX Runtime (2 threads)
on the same .onnx file, in the same run, at batch 1 and batch 32. The files are kiln's own exports
(kn.onnx.export) of the CS231n two-layer net and three-layer ConvNet, a ResNet-8 (32x32) and
torchvision's ResNet-18 layout (224x224). The same model built in Python ("kiln, built in
Python") shows what the trip through ONNX costs kiln."""

from __future__ import annotations

import time

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
    """Enough rounds that a median of the small models spans a second or so: this machine's speed
    drifts within seconds."""
    if "ResNet-18" in name:
        return 10 if n == 1 else 3
    return 300 if n == 1 else 200


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


ROUNDS = 7  # alternating rounds of the three engines: this machine's speed drifts within seconds
# A pause before each engine's turn: ORT's pool spins for a while after its last call, and kiln's
# threads run slower beside it (the two-layer net took 15x its time right after ORT's turn).
SETTLE = 0.05
# Then each engine warms up for this long (at least 2 calls): after a pause, either engine ran its
# first 20-30 calls of a small model at one thread's speed here (a virtual CPU left idle is slow to
# get its core back, and the kernel may first place a woken worker beside the calling thread).
WARM_UP = 0.005


@pytest.mark.parametrize("n", BATCHES)
@pytest.mark.parametrize("name", list(MODELS))
def test_kiln_against_onnxruntime(benchmark, record_value, onnx_files, name, n):
    """kiln on the imported model, kiln on the model built in Python (what the trip through ONNX
    costs) and ORT on the same file, in alternating rounds, each engine first in turn; each engine's
    time is the median of its rounds' medians, so a drift in the machine's speed weighs on all three
    alike."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(onnx_files[name]), opts, providers=["CPUExecutionProvider"])
    engines = {
        "kiln": kn.onnx.load(onnx_files[name]).function(),
        "kiln, built in Python": native(name),
        "onnxruntime": lambda v: sess.run(None, {"x": v}),
    }
    x = images(n, MODELS[name][1])
    runs = max(3, rounds(name, n) // ROUNDS)
    medians: dict[str, list[float]] = {engine: [] for engine in engines}

    def measure() -> None:
        order = list(engines.items())
        for r in range(ROUNDS):
            # Each engine goes first in turn: ORT's threads spin 30 - 40 ms after its last call (its
            # process used that much CPU in pauses of 50 - 200 ms), into the next engine's turn.
            for engine, fn in order[r % len(order) :] + order[: r % len(order)]:
                time.sleep(SETTLE)
                warm_until, calls = time.perf_counter() + WARM_UP, 0
                while calls < 2 or time.perf_counter() < warm_until:
                    fn(x)
                    calls += 1
                times = []
                for _ in range(runs):
                    start = time.perf_counter()
                    fn(x)
                    times.append(time.perf_counter() - start)
                medians[engine].append(float(np.median(times)))

    benchmark.group = f"{name} from ONNX, batch {n}"
    benchmark.pedantic(measure, rounds=1, iterations=1)  # the whole alternation, once
    for engine, values in medians.items():
        record_value(f"{name} from ONNX, batch {n}", engine, float(np.median(values)))
        benchmark.extra_info[engine] = float(np.median(values))


def test_the_imported_model_computes_what_onnxruntime_does(onnx_files):
    """Not a timing: the two engines agree on every file benchmarked here."""
    for name, path in onnx_files.items():
        size = MODELS[name][1]
        x = images(2, size)
        got = kn.onnx.load(path)(x)["output"]
        want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        assert np.abs(got - want).max() <= 1e-4 * max(1.0, float(np.abs(want).max())), name
