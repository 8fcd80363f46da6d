"""Weight initializers, drawn from the model's seeded generator.

Fan-in `n_in` and fan-out `n_out` are those of a Dense weight of shape (n_in, n_out).

| name | distribution |
|---|---|
| "zeros", "ones" | constant 0 / 1 |
| Constant(v) | constant v |
| "glorot_bengio_uniform" | U[-1/sqrt(n_in), 1/sqrt(n_in)] (torch.nn.Linear's default) |
| "xavier_uniform" (alias "glorot_uniform") | U[-a, a], a = sqrt(6 / (n_in + n_out)) |
| "xavier_normal" (alias "glorot_normal") | N(0, sqrt(2 / (n_in + n_out))) |
| "he_normal" | N(0, sqrt(2 / n_in)) |
| "he_uniform" | U[-a, a], a = sqrt(6 / n_in) |
| "lecun_normal" | N(0, sqrt(1 / n_in)) |
| "lecun_uniform" | U[-a, a], a = sqrt(3 / n_in) |
"""
import numpy as np

from fastnn._validation import check_number


def _fans(shape):
    if len(shape) == 1:
        return shape[0], shape[0]
    n_in = int(np.prod(shape[:-1]))
    return n_in, shape[-1]


class Initializer:
    """Base class: ``init(shape, rng) -> float64 array``; subclasses implement ``__call__``."""
    name = None

    def __call__(self, shape, rng):
        raise NotImplementedError

    def get_config(self):
        return {"name": self.name}

    def __repr__(self):
        return f"{type(self).__name__}()"


class Zeros(Initializer):
    name = "zeros"

    def __call__(self, shape, rng):
        return np.zeros(shape)


class Ones(Initializer):
    name = "ones"

    def __call__(self, shape, rng):
        return np.ones(shape)


class Constant(Initializer):
    """Every element equal to `value`."""
    name = "constant"

    def __init__(self, value=0.0):
        self.value = check_number("Constant", "value", value)

    def __call__(self, shape, rng):
        return np.full(shape, self.value)

    def get_config(self):
        return {"name": self.name, "value": self.value}

    def __repr__(self):
        return f"Constant({self.value})"


class _Uniform(Initializer):
    def limit(self, n_in, n_out):
        raise NotImplementedError

    def __call__(self, shape, rng):
        a = self.limit(*_fans(shape))
        return rng.uniform(-a, a, size=shape)


class _Normal(Initializer):
    def std(self, n_in, n_out):
        raise NotImplementedError

    def __call__(self, shape, rng):
        return rng.normal(0.0, self.std(*_fans(shape)), size=shape)


class GlorotBengioUniform(_Uniform):
    name = "glorot_bengio_uniform"

    def limit(self, n_in, n_out):
        return 1.0 / np.sqrt(n_in)


class XavierUniform(_Uniform):
    name = "xavier_uniform"

    def limit(self, n_in, n_out):
        return np.sqrt(6.0 / (n_in + n_out))


class XavierNormal(_Normal):
    name = "xavier_normal"

    def std(self, n_in, n_out):
        return np.sqrt(2.0 / (n_in + n_out))


class HeNormal(_Normal):
    name = "he_normal"

    def std(self, n_in, n_out):
        return np.sqrt(2.0 / n_in)


class HeUniform(_Uniform):
    name = "he_uniform"

    def limit(self, n_in, n_out):
        return np.sqrt(6.0 / n_in)


class LecunNormal(_Normal):
    name = "lecun_normal"

    def std(self, n_in, n_out):
        return np.sqrt(1.0 / n_in)


class LecunUniform(_Uniform):
    name = "lecun_uniform"

    def limit(self, n_in, n_out):
        return np.sqrt(3.0 / n_in)


REGISTRY = {cls.name: cls for cls in (Zeros, Ones, GlorotBengioUniform, XavierUniform, XavierNormal,
                                      HeNormal, HeUniform, LecunNormal, LecunUniform)}
ALIASES = {"glorot_uniform": "xavier_uniform", "glorot_normal": "xavier_normal"}


def get(spec, owner="initializer"):
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


def from_config(config):
    """An Initializer from ``get_config()``'s output ({"name": ..., and "value" for Constant})."""
    if not isinstance(config, dict) or not isinstance(config.get("name"), str):
        raise ValueError(f"initializers.from_config: expected a dict with a 'name', got {config!r}")
    if config["name"] == "constant":
        return Constant(config.get("value", 0.0))
    return get(config["name"])
