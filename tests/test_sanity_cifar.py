"""CS231n's sanity checks on real CIFAR-10 images: a ConvNet's initial loss is about log(10),
and it overfits 100 training images to 100% training accuracy."""

import math

import numpy as np
import pytest
from conftest import DATA_DIR

import kiln as kn

CIFAR = DATA_DIR / "cifar10" / "cifar10-jpg.tar.gz"


@pytest.mark.skipif(not CIFAR.exists(), reason=f"CIFAR-10 not found at {CIFAR}")
def test_three_layer_convnet_overfits_100_cifar_images():
    images, labels = kn.data.load_cifar10_jpg(CIFAR, "train")
    pick = np.random.default_rng(0).permutation(len(images))[:100]
    xv = ((images[pick].astype(np.float32) - 128.0) / 64.0).astype(np.float32)
    yv = labels[pick]
    kn.manual_seed(0)
    x, y = kn.input("x", (None, 3, 32, 32)), kn.input("y", (None,), "int64")
    model = kn.nn.Sequential(
        kn.nn.Conv2d(3, 32, 7, padding=3), kn.nn.ReLU(), kn.nn.MaxPool2d(2), kn.nn.Flatten(),
        kn.nn.Linear(32 * 16 * 16, 100), kn.nn.ReLU(), kn.nn.Linear(100, 10),
    )  # fmt: skip
    logits = model(x)
    loss = kn.softmax_cross_entropy(logits, y)
    initial = float(kn.function([x, y], loss, training=False)(xv, yv))
    assert kn.train.check_initial_loss(initial, 10), (
        f"initial loss {initial}, expected about {math.log(10):.2f}"
    )
    opt = kn.optim.Adam(model.parameters(), lr=1e-3)
    step = kn.function([x, y], loss, updates=opt.updates(loss))
    for _ in range(25):  # epochs of 2 batches of 50
        for i in (0, 50):
            step(xv[i : i + 50], yv[i : i + 50])
    predict = kn.function([x], kn.argmax(logits, axis=1), training=False)
    assert np.mean(predict(xv) == yv) == 1.0
