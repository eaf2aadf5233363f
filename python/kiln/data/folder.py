"""Image-folder datasets (``root/<split>/<class>/*.png|jpg``), from a directory or a tar archive."""

from __future__ import annotations

import io
import os
import tarfile
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

import numpy as np

from ._util import Error, as_path, require_pillow
from .cifar import CIFAR10_CLASSES

__all__ = ["IMG_EXTENSIONS", "cache_dir", "load_cifar10_jpg", "load_image_folder"]

IMG_EXTENSIONS: tuple[str, ...] = (
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".ppm",
    ".pgm",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
)
"""File extensions (lower case) taken as images; other files are ignored."""

_ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")

# split -> class -> list of (name, source): source is a Path (directory layout) or bytes (archive).
_Listing = dict[str, dict[str, list[tuple[str, Path | bytes]]]]


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS) and not PurePosixPath(name).name.startswith(".")


def _is_archive(path: Path) -> bool:
    return path.is_file() and (path.name.lower().endswith(_ARCHIVE_SUFFIXES) or tarfile.is_tarfile(path))


def _list_dir(root: Path, splits: Sequence[str]) -> _Listing:
    out: _Listing = {}
    for split in splits:
        base = root / split
        if not base.is_dir():
            raise Error(
                f"image folder: {base} is not a directory (expected {root}/<split>/<class>/*.png|jpg)"
            )
        classes: dict[str, list[tuple[str, Path | bytes]]] = {}
        for cdir in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
            files = []
            for dirpath, dirnames, filenames in os.walk(cdir):
                dirnames.sort()
                for fn in sorted(filenames):
                    if _is_image(fn):
                        p = Path(dirpath) / fn
                        files.append((p.relative_to(cdir).as_posix(), p))
            classes[cdir.name] = files
        out[split] = classes
    return out


def _list_tar(path: Path, splits: Sequence[str]) -> _Listing:
    """Reads the archive once as a stream, keeping the bytes of the image files of ``splits``."""
    out: _Listing = {s: {} for s in splits}
    prefixes: set[tuple[str, ...]] = set()
    try:
        with tarfile.open(path, "r|*") as tf:
            for m in tf:
                parts = tuple(p for p in PurePosixPath(m.name).parts if p not in (".", "/"))
                # the first component equal to a wanted split, followed by <class>/.../<file>
                i = next((j for j, p in enumerate(parts) if p in out), None)
                if i is None or len(parts) < i + 2:
                    continue
                split, cls = parts[i], parts[i + 1]
                if m.isdir():
                    if len(parts) == i + 2:
                        out[split].setdefault(cls, [])
                        prefixes.add(parts[:i])
                    continue
                if len(parts) < i + 3 or not m.isfile() or not _is_image(parts[-1]):
                    continue
                prefixes.add(parts[:i])
                f = tf.extractfile(m)
                data = f.read() if f is not None else b""
                if len(data) != m.size:
                    raise Error(f"{path}: truncated archive member {m.name}")
                out[split].setdefault(cls, []).append(("/".join(parts[i + 2 :]), data))
    except (tarfile.TarError, EOFError, OSError) as e:
        raise Error(f"{path}: cannot read the archive ({e}); is it truncated or not a tar file?") from e
    if len(prefixes) > 1:
        shown = sorted("/".join(p) or "." for p in prefixes)
        raise Error(f"{path}: the split folders appear under several prefixes {shown}; expected one layout")
    for split, classes in out.items():
        if not classes:
            raise Error(f"{path}: the archive holds no folder '{split}/<class>/' with images")
        for files in classes.values():
            files.sort(key=lambda t: t[0])
        out[split] = dict(sorted(classes.items()))
    return out


def _list(root: Path, splits: Sequence[str]) -> _Listing:
    if root.is_dir():
        return _list_dir(root, splits)
    if _is_archive(root):
        return _list_tar(root, splits)
    raise Error(f"image folder: {root} is neither a directory nor a tar archive")


def _decode_one(name: str, src: Path | bytes) -> np.ndarray:
    Image = require_pillow()
    try:
        with Image.open(src if isinstance(src, Path) else io.BytesIO(src)) as im:
            if im.mode not in ("L", "RGB"):
                im = im.convert("L" if im.mode in ("1", "I", "I;16", "F", "LA") else "RGB")
            arr = np.asarray(im, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError) as e:
        raise Error(f"{name}: cannot decode the image ({e})") from e
    return arr[:, :, None] if arr.ndim == 2 else arr


def _decode_all(items: list[tuple[str, Path | bytes]], where: str) -> np.ndarray:
    """Decodes ``items`` into one uint8 array of shape (N, C, H, W)."""
    if not items:
        raise Error(f"{where}: no images found")
    require_pillow()
    sizes = [len(s) if isinstance(s, bytes) else 0 for _, s in items]
    # Small images decode in microseconds, where threads only add GIL contention; large files
    # (and files still on disk) decode in parallel since Pillow releases the GIL while decoding.
    threads = min(8, os.cpu_count() or 1)
    if threads > 1 and (sum(sizes) / len(items) > 16384 or not isinstance(items[0][1], bytes)):
        with ThreadPoolExecutor(threads) as ex:
            arrays = list(ex.map(lambda t: _decode_one(*t), items, chunksize=64))
    else:
        arrays = [_decode_one(name, src) for name, src in items]
    h, w = arrays[0].shape[:2]
    c = max(a.shape[2] for a in arrays)
    out = np.empty((len(arrays), c, h, w), np.uint8)
    for k, (a, (name, _)) in enumerate(zip(arrays, items)):
        if a.shape[:2] != (h, w):
            raise Error(
                f"{where}: {name} is {a.shape[1]}x{a.shape[0]} but {items[0][0]} is {w}x{h}; "
                "all images must have the same size"
            )
        out[k] = a.transpose(2, 0, 1)  # broadcasts a grayscale image to RGB when others are RGB
    return out


def _assemble(
    listing: dict[str, list[tuple[str, Path | bytes]]], where: str, classes: Sequence[str] | None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    if classes is None:
        classes = sorted(listing)
    classes = list(classes)
    if len(set(classes)) != len(classes):
        raise Error(f"{where}: classes has duplicates: {classes}")
    items: list[tuple[str, Path | bytes]] = []
    labels: list[int] = []
    for k, cls in enumerate(classes):
        if cls not in listing:
            raise Error(f"{where}: no class folder '{cls}' (found {sorted(listing)})")
        files = listing[cls]
        if not files:
            raise Error(f"{where}: class folder '{cls}' holds no images ({', '.join(IMG_EXTENSIONS)})")
        items += [(f"{where}/{cls}/{name}", src) for name, src in files]
        labels += [k] * len(files)
    return _decode_all(items, where), np.asarray(labels, np.int64), classes


def load_image_folder(
    root: str | os.PathLike, split: str, classes: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Loads an image-folder dataset laid out as ``root/<split>/<class>/*.png|jpg``.

    ``root`` is a directory or a tar archive (``.tar``, ``.tar.gz``, ...) holding that layout,
    optionally under one top folder; an archive is read once as a stream, nothing is extracted to
    disk. Class ``k`` is the ``k``-th of ``classes`` when given (other folders are skipped), else
    of the sorted class folder names (as torchvision's ImageFolder). Images are ordered by class,
    then by file name. All images must have the same size; grayscale images stay one channel
    unless mixed with color ones.

    Returns ``(images, labels, class_names)``: images ``uint8`` of shape ``(N, C, H, W)`` (C is 1 or
    3), labels ``int64`` of shape ``(N,)``, class_names a list of str.
    """
    root = as_path(root, "image folder")
    listing = _list(root, [split])[split]
    return _assemble(listing, f"{root}:{split}" if root.is_file() else str(root / split), classes)


def cache_dir() -> Path:
    """The folder for decoded-data caches: ``$KILN_CACHE``, else ``~/.cache/kiln``."""
    return Path(os.environ.get("KILN_CACHE") or Path.home() / ".cache" / "kiln").expanduser()


def _cache_path(archive: Path, split: str) -> Path:
    st = archive.stat()
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in archive.name)
    return cache_dir() / f"{stem}-{st.st_size}-{st.st_mtime_ns}-{split}.npz"


def _read_cache(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        with np.load(path) as z:
            images, labels = z["images"], z["labels"]
    except (OSError, KeyError, ValueError, EOFError):
        return None
    if images.dtype != np.uint8 or images.ndim != 4 or labels.shape != (images.shape[0],):
        return None
    return images, labels.astype(np.int64, copy=False)


def _write_cache(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            np.savez(f, images=images, labels=labels)
        os.replace(tmp, path)
    except OSError as e:
        warnings.warn(f"kiln.data: could not write the cache {path}: {e}", stacklevel=3)
        tmp.unlink(missing_ok=True)


def load_cifar10_jpg(
    path: str | os.PathLike, split: str = "train", cache: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Loads CIFAR-10 stored as JPEGs in ``train/<class>/NNNN.jpg`` and ``test/<class>/NNNN.jpg``.

    ``path`` is the ``.tar.gz`` archive (as ``../shared/data/cifar10/cifar10-jpg.tar.gz``) or a
    directory with that layout. The class folders must be the ten CIFAR-10 classes; labels follow
    :data:`CIFAR10_CLASSES`. With ``cache=True`` the decoded arrays of an archive are kept as
    ``.npz`` files in :func:`cache_dir`, keyed by the archive's name, size and mtime, so the JPEGs are
    decoded once (both splits are decoded in the same pass over the archive).

    Returns ``(images, labels)`` as :func:`load_cifar10`: images ``uint8`` of shape
    ``(N, 3, 32, 32)``, labels ``int64`` of shape ``(N,)``.
    """
    if split not in ("train", "test"):
        raise Error(f"CIFAR-10 jpg: split must be 'train' or 'test', got {split!r}")
    path = as_path(path, "CIFAR-10 jpg")
    use_cache = cache and path.is_file()
    if use_cache:
        hit = _read_cache(_cache_path(path, split))
        if hit is not None:
            return hit
    splits = ["train", "test"] if use_cache else [split]
    listing = _list(path, splits)
    result = None
    for s in splits:
        found = sorted(listing[s])
        if found != sorted(CIFAR10_CLASSES):
            raise Error(f"{path}: '{s}' has class folders {found}, expected the ten CIFAR-10 classes")
        images, labels, _ = _assemble(listing[s], f"{path}:{s}", CIFAR10_CLASSES)
        if images.shape[1:] != (3, 32, 32):
            raise Error(f"{path}: '{s}' images have shape {images.shape[1:]}, expected (3, 32, 32)")
        listing[s] = {}  # free the encoded bytes early
        if use_cache:
            _write_cache(_cache_path(path, s), images, labels)
        if s == split:
            result = images, labels
    assert result is not None
    return result
