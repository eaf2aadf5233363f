"""Batch augmentations on NCHW arrays, each drawing its randomness from an explicit numpy Generator.

Every function takes a whole batch ``x`` of shape ``(N, C, H, W)`` and draws independent random
parameters per sample (mixup: one mixing weight per batch, as in the paper). The classes
(RandomCrop, RandomHorizontalFlip, ...) wrap the functions with fixed arguments, and
:class:`Compose` chains them into a ``transform(batch, rng)`` for :class:`kiln.data.DataLoader`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from ._util import Error

__all__ = [
    "ColorJitter",
    "Compose",
    "Cutout",
    "MixUp",
    "RandomCrop",
    "RandomHorizontalFlip",
    "RandomResizedCrop",
    "color_jitter",
    "cutout",
    "horizontal_flip",
    "mixup",
    "random_crop",
    "random_resized_crop",
    "resize",
]

_GRAY = np.array([0.2989, 0.587, 0.114])  # torchvision's rgb_to_grayscale weights


def _nchw(x: np.ndarray, who: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 4:
        raise Error(f"{who}: expected a batch of shape (N, C, H, W), got shape {x.shape}")
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
        raise Error(f"{who}: expected numeric data, got dtype {x.dtype}")
    return x


def _floating(x: np.ndarray) -> np.ndarray:
    return x if np.issubdtype(x.dtype, np.floating) else x.astype(np.float32)


def _rng(rng: np.random.Generator, who: str) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise Error(
            f"{who}: rng must be a numpy Generator (np.random.default_rng(seed)), got {type(rng).__name__}"
        )
    return rng


def _pair(v: int | Sequence[int], who: str, name: str) -> tuple[int, int]:
    if isinstance(v, (int, np.integer)):
        v = (int(v), int(v))
    v = tuple(int(a) for a in v)
    if len(v) != 2 or min(v) < 1:
        raise Error(f"{who}: {name} must be a positive int or a pair (h, w), got {v}")
    return v


def random_crop(
    x: np.ndarray,
    size: int | Sequence[int],
    padding: int | Sequence[int],
    rng: np.random.Generator,
    fill: float = 0,
) -> np.ndarray:
    """Pads ``x`` (``(N, C, H, W)``) with ``fill`` and takes a random ``size`` crop of each sample,
    as torchvision's RandomCrop.

    ``size`` is an int or ``(h, w)``; ``padding`` an int (all sides), ``(left/right, top/bottom)`` or
    ``(left, top, right, bottom)``. Returns an array of x's dtype and shape ``(N, C, h, w)``.
    """
    who = "random_crop"
    x, rng = _nchw(x, who), _rng(rng, who)
    h, w = _pair(size, who, "size")
    pad = (padding,) * 4 if isinstance(padding, (int, np.integer)) else tuple(padding)
    if len(pad) == 2:
        pad = (pad[0], pad[1], pad[0], pad[1])
    if len(pad) != 4 or min(pad) < 0:
        raise Error(f"{who}: padding must be an int, a pair or a 4-tuple of non-negative ints, got {padding}")
    left, top, right, bottom = (int(p) for p in pad)
    n, c, H, W = x.shape
    if h > H + top + bottom or w > W + left + right:
        raise Error(
            f"{who}: crop size {(h, w)} is larger than the padded image {(H + top + bottom, W + left + right)}"
        )
    if any(pad):
        xp = np.full((n, c, H + top + bottom, W + left + right), fill, dtype=x.dtype)
        xp[:, :, top : top + H, left : left + W] = x
    else:
        xp = x
    oy = rng.integers(0, xp.shape[2] - h + 1, size=n)
    ox = rng.integers(0, xp.shape[3] - w + 1, size=n)
    windows = np.lib.stride_tricks.sliding_window_view(xp, (h, w), axis=(2, 3))  # (N, C, H', W', h, w)
    return np.ascontiguousarray(windows[np.arange(n), :, oy, ox])


def horizontal_flip(x: np.ndarray, rng: np.random.Generator, p: float = 0.5) -> np.ndarray:
    """Mirrors each sample of ``x`` (``(N, C, H, W)``) left-right with probability ``p``.

    Returns a new array of x's shape and dtype.
    """
    who = "horizontal_flip"
    x, rng = _nchw(x, who), _rng(rng, who)
    flip = rng.random(x.shape[0]) < p
    out = x.copy()
    out[flip] = x[flip][..., ::-1]
    return out


def _bilinear(
    x: np.ndarray, top: np.ndarray, left: np.ndarray, hh: np.ndarray, ww: np.ndarray, out_h: int, out_w: int
) -> np.ndarray:
    """Resizes the box (top, left, hh, ww) of each sample to (out_h, out_w), bilinear with
    half-pixel centers (PyTorch's align_corners=False, no antialiasing)."""
    n = x.shape[0]

    def axis(start, length, out):
        scale = (length / out)[:, None]
        src = (np.arange(out)[None, :] + 0.5) * scale - 0.5
        src = np.clip(src, 0, (length - 1)[:, None])
        i0 = np.floor(src).astype(np.int64)
        i1 = np.minimum(i0 + 1, (length - 1)[:, None])
        frac = (src - i0).astype(x.dtype)
        return i0 + start[:, None], i1 + start[:, None], frac

    y0, y1, fy = axis(top, hh, out_h)
    x0, x1, fx = axis(left, ww, out_w)
    xt = x.transpose(0, 2, 3, 1)  # gather rows and columns in NHWC, then go back
    nn = np.arange(n)[:, None, None]
    fy, fx = fy[:, :, None, None], fx[:, None, :, None]
    top_row = xt[nn, y0[:, :, None], x0[:, None, :]] * (1 - fx) + xt[nn, y0[:, :, None], x1[:, None, :]] * fx
    bot_row = xt[nn, y1[:, :, None], x0[:, None, :]] * (1 - fx) + xt[nn, y1[:, :, None], x1[:, None, :]] * fx
    out = top_row * (1 - fy) + bot_row * fy
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def resize(x: np.ndarray, size: int | Sequence[int]) -> np.ndarray:
    """Bilinear resize of every sample of ``x`` (``(N, C, H, W)``) to ``size`` (int or ``(h, w)``),
    with half-pixel centers as PyTorch's ``interpolate(mode="bilinear", align_corners=False)``.

    Returns a float array (x's float dtype, float32 for integer input) of shape ``(N, C, h, w)``.
    """
    x = _floating(_nchw(x, "resize"))
    h, w = _pair(size, "resize", "size")
    n, _, H, W = x.shape
    zeros, ones = np.zeros(n, np.int64), np.ones(n, np.int64)
    return _bilinear(x, zeros, zeros, ones * H, ones * W, h, w)


def random_resized_crop(
    x: np.ndarray,
    size: int | Sequence[int],
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    *,
    rng: np.random.Generator,
) -> np.ndarray:
    """Crops a random box of each sample and resizes it to ``size``, as torchvision's RandomResizedCrop.

    The box covers a fraction of the area drawn uniformly from ``scale`` with an aspect ratio
    (w/h) drawn log-uniformly from ``ratio`` (10 tries, then a center crop clamped to ``ratio``).
    The resize is bilinear (:func:`resize`). ``x`` is ``(N, C, H, W)``; returns a float array (x's
    float dtype, float32 for integer input) of shape ``(N, C, h, w)``.
    """
    who = "random_resized_crop"
    x, rng = _floating(_nchw(x, who)), _rng(rng, who)
    out_h, out_w = _pair(size, who, "size")
    if not (0 < scale[0] <= scale[1]) or not (0 < ratio[0] <= ratio[1]):
        raise Error(
            f"{who}: need 0 < scale[0] <= scale[1] and 0 < ratio[0] <= ratio[1], got {scale}, {ratio}"
        )
    n, _, H, W = x.shape
    area = H * W
    tries = 10
    target = area * rng.uniform(scale[0], scale[1], size=(n, tries))
    aspect = np.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1]), size=(n, tries)))
    ws = np.round(np.sqrt(target * aspect)).astype(np.int64)
    hs = np.round(np.sqrt(target / aspect)).astype(np.int64)
    ok = (ws > 0) & (hs > 0) & (ws <= W) & (hs <= H)
    first = np.argmax(ok, axis=1)
    found = ok[np.arange(n), first]
    hh, ww = hs[np.arange(n), first], ws[np.arange(n), first]
    # fallback (torchvision): the whole image, cropped to the nearest allowed aspect ratio
    in_ratio = W / H
    if in_ratio < ratio[0]:
        fw, fh = W, int(round(W / ratio[0]))
    elif in_ratio > ratio[1]:
        fh, fw = H, int(round(H * ratio[1]))
    else:
        fw, fh = W, H
    hh, ww = np.where(found, hh, fh), np.where(found, ww, fw)
    top = np.where(found, np.floor(rng.random(n) * (H - hh + 1)).astype(np.int64), (H - fh) // 2)
    left = np.where(found, np.floor(rng.random(n) * (W - ww + 1)).astype(np.int64), (W - fw) // 2)
    return _bilinear(x, top, left, hh, ww, out_h, out_w)


def _factor_range(v: float | Sequence[float], name: str) -> tuple[float, float]:
    if isinstance(v, (int, float, np.floating, np.integer)):
        if v < 0:
            raise Error(f"color_jitter: {name} must be non-negative, got {v}")
        return max(0.0, 1.0 - float(v)), 1.0 + float(v)
    lo, hi = (float(a) for a in v)
    if not 0 <= lo <= hi:
        raise Error(f"color_jitter: {name} range must satisfy 0 <= min <= max, got {v}")
    return lo, hi


def color_jitter(
    x: np.ndarray,
    brightness: float | Sequence[float] = 0.0,
    contrast: float | Sequence[float] = 0.0,
    saturation: float | Sequence[float] = 0.0,
    *,
    rng: np.random.Generator,
    value_range: tuple[float, float] | None = (0.0, 1.0),
) -> np.ndarray:
    """Randomly changes brightness, contrast and saturation of each sample, as torchvision's ColorJitter.

    Each of ``brightness``, ``contrast``, ``saturation`` is a float ``v`` (factor drawn uniformly
    from ``[max(0, 1 - v), 1 + v]``) or a ``(min, max)`` range; the three adjustments are applied
    in a random order per sample. With ``lo, hi = value_range`` (black and white levels):
    brightness scales the image towards ``lo``, contrast blends it with the mean of its grayscale
    image, saturation with its grayscale image (RGB only; a 1-channel image is unchanged), and
    each result is clipped to ``[lo, hi]``. ``value_range=(0, 1)`` gives torchvision's results on
    float images; use ``(0, 255)`` for 0..255 data, or ``None`` for data of any range (black is 0,
    no clipping). ``x`` is ``(N, C, H, W)``; returns a float array (x's float dtype, float32 for
    integer input) of the same shape.
    """
    who = "color_jitter"
    x, rng = _floating(_nchw(x, who)), _rng(rng, who)
    n, c = x.shape[:2]
    lo, hi = (0.0, None) if value_range is None else (float(value_range[0]), float(value_range[1]))
    ranges = [
        _factor_range(v, k)
        for v, k in ((brightness, "brightness"), (contrast, "contrast"), (saturation, "saturation"))
    ]
    factors = np.stack([rng.uniform(a, b, size=n) for a, b in ranges], axis=1).astype(x.dtype)  # (N, 3)
    order = np.argsort(rng.random((n, 3)), axis=1)  # a random permutation of the 3 ops per sample
    gray_w = _GRAY.astype(x.dtype)

    def gray(img):  # (M, 1, H, W)
        return img if img.shape[1] == 1 else np.einsum("c,nchw->nhw", gray_w, img)[:, None]

    out = x.copy()
    for step in range(3):
        for op in range(3):
            idx = np.nonzero((order[:, step] == op) & (factors[:, op] != 1))[0]
            if idx.size == 0 or (op == 2 and c != 3):
                continue
            img, f = out[idx], factors[idx, op][:, None, None, None]
            if op == 0:
                ref = lo
            elif op == 1:
                ref = gray(img).mean(axis=(1, 2, 3), keepdims=True)
            else:
                ref = gray(img)
            res = f * img + (1 - f) * ref
            if hi is not None:
                np.clip(res, lo, hi, out=res)
            out[idx] = res
    return out


def cutout(x: np.ndarray, size: int, rng: np.random.Generator, value: float = 0) -> np.ndarray:
    """Sets a ``size`` x ``size`` square of each sample to ``value`` (DeVries & Taylor's cutout).

    The square's center is uniform over the image, so the square may be clipped by the border.
    ``x`` is ``(N, C, H, W)``; returns a new array of x's shape and dtype.
    """
    who = "cutout"
    x, rng = _nchw(x, who), _rng(rng, who)
    if int(size) < 0:
        raise Error(f"{who}: size must be non-negative, got {size}")
    n, _, H, W = x.shape
    y0 = rng.integers(0, H, size=n)[:, None] - size // 2
    x0 = rng.integers(0, W, size=n)[:, None] - size // 2
    rows = (np.arange(H)[None] >= y0) & (np.arange(H)[None] < y0 + size)  # (N, H)
    cols = (np.arange(W)[None] >= x0) & (np.arange(W)[None] < x0 + size)  # (N, W)
    mask = rows[:, None, :, None] & cols[:, None, None, :]
    return np.where(mask, np.asarray(value, x.dtype), x)


def mixup(
    x: np.ndarray, y: np.ndarray, alpha: float, rng: np.random.Generator, num_classes: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Mixup (Zhang et al., 2018): blends each sample with another one of the batch.

    ``lam ~ Beta(alpha, alpha)`` (one per batch; ``alpha <= 0`` gives ``lam = 1``) and a random
    permutation ``perm`` give ``x' = lam * x + (1 - lam) * x[perm]`` and the soft targets
    ``y' = lam * t + (1 - lam) * t[perm]``, where ``t`` is ``y`` when it is already ``(N, K)``
    (one-hot or soft) and the one-hot encoding of integer labels ``y`` (``(N,)``, needs
    ``num_classes``) otherwise. ``x`` is ``(N, ...)``; returns ``(x', y')`` as float arrays
    (float32 for integer input), shapes ``x.shape`` and ``(N, K)``.
    """
    who = "mixup"
    rng = _rng(rng, who)
    x = _floating(np.asarray(x))
    y = np.asarray(y)
    n = x.shape[0] if x.ndim else 0
    if y.shape[:1] != (n,) or y.ndim not in (1, 2):
        raise Error(f"{who}: y must be (N,) labels or (N, K) targets for N = {n}, got shape {y.shape}")
    if y.ndim == 1:
        if not np.issubdtype(y.dtype, np.integer):
            raise Error(f"{who}: 1-d y must hold integer labels, got dtype {y.dtype}")
        if num_classes is None:
            raise Error(f"{who}: integer labels need num_classes")
        if n and (y.min() < 0 or y.max() >= num_classes):
            raise Error(f"{who}: labels must lie in 0..{num_classes - 1}, got {y.min()}..{y.max()}")
        t = np.zeros((n, num_classes), np.float32)
        t[np.arange(n), y] = 1
    else:
        t = _floating(y)
        if num_classes is not None and t.shape[1] != num_classes:
            raise Error(f"{who}: y has {t.shape[1]} classes, num_classes is {num_classes}")
    lam = float(rng.beta(alpha, alpha)) if alpha > 0 else 1.0
    perm = rng.permutation(n)
    xm = lam * x + (1 - lam) * x[perm]
    ym = lam * t + (1 - lam) * t[perm]
    return xm.astype(x.dtype, copy=False), ym.astype(t.dtype, copy=False)


class RandomCrop:
    """``random_crop`` with fixed arguments: ``RandomCrop(size, padding=0, fill=0)(x, rng)``."""

    def __init__(self, size: int | Sequence[int], padding: int | Sequence[int] = 0, fill: float = 0):
        self.size, self.padding, self.fill = size, padding, fill

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return random_crop(x, self.size, self.padding, rng, self.fill)

    def __repr__(self) -> str:
        return f"RandomCrop(size={self.size}, padding={self.padding})"


class RandomHorizontalFlip:
    """``horizontal_flip`` with fixed ``p``: ``RandomHorizontalFlip(p=0.5)(x, rng)``."""

    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return horizontal_flip(x, rng, self.p)

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class RandomResizedCrop:
    """``random_resized_crop`` with fixed arguments: ``RandomResizedCrop(size, scale, ratio)(x, rng)``."""

    def __init__(
        self,
        size: int | Sequence[int],
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
    ):
        self.size, self.scale, self.ratio = size, scale, ratio

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return random_resized_crop(x, self.size, self.scale, self.ratio, rng=rng)

    def __repr__(self) -> str:
        return f"RandomResizedCrop(size={self.size}, scale={self.scale}, ratio={self.ratio})"


class ColorJitter:
    """``color_jitter`` with fixed arguments: ``ColorJitter(brightness, contrast, saturation)(x, rng)``."""

    def __init__(
        self,
        brightness: float | Sequence[float] = 0.0,
        contrast: float | Sequence[float] = 0.0,
        saturation: float | Sequence[float] = 0.0,
        value_range: tuple[float, float] | None = (0.0, 1.0),
    ):
        self.brightness, self.contrast, self.saturation = brightness, contrast, saturation
        self.value_range = value_range

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return color_jitter(
            x, self.brightness, self.contrast, self.saturation, rng=rng, value_range=self.value_range
        )

    def __repr__(self) -> str:
        return f"ColorJitter(brightness={self.brightness}, contrast={self.contrast}, saturation={self.saturation})"


class Cutout:
    """``cutout`` with fixed arguments: ``Cutout(size, value=0)(x, rng)``."""

    def __init__(self, size: int, value: float = 0):
        self.size, self.value = size, value

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return cutout(x, self.size, rng, self.value)

    def __repr__(self) -> str:
        return f"Cutout(size={self.size})"


class MixUp:
    """``mixup`` with fixed arguments, acting on images and labels together:
    ``MixUp(alpha=1.0, num_classes=None)(x, y, rng) -> (x', y')`` (as torchvision's v2.MixUp)."""

    joint = True  # Compose passes it the images and the labels (batch[0] and batch[1])

    def __init__(self, alpha: float = 1.0, num_classes: int | None = None):
        self.alpha, self.num_classes = alpha, num_classes

    def __call__(
        self, x: np.ndarray, y: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        return mixup(x, y, self.alpha, rng, self.num_classes)

    def __repr__(self) -> str:
        return f"MixUp(alpha={self.alpha}, num_classes={self.num_classes})"


class Compose:
    """Chains augmentations into a DataLoader transform ``transform(batch, rng) -> batch``.

    Each element is one of: a callable ``t(x, rng) -> x`` applied to the images ``batch[0]`` (the
    classes above, or e.g. ``lambda x, rng: x.astype(np.float32) / 255``); a joint transform such
    as :class:`MixUp` (attribute ``joint = True``), called as ``t(batch[0], batch[1], rng)`` and
    replacing both; or a fitted preprocessor with a ``transform(x)`` method (:class:`Normalize`,
    :class:`MeanImage`) applied to the images. Other entries of the batch pass through unchanged.
    Called on a single array instead of a tuple, it returns the transformed array.
    """

    def __init__(self, transforms: Sequence[Callable | object]):
        self.transforms = list(transforms)
        for t in self.transforms:
            if not callable(t) and not hasattr(t, "transform"):
                raise Error(f"Compose: {t!r} is neither callable nor has a transform method")

    def __call__(self, batch, rng: np.random.Generator):
        single = isinstance(batch, np.ndarray)
        items = [batch] if single else list(batch)
        if not items:
            raise Error("Compose: empty batch")
        for t in self.transforms:
            if getattr(t, "joint", False):
                if len(items) < 2:
                    raise Error(f"Compose: {t!r} needs a batch (x, y, ...), got a single array")
                items[0], items[1] = t(items[0], items[1], rng)
            elif callable(t):
                items[0] = t(items[0], rng)
            else:
                items[0] = t.transform(items[0])
        return items[0] if single else tuple(items)

    def __repr__(self) -> str:
        return "Compose([" + ", ".join(repr(t) for t in self.transforms) + "])"
