"""Residual connections: ``Residual(block)`` is ``x + block(x)``, with optional stochastic depth.

Called on a tensor, a Residual expands into graph nodes: the block's layers are called one after the other on
the tensor, and the Residual itself becomes the node that adds the block's output to its input (a layer with
two inputs, x and block(x)).  Inside ``Sequential([...])`` it is one entry of the list and expands the same way.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from fastnn._typing import Config, FloatArray
from fastnn._validation import check_number
from fastnn.graph import Tensor
from fastnn.layers.base import Layer

if TYPE_CHECKING:
    from typing_extensions import Self


class Residual(Layer):
    """``y = x + block(x)``, where ``block`` is a layer or a list of layers applied in order.

    Args:
        block: a layer, or a list of layers (a chain), whose output has the shape of its input.
        survival_prob: stochastic depth (Huang et al., 2016), in (0, 1].  In training the whole block is
            dropped (``y = x``) for a batch with probability 1 - survival_prob, one draw per batch from the
            model's seeded ``layer_rng``; at inference its output is scaled by survival_prob
            (``y = x + p * block(x)``), so the expected training output equals the inference output.
            1.0 (default): a plain skip connection.

    A dropped block still runs its forward pass (the graph engine runs every node), but gets no backward pass:
    its parameter gradients are set to zero for that step.  Layers in a dropped block that keep state in
    training mode (BatchNorm's running statistics) still update it.

    Example::

        h = fnn.layers.Residual([Dense(64, activation="relu"), Dense(64)])(h)
        model = fnn.Sequential([Dense(64), Residual([Dense(64, activation="relu"), BatchNorm()]), Dense(10)])

    Shape: input and output (n, *features); the block must keep the shape.
    """
    mask_support = "pass"     # x + block(x): the block's layers take or refuse the mask themselves
    n_inputs = 2
    sublayers_key = "block"

    def __init__(self, block: Layer | Sequence[Layer], survival_prob: float = 1.0, name: str | None = None) -> None:
        self.block = []
        super().__init__(name)
        layers = [block] if isinstance(block, Layer) else block
        if isinstance(layers, (str, bytes)) or not isinstance(layers, (list, tuple)):
            raise TypeError(f"{self.name}: block must be a layer or a list of layers, got {type(block).__name__}")
        if not layers:
            raise ValueError(f"{self.name}: block is empty")
        for layer in layers:
            if not isinstance(layer, Layer):
                raise TypeError(f"{self.name}: block must hold fastnn layers, got {type(layer).__name__}")
            if layer._in_graph:
                raise ValueError(f"{self.name}: layer {layer.name} of the block is already used in a graph")
        if len({id(layer) for layer in layers}) != len(layers):
            raise ValueError(f"{self.name}: the block lists the same layer twice")
        self.block = list(layers)
        self.survival_prob = check_number(type(self).__name__, "survival_prob", survival_prob, low=0.0,
                                          high=1.0, low_open=True)
        self._rng: np.random.Generator | None = None
        self._kept = True

    @property
    def kept(self) -> bool | None:
        """Whether the block was kept in the last training forward (stochastic depth)."""
        return self._kept

    # "used in a graph" covers the block: releasing the Residual (a failed build) releases its layers too
    @property
    def _in_graph(self):
        return self.__dict__.get("_in_graph_flag", False)

    @_in_graph.setter
    def _in_graph(self, value):
        self._in_graph_flag = value
        if not value:
            for layer in self.block:
                layer._in_graph = False

    def __call__(self, inputs: Tensor | Sequence[Tensor]) -> Any:
        x = inputs[0] if isinstance(inputs, (list, tuple)) and len(inputs) == 1 else inputs
        if not isinstance(x, Tensor):
            raise TypeError(f"{self.name}: a Residual is called on one tensor, got {type(inputs).__name__}")
        if self._in_graph:
            raise ValueError(f"{self.name}: this layer is already used in a graph; create a new layer")
        try:
            h = x
            for layer in self.block:
                h = layer(h)
            return Tensor.from_layer(self, [x, h])
        except Exception:
            self._in_graph = False
            raise

    def _build(self, input_shape):
        x_shape, h_shape = (tuple(s) for s in input_shape)
        if x_shape != h_shape:
            raise ValueError(f"{self.name}: the block must keep the shape of its input for x + block(x): input "
                             f"{x_shape}, block output {h_shape}")
        return x_shape

    def attach_rng(self, generator: np.random.Generator) -> None:
        """The model's seeded ``layer_rng``: the source of the stochastic-depth draws."""
        self._rng = generator

    def sublayers(self) -> list[Layer]:
        """The block's layers (graph nodes of their own, run before the Residual's addition)."""
        return list(self.block)

    def _all_block_layers(self):
        for layer in self.block:
            yield layer
            if isinstance(layer, Residual):
                yield from layer._all_block_layers()

    def forward(self, X: list[FloatArray], training: bool = False) -> FloatArray:
        x, h = X
        p = self.survival_prob
        self._training = bool(training)
        if training and p < 1.0:
            if self._rng is None:                   # used outside a model: fresh entropy
                self._rng = np.random.default_rng()
            self._kept = bool(self._rng.random() < p)
            if not self._kept:
                return x
        Y = self._batch_buffers(x.shape, lambda _: np.empty(x.shape, x.dtype))
        if not training and p < 1.0:
            np.multiply(h, p, out=Y)
            np.add(Y, x, out=Y)
        else:
            np.add(x, h, out=Y)
        return Y

    def backward(self, dY: FloatArray) -> list[FloatArray | None]:
        p = self.survival_prob
        if p == 1.0:
            return [dY, dY]
        if self._training:
            if self._kept:
                return [dY, dY]
            for layer in self._all_block_layers():   # no backward through the dropped block: zero its gradients
                for g in layer.grads.values():
                    g[...] = 0
            return [dY, None]
        dH = self._batch_buffers(dY.shape, lambda _: np.empty(dY.shape, dY.dtype), tag="grad")
        np.multiply(dY, p, out=dH)
        return [dY, dH]

    def get_config(self) -> Config:
        return {"name": self.name, "survival_prob": self.survival_prob,
                "block": [{"class": type(layer).__name__, "config": layer.get_config()} for layer in self.block]}

    @classmethod
    def from_config(cls, config: Config) -> Self:
        from fastnn.layers import REGISTRY
        config = dict(config)
        block = []
        for entry in config.pop("block"):
            layer_cls = REGISTRY.get(entry.get("class"))
            if layer_cls is None:
                raise ValueError(f"Residual.from_config: unknown layer class {entry.get('class')!r}")
            block.append(layer_cls.from_config(entry["config"]))
        return cls(block, **config)

    def extra_repr(self) -> str:
        inner = ", ".join(repr(layer) for layer in self.block)
        return f"[{inner}]" + (f", survival_prob={self.survival_prob}" if self.survival_prob != 1.0 else "")


def linear_decay(n_blocks: int, final_survival_prob: float = 0.5) -> list[float]:
    """Survival probabilities of the linear-decay rule of Huang et al. (2016) for a stack of `n_blocks`:
    p_l = 1 - l / L * (1 - p_L) for l = 1..L (the first block nearly always kept, the last with p_L)."""
    n_blocks = check_number("linear_decay", "n_blocks", n_blocks, low=1, integer=True)
    p_last = check_number("linear_decay", "final_survival_prob", final_survival_prob, low=0.0, high=1.0,
                          low_open=True)
    return [1.0 - k / n_blocks * (1.0 - p_last) for k in range(1, n_blocks + 1)]


def residual_stack(blocks: Sequence[Layer | Sequence[Layer]], final_survival_prob: float = 0.5) -> list[Residual]:
    """Residual layers around each block of `blocks` (a list of layers or of lists of layers), with survival
    probabilities decaying linearly to `final_survival_prob` (``linear_decay``).  Returns a list of layers to
    put in ``Sequential`` or to call on a tensor one after the other."""
    probs = linear_decay(len(blocks), final_survival_prob)
    return [Residual(b, survival_prob=p) for b, p in zip(blocks, probs)]
