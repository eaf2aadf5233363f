"""MNIST in its original IDX format (``train-images-idx3-ubyte[.gz]`` and friends)."""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from ._util import Error, as_path

__all__ = ["load_mnist", "read_idx"]

_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (EOFError, OSError, zlib.error) as e:
        raise Error(f"{path}: cannot read ({e}); the file is truncated or not gzip data") from e


def read_idx(path: str | os.PathLike, magic: int | None = None) -> np.ndarray:
    """Reads one IDX file (raw, or gzip-compressed when the name ends in ``.gz``).

    Returns an array of the file's shape and element type in native byte order (``uint8`` for
    MNIST). When ``magic`` is given (0x803 for MNIST images, 0x801 for labels), the file's
    32-bit magic number must equal it. Raises kn.Error for a wrong magic number or a size that
    does not match the header.
    """
    path = as_path(path, "IDX file")
    buf = _read_bytes(path)
    if len(buf) < 4:
        raise Error(f"{path}: truncated IDX file ({len(buf)} bytes, no header)")
    file_magic = int.from_bytes(buf[:4], "big")
    if magic is not None and file_magic != magic:
        raise Error(f"{path}: wrong magic number 0x{file_magic:x}, expected 0x{magic:x}")
    if buf[0] != 0 or buf[1] != 0 or buf[2] not in _IDX_DTYPES:
        raise Error(f"{path}: not an IDX file (magic number 0x{file_magic:x})")
    dtype, ndim = _IDX_DTYPES[buf[2]], buf[3]
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise Error(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(buf[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(buf) != expected:
        what = "truncated" if len(buf) < expected else "has trailing bytes"
        raise Error(
            f"{path}: {what}: header says shape {shape} ({expected} bytes), the file has {len(buf)} bytes"
        )
    arr = np.frombuffer(buf, dtype=dtype, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def _find(root: Path, name: str) -> Path:
    for candidate in (root / name, root / (name + ".gz")):
        if candidate.is_file():
            return candidate
    raise Error(f"MNIST: neither {root / name} nor {root / (name + '.gz')} exists")


def load_mnist(root: str | os.PathLike, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Loads MNIST from the IDX files in ``root`` (``.gz`` or raw; the raw file is preferred).

    ``split`` is ``"train"`` (60,000 digits) or ``"test"`` (10,000, the ``t10k-*`` files).
    Returns ``(images, labels)``: images ``uint8`` of shape ``(N, 28, 28)`` with values 0..255,
    labels ``int64`` of shape ``(N,)`` with values 0..9.
    """
    if split not in _FILES:
        raise Error(f"MNIST: split must be 'train' or 'test', got {split!r}")
    root = as_path(root, "MNIST root")
    img_name, lbl_name = _FILES[split]
    img_path, lbl_path = _find(root, img_name), _find(root, lbl_name)
    images = read_idx(img_path, magic=0x803)
    labels = read_idx(lbl_path, magic=0x801)
    if images.ndim != 3:
        raise Error(f"{img_path}: expected a 3-d image array, got shape {images.shape}")
    if labels.shape[0] != images.shape[0]:
        raise Error(
            f"MNIST {split}: {img_path.name} holds {images.shape[0]} images but "
            f"{lbl_path.name} holds {labels.shape[0]} labels"
        )
    return images, labels.astype(np.int64)
