"""Weight initializers, drawn from the model's seeded generator.

Every initializer is called ``init(shape, rng, fans=None)`` and returns a float64 array.  The scaled ones
(Glorot/Xavier, He, LeCun) use ``fans = (n_in, n_out)``: the parameter's ``ParamSpec`` supplies them
(``spec.initialize(rng)``), so that the initializers know nothing about layer types; without them they are
derived from the shape as ``default_fans`` does (Keras' rule: a Dense weight (n_in, n_out)
gives (n_in, n_out), a channels-last conv kernel (kh, kw, C_in, C_out) gives (kh*kw*C_in, kh*kw*C_out), a
vector (n,) gives (n, n)).

| name | distribution |
|---|---|
| "zeros", "ones" | constant 0 / 1 |
| Constant(v) | constant v |
| "uniform" / RandomUniform(minval, maxval) | U[minval, maxval), default U[-0.05, 0.05) (Keras' RandomUniform) |
| "glorot_bengio_uniform" | U[-1/sqrt(n_in), 1/sqrt(n_in)] (torch.nn.Linear's default) |
| "xavier_uniform" (alias "glorot_uniform") | U[-a, a], a = sqrt(6 / (n_in + n_out)) |
| "xavier_normal" (alias "glorot_normal") | N(0, sqrt(2 / (n_in + n_out))) |
| "he_normal" | N(0, sqrt(2 / n_in)) |
| "he_uniform" | U[-a, a], a = sqrt(6 / n_in) |
| "lecun_normal" | N(0, sqrt(1 / n_in)) |
| "lecun_uniform" | U[-a, a], a = sqrt(3 / n_in) |
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from fastnn._typing import Config, NDArray
from fastnn._validation import check_number


def _fans(shape: Sequence[int], fans: Sequence[int] | None) -> tuple[int, int]:
    if fans is not None:
        n_in, n_out = (int(f) for f in fans)
        if n_in < 1 or n_out < 1:
            raise ValueError(f"initializer: fans must be >= 1, got {tuple(fans)}")
        return n_in, n_out
    return default_fans(shape)


def default_fans(shape: Sequence[int]) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight of this shape, laid out (..., n_in, n_out) as Keras lays out its kernels:
    (n,) -> (n, n); (n_in, n_out) -> (n_in, n_out); a channels-last conv kernel (kh, kw, C_in, C_out) ->
    (kh*kw*C_in, kh*kw*C_out), the receptive field times the channels in and out; () -> (1, 1)."""
    shape = tuple(shape)
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    field = int(np.prod(shape[:-2]))
    return field * shape[-2], field * shape[-1]


class Initializer:
    """Base class: ``init(shape, rng, fans=None) -> float64 array``; subclasses implement ``__call__``.
    ``fans`` is (fan_in, fan_out) (a ParamSpec's); the constant initializers ignore it."""
    name: ClassVar[str | None] = None

    def __call__(self, shape: Sequence[int], rng: np.random.Generator,
                 fans: Sequence[int] | None = None) -> NDArray[np.float64]:
        raise NotImplementedError

    def get_config(self) -> Config:
        return {"name": self.name}

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Zeros(Initializer):
    name = "zeros"

    def __call__(self, shape: Sequence[int], rng: np.random.Generator,
                 fans: Sequence[int] | None = None) -> NDArray[np.float64]:
        return np.zeros(shape)


class Ones(Initializer):
    name = "ones"

    def __call__(self, shape: Sequence[int], rng: np.random.Generator,
                 fans: Sequence[int] | None = None) -> NDArray[np.float64]:
        return np.ones(shape)


class Constant(Initializer):
    """Every element equal to `value`."""
    name = "constant"

    def __init__(self, value: float = 0.0) -> None:
        self.value = check_number("Constant", "value", value)

    def __call__(self, shape: Sequence[int], rng: np.random.Generator,
                 fans: Sequence[int] | None = None) -> NDArray[np.float64]:
        return np.full(shape, self.value)

    def get_config(self) -> Config:
        return {"name": self.name, "value": self.value}

    def __repr__(self) -> str:
        return f"Constant({self.value})"


class _Uniform(Initializer):
    def limit(self, n_in: int, n_out: int) -> float:
        raise NotImplementedError

    def __call__(self, shape: Sequence[int], rng: np.random.Generator,
                 fans: Sequence[int] | None = None) -> NDArray[np.float64]:
        a = self.limit(*_fans(shape, fans))
        return rng.uniform(-a, a, size=shape)


class RandomUniform(Initializer):
    """Uniform in [minval, maxval) whatever the fans: Keras' ``RandomUniform`` (default [-0.05, 0.05), its
    Embedding's ``embeddings_initializer="uniform"``)."""
    name = "uniform"

    def __init__(self, minval: float = -0.05, maxval: float = 0.05) -> None:
        self.minval = check_number("RandomUniform", "minval", minval)
        self.maxval = check_number("RandomUniform", "maxval", maxval)
        if not self.minval < self.maxval:
            raise ValueError(f"RandomUniform: minval must be < maxval, got {self.minval} and {self.maxval}")

    def __call__(self, shape: Sequence[int], rng: np.random.Generator,
                 fans: Sequence[int] | None = None) -> NDArray[np.float64]:
        return rng.uniform(self.minval, self.maxval, size=shape)

    def get_config(self) -> Config:
        return {"name": self.name, "minval": self.minval, "maxval": self.maxval}

    def __repr__(self) -> str:
        return f"RandomUniform({self.minval}, {self.maxval})"


class _Normal(Initializer):
    def std(self, n_in: int, n_out: int) -> float:
        raise NotImplementedError

    def __call__(self, shape: Sequence[int], rng: np.random.Generator,
                 fans: Sequence[int] | None = None) -> NDArray[np.float64]:
        return rng.normal(0.0, self.std(*_fans(shape, fans)), size=shape)


class GlorotBengioUniform(_Uniform):
    name = "glorot_bengio_uniform"

    def limit(self, n_in: int, n_out: int) -> float:
        return 1.0 / np.sqrt(n_in)


class XavierUniform(_Uniform):
    name = "xavier_uniform"

    def limit(self, n_in: int, n_out: int) -> float:
        return np.sqrt(6.0 / (n_in + n_out))


class XavierNormal(_Normal):
    name = "xavier_normal"

    def std(self, n_in: int, n_out: int) -> float:
        return np.sqrt(2.0 / (n_in + n_out))


class HeNormal(_Normal):
    name = "he_normal"

    def std(self, n_in: int, n_out: int) -> float:
        return np.sqrt(2.0 / n_in)


class HeUniform(_Uniform):
    name = "he_uniform"

    def limit(self, n_in: int, n_out: int) -> float:
        return np.sqrt(6.0 / n_in)


class LecunNormal(_Normal):
    name = "lecun_normal"

    def std(self, n_in: int, n_out: int) -> float:
        return np.sqrt(1.0 / n_in)


class LecunUniform(_Uniform):
    name = "lecun_uniform"

    def limit(self, n_in: int, n_out: int) -> float:
        return np.sqrt(3.0 / n_in)


# name -> class (every class listed has a name)
REGISTRY: dict[str, type[Initializer]] = {
    cls.name: cls for cls in (Zeros, Ones, RandomUniform, GlorotBengioUniform, XavierUniform, XavierNormal, HeNormal,
                              HeUniform, LecunNormal, LecunUniform) if cls.name is not None}
ALIASES = {"glorot_uniform": "xavier_uniform", "glorot_normal": "xavier_normal"}


def get(spec: str | Initializer, owner: str = "initializer") -> Initializer:
    """An Initializer from a name (see the module table) or an Initializer instance."""
    if isinstance(spec, Initializer):
        return spec
    if isinstance(spec, str):
        key = ALIASES.get(spec.lower(), spec.lower())
        if key == "constant":
            raise ValueError(f"{owner}: 'constant' needs a value: use fastnn.initializers.Constant(value)")
        if key not in REGISTRY:
            raise ValueError(f"{owner}: unknown initializer {spec!r}; known: {sorted(REGISTRY) + ['Constant(v)']}")
        return REGISTRY[key]()
    raise TypeError(f"{owner}: an initializer must be a name or a fastnn.initializers.Initializer, "
                    f"got {type(spec).__name__}")


def from_config(config: Config) -> Initializer:
    """An Initializer from ``get_config()``'s output ({"name": ..., and "value" for Constant})."""
    if not isinstance(config, dict) or not isinstance(config.get("name"), str):
        raise ValueError(f"initializers.from_config: expected a dict with a 'name', got {config!r}")
    if config["name"] == "constant":
        return Constant(config.get("value", 0.0))
    if config["name"] == "uniform":
        return RandomUniform(config.get("minval", -0.05), config.get("maxval", 0.05))
    return get(config["name"])
