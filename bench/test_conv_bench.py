"""Convolution speed against PyTorch CPU (oneDNN): single conv layers forward+backward, and
training steps of CS231n's three-layer ConvNet and of a ResNet-8, measured in the same run."""

import numpy as np
import pytest

import kiln as kn

try:
    import torch
    import torch.nn.functional as TF
except ImportError:  # PyTorch is optional: its rows are skipped
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed")

# (N, C, K, H, k): batch, input channels, filters, image size, kernel; stride 1, "same" padding.
CONV_CASES = [(64, 3, 32, 32, 3), (50, 3, 32, 32, 7), (64, 64, 64, 16, 3), (32, 128, 128, 8, 3)]


def conv_case_id(c):
    return "conv fwd+bwd N{} C{} K{} H{} k{}".format(*c)


def conv_arrays(case):
    n, c, k, h, ks = case
    rng = np.random.default_rng(0)
    return (rng.standard_normal((n, c, h, h), dtype=np.float32), rng.standard_normal((k, c, ks, ks), dtype=np.float32) * 0.1,
            rng.standard_normal(k, dtype=np.float32), rng.standard_normal((n, k, h, h), dtype=np.float32))  # fmt: skip


@pytest.mark.parametrize("case", CONV_CASES, ids=conv_case_id)
def test_conv_kiln(record, case):
    x, w, b, gy = conv_arrays(case)
    first_layer = case[1] == 3  # an image: nobody asks for its gradient
    with kn.Graph():
        xs, gys = kn.input("x", x.shape), kn.input("gy", gy.shape)
        W, B = kn.Parameter(w, name="w"), kn.Parameter(b, name="b")
        y = kn.conv2d(xs, W, B, padding="same")
        wrt = [W, B] if first_layer else [W, B, xs]
        f = kn.function([xs, gys], [y] + kn.grad(y, wrt, grad_output=gys))
    record(conv_case_id(case), "kiln", f, x, gy)


@needs_torch
@pytest.mark.parametrize("case", CONV_CASES, ids=conv_case_id)
def test_conv_torch(record, case):
    x, w, b, gy = (torch.from_numpy(a) for a in conv_arrays(case))
    w.requires_grad_(True)
    b.requires_grad_(True)
    x.requires_grad_(case[1] != 3)

    def step():
        w.grad = b.grad = x.grad = None
        y = TF.conv2d(x, w, b, padding="same")
        y.backward(gy)
        return y

    record(conv_case_id(case), "torch", step)


# ---- training steps ----


def three_layer_kiln():
    model = kn.nn.Sequential(
        kn.nn.Conv2d(3, 32, 7, padding=3), kn.nn.ReLU(), kn.nn.MaxPool2d(2), kn.nn.Flatten(),
        kn.nn.Linear(32 * 16 * 16, 100), kn.nn.ReLU(), kn.nn.Linear(100, 10),
    )  # fmt: skip
    return model


def three_layer_torch():
    nn = torch.nn
    return nn.Sequential(nn.Conv2d(3, 32, 7, padding=3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(32 * 16 * 16, 100), nn.ReLU(), nn.Linear(100, 10))  # fmt: skip


def basic_block(lib):
    """The ResNet basic block class of kiln's or torch's nn: two 3x3 conv-BN layers and a shortcut
    (1x1 conv-BN when the shape changes). Shared with test_deploy_bench's ResNet-18."""
    nn = lib.nn
    relu = kn.relu if lib is kn else torch.relu

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.short = None
            if stride != 1 or cin != cout:
                self.short = nn.Sequential(
                    nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
                )

        def forward(self, x):
            y = self.bn2(self.conv2(relu(self.bn1(self.conv1(x)))))
            return relu(y + (x if self.short is None else self.short(x)))

    return Block


def resnet8(lib):
    """16/32/64 channels, one basic block per stage, batch norm: 8 weight layers."""
    nn, Block = lib.nn, basic_block(lib)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        Block(16, 16, 1), Block(16, 32, 2), Block(32, 64, 2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
    )  # fmt: skip


STEPS = {"three-layer ConvNet train step, batch 50": (50, three_layer_kiln, three_layer_torch),
         "ResNet-8 train step, batch 128": (128, lambda: resnet8(kn), lambda: resnet8(torch))}  # fmt: skip


def batch(n):
    rng = np.random.default_rng(1)
    return rng.standard_normal((n, 3, 32, 32), dtype=np.float32), rng.integers(0, 10, n)


@pytest.mark.parametrize("case", list(STEPS))
def test_train_step_kiln(record, case):
    n, make, _ = STEPS[case]
    xv, yv = batch(n)
    with kn.Graph():
        kn.manual_seed(0)
        x, y = kn.input("x", (None, 3, 32, 32)), kn.input("y", (None,), "int64")
        model = make()
        loss = kn.softmax_cross_entropy(model(x), y)
        opt = kn.optim.Adam(model.parameters(), lr=1e-3)
        step = kn.function([x, y], loss, updates=opt.updates(loss))
    record(case, "kiln", step, xv, yv)


@needs_torch
@pytest.mark.parametrize("case", list(STEPS))
def test_train_step_torch(record, case):
    n, _, make = STEPS[case]
    xv, yv = (torch.from_numpy(a) for a in batch(n))
    torch.manual_seed(0)
    model = make()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        loss = TF.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss.item()

    record(case, "torch", step, xv, yv)


def test_three_layer_inference_kiln(record):
    xv, _ = batch(1)
    with kn.Graph():
        kn.manual_seed(0)
        x = kn.input("x", (None, 3, 32, 32))
        f = kn.function([x], three_layer_kiln()(x), training=False)
    record("three-layer ConvNet inference, batch 1", "kiln", f, xv)


@needs_torch
def test_three_layer_inference_torch(record):
    xv = torch.from_numpy(batch(1)[0])
    model = three_layer_torch().eval()

    def infer(x):
        with torch.no_grad():
            return model(x)

    record("three-layer ConvNet inference, batch 1", "torch", infer, xv)


def test_three_layer_inference_onnxruntime(record, tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    if torch is None:
        pytest.skip("PyTorch is needed to export the reference ONNX model")
    model = three_layer_torch().eval()
    path = str(tmp_path / "three_layer.onnx")
    torch.onnx.export(model, torch.zeros(1, 3, 32, 32), path, input_names=["x"], dynamo=False)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    xv = batch(1)[0]
    record("three-layer ConvNet inference, batch 1", "onnxruntime", sess.run, None, {"x": xv})
