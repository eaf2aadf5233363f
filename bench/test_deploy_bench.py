"""Deployment speed: kiln-run's batch-1 latency (its own --bench median, measured in C++ with no
Python) against ONNX Runtime on the same architecture, in alternating rounds, and the load time of
a 45 MB .kiln file."""

from __future__ import annotations

import os
import re
import subprocess
import time

import numpy as np
import pytest
from test_conv_bench import basic_block

import kiln as kn
from kiln import _run

try:
    import torch
except ImportError:
    torch = None


def resnet18(lib):
    """torchvision's ResNet-18 layout (ImageNet stem, [2, 2, 2, 2] basic blocks, 1000 classes)."""
    nn, Block = lib.nn, basic_block(lib)
    layers = [nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
              nn.MaxPool2d(3, stride=2, padding=1)]  # fmt: skip
    cin = 64
    for i, cout in enumerate((64, 128, 256, 512)):
        layers += [Block(cin, cout, 1 if i == 0 else 2), Block(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 1000)]
    return nn.Sequential(*layers)


def three_layer(lib):
    nn = lib.nn
    return nn.Sequential(nn.Conv2d(3, 32, 7, padding=3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(32 * 16 * 16, 100), nn.ReLU(), nn.Linear(100, 10))  # fmt: skip


MODELS = {"three-layer ConvNet, batch 1": (three_layer, 32), "ResNet-18 224x224, batch 1": (resnet18, 224)}


def kiln_file(tmp_path, make, size):
    with kn.Graph():
        kn.manual_seed(0)
        x = kn.input("x", (None, 3, size, size))
        f = kn.function([x], make(kn)(x), training=False)
    path = tmp_path / "model.kiln"
    kn.save(path, f, name="predict")
    return path


ROUNDS = 5  # alternating rounds of kiln-run and ORT: this machine's speed drifts by 20% within minutes


def onnxruntime_session(tmp_path, make, size):
    """ORT (2 threads) on the same architecture exported from PyTorch, or None where either is missing."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    if torch is None:
        return None
    path = str(tmp_path / "model.onnx")
    torch.onnx.export(
        make(torch).eval(), torch.zeros(1, 3, size, size), path, input_names=["x"], dynamo=False
    )
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


@pytest.mark.skipif(
    not os.access(_run.binary(), os.X_OK), reason="kiln-run is not installed beside the package"
)
@pytest.mark.parametrize("case", list(MODELS))
def test_kiln_run_against_onnxruntime(benchmark, record_value, tmp_path, case):
    """kiln-run's batch-1 latency (its own --bench median, in C++) and ORT's, in alternating rounds;
    each engine's time is the median of its rounds' medians, so a drift in the machine's speed
    weighs on both alike."""
    make, size = MODELS[case]
    path = kiln_file(tmp_path, make, size)
    x = np.random.default_rng(0).standard_normal((1, 3, size, size), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    runs = 300 if size == 32 else 30
    command = [_run.binary(), str(path), "--input", f"x={tmp_path / 'x.npy'}", "--bench", str(runs)]
    sess = onnxruntime_session(tmp_path, make, size)
    kiln_rounds, ort_rounds = [], []

    def measure() -> None:
        for _ in range(ROUNDS):
            time.sleep(0.05)  # ORT's pool spins for a while after its last call: let it stop first
            out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            kiln_rounds.append(float(re.search(r"median ([\d.]+) us", out).group(1)) * 1e-6)
            if sess is not None:
                for _ in range(3):
                    sess.run(None, {"x": x})  # warm-up, as kiln-run's
                times = []
                for _ in range(runs):
                    start = time.perf_counter()
                    sess.run(None, {"x": x})
                    times.append(time.perf_counter() - start)
                ort_rounds.append(float(np.median(times)))

    benchmark.group = case
    benchmark.pedantic(measure, rounds=1, iterations=1)  # the whole alternation, once
    record_value(case, "kiln", float(np.median(kiln_rounds)))
    if ort_rounds:
        record_value(case, "onnxruntime", float(np.median(ort_rounds)))


def test_load_time_of_a_45_mb_file(record, tmp_path):
    path = kiln_file(tmp_path, resnet18, 224)  # 11.7M float32 parameters and statistics: 47 MB
    size = os.path.getsize(path)
    assert size > 45e6
    kn.load(path)  # the page cache holds the file, as after any first read
    start = time.perf_counter()
    kn.load(path)
    print(f"load of a {size / 1e6:.1f} MB file: {(time.perf_counter() - start) * 1e3:.1f} ms")
    record(f"load a {size / 1e6:.0f} MB .kiln file", "kiln", kn.load, path)
