"""kn.optim against independent numpy re-implementations of torch.optim's update rules (the
single-tensor algorithms): SGD, Adam, AdamW, Adagrad, RMSprop, state_dict() / load_state_dict(),
gradient clipping, the max-norm constraint, the learning-rate schedules of kn.optim.lr_scheduler,
L-BFGS, argument errors and the in-place update plan. Extra comparisons against torch.optim run
only where torch is installed."""

import bisect
import math

import numpy as np
import pytest

import kiln as kn
from kiln.optim import lr_scheduler as sched

STEPS = 6
SCALES = [1.0, 0.2, 1.5, 0.1, 1.2, 0.3, 2.0, 0.5]  # batch magnitudes: moments rise and fall


# ---- numpy references: torch.optim's update rules, written out ----


class NpOptimizer:
    """One step of torch's algorithm per call, on lists of float64 arrays; `state` holds the
    torch state entries (torch's keys) of each parameter."""

    def __init__(self, kind, params, **hp):
        self.kind, self.hp, self.t = kind, hp, 0
        self.params = [np.array(p, np.float64) for p in params]
        self.state = [{} for _ in params]
        if kind == "adagrad":
            for p, s in zip(self.params, self.state):
                s["sum"] = np.full_like(p, hp.get("initial_accumulator_value", 0.0))

    def step(self, grads):
        self.t += 1
        update = getattr(self, "_" + self.kind)
        self.params = [
            update(p, np.array(g, np.float64), s) for p, g, s in zip(self.params, grads, self.state)
        ]
        if self.hp.get("max_norm") is not None:
            self.params = [renorm_rows(p, self.hp["max_norm"]) if p.ndim >= 2 else p for p in self.params]
        return self.params

    def _sgd(self, p, g, s):
        lr, mom, damp = self.hp["lr"], self.hp.get("momentum", 0.0), self.hp.get("dampening", 0.0)
        wd, nesterov = self.hp.get("weight_decay", 0.0), self.hp.get("nesterov", False)
        d = g + wd * p
        if mom != 0:
            if "momentum_buffer" not in s:
                s["momentum_buffer"] = d.copy()
            else:
                s["momentum_buffer"] = mom * s["momentum_buffer"] + (1 - damp) * d
            d = d + mom * s["momentum_buffer"] if nesterov else s["momentum_buffer"]
        return p - lr * d

    def _adam(self, p, g, s, decoupled=False):
        lr, (b1, b2), eps = self.hp["lr"], self.hp.get("betas", (0.9, 0.999)), self.hp.get("eps", 1e-8)
        wd, amsgrad = self.hp.get("weight_decay", 1e-2 if decoupled else 0.0), self.hp.get("amsgrad", False)
        if decoupled:
            p = p * (1 - lr * wd)
        else:
            g = g + wd * p
        s["exp_avg"] = b1 * s.get("exp_avg", 0.0) + (1 - b1) * g
        s["exp_avg_sq"] = b2 * s.get("exp_avg_sq", 0.0) + (1 - b2) * g * g
        v = s["exp_avg_sq"]
        if amsgrad:
            s["max_exp_avg_sq"] = np.maximum(s.get("max_exp_avg_sq", 0.0), v)
            v = s["max_exp_avg_sq"]
        bc1, bc2 = 1 - b1**self.t, 1 - b2**self.t
        return p - lr / bc1 * s["exp_avg"] / (np.sqrt(v) / math.sqrt(bc2) + eps)

    def _adamw(self, p, g, s):
        return self._adam(p, g, s, decoupled=True)

    def _adagrad(self, p, g, s):
        lr, lr_decay, eps = self.hp["lr"], self.hp.get("lr_decay", 0.0), self.hp.get("eps", 1e-10)
        g = g + self.hp.get("weight_decay", 0.0) * p
        clr = lr / (1 + (self.t - 1) * lr_decay)
        s["sum"] = s["sum"] + g * g
        return p - clr * g / (np.sqrt(s["sum"]) + eps)

    def _rmsprop(self, p, g, s):
        lr, alpha, eps = self.hp["lr"], self.hp.get("alpha", 0.99), self.hp.get("eps", 1e-8)
        mom, centered = self.hp.get("momentum", 0.0), self.hp.get("centered", False)
        g = g + self.hp.get("weight_decay", 0.0) * p
        s["square_avg"] = alpha * s.get("square_avg", 0.0) + (1 - alpha) * g * g
        avg = s["square_avg"]
        if centered:
            s["grad_avg"] = alpha * s.get("grad_avg", 0.0) + (1 - alpha) * g
            avg = avg - s["grad_avg"] ** 2
        denom = np.sqrt(avg) + eps
        if mom > 0:
            s["momentum_buffer"] = mom * s.get("momentum_buffer", 0.0) + g / denom
            return p - lr * s["momentum_buffer"]
        return p - lr * g / denom


def renorm_rows(w, max_norm):
    """torch.renorm(w, 2, 0, max_norm): slices along axis 0 with a norm above max_norm scaled to it."""
    norms = np.sqrt(np.sum(w * w, axis=tuple(range(1, w.ndim)), keepdims=True))
    return w * np.where(norms > max_norm, max_norm / (norms + 1e-7), 1.0)


def np_clip_norm(grads, max_norm):
    total = math.sqrt(sum(float(np.sum(np.square(g, dtype=np.float64))) for g in grads))
    return [g * min(1.0, max_norm / (total + 1e-6)) for g in grads]


# ---- a least-squares problem: loss = 1/2 |x W + b - y|^2 over fresh batches ----


class Problem:
    def __init__(self, dtype="float64", seed=0, steps=STEPS, target_scale=1.0):
        rng = np.random.default_rng(seed)
        self.W0, self.b0 = rng.standard_normal((4, 3)), rng.standard_normal(3)
        self.W = kn.Parameter(self.W0, name="W", dtype=dtype)
        self.b = kn.Parameter(self.b0, name="b", dtype=dtype)
        self.params = [self.W, self.b]
        self.x = kn.input("x", (None, 4), dtype=dtype)
        self.y = kn.input("y", (None, 3), dtype=dtype)
        self.loss = 0.5 * kn.sum(kn.square(self.x @ self.W + self.b - self.y))
        self.batches = [
            (
                (SCALES[i % len(SCALES)] * rng.standard_normal((5, 4))).astype(dtype),
                (target_scale * rng.standard_normal((5, 3))).astype(dtype),
            )
            for i in range(steps)
        ]

    @staticmethod
    def grads(params, batch):
        W, b = params
        x, y = (np.asarray(a, np.float64) for a in batch)
        r = x @ W + b - y
        return [x.T @ r, r.sum(0)]

    def values(self):
        return [p.numpy() for p in self.params]


OPTIMIZERS = {"sgd": kn.optim.SGD, "adam": kn.optim.Adam, "adamw": kn.optim.AdamW}
OPTIMIZERS.update(adagrad=kn.optim.Adagrad, rmsprop=kn.optim.RMSprop)

CASES = [
    ("sgd", dict(lr=0.05)),
    ("sgd", dict(lr=0.05, momentum=0.9, dampening=0.3)),
    ("sgd", dict(lr=0.05, momentum=0.8, nesterov=True)),
    ("sgd", dict(lr=0.05, momentum=0.5, weight_decay=0.1)),
    ("sgd", dict(lr=0.05, weight_decay=0.2, momentum=0.9, nesterov=True)),
    ("adam", dict(lr=0.05)),
    ("adam", dict(lr=0.05, betas=(0.8, 0.9), weight_decay=0.1)),
    ("adam", dict(lr=0.05, betas=(0.5, 0.6), amsgrad=True)),
    ("adamw", dict(lr=0.05)),
    ("adamw", dict(lr=0.05, weight_decay=0.3, betas=(0.5, 0.6), amsgrad=True)),
    ("adagrad", dict(lr=0.1)),
    ("adagrad", dict(lr=0.1, lr_decay=0.2, initial_accumulator_value=0.5, weight_decay=0.05, eps=1e-6)),
    ("rmsprop", dict(lr=0.01)),
    ("rmsprop", dict(lr=0.01, alpha=0.9, momentum=0.9)),
    ("rmsprop", dict(lr=0.01, alpha=0.8, centered=True)),
    ("rmsprop", dict(lr=0.01, alpha=0.9, momentum=0.5, centered=True, weight_decay=0.1, eps=1e-6)),
]


def case_id(case):
    kind, hp = case
    return kind + "-" + "-".join(f"{k}={v}" for k, v in hp.items() if k != "lr")


def torch_slots(kind, hp):
    """The slot keys of torch's per-parameter state for these hyperparameters."""
    return {
        "sgd": {"momentum_buffer"},
        "adam": {"exp_avg", "exp_avg_sq"} | ({"max_exp_avg_sq"} if hp.get("amsgrad") else set()),
        "adagrad": {"sum"},
        "rmsprop": {"square_avg"}
        | ({"momentum_buffer"} if hp.get("momentum", 0) > 0 else set())
        | ({"grad_avg"} if hp.get("centered") else set()),
    }["adam" if kind == "adamw" else kind]


def check_state(opt, ref, rtol, atol=0.0):
    sd = opt.state_dict()
    assert set(sd["state"]) == set(range(len(ref.params)))
    for i, s in enumerate(ref.state):
        entry = sd["state"][i]
        assert float(np.asarray(entry["step"]).reshape(())) == ref.t
        for key, val in s.items():
            np.testing.assert_allclose(entry[key], val, rtol=rtol, atol=atol, err_msg=f"param {i} slot {key}")


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_update_rules_match_numpy_reference(case):
    kind, hp = case
    prob = Problem()
    opt = OPTIMIZERS[kind](prob.params, **hp)
    step = kn.function([prob.x, prob.y], prob.loss, updates=opt.updates(prob.loss))
    ref = NpOptimizer(kind, [prob.W0, prob.b0], **hp)
    for batch in prob.batches:
        loss = step(*batch)
        grads = Problem.grads(ref.params, batch)
        np.testing.assert_allclose(
            loss, 0.5 * np.sum((batch[0] @ ref.params[0] + ref.params[1] - batch[1]) ** 2)
        )
        ref.step(grads)
        for got, want in zip(prob.values(), ref.params):
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-13)
        check_state(opt, ref, rtol=1e-10, atol=1e-13)
    # every key of torch's state, with the right shapes and dtypes
    for i, p in enumerate(prob.params):
        entry = opt.state_dict()["state"][i]
        assert set(entry) - {"step"} == torch_slots(kind, hp)
        for key in torch_slots(kind, hp):
            assert entry[key].shape == p.shape and entry[key].dtype == np.float64
    if hp.get("amsgrad"):  # the test reaches the case where the running max matters
        s = ref.state[0]
        assert np.any(s["max_exp_avg_sq"] > s["exp_avg_sq"] * (1 + 1e-6))


@pytest.mark.parametrize(
    "case",
    [
        ("sgd", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1)),
        ("adam", dict(lr=0.05, amsgrad=True, weight_decay=0.1)),
        ("adamw", dict(lr=0.05, weight_decay=0.1)),
        ("adagrad", dict(lr=0.1, lr_decay=0.1, initial_accumulator_value=0.1)),
        ("rmsprop", dict(lr=0.01, momentum=0.5, centered=True)),
    ],
    ids=case_id,
)
def test_float32_parameters_train(case):
    kind, hp = case
    prob = Problem(dtype="float32")
    opt = OPTIMIZERS[kind](prob.params, **hp)
    step = kn.function([prob.x, prob.y], prob.loss, updates=opt.updates(prob.loss))
    ref = NpOptimizer(kind, [prob.W0.astype(np.float32), prob.b0.astype(np.float32)], **hp)
    for batch in prob.batches:
        loss = step(*batch)
        assert loss.dtype == np.float32
        ref.step(Problem.grads(ref.params, batch))
        for p, want in zip(prob.params, ref.params):
            got = p.numpy()
            assert got.dtype == np.float32
            np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)
    for entry in opt.state_dict()["state"].values():
        for key in torch_slots(kind, hp):
            assert entry[key].dtype == np.float32
    check_state(opt, ref, rtol=2e-3, atol=2e-5)


# ---- state_dict / load_state_dict ----


def test_state_dict_layout_follows_torch():
    prob = Problem()
    opt = kn.optim.Adam(prob.params, lr=0.01, betas=(0.8, 0.9), eps=1e-7, weight_decay=0.1, amsgrad=True)
    step = kn.function([prob.x, prob.y], prob.loss, updates=opt.updates(prob.loss))
    step(*prob.batches[0])
    step(*prob.batches[1])
    sd = opt.state_dict()
    assert set(sd) == {"state", "param_groups"}
    assert list(sd["state"]) == [0, 1]
    for entry in sd["state"].values():
        assert set(entry) == {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
        assert float(np.asarray(entry["step"]).reshape(())) == 2.0
    (group,) = sd["param_groups"]
    assert group["params"] == [0, 1]
    assert group["lr"] == 0.01 and tuple(group["betas"]) == (0.8, 0.9) and group["eps"] == 1e-7
    assert group["weight_decay"] == 0.1 and group["amsgrad"] is True
    # the state is a snapshot, not a view of the engine's variables
    before = sd["state"][0]["exp_avg"].copy()
    step(*prob.batches[2])
    np.testing.assert_array_equal(sd["state"][0]["exp_avg"], before)


def test_state_dict_step_is_a_scalar_like_torch():
    prob = Problem()
    opt = kn.optim.Adam(prob.params, lr=0.01)
    step = kn.function([prob.x, prob.y], prob.loss, updates=opt.updates(prob.loss))
    step(*prob.batches[0])
    s = opt.state_dict()["state"][0]["step"]
    assert np.ndim(s) == 0 and float(s) == 1.0  # torch keeps a 0-d float32 tensor


@pytest.mark.parametrize(
    "case",
    [
        ("sgd", dict(lr=0.05, momentum=0.9, dampening=0.2, weight_decay=0.1)),
        ("sgd", dict(lr=0.05, momentum=0.9, nesterov=True)),
        ("adam", dict(lr=0.05, betas=(0.5, 0.6), amsgrad=True, weight_decay=0.1)),
        ("adamw", dict(lr=0.05, weight_decay=0.2)),
        ("adagrad", dict(lr=0.1, lr_decay=0.3, initial_accumulator_value=0.2)),
        ("rmsprop", dict(lr=0.01, momentum=0.5, centered=True, weight_decay=0.1)),
    ],
    ids=case_id,
)
@pytest.mark.parametrize("saved_after", [1, 3])
def test_load_state_dict_resumes_exactly(case, saved_after):
    kind, hp = case
    total = 7

    def build():
        prob = Problem(steps=total)
        opt = OPTIMIZERS[kind](prob.params, **hp)
        sched.StepLR(opt, step_size=2, gamma=0.7)  # the step counter drives the schedule too
        step = kn.function([prob.x, prob.y], prob.loss, updates=opt.updates(prob.loss, clip_norm=5.0))
        return prob, opt, step

    prob, opt, step = build()
    for batch in prob.batches[:saved_after]:
        step(*batch)
    saved_params, saved_opt = prob.values(), opt.state_dict()
    for batch in prob.batches[saved_after:]:
        step(*batch)
    uninterrupted = prob.values()

    with kn.Graph():
        prob2, opt2, step2 = build()
        np.testing.assert_array_equal(prob2.W.numpy(), prob.W0)  # a fresh start from the same init
        for p, v in zip(prob2.params, saved_params):
            p.assign(v)
        opt2.load_state_dict(saved_opt)
        loaded = opt2.state_dict()
        for i in saved_opt["state"]:
            for key, val in saved_opt["state"][i].items():
                np.testing.assert_array_equal(
                    np.asarray(loaded["state"][i][key]).ravel(), np.asarray(val).ravel()
                )
        for batch in prob2.batches[saved_after:]:
            step2(*batch)
        for got, want in zip(prob2.values(), uninterrupted):
            np.testing.assert_array_equal(got, want)
        final = opt2.state_dict()["state"]
        for i, entry in opt.state_dict()["state"].items():
            for key, val in entry.items():
                np.testing.assert_array_equal(final[i][key], val)


def test_load_state_dict_rejects_state_for_other_parameters():
    prob = Problem()
    opt = kn.optim.Adam(prob.params, lr=0.01)
    sd = opt.state_dict()
    sd["state"][5] = dict(sd["state"][0])
    with pytest.raises(kn.Error):
        opt.load_state_dict(sd)


def test_optimizer_accepts_a_module():
    rng = np.random.default_rng(6)
    lin = kn.nn.Linear(3, 2, dtype="float64")
    W0, b0 = (p.numpy() for p in lin.parameters())
    x = kn.input("x", (None, 3), dtype="float64")
    loss = kn.sum(kn.square(lin(x)))
    opt = kn.optim.SGD(lin, lr=0.1, momentum=0.9)
    step = kn.function([x], loss, updates=opt.updates(loss))
    ref = NpOptimizer("sgd", [W0, b0], lr=0.1, momentum=0.9)
    for _ in range(5):
        xb = rng.standard_normal((4, 3))
        step(xb)
        W, b = ref.params
        r = 2 * (xb @ W.T + b)
        ref.step([r.T @ xb, r.sum(0)])
    for p, want in zip(lin.parameters(), ref.params):
        np.testing.assert_allclose(p.numpy(), want, rtol=1e-10, atol=1e-13)


# ---- gradient clipping ----


@pytest.mark.parametrize(
    "clip",
    [dict(clip_norm=1.0), dict(clip_norm=1e3), dict(clip_value=0.5), dict(clip_value=0.5, clip_norm=0.8)],
    ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()),
)
@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_updates_clip_gradients(clip, kind):
    prob = Problem(target_scale=3.0)
    hp = dict(lr=0.05, momentum=0.9) if kind == "sgd" else dict(lr=0.05)
    opt = OPTIMIZERS[kind](prob.params, **hp)
    step = kn.function([prob.x, prob.y], prob.loss, updates=opt.updates(prob.loss, **clip))
    ref = NpOptimizer(kind, [prob.W0, prob.b0], **hp)
    clipped_any = False
    for batch in prob.batches:
        step(*batch)
        grads = Problem.grads(ref.params, batch)
        raw = [g.copy() for g in grads]
        if "clip_value" in clip:
            grads = [np.clip(g, -clip["clip_value"], clip["clip_value"]) for g in grads]
        if "clip_norm" in clip:
            grads = np_clip_norm(grads, clip["clip_norm"])
        clipped_any |= any(not np.array_equal(a, b) for a, b in zip(raw, grads))
        ref.step(grads)
        for got, want in zip(prob.values(), ref.params):
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-13)
        check_state(opt, ref, rtol=1e-10, atol=1e-13)
    assert clipped_any == (clip.get("clip_norm") != 1e3)  # the large threshold never clips


def test_clip_grad_norm_and_value_directly():
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((3, 4)), rng.standard_normal(5)
    ga = kn.input("ga", (3, 4), dtype="float64")
    gb = kn.input("gb", (5,), dtype="float64")
    total = math.sqrt(np.sum(a * a) + np.sum(b * b))
    for max_norm in [0.5, total / 2, total * 2]:
        f = kn.function([ga, gb], kn.optim.clip_grad_norm([ga, gb], max_norm))
        got = f(a, b)
        scale = min(1.0, max_norm / (total + 1e-6))
        np.testing.assert_allclose(got[0], a * scale, rtol=1e-12)
        np.testing.assert_allclose(got[1], b * scale, rtol=1e-12)
        new_norm = math.sqrt(np.sum(got[0] ** 2) + np.sum(got[1] ** 2))
        assert new_norm <= max_norm * (1 + 1e-9) or scale == 1.0
    f = kn.function([ga, gb], kn.optim.clip_grad_value([ga, gb], 0.7))
    got = f(a, b)
    np.testing.assert_array_equal(got[0], np.clip(a, -0.7, 0.7))
    np.testing.assert_array_equal(got[1], np.clip(b, -0.7, 0.7))


def test_clip_grad_norm_mixed_dtypes_keeps_each_dtype():
    rng = np.random.default_rng(4)
    a, b = rng.standard_normal((2, 3)).astype(np.float32), rng.standard_normal(4)
    ga = kn.input("ga", (2, 3), dtype="float32")
    gb = kn.input("gb", (4,), dtype="float64")
    got = kn.function([ga, gb], kn.optim.clip_grad_norm([ga, gb], 1.0))(a, b)
    assert got[0].dtype == np.float32 and got[1].dtype == np.float64
    want = np_clip_norm([a.astype(np.float64), b], 1.0)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-6)


# ---- max-norm constraint ----


@pytest.mark.parametrize(
    "case",
    [("sgd", dict(lr=0.3, momentum=0.5)), ("adam", dict(lr=0.3))],
    ids=case_id,
)
def test_max_norm_renormalises_rows_after_the_update(case):
    kind, hp = case
    max_norm = 2.0
    prob = Problem(target_scale=4.0)
    opt = OPTIMIZERS[kind](prob.params, max_norm=max_norm, **hp)
    step = kn.function([prob.x, prob.y], prob.loss, updates=opt.updates(prob.loss))
    ref = NpOptimizer(kind, [prob.W0, prob.b0], max_norm=max_norm, **hp)
    scaled = kept = False
    for batch in prob.batches:
        step(*batch)
        ref.step(Problem.grads(ref.params, batch))
        for got, want in zip(prob.values(), ref.params):
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-13)
        row_norms = np.linalg.norm(prob.W.numpy(), axis=1)
        assert np.all(row_norms <= max_norm * (1 + 1e-9))
        scaled |= bool(np.any(np.isclose(row_norms, max_norm, rtol=1e-6)))
        kept |= bool(np.any(row_norms < max_norm * 0.99))
    assert scaled and kept  # both branches of the constraint were exercised
    assert np.abs(prob.b.numpy()).max() > 0  # 1-d parameters are not renormalised
    check_state(opt, ref, rtol=1e-10, atol=1e-13)


# ---- learning-rate schedules: the lr used inside the compiled step ----

BASE_LR = 0.5


def cawr_reference(T_0, T_mult, eta_min, n):
    """torch's CosineAnnealingWarmRestarts stepped one iteration at a time."""
    out, T_cur, T_i = [], 0, T_0
    for _ in range(n):
        out.append(eta_min + (BASE_LR - eta_min) * (1 + math.cos(math.pi * T_cur / T_i)) / 2)
        T_cur += 1
        if T_cur >= T_i:
            T_cur -= T_i
            T_i *= T_mult
    return out


def cosine(t, T_max, eta_min=0.0, base=BASE_LR):
    return eta_min + (base - eta_min) * (1 + math.cos(math.pi * t / T_max)) / 2


SCHEDULES = {
    "step": (
        lambda opt: sched.StepLR(opt, step_size=3, gamma=0.5),
        lambda t: BASE_LR * 0.5 ** (t // 3),
    ),
    "multistep": (
        lambda opt: sched.MultiStepLR(opt, milestones=[9, 2, 5], gamma=0.3),
        lambda t: BASE_LR * 0.3 ** bisect.bisect_right([2, 5, 9], t),
    ),
    "exponential": (lambda opt: sched.ExponentialLR(opt, gamma=0.9), lambda t: BASE_LR * 0.9**t),
    "cosine": (
        lambda opt: sched.CosineAnnealingLR(opt, T_max=10, eta_min=0.05),
        lambda t: cosine(t, 10, 0.05),
    ),
    "cosine_restarts_T_mult1": (
        lambda opt: sched.CosineAnnealingWarmRestarts(opt, T_0=4, T_mult=1, eta_min=0.01),
        lambda t: cawr_reference(4, 1, 0.01, t + 1)[t],
    ),
    "cosine_restarts_T_mult2": (
        lambda opt: sched.CosineAnnealingWarmRestarts(opt, T_0=2, T_mult=2),
        lambda t: cawr_reference(2, 2, 0.0, t + 1)[t],
    ),
    "cosine_restarts_T0_3_T_mult2": (
        lambda opt: sched.CosineAnnealingWarmRestarts(opt, T_0=3, T_mult=2, eta_min=0.02),
        lambda t: cawr_reference(3, 2, 0.02, t + 1)[t],
    ),
    "linear_warmup_ramp": (
        lambda opt: sched.LinearLR(opt, start_factor=0.25, end_factor=1.0, total_iters=4),
        lambda t: BASE_LR * (0.25 + 0.75 * min(t, 4) / 4),
    ),
    "linear_decay": (
        lambda opt: sched.LinearLR(opt, start_factor=1.0, end_factor=0.1, total_iters=6),
        lambda t: BASE_LR * (1.0 - 0.9 * min(t, 6) / 6),
    ),
    "inverse_sqrt": (
        lambda opt: sched.InverseSqrtLR(opt, warmup_steps=4),
        lambda t: BASE_LR * (1.0 if t < 4 else math.sqrt(4 / t)),
    ),
    "inverse_time": (lambda opt: sched.InverseTimeLR(opt, decay=0.5), lambda t: BASE_LR / (1 + 0.5 * t)),
    "warmup_then_cosine": (
        lambda opt: sched.LinearWarmup(
            opt, warmup_steps=5, start_factor=0.1, after=sched.CosineAnnealingLR(T_max=10)
        ),
        lambda t: BASE_LR * (0.1 + 0.9 * t / 5) if t < 5 else cosine(t - 5, 10),
    ),
    "warmup_then_step": (
        lambda opt: sched.LinearWarmup(opt, warmup_steps=3, after=sched.StepLR(step_size=4, gamma=0.5)),
        lambda t: BASE_LR * t / 3 if t < 3 else BASE_LR * 0.5 ** ((t - 3) // 4),
    ),
}
N_SCHEDULE = 40


def lrs_used(make_schedule, n=N_SCHEDULE, **opt_kw):
    """The lr of each of n compiled SGD steps, read off w_new = 0 - lr * c."""
    c = np.array([1.0, -2.0, 0.5, 3.0])
    w = kn.Parameter(np.zeros(4), name="w", dtype="float64")
    opt = kn.optim.SGD([w], lr=BASE_LR, **opt_kw)
    schedule = make_schedule(opt)
    loss = kn.sum(w * kn.constant(c, dtype="float64"))
    step = kn.function([], loss, updates=opt.updates(loss))
    used = []
    for _ in range(n):
        w.assign(np.zeros(4))
        step()
        lr = -w.numpy() / c
        np.testing.assert_allclose(lr, lr[0], rtol=1e-14)
        used.append(lr[0])
    return np.array(used), schedule


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_schedule_lr_inside_the_compiled_step(name):
    make, closed_form = SCHEDULES[name]
    used, schedule = lrs_used(make)
    ts = range(N_SCHEDULE)
    want = np.array([closed_form(t) for t in ts])
    np.testing.assert_allclose(used, want, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose([BASE_LR * schedule.value(t) for t in ts], want, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(BASE_LR * sched.values(schedule, N_SCHEDULE), want, rtol=1e-10, atol=1e-14)


def test_schedule_passed_as_keyword():
    used, _ = lrs_used(lambda opt: opt.schedule, n=8, schedule=sched.ExponentialLR(gamma=0.8))
    np.testing.assert_allclose(used, BASE_LR * 0.8 ** np.arange(8), rtol=1e-12)


def test_schedule_with_float32_parameters():
    c = np.array([1.0, -2.0], np.float32)
    w = kn.Parameter(np.zeros(2), name="w", dtype="float32")
    opt = kn.optim.SGD([w], lr=BASE_LR)
    sched.CosineAnnealingWarmRestarts(opt, T_0=3, T_mult=2)
    loss = kn.sum(w * kn.constant(c))
    step = kn.function([], loss, updates=opt.updates(loss))
    want = cawr_reference(3, 2, 0.0, 25)
    for t in range(25):
        w.assign(np.zeros(2))
        step()
        np.testing.assert_allclose(-w.numpy() / c, want[t], rtol=1e-5, atol=1e-7)


def test_cosine_warm_restarts_rejects_bad_periods():
    with pytest.raises(kn.Error):
        sched.CosineAnnealingWarmRestarts(T_0=0)
    with pytest.raises(kn.Error):
        sched.CosineAnnealingWarmRestarts(T_0=2, T_mult=0)


# ---- L-BFGS ----


def test_lbfgs_solves_least_squares():
    rng = np.random.default_rng(5)
    A, y = rng.standard_normal((30, 6)), rng.standard_normal(30)
    a = kn.input("A", (None, 5), dtype="float64")
    t = kn.input("t", (None,), dtype="float64")
    w = kn.Parameter(np.zeros(5), name="w", dtype="float64")
    b = kn.Parameter(np.zeros(1), name="bias", dtype="float64")
    loss = kn.sum(kn.square(a @ w + b - t))
    final = kn.optim.LBFGS([w, b]).minimize(loss, {a: A[:, :5], t: y})
    X = np.concatenate([A[:, :5], np.ones((30, 1))], axis=1)
    sol, res, *_ = np.linalg.lstsq(X, y, rcond=None)
    np.testing.assert_allclose(w.numpy(), sol[:5], atol=1e-6)
    np.testing.assert_allclose(b.numpy(), sol[5:], atol=1e-6)
    np.testing.assert_allclose(final, res[0], rtol=1e-8)


def test_lbfgs_minimises_rosenbrock():
    x = kn.Parameter(np.array([-1.2]), name="x", dtype="float64")
    y = kn.Parameter(np.array([1.0]), name="y", dtype="float64")
    loss = kn.sum(kn.square(1.0 - x) + 100.0 * kn.square(y - kn.square(x)))
    final = kn.optim.LBFGS([x, y], max_iter=500).minimize(loss)
    np.testing.assert_allclose(np.concatenate([x.numpy(), y.numpy()]), [1.0, 1.0], atol=1e-5)
    assert final < 1e-10


# ---- argument errors ----


@pytest.mark.parametrize("kind", list(OPTIMIZERS))
def test_bad_parameters_and_lr_raise(kind):
    cls = OPTIMIZERS[kind]
    w = kn.Parameter(np.zeros(3), name="w", dtype="float64")
    with pytest.raises(kn.Error):
        cls([])
    with pytest.raises(kn.Error):
        cls([kn.Parameter(np.arange(3), name="ints")])
    with pytest.raises(kn.Error):
        cls([w], lr=-0.1)


@pytest.mark.parametrize("cls", [kn.optim.Adam, kn.optim.AdamW])
@pytest.mark.parametrize("betas", [(1.0, 0.999), (0.9, 1.0), (-0.1, 0.999), (0.9, -0.5)])
def test_bad_betas_raise(cls, betas):
    w = kn.Parameter(np.zeros(3), name="w", dtype="float64")
    with pytest.raises(kn.Error):
        cls([w], betas=betas)


def test_nesterov_needs_momentum_and_no_dampening():
    w = kn.Parameter(np.zeros(3), name="w", dtype="float64")
    with pytest.raises(kn.Error):
        kn.optim.SGD([w], lr=0.1, nesterov=True)
    with pytest.raises(kn.Error):
        kn.optim.SGD([w], lr=0.1, momentum=0.9, dampening=0.5, nesterov=True)


# ---- in-place updates: a planned step allocates only its outputs ----


@pytest.mark.parametrize(
    "case",
    [
        ("sgd", dict(lr=0.05, momentum=0.9, nesterov=True)),
        ("adam", dict(lr=0.05, amsgrad=True)),
        ("adamw", dict(lr=0.05)),
        ("adagrad", dict(lr=0.1)),
        ("rmsprop", dict(lr=0.01, momentum=0.5, centered=True)),
    ],
    ids=case_id,
)
@pytest.mark.parametrize("n_outputs", [1, 2])
def test_training_step_allocates_only_its_outputs(case, n_outputs):
    kind, hp = case
    prob = Problem()
    opt = OPTIMIZERS[kind](prob.params, **hp)
    sched.CosineAnnealingLR(opt, T_max=10)
    outputs = [prob.loss, prob.x @ prob.W][:n_outputs]
    step = kn.function([prob.x, prob.y], outputs, updates=opt.updates(prob.loss, clip_norm=1.0))
    step(*prob.batches[0])  # plans and allocates its buffers
    before = kn._core.allocation_count()
    for batch in prob.batches[1:4]:
        step(*batch)
    assert kn._core.allocation_count() - before == 3 * n_outputs


# ---- extra: the same against torch.optim, where torch is installed ----


def _torch_optimizer(torch, kind, tparams, hp):
    cls = dict(sgd="SGD", adam="Adam", adamw="AdamW", adagrad="Adagrad", rmsprop="RMSprop")[kind]
    hp = {k: v for k, v in hp.items() if k != "max_norm"}
    if kind == "adamw":
        hp.setdefault("weight_decay", 1e-2)  # kiln's AdamW default as torch's
    return getattr(torch.optim, cls)(tparams, **hp)


def _torch_state_to_numpy(sd):
    state = {
        i: {k: (v.detach().numpy().copy() if hasattr(v, "numpy") else v) for k, v in entry.items()}
        for i, entry in sd["state"].items()
    }
    return {"state": state, "param_groups": sd["param_groups"]}


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_matches_torch_optim(case):
    torch = pytest.importorskip("torch")
    kind, hp = case
    prob = Problem()
    opt = OPTIMIZERS[kind](prob.params, **hp)
    step = kn.function([prob.x, prob.y], prob.loss, updates=opt.updates(prob.loss))
    tparams = [torch.tensor(prob.W0, requires_grad=True), torch.tensor(prob.b0, requires_grad=True)]
    topt = _torch_optimizer(torch, kind, tparams, hp)
    for xb, yb in prob.batches:
        step(xb, yb)
        topt.zero_grad()
        (0.5 * ((torch.tensor(xb) @ tparams[0] + tparams[1] - torch.tensor(yb)) ** 2).sum()).backward()
        topt.step()
        for got, tp in zip(prob.values(), tparams):
            np.testing.assert_allclose(got, tp.detach().numpy(), rtol=1e-10, atol=1e-13)
        tsd, ksd = _torch_state_to_numpy(topt.state_dict()), opt.state_dict()
        for i, entry in tsd["state"].items():
            for key, val in entry.items():
                if val is None:  # torch's SGD without momentum
                    continue
                np.testing.assert_allclose(ksd["state"][i][key], val, rtol=1e-10, atol=1e-13, err_msg=key)
    (kgroup,), (tgroup,) = ksd["param_groups"], tsd["param_groups"]
    for key, val in kgroup.items():
        assert key in tgroup, key
        assert (tuple(val) if isinstance(val, (list, tuple)) else val) == (
            tuple(tgroup[key]) if isinstance(tgroup[key], (list, tuple)) else tgroup[key]
        ), key


@pytest.mark.parametrize(
    "case",
    [
        ("sgd", dict(lr=0.05, momentum=0.9, dampening=0.2)),
        ("adam", dict(lr=0.05, betas=(0.5, 0.6), amsgrad=True)),
        ("adagrad", dict(lr=0.1, lr_decay=0.3)),
        ("rmsprop", dict(lr=0.01, momentum=0.5, centered=True)),
    ],
    ids=case_id,
)
def test_load_state_dict_from_torch_resumes(case):
    torch = pytest.importorskip("torch")
    kind, hp = case
    prob = Problem(steps=6)
    tparams = [torch.tensor(prob.W0, requires_grad=True), torch.tensor(prob.b0, requires_grad=True)]
    topt = _torch_optimizer(torch, kind, tparams, hp)

    def torch_step(xb, yb):
        topt.zero_grad()
        (0.5 * ((torch.tensor(xb) @ tparams[0] + tparams[1] - torch.tensor(yb)) ** 2).sum()).backward()
        topt.step()

    for batch in prob.batches[:3]:
        torch_step(*batch)
    opt = OPTIMIZERS[kind](prob.params, **hp)
    step = kn.function([prob.x, prob.y], prob.loss, updates=opt.updates(prob.loss))
    for p, tp in zip(prob.params, tparams):
        p.assign(tp.detach().numpy())
    opt.load_state_dict(_torch_state_to_numpy(topt.state_dict()))
    for batch in prob.batches[3:]:
        torch_step(*batch)
        step(*batch)
        for got, tp in zip(prob.values(), tparams):
            np.testing.assert_allclose(got, tp.detach().numpy(), rtol=1e-10, atol=1e-13)


TORCH_SCHEDULES = {
    "step": lambda S, o: S.StepLR(o, step_size=3, gamma=0.5),
    "multistep": lambda S, o: S.MultiStepLR(o, milestones=[2, 5, 9], gamma=0.3),
    "exponential": lambda S, o: S.ExponentialLR(o, gamma=0.9),
    "cosine": lambda S, o: S.CosineAnnealingLR(o, T_max=10, eta_min=0.05),
    "cosine_restarts_T_mult1": lambda S, o: S.CosineAnnealingWarmRestarts(o, T_0=4, T_mult=1, eta_min=0.01),
    "cosine_restarts_T_mult2": lambda S, o: S.CosineAnnealingWarmRestarts(o, T_0=2, T_mult=2),
    "cosine_restarts_T0_3_T_mult2": lambda S, o: S.CosineAnnealingWarmRestarts(
        o, T_0=3, T_mult=2, eta_min=0.02
    ),
    "linear_warmup_ramp": lambda S, o: S.LinearLR(o, start_factor=0.25, end_factor=1.0, total_iters=4),
    "linear_decay": lambda S, o: S.LinearLR(o, start_factor=1.0, end_factor=0.1, total_iters=6),
    "warmup_then_cosine": lambda S, o: S.SequentialLR(
        o, [S.LinearLR(o, start_factor=0.1, total_iters=5), S.CosineAnnealingLR(o, T_max=10)], milestones=[5]
    ),
    "warmup_then_step": lambda S, o: S.SequentialLR(
        o,
        [S.LinearLR(o, start_factor=1e-12, total_iters=3), S.StepLR(o, step_size=4, gamma=0.5)],
        milestones=[3],
    ),
}


@pytest.mark.parametrize("name", list(TORCH_SCHEDULES))
def test_schedules_match_torch(name):
    torch = pytest.importorskip("torch")
    import warnings

    w = torch.zeros(1, requires_grad=True)
    topt = torch.optim.SGD([w], lr=BASE_LR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tsched = TORCH_SCHEDULES[name](torch.optim.lr_scheduler, topt)
        want = []
        for _ in range(N_SCHEDULE):
            want.append(topt.param_groups[0]["lr"])
            topt.step()
            tsched.step()
    used, _ = lrs_used(SCHEDULES[name][0])
    np.testing.assert_allclose(used, want, rtol=1e-9, atol=1e-11)
