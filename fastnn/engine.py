"""The executor: forward and backward passes over the nodes of a graph (``fastnn.graph.Graph``).

Forward runs the nodes in topological order; backward runs them in exactly the reverse order, and the
gradients of a tensor used by several layers are summed into a buffer kept between calls.  The output of
node i of the last forward is ``values[i]``.  Scratch buffers (``cached``) are keyed by their full shape,
so batches of any size (and inputs with a variable axis) reuse them without confusion.

The trainer (``fastnn.training``), the sampled-softmax step, the diagnostics and pruning run the network
through these methods.

Two paths.  Graphs of single-output layers without a mask producer (``graph.general`` False: every model
before issue 12) run the plain loops of ``forward`` / ``backward``, unchanged.  The others run the general
loops (``_forward_general`` / ``_backward_general``), chosen once per pass:

- A multi-output node (``layer.n_outputs > 1``) leaves a list of arrays in ``values[i]``; a consumer reads the
  output ``graph.picks[i][j]`` of its j-th source.  In backward, ``_gvalues[i]`` of such a node is a list with one
  gradient per output (None: nothing reached that output), summed per output over its consumers
  (``graph.out_fanout``), and the layer's ``backward`` receives that list.  The model output may be any output
  of the last node (``graph.output_index``); ``forward`` returns that array and ``output()`` gives it after.
- Masks: ``masks[i]`` is node i's output mask ((N, T) bool, None, or a list per output for a multi-output
  node).  A producer's comes from ``compute_mask(x)``; a layer fed by masked tensors gets the AND of their masks
  (one mask in the usual case): a "pass" layer hands it on, a "use" layer receives ``forward(x, training,
  mask=M)`` and gives ``output_mask(M)``.  ``output_mask_value()`` is the mask of the model output, which
  ``loss_and_grad`` hands to the loss (``Loss.masked``): masked positions count neither in the loss nor in
  accuracy, and get gradient 0.  Backward takes no mask: a "use" layer kept what it needs in forward.

Threads: an executor and its layers keep per-call state (the layers' batch buffers, what ``backward`` reads),
so one executor runs one pass at a time.  Inference from any thread goes through ``checkout()``, which hands
out an executor of its own over copies of the layers (``_inference_copy``): they share the parameters and the
layer buffers (running statistics) with the originals but keep their own batch buffers and forward state, so
any number of threads predict at once, and a predict never writes what a concurrent fit's backward reads.
"""
from __future__ import annotations

import math
import operator
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any

import numpy as np

from fastnn._typing import DTypeLike, FloatArray, NDArray

if TYPE_CHECKING:
    from fastnn.graph import Graph
    from fastnn.losses import Loss


INFERENCE_CHUNK_ELEMENTS = 1 << 18     # predict / evaluate without a batch size: about this many values per layer


def inference_rows(graph: Graph, X: NDArray[Any]) -> int:
    """The rows per forward pass of predict / evaluate on X when the caller gave no batch size: the whole input
    when it is small, else chunks in which the widest layer output holds about INFERENCE_CHUNK_ELEMENTS values, so
    that inference on a large X keeps a few MiB of activations per layer instead of all of X's (a variable axis
    counts with X's largest sample dimension, an upper bound).

    Every chunk reads all the weights again, so chunks are made larger (up to 16 times) where the weights would
    otherwise cost more than a quarter of a chunk's activations: an image model ending in a large Dense
    (PyTorch's MNIST example: 26x26x32 and 24x24x64 activations, a 9216x128 Dense) ran its 256-image predict 1.5x
    slower in chunks of 7 images, each streaming the Dense's 4.7 MB, than in chunks of 64."""
    return max(1, min(X.shape[0], chunk_rows(graph, X.shape[1:])))


def chunk_rows(graph: Graph, sample: tuple[int, ...]) -> int:
    """The rows of an inference chunk of `graph` on samples of shape `sample` (inference_rows without the bound of
    the input's row count; the compiled inference plans take their chunk size from it)."""
    widest, total = _sample_sizes(graph, sample)
    rows = INFERENCE_CHUNK_ELEMENTS // widest
    weights = sum(int(p.size) for layer in graph.layers for p in layer.params.values())
    return max(1, rows, min(-(-4 * weights // total), 16 * INFERENCE_CHUNK_ELEMENTS // widest))


def _sample_sizes(graph: Graph, sample: tuple[int, ...]) -> tuple[int, int]:
    """(widest, total): the most values in one layer output of one sample (or in the sample itself), and the
    values of the sample and of all the layer outputs together (a variable axis counts with the sample's largest
    dimension, an upper bound)."""
    fill = max(sample, default=1)
    widest = total = max(1, math.prod(sample))
    for layer in graph.layers:
        for shape in (layer.output_shape if layer.n_outputs != 1 else (layer.output_shape,)):
            size = max(1, math.prod([fill if d is None else d for d in shape]))
            widest = max(widest, size)
            total += size
    return widest, total


class Executor:
    """Runs `graph`'s nodes on batches of `dtype` arrays.

    Attributes:
        nodes: the graph's [Node(layer, src)], in the order they run.
        values: the output of each node in the last forward (None before it).
    """

    _max_cached = 64

    def __init__(self, graph: Graph, dtype: DTypeLike) -> None:
        self.graph = graph
        self.nodes = graph.nodes
        self.fanout = graph.fanout
        self.dtype = dtype
        self.values: list[Any] = [None] * len(self.nodes)
        self._gvalues: list[Any] = [None] * len(self.nodes)
        self._caches: dict[Hashable, Any] = {}
        self._free: list[Executor] = []          # inference executors not in use (see checkout())
        self._copies: list[list[Any]] | None = None   # in an inference executor: [(original layer, its copy)]
        self._general = graph.general
        self.masks: list[Any] = [None] * len(self.nodes)   # the general path's output masks (module docstring)

    _max_free = 4       # inference executors kept for reuse; more are made while more threads predict at once

    def checkout(self) -> Executor:
        """An executor for inference passes (``forward(X, False)``), the caller's alone until ``checkin(ex)``.

        It runs the graph on copies of the layers (``_inference_copy``) that read the same parameters and layer
        buffers as the originals, with batch buffers and forward state of their own.  Outputs it returns live in
        its buffers: copy them out before ``checkin``.  Thread-safe (list pop/append are atomic under the GIL);
        a new executor is made when none is free.  Use as ``ex = engine.checkout()`` then ``try: ... finally:
        engine.checkin(ex)``.
        """
        try:
            ex = self._free.pop()
        except IndexError:
            ex = self._inference_executor()
        ex._refresh()
        return ex

    def checkin(self, ex: Executor) -> None:
        """Give back an executor from ``checkout`` (kept for reuse, up to ``_max_free``)."""
        ex.values = [None] * len(ex.nodes)     # do not keep the pass's arrays alive through the pool
        ex.masks = [None] * len(ex.nodes)
        if len(self._free) < self._max_free:
            self._free.append(ex)

    def _inference_executor(self):
        ex = Executor.__new__(Executor)
        copies = [[node.layer, _inference_copy(node.layer), 0, None] for node in self.nodes]
        ex.graph, ex.fanout, ex.dtype = self.graph, self.fanout, self.dtype
        ex.nodes = [node._replace(layer=c[1]) for node, c in zip(self.nodes, copies)]
        ex.values = [None] * len(ex.nodes)
        ex._gvalues = [None] * len(ex.nodes)
        ex._caches, ex._free, ex._copies = {}, [], copies
        ex._general = self._general
        ex.masks = [None] * len(ex.nodes)
        return ex

    def _refresh(self):
        """Follow the originals' settings (public attributes: parameter and buffer views, options) since the copy."""
        for entry in self._copies:
            layer, c, n, keys = entry
            od = layer.__dict__
            if len(od) != n:        # attributes were added (the public ones are fixed once a layer is sealed)
                names = [k for k in list(od) if k[0] != "_"]
                keys = entry[3] = (names, operator.itemgetter(*names) if len(names) > 1 else None)
                entry[2] = len(od)
            names, get = keys
            if get is None:
                if names:
                    c.__dict__[names[0]] = od[names[0]]
            else:
                c.__dict__.update(zip(names, get(od)))

    def forward(self, X: NDArray[Any], training: bool, logits: bool = False, stop: int | None = None) -> Any:
        """Run nodes 0 .. stop-1 (all by default) on the batch X; returns the output of the last one run.

        `training` selects the layers' mode (dropout, batch statistics); `logits` makes the output layer hand
        back its logits (a fused softmax/sigmoid whose loss takes logits).
        """
        if self._general:
            return self._forward_general(X, training, logits, stop)
        vals = self.values
        last = len(self.nodes) - 1
        stop = len(self.nodes) if stop is None else stop
        for i in range(stop):
            layer, src = self.nodes[i]
            if layer.n_inputs == 1:
                s = src[0]
                x = X if s < 0 else vals[s]
            else:
                x = [X if s < 0 else vals[s] for s in src]
            if logits and i == last:
                vals[i] = layer.forward(x, training, logits=True)
            else:
                vals[i] = layer.forward(x, training)
        return vals[stop - 1] if stop > 0 else X

    def backward(self, d_out: FloatArray, start: int | None = None) -> None:
        """Backward from the output (or from node `start`, whose output's gradient is d_out); leaves the
        parameter gradients in the layers' gradient views (the flat gradient buffer)."""
        if self._general:
            return self._backward_general(d_out, start)
        grads = self._gvalues
        last = len(self.nodes) - 1 if start is None else start
        grads[last] = d_out
        for i in range(last, -1, -1):
            g = grads[i]
            grads[i] = None
            layer, src = self.nodes[i]
            if g is None:
                continue
            dx = layer.backward(g)
            dxs = dx if layer.n_inputs != 1 else (dx,)
            for s, d in zip(src, dxs):
                if s < 0 or d is None:
                    continue
                if self.fanout[s] == 1:
                    grads[s] = d
                elif grads[s] is None:
                    acc = self.cached(("acc", s, d.shape), lambda shape=d.shape: np.empty(shape, dtype=self.dtype))
                    np.copyto(acc, d)
                    grads[s] = acc
                else:
                    np.add(grads[s], d, out=grads[s])

    # ------------------------------------------------------------------ the general path
    def _forward_general(self, X, training, logits, stop):
        """``forward`` for graphs with multi-output layers or masks (see the module docstring)."""
        vals, masks, picks = self.values, self.masks, self.graph.picks
        with_masks = self.graph.has_masks
        last = len(self.nodes) - 1
        stop = len(self.nodes) if stop is None else stop
        for i in range(stop):
            layer, src = self.nodes[i]
            pick = picks[i]
            if pick is None:
                xs = [X if s < 0 else vals[s] for s in src]
            else:
                xs = [X if s < 0 else (vals[s] if k is None else vals[s][k]) for s, k in zip(src, pick)]
            x = xs[0] if layer.n_inputs == 1 else xs
            kw = {"logits": True} if logits and i == last else {}
            if not with_masks:
                vals[i] = layer.forward(x, training, **kw)
                continue
            m = None
            for j, s in enumerate(src):
                if s < 0:
                    continue
                ms = masks[s]
                if pick is not None and pick[j] is not None and ms is not None:
                    ms = ms[pick[j]]
                if ms is not None and m is not ms:
                    if m is None:
                        m = ms
                    else:      # several masked inputs: their AND, in a buffer of this node's (no array per step)
                        both = self.cached(("mask_and", i, ms.shape),
                                           lambda shape=ms.shape: np.empty(shape, dtype=bool))
                        m = np.logical_and(m, ms, out=both)
            if layer.produces_mask:
                vals[i] = layer.forward(x, training, **kw)
                out_mask = layer.compute_mask(x)
                if layer.n_outputs != 1:
                    out_mask = [out_mask] + [None] * (layer.n_outputs - 1)
            elif layer.mask_support == "use":
                vals[i] = layer.forward(x, training, mask=m, **kw)
                out_mask = layer.output_mask(m)
            else:
                vals[i] = layer.forward(x, training, **kw)
                out_mask = layer.output_mask(m) if m is not None else None
            if layer.n_outputs != 1 and out_mask is not None and not isinstance(out_mask, (list, tuple)):
                out_mask = [out_mask] + [None] * (layer.n_outputs - 1)
            masks[i] = out_mask
        if stop <= 0:
            return X
        k = self.graph.output_index
        return vals[stop - 1][k] if (k is not None and stop - 1 == last) else vals[stop - 1]

    def _backward_general(self, d_out, start):
        """``backward`` for graphs with multi-output layers or masks (see the module docstring)."""
        grads, picks, out_fanout = self._gvalues, self.graph.picks, self.graph.out_fanout
        last = len(self.nodes) - 1 if start is None else start
        k_out = self.graph.output_index if start is None else None
        if out_fanout[last] is not None and k_out is not None:
            g = [None] * len(out_fanout[last])
            g[k_out] = d_out
            grads[last] = g
        else:
            grads[last] = d_out
        for i in range(last, -1, -1):
            g = grads[i]
            grads[i] = None
            layer, src = self.nodes[i]
            if g is None:
                continue
            dx = layer.backward(g)
            dxs = dx if layer.n_inputs != 1 else (dx,)
            pick = picks[i]
            for j, (s, d) in enumerate(zip(src, dxs)):
                if s < 0 or d is None:
                    continue
                k = None if pick is None else pick[j]
                if k is None:
                    if self.fanout[s] == 1:
                        grads[s] = d
                    elif grads[s] is None:
                        acc = self.cached(("acc", s, d.shape), lambda shape=d.shape: np.empty(shape, dtype=self.dtype))
                        np.copyto(acc, d)
                        grads[s] = acc
                    else:
                        np.add(grads[s], d, out=grads[s])
                    continue
                gl = grads[s]
                if gl is None:
                    gl = grads[s] = [None] * len(out_fanout[s])
                if out_fanout[s][k] == 1:
                    gl[k] = d
                elif gl[k] is None:
                    acc = self.cached(("acc", s, k, d.shape), lambda shape=d.shape: np.empty(shape, dtype=self.dtype))
                    np.copyto(acc, d)
                    gl[k] = acc
                else:
                    np.add(gl[k], d, out=gl[k])

    def output(self) -> Any:
        """The model output of the last forward (the output node's value, or its ``graph.output_index``-th output)."""
        v = self.values[-1]
        k = self.graph.output_index
        return v if k is None or v is None else v[k]

    def output_mask_value(self) -> NDArray[np.bool_] | None:
        """The mask of the model output in the last forward ((N, T) bool), or None."""
        if not self._general or not self.graph.has_masks:
            return None
        m = self.masks[-1]
        k = self.graph.output_index
        return m[k] if (k is not None and isinstance(m, (list, tuple))) else m

    def cached(self, key: Hashable, make: Callable[..., Any]) -> Any:
        """The scratch buffer for `key` (include the full shape in it), made by `make()` on first use."""
        buf = self._caches.get(key)
        if buf is None:
            if len(self._caches) > self._max_cached:
                self._caches.clear()
            buf = self._caches[key] = make()
        return buf

    def loss_value(self, loss: Loss, out: FloatArray, targets: NDArray[Any],
                   weights: FloatArray | None = None) -> tuple[float, int]:
        """(loss, n_correct) of the output `out` of the last forward, without a gradient; mask-aware as
        ``loss_and_grad`` (code that evaluates the loss itself should call this rather than ``loss(...)``)."""
        mask = self.output_mask_value() if self._general else None
        if mask is not None:
            return loss.masked(out, targets, mask, None, weights)
        return loss(out, targets, None, weights)

    def loss_and_grad(self, loss: Loss, out: FloatArray, targets: NDArray[Any],
                      weights: FloatArray | None = None) -> tuple[float, int, FloatArray]:
        """(loss, n_correct, d_out): `loss` of the output `out`, its gradient in a reused buffer.  With a mask on
        the model output (the general path), the masked positions are left out (``Loss.masked``)."""
        grad = self.cached(("dout", out.shape), lambda: np.empty(out.shape, dtype=self.dtype))
        mask = self.output_mask_value() if self._general else None
        if mask is not None:
            value, correct = loss.masked(out, targets, mask, grad, weights)
        else:
            value, correct = loss(out, targets, grad, weights)
        return value, correct, grad


def _inference_copy(layer):
    """A copy of `layer` for inference on another thread: the same class and settings, bound (``Layer._bind``) to
    the same parameter, gradient and buffer arrays, with batch buffers and private scratch of its own.

    The copy takes the original's attributes, drops the private ones that hold arrays (the batch buffers, forward
    state and scratch such as BatchNorm's batch statistics, or Dense's diagnostic unit counters), and binds
    again: ``_bind`` makes the layer's own scratch, as it does when a model is built."""
    cls = type(layer)
    try:
        c = cls.__new__(cls)           # no constructor: the original's state is copied in below
    except TypeError:                  # a mixin first in the bases (Dense: WeightBias) makes tp_new refuse; the
        c = object.__new__(cls)        # C base (fastnn._core.attrs.StrictAttributes) has no fields to set up
    d = c.__dict__
    for k, v in list(layer.__dict__.items()):
        if k[0] == "_" and (isinstance(v, (np.ndarray, OrderedDict))
                            or (isinstance(v, (tuple, list)) and any(isinstance(a, np.ndarray) for a in v))):
            v = None
        d[k] = v
    d["_buffers"] = OrderedDict()
    d["_max_cached_batches"] = 2       # batch shapes kept per copy (a pool holds several copies of each layer)
    if layer.dtype is not None:
        c._bind(layer.params, layer.grads, layer.dtype)
    return c
