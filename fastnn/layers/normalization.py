"""Normalization layers: BatchNorm (torch.nn.BatchNorm1d) and LayerNorm (torch.nn.LayerNorm), compiled kernels
in fastnn/_core/norm.pyx.

Both have a learnable scale ``weight`` (ones) and shift ``bias`` (zeros), declared with ``decay=False``: the
optimizers' weight decay skips them unless ``decay_bias=True`` is given.
"""
import numpy as np

from fastnn import initializers
from fastnn._core import norm as _k
from fastnn._validation import check_number
from fastnn.layers.base import Layer, ParamSpec, WeightBias, flat2d, get_num_threads


class _Norm(WeightBias, Layer):
    """The parameters shared by the normalization layers: ``weight`` (the scale gamma) and ``bias`` (the shift
    beta)."""

    def param_specs(self):
        shape = self._param_shape()
        return [ParamSpec("weight", shape, initializers.Ones(), False),
                ParamSpec("bias", shape, initializers.Zeros(), False)]


class BatchNorm(_Norm):
    """Batch normalization over the features of (n, C) inputs, as ``torch.nn.BatchNorm1d(C)``.

    Training: each feature is normalized with the batch's mean and biased variance,
    ``y = weight * (x - mean) / sqrt(var + eps) + bias``, and the running statistics are updated with
    ``r = (1 - momentum) * r + momentum * stat`` (the unbiased variance for ``running_var``).
    Inference: the running statistics normalize instead.

    Args:
        momentum: weight of the new batch in the running statistics (torch's default 0.1), in [0, 1].
        eps: added to the variance (1e-5).

    Attributes: ``weight`` and ``bias`` (C,) are parameters; ``running_mean`` (zeros) and ``running_var``
    (ones), (C,), are non-trainable state in ``layer.buffers`` (saved with the model).

    A batch of 1 sample in training mode raises ValueError, as torch does ("Expected more than 1 value per
    channel when training"): its variance is 0 and its running variance undefined.  In ``fit`` choose a
    batch size that does not leave a last batch of one sample.

    Shape: input and output (n, C).
    """

    def __init__(self, momentum=0.1, eps=1e-5, name=None):
        super().__init__(name)
        self.momentum = check_number(type(self).__name__, "momentum", momentum, low=0.0, high=1.0)
        self.eps = check_number(type(self).__name__, "eps", eps, low=0.0, low_open=True)

    def _build(self, input_shape):
        if len(input_shape) != 1:
            raise ValueError(f"{self.name}: BatchNorm expects inputs of shape (n, features), got feature shape "
                             f"{tuple(input_shape)}")
        return input_shape

    def _param_shape(self):
        return tuple(self.input_shape)

    def _bind(self, params, grads, dtype):
        super()._bind(params, grads, dtype)
        C = self.input_shape[0]
        rm, rv = self.buffers.get("running_mean"), self.buffers.get("running_var")
        if rm is None or rm.shape != (C,) or rm.dtype != dtype:
            self.buffers["running_mean"] = np.zeros(C, dtype=dtype)
            self.buffers["running_var"] = np.ones(C, dtype=dtype)
        self._stats = (np.empty(C, dtype=dtype), np.empty(C, dtype=dtype))   # mean, invstd of the last forward

    @property
    def running_mean(self):
        return self.buffers["running_mean"]

    @running_mean.setter
    def running_mean(self, value):
        self.buffers["running_mean"][...] = value

    @property
    def running_var(self):
        return self.buffers["running_var"]

    @running_var.setter
    def running_var(self, value):
        self.buffers["running_var"][...] = value

    def forward(self, X, training=False):
        n = X.shape[0]
        if training and n < 2:
            raise ValueError(f"{self.name}: expected more than 1 sample per feature in training mode, got a "
                             f"batch of shape {X.shape} (as torch.nn.BatchNorm1d)")
        Y, Xhat = self._batch_buffers(n, lambda _: (np.empty(X.shape, X.dtype), np.empty(X.shape, X.dtype)))
        mean, invstd = self._stats
        _k.batchnorm_forward(X, self.params["weight"], self.params["bias"], Y, Xhat, mean, invstd,
                             self.buffers["running_mean"], self.buffers["running_var"], bool(training),
                             self.momentum, self.eps, get_num_threads())
        self._Xhat, self._batch_stats = Xhat, bool(training)
        return Y

    def backward(self, dY):
        Xhat = self._Xhat
        dX = self._batch_buffers(-1 - dY.shape[0], lambda _: np.empty(Xhat.shape, Xhat.dtype))
        _k.batchnorm_backward(dY, Xhat, self.params["weight"], self._stats[1], dX if self.need_input_grad else None,
                              self.grads["weight"], self.grads["bias"], self._batch_stats, get_num_threads())
        return dX if self.need_input_grad else None

    def get_config(self):
        return {"name": self.name, "momentum": self.momentum, "eps": self.eps}

    def extra_repr(self):
        return f"momentum={self.momentum}, eps={self.eps}"


class LayerNorm(_Norm):
    """Layer normalization over all features of each sample, as ``torch.nn.LayerNorm(feature_shape)``.

    ``y = weight * (x - mean) / sqrt(var + eps) + bias`` with the mean and biased variance of each sample
    over its features; the same in training and inference.

    Args:
        eps: added to the variance (1e-5).

    Attributes: ``weight`` and ``bias`` have the feature shape.  Shape: input and output (n, *features).
    """

    def __init__(self, eps=1e-5, name=None):
        super().__init__(name)
        self.eps = check_number(type(self).__name__, "eps", eps, low=0.0, low_open=True)

    def _build(self, input_shape):
        if len(input_shape) < 1:
            raise ValueError(f"{self.name}: LayerNorm needs at least one feature axis, got {tuple(input_shape)}")
        return input_shape

    def _param_shape(self):
        return tuple(self.input_shape)

    def forward(self, X, training=False):
        n = X.shape[0]

        def make(_):
            return np.empty(X.shape, X.dtype), np.empty(X.shape, X.dtype), np.empty(n, X.dtype)

        Y, Xhat, invstd = self._batch_buffers(n, make)
        _k.layernorm_forward(flat2d(X), self.params["weight"].reshape(-1), self.params["bias"].reshape(-1),
                             flat2d(Y), flat2d(Xhat), invstd, self.eps, get_num_threads())
        self._Xhat, self._invstd = Xhat, invstd
        return Y

    def backward(self, dY):
        Xhat = self._Xhat
        dX = self._batch_buffers(-1 - dY.shape[0], lambda _: np.empty(Xhat.shape, Xhat.dtype))
        _k.layernorm_backward(flat2d(dY), flat2d(Xhat), self.params["weight"].reshape(-1), self._invstd,
                              flat2d(dX) if self.need_input_grad else None, self.grads["weight"].reshape(-1),
                              self.grads["bias"].reshape(-1), get_num_threads())
        return dX if self.need_input_grad else None

    def get_config(self):
        return {"name": self.name, "eps": self.eps}

    def extra_repr(self):
        return f"eps={self.eps}"
