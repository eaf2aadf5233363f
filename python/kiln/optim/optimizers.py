"""Optimizers, as torch.optim. ``opt.updates(loss)`` adds the backward pass and one fused C++
update op per parameter to the graph and returns the (variable, new value) pairs for
``kn.function(..., updates=...)``. Slots (momentum, Adam's moments) and the step counter are
engine variables: they live across calls, save with the model, and are read and written
through ``state_dict()`` / ``load_state_dict()`` with PyTorch's keys."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .. import ops
from .._graph import Error, Parameter, Tensor, builds
from ..function import grad
from ..functional import _apply
from .lr_scheduler import Schedule


def clip_grad_norm(grads: Sequence[Tensor], max_norm: float, eps: float = 1e-6) -> list[Tensor]:
    """The gradients scaled by min(1, max_norm / global L2 norm), as torch's clip_grad_norm_."""
    total = None
    for g in grads:
        s = ops.sum(ops.square(ops.cast(g, "float64") if g.dtype != grads[0].dtype else g))
        total = s if total is None else total + ops.cast(s, total.dtype)
    scale = ops.minimum(max_norm / (ops.sqrt(total) + eps), 1.0)
    return [g * ops.cast(scale, g.dtype) for g in grads]


def clip_grad_value(grads: Sequence[Tensor], clip_value: float) -> list[Tensor]:
    """Each gradient clipped elementwise to [-clip_value, clip_value]."""
    return [ops.clip(g, -clip_value, clip_value) for g in grads]


class Optimizer:
    """Base class: parameters, a base lr with an optional schedule, a step counter, slots."""

    _slots: tuple = ()
    _op = ""

    def __init__(
        self, params, lr: float, max_norm: float | None = None, schedule: Schedule | None = None
    ) -> None:
        self.params: list[Parameter] = list(params.parameters() if hasattr(params, "parameters") else params)
        if not self.params:
            raise Error(f"{type(self).__name__}: got an empty parameter list")
        for p in self.params:
            if not isinstance(p, Parameter):
                raise Error(f"{type(self).__name__}: parameters must be kn.Parameter, got {type(p).__name__}")
            if p.dtype.kind != "f":
                raise Error(
                    f"{type(self).__name__}: parameter '{p._var_name}' has dtype {p.dtype}; only floats train"
                )
        if lr < 0:
            raise Error(f"{type(self).__name__}: invalid learning rate {lr}")
        self.lr, self.max_norm, self.schedule = lr, max_norm, schedule
        name = type(self).__name__.lower()
        self.step_count = Parameter(np.zeros((), np.int64), name=f"{name}.step", trainable=False)
        self.state = [
            {slot: Parameter(self._slot_init(slot, p), name=f"{p._var_name}.{slot}", dtype=p.dtype, trainable=False)
             for slot in self._slots}
            for p in self.params
        ]  # fmt: skip

    def _slot_init(self, slot: str, p: Parameter) -> np.ndarray:
        return np.zeros(p.shape, p.dtype)

    def _attrs(self) -> dict:
        raise NotImplementedError

    @builds
    def updates(
        self,
        loss: Tensor,
        clip_norm: float | None = None,
        clip_value: float | None = None,
        grads: Sequence[Tensor] | None = None,
    ) -> list[tuple[Tensor, Tensor]]:
        """(variable, new value) pairs for one step on `loss` (a scalar): gradients (or the
        given ones), optional clipping by value (clip_value) and then by global norm (clip_norm), the schedule's lr, the
        update of every parameter and slot, and the step counter."""
        gs = list(grads) if grads is not None else grad(loss, self.params)
        if clip_value is not None:
            gs = clip_grad_value(gs, clip_value)
        if clip_norm is not None:
            gs = clip_grad_norm(gs, clip_norm)
        t = ops.cast(self.step_count, "float64")  # updates done before this one
        lr = self.lr * self.schedule.factor(t) if self.schedule is not None else ops._t(self.lr, t)
        new_step = self.step_count + 1
        pairs = []
        for p, g, slots in zip(self.params, gs, self.state):
            inputs = (
                [p, g]
                + [slots[s] for s in self._slots]
                + [ops.cast(lr, p.dtype), ops.cast(new_step, p.dtype)]
            )
            outs = _apply(self._op, inputs, **self._attrs())
            new_p = outs[0]
            if self.max_norm is not None and p.ndim >= 2:
                new_p = _renorm_rows(new_p, self.max_norm)
            pairs.append((p, new_p))
            pairs.extend((slots[s], o) for s, o in zip(self._slots, outs[1:]))
        pairs.append((self.step_count, new_step))
        return pairs

    # ---- state ----

    def _torch_slots(self) -> dict:
        return {s: s for s in self._slots}

    def state_dict(self) -> dict:
        """{"state": {i: {"step": ..., slot: array}}, "param_groups": [hyperparameters]}, the
        layout of torch.optim's state_dict with numpy arrays."""
        step = np.asarray(self.step_count.numpy(), np.float32)
        state = {}
        for i, slots in enumerate(self.state):
            entry = {"step": step.copy()}
            entry.update({name: slots[s].numpy() for s, name in self._torch_slots().items()})
            state[i] = entry
        group = {"lr": self.lr, "params": list(range(len(self.params)))}
        group.update(self._hyper())
        return {"state": state, "param_groups": [group]}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restores the step counter and slots saved by state_dict() (or converted from torch)."""
        state = state_dict["state"]
        if set(state) - set(range(len(self.params))):
            raise Error(
                f"load_state_dict: state for {len(state)} parameters, the optimizer has {len(self.params)}"
            )
        for i, entry in state.items():
            # torch's SGD keeps no step: a momentum buffer means at least one step was taken
            step = entry.get("step", 1 if any(name in entry for name in self._torch_slots().values()) else 0)
            self.step_count.assign(np.asarray(step).astype(np.int64))
            for s, name in self._torch_slots().items():
                if name in entry:
                    self.state[i][s].assign(np.asarray(entry[name]))

    def _hyper(self) -> dict:
        return {}


def _renorm_rows(w: Tensor, max_norm: float) -> Tensor:
    """Rows (all but the first axis) rescaled to an L2 norm of at most max_norm."""
    axes = tuple(range(1, w.ndim))
    norms = ops.sqrt(ops.sum(ops.square(w), axis=axes, keepdims=True))
    return w * ops.minimum(max_norm / (norms + 1e-7), 1.0)


class SGD(Optimizer):
    """SGD with optional momentum (dampening, nesterov) and L2 weight decay, as torch."""

    _slots = ("momentum_buffer",)
    _op = "sgd_update"

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, **kw) -> None:  # fmt: skip
        if nesterov and (momentum <= 0 or dampening != 0):
            raise Error("SGD: nesterov needs momentum > 0 and dampening 0")
        self.momentum, self.dampening, self.weight_decay, self.nesterov = (
            momentum,
            dampening,
            weight_decay,
            nesterov,
        )
        super().__init__(params, lr, **kw)

    def _attrs(self):
        return dict(momentum=float(self.momentum), dampening=float(self.dampening),
                    weight_decay=float(self.weight_decay), nesterov=int(self.nesterov))  # fmt: skip

    def _hyper(self):
        return dict(momentum=self.momentum, dampening=self.dampening, weight_decay=self.weight_decay,
                    nesterov=self.nesterov)  # fmt: skip


class Adam(Optimizer):
    """Adam with bias correction, optional amsgrad and L2 weight decay, as torch."""

    _slots = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    _op = "adam_update"
    _decoupled = False

    def __init__(self, params, lr: float = 1e-3, betas: tuple = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, amsgrad: bool = False, **kw) -> None:  # fmt: skip
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise Error(f"{type(self).__name__}: betas must be in [0, 1), got {betas}")
        self.betas, self.eps, self.weight_decay, self.amsgrad = tuple(betas), eps, weight_decay, amsgrad
        super().__init__(params, lr, **kw)

    def _attrs(self):
        return dict(beta1=float(self.betas[0]), beta2=float(self.betas[1]), eps=float(self.eps),
                    weight_decay=float(self.weight_decay), amsgrad=int(self.amsgrad),
                    decoupled=int(self._decoupled))  # fmt: skip

    def _torch_slots(self):
        keep = self._slots if self.amsgrad else self._slots[:2]
        return {s: s for s in keep}

    def _hyper(self):
        return dict(betas=self.betas, eps=self.eps, weight_decay=self.weight_decay, amsgrad=self.amsgrad)


class AdamW(Adam):
    """Adam with decoupled weight decay (default 0.01), as torch."""

    _decoupled = True

    def __init__(self, params, lr: float = 1e-3, betas: tuple = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False, **kw) -> None:  # fmt: skip
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, **kw)


class Adagrad(Optimizer):
    """Adagrad with lr decay, weight decay and an initial accumulator value, as torch."""

    _slots = ("sum",)
    _op = "adagrad_update"

    def __init__(self, params, lr: float = 1e-2, lr_decay: float = 0.0, weight_decay: float = 0.0,
                 initial_accumulator_value: float = 0.0, eps: float = 1e-10, **kw) -> None:  # fmt: skip
        self.lr_decay, self.weight_decay, self.eps = lr_decay, weight_decay, eps
        self.initial_accumulator_value = initial_accumulator_value
        super().__init__(params, lr, **kw)

    def _slot_init(self, slot, p):
        return np.full(p.shape, self.initial_accumulator_value, p.dtype)

    def _attrs(self):
        return dict(lr_decay=float(self.lr_decay), weight_decay=float(self.weight_decay), eps=float(self.eps))

    def _hyper(self):
        return dict(lr_decay=self.lr_decay, weight_decay=self.weight_decay, eps=self.eps,
                    initial_accumulator_value=self.initial_accumulator_value)  # fmt: skip


class RMSprop(Optimizer):
    """RMSprop with optional momentum and centering, as torch."""

    _slots = ("square_avg", "momentum_buffer", "grad_avg")
    _op = "rmsprop_update"

    def __init__(self, params, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8, weight_decay: float = 0.0,
                 momentum: float = 0.0, centered: bool = False, **kw) -> None:  # fmt: skip
        self.alpha, self.eps, self.weight_decay, self.momentum, self.centered = (
            alpha,
            eps,
            weight_decay,
            momentum,
            centered,
        )
        super().__init__(params, lr, **kw)

    def _attrs(self):
        return dict(alpha=float(self.alpha), eps=float(self.eps), weight_decay=float(self.weight_decay),
                    momentum=float(self.momentum), centered=int(self.centered))  # fmt: skip

    def _torch_slots(self):
        keep = (
            ["square_avg"]
            + (["momentum_buffer"] if self.momentum > 0 else [])
            + (["grad_avg"] if self.centered else [])
        )
        return {s: s for s in keep}

    def _hyper(self):
        return dict(alpha=self.alpha, eps=self.eps, weight_decay=self.weight_decay, momentum=self.momentum,
                    centered=self.centered)  # fmt: skip


class LBFGS:
    """L-BFGS for full-batch problems: ``LBFGS(params).minimize(loss, feed)`` compiles the loss
    and its gradients once, then iterates the two-loop recursion with a backtracking (Armijo)
    line search, writing the parameters in place. Returns the final loss."""

    def __init__(self, params, lr: float = 1.0, max_iter: int = 100, history_size: int = 10,
                 tolerance_grad: float = 1e-7, tolerance_change: float = 1e-9) -> None:  # fmt: skip
        self.params = list(params.parameters() if hasattr(params, "parameters") else params)
        self.lr, self.max_iter, self.history_size = lr, max_iter, history_size
        self.tolerance_grad, self.tolerance_change = tolerance_grad, tolerance_change

    def minimize(self, loss: Tensor, feed: dict | None = None) -> float:
        from ..function import Function

        feed = dict(feed or {})
        f = Function(list(feed.keys()), [loss] + grad(loss, self.params))
        shapes = [p.shape for p in self.params]
        sizes = [int(np.prod(s)) for s in shapes]

        def evaluate(x):
            for p, chunk, s in zip(self.params, np.split(x, np.cumsum(sizes)[:-1]), shapes):
                p.assign(chunk.reshape(s))
            out = f(*feed.values())
            return float(out[0]), np.concatenate([np.asarray(g, np.float64).ravel() for g in out[1:]])

        x = np.concatenate([p.numpy().astype(np.float64).ravel() for p in self.params])
        fx, g = evaluate(x)
        s_hist, y_hist = [], []
        for _ in range(self.max_iter):
            if np.abs(g).max() <= self.tolerance_grad:
                break
            q = g.copy()
            alphas = []
            for s, y in reversed(list(zip(s_hist, y_hist))):
                a = s @ q / (y @ s)
                alphas.append(a)
                q -= a * y
            if y_hist:
                q *= (s_hist[-1] @ y_hist[-1]) / (y_hist[-1] @ y_hist[-1])
            for (s, y), a in zip(zip(s_hist, y_hist), reversed(alphas)):
                q += s * (a - (y @ q) / (y @ s))
            d = -q
            step, slope = self.lr, g @ d
            if slope >= 0:  # not a descent direction: restart from the gradient
                d, slope, s_hist, y_hist = -g, -(g @ g), [], []
            while True:
                fn, gn = evaluate(x + step * d)
                if fn <= fx + 1e-4 * step * slope or step < 1e-10:
                    break
                step *= 0.5
            s_new, y_new = step * d, gn - g
            if y_new @ s_new > 1e-10:
                s_hist.append(s_new)
                y_hist.append(y_new)
                s_hist, y_hist = s_hist[-self.history_size :], y_hist[-self.history_size :]
            else:  # no curvature information: the old history would repeat the same step
                s_hist, y_hist = [], []
            x, converged = x + s_new, abs(fn - fx) < self.tolerance_change
            fx, g = fn, gn
            if converged:
                break
        evaluate(x)
        return fx
