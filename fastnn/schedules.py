"""Learning-rate schedules: ``model.compile(..., lr_schedule=fnn.schedules.Cosine(total_epochs=30))``.

A schedule maps a time index t (the epoch, counted from 0; or the optimizer step when ``per_step=True``) and
the base learning rate (the optimizer's ``lr`` when the model was compiled) to a learning rate, which the
model writes to ``optimizer.lr`` at the start of every epoch (or before every step).  The formulas are the
closed forms of the torch.optim.lr_scheduler classes of the same idea:

| schedule | lr(t) | torch |
|---|---|---|
| ``Constant()`` | base | ConstantLR(factor=1) |
| ``Step(step_size, gamma=0.1)`` | base * gamma ** (t // step_size) | StepLR |
| ``Exponential(gamma)`` | base * gamma ** t | ExponentialLR |
| ``Cosine(total_epochs, eta_min=0)`` | eta_min + (base - eta_min) * (1 + cos(pi t / total_epochs)) / 2 | CosineAnnealingLR (closed form; past total_epochs it continues the cosine, as torch's does) |
| ``LinearWarmup(warmup, after=None)`` | base * (t + 1) / warmup for t < warmup, then after(t - warmup) (base if None) | LinearLR(start_factor=1/warmup, total_iters=warmup-1) chained with SequentialLR |

With ``per_step=True``, t counts optimizer steps (``optimizer.step_count`` before the step) and the
lengths (``step_size``, ``total_epochs``, ``warmup``) are in steps.
"""  # noqa: E501  (a markdown table: its rows cannot be wrapped)
from __future__ import annotations

import math

import numpy as np

from fastnn._typing import Config
from fastnn._validation import check_number


class Schedule:
    """Base class: ``schedule(t, base_lr) -> lr``; subclasses implement ``_lr(t, base_lr)``."""

    def __init__(self, per_step: bool = False) -> None:
        if not isinstance(per_step, (bool, np.bool_)):
            raise TypeError(f"{type(self).__name__}: per_step must be a bool, got {type(per_step).__name__}")
        self.per_step = bool(per_step)

    def __call__(self, t: int, base_lr: float) -> float:
        t = check_number(type(self).__name__, "t", t, low=0, integer=True)
        base_lr = check_number(type(self).__name__, "base_lr", base_lr, low=0.0)
        return float(self._lr(t, base_lr))

    def _lr(self, t: int, base_lr: float) -> float:
        raise NotImplementedError

    def get_config(self) -> Config:
        return {"name": type(self).__name__, "per_step": self.per_step}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "name")
        return f"{type(self).__name__}({args})"


class Constant(Schedule):
    """lr = base_lr."""

    def _lr(self, t: int, base_lr: float) -> float:
        return base_lr


class Step(Schedule):
    """lr = base_lr * gamma ** (t // step_size) (torch StepLR)."""

    def __init__(self, step_size: int, gamma: float = 0.1, per_step: bool = False) -> None:
        super().__init__(per_step)
        self.step_size = check_number("Step", "step_size", step_size, low=1, integer=True)
        self.gamma = check_number("Step", "gamma", gamma, low=0.0)

    def _lr(self, t: int, base_lr: float) -> float:
        return base_lr * self.gamma ** (t // self.step_size)

    def get_config(self) -> Config:
        return {**super().get_config(), "step_size": self.step_size, "gamma": self.gamma}


class Exponential(Schedule):
    """lr = base_lr * gamma ** t (torch ExponentialLR)."""

    def __init__(self, gamma: float, per_step: bool = False) -> None:
        super().__init__(per_step)
        self.gamma = check_number("Exponential", "gamma", gamma, low=0.0)

    def _lr(self, t: int, base_lr: float) -> float:
        return base_lr * self.gamma ** t

    def get_config(self) -> Config:
        return {**super().get_config(), "gamma": self.gamma}


class Cosine(Schedule):
    """lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * t / total_epochs)) / 2 (torch CosineAnnealingLR's
    closed form): base_lr at t = 0, eta_min at t = total_epochs."""

    def __init__(self, total_epochs: int, eta_min: float = 0.0, per_step: bool = False) -> None:
        super().__init__(per_step)
        self.total_epochs = check_number("Cosine", "total_epochs", total_epochs, low=1, integer=True)
        self.eta_min = check_number("Cosine", "eta_min", eta_min, low=0.0)

    def _lr(self, t: int, base_lr: float) -> float:
        return self.eta_min + (base_lr - self.eta_min) * (1 + math.cos(math.pi * t / self.total_epochs)) / 2

    def get_config(self) -> Config:
        return {**super().get_config(), "total_epochs": self.total_epochs, "eta_min": self.eta_min}


class LinearWarmup(Schedule):
    """lr = base_lr * (t + 1) / warmup for t < warmup (reaching base_lr at t = warmup - 1), then
    ``after(t - warmup, base_lr)`` (another schedule, its time counted from the end of the warm-up), or
    base_lr when ``after`` is None."""

    def __init__(self, warmup: int, after: Schedule | None = None, per_step: bool = False) -> None:
        super().__init__(per_step)
        self.warmup = check_number("LinearWarmup", "warmup", warmup, low=1, integer=True)
        if after is not None and not isinstance(after, Schedule):
            raise TypeError(f"LinearWarmup: after must be a Schedule or None, got {type(after).__name__}")
        self.after = after

    def _lr(self, t: int, base_lr: float) -> float:
        if t < self.warmup:
            return base_lr * (t + 1) / self.warmup
        return base_lr if self.after is None else self.after(t - self.warmup, base_lr)

    def get_config(self) -> Config:
        return {**super().get_config(), "warmup": self.warmup,
                "after": None if self.after is None else self.after.get_config()}


CLASSES: dict[str, type[Schedule]] = {cls.__name__: cls for cls in (Constant, Step, Exponential, Cosine, LinearWarmup)}


def from_config(config: Config) -> Schedule:
    """A schedule from ``get_config()``'s output."""
    config = dict(config)
    cls = CLASSES.get(config.pop("name", None))
    if cls is None:
        raise ValueError(f"schedules.from_config: unknown schedule in {config!r}")
    if cls is LinearWarmup and config.get("after") is not None:
        config["after"] = from_config(config["after"])
    return cls(**config)
