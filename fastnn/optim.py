"""Optimizers.  Each is one compiled update over the model's whole flat parameter buffer (fastnn/_core/optim.pyx),
following the torch.optim class of the same name: same update rule, same defaults.

Weight decay: coupled (added to the gradient) for SGD, Adagrad, RMSprop and Adam; decoupled for AdamW.  It
applies to weights only by default; ``decay_bias=True`` makes biases and normalization parameters decay too
(torch's behaviour when it is given ``model.parameters()``).

Adding an optimizer: one kernel in optim.pyx, one subclass here with ``_state_names`` and ``_update``
(CONTRIBUTING.md, "Adding an optimizer").
"""
from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from fastnn._core import optim as _k
from fastnn._core._threads import get_num_threads
from fastnn._core.kinds import OPT
from fastnn._typing import Config, NDArray
from fastnn._validation import check_number


class Optimizer:
    """Base class: holds the hyperparameters and, once bound to a model, its state arrays."""
    # the compiled training plan's kind (an OPT member; csrc/fnn_kinds.h), None: not compiled
    kind: ClassVar[Any] = None

    def __init__(self, lr: float, weight_decay: float = 0.0, decay_bias: bool = False) -> None:
        name = type(self).__name__
        self._lr = check_number(name, "lr", lr, low=0.0)
        self.weight_decay = check_number(name, "weight_decay", weight_decay, low=0.0)
        if not isinstance(decay_bias, (bool, np.bool_)):
            raise TypeError(f"{name}: decay_bias must be a bool, got {type(decay_bias).__name__}")
        self.decay_bias = bool(decay_bias)
        self.step_count = 0
        self.state: dict[str, NDArray[Any]] = {}
        self._params = self._grads = None
        self._n_decay = 0
        self._owner = None      # a weak reference to the model this optimizer trains (see _claim)

    @property
    def lr(self) -> float:
        """The learning rate (settable: schedules and callbacks change it between steps)."""
        return self._lr

    @lr.setter
    def lr(self, value: float) -> None:
        self._lr = check_number(type(self).__name__, "lr", value, low=0.0)

    def owner(self) -> Any:
        """The model this optimizer trains (the last one compiled with it), or None."""
        return None if self._owner is None else self._owner()

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_owner"] = None          # a weak reference does not pickle; an unpickled copy trains no model yet
        return state

    def _claim(self, model, owner="compile"):
        """Make `model` the one model this optimizer trains (``Model.compile`` calls it before changing anything).

        An optimizer holds one model's state (moments, step count) over that model's flat buffers, so it cannot
        serve two models: while another model still has it as its optimizer, this raises ValueError naming both
        (the other model keeps it).  A model compiled since with another optimizer releases it."""
        other = self.owner()
        if other is not None and other is not model and other.optimizer is self:
            name = type(self).__name__
            raise ValueError(f"{owner}: this {name} is already the optimizer of model {other.name!r}; an optimizer "
                             f"holds the state of one model (moments, step count), so it cannot also train "
                             f"{model.name!r}: give each model its own optimizer (e.g. optimizer={name}(lr=...) or "
                             f"a name such as {name.lower()!r})")
        self._owner = weakref.ref(model)

    def _bind(self, params, grads, n_decay):
        """Attach to a model's flat buffers; state is kept when they are the same buffers as before."""
        same = self._params is params and self._grads is grads
        self._params, self._grads = params, grads
        self._n_decay = params.size if self.decay_bias else int(n_decay)
        if not same:
            self.step_count = 0
            self.state = {k: np.zeros_like(params) for k in self._state_names()}

    def _rebind(self, params, grads, n_decay, moves):
        """Attach to new buffers after the model's parameters were re-ordered (``ParameterTable.relayout``: a
        layer was frozen or unfrozen) and carry the state: ``moves`` lists (old offset, new offset, size) of
        the parameters trainable before and after.  A parameter that becomes trainable starts with fresh state
        (as a new parameter would); the step count is kept."""
        old_state, step_count = self.state, self.step_count
        self._params = self._grads = None
        self._bind(params, grads, n_decay)
        for key, new in self.state.items():
            old = old_state.get(key)
            if old is None:
                continue
            for o, n, size in moves:
                new[n:n + size] = old[o:o + size]
        self.step_count = step_count

    def _state_names(self):
        return []

    def step(self) -> None:
        """Apply one update to the bound parameters with the gradients in the bound gradient buffer."""
        if self._params is None:
            raise RuntimeError(f"{type(self).__name__}: not attached to a model (call model.compile first)")
        self.step_count += 1
        self._update(get_num_threads())

    def _update(self, n_threads):
        raise NotImplementedError

    def get_config(self) -> Config:
        return {"name": type(self).__name__, "lr": self.lr, "weight_decay": self.weight_decay,
                "decay_bias": self.decay_bias}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "name")
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum: torch.optim.SGD.

    g = grad + weight_decay * p; buf = momentum * buf + (1 - dampening) * g (buf = g at the first step);
    g = g + momentum * buf if nesterov else buf; p -= lr * g.
    """
    kind = OPT.SGD

    def __init__(self, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0, decay_bias: bool = False) -> None:
        super().__init__(lr, weight_decay, decay_bias)
        self.momentum = check_number("SGD", "momentum", momentum, low=0.0)
        self.dampening = check_number("SGD", "dampening", dampening)
        if not isinstance(nesterov, (bool, np.bool_)):
            raise TypeError(f"SGD: nesterov must be a bool, got {type(nesterov).__name__}")
        self.nesterov = bool(nesterov)
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("SGD: nesterov momentum requires momentum > 0 and dampening = 0")

    def _state_names(self):
        return ["momentum_buffer"] if self.momentum != 0 else []

    def _update(self, n_threads):
        _k.sgd_step(self._params, self._grads, self.state.get("momentum_buffer"), self.lr, self.momentum,
                    self.dampening, self.weight_decay, self.nesterov, self.step_count == 1, self._n_decay, n_threads)

    def get_config(self) -> Config:
        return {**super().get_config(), "momentum": self.momentum, "dampening": self.dampening,
                "nesterov": self.nesterov}


class Adagrad(Optimizer):
    """Adagrad: torch.optim.Adagrad (lr_decay, initial_accumulator_value, eps=1e-10)."""
    kind = OPT.ADAGRAD

    def __init__(self, lr: float = 0.01, lr_decay: float = 0.0, weight_decay: float = 0.0,
                 initial_accumulator_value: float = 0.0, eps: float = 1e-10, decay_bias: bool = False) -> None:
        super().__init__(lr, weight_decay, decay_bias)
        self.lr_decay = check_number("Adagrad", "lr_decay", lr_decay, low=0.0)
        self.initial_accumulator_value = check_number("Adagrad", "initial_accumulator_value",
                                                      initial_accumulator_value, low=0.0)
        self.eps = check_number("Adagrad", "eps", eps, low=0.0)

    def _state_names(self):
        return ["sum"]

    def _bind(self, params, grads, n_decay):
        fresh = not (self._params is params and self._grads is grads)
        super()._bind(params, grads, n_decay)
        if fresh:
            self.state["sum"][...] = self.initial_accumulator_value

    def _update(self, n_threads):
        clr = self.lr / (1 + (self.step_count - 1) * self.lr_decay)
        _k.adagrad_step(self._params, self._grads, self.state["sum"], clr, self.weight_decay, self.eps,
                        self._n_decay, n_threads)

    def get_config(self) -> Config:
        return {**super().get_config(), "lr_decay": self.lr_decay,
                "initial_accumulator_value": self.initial_accumulator_value, "eps": self.eps}


class RMSprop(Optimizer):
    """RMSprop: torch.optim.RMSprop (alpha=0.99, eps=1e-8, momentum, centered)."""
    kind = OPT.RMSPROP

    def __init__(self, lr: float = 0.01, alpha: float = 0.99, eps: float = 1e-8, weight_decay: float = 0.0,
                 momentum: float = 0.0, centered: bool = False, decay_bias: bool = False) -> None:
        super().__init__(lr, weight_decay, decay_bias)
        self.alpha = check_number("RMSprop", "alpha", alpha, low=0.0)
        self.eps = check_number("RMSprop", "eps", eps, low=0.0)
        self.momentum = check_number("RMSprop", "momentum", momentum, low=0.0)
        if not isinstance(centered, (bool, np.bool_)):
            raise TypeError(f"RMSprop: centered must be a bool, got {type(centered).__name__}")
        self.centered = bool(centered)

    def _state_names(self):
        names = ["square_avg"]
        if self.centered:
            names.append("grad_avg")
        if self.momentum > 0:
            names.append("momentum_buffer")
        return names

    def _update(self, n_threads):
        _k.rmsprop_step(self._params, self._grads, self.state["square_avg"], self.state.get("grad_avg"),
                        self.state.get("momentum_buffer"), self.lr, self.alpha, self.eps, self.weight_decay,
                        self.momentum, self._n_decay, n_threads)

    def get_config(self) -> Config:
        return {**super().get_config(), "alpha": self.alpha, "eps": self.eps, "momentum": self.momentum,
                "centered": self.centered}


class Adam(Optimizer):
    """Adam: torch.optim.Adam (betas=(0.9, 0.999), eps=1e-8, coupled weight decay, amsgrad)."""
    kind = OPT.ADAM
    _decoupled = False

    def __init__(self, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, amsgrad: bool = False, decay_bias: bool = False) -> None:
        super().__init__(lr, weight_decay, decay_bias)
        name = type(self).__name__
        if isinstance(betas, (str, bytes)) or not hasattr(betas, "__len__") or len(betas) != 2:
            raise TypeError(f"{name}: betas must be a pair of numbers, got {betas!r}")
        self.betas = (check_number(name, "betas[0]", betas[0], low=0.0, high=1.0, high_open=True),
                      check_number(name, "betas[1]", betas[1], low=0.0, high=1.0, high_open=True))
        self.eps = check_number(name, "eps", eps, low=0.0)
        if not isinstance(amsgrad, (bool, np.bool_)):
            raise TypeError(f"{name}: amsgrad must be a bool, got {type(amsgrad).__name__}")
        self.amsgrad = bool(amsgrad)

    def _state_names(self):
        return ["exp_avg", "exp_avg_sq"] + (["max_exp_avg_sq"] if self.amsgrad else [])

    def _update(self, n_threads):
        _k.adam_step(self._params, self._grads, self.state["exp_avg"], self.state["exp_avg_sq"],
                     self.state.get("max_exp_avg_sq"), self.lr, self.betas[0], self.betas[1], self.eps,
                     self.weight_decay, self._decoupled, self.step_count, self._n_decay, n_threads)

    def get_config(self) -> Config:
        return {**super().get_config(), "betas": list(self.betas), "eps": self.eps, "amsgrad": self.amsgrad}


class AdamW(Adam):
    """AdamW: Adam with decoupled weight decay (p *= 1 - lr * weight_decay), default 0.01: torch.optim.AdamW."""
    _decoupled = True

    def __init__(self, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01, amsgrad: bool = False, decay_bias: bool = False) -> None:
        super().__init__(lr, betas, eps, weight_decay, amsgrad, decay_bias)


# name -> class (each constructible with its defaults)
REGISTRY: dict[str, Callable[[], Optimizer]] = {
    "sgd": SGD, "adagrad": Adagrad, "rmsprop": RMSprop, "adam": Adam, "adamw": AdamW}


def get(spec: str | Optimizer) -> Optimizer:
    """An Optimizer from a name (with its defaults) or an Optimizer instance."""
    if isinstance(spec, Optimizer):
        return spec
    if isinstance(spec, str):
        cls = REGISTRY.get(spec.lower())
        if cls is None:
            raise ValueError(f"compile: unknown optimizer {spec!r}; known: {sorted(REGISTRY)}")
        return cls()
    raise TypeError(f"compile: optimizer must be a name or a fastnn.optim.Optimizer, got {type(spec).__name__}")
