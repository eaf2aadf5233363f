"""Minibatch iteration over in-memory numpy arrays, with shuffling and background prefetching."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from ._util import Error

__all__ = ["DataLoader"]

Batch = tuple[np.ndarray, ...]
_END = object()


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


class DataLoader:
    """Iterates over minibatches of equally long numpy arrays, like torch.utils.data.DataLoader
    over a TensorDataset.

    ``arrays`` is a tuple of arrays with the same first dimension N (a single array is taken as a
    1-tuple). Each iteration over the loader is one epoch and yields tuples of batch arrays
    ``(a[idx] for a in arrays)``: shapes ``(B, *a.shape[1:])``, dtypes unchanged, where B is
    ``batch_size`` except for a smaller last batch (dropped when ``drop_last``). The batches are
    copies, so a transform may modify them in place.

    With ``shuffle`` the order is a fresh permutation every epoch; with a ``seed`` the sequence of
    epochs (orders and transform randomness) is the same for every loader made with that seed.
    ``transform(batch, rng) -> batch`` is applied to each batch tuple, with a numpy Generator
    ``rng`` for its randomness (see :class:`kiln.data.Compose`). With ``prefetch > 0`` batches
    (transform included) are prepared by a background thread up to ``prefetch`` batches ahead;
    the thread stops when the epoch ends or the iteration is abandoned (``break``, an exception,
    or the iterator being dropped). ``prefetch=0`` prepares batches in the caller's thread.
    ``len(loader)`` is the number of batches per epoch.
    """

    def __init__(
        self,
        arrays: Sequence[np.ndarray] | np.ndarray,
        batch_size: int = 1,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int | None = None,
        prefetch: int = 2,
        transform: Callable[[Batch, np.random.Generator], Batch] | None = None,
    ):
        if isinstance(arrays, np.ndarray):
            arrays = (arrays,)
        arrays = tuple(np.asarray(a) for a in arrays)
        if not arrays:
            raise Error("DataLoader: needs at least one array")
        if any(a.ndim == 0 for a in arrays):
            raise Error("DataLoader: arrays must have a first (sample) dimension; got a 0-d array")
        lengths = [a.shape[0] for a in arrays]
        if len(set(lengths)) != 1:
            raise Error(f"DataLoader: arrays must have the same first dimension, got lengths {lengths}")
        if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
            raise Error(f"DataLoader: batch_size must be a positive int, got {batch_size!r}")
        if prefetch < 0:
            raise Error(f"DataLoader: prefetch must be >= 0, got {prefetch}")
        if transform is not None and not callable(transform):
            raise Error("DataLoader: transform must be callable as transform(batch, rng)")
        self.arrays = arrays
        self.num_samples = lengths[0]
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.seed = seed
        self.prefetch = int(prefetch)
        self.transform = transform
        self.epoch = 0  # the number of epochs started so far
        self._seedseq = np.random.SeedSequence(seed)

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return -(-self.num_samples // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Makes the next iteration use the order and randomness of epoch ``epoch`` (0-based)."""
        self.epoch = int(epoch)

    def _plan(self) -> tuple[np.ndarray, np.random.Generator]:
        ss = np.random.SeedSequence(self._seedseq.entropy, spawn_key=(self.epoch,))
        self.epoch += 1
        order_ss, transform_ss = ss.spawn(2)
        if self.shuffle:
            order = np.random.default_rng(order_ss).permutation(self.num_samples)
        else:
            order = np.arange(self.num_samples)
        return order, np.random.default_rng(transform_ss)

    def _batch(self, order: np.ndarray, b: int, rng: np.random.Generator) -> Batch:
        idx = order[b * self.batch_size : (b + 1) * self.batch_size]
        batch = tuple(a[idx] for a in self.arrays)
        if self.transform is not None:
            out = self.transform(batch, rng)
            if not isinstance(out, (tuple, list)):
                raise Error(f"DataLoader: transform must return a tuple of arrays, got {type(out).__name__}")
            batch = tuple(out)
        return batch

    def __iter__(self) -> Iterator[Batch]:
        order, rng = self._plan()
        if self.prefetch == 0:
            return self._serial(order, rng)
        return self._prefetched(order, rng)

    def _serial(self, order: np.ndarray, rng: np.random.Generator) -> Iterator[Batch]:
        for b in range(len(self)):
            yield self._batch(order, b, rng)

    def _prefetched(self, order: np.ndarray, rng: np.random.Generator) -> Iterator[Batch]:
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        n = len(self)

        def work() -> None:
            try:
                for b in range(n):
                    if stop.is_set():
                        return
                    q.put(self._batch(order, b, rng))
                q.put(_END)
            except BaseException as e:  # handed to the consumer, raised there
                q.put(_Failure(e))

        thread = threading.Thread(target=work, name="kiln-data-prefetch", daemon=True)
        thread.start()
        try:
            while True:
                item = q.get()
                if item is _END:
                    return
                if isinstance(item, _Failure):
                    raise item.exc
                yield item
        finally:
            stop.set()
            while thread.is_alive():  # unblock a pending put, then wait for the thread to end
                try:
                    while True:
                        q.get_nowait()
                except queue.Empty:
                    pass
                thread.join(0.01)

    def __repr__(self) -> str:
        shapes = ", ".join(f"{a.dtype}{list(a.shape)}" for a in self.arrays)
        return (
            f"DataLoader(({shapes}), batch_size={self.batch_size}, shuffle={self.shuffle}, "
            f"drop_last={self.drop_last}, seed={self.seed}, prefetch={self.prefetch})"
        )
