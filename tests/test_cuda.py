"""The CUDA backend's availability queries (kn.cuda), which must answer on any machine, and, on a
machine with a GPU, a kernel's result checked on the host."""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest

import kiln as kn
from kiln import _run

needs_device = pytest.mark.skipif(not kn.cuda.is_available(), reason="no CUDA device")


def test_queries_agree_with_each_other():
    count = kn.cuda.device_count()
    assert isinstance(kn.cuda.is_built(), bool) and isinstance(count, int) and count >= 0
    assert kn.cuda.is_available() == (kn.cuda.is_built() and count > 0)
    status = kn.cuda.status()
    if count == 0:
        assert "no CUDA device" in status or "without its CUDA backend" in status
    else:
        assert f"{count} CUDA device" in status


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no CUDA toolkit here, so kiln was built without it")
def test_built_with_the_toolkit_where_there_is_one():
    """KILN_CUDA=AUTO (the default) compiles the backend whenever nvcc is found, GPU or not."""
    assert kn.cuda.is_built()


def test_without_a_device_the_smoke_test_says_why():
    if kn.cuda.is_available():
        pytest.skip("a CUDA device is present: see test_smoke_test_kernel_on_the_device")
    with pytest.raises(kn.Error, match="cuda: .*(no CUDA device|without its CUDA backend)"):
        kn.cuda.self_test()


@needs_device
def test_smoke_test_kernel_on_the_device():
    kn.cuda.self_test()  # y = 1 + 2 x computed on the GPU, checked element by element


@pytest.mark.skipif(
    not os.access(_run.binary(), os.X_OK), reason="kiln-run is not installed beside the package"
)
def test_kiln_run_device_cuda(tmp_path):
    """Without a GPU kiln-run says why it cannot use one; with one, it gives the CPU's answer."""
    x = kn.input("x", (None, 2))
    w = kn.Parameter(np.array([[1.0, 2.0], [3.0, 4.0]]), name="w")
    kn.save(tmp_path / "f.kiln", kn.function([x], kn.relu(x @ w) * 2.0), name="double")
    np.save(tmp_path / "x.npy", np.array([[1.0, -1.0], [0.5, 2.0]], np.float32))
    runs = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / f"{device}.npy"
        runs[device] = subprocess.run(
            [_run.binary(), str(tmp_path / "f.kiln"), "--input", f"x={tmp_path / 'x.npy'}",
             "--output", f"output={out}", "--device", device],
            capture_output=True, text=True,
        )  # fmt: skip
    assert runs["cpu"].returncode == 0, runs["cpu"].stderr
    if not kn.cuda.is_available():
        assert runs["cuda"].returncode == 1 and "--device cuda:" in runs["cuda"].stderr
        assert "no CUDA device" in runs["cuda"].stderr or "without its CUDA backend" in runs["cuda"].stderr
    else:
        assert runs["cuda"].returncode == 0, runs["cuda"].stderr
        np.testing.assert_allclose(np.load(tmp_path / "cuda.npy"), np.load(tmp_path / "cpu.npy"), rtol=1e-6)
