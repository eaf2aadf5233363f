"""kn.train: fit (history, progress, early stopping, checkpoints, NaN stops, callbacks),
plot_history, random_search and the CS231n sanity checks, on real kiln models where possible."""

import json
import math
import sys

import numpy as np
import pytest

import kiln as kn
from kiln import train

# ---- a softmax regression written with kiln ops, and its data ----


class Softmax:
    """x @ W + b with a mean softmax cross-entropy; an SGD step and an inference function."""

    def __init__(self, dim, classes, lr=0.5, scale=0.01, seed=0, reg=None):
        rng = np.random.default_rng(seed)
        self.W = kn.Parameter(rng.standard_normal((dim, classes)) * scale, name="W")
        self.b = kn.Parameter(np.zeros(classes), name="b")
        self.x = kn.input("x", (None, dim))
        self.y = kn.input("y", (None,), dtype="int64")
        self.logits = self.x @ self.W + self.b
        picked = kn.take_along_axis(self.logits, self.y[:, None], 1)[:, 0]
        self.loss = kn.mean(kn.logsumexp(self.logits, axis=1) - picked)
        gW, gb = kn.grad(self.loss, [self.W, self.b])
        updates = [(self.W, self.W - lr * gW), (self.b, self.b - lr * gb)]
        self.step = kn.function([self.x, self.y], [self.loss, self.logits], updates=updates)
        self.evaluate = kn.function([self.x, self.y], [self.loss, self.logits], training=False)
        self.predict = kn.function([self.x], self.logits, training=False)

    def state_dict(self):
        return {"W": self.W.numpy(), "b": self.b.numpy()}

    def load_state_dict(self, state):
        self.W.assign(state["W"])
        self.b.assign(state["b"])


class Loader:
    """Shuffled minibatches, re-iterable, with len()."""

    def __init__(self, X, y, batch_size, seed=0, poison=None):
        self.X, self.y, self.bs = X, y, batch_size
        self.rng = np.random.default_rng(seed)
        self.epoch = 0
        self.poison = poison  # (epoch, step): that batch gets a NaN

    def __len__(self):
        return -(-len(self.X) // self.bs)

    def __iter__(self):
        self.epoch += 1
        order = self.rng.permutation(len(self.X))
        for i, s in enumerate(range(0, len(self.X), self.bs), start=1):
            idx = order[s : s + self.bs]
            xb = self.X[idx].copy()
            if self.poison == (self.epoch, i):
                xb[0, 0] = np.nan
            yield xb, self.y[idx]


def blobs(n=300, dim=5, classes=3, seed=0):
    centers = np.random.default_rng(123).standard_normal((classes, dim)) * 4  # the same for every split
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    X = (centers[y] + rng.standard_normal((n, dim))).astype(np.float32)
    return X, y.astype(np.int64)


class ScriptedEval:
    """An evaluate that reports a scripted val_acc per epoch (called once per epoch)."""

    def __init__(self, accs, losses=None):
        self.accs, self.losses, self.calls = list(accs), losses, 0

    def __call__(self, X, y):
        i = self.calls
        self.calls += 1
        loss = self.losses[i] if self.losses is not None else 1.0 - self.accs[i]
        return {"loss": np.float32(loss), "acc": np.float32(self.accs[i])}


def constant_step(*batch):
    return np.float32(0.5)


# ---- fit ----


def test_fit_trains_a_softmax_regression():
    X, y = blobs()
    Xv, yv = blobs(100, seed=1)
    m = Softmax(5, 3)
    loader = Loader(X, y, 32)
    h = train.fit(m.step, loader, epochs=6, val=(Xv, yv), evaluate=m.evaluate, progress=None)
    assert len(h) == 6 and h.epoch == [1, 2, 3, 4, 5, 6]
    for name in ("train_loss", "train_acc", "val_loss", "val_acc", "time", "throughput"):
        assert len(h[name]) == 6 and all(v is not None for v in h[name]), name
    assert h.train_loss[-1] < 0.5 * h.train_loss[0]
    assert h.train_acc[-1] > 0.95 and h.val_acc[-1] > 0.95
    assert h.val_loss[-1] < 0.3
    assert all(t > 0 for t in h.time) and all(r > 0 for r in h.throughput)
    # val metrics agree with the model's own predictions
    assert h.val_acc[-1] == pytest.approx((m.predict(Xv).argmax(1) == yv).mean())
    assert h.stopped_epoch is None and h.best_epoch is None


def test_val_as_batches_and_logits_only_evaluate():
    X, y = blobs()
    m = Softmax(5, 3)
    val_batches = [(X[i : i + 64], y[i : i + 64]) for i in range(0, 300, 64)]  # uneven last batch
    logits_only = kn.function([m.x], m.logits, training=False)

    def evaluate(xb, yb):
        return logits_only(xb)

    h = train.fit(m.step, Loader(X, y, 50), 3, val=val_batches, evaluate=evaluate, progress=None)
    assert h.val_loss == [None, None, None]
    assert h.val_acc[-1] == pytest.approx((m.predict(X).argmax(1) == y).mean())
    # the same data as an (X, y) pair in chunks of 70 gives the same numbers
    h2 = train.fit(
        lambda *b: 0.0, [(X, y)], 1, val=(X, y), evaluate=m.evaluate, progress=None, val_batch_size=70
    )
    loss, logits = m.evaluate(X, y)
    assert h2.val_acc[0] == pytest.approx((logits.argmax(1) == y).mean())
    assert h2.val_loss[0] == pytest.approx(float(loss), rel=1e-5)


@pytest.mark.parametrize(
    "out, loss, acc",
    [
        (np.float32(0.25), 0.25, None),
        (0.25, 0.25, None),
        ({"loss": np.float32(0.25), "acc": np.float32(0.75)}, 0.25, 0.75),
        ({"loss": 0.25, "correct": 3}, 0.25, 0.75),
        ({"total": 0.25, "logits": np.eye(4)[[0, 1, 2, 0]]}, 0.25, 0.75),
        ([np.float32(0.25), np.eye(4)[[0, 1, 2, 0]]], 0.25, 0.75),
        ((0.25, np.array([0, 1, 2, 0])), 0.25, 0.75),  # predicted labels
        ((0.25, np.array([-1.0, 1.0, 1.0, -1.0])), 0.25, 0.5),  # one binary logit
        ((0.25, 0.75), 0.25, 0.75),  # (loss, accuracy)
        ([0.25, np.zeros((7, 3))], 0.25, None),  # a second output that is not per example
    ],
)
def test_step_output_conventions(out, loss, acc):
    batch = (np.zeros((4, 2), np.float32), np.array([0, 1, 2, 3]))
    h = train.fit(lambda *b: out, [batch, batch], 1, progress=None)
    assert h.train_loss[0] == pytest.approx(loss)
    assert h.train_acc[0] == (None if acc is None else pytest.approx(acc))


def test_step_without_a_loss_is_an_error():
    batch = (np.zeros((4, 2), np.float32), np.array([0, 1, 2, 3]))
    with pytest.raises(kn.Error, match="scalar loss"):
        train.fit(lambda *b: np.zeros((4, 3)), [batch], 1, progress=None)


def test_progress_bar_and_plain_lines(capsys, monkeypatch):
    X, y = blobs(64)
    batches = [(X[:32], y[:32]), (X[32:], y[32:])]
    step = lambda xb, yb: (np.float32(0.5), np.eye(3)[yb])  # noqa: E731
    train.fit(step, batches, 2, progress=True)
    err = capsys.readouterr().err
    assert "epoch 2/2" in err and "samples/s" in err and "acc 1" in err and "loss 0.5" in err
    train.fit(step, batches, 2, progress=False)
    out = capsys.readouterr().out
    assert out.count("samples/s") == 2 and "epoch 1/2" in out and "epoch 2/2" in out
    monkeypatch.setitem(sys.modules, "tqdm", None)  # tqdm not installed: plain lines
    train.fit(step, batches, 1, progress=True)
    captured = capsys.readouterr()
    assert "epoch 1/1" in captured.out and captured.err == ""
    train.fit(step, batches, 1, progress=None)
    assert capsys.readouterr() == ("", "")


def test_early_stopping_stops_at_the_right_epoch():
    batch = (np.zeros((4, 2), np.float32), np.array([0, 1, 2, 0]))
    ev = ScriptedEval([0.5, 0.6, 0.7, 0.65, 0.7, 0.69, 0.9, 0.95])
    h = train.fit(constant_step, [batch], 8, val=batch, evaluate=ev, early_stopping=3, progress=None)
    # best 0.7 at epoch 3; 0.65, 0.7 (not better), 0.69: three epochs without improvement
    assert len(h) == 6 and ev.calls == 6
    assert h.best_epoch == 3 and h.stopped_epoch == 6
    assert "did not improve for 3 epochs" in h.stop_reason
    assert h.best("val_acc") == (3, pytest.approx(0.7))

    # min mode on val_loss, with min_delta
    ev = ScriptedEval([0] * 10, losses=[1.0, 0.8, 0.79, 0.5, 0.49, 0.48, 0.47, 0.1])
    h = train.fit(
        constant_step, [batch], 8, val=batch, evaluate=ev, early_stopping=2, monitor="val_loss",
        min_delta=0.05, progress=None,
    )  # fmt: skip
    assert h.best_epoch == 4 and len(h) == 6

    # max mode forced on a loss-named metric, and patience never reached
    ev = ScriptedEval([0] * 4, losses=[1.0, 2.0, 1.5, 3.0])
    h = train.fit(
        constant_step, [batch], 4, val=batch, evaluate=ev, early_stopping=2, monitor="val_loss",
        mode="max", progress=None,
    )  # fmt: skip
    assert len(h) == 4 and h.best_epoch == 4 and h.stopped_epoch is None


def test_checkpoint_of_the_best_epoch_is_restored(tmp_path):
    X, y = blobs()
    m = Softmax(5, 3, lr=0.2)
    snapshots = {}

    class Snap:
        def on_epoch_end(self, epoch, logs):
            snapshots[epoch] = m.state_dict()

    ckpt = tmp_path / "best.npz"
    ev = ScriptedEval([0.5, 0.9, 0.6, 0.7, 0.65, 0.99])
    h = train.fit(
        m.step, Loader(X, y, 32), 6, val=(X, y), evaluate=ev, model=m, checkpoint=ckpt,
        early_stopping=3, restore_best=True, callbacks=[Snap()], progress=None,
    )  # fmt: skip
    assert len(h) == 5 and h.best_epoch == 2 and h.stopped_epoch == 5
    assert not np.allclose(snapshots[2]["W"], snapshots[5]["W"])  # training went on after the best
    np.testing.assert_array_equal(m.W.numpy(), snapshots[2]["W"])
    np.testing.assert_array_equal(m.b.numpy(), snapshots[2]["b"])
    saved = train.load_checkpoint(ckpt)
    assert set(saved) == {"W", "b"}
    np.testing.assert_array_equal(saved["W"], snapshots[2]["W"])
    assert not (tmp_path / "best.npz.tmp").exists()


def test_restore_best_in_memory_and_without_restore():
    X, y = blobs()
    m = Softmax(5, 3, lr=0.2)
    snapshots = {}

    class Snap:
        def on_epoch_end(self, epoch, logs):
            snapshots[epoch] = m.state_dict()

    ev = ScriptedEval([0.3, 0.8, 0.4])
    train.fit(m.step, Loader(X, y, 32), 3, val=(X, y), evaluate=ev, model=m, restore_best=True,
              callbacks=[Snap()], progress=None)  # fmt: skip
    np.testing.assert_array_equal(m.W.numpy(), snapshots[2]["W"])
    # monitor on a training metric needs no val; without restore_best the model keeps its last state
    h = train.fit(m.step, Loader(X, y, 32), 2, model=m, checkpoint=None, early_stopping=5,
                  monitor="train_loss", callbacks=[Snap()], progress=None)  # fmt: skip
    assert h.best_epoch == 2 and h.monitor == "train_loss"
    np.testing.assert_array_equal(m.W.numpy(), snapshots[2]["W"])


def test_nan_loss_stops_with_epoch_step_and_last_loss():
    X, y = blobs()
    m = Softmax(5, 3)
    loader = Loader(X, y, 32, poison=(2, 3))  # the 3rd batch of epoch 2 holds a NaN
    seen = []

    class Last:
        def on_batch_end(self, step, logs):
            seen.append(logs["loss"])

    with pytest.raises(kn.Error) as e:
        train.fit(m.step, loader, 5, callbacks=[Last()], progress=True)
    msg = str(e.value)
    assert "nan" in msg and "epoch 2, step 3" in msg and f"global step {len(loader) + 3}" in msg
    assert f"{seen[-1]:.6g}" in msg and "(epoch 2, step 2)" in msg

    losses = iter([1.0, 0.5, np.inf])
    with pytest.raises(kn.Error, match=r"became inf at epoch 1, step 3.*0\.5 \(epoch 1, step 2\)"):
        train.fit(lambda *b: next(losses), [(X[:2], y[:2])] * 3, 1, progress=None)
    with pytest.raises(kn.Error, match="no loss before it was finite"):
        train.fit(lambda *b: float("nan"), [(X[:2], y[:2])], 1, progress=None)


def test_callbacks_can_stop_and_see_every_batch():
    X, y = blobs(96)
    m = Softmax(5, 3)
    loader = Loader(X, y, 32)

    class Counter:
        def __init__(self):
            self.steps, self.epochs = [], []

        def on_batch_end(self, step, logs):
            self.steps.append((step, logs["epoch"], logs["step"], logs["batch_size"]))
            assert logs["loss"] > 0 and 0 <= logs["acc"] <= 1

        def on_epoch_end(self, epoch, logs):
            self.epochs.append(epoch)
            return epoch == 3

    class OnlyEpoch:  # a callback with one of the two methods
        def on_epoch_end(self, epoch, logs):
            assert set(logs) >= {"train_loss", "train_acc", "time"}

    c = Counter()
    h = train.fit(m.step, loader, 10, callbacks=[c, OnlyEpoch()], progress=None)
    assert len(h) == 3 and c.epochs == [1, 2, 3] and h.stopped_epoch == 3
    assert [s[0] for s in c.steps] == list(range(1, 10))
    assert c.steps[3] == (4, 2, 1, 32)
    assert "Counter" in h.stop_reason


def test_argument_errors():
    batch = (np.zeros((4, 2), np.float32), np.array([0, 1, 2, 0]))
    with pytest.raises(kn.Error, match="without evaluate"):
        train.fit(constant_step, [batch], 1, val=batch)
    with pytest.raises(kn.Error, match="need model"):
        train.fit(constant_step, [batch], 1, checkpoint="x.npz")
    with pytest.raises(kn.Error, match="no val data"):
        train.fit(constant_step, [batch], 1, early_stopping=2)
    with pytest.raises(kn.Error, match="unknown monitor"):
        train.fit(constant_step, [batch], 1, monitor="f1")
    with pytest.raises(kn.Error, match="'val_acc' is not available"):
        train.fit(
            constant_step, [batch], 1, val=batch, evaluate=lambda *b: 0.3, early_stopping=1, progress=None
        )


# ---- history and plots ----


def test_history_best_and_serialization():
    h = train.History()
    for e, (tl, va) in enumerate([(1.0, 0.5), (0.5, 0.8), (0.4, float("nan")), (0.3, 0.7)], start=1):
        h.append(
            {"epoch": e, "train_loss": tl, "train_acc": None, "val_loss": None, "val_acc": va, "time": 0.1}
        )
    assert h.best("val_acc") == (2, 0.8)
    assert h.best("loss") == (4, 0.3)  # alias, min for losses
    assert h.best("train_loss", mode="max").epoch == 1
    with pytest.raises(kn.Error, match="no epoch"):
        h.best("train_acc")
    d = h.to_dict()
    text = json.dumps(d, allow_nan=False)  # NaN became None
    back = train.History.from_dict(json.loads(text))
    assert back.train_loss == h.train_loss and back.val_acc[2] is None and back.epoch == [1, 2, 3, 4]
    assert "4 epochs" in repr(h)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_plot_history_writes_a_png(tmp_path):
    X, y = blobs()
    m = Softmax(5, 3)
    h = train.fit(m.step, Loader(X, y, 32), 4, val=(X, y), evaluate=m.evaluate, progress=None)
    path = tmp_path / "curves.png"
    assert train.plot_history(h, path) == str(path)
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 5000
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1000, 400)
    # a history without validation nor accuracy, given as a dict
    h2 = train.fit(constant_step, [(X[:4], y[:4])], 2, progress=None)
    path2 = tmp_path / "train_only.png"
    train.plot_history(h2.to_dict(), path2)
    assert path2.read_bytes()[:8] == PNG_SIGNATURE


# ---- random search ----


def test_random_search_narrows_toward_the_optimum():
    calls = []

    def score(lr, reg, layers, act):
        calls.append((lr, reg, layers, act))
        assert 1e-6 <= lr <= 1.0 and 0.0 <= reg <= 1.0 and 1 <= layers <= 4 and act in ("relu", "tanh")
        assert isinstance(layers, int)
        return -((math.log10(lr) + 3.0) ** 2) - 10 * (reg - 0.3) ** 2 - 0.1 * (layers - 2) ** 2

    space = {
        "lr": ("log", 1e-6, 1.0),
        "reg": ("uniform", 0.0, 1.0),
        "layers": ("int", 1, 4),
        "act": ["relu", "tanh"],
    }
    res = train.random_search(score, space, trials=20, stages=3, keep=4, seed=0)
    assert len(res) == 60 and len(calls) == 60
    assert [r["score"] for r in res] == sorted((r["score"] for r in res), reverse=True)
    best_stage1 = max(r["score"] for r in res if r["stage"] == 1)
    assert res[0]["score"] > best_stage1 and res[0]["stage"] > 1
    assert abs(math.log10(res[0]["params"]["lr"]) + 3) < 0.3 and abs(res[0]["params"]["reg"] - 0.3) < 0.1
    # later stages sample a narrower range
    spread = {s: np.ptp([math.log10(r["params"]["lr"]) for r in res if r["stage"] == s]) for s in (1, 3)}
    assert spread[3] < 0.5 * spread[1]
    # stage 1 samples lr uniformly in log space: about half below 1e-3 (uniform sampling: 0.1%)
    below = np.mean([r["params"]["lr"] < 1e-3 for r in res if r["stage"] == 1])
    assert 0.25 < below < 0.75
    # the same seed gives the same trials
    again = train.random_search(score, space, trials=20, stages=3, keep=4, seed=0)
    assert [r["params"] for r in again] == [r["params"] for r in res]


def test_random_search_log_range_and_failures():
    lrs = train.random_search(lambda lr, bs: -lr, {"lr": ("log", 1e-4, 1e-1), "bs": 64}, trials=400, seed=1)
    values = np.array([r["params"]["lr"] for r in lrs])
    assert values.min() >= 1e-4 and values.max() <= 1e-1
    assert all(r["params"]["bs"] == 64 for r in lrs)
    counts = np.histogram(np.log10(values), bins=3, range=(-4, -1))[0]
    assert counts.min() > 100  # each decade gets about a third

    def diverges(lr):
        if lr > 0.1:
            raise kn.Error("fit: the loss became nan at epoch 1, step 3")
        return lr

    res = train.random_search(diverges, {"lr": ("log", 1e-3, 1.0)}, trials=30, seed=2)
    failed = [r for r in res if r["error"] is not None]
    assert failed and all(r["score"] == -math.inf for r in failed) and res[-1]["error"] is not None
    assert res[0]["error"] is None
    with pytest.raises(kn.Error, match="every trial failed"):
        train.random_search(diverges, {"lr": ("log", 0.2, 1.0)}, trials=3, seed=0)
    with pytest.raises(kn.Error, match="lo > 0"):
        train.random_search(diverges, {"lr": ("log", 0.0, 1.0)}, trials=3)
    with pytest.raises(kn.Error, match="lo > hi"):
        train.random_search(diverges, {"lr": ("uniform", 2.0, 1.0)}, trials=3)


# ---- CS231n sanity checks ----


def test_initial_loss_is_log_of_the_number_of_classes():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 50)).astype(np.float32)
    y = rng.integers(0, 10, 200)
    m = Softmax(50, 10, scale=1e-3)
    loss = m.evaluate(X, y)[0]
    assert abs(float(loss) - math.log(10)) < 0.02
    assert train.check_initial_loss(loss, 10, strict=True)
    assert not train.check_initial_loss(loss, 3)
    with kn.Graph():
        big = Softmax(50, 10, scale=3.0)
        bad = big.evaluate(X, y)[0]
    assert not train.check_initial_loss(bad, 10)
    with pytest.raises(kn.Error, match=r"log\(10\) = 2.303"):
        train.check_initial_loss(bad, 10, strict=True)


def test_regularization_raises_the_loss():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((50, 20)).astype(np.float32)
    y = rng.integers(0, 5, 50)
    m = Softmax(20, 5, scale=1e-2)
    reg = kn.input("reg", ())
    total = m.loss + reg * kn.sum(m.W * m.W)
    f = kn.function([m.x, m.y, reg], total, training=False)
    assert train.check_regularization_raises_loss(lambda r: f(X, y, np.float32(r)), strict=True)
    data_only = kn.function([m.x, m.y], m.loss, training=False)
    assert not train.check_regularization_raises_loss(lambda r: data_only(X, y))
    with pytest.raises(kn.Error, match="does not rise"):
        train.check_regularization_raises_loss(lambda r: data_only(X, y), strict=True)


def test_overfit_twenty_examples():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((100, 50)).astype(np.float32)
    y = rng.integers(0, 10, 100)
    m = Softmax(50, 10, lr=1.0, scale=1e-3)
    assert train.check_overfit_small(m.step, X, y, steps=300, threshold=0.05, strict=True)
    loss, logits = m.evaluate(X[:20], y[:20])
    assert loss < 0.05 and (logits.argmax(1) == y[:20]).all()
    with kn.Graph():
        frozen = Softmax(50, 10, lr=0.0)
        assert not train.check_overfit_small(frozen.step, X, y, steps=20)
        with pytest.raises(kn.Error, match=r"after 20 steps on 20 examples the loss is 2\.3"):
            train.check_overfit_small(frozen.step, X, y, steps=20, strict=True)
