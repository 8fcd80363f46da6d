"""Normalization layers: BatchNorm (torch.nn.BatchNorm1d) and LayerNorm (torch.nn.LayerNorm), compiled kernels
in fastnn/_core/norm.pyx.

Both work on the last axis (channels-last: (N, C), (N, L, C), (N, H, W, C)) and have a learnable scale
``weight`` (ones) and shift ``bias`` (zeros) of shape (C,), declared with ``decay=False``: the optimizers' weight
decay skips them unless ``decay_bias=True`` is given.  Both run their 2-D kernels on a (N*..., C) view of the
batch (no copy).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from fastnn import initializers
from fastnn._core import norm as _k
from fastnn._typing import Config, FloatArray, NDArray
from fastnn._validation import check_number
from fastnn.layers.base import Layer, ParamSpec, WeightBias, get_num_threads, rows2d


class _Norm(WeightBias, Layer):
    """The parameters shared by the normalization layers: ``weight`` (the scale gamma) and ``bias`` (the shift
    beta)."""

    def _build(self, input_shape):
        if len(input_shape) < 1:
            raise ValueError(f"{self.name}: {type(self).__name__} expects inputs of shape (n, ..., features), got "
                             f"feature shape {tuple(input_shape)}")
        return input_shape

    def param_specs(self) -> list[ParamSpec]:
        shape = (self.input_shape[-1],)
        return [ParamSpec("weight", shape, initializers.Ones(), False),
                ParamSpec("bias", shape, initializers.Zeros(), False)]


class BatchNorm(_Norm):
    """Batch normalization of each channel (the last axis) over all other axes: ``torch.nn.BatchNorm1d(C)`` on
    (n, C) and on (n, C, L), ``torch.nn.BatchNorm2d(C)`` on (n, C, H, W), with the data channels-last: (n, C),
    (n, L, C), (n, H, W, C).

    Training: each channel is normalized with the mean and biased variance of its m values in the batch
    (m = n, n*L or n*H*W), ``y = weight * (x - mean) / sqrt(var + eps) + bias``, and the running statistics
    are updated with ``r = (1 - momentum) * r + momentum * stat`` (for ``running_var`` the unbiased variance,
    var * m / (m - 1), as torch).  Inference: the running statistics normalize instead.

    Args:
        momentum: weight of the new batch in the running statistics (torch's default 0.1), in [0, 1].
        eps: added to the variance (1e-5).
        axis: the channel axis: -1 (default), or the last axis' index in the batch's shape (1 for (n, C)).
            Other axes are not supported: transpose the data to channels-last.

    Attributes: ``weight`` and ``bias`` (C,) are parameters; ``running_mean`` (zeros) and ``running_var``
    (ones), (C,), are non-trainable state in ``layer.buffers`` (saved with the model).

    A training batch with one value per channel (a batch of 1 sample of shape (1, C)) raises ValueError, as
    torch does ("Expected more than 1 value per channel when training"): its variance is 0 and its running
    variance undefined.  ``fit`` raises it before the first batch when its batches would leave a last batch of
    one sample: choose a batch size that does not.  A one-sample batch of a sequence or image (1, L, C) has L
    values per channel and is fine.

    Frozen (``trainable = False``, applied at ``compile``), the layer runs in inference mode in training too,
    as Keras 3 does: it normalizes with the running statistics and does not update them (torch would keep
    using batch statistics unless the module is put in ``eval()``).

    Shape: input and output (n, ..., C).

    Masks (issue 12): BatchNorm refuses one (a build-time ValueError): its batch statistics would count the padded
    steps of a masked sequence (Keras 2 lets them in silently).  Normalize per step with ``LayerNorm`` instead.
    """
    # a mask is refused: its batch statistics would count the padded steps (Keras 2 ignores the mask there and
    # lets them in; Keras 3 weighs the moments by the mask); LayerNorm, per step, takes one
    mask_support = None

    def __init__(self, momentum: float = 0.1, eps: float = 1e-5, axis: int = -1, name: str | None = None) -> None:
        super().__init__(name)
        self.momentum = check_number(type(self).__name__, "momentum", momentum, low=0.0, high=1.0)
        self.eps = check_number(type(self).__name__, "eps", eps, low=0.0, low_open=True)
        if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
            raise TypeError(f"{self.name}: axis must be an int, got {type(axis).__name__} {axis!r}")
        if axis == 0:
            raise ValueError(f"{self.name}: axis 0 is the batch axis; BatchNorm normalizes the last axis (axis=-1)")
        self.axis = int(axis)

    def _build(self, input_shape):
        super()._build(input_shape)
        last = len(input_shape)          # the last axis' index in the batch's shape (n, *input_shape)
        if self.axis not in (-1, last):
            raise ValueError(f"{self.name}: BatchNorm normalizes the channels on the last axis (axis=-1 or "
                             f"{last} for inputs of shape (n, {', '.join(map(str, input_shape))})), got axis="
                             f"{self.axis}; transpose the data to channels-last (e.g. (N, C, H, W) -> "
                             f"X.transpose(0, 2, 3, 1))")
        return input_shape

    def _bind(self, params, grads, dtype):
        super()._bind(params, grads, dtype)
        C = self.input_shape[-1]
        rm, rv = self.buffers.get("running_mean"), self.buffers.get("running_var")
        if any(a is None or a.shape != (C,) or a.dtype != dtype for a in (rm, rv)):
            self.buffers["running_mean"] = np.zeros(C, dtype=dtype)
            self.buffers["running_var"] = np.ones(C, dtype=dtype)
        self._stats = (np.empty(C, dtype=dtype), np.empty(C, dtype=dtype))   # mean, invstd of the last forward

    @property
    def batch_statistics(self) -> bool:
        """Whether training normalizes with the batch's statistics and updates the running ones: False for a layer
        frozen at compile, which runs in inference mode in training too."""
        return not self._frozen

    @property
    def running_mean(self) -> NDArray[Any]:
        return self.buffers["running_mean"]

    @running_mean.setter
    def running_mean(self, value: Any) -> None:
        self.buffers["running_mean"][...] = value

    @property
    def running_var(self) -> NDArray[Any]:
        return self.buffers["running_var"]

    @running_var.setter
    def running_var(self, value: Any) -> None:
        self.buffers["running_var"][...] = value

    def check_training_batches(self, sizes: Iterable[int], owner: str) -> None:
        """Raise the ValueError of a one-value-per-channel training batch before training starts, when a batch
        of one of `sizes` (samples per batch) would have one value per channel; nothing for a frozen layer
        (inference mode) or a variable-size input (then forward checks)."""
        if self._frozen or self.input_shape is None or any(d is None for d in self.input_shape):
            return
        per_sample = int(np.prod(self.input_shape[:-1], dtype=np.int64))       # values per channel per sample
        if per_sample == 1 and 1 in sizes:
            raise ValueError(f"{owner}: {self.name}: a training batch of 1 sample would have 1 value per channel "
                             f"(BatchNorm needs more than 1, as torch.nn.BatchNorm1d); {owner} would leave such a "
                             "batch: choose a batch_size that does not leave a last batch of one sample")

    # None, or a callable summing a float64 array in place over the processes of a data-parallel fit: set by
    # fastnn.distributed.DataParallel(sync_batchnorm=True) for the fit, the training statistics are then the
    # global batch's (each of the forward's and the backward's reductions summed over the processes)
    reducer: Callable[[NDArray[np.float64]], None] | None = None
    _sync_forward = False

    def forward(self, X: FloatArray, training: bool = False) -> FloatArray:
        if not self.batch_statistics:      # a frozen BatchNorm runs in inference mode, in fit too (Keras 3)
            training = False
        self._sync_forward = False
        if training and self.reducer is not None:     # the global batch's statistics (fastnn/distributed.py)
            return self._forward_synced(X)
        if training and X.size // max(X.shape[-1], 1) < 2:
            raise ValueError(f"{self.name}: expected more than 1 value per channel in training mode, got a "
                             f"batch of shape {X.shape} (as torch.nn.BatchNorm1d)")
        Y, Xhat = self._batch_buffers(X.shape, lambda _: (np.empty(X.shape, X.dtype), np.empty(X.shape, X.dtype)))
        mean, invstd = self._stats
        _k.batchnorm_forward(rows2d(X), self.params["weight"], self.params["bias"], rows2d(Y), rows2d(Xhat),
                             mean, invstd, self.buffers["running_mean"], self.buffers["running_var"],
                             bool(training), self.momentum, self.eps, get_num_threads())
        self._Xhat, self._batch_stats = Xhat, bool(training)
        return Y

    def backward(self, dY: FloatArray) -> FloatArray | None:
        if self._sync_forward:
            return self._backward_synced(dY)
        Xhat = self._Xhat
        dX = self._batch_buffers(dY.shape, lambda _: np.empty(Xhat.shape, Xhat.dtype), tag="grad")
        _k.batchnorm_backward(rows2d(dY), rows2d(Xhat), self.params["weight"], self._stats[1],
                              rows2d(dX) if self.need_input_grad else None, self.grads["weight"],
                              self.grads["bias"], self._batch_stats, get_num_threads())
        return dX if self.need_input_grad else None

    def _forward_synced(self, X):
        """The training forward with the global batch's statistics over the processes of a data-parallel fit (mean,
        then biased variance, each one ``reducer`` sum of C numbers)."""
        X2 = rows2d(X)
        m, C = X2.shape
        Y, Xhat = self._batch_buffers(X.shape, lambda _: (np.empty(X.shape, X.dtype), np.empty(X.shape, X.dtype)))
        buf = np.empty(C + 1)
        buf[:C] = X2.sum(axis=0, dtype=np.float64)
        buf[C] = m
        self.reducer(buf)
        M = buf[C]
        if M < 2:
            raise ValueError(f"{self.name}: expected more than 1 value per channel in training mode, got "
                             f"{int(M)} over all ranks (synchronized BatchNorm)")
        mean = buf[:C] / M
        d = X2 - mean
        var = np.einsum("ij,ij->j", d, d) if m else np.zeros(C)
        self.reducer(var)
        var /= M
        invstd = 1.0 / np.sqrt(var + self.eps)
        smean, sinv = self._stats
        smean[...] = mean
        sinv[...] = invstd
        Xh2 = rows2d(Xhat)
        np.multiply(d, invstd, out=Xh2, casting="unsafe")
        np.multiply(Xh2, self.params["weight"], out=rows2d(Y))
        rows2d(Y)[...] += self.params["bias"]
        mom = self.momentum
        rm, rv = self.buffers["running_mean"], self.buffers["running_var"]
        rm[...] = (1.0 - mom) * rm + mom * mean
        rv[...] = (1.0 - mom) * rv + mom * (var * M / (M - 1))
        self._Xhat, self._batch_stats, self._sync_forward = Xhat, True, True
        return Y

    def _backward_synced(self, dY):
        """Backward of ``_forward_synced``: the two reductions over the batch (sum dY, sum dY * Xhat) are
        allreduced; the parameter gradients stay local (the gradient allreduce sums them)."""
        Xhat = self._Xhat
        dY2, Xh2 = rows2d(dY), rows2d(Xhat)
        C = Xh2.shape[1]
        buf = np.empty(2 * C + 1)
        buf[:C] = dY2.sum(axis=0, dtype=np.float64)
        buf[C:2 * C] = np.einsum("ij,ij->j", dY2, Xh2) if dY2.shape[0] else 0.0
        buf[2 * C] = dY2.shape[0]
        self.grads["bias"][...] = buf[:C]
        self.grads["weight"][...] = buf[C:2 * C]
        self.reducer(buf)
        if not self.need_input_grad:
            return None
        M = buf[2 * C]
        k = self.params["weight"] * self._stats[1] / M
        dX = self._batch_buffers(dY.shape, lambda _: np.empty(Xhat.shape, Xhat.dtype), tag="grad")
        rows2d(dX)[...] = k * (M * dY2 - buf[:C] - Xh2 * buf[C:2 * C])
        return dX

    def get_config(self) -> Config:
        return {"name": self.name, "momentum": self.momentum, "eps": self.eps, "axis": self.axis}

    def extra_repr(self) -> str:
        return f"momentum={self.momentum}, eps={self.eps}" + (f", axis={self.axis}" if self.axis != -1 else "")


class LayerNorm(_Norm):
    """Layer normalization over the last axis, as ``torch.nn.LayerNorm(C)``: each position (a sample of
    (n, C), a time step of (n, T, C), a pixel of (n, H, W, C)) is normalized over its C features.

    ``y = weight * (x - mean) / sqrt(var + eps) + bias`` with the mean and biased variance over the last
    axis; the same in training and inference.

    Args:
        eps: added to the variance (1e-5).

    Attributes: ``weight`` and ``bias`` (C,).  Shape: input and output (n, ..., C).
    """
    mask_support = "pass"     # per step: a mask on (N, T, ...) passes unchanged (fastnn.layers.base)

    def __init__(self, eps: float = 1e-5, name: str | None = None) -> None:
        super().__init__(name)
        self.eps = check_number(type(self).__name__, "eps", eps, low=0.0, low_open=True)

    def forward(self, X: FloatArray, training: bool = False) -> FloatArray:
        def make(_):
            return np.empty(X.shape, X.dtype), np.empty(X.shape, X.dtype), np.empty(X.shape[:-1], X.dtype)

        Y, Xhat, invstd = self._batch_buffers(X.shape, make)
        _k.layernorm_forward(rows2d(X), self.params["weight"], self.params["bias"], rows2d(Y), rows2d(Xhat),
                             invstd.reshape(-1), self.eps, get_num_threads())
        self._Xhat, self._invstd = Xhat, invstd
        return Y

    def backward(self, dY: FloatArray) -> FloatArray | None:
        Xhat = self._Xhat
        dX = self._batch_buffers(dY.shape, lambda _: np.empty(Xhat.shape, Xhat.dtype), tag="grad")
        _k.layernorm_backward(rows2d(dY), rows2d(Xhat), self.params["weight"], self._invstd.reshape(-1),
                              rows2d(dX) if self.need_input_grad else None, self.grads["weight"],
                              self.grads["bias"], get_num_threads())
        return dX if self.need_input_grad else None

    def get_config(self) -> Config:
        return {"name": self.name, "eps": self.eps}

    def extra_repr(self) -> str:
        return f"eps={self.eps}"
