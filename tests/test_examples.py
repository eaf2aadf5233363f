"""The examples on real data, shortened (fewer images and epochs) with lower thresholds. The
full runs and their numbers are in README.md."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DATA_DIR

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CIFAR = DATA_DIR / "cifar10" / "cifar10-jpg.tar.gz"
MNIST = DATA_DIR / "mnist" / "train-images-idx3-ubyte.gz"


def run(script: str, *args: str) -> dict[str, float]:
    """Runs an example; returns {result name: test accuracy in %} from its RESULT lines."""
    proc = subprocess.run(
        [sys.executable, script, *args], cwd=EXAMPLES, capture_output=True, text=True, timeout=600,
        env={**__import__("os").environ, "KILN_DATA": str(DATA_DIR)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    found = re.findall(r"RESULT (.+?): test accuracy ([\d.]+)%", proc.stdout)
    assert found, proc.stdout[-2000:]
    return {name: float(acc) for name, acc in found}


needs_cifar = pytest.mark.skipif(not CIFAR.exists(), reason=f"CIFAR-10 not found at {CIFAR}")
needs_mnist = pytest.mark.skipif(not MNIST.exists(), reason=f"MNIST not found at {MNIST.parent}")


@needs_cifar
def test_knn_cifar10_short():
    acc = run("knn_cifar10.py", "--train", "5000", "--test", "500", "--cv-train", "2000", "--folds", "3")
    assert acc["knn_cifar10"] > 22  # full run: 33.9%


@needs_cifar
def test_linear_cifar10_short():
    acc = run("linear_cifar10.py", "--train", "10000", "--test", "1000", "--iters", "600")
    assert acc["linear_cifar10 svm"] > 30 and acc["linear_cifar10 softmax"] > 30  # full: 39% / 40%


@needs_cifar
def test_two_layer_cifar10_short():
    acc = run("two_layer_cifar10.py", "--train", "10000", "--test", "1000", "--epochs", "2")
    assert acc["two_layer_cifar10"] > 38  # full: 55.6%


@needs_cifar
def test_fc_cifar10_short():
    acc = run("fc_cifar10.py", "--train", "10000", "--test", "1000", "--epochs", "2")
    assert acc["fc_cifar10"] > 36  # full: 59.4%


@needs_mnist
def test_mlp_mnist_short():
    acc = run("mlp_mnist.py", "--train", "10000", "--test", "2000", "--epochs", "2")
    assert acc["mlp_mnist"] > 90  # full: 98.5%


@needs_cifar
def test_convnet_cifar10_short():
    acc = run("convnet_cifar10.py", "--train", "5000", "--test", "1000", "--epochs", "1")
    assert acc["convnet_cifar10"] > 30  # 100 steps; full run: 67.9%


@needs_mnist
def test_convnet_mnist_short():
    acc = run("convnet_mnist.py", "--train", "5000", "--test", "1000", "--epochs", "1")
    assert acc["convnet_mnist"] > 80  # 50 steps; full run: 99.3%


@needs_cifar
def test_resnet_cifar10_short():
    acc = run("resnet_cifar10.py", "--train", "3000", "--test", "500", "--epochs", "1", "--blocks", "1")
    assert acc["resnet_cifar10"] > 15  # 23 steps of ResNet-8; full run of ResNet-20: 86.6%
