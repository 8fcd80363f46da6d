"""The graph: symbolic tensors, the model input, and the topological order of the layers.

``Input(shape)`` makes a symbolic tensor; calling a layer on tensors makes new ones (``Layer.__call__`` ->
``Tensor.from_layer``); ``Graph(inputs, outputs)`` orders the layers topologically.  The nodes are
``Node(layer, src)`` pairs: ``src`` holds the indices of the nodes feeding the layer (-1: the model input).
``fanout[i]`` counts the consumers of node i (the executor sums the gradients of a tensor used several times).

The protocol for layers beyond one input and one output (issue 12):

- **Several outputs.**  A layer with ``n_outputs > 1`` (an instance attribute its constructor may set, e.g. an
  LSTM with ``return_state=True``: [output, h, c]) returns from ``_build`` a list of ``n_outputs`` shapes; called
  on tensors it returns a list of Tensors (``Tensor.index`` = k, the output's position).  Its ``forward``
  returns a list of ``n_outputs`` arrays and its ``backward`` receives a list of ``n_outputs`` gradients, None
  for an output that nothing consumed (or whose consumers passed no gradient back).  The layer is one node;
  ``Graph.picks[i]`` says, per source of node i, which output of a multi-output source it reads (None: the
  source's single output), and ``out_fanout[i]`` counts the consumers of each output of a multi-output node.
  Any output of such a layer may be the model's output (``Graph.output_index``: its position; None when the
  output node has one output).
- **Inputs decided at call time.**  A layer may override ``__call__`` (``lstm(x, initial_state=[h0, c0])``)
  and set the instance attribute ``n_inputs`` (the number of tensors) before ``Tensor.from_layer(self,
  [x, h0, c0])``; from then on it is an ordinary multi-input layer: ``build`` gets the list of shapes,
  ``forward`` the list of arrays, ``backward`` returns one gradient per input (None where it has none).  Its
  ``build`` must derive everything else from that list, because ``fastnn.io`` rebuilds a saved graph with
  ``Layer.call_on(tensors)`` (which sets ``n_inputs`` the same way).  The model has one input tensor (a
  ``fastnn.Input``); the extra inputs (initial states) come from other layers' outputs: the usual
  encoder-decoder wiring.
- **Masks** (see ``fastnn.layers.base.Layer``): ``Tensor.masked`` says at build time whether an (N, T) mask
  travels with the tensor, and ``Tensor.mask_from`` names the layer that made it.  A layer with
  ``mask_support = None`` called on a masked tensor raises ValueError here, when the model is built.  A layer
  that combines several masked inputs receives the logical AND of their masks (Keras' merge layers).
  ``Graph.has_masks`` is True when some layer produces a mask: only then does the executor compute masks.

This module imports no layer and no model: layers import it, the model composes it.
"""
from __future__ import annotations

from collections import namedtuple
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from fastnn._typing import Shape, ShapeLike

if TYPE_CHECKING:
    from fastnn.layers.base import Layer

Node = namedtuple("Node", "layer src")
Node.__doc__ = """One node of the graph: the layer and the indices of its input nodes (-1: the model input)."""


class Tensor:
    """A symbolic tensor: the model input (from ``Input``) or the output of a layer called on tensors.

    ``shape`` is the shape of one sample (the batch axis is left out).
    """

    def __init__(self, shape: Sequence[int | None], layer: Layer | None = None, inputs: Sequence[Tensor] = (),
                 name: str | None = None, index: int | None = None, mask_from: Layer | None = None) -> None:
        self.shape = tuple(shape)
        self.layer = layer
        self.inputs = tuple(inputs)
        self.name = name
        self.index = index            # the output's position among a multi-output layer's outputs (None: single)
        self.mask_from = mask_from    # the layer whose mask travels with this tensor (None: no mask)

    @property
    def masked(self) -> bool:
        """Whether an (N, T) mask travels with this tensor (made by ``mask_from``, e.g. an Embedding with
        mask_zero=True or a Masking layer, and passed on by the layers in between)."""
        return self.mask_from is not None

    @classmethod
    def from_layer(cls, layer: Layer, inputs: Any) -> Tensor | list[Tensor]:
        """The output tensor of `layer` called on `inputs` (a tensor, or a list for multi-input layers):
        checks the inputs, builds the layer for their shapes and marks it as used in a graph."""
        multi = layer.n_inputs != 1
        if multi:
            if isinstance(inputs, Tensor) or not isinstance(inputs, (list, tuple)):
                raise TypeError(f"{layer.name}: expects a list of tensors, got {type(inputs).__name__}")
            inputs = list(inputs)
            if layer.n_inputs is None and len(inputs) < 2:
                raise ValueError(f"{layer.name}: expects at least 2 input tensors, got {len(inputs)}")
            if layer.n_inputs is not None and len(inputs) != layer.n_inputs:
                raise ValueError(f"{layer.name}: expects {layer.n_inputs} input tensors, got {len(inputs)}")
        else:
            if isinstance(inputs, (list, tuple)) and len(inputs) == 1:
                inputs = inputs[0]
            inputs = [inputs]
        for t in inputs:
            if not isinstance(t, Tensor):
                raise TypeError(f"{layer.name}: layers are called on tensors (fastnn.Input or a layer's output), "
                                f"got {type(t).__name__}")
        if layer._in_graph:
            raise ValueError(f"{layer.name}: this layer is already used in a graph; create a new layer "
                             "(weights are not shared between calls)")
        mask_from = _incoming_mask(layer, inputs)
        shapes = [t.shape for t in inputs]
        out_shape = layer.build(shapes if multi else shapes[0])
        layer._in_graph = True
        n_out = layer.n_outputs
        # which outputs carry a mask: output_mask is asked with True standing for "a mask arrives" (it returns
        # the mask it is given, or None, per output for a multi-output layer)
        if layer.produces_mask:          # its own mask replaces an incoming one (it is on its first output)
            masks = [layer] + [None] * (n_out - 1)
        elif mask_from is not None:
            flags = layer.output_mask(True)
            if not isinstance(flags, (list, tuple)):
                flags = [flags] + [None] * (n_out - 1)
            masks = [mask_from if f is not None else None for f in flags]
        else:
            masks = [None] * n_out
        if n_out == 1:
            return cls(cast("Shape", out_shape), layer, inputs, name=layer.name, mask_from=masks[0])
        if not isinstance(out_shape, list) or len(out_shape) != n_out or len(masks) != n_out:
            raise ValueError(f"{layer.name}: a layer with n_outputs={n_out} must build a list of {n_out} output "
                             f"shapes and give {n_out} output masks")
        return [cls(shape, layer, inputs, name=f"{layer.name}[{k}]", index=k, mask_from=m)
                for k, (shape, m) in enumerate(zip(out_shape, masks))]

    def __repr__(self) -> str:
        src = self.layer.name if self.layer is not None else "input"
        return f"Tensor(shape=(None, {', '.join(map(str, self.shape))}), from={src})"


def _incoming_mask(layer: Layer, inputs: Sequence[Tensor]) -> Layer | None:
    """The layer whose mask reaches `layer` through `inputs` (None: no mask); raises ValueError when `layer`
    cannot take a mask (``mask_support`` None) and one arrives, naming both layers."""
    source = next((t.mask_from for t in inputs if t.mask_from is not None), None)
    if source is None or layer.produces_mask:
        return source
    if layer.mask_support is None:
        raise ValueError(f"{layer.name} cannot take the mask made by {source.name} ({source.mask_description()}): "
                         f"{type(layer).__name__} has mask_support=None (it does not keep the (N, T) steps, or "
                         "padded steps would change its result); consume the mask first (a recurrent layer "
                         "without return_sequences), or build the model without one")
    return source


def Input(shape: ShapeLike, name: str | None = None) -> Tensor:
    """The input of a model: `shape` is the shape of one sample (an int for a vector of features).

    An axis may be None: its size varies from batch to batch (a sequence length, ``Input((None, 8))``).  Such an
    axis cannot carry parameters (a layer whose parameters would depend on it raises when the model is built),
    and the compiled plans do not apply to the model.
    """
    return Tensor(check_shape("Input", "shape", shape), name=name or "input")


def check_shape(owner: str, what: str, shape: Any) -> Shape:
    """`shape` (an int, or a tuple/list of positive ints or None) as a tuple; errors name owner and what."""
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, bool):
        shape = (int(shape),)
    if isinstance(shape, (str, bytes)) or not isinstance(shape, (tuple, list)):
        raise TypeError(f"{owner}: {what} must be an int or a tuple of ints (None for a variable axis), "
                        f"got {shape!r}")
    for d in shape:
        if d is None:
            continue
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1:
            raise ValueError(f"{owner}: every dimension of {what} must be a positive int or None, "
                             f"got {tuple(shape)!r}")
    return tuple(None if d is None else int(d) for d in shape)


def matches(shape: Sequence[int | None], pattern: Sequence[int | None]) -> bool:
    """Whether a concrete per-sample `shape` fits `pattern` (None matches any size)."""
    return len(shape) == len(pattern) and all(p is None or s == p for s, p in zip(shape, pattern))


def is_variable(shape: Sequence[int | None]) -> bool:
    """Whether a per-sample shape has a variable (None) axis."""
    return any(d is None for d in shape)


class Graph:
    """The layers between one input tensor and one output tensor, in topological order.

    Attributes:
        nodes: [Node(layer, src)] in the order they run (forward; backward runs them in reverse).
        fanout: per node, the number of nodes that consume its output (all its outputs together).
        picks: per node, None when every source has one output, else a tuple with, per source, the output
            index read from a multi-output source (None for a single-output source or the model input).
        out_fanout: per node, None for a single-output node, else a list with the consumers of each output.
        output_index: which output of the last node is the model's output (None: the node has one output).
        has_masks: whether some layer produces a mask (Embedding(mask_zero=True), Masking).
        general: whether the executor needs its general path (several outputs, or masks); False for every
            graph of single-output layers without a mask producer, which keeps the plain path.
        integer_input: whether the model input feeds layers that take integer ids (Embedding): the model then
            keeps X as integers at its boundary.
        input_shape, output_shape: the shapes of one sample at the input and the output.
    """

    def __init__(self, inputs: Tensor | Sequence[Tensor], outputs: Tensor | Sequence[Tensor],
                 owner: str = "model") -> None:
        if isinstance(inputs, (list, tuple)):
            if len(inputs) != 1:
                raise ValueError(f"{owner}: exactly one input tensor is supported, got {len(inputs)}")
            inputs = inputs[0]
        if isinstance(outputs, (list, tuple)):
            if len(outputs) != 1:
                raise ValueError(f"{owner}: exactly one output tensor is supported, got {len(outputs)}")
            outputs = outputs[0]
        if not isinstance(inputs, Tensor):
            raise TypeError(f"{owner}: inputs must be a tensor, got {type(inputs).__name__}")
        if not isinstance(outputs, Tensor):
            raise TypeError(f"{owner}: outputs must be a tensor, got {type(outputs).__name__}")
        if inputs.layer is not None:
            raise ValueError(f"{owner}: inputs must come from fastnn.Input, not from layer {inputs.layer.name}")
        if outputs is inputs:
            raise ValueError(f"{owner}: the output is the input itself; add at least one layer")
        if outputs.mask_from is not None and len(outputs.shape) < 2:
            raise ValueError(f"{owner}: the output (None, {', '.join(map(str, outputs.shape))}) carries the mask "
                             f"made by {outputs.mask_from.name}, but a masked output needs a time axis and a feature "
                             "axis (N, T, ...) for the loss to ignore masked steps")
        order = topological_order(outputs, owner)
        sources = [t for t in order if t.layer is None]
        if inputs not in sources:
            raise ValueError(f"{owner}: the output does not depend on the model's input (disconnected graph)")
        stray = [t for t in sources if t is not inputs]
        if stray:
            raise ValueError(f"{owner}: the output depends on another Input ({stray[0].name}) than the "
                             "model's input")
        # one node per layer: the output tensors of a multi-output layer share their layer's node
        node_of: dict[int, int] = {}
        self.nodes: list[Node] = []
        self.fanout: list[int] = []
        self.picks: list[tuple[int | None, ...] | None] = []
        self.out_fanout: list[list[int] | None] = []
        for t in order:
            if t.layer is None or id(t.layer) in node_of:
                continue
            src: list[int] = []
            pick: list[int | None] = []
            for p in t.inputs:
                if p.layer is None:
                    src.append(-1)
                    pick.append(None)
                    continue
                s = node_of[id(p.layer)]
                src.append(s)
                pick.append(p.index)
                self.fanout[s] += 1
                counts = self.out_fanout[s]
                if p.index is not None and counts is not None:
                    counts[p.index] += 1
            node_of[id(t.layer)] = len(self.nodes)
            self.nodes.append(Node(t.layer, tuple(src)))
            self.fanout.append(0)
            self.picks.append(tuple(pick) if any(k is not None for k in pick) else None)
            n_out = t.layer.n_outputs
            self.out_fanout.append([0] * n_out if n_out != 1 else None)
            t.layer.need_input_grad = any(s >= 0 for s in src)
        self.output_index = outputs.index
        self.has_masks = any(layer.produces_mask for layer, _ in self.nodes)
        self.general = self.has_masks or any(f is not None for f in self.out_fanout)
        ints = [layer for layer, src in self.nodes if -1 in src and layer.integer_input]
        floats = [layer for layer, src in self.nodes if -1 in src and not layer.integer_input]
        if ints and floats:
            raise ValueError(f"{owner}: the model input feeds {ints[0].name}, which takes integer ids, and "
                             f"{floats[0].name}, which takes floats; feed the ids to the Embedding layers only")
        self.integer_input = bool(ints)
        self.input_shape = inputs.shape
        self.output_shape = outputs.shape

    @property
    def layers(self) -> list[Layer]:
        """The layers, in the order they run."""
        return [node.layer for node in self.nodes]

    def consumers(self, i: int) -> list[int]:
        """The indices of the nodes fed by node i."""
        return [k for k, node in enumerate(self.nodes) if i in node.src]

    def __len__(self) -> int:
        return len(self.nodes)


def topological_order(outputs: Tensor, owner: str = "model") -> list[Tensor]:
    """The tensors `outputs` depends on (itself included), parents first: an iterative depth-first search."""
    order, state, stack = [], {}, [(outputs, False)]
    while stack:
        t, done = stack.pop()
        if done:
            state[id(t)] = 2
            order.append(t)
            continue
        s = state.get(id(t), 0)
        if s == 2:
            continue
        if s == 1:
            raise ValueError(f"{owner}: the graph has a cycle through {t.name}")
        state[id(t)] = 1
        stack.append((t, True))
        for parent in reversed(t.inputs):
            if state.get(id(parent), 0) == 1:
                raise ValueError(f"{owner}: the graph has a cycle through {parent.name}")
            if state.get(id(parent), 0) == 0:
                stack.append((parent, False))
    return order
