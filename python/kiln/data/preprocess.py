"""Preprocessing fitted on training data only, then applied to every split."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ._util import Error

__all__ = ["MeanImage", "Normalize", "PCA"]

_CHUNK_ELEMENTS = 1 << 22  # elements per step of the float64 passes, bounding their temporary memory


def _chunks(X: np.ndarray) -> range:
    """Start rows of the chunks of X processed per step."""
    row = max(1, X[:1].size)
    return range(0, X.shape[0], max(1, _CHUNK_ELEMENTS // row))


def _step(X: np.ndarray) -> int:
    return _chunks(X).step


def _as_data(X: np.ndarray, who: str, min_ndim: int = 2) -> np.ndarray:
    X = np.asarray(X)
    if X.ndim < min_ndim:
        raise Error(
            f"{who}: expected an array of at least {min_ndim} dimensions (N, ...), got shape {X.shape}"
        )
    if not (np.issubdtype(X.dtype, np.number) or X.dtype == np.bool_):
        raise Error(f"{who}: expected numeric data, got dtype {X.dtype}")
    return X


class _Fitted:
    _fitted_attr = ""

    def _check_fitted(self) -> None:
        if getattr(self, self._fitted_attr, None) is None:
            raise Error(f"{type(self).__name__}: call .fit(X_train) before .transform")

    def fit(self, X: np.ndarray) -> _Fitted:  # pragma: no cover - overridden
        raise NotImplementedError

    def transform(self, X: np.ndarray) -> np.ndarray:  # pragma: no cover - overridden
        raise NotImplementedError

    def fit_transform(self, X: np.ndarray) -> np.ndarray:
        """``fit(X)`` then ``transform(X)``."""
        return self.fit(X).transform(X)


class MeanImage(_Fitted):
    """Subtracts the mean training sample (the "mean image" of CS231n).

    ``fit(X)`` with X of shape ``(N, *S)`` (any numeric dtype) stores ``mean_`` as float32 of
    shape ``S``; ``transform(X)`` returns ``float32`` ``X - mean_`` of X's shape ``(M, *S)``.
    """

    _fitted_attr = "mean_"

    def __init__(self) -> None:
        self.mean_: np.ndarray | None = None

    def fit(self, X: np.ndarray) -> MeanImage:
        """Computes the mean over the first axis of ``X`` (shape ``(N, *S)``); returns self."""
        X = _as_data(X, "MeanImage.fit", 1)
        if X.shape[0] == 0:
            raise Error("MeanImage.fit: no samples")
        self.mean_ = X.mean(axis=0, dtype=np.float64).astype(np.float32)
        return self

    def _check(self, X: np.ndarray, who: str) -> np.ndarray:
        self._check_fitted()
        X = _as_data(X, who, 1)
        if X.shape[1:] != self.mean_.shape:
            raise Error(f"{who}: samples of shape {X.shape[1:]}, but fitted on shape {self.mean_.shape}")
        return X

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Returns ``X - mean_`` as float32, same shape as ``X``."""
        X = self._check(X, "MeanImage.transform")
        return np.subtract(X, self.mean_, dtype=np.float32)

    def inverse_transform(self, X: np.ndarray) -> np.ndarray:
        """Returns ``X + mean_`` as float32, same shape as ``X``."""
        X = self._check(X, "MeanImage.inverse_transform")
        return np.add(X, self.mean_, dtype=np.float32)

    def __repr__(self) -> str:
        return f"MeanImage(fitted={self.mean_ is not None})"


class Normalize(_Fitted):
    """Per-channel standardization ``(x - mean[c]) / std[c]``, as torchvision's Normalize.

    For NCHW data the channel axis is 1 and ``fit(X)`` computes the mean and (population) standard
    deviation of each channel over the N, H and W axes; for 2-d ``(N, D)`` data, over N for each
    feature. ``mean`` and ``std`` may instead be given (sequences of C numbers), in which case
    ``fit`` is not needed and does not change them. A zero std is replaced by 1. ``transform``
    returns ``float32`` data of the input's shape. The statistics are in the units of the data
    (for uint8 images, 0..255).
    """

    _fitted_attr = "mean_"

    def __init__(self, mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
        if (mean is None) != (std is None):
            raise Error("Normalize: give both mean and std, or neither (then call fit)")
        self.given = mean is not None
        self.mean_: np.ndarray | None = None
        self.std_: np.ndarray | None = None
        if self.given:
            self.mean_ = np.atleast_1d(np.asarray(mean, np.float32))
            self.std_ = np.atleast_1d(np.asarray(std, np.float32))
            if self.mean_.ndim != 1 or self.mean_.shape != self.std_.shape:
                raise Error(f"Normalize: mean and std must be 1-d of equal length, got {mean} and {std}")
            if np.any(self.std_ <= 0):
                raise Error(f"Normalize: std must be positive, got {std}")

    def fit(self, X: np.ndarray) -> Normalize:
        """Computes per-channel mean and std of ``X`` (``(N, C, ...)``); returns self. No-op when
        mean and std were given."""
        if self.given:
            return self
        X = _as_data(X, "Normalize.fit")
        axes = (0,) + tuple(range(2, X.ndim))
        count = X.size // X.shape[1] if X.shape[1] else 0
        if count == 0:
            raise Error(f"Normalize.fit: no samples (shape {X.shape})")
        total = np.zeros(X.shape[1])
        step = _step(X)
        for s in _chunks(X):
            total += X[s : s + step].sum(axis=axes, dtype=np.float64)
        mean = total / count
        shape = (1, -1) + (1,) * (X.ndim - 2)
        sq = np.zeros(X.shape[1])
        for s in _chunks(X):
            d = X[s : s + step] - mean.reshape(shape)
            sq += np.square(d, out=d).sum(axis=axes)
        std = np.sqrt(sq / count)
        std[std == 0] = 1.0
        self.mean_, self.std_ = mean.astype(np.float32), std.astype(np.float32)
        return self

    def _params(self, X: np.ndarray, who: str) -> tuple[np.ndarray, np.ndarray]:
        self._check_fitted()
        if X.shape[1] != self.mean_.shape[0]:
            raise Error(
                f"{who}: {X.shape[1]} channels (axis 1 of shape {X.shape}), but {self.mean_.shape[0]} in mean/std"
            )
        shape = (1, -1) + (1,) * (X.ndim - 2)
        return self.mean_.reshape(shape), self.std_.reshape(shape)

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Returns ``(X - mean) / std`` per channel (axis 1) as float32, same shape as ``X``."""
        X = _as_data(X, "Normalize.transform")
        mean, std = self._params(X, "Normalize.transform")
        out = np.subtract(X, mean, dtype=np.float32)
        out /= std
        return out

    def inverse_transform(self, X: np.ndarray) -> np.ndarray:
        """Returns ``X * std + mean`` per channel as float32, same shape as ``X``."""
        X = _as_data(X, "Normalize.inverse_transform")
        mean, std = self._params(X, "Normalize.inverse_transform")
        out = np.multiply(X, std, dtype=np.float32)
        out += mean
        return out

    def __repr__(self) -> str:
        if self.mean_ is None:
            return "Normalize()"
        return f"Normalize(mean={self.mean_.tolist()}, std={self.std_.tolist()})"


class PCA(_Fitted):
    """Principal component analysis on flattened samples, optionally whitened.

    ``fit(X)`` with X of shape ``(N, *S)`` flattens each sample to ``D = prod(S)`` features and
    stores ``mean_`` (D,), ``components_`` (k, D) (unit principal axes, by decreasing variance,
    signs fixed so each axis's largest-magnitude entry is positive), ``explained_variance_`` (k,)
    (eigenvalues of the covariance with the N-1 normalization, as numpy.cov and scikit-learn)
    and ``explained_variance_ratio_``. ``transform(X)`` returns float32 ``(M, k)`` projections
    ``(x - mean_) @ components_.T``, divided by ``sqrt(explained_variance_ + eps)`` when
    ``whiten`` (so the training projections have about identity covariance).
    ``inverse_transform(Z)`` maps ``(M, k)`` back to float32 ``(M, *S)``. ``k=None`` keeps
    ``min(N, D)`` components.
    """

    _fitted_attr = "components_"

    def __init__(self, k: int | None = None, whiten: bool = False, eps: float = 1e-5):
        if k is not None and (not isinstance(k, (int, np.integer)) or k < 1):
            raise Error(f"PCA: k must be a positive int or None, got {k!r}")
        self.k = k
        self.whiten = bool(whiten)
        self.eps = float(eps)
        self.mean_: np.ndarray | None = None
        self.components_: np.ndarray | None = None
        self.explained_variance_: np.ndarray | None = None
        self.explained_variance_ratio_: np.ndarray | None = None
        self.sample_shape_: tuple[int, ...] | None = None

    def fit(self, X: np.ndarray) -> PCA:
        """Fits the principal axes of ``X`` (shape ``(N, *S)``, N >= 2); returns self."""
        X = _as_data(X, "PCA.fit")
        n = X.shape[0]
        X2 = X.reshape(n, -1)
        d = X2.shape[1]
        if n < 2:
            raise Error(f"PCA.fit: needs at least 2 samples, got {n}")
        k = min(n, d) if self.k is None else self.k
        if k > min(n, d):
            raise Error(f"PCA.fit: k={k} exceeds min(N, D) = min({n}, {d})")
        mean = X2.mean(axis=0, dtype=np.float64)
        if n >= d:  # covariance eigendecomposition; the D x D matrix is accumulated in row chunks
            cov = np.zeros((d, d))
            step = _step(X2)
            for s in _chunks(X2):
                c = X2[s : s + step] - mean
                cov += c.T @ c
            evals, evecs = np.linalg.eigh(cov / (n - 1))
            evals, comps = evals[::-1], evecs[:, ::-1].T
            total = max(float(np.trace(cov)) / (n - 1), 0.0)
        else:  # fewer samples than features: thin SVD of the centered data
            _, s, vt = np.linalg.svd(X2 - mean, full_matrices=False)
            evals, comps = s**2 / (n - 1), vt
            total = float(evals.sum())
        evals, comps = np.maximum(evals[:k], 0.0), comps[:k]
        big = np.argmax(np.abs(comps), axis=1)
        comps = comps * np.sign(comps[np.arange(k), big])[:, None]
        self.mean_ = mean.astype(np.float32)
        self.components_ = comps.astype(np.float32)
        self.explained_variance_ = evals.astype(np.float32)
        self.explained_variance_ratio_ = (evals / total if total > 0 else np.zeros_like(evals)).astype(
            np.float32
        )
        self.sample_shape_ = X.shape[1:]
        self._mean64, self._comps64, self._scale64 = mean, comps, np.sqrt(evals + self.eps)
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Projects ``X`` (``(M, *S)``) onto the components: float32 of shape ``(M, k)``."""
        self._check_fitted()
        X = _as_data(X, "PCA.transform")
        if X.shape[1:] != self.sample_shape_:
            raise Error(
                f"PCA.transform: samples of shape {X.shape[1:]}, but fitted on shape {self.sample_shape_}"
            )
        X2 = X.reshape(X.shape[0], -1)
        out = np.empty((X2.shape[0], self._comps64.shape[0]), np.float32)
        step = _step(X2)
        for s in _chunks(X2):
            Z = (X2[s : s + step] - self._mean64) @ self._comps64.T
            if self.whiten:
                Z /= self._scale64
            out[s : s + step] = Z
        return out

    def inverse_transform(self, Z: np.ndarray) -> np.ndarray:
        """Maps projections ``Z`` (``(M, k)``) back to the data space: float32 ``(M, *S)``."""
        self._check_fitted()
        Z = np.asarray(Z, np.float64)
        k = self._comps64.shape[0]
        if Z.ndim != 2 or Z.shape[1] != k:
            raise Error(f"PCA.inverse_transform: expected shape (M, {k}), got {Z.shape}")
        if self.whiten:
            Z = Z * self._scale64
        X = Z @ self._comps64 + self._mean64
        return X.astype(np.float32).reshape((Z.shape[0],) + self.sample_shape_)

    def __repr__(self) -> str:
        return f"PCA(k={self.k}, whiten={self.whiten}, eps={self.eps})"
