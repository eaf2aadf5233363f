"""Shared by the examples: where the data is, loading it, and reporting."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

import kiln as kn

DATA_DIR = Path(os.environ.get("KILN_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))


def need(path: Path) -> Path:
    if not path.exists():
        sys.exit(f"data not found: {path} (set KILN_DATA to the folder holding cifar10/ and mnist/)")
    return path


def cifar10(n_train: int | None = None, n_test: int | None = None):
    """CIFAR-10 as float32 (N, 3, 32, 32) in [0, 255] and int64 labels; optional subsets."""
    archive = need(DATA_DIR / "cifar10" / "cifar10-jpg.tar.gz")
    xtr, ytr = kn.data.load_cifar10_jpg(archive, "train")
    xte, yte = kn.data.load_cifar10_jpg(archive, "test")
    # The archive is ordered by class: shuffle (with a fixed seed) so that subsets and
    # cross-validation folds hold every class.
    rng = np.random.default_rng(0)
    keep = rng.permutation(len(xtr))[:n_train]
    xtr, ytr = xtr[keep], ytr[keep]
    keep = rng.permutation(len(xte))[:n_test]
    xte, yte = xte[keep], yte[keep]
    return xtr.astype(np.float32), ytr, xte.astype(np.float32), yte


def mnist():
    root = need(DATA_DIR / "mnist")
    xtr, ytr = kn.data.load_mnist(root, "train")
    xte, yte = kn.data.load_mnist(root, "test")
    return xtr.astype(np.float32) / 255.0, ytr, xte.astype(np.float32) / 255.0, yte


def parser(doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc)
    p.add_argument("--train", type=int, default=None, help="use this many training images (default: all)")
    p.add_argument("--test", type=int, default=None, help="use this many test images (default: all)")
    p.add_argument("--epochs", type=int, default=None, help="epochs (default: the example's)")
    p.add_argument("--seed", type=int, default=0)
    return p


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start


def report(name: str, accuracy: float, seconds: float) -> None:
    print(f"RESULT {name}: test accuracy {accuracy * 100:.2f}% in {seconds:.1f} s")


def train_and_test(
    name: str, x, y, logits, opt, data, epochs: int, batch: int, seed: int, transform=None
) -> float:
    """Trains `logits` (built on inputs x, y) with softmax cross-entropy and `opt` under a cosine
    schedule, with kn.train.fit; prints and returns the test accuracy. data: (xtr, ytr, xte, yte)."""
    xtr, ytr, xte, yte = data
    loss = kn.softmax_cross_entropy(logits, y)
    kn.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * (len(xtr) // batch))
    step = kn.function([x, y], [loss, logits], updates=opt.updates(loss))
    evaluate = kn.function([x, y], [loss, logits], training=False)
    loader = kn.data.DataLoader((xtr, ytr), batch_size=batch, shuffle=True, drop_last=True, seed=seed,
                                transform=transform)  # fmt: skip
    with Timer() as t:
        kn.train.fit(step, loader, epochs, val=(xte, yte), evaluate=evaluate, progress=sys.stderr.isatty())
        predict = kn.function([x], kn.argmax(logits, axis=1), training=False)
        pred = np.concatenate([predict(xte[i : i + 1000]) for i in range(0, len(xte), 1000)])
    acc = float(np.mean(pred == yte))
    report(name, acc, t.seconds)
    return acc
