"""Deployment without Python: a model trained in Python, saved, then run by the compiled programs
that ship with kiln (kiln-run, and the C++ examples infer and train), must give Python's results."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from conftest import DATA_DIR

import kiln as kn
from kiln import _run

BIN = os.path.dirname(_run.binary())
needs_bin = pytest.mark.skipif(
    not os.access(_run.binary(), os.X_OK),
    reason="kiln-run is not installed beside the package (pip install .)",
)


def run(program: str, *args, ok: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(
        [os.path.join(BIN, program), *map(str, args)], capture_output=True, text=True, timeout=120
    )
    if ok and p.returncode != 0:
        raise AssertionError(f"{program} failed ({p.returncode}): {p.stderr}")
    return p


def images(n: int, seed: int = 0):
    """n CIFAR-10 test images (or, without the data set, random ones) and labels."""
    if (DATA_DIR / "cifar-10-batches-py" / "test_batch").exists():
        x, y = kn.data.load_cifar10(DATA_DIR, "test")
        return (x[:n].astype(np.float32) / 255.0 - 0.5), y[:n].astype(np.int64)
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 3, 32, 32), dtype=np.float32), rng.integers(0, 10, n)


def convnet(x, y):
    """CS231n-style: conv, batch norm, ReLU, pool, dropout, affine; Adam."""
    model = kn.nn.Sequential(
        kn.nn.Conv2d(3, 8, 5, padding=2), kn.nn.BatchNorm2d(8), kn.nn.ReLU(), kn.nn.MaxPool2d(2), kn.nn.Flatten(),
        kn.nn.Dropout(0.25), kn.nn.Linear(8 * 16 * 16, 10),
    )  # fmt: skip
    logits = model(x)
    loss = kn.softmax_cross_entropy(logits, y)
    opt = kn.optim.Adam(model.parameters(), lr=1e-3)
    step = kn.function([x, y], loss, updates=opt.updates(loss))
    predict = kn.function([x], {"logits": logits}, training=False)
    return model, step, predict


@needs_bin
def test_kiln_run_and_infer_give_pythons_outputs(tmp_path):
    kn.manual_seed(0)
    x, y = kn.input("x", (None, 3, 32, 32)), kn.input("y", (None,), "int64")
    _, step, predict = convnet(x, y)
    xv, yv = images(64)
    for i in range(0, 64, 16):  # trained in Python first
        step(xv[i : i + 16], yv[i : i + 16])
    kn.save(tmp_path / "net.kiln", predict)
    batch = xv[:8]
    np.save(tmp_path / "x.npy", batch)
    want = predict(batch)["logits"]

    run(
        "kiln-run",
        tmp_path / "net.kiln",
        "--input",
        f"x={tmp_path / 'x.npy'}",
        "--output",
        f"logits={tmp_path / 'y.npy'}",
    )
    got = np.load(tmp_path / "y.npy")
    assert got.shape == want.shape and got.dtype == np.float32
    assert np.abs(got - want).max() <= 1e-6

    out = run("infer", tmp_path / "net.kiln", tmp_path / "x.npy").stdout.splitlines()
    assert len(out) == 8
    for i, line in enumerate(out):
        pairs = re.findall(r"(\d+) \((-?[\d.]+)\)", line)
        classes = [int(c) for c, _ in pairs]
        assert classes == list(np.argsort(-want[i], kind="stable")[:5])
        np.testing.assert_allclose([float(s) for _, s in pairs], want[i][classes], atol=1e-4)


@needs_bin
def test_train_example_continues_pythons_training_step_for_step(tmp_path):
    kn.manual_seed(1)
    x, y = kn.input("x", (None, 3, 32, 32)), kn.input("y", (None,), "int64")
    model, step, predict = convnet(x, y)
    xv, yv = images(32, seed=1)
    for _ in range(3):
        step(xv, yv)
    kn.save(tmp_path / "net.kiln", predict, step, name=["predict", "train_step"])
    np.save(tmp_path / "x.npy", xv)
    np.save(tmp_path / "y.npy", yv)

    out = run(
        "train", tmp_path / "net.kiln", 20, tmp_path / "x.npy", tmp_path / "y.npy", tmp_path / "after.kiln"
    )
    cpp_losses = [float(v) for v in re.findall(r"loss (\S+)", out.stdout)]
    py_losses = [float(step(xv, yv)) for _ in range(20)]  # the same 20 steps (dropout included) in Python
    assert len(cpp_losses) == 20
    np.testing.assert_allclose(cpp_losses, py_losses, rtol=1e-6)
    assert cpp_losses[-1] < cpp_losses[0]

    after = kn.load(tmp_path / "after.kiln")  # written by C++, read by Python: the updated weights
    np.testing.assert_allclose(after["predict"](xv)["logits"], predict(xv)["logits"], atol=1e-6)
    st = pytest.importorskip("safetensors.numpy", reason="safetensors reads the file's tensors")
    weights = st.load_file(str(tmp_path / "after.kiln"))
    for key, var in [*model.named_parameters(), *model.named_buffers()]:  # the state, variable by variable
        np.testing.assert_array_equal(weights[var.name], var.numpy(), err_msg=key)


@needs_bin
def test_kiln_run_info_bench_and_errors(tmp_path):
    x = kn.input("x", (None, 4))
    lin = kn.nn.Linear(4, 3)
    f = kn.function([x], lin(x), training=False)
    kn.save(tmp_path / "lin.kiln", f, name="predict")
    info = run("kiln-run", tmp_path / "lin.kiln", "--info").stdout
    assert "function predict (inference)" in info
    assert re.search(r"input\s+x\s+float32\(\?, 4\)", info)
    assert re.search(r"output\s+output\s+float32\(\?, 3\)", info)
    assert "15 parameters" in info  # 4 x 3 weights + 3 biases
    assert re.search(r"\d+\.\d MB", info)

    np.save(tmp_path / "x.npy", np.ones((2, 4), np.float32))
    bench = run(
        "kiln-run", tmp_path / "lin.kiln", "--input", f"x={tmp_path / 'x.npy'}", "--bench", 20, "--threads", 1
    )
    assert re.search(
        r"bench: 20 runs, min [\d.]+ us, median [\d.]+ us, p99 [\d.]+ us \(1 threads\)", bench.stdout
    )
    assert "output: float32(2, 3)" in bench.stdout

    missing = run("kiln-run", tmp_path / "lin.kiln", ok=False)
    assert missing.returncode == 1 and "missing --input x=PATH.npy" in missing.stderr
    wrong = run("kiln-run", tmp_path / "lin.kiln", "--input", f"y={tmp_path / 'x.npy'}", ok=False)
    assert wrong.returncode == 1 and "missing --input x" in wrong.stderr
    np.save(tmp_path / "bad.npy", np.ones((2, 5), np.float32))
    shape = run("kiln-run", tmp_path / "lin.kiln", "--input", f"x={tmp_path / 'bad.npy'}", ok=False)
    assert shape.returncode == 1 and "'x' expects float32" in shape.stderr
    usage = run("kiln-run", ok=False)
    assert usage.returncode == 2 and "usage: kiln-run" in usage.stderr
    cuda = run("kiln-run", tmp_path / "lin.kiln", "--device", "cuda", ok=False)
    assert cuda.returncode == 1 and "CUDA" in cuda.stderr


@needs_bin
@pytest.mark.skipif(shutil.which("ldd") is None, reason="ldd is not available")
def test_the_programs_do_not_link_python():
    for program in ("kiln-run", "infer", "train"):
        libs = subprocess.run(["ldd", os.path.join(BIN, program)], capture_output=True, text=True).stdout
        assert "libpython" not in libs, f"{program} links Python:\n{libs}"
        assert "libscipy_openblas" in libs or "blas" in libs  # ldd did list the libraries


@needs_bin
@pytest.mark.skipif(shutil.which("kiln-run") is None, reason="the kiln-run command is not on PATH")
def test_the_kiln_run_command_on_path_runs_the_shipped_program(tmp_path):
    x = kn.input("x", (None, 3))
    kn.save(tmp_path / "f.kiln", kn.function([x], x * 2.0, training=False), name="double")
    info = subprocess.run(
        ["kiln-run", str(tmp_path / "f.kiln"), "--info"], capture_output=True, text=True, timeout=60
    )
    assert info.returncode == 0 and "function double (inference)" in info.stdout
