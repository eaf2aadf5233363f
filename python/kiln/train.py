"""Training loops and the tools around them: ``fit`` (progress bar, history, early stopping,
checkpoints of the best model, a stop with a clear message when the loss becomes NaN or inf),
``plot_history``, a coarse-to-fine ``random_search`` over hyperparameters, and the CS231n
sanity checks (initial loss, regularization, overfitting a small set).

Everything here is plain Python over numpy arrays: a step is any callable, usually a compiled
``kn.function`` that runs forward, backward and the updates in one call::

    import kiln as kn
    from kiln import train
    step = kn.function([x, y], [loss, logits], updates=opt.updates(loss))
    evaluate = kn.function([x, y], [loss, logits], training=False)
    history = train.fit(step, loader, epochs=10, val=(X_val, y_val), evaluate=evaluate,
                        model=model, checkpoint="best.npz", early_stopping=3, restore_best=True)
    train.plot_history(history, "curves.png")

**What a step (or ``evaluate``) may return.** ``fit`` calls ``step(*batch)`` with one batch's
arrays; the labels, when accuracy is wanted, are the batch's *last* array (integers). The result
may be:

- a scalar (a 0-d array or a float): the batch's mean loss;
- a dict: ``"loss"`` (else its first entry) is the loss; optional ``"acc"`` (the batch's
  accuracy in [0, 1]), ``"correct"`` (the number of right predictions) or ``"logits"``
  (scores, compared with the labels as below); other keys are ignored;
- a list or tuple ``(loss, logits, ...)``: the first entry is the loss; a second entry with one
  row per example is taken as logits, a scalar second entry as the accuracy; the rest is ignored.
- for ``evaluate`` only: one array with a row per example: logits, without a loss.

Logits of shape (N, C) are scored by ``argmax(axis=-1) == labels``; a float (N,) array as one
binary logit (``logit > 0`` predicts 1); an integer (N,) array as the predicted labels. No accuracy
is recorded when the labels are not integers or the shapes do not match.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from ._graph import Error

__all__ = [
    "History",
    "fit",
    "plot_history",
    "load_checkpoint",
    "random_search",
    "check_initial_loss",
    "check_regularization_raises_loss",
    "check_overfit_small",
]

_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc")
_ALIASES = {"loss": "train_loss", "acc": "train_acc", "accuracy": "train_acc", "val_accuracy": "val_acc"}


# ---- reading what a step returns ----


class _BatchResult(NamedTuple):
    loss: float | None  # the batch's mean loss
    correct: float | None  # right predictions in the batch
    n: int  # examples in the batch


def _batch_size(batch: Sequence[Any]) -> int:
    for a in batch:
        shape = getattr(a, "shape", None)
        if shape:
            return int(shape[0])
        if isinstance(a, (list, tuple)):
            return len(a)
    return 1


def _as_batch(batch: Any) -> tuple:
    if isinstance(batch, tuple):
        return batch
    if isinstance(batch, list):
        return tuple(batch)
    return (batch,)


def _scalar(v: Any) -> float | None:
    if v is None:
        return None
    a = np.asarray(v)
    if a.size != 1:
        return None
    return float(a.reshape(()))


def _correct(logits: Any, labels: Any) -> float | None:
    """Right predictions of ``logits`` against integer ``labels``; None where not comparable."""
    if labels is None:
        return None
    y = np.asarray(labels)
    p = np.asarray(logits)
    if y.dtype.kind not in "iub" or y.ndim != 1 or p.ndim < 1 or p.shape[0] != y.shape[0]:
        return None
    if p.ndim == 2:
        pred = p.argmax(axis=-1)
    elif p.ndim == 1 and p.dtype.kind in "iub":
        pred = p
    elif p.ndim == 1:
        pred = (p > 0).astype(np.int64)
    else:
        return None
    return float(np.count_nonzero(pred == y))


def _read_result(out: Any, batch: tuple, allow_logits_only: bool = False) -> _BatchResult:
    """Loss, correct count and size of one batch from what a step or evaluate returned."""
    n = _batch_size(batch)
    labels = batch[-1] if len(batch) >= 2 else None
    loss = correct = None
    if isinstance(out, Mapping):
        if not out:
            raise Error("fit: the step returned an empty dict; it must hold at least the loss")
        if "loss" in out:
            loss = _scalar(out["loss"])
        elif not ("logits" in out and allow_logits_only):
            loss = _scalar(next(iter(out.values())))
        if "correct" in out:
            correct = _scalar(out["correct"])
        elif "acc" in out or "accuracy" in out:
            acc = _scalar(out.get("acc", out.get("accuracy")))
            correct = None if acc is None else acc * n
        elif "logits" in out:
            correct = _correct(out["logits"], labels)
    elif isinstance(out, (list, tuple)):
        if not out:
            raise Error("fit: the step returned an empty list; it must hold at least the loss")
        first = out[0]
        if allow_logits_only and np.ndim(first) >= 1 and np.shape(first)[0] == n and np.size(first) > 1:
            correct = _correct(first, labels)
        else:
            loss = _scalar(first)
            if len(out) >= 2:
                second = out[1]
                if np.ndim(second) >= 1 and np.shape(second)[0] == n:
                    correct = _correct(second, labels)
                elif np.ndim(second) == 0:
                    acc = _scalar(second)
                    correct = None if acc is None else acc * n
    else:
        a = np.asarray(out)
        if allow_logits_only and a.ndim >= 1 and a.shape[0] == n and (a.size > 1 or n == 1):
            correct = _correct(a, labels)
        else:
            loss = _scalar(a)
    if loss is None and not allow_logits_only:
        raise Error(
            "fit: could not find a scalar loss in what the step returned "
            f"({_describe(out)}); return the loss, (loss, logits) or a dict with 'loss'"
        )
    return _BatchResult(loss, correct, n)


def _describe(out: Any) -> str:
    if isinstance(out, Mapping):
        return "dict with " + ", ".join(f"{k}: {np.shape(v)}" for k, v in out.items())
    if isinstance(out, (list, tuple)):
        return f"{type(out).__name__} of shapes " + ", ".join(str(np.shape(v)) for v in out)
    return f"{type(out).__name__} of shape {np.shape(out)}"


# ---- history ----


class Best(NamedTuple):
    epoch: int
    value: float


class History:
    """Per-epoch metrics of a ``fit``: lists indexed by epoch (``epoch`` holds 1, 2, ...).

    ``train_loss`` and ``train_acc`` are means over the epoch's batches weighted by batch size;
    ``val_loss``/``val_acc`` come from ``evaluate`` on the validation data; ``time`` is the epoch's
    wall time in seconds (training and validation) and ``throughput`` its training samples per
    second. A metric that was not available is None. ``best_epoch`` is the best epoch of the
    monitored metric (when ``fit`` monitored one), ``stopped_epoch`` the epoch where training
    stopped early (None when it ran all epochs) and ``stop_reason`` why.
    """

    _lists = ("epoch", *_METRICS, "time", "throughput")

    def __init__(self) -> None:
        self.epoch: list[int] = []
        self.train_loss: list[float | None] = []
        self.train_acc: list[float | None] = []
        self.val_loss: list[float | None] = []
        self.val_acc: list[float | None] = []
        self.time: list[float] = []
        self.throughput: list[float] = []
        self.monitor: str | None = None
        self.best_epoch: int | None = None
        self.stopped_epoch: int | None = None
        self.stop_reason: str | None = None

    def append(self, record: Mapping[str, Any]) -> None:
        """Adds one epoch's record (missing metrics become None)."""
        for name in self._lists:
            getattr(self, name).append(record.get(name))

    def __len__(self) -> int:
        return len(self.epoch)

    def __getitem__(self, metric: str) -> list:
        metric = _ALIASES.get(metric, metric)
        if metric not in self._lists:
            raise KeyError(f"History has no metric '{metric}' (metrics: {', '.join(self._lists)})")
        return getattr(self, metric)

    def record(self, epoch: int) -> dict[str, Any]:
        """All metrics of ``epoch`` (1-based, as in ``self.epoch``) as a dict."""
        i = self.epoch.index(epoch)
        return {name: getattr(self, name)[i] for name in self._lists}

    def best(self, metric: str = "val_acc", mode: str | None = None) -> Best:
        """``(epoch, value)`` of the best epoch for ``metric``: the highest for accuracies, the lowest
        for losses (``mode`` "max"/"min" overrides). Epochs where it is None or NaN are skipped."""
        metric = _ALIASES.get(metric, metric)
        values = self[metric]
        mode = _mode(metric, mode)
        best: Best | None = None
        for e, v in zip(self.epoch, values):
            if v is None or not math.isfinite(v):
                continue
            if best is None or (v > best.value if mode == "max" else v < best.value):
                best = Best(e, float(v))
        if best is None:
            raise Error(f"History.best: no epoch has a finite value of '{metric}'")
        return best

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (NaN and inf become None)."""
        d: dict[str, Any] = {
            name: [None if isinstance(v, float) and not math.isfinite(v) else v for v in getattr(self, name)]
            for name in self._lists
        }
        d.update(
            monitor=self.monitor,
            best_epoch=self.best_epoch,
            stopped_epoch=self.stopped_epoch,
            stop_reason=self.stop_reason,
        )
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> History:
        """The History that ``to_dict`` gave ``d``."""
        h = cls()
        for name in cls._lists:
            setattr(h, name, list(d.get(name, [])))
        for name in ("monitor", "best_epoch", "stopped_epoch", "stop_reason"):
            setattr(h, name, d.get(name))
        return h

    def __repr__(self) -> str:
        last = ""
        if self.epoch:
            rec = self.record(self.epoch[-1])
            last = ", last: " + ", ".join(f"{k} {_fmt(rec[k])}" for k in _METRICS if rec[k] is not None)
        return f"History({len(self)} epochs{last})"


def _mode(metric: str, mode: str | None) -> str:
    if mode is None:
        return "min" if "loss" in metric else "max"
    if mode not in ("min", "max"):
        raise Error(f"mode must be 'min' or 'max', got {mode!r}")
    return mode


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4g}"


# ---- checkpoints ----


def _state(model: Any) -> dict[str, np.ndarray]:
    sd = model.state_dict()
    if not isinstance(sd, Mapping):
        raise Error(f"fit: model.state_dict() must return a dict of arrays, got {type(sd).__name__}")
    return {str(k): np.array(v, copy=True) for k, v in sd.items()}


def _save_checkpoint(path: str | os.PathLike, state: Mapping[str, np.ndarray]) -> None:
    path = os.fspath(path)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:  # a file object: np.savez keeps the name as given
        np.savez(f, **state)
    os.replace(tmp, path)  # never a half-written checkpoint


def load_checkpoint(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The state dict that ``fit`` saved to ``path`` (an ``np.savez`` archive)."""
    with np.load(os.fspath(path)) as z:
        return {k: z[k] for k in z.files}


# ---- fit ----


def _open_bar(total: int | None, desc: str, progress: bool | None):
    if progress is not True:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="batch", leave=True, dynamic_ncols=True, file=sys.stderr)


def _evaluate(evaluate: Callable[..., Any], val: Any, val_batch_size: int | None) -> tuple:
    if _is_pair(val):
        X, y = val
        n = len(X)
        size = n if not val_batch_size else int(val_batch_size)
        batches: Iterable = ((X[i : i + size], y[i : i + size]) for i in range(0, n, size))
    else:
        batches = val
    total = loss_sum = correct = 0.0
    n_loss = n_acc = 0
    for batch in batches:
        batch = _as_batch(batch)
        r = _read_result(evaluate(*batch), batch, allow_logits_only=True)
        total += r.n
        if r.loss is not None:
            loss_sum += r.loss * r.n
            n_loss += r.n
        if r.correct is not None:
            correct += r.correct
            n_acc += r.n
    if total == 0:
        raise Error("fit: the validation data gave no batches")
    return (loss_sum / n_loss if n_loss else None, correct / n_acc if n_acc else None)


def _is_pair(val: Any) -> bool:
    return (
        isinstance(val, (tuple, list))
        and len(val) == 2
        and all(hasattr(a, "shape") and len(getattr(a, "shape", ())) >= 1 for a in val)
    )


def fit(
    step: Callable[..., Any],
    loader: Iterable[Any],
    epochs: int,
    val: Any = None,
    callbacks: Sequence[Any] = (),
    evaluate: Callable[..., Any] | None = None,
    progress: bool | None = True,
    model: Any = None,
    checkpoint: str | os.PathLike | None = None,
    early_stopping: int | None = None,
    monitor: str = "val_acc",
    mode: str | None = None,
    min_delta: float = 0.0,
    restore_best: bool = False,
    val_batch_size: int | None = 1000,
) -> History:
    """Trains for ``epochs`` passes over ``loader`` and returns a :class:`History`.

    Args:
        step: called as ``step(*batch)`` for each batch; it does the update (usually a
            ``kn.function`` with ``updates=``) and returns the loss, ``(loss, logits, ...)`` or a dict
            with ``"loss"`` and optionally ``"acc"``/``"correct"``/``"logits"`` (see the module doc;
            accuracy from logits uses the batch's last array as integer labels).
        loader: an iterable of batches (tuples of arrays), iterated afresh every epoch; its
            ``len()`` sizes the progress bar when it has one.
        epochs: the number of epochs.
        val: validation data: an ``(X, y)`` pair of arrays (cut into ``val_batch_size`` chunks;
            None: all at once) or an iterable of batches. Needs ``evaluate``.
        callbacks: objects with optional ``on_batch_end(step, logs)`` (``step``: the global step,
            from 1; logs: epoch, step in the epoch, loss, acc, batch_size) and
            ``on_epoch_end(epoch, logs) -> bool | None`` (logs: the epoch's record; True stops).
        evaluate: called as ``evaluate(*batch)`` on validation batches, without updates (e.g. a
            ``kn.function(..., training=False)``); returns logits, ``(loss, logits)`` or a dict.
        progress: True: a tqdm bar per epoch showing loss, accuracy and samples/s (one line per
            epoch when tqdm is not installed); False: one printed line per epoch; None: silent.
        model: anything with ``state_dict() -> dict[str, np.ndarray]`` and ``load_state_dict(d)``;
            needed for ``checkpoint`` and ``restore_best``.
        checkpoint: a path; the model's state is saved there (``np.savez``) whenever the
            monitored metric reaches a new best.
        early_stopping: a patience: stop after this many epochs without a new best of ``monitor``.
        monitor: the metric for best model and early stopping: "val_acc", "val_loss",
            "train_loss" or "train_acc".
        mode: "max" or "min"; by default "min" for losses and "max" for accuracies.
        min_delta: the least change that counts as a new best.
        restore_best: load the best epoch's state back into ``model`` at the end (from
            ``checkpoint`` when given, else from a copy kept in memory).
        val_batch_size: see ``val``.

    Raises:
        kn.Error: when the loss becomes NaN or inf (naming the epoch, the step and the last
            finite loss), or when the arguments do not fit together.
    """
    if int(epochs) != epochs or epochs < 0:
        raise Error(f"fit: epochs must be a non-negative integer, got {epochs!r}")
    if val is not None and evaluate is None:
        raise Error("fit: val was given without evaluate; pass evaluate=kn.function(..., training=False)")
    if progress not in (True, False, None):
        raise Error(f"fit: progress must be True, False or None, got {progress!r}")
    if (checkpoint is not None or restore_best) and model is None:
        raise Error(
            "fit: checkpoint and restore_best need model= (an object with state_dict() and load_state_dict())"
        )
    if model is not None and not (hasattr(model, "state_dict") and hasattr(model, "load_state_dict")):
        raise Error(f"fit: model must have state_dict() and load_state_dict(), got {type(model).__name__}")
    if early_stopping is not None and (int(early_stopping) != early_stopping or early_stopping < 1):
        raise Error(f"fit: early_stopping is a patience in epochs (>= 1), got {early_stopping!r}")
    tracking = early_stopping is not None or checkpoint is not None or restore_best
    monitor = _ALIASES.get(monitor, monitor)
    if monitor not in _METRICS:
        raise Error(f"fit: unknown monitor '{monitor}' (choose from {', '.join(_METRICS)})")
    mode = _mode(monitor, mode)
    if tracking and monitor.startswith("val_") and val is None:
        raise Error(
            f"fit: early stopping / checkpoints monitor '{monitor}' but no val data was given "
            "(pass val=... and evaluate=..., or monitor='train_loss')"
        )
    callbacks = list(callbacks)
    total = len(loader) if hasattr(loader, "__len__") else None  # type: ignore[arg-type]

    history = History()
    history.monitor = monitor if tracking else None
    best_value: float | None = None
    best_state: dict[str, np.ndarray] | None = None
    waited = 0
    global_step = 0
    last_finite: tuple[float, int, int] | None = None  # loss, epoch, step

    for epoch in range(1, int(epochs) + 1):
        t0 = time.perf_counter()
        bar = _open_bar(total, f"epoch {epoch}/{epochs}", progress)
        loss_sum = correct_sum = 0.0
        seen = n_acc = 0
        last_post = t0
        try:
            for i, batch in enumerate(loader, start=1):
                batch = _as_batch(batch)
                r = _read_result(step(*batch), batch)
                global_step += 1
                assert r.loss is not None
                if not math.isfinite(r.loss):
                    if last_finite is None:
                        before = "no loss before it was finite"
                    else:
                        before = f"the last finite loss was {last_finite[0]:.6g} (epoch {last_finite[1]}, step {last_finite[2]})"
                    raise Error(
                        f"fit: the loss became {r.loss} at epoch {epoch}, step {i} (global step {global_step}); "
                        f"{before}. Try a lower learning rate, check the data for NaN/inf, or clip gradients."
                    )
                last_finite = (r.loss, epoch, i)
                loss_sum += r.loss * r.n
                seen += r.n
                acc = None
                if r.correct is not None:
                    correct_sum += r.correct
                    n_acc += r.n
                    acc = r.correct / r.n if r.n else None
                for cb in callbacks:
                    f = getattr(cb, "on_batch_end", None)
                    if f is not None:
                        f(
                            global_step,
                            {"epoch": epoch, "step": i, "loss": r.loss, "acc": acc, "batch_size": r.n},
                        )
                if bar is not None:
                    bar.update(1)
                    now = time.perf_counter()
                    if now - last_post > 0.2:
                        last_post = now
                        bar.set_postfix_str(
                            _postfix(
                                loss_sum / seen, correct_sum / n_acc if n_acc else None, seen / (now - t0)
                            ),
                            refresh=False,
                        )
            train_time = time.perf_counter() - t0
            record: dict[str, Any] = {
                "epoch": epoch,
                "train_loss": loss_sum / seen if seen else None,
                "train_acc": correct_sum / n_acc if n_acc else None,
                "val_loss": None,
                "val_acc": None,
                "throughput": seen / train_time if train_time > 0 else float("inf"),
            }
            if val is not None:
                assert evaluate is not None
                record["val_loss"], record["val_acc"] = _evaluate(evaluate, val, val_batch_size)
            record["time"] = time.perf_counter() - t0
            if bar is not None:
                bar.set_postfix_str(_postfix_record(record), refresh=True)
        finally:
            if bar is not None:
                bar.close()
        history.append(record)
        if progress is False or (progress is True and bar is None):
            print(_epoch_line(record, epochs), flush=True)

        stop = False
        if tracking:
            value = record[monitor]
            if value is None:
                have = ", ".join(k for k in _METRICS if record[k] is not None) or "none"
                raise Error(
                    f"fit: the monitored metric '{monitor}' is not available at epoch {epoch} "
                    f"(available: {have}); choose another monitor="
                )
            better = best_value is None or (
                value > best_value + min_delta if mode == "max" else value < best_value - min_delta
            )
            if better and math.isfinite(value):
                best_value, waited = value, 0
                history.best_epoch = epoch
                if checkpoint is not None:
                    _save_checkpoint(checkpoint, _state(model))
                elif restore_best:
                    best_state = _state(model)
            else:
                waited += 1
                if early_stopping is not None and waited >= early_stopping:
                    stop = True
                    history.stop_reason = (
                        f"early stopping: {monitor} did not improve for {waited} epochs "
                        f"(best {best_value:.6g} at epoch {history.best_epoch})"
                    )
        for cb in callbacks:
            f = getattr(cb, "on_epoch_end", None)
            if f is not None and f(epoch, dict(record)) is True and not stop:
                stop = True
                history.stop_reason = f"stopped by callback {type(cb).__name__}"
        if stop:
            if epoch < epochs:
                history.stopped_epoch = epoch
            if progress is not None:
                print(f"{history.stop_reason} (epoch {epoch})", flush=True)
            break

    if restore_best and history.best_epoch is not None:
        state = load_checkpoint(checkpoint) if checkpoint is not None else best_state
        model.load_state_dict(state)
    return history


def _postfix(loss: float, acc: float | None, rate: float) -> str:
    parts = [f"loss {loss:.4g}"]
    if acc is not None:
        parts.append(f"acc {acc:.3f}")
    parts.append(f"{rate:,.0f} samples/s")
    return " ".join(parts)


def _postfix_record(r: Mapping[str, Any]) -> str:
    parts = [f"{k.replace('train_', '')} {_fmt(r[k])}" for k in _METRICS if r.get(k) is not None]
    parts.append(f"{r['throughput']:,.0f} samples/s")
    return " ".join(parts)


def _epoch_line(r: Mapping[str, Any], epochs: int) -> str:
    parts = [f"epoch {r['epoch']}/{epochs}"]
    parts += [f"{k.replace('train_', '')} {_fmt(r[k])}" for k in _METRICS if r.get(k) is not None]
    parts.append(f"{r['time']:.2f}s")
    parts.append(f"{r['throughput']:,.0f} samples/s")
    return "  ".join(parts)


# ---- plots ----


def plot_history(history: History | Mapping[str, Any], path: str | os.PathLike) -> str:
    """Writes a PNG at ``path`` with two panels: the loss and the accuracy per epoch, train and
    validation (a curve is left out where the history has none). Uses matplotlib's Agg canvas,
    so it needs no display and leaves pyplot's state alone. Returns the path."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise Error("plot_history needs matplotlib (pip install matplotlib)") from e
    h = history if isinstance(history, History) else History.from_dict(history)
    fig = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(fig)
    panels = (("loss", "train_loss", "val_loss"), ("accuracy", "train_acc", "val_acc"))
    for k, (title, tr, va) in enumerate(panels):
        ax = fig.add_subplot(1, 2, k + 1)
        for name, label, style in ((tr, "train", "-o"), (va, "val", "-s")):
            pts = [(e, v) for e, v in zip(h.epoch, h[name]) if v is not None and math.isfinite(v)]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, style, label=label, markersize=3)
        if h.best_epoch is not None and h.monitor in (tr, va):
            ax.axvline(h.best_epoch, color="gray", linestyle="--", linewidth=1, label=f"best ({h.monitor})")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    path = os.fspath(path)
    fig.savefig(path, format="png")
    return path


# ---- hyperparameter search ----

_RANGE_KINDS = ("log", "uniform", "int")


def _parse_space(space: Mapping[str, Any]) -> dict[str, tuple]:
    out: dict[str, tuple] = {}
    for name, spec in space.items():
        if (
            isinstance(spec, tuple)
            and len(spec) == 3
            and isinstance(spec[0], str)
            and spec[0] in _RANGE_KINDS
        ):
            kind, lo, hi = spec
            if not lo <= hi:
                raise Error(f"random_search: '{name}': the range ({lo}, {hi}) has lo > hi")
            if kind == "log" and lo <= 0:
                raise Error(f"random_search: '{name}': a log range needs lo > 0, got {lo}")
            if kind == "int" and (int(lo) != lo or int(hi) != hi):
                raise Error(f"random_search: '{name}': an int range needs integer bounds, got ({lo}, {hi})")
            out[name] = (kind, float(lo), float(hi))
        elif isinstance(spec, tuple) and spec and isinstance(spec[0], str) and spec[0] in _RANGE_KINDS:
            raise Error(f"random_search: '{name}': a range is ({spec[0]!r}, lo, hi), got {spec!r}")
        elif isinstance(spec, (list, tuple)):
            if not spec:
                raise Error(f"random_search: '{name}': an empty list of choices")
            out[name] = ("choice", list(spec))
        else:
            out[name] = ("fixed", spec)
    return out


def _sample(rng: np.random.Generator, spec: tuple) -> Any:
    kind = spec[0]
    if kind == "log":
        return float(math.exp(rng.uniform(math.log(spec[1]), math.log(spec[2]))))
    if kind == "uniform":
        return float(rng.uniform(spec[1], spec[2]))
    if kind == "int":
        return int(rng.integers(int(spec[1]), int(spec[2]) + 1))
    if kind == "choice":
        return spec[1][int(rng.integers(len(spec[1])))]
    return spec[1]


def _narrow(spec: tuple, original: tuple, values: Sequence[float]) -> tuple:
    kind = spec[0]
    if kind not in _RANGE_KINDS:
        return spec
    to = math.log if kind == "log" else float
    back = math.exp if kind == "log" else float
    lo, hi = to(spec[1]), to(spec[2])
    olo, ohi = to(original[1]), to(original[2])
    vs = [to(v) for v in values]
    vmin, vmax = min(vs), max(vs)
    pad = max(0.25 * (vmax - vmin), 0.05 * (hi - lo))
    nlo, nhi = max(olo, vmin - pad), min(ohi, vmax + pad)
    if kind == "int":
        nlo, nhi = math.floor(nlo), math.ceil(nhi)
    else:
        nlo, nhi = back(nlo), back(nhi)
        nlo, nhi = max(original[1], nlo), min(original[2], nhi)  # exp(log(x)) may round out
    return (kind, float(nlo), float(nhi))


def random_search(
    train_fn: Callable[..., float],
    space: Mapping[str, Any],
    trials: int,
    stages: int = 1,
    keep: int = 3,
    seed: int | None = None,
    verbose: bool = False,
) -> list[dict[str, Any]]:
    """Random search with coarse-to-fine stages; returns every trial, best score first.

    ``space`` maps each hyperparameter to ``("log", lo, hi)`` (log-uniform: use it for learning
    rates and regularization strengths), ``("uniform", lo, hi)``, ``("int", lo, hi)`` (both ends
    included), a list of choices, or a single value (fixed). Each of the ``stages`` runs ``trials``
    calls of ``train_fn(**params)``, which returns a score, higher better (return ``-loss`` to
    minimise). After a stage, every numeric range is narrowed to the span of the best ``keep``
    results so far, padded by a quarter of that span (at least 5% of the stage's range; in log
    space for "log"), and never beyond the original range. Choices are left as they are.

    A trial whose ``train_fn`` raises ``kn.Error`` (e.g. ``fit`` stopping on a NaN loss from a
    too-high learning rate) scores -inf and keeps the message under ``"error"``; if every trial
    fails, the first error is raised. Each result is a dict: ``params``, ``score``, ``stage``
    (from 1), ``trial`` (from 1 within its stage), ``error`` (None or the message).
    """
    if trials < 1 or stages < 1 or keep < 1:
        raise Error(f"random_search: trials, stages and keep must be >= 1, got {trials}, {stages}, {keep}")
    original = _parse_space(space)
    current = dict(original)
    rng = np.random.default_rng(seed)
    results: list[dict[str, Any]] = []
    for stage in range(1, stages + 1):
        for t in range(1, trials + 1):
            params = {name: _sample(rng, spec) for name, spec in current.items()}
            error = None
            try:
                score = float(train_fn(**params))
            except Error as e:
                score, error = -math.inf, str(e)
            if math.isnan(score):
                score = -math.inf
            results.append({"params": params, "score": score, "stage": stage, "trial": t, "error": error})
            if verbose:
                shown = ", ".join(f"{k}={_fmt(v) if isinstance(v, float) else v}" for k, v in params.items())
                print(f"stage {stage} trial {t}: {shown} -> {score:.4g}" + (f" ({error})" if error else ""))
        ok = [r for r in results if r["error"] is None and r["score"] > -math.inf]
        if stage < stages and ok:
            top = sorted(ok, key=lambda r: -r["score"])[:keep]
            current = {
                name: _narrow(spec, original[name], [r["params"][name] for r in top])
                for name, spec in current.items()
            }
    if all(r["error"] is not None for r in results):
        raise Error(f"random_search: every trial failed; the first: {results[0]['error']}")
    return sorted(results, key=lambda r: -r["score"])  # stable: ties keep their order


# ---- CS231n sanity checks ----


def check_initial_loss(loss_value: Any, num_classes: int, tol: float = 0.1, strict: bool = False) -> bool:
    """Whether a freshly initialised softmax classifier's loss is about log(num_classes), as it
    must be when small weights give every class the same probability: within ``tol`` relative to
    log(C). With ``strict``, a failure raises ``kn.Error`` explaining what to look at."""
    loss = _scalar(loss_value)
    if loss is None:
        raise Error(f"check_initial_loss: expected a scalar loss, got shape {np.shape(loss_value)}")
    if num_classes < 2:
        raise Error(f"check_initial_loss: num_classes must be >= 2, got {num_classes}")
    expected = math.log(num_classes)
    ok = math.isfinite(loss) and abs(loss - expected) <= tol * expected
    if not ok and strict:
        raise Error(
            f"check_initial_loss: the initial loss is {loss:.4g} but a softmax over {num_classes} classes with "
            f"small random weights should give about log({num_classes}) = {expected:.4g} (tolerance {tol:.0%}). "
            "Check that the weights start small (e.g. 1e-3 * randn), that regularization is off, and that the "
            "loss is the mean (not the sum) of -log p[correct class]."
        )
    return ok


def check_regularization_raises_loss(
    loss_fn_of_reg: Callable[[float], Any], regs: Sequence[float] = (0.0, 1.0, 1e3), strict: bool = False
) -> bool:
    """Whether the loss grows with the regularization strength: ``loss_fn_of_reg(reg)`` is
    evaluated at each of ``regs`` (increasing) with the same weights and data; True when the
    losses never decrease and the last is above the first."""
    regs = list(regs)
    if len(regs) < 2 or any(b <= a for a, b in zip(regs, regs[1:])):
        raise Error(f"check_regularization_raises_loss: regs must be increasing (two or more), got {regs}")
    losses = []
    for reg in regs:
        v = _scalar(loss_fn_of_reg(reg))
        if v is None:
            raise Error(f"check_regularization_raises_loss: loss_fn_of_reg({reg}) did not return a scalar")
        losses.append(v)
    ok = (
        all(math.isfinite(v) for v in losses)
        and all(b >= a for a, b in zip(losses, losses[1:]))
        and losses[-1] > losses[0]
    )
    if not ok and strict:
        shown = ", ".join(f"reg {r:g}: {v:.6g}" for r, v in zip(regs, losses))
        raise Error(
            f"check_regularization_raises_loss: the loss does not rise with regularization ({shown}). "
            "Check that the regularization term is added to the loss, scaled by reg, and uses the weights."
        )
    return ok


def check_overfit_small(
    step_fn: Callable[..., Any],
    X: Any,
    y: Any,
    steps: int = 200,
    threshold: float = 0.1,
    num_examples: int = 20,
    strict: bool = False,
) -> bool:
    """Whether a model can drive its training loss on a tiny set to near zero: calls
    ``step_fn(X[:num_examples], y[:num_examples])`` (a training step, returning the loss or
    ``(loss, ...)`` as in ``fit``) up to ``steps`` times and returns True once the loss is below
    ``threshold``. A model that cannot overfit 20 examples has a bug (in the gradient, the
    update or the data) or too low a learning rate."""
    Xs, ys = X[:num_examples], y[:num_examples]
    batch = (Xs, ys)
    loss = math.inf
    first = None
    for i in range(1, steps + 1):
        loss = _read_result(step_fn(Xs, ys), batch).loss
        assert loss is not None
        if first is None:
            first = loss
        if not math.isfinite(loss):
            if strict:
                raise Error(
                    f"check_overfit_small: the loss became {loss} at step {i}; lower the learning rate"
                )
            return False
        if loss < threshold:
            return True
    if strict:
        raise Error(
            f"check_overfit_small: after {steps} steps on {len(Xs)} examples the loss is {loss:.4g} "
            f"(started at {first:.4g}), not below {threshold}. A model should overfit a handful of examples: "
            "check the gradient (kn.gradcheck), that the updates are applied, and raise the learning rate "
            "or the number of steps; turn regularization off."
        )
    return False
