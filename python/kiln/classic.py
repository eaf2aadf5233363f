"""Classic classifiers of CS231n's first assignment: k-nearest neighbours (vectorized, L1 and
L2, with k chosen by cross-validation) and linear SVM / softmax classifiers trained by minibatch
SGD. Data: X (N, D) float arrays (flatten images first), y (N,) integer labels."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from . import functional as F
from . import losses, ops
from ._graph import Error, Graph, Parameter, input
from .function import Function, grad


def _check_xy(X: np.ndarray, y: np.ndarray | None = None) -> None:
    X = np.asarray(X)
    if X.ndim != 2:
        raise Error(f"expected X of shape (N, D), got {X.shape}; flatten images with X.reshape(len(X), -1)")
    if y is not None:
        y = np.asarray(y)
        if y.ndim != 1 or len(y) != len(X):
            raise Error(f"expected y of shape ({len(X)},), got {y.shape}")
        if len(y) and (y.dtype.kind not in "iu" or y.min() < 0):
            raise Error("labels must be non-negative integers 0..C-1")


class KNearestNeighbor:
    """k-NN with L2 or L1 distance. L2 prediction ranks training rows by x.t - |t|^2 / 2 (the
    GEMM expansion of -|x - t|^2 / 2 without the per-row constant |x|^2) and keeps the k best with
    topk, in one compiled kiln function per block of test rows: only `batch_size` rows of scores
    exist at a time, in memory planned once, and only their k indices leave kiln. L1 works in
    blocks of broadcast differences."""

    def __init__(self, metric: str = "l2", batch_size: int = 1000) -> None:
        if metric not in ("l1", "l2"):
            raise Error(f"KNearestNeighbor: metric must be 'l1' or 'l2', got {metric!r}")
        if batch_size < 1:
            raise Error(f"KNearestNeighbor: batch_size must be positive, got {batch_size}")
        self.metric, self.batch_size = metric, batch_size
        self._fns: dict = {}

    def fit(self, X: np.ndarray, y: np.ndarray) -> KNearestNeighbor:
        """Memorizes the training data."""
        _check_xy(X, y)
        self.X_train = np.ascontiguousarray(X, dtype=np.float32)
        self.y_train = np.asarray(y, dtype=np.int64)
        self._half_sq = 0.5 * np.einsum("ij,ij->i", self.X_train, self.X_train)
        self._fns = {}
        return self

    train = fit  # CS231n's name

    def _fn(self, kind: str, k: int = 0) -> Function:
        """Compiled once per kind: "l2" distances, "l1" distances, "nearest" (the indices of the k
        best L2 scores)."""
        if (kind, k) not in self._fns:
            d = self.X_train.shape[1]
            with Graph():
                t, tr, half_sq = (
                    input("test", (None, d)),
                    input("train", (None, d)),
                    input("half_sq", (None,)),
                )
                if kind == "nearest":  # t @ tr.T as one GEMM on tr as stored (linear's layout)
                    out = ops.topk(F.linear(t, tr) - half_sq, k)[1]
                elif kind == "l2":
                    out = ops.sum(ops.square(t), axis=1, keepdims=True) + 2.0 * (half_sq - F.linear(t, tr))
                else:
                    out = ops.sum(ops.abs(ops.unsqueeze(t, 1) - ops.unsqueeze(tr, 0)), axis=2)
                self._fns[kind, k] = Function([t, tr, half_sq], out)
        return self._fns[kind, k]

    def _check_test(self, X: np.ndarray) -> np.ndarray:
        if not hasattr(self, "X_train"):
            raise Error("KNearestNeighbor: call fit(X, y) before predicting")
        _check_xy(X)
        if X.shape[1] != self.X_train.shape[1]:
            raise Error(
                f"KNearestNeighbor: test rows have {X.shape[1]} features, training rows {self.X_train.shape[1]}"
            )
        return np.ascontiguousarray(X, dtype=np.float32)

    def compute_distances(self, X: np.ndarray) -> np.ndarray:
        """(num_test, num_train) distances: squared L2 (ranking-equivalent to L2) or L1."""
        X = self._check_test(X)
        f = self._fn(self.metric)
        out = np.empty((len(X), len(self.X_train)), np.float32)
        if self.metric == "l2":
            for a in range(0, len(X), self.batch_size):
                out[a : a + self.batch_size] = f(X[a : a + self.batch_size], self.X_train, self._half_sq)
            return out
        rows, cols = max(1, self.batch_size // 50), 2000  # bounds the (rows, cols, D) intermediate
        for a in range(0, len(X), rows):
            for c in range(0, len(self.X_train), cols):
                out[a : a + rows, c : c + cols] = f(
                    X[a : a + rows], self.X_train[c : c + cols], self._half_sq[c : c + cols]
                )
        return out

    def predict(self, X: np.ndarray, k: int = 1) -> np.ndarray:
        """The majority label of the k nearest training rows (ties: the smallest label)."""
        if self.metric == "l1":
            return self.predict_from_distances(self.compute_distances(X), k)
        X = self._check_test(X)
        n = len(self.X_train)
        if not 1 <= k <= n:
            raise Error(f"KNearestNeighbor: k must be in [1, {n}], got {k}")
        f, out = self._fn("nearest", k), np.empty(len(X), np.int64)
        for a in range(0, len(X), self.batch_size):
            nearest = f(X[a : a + self.batch_size], self.X_train, self._half_sq)
            out[a : a + self.batch_size] = self._vote(self.y_train[nearest])
        return out

    def predict_from_distances(self, dists: np.ndarray, k: int = 1) -> np.ndarray:
        """Majority vote of the k smallest distances in each row of (num_test, num_train)."""
        if not hasattr(self, "X_train"):
            raise Error("KNearestNeighbor: call fit(X, y) before predicting")
        if dists.ndim != 2 or dists.shape[1] != len(self.X_train):
            raise Error(
                f"predict_from_distances: expected (num_test, {len(self.X_train)}) distances, got {dists.shape}"
            )
        if not 1 <= k <= dists.shape[1]:
            raise Error(f"KNearestNeighbor: k must be in [1, {dists.shape[1]}], got {k}")
        n = dists.shape[1]
        nearest = np.argpartition(dists, k - 1, axis=1)[:, :k] if k < n else np.argsort(dists, axis=1)
        return self._vote(self.y_train[nearest])

    def _vote(self, labels: np.ndarray) -> np.ndarray:
        counts = np.zeros((len(labels), int(self.y_train.max()) + 1), np.int64)
        np.add.at(counts, (np.arange(len(labels))[:, None], labels), 1)
        return counts.argmax(axis=1)


def cross_validate(
    X: np.ndarray, y: np.ndarray, k_choices: Sequence[int], num_folds: int = 5, metric: str = "l2"
) -> tuple[int, dict[int, list[float]]]:
    """k-fold cross-validation of k-NN: returns (best k, {k: [accuracy of each fold]}). Distances
    of each fold are computed once and reused for every k."""
    _check_xy(X, y)
    if not k_choices:
        raise Error("cross_validate: k_choices is empty")
    if not 2 <= num_folds <= len(X):
        raise Error(f"cross_validate: num_folds must be in [2, {len(X)}], got {num_folds}")
    folds_x, folds_y = np.array_split(X, num_folds), np.array_split(y, num_folds)
    accuracies: dict[int, list[float]] = {k: [] for k in k_choices}
    for i in range(num_folds):
        train_x = np.concatenate(folds_x[:i] + folds_x[i + 1 :])
        train_y = np.concatenate(folds_y[:i] + folds_y[i + 1 :])
        knn = KNearestNeighbor(metric).fit(train_x, train_y)
        dists = knn.compute_distances(folds_x[i])
        for k in k_choices:
            accuracies[k].append(float(np.mean(knn.predict_from_distances(dists, k) == folds_y[i])))
    best = max(k_choices, key=lambda k: (np.mean(accuracies[k]), -k))
    return best, accuracies


class LinearClassifier:
    """scores = X @ W + b, trained by minibatch SGD on the loss plus reg * sum(W**2)
    (CS231n's convention). Subclasses choose the loss."""

    def __init__(self, seed: int | None = None) -> None:
        self.W: np.ndarray | None = None
        self.b: np.ndarray | None = None
        self.rng = np.random.default_rng(seed)

    def _loss(self, scores, y):
        raise NotImplementedError

    def fit(self, X: np.ndarray, y: np.ndarray, learning_rate: float = 1e-3, reg: float = 1e-5,
            num_iters: int = 100, batch_size: int = 200, verbose: bool = False) -> list[float]:  # fmt: skip
        """Minibatch SGD (batches sampled with replacement, as CS231n); returns the loss history."""
        _check_xy(X, y)
        d, c = X.shape[1], int(np.max(y)) + 1
        if self.W is None:
            self.W = 0.001 * self.rng.standard_normal((d, c))
            self.b = np.zeros(c)
        with Graph():
            x_in, y_in = input("x", (None, d)), input("y", (None,), "int64")
            W, b = Parameter(self.W, name="W"), Parameter(self.b, name="b")
            loss = self._loss(ops.matmul(x_in, W) + b, y_in) + reg * ops.sum(ops.square(W))
            gW, gb = grad(loss, [W, b])
            step = Function(
                [x_in, y_in], loss, updates=[(W, W - learning_rate * gW), (b, b - learning_rate * gb)]
            )
            X32, y64 = np.ascontiguousarray(X, np.float32), np.asarray(y, np.int64)
            history = []
            for it in range(num_iters):
                idx = self.rng.integers(0, len(X), batch_size)
                history.append(float(step(X32[idx], y64[idx])))
                if verbose and it % 100 == 0:
                    print(f"iteration {it} / {num_iters}: loss {history[-1]:.4f}")
            self.W, self.b = W.numpy().astype(np.float64), b.numpy().astype(np.float64)
        return history

    train = fit

    def predict(self, X: np.ndarray) -> np.ndarray:
        """The highest-scoring class of each row: (N, D) -> (N,)."""
        if self.W is None:
            raise Error(f"{type(self).__name__}: call fit(X, y) before predict")
        _check_xy(X)
        if X.shape[1] != self.W.shape[0]:
            raise Error(
                f"{type(self).__name__}: X has {X.shape[1]} features, the classifier {self.W.shape[0]}"
            )
        return np.argmax(X @ self.W + self.b, axis=1)

    def class_templates(self, image_shape: tuple = (3, 32, 32)) -> np.ndarray:
        """The weights of each class as an image (C, *image_shape), rescaled to 0..255: what the
        classifier looks for. image_shape must hold D values: (3, 32, 32) for rows flattened from
        kiln's NCHW images."""
        if self.W is None:
            raise Error("class_templates: the classifier is not trained")
        if int(np.prod(image_shape)) != self.W.shape[0]:
            raise Error(
                f"class_templates: image_shape {tuple(image_shape)} does not hold the {self.W.shape[0]} weights per class"
            )
        w = self.W.T.reshape((self.W.shape[1],) + tuple(image_shape))
        lo, hi = w.min(), w.max()
        return (255.0 * (w - lo) / (hi - lo + 1e-12)).astype(np.uint8)


class LinearSVM(LinearClassifier):
    """Multiclass SVM: mean over samples of sum over j != y of max(0, s_j - s_y + 1)."""

    def _loss(self, scores, y):
        return losses.multi_margin_loss(scores, y) * float(scores.shape[1])  # torch divides by C


class Softmax(LinearClassifier):
    """Softmax (multinomial logistic) regression with the cross-entropy loss."""

    def _loss(self, scores, y):
        return losses.softmax_cross_entropy(scores, y)
