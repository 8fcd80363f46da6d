"""The executor: forward and backward passes over the nodes of a graph (``fastnn.graph.Graph``).

Forward runs the nodes in topological order; backward runs them in exactly the reverse order, and the
gradients of a tensor used by several layers are summed into a buffer kept between calls.  The output of
node i of the last forward is ``values[i]``.  Scratch buffers (``cached``) are keyed by their full shape,
so batches of any size (and inputs with a variable axis) reuse them without confusion.

The trainer (``fastnn.training``), the sampled-softmax step, the diagnostics and pruning run the network
through these methods.
"""
import numpy as np


class Executor:
    """Runs `graph`'s nodes on batches of `dtype` arrays.

    Attributes:
        nodes: the graph's [Node(layer, src)], in the order they run.
        values: the output of each node in the last forward (None before it).
    """

    _max_cached = 64

    def __init__(self, graph, dtype):
        self.graph = graph
        self.nodes = graph.nodes
        self.fanout = graph.fanout
        self.dtype = dtype
        self.values = [None] * len(self.nodes)
        self._gvalues = [None] * len(self.nodes)
        self._caches = {}

    def forward(self, X, training, logits=False, stop=None):
        """Run nodes 0 .. stop-1 (all by default) on the batch X; returns the output of the last one run.

        `training` selects the layers' mode (dropout, batch statistics); `logits` makes the output layer hand
        back its logits (a fused softmax/sigmoid whose loss takes logits).
        """
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

    def backward(self, d_out, start=None):
        """Backward from the output (or from node `start`, whose output's gradient is d_out); leaves the
        parameter gradients in the layers' gradient views (the flat gradient buffer)."""
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
                    acc = self.cached(("acc", s, d.shape), lambda: np.empty(d.shape, dtype=self.dtype))
                    np.copyto(acc, d)
                    grads[s] = acc
                else:
                    np.add(grads[s], d, out=grads[s])

    def cached(self, key, make):
        """The scratch buffer for `key` (include the full shape in it), made by `make()` on first use."""
        buf = self._caches.get(key)
        if buf is None:
            if len(self._caches) > self._max_cached:
                self._caches.clear()
            buf = self._caches[key] = make()
        return buf

    def loss_and_grad(self, loss, out, targets, weights=None):
        """(loss, n_correct, d_out): `loss` of the output `out`, its gradient in a reused buffer."""
        grad = self.cached(("dout", out.shape), lambda: np.empty(out.shape, dtype=self.dtype))
        value, correct = loss(out, targets, grad, weights)
        return value, correct, grad
