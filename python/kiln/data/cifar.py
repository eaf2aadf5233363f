"""CIFAR-10 in its official python-batches layout (``cifar-10-batches-py``)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np

from ._util import Error, as_path

__all__ = ["CIFAR10_CLASSES", "load_cifar10"]

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
"""Class names of CIFAR-10 in label order (label 0 is airplane, 9 is truck)."""

_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


def _batches_dir(root: Path) -> Path:
    if (root / "cifar-10-batches-py").is_dir():
        return root / "cifar-10-batches-py"
    if (root / "data_batch_1").exists() or (root / "test_batch").exists():
        return root
    raise Error(f"CIFAR-10: {root} holds neither cifar-10-batches-py/ nor data_batch_1/test_batch")


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise Error(f"CIFAR-10: missing batch file {path}")
    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="bytes")  # the official files are trusted local data
    except (EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError, ImportError) as e:
        raise Error(f"{path}: not a readable CIFAR-10 batch (truncated or not a pickle: {e})") from e
    if not isinstance(d, dict):
        raise Error(f"{path}: expected a pickled dict, got {type(d).__name__}")
    data = d.get(b"data", d.get("data"))
    labels = d.get(b"labels", d.get("labels"))
    if data is None or labels is None:
        raise Error(f"{path}: the pickled dict has no b'data' or b'labels' entry")
    data = np.asarray(data)
    labels = np.asarray(labels, dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise Error(f"{path}: b'data' has shape {data.shape}, expected (N, 3072)")
    if labels.shape != (data.shape[0],):
        raise Error(f"{path}: {data.shape[0]} images but {labels.size} labels")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise Error(f"{path}: labels outside 0..9 (min {labels.min()}, max {labels.max()})")
    return data.astype(np.uint8, copy=False).reshape(-1, 3, 32, 32), labels


def load_cifar10(root: str | os.PathLike, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Loads CIFAR-10 from the official python batches.

    ``root`` is the folder holding ``cifar-10-batches-py/`` or that folder itself; ``split`` is
    ``"train"`` (``data_batch_1..5``, 50,000 images) or ``"test"`` (``test_batch``, 10,000).
    Returns ``(images, labels)``: images ``uint8`` of shape ``(N, 3, 32, 32)`` (NCHW, RGB, 0..255),
    labels ``int64`` of shape ``(N,)`` indexing :data:`CIFAR10_CLASSES`.
    """
    if split not in _BATCHES:
        raise Error(f"CIFAR-10: split must be 'train' or 'test', got {split!r}")
    folder = _batches_dir(as_path(root, "CIFAR-10 root"))
    parts = [_read_batch(folder / name) for name in _BATCHES[split]]
    images = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    labels = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    return np.ascontiguousarray(images), labels
