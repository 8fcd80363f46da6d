"""The training step of a model compiled with ``fastnn.losses.SampledSoftmax``.

The graph engine runs every node but the output layer (a ``Dense`` fed by one tensor); the compiled kernel
``fastnn._core.sampled.sampled_softmax`` then gathers the sampled columns of the output layer's weight and
bias, computes the corrected logits with one small GEMM, the loss and its gradients, and scatter-adds
them into the output layer's slots of the flat gradient buffer; the backward pass resumes at the output
layer's input.  ``Trainer.step`` calls ``forward_backward`` in place of forward, loss and backward.
"""
import numpy as np

from fastnn._core import sampled as _k
from fastnn._core._threads import get_num_threads
from fastnn._core.kinds import ACT


class SampledOutput:
    """Binds a SampledSoftmax loss to a model: checks the output layer, owns the scratch buffers."""

    def __init__(self, model):
        from fastnn.layers.dense import Dense
        layer, src = model.graph.nodes[-1]
        if not isinstance(layer, Dense) or layer.activation.kind != ACT.IDENTITY and layer.fusable != "softmax":
            raise ValueError(f"{model.name}: sampled_softmax needs a Dense output layer with no activation or "
                             f"softmax, got {layer!r}")
        if model.graph.picks[-1] is not None:
            raise ValueError(f"{model.name}: sampled_softmax needs its Dense output layer fed by a single-output "
                             f"layer, but {layer.name} reads one output of a multi-output layer")
        self.model, self.layer, self.src = model, layer, src[0]
        self.loss = model.loss
        self.k = layer.units
        self.rng = None if self.loss.seed is None else np.random.Generator(np.random.PCG64(self.loss.seed))
        self._bufs = {}

    def _buffers(self, n, s, n_in, dtype):
        key = (n, s)
        b = self._bufs.get(key)
        if b is None:
            if len(self._bufs) > 8:
                self._bufs.clear()
            b = self._bufs[key] = (np.empty((n_in, s), dtype), np.empty((n, s), dtype), np.empty(n, dtype),
                                   np.empty((n_in, s), dtype), np.empty((n, n_in), dtype))
        return b

    def sample(self):
        """(sampled classes, log expected counts of the classes 0..k-1 used this step as a function)."""
        rng = self.rng if self.rng is not None else self.model.layer_rng
        return self.loss.sample(rng, self.k)

    def forward_backward(self, Xb, Tb, Wb, where):
        """Forward to the output layer's input, sampled loss and gradients, backward; (loss, n_correct)."""
        model, layer = self.model, self.layer
        engine = model.engine
        prev, model.training = model.training, True
        try:
            engine.forward(Xb, True, stop=len(engine.nodes) - 1)
        finally:
            model.training = prev
        vals = engine.values
        H = Xb if self.src < 0 else vals[self.src]
        vals[-1] = None
        dtype = model.dtype
        sampled, tries = self.sample()
        loss_fn = self.loss
        leq_s = np.log(loss_fn.expected_counts(sampled, self.k, tries)).astype(dtype)
        leq_t = np.log(loss_fn.expected_counts(Tb, self.k, tries)).astype(dtype)
        n, n_in = H.shape
        Ws, L, gt, dWs, dX = self._buffers(n, sampled.shape[0], n_in, dtype)
        need_dx = self.src >= 0 and layer.need_input_grad
        loss, correct = _k.sampled_softmax(H, layer.params["weight"], layer.params.get("bias"), Tb, sampled,
                                           leq_t, leq_s, Ws, L, gt, dWs, layer.grads["weight"],
                                           layer.grads.get("bias"), dX if need_dx else None, Wb,
                                           get_num_threads())
        if model.nan_guard and not np.isfinite(loss):
            raise model.trainer.nonfinite("loss", where, None, f"the loss is {loss}")
        if need_dx:
            engine.backward(dX, start=self.src)
        return loss, correct
