"""Training-step speed of a two-layer net, and kNN prediction, against PyTorch and numpy."""

import numpy as np
import pytest

import kiln as kn

try:
    import torch
except ImportError:  # PyTorch is optional: its rows are skipped
    torch = None

N, D, H, C = 200, 3072, 100, 10


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    return rng.standard_normal((N, D), dtype=np.float32), rng.integers(0, C, N)


def test_two_layer_adam_step_kiln(record, batch):
    xv, yv = batch
    with kn.Graph():
        kn.manual_seed(0)
        x, y = kn.input("x", (None, D)), kn.input("y", (None,), "int64")
        model = kn.nn.Sequential(kn.nn.Linear(D, H), kn.nn.ReLU(), kn.nn.Linear(H, C))
        loss = kn.softmax_cross_entropy(model(x), y)
        opt = kn.optim.Adam(model.parameters(), lr=1e-3)
        step = kn.function([x, y], loss, updates=opt.updates(loss))
    record("train step 3072-100-10, batch 200, Adam", "kiln", step, xv, yv)


@pytest.mark.skipif(torch is None, reason="PyTorch is not installed")
def test_two_layer_adam_step_torch(record, batch):
    xv, yv = (torch.from_numpy(a) for a in batch)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(D, H), torch.nn.ReLU(), torch.nn.Linear(H, C))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss.item()

    record("train step 3072-100-10, batch 200, Adam", "torch", step, xv, yv)


@pytest.fixture(scope="module")
def knn_data():
    rng = np.random.default_rng(1)
    train = rng.random((50_000, 3072), dtype=np.float32) * 255
    test = rng.random((10_000, 3072), dtype=np.float32) * 255
    return train, rng.integers(0, 10, 50_000), test


def numpy_knn(train, labels, test, k=10, block=1000):
    """The GEMM-based kNN of CS231n, in numpy, blocked like kiln's."""
    train_sq = np.einsum("ij,ij->i", train, train)
    out = np.empty(len(test), np.int64)
    for a in range(0, len(test), block):
        t = test[a : a + block]
        d = np.einsum("ij,ij->i", t, t)[:, None] + train_sq[None, :] - 2.0 * (t @ train.T)
        nearest = np.argpartition(d, k - 1, axis=1)[:, :k]
        votes = np.zeros((len(t), 10), np.int64)
        np.add.at(votes, (np.arange(len(t))[:, None], labels[nearest]), 1)
        out[a : a + block] = votes.argmax(1)
    return out


def test_knn_kiln(record, knn_data):
    train, labels, test = knn_data
    knn = kn.classic.KNearestNeighbor("l2").fit(train, labels)
    np.testing.assert_array_equal(knn.predict(test[:500], 10), numpy_knn(train, labels, test[:500]))
    record("kNN L2 10k test x 50k train, k=10", "kiln", knn.predict, test, 10)


def test_knn_numpy(record, knn_data):
    train, labels, test = knn_data
    record("kNN L2 10k test x 50k train, k=10", "numpy", numpy_knn, train, labels, test)
