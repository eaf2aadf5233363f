"""Learning-rate schedules evaluated inside the compiled training step (so they run in C++ and in
saved programs too). A schedule maps t, the number of updates done before this one, to a factor
of the optimizer's base lr; ``value(t)`` gives the same in numpy for checks and plots.

Use one either as the optimizer's lr, ``SGD(params, lr=0.1 * StepLR(1000, 0.5))`` style is not
needed: write ``StepLR(opt, step_size=1000, gamma=0.5)`` (PyTorch's form) before
``opt.updates(loss)``, or pass ``schedule=`` to the optimizer. Steps count optimizer updates
(iterations), not epochs: multiply by the batches per epoch for epoch-based schedules."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .. import ops
from .._graph import Error, Tensor


class Schedule:
    """A factor of the base lr as a function of t (a float tensor, or a number in value())."""

    def factor(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def value(self, t: float) -> float:
        raise NotImplementedError

    def __init__(self, optimizer=None) -> None:
        if optimizer is not None:
            optimizer.schedule = self


class StepLR(Schedule):
    """gamma ** floor(t / step_size)."""

    def __init__(self, optimizer=None, step_size: int = 1, gamma: float = 0.1) -> None:
        self.step_size, self.gamma = step_size, gamma
        super().__init__(optimizer)

    def factor(self, t):
        return ops.pow(self.gamma, ops.floor(t / float(self.step_size)))

    def value(self, t):
        return self.gamma ** math.floor(t / self.step_size)


class MultiStepLR(Schedule):
    """gamma ** (number of milestones <= t)."""

    def __init__(self, optimizer=None, milestones: Sequence[int] = (), gamma: float = 0.1) -> None:
        self.milestones, self.gamma = sorted(milestones), gamma
        super().__init__(optimizer)

    def factor(self, t):
        passed = None
        for m in self.milestones:
            term = ops.cast(t >= float(m), t.dtype)
            passed = term if passed is None else passed + term
        return ops.pow(self.gamma, passed) if passed is not None else ops.ones_like(t)

    def value(self, t):
        return self.gamma ** sum(t >= m for m in self.milestones)


class ExponentialLR(Schedule):
    """gamma ** t."""

    def __init__(self, optimizer=None, gamma: float = 0.99) -> None:
        self.gamma = gamma
        super().__init__(optimizer)

    def factor(self, t):
        return ops.pow(self.gamma, t)

    def value(self, t):
        return self.gamma**t


class CosineAnnealingLR(Schedule):
    """eta_min/lr + (1 - eta_min/lr) (1 + cos(pi t / T_max)) / 2; eta_min is absolute, as torch."""

    def __init__(self, optimizer=None, T_max: int = 1, eta_min: float = 0.0) -> None:
        self.T_max, self.eta_min = T_max, eta_min
        self.base = optimizer.lr if optimizer is not None else 1.0
        super().__init__(optimizer)

    def factor(self, t):
        m = self.eta_min / self.base
        return m + (1 - m) * (1.0 + ops.cos(t * (math.pi / self.T_max))) * 0.5

    def value(self, t):
        m = self.eta_min / self.base
        return m + (1 - m) * (1 + math.cos(math.pi * t / self.T_max)) / 2


class CosineAnnealingWarmRestarts(Schedule):
    """Cosine annealing restarted every T_0 steps, the period growing by T_mult."""

    def __init__(self, optimizer=None, T_0: int = 1, T_mult: int = 1, eta_min: float = 0.0) -> None:
        if T_0 < 1 or T_mult < 1:
            raise Error(f"CosineAnnealingWarmRestarts: need T_0 >= 1 and T_mult >= 1, got {T_0}, {T_mult}")
        self.T_0, self.T_mult, self.eta_min = T_0, T_mult, eta_min
        self.base = optimizer.lr if optimizer is not None else 1.0
        super().__init__(optimizer)

    def _cycle(self, t, floor, log, pow):
        if self.T_mult == 1:
            i = floor(t / float(self.T_0))
            return t - i * float(self.T_0), self.T_0 + t * 0.0
        i = floor(log(t * ((self.T_mult - 1) / self.T_0) + 1.0) / math.log(self.T_mult))
        start = (pow(float(self.T_mult), i) - 1.0) * (self.T_0 / (self.T_mult - 1))
        return t - start, pow(float(self.T_mult), i) * float(self.T_0)

    def factor(self, t):
        cur, period = self._cycle(t, ops.floor, ops.log, ops.pow)
        m = self.eta_min / self.base
        return m + (1 - m) * (1.0 + ops.cos(cur * math.pi / period)) * 0.5

    def value(self, t):
        cur, period = self._cycle(float(t), math.floor, math.log, math.pow)
        m = self.eta_min / self.base
        return m + (1 - m) * (1 + math.cos(math.pi * cur / period)) / 2


class LinearLR(Schedule):
    """From start_factor to end_factor linearly over total_iters steps, then constant."""

    def __init__(
        self, optimizer=None, start_factor: float = 1 / 3, end_factor: float = 1.0, total_iters: int = 5
    ) -> None:
        self.start, self.end, self.total = start_factor, end_factor, total_iters
        super().__init__(optimizer)

    def factor(self, t):
        return self.start + (self.end - self.start) * ops.minimum(t, float(self.total)) / float(self.total)

    def value(self, t):
        return self.start + (self.end - self.start) * min(t, self.total) / self.total


class InverseSqrtLR(Schedule):
    """sqrt(warmup / max(t, warmup)): constant for warmup steps, then 1/sqrt(t) decay."""

    def __init__(self, optimizer=None, warmup_steps: int = 1) -> None:
        self.warmup = warmup_steps
        super().__init__(optimizer)

    def factor(self, t):
        return ops.rsqrt(ops.maximum(t, float(self.warmup)) / float(self.warmup))

    def value(self, t):
        return math.sqrt(self.warmup / max(t, self.warmup))


class InverseTimeLR(Schedule):
    """1 / (1 + decay * t): CS231n's 1/t decay."""

    def __init__(self, optimizer=None, decay: float = 1e-3) -> None:
        self.decay = decay
        super().__init__(optimizer)

    def factor(self, t):
        return 1.0 / (t * self.decay + 1.0)

    def value(self, t):
        return 1 / (1 + self.decay * t)


class LinearWarmup(Schedule):
    """A linear ramp from start_factor to 1 over warmup_steps, times another schedule after it
    (which then sees t counted from the end of the warmup)."""

    def __init__(
        self, optimizer=None, warmup_steps: int = 1, after: Schedule | None = None, start_factor: float = 0.0
    ):
        self.warmup, self.after, self.start = warmup_steps, after, start_factor
        super().__init__(optimizer)

    def factor(self, t):
        ramp = self.start + (1 - self.start) * ops.minimum(t / float(self.warmup), 1.0)
        if self.after is None:
            return ramp
        return ramp * self.after.factor(ops.maximum(t - float(self.warmup), 0.0))

    def value(self, t):
        ramp = self.start + (1 - self.start) * min(t / self.warmup, 1.0)
        return ramp * (self.after.value(max(t - self.warmup, 0)) if self.after else 1.0)


def values(schedule: Schedule, steps: int) -> np.ndarray:
    """The factors of the first `steps` updates (for plots and checks)."""
    return np.array([schedule.value(t) for t in range(steps)])
