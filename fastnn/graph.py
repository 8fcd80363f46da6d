"""The graph: symbolic tensors, the model input, and the topological order of the layers.

``Input(shape)`` makes a symbolic tensor; calling a layer on tensors makes new ones (``Layer.__call__`` ->
``Tensor.from_layer``); ``Graph(inputs, outputs)`` orders the layers topologically.  The nodes are
``Node(layer, src)`` pairs: ``src`` holds the indices of the nodes feeding the layer (-1: the model input).
``fanout[i]`` counts the consumers of node i (the executor sums the gradients of a tensor used several times).

This module imports no layer and no model: layers import it, the model composes it.
"""
from collections import namedtuple

import numpy as np

Node = namedtuple("Node", "layer src")
Node.__doc__ = """One node of the graph: the layer and the indices of its input nodes (-1: the model input)."""


class Tensor:
    """A symbolic tensor: the model input (from ``Input``) or the output of a layer called on tensors.

    ``shape`` is the shape of one sample (the batch axis is left out).
    """

    def __init__(self, shape, layer=None, inputs=(), name=None):
        self.shape = tuple(shape)
        self.layer = layer
        self.inputs = tuple(inputs)
        self.name = name

    @classmethod
    def from_layer(cls, layer, inputs):
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
        shapes = [t.shape for t in inputs]
        out_shape = layer.build(shapes if multi else shapes[0])
        layer._in_graph = True
        return cls(out_shape, layer, inputs, name=layer.name)

    def __repr__(self):
        src = self.layer.name if self.layer is not None else "input"
        return f"Tensor(shape=(None, {', '.join(map(str, self.shape))}), from={src})"


def Input(shape, name=None):
    """The input of a model: `shape` is the shape of one sample (an int for a vector of features).

    An axis may be None: its size varies from batch to batch (a sequence length, ``Input((None, 8))``).  Such an
    axis cannot carry parameters (a layer whose parameters would depend on it raises when the model is built),
    and the compiled plans do not apply to the model.
    """
    return Tensor(check_shape("Input", "shape", shape), name=name or "input")


def check_shape(owner, what, shape):
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


def matches(shape, pattern):
    """Whether a concrete per-sample `shape` fits `pattern` (None matches any size)."""
    return len(shape) == len(pattern) and all(p is None or s == p for s, p in zip(shape, pattern))


def is_variable(shape):
    """Whether a per-sample shape has a variable (None) axis."""
    return any(d is None for d in shape)


class Graph:
    """The layers between one input tensor and one output tensor, in topological order.

    Attributes:
        nodes: [Node(layer, src)] in the order they run (forward; backward runs them in reverse).
        fanout: per node, the number of nodes that consume its output.
        input_shape, output_shape: the shapes of one sample at the input and the output.
    """

    def __init__(self, inputs, outputs, owner="model"):
        if isinstance(inputs, (list, tuple)):
            if len(inputs) != 1:
                raise ValueError(f"{owner}: exactly one input tensor is supported, got {len(inputs)}")
            inputs = inputs[0]
        if isinstance(outputs, (list, tuple)):
            if len(outputs) != 1:
                raise ValueError(f"{owner}: exactly one output tensor is supported, got {len(outputs)}")
            outputs = outputs[0]
        for what, t in (("inputs", inputs), ("outputs", outputs)):
            if not isinstance(t, Tensor):
                raise TypeError(f"{owner}: {what} must be a tensor, got {type(t).__name__}")
        if inputs.layer is not None:
            raise ValueError(f"{owner}: inputs must come from fastnn.Input, not from layer {inputs.layer.name}")
        if outputs is inputs:
            raise ValueError(f"{owner}: the output is the input itself; add at least one layer")
        order = topological_order(outputs, owner)
        sources = [t for t in order if t.layer is None]
        if inputs not in sources:
            raise ValueError(f"{owner}: the output does not depend on the model's input (disconnected graph)")
        stray = [t for t in sources if t is not inputs]
        if stray:
            raise ValueError(f"{owner}: the output depends on another Input ({stray[0].name}) than the "
                             "model's input")
        tensors = [t for t in order if t.layer is not None]
        index = {id(t): i for i, t in enumerate(tensors)}
        index[id(inputs)] = -1
        self.nodes, self.fanout = [], [0] * len(tensors)
        for t in tensors:
            src = tuple(index[id(p)] for p in t.inputs)
            for s in src:
                if s >= 0:
                    self.fanout[s] += 1
            self.nodes.append(Node(t.layer, src))
            t.layer.need_input_grad = any(s >= 0 for s in src)
        self.input_shape = inputs.shape
        self.output_shape = outputs.shape

    @property
    def layers(self):
        """The layers, in the order they run."""
        return [node.layer for node in self.nodes]

    def consumers(self, i):
        """The indices of the nodes fed by node i."""
        return [k for k, node in enumerate(self.nodes) if i in node.src]

    def __len__(self):
        return len(self.nodes)


def topological_order(outputs, owner="model"):
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
