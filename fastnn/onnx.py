"""ONNX export: ``fastnn.onnx.export(model, path)`` writes a built model as an ONNX file whose inference matches
``model.predict`` (onnxruntime, max abs difference <= 1e-5 in float32 in the tests).

The ``onnx`` package is needed only here and only when a function runs (``pip install "fastnn[onnx]"``):
importing fastnn or this module never imports it.

What the file holds (see ``export``):
- One input and one output, named ``input_name`` / ``output_name``, with the same channels-last layout as fastnn's
  arrays: (N, F), (N, T, F), (N, H, W, C).  The batch axis is dynamic (or fixed with ``batch_size``); an axis the
  model declares as None (a sequence length) stays dynamic.  A model whose input feeds an Embedding takes int64 ids.
- The graph is built from standard ONNX operators with the onnx package's helpers.  Convolutions and pooling run
  as ONNX ``Conv`` / ``MaxPool`` / ``AveragePool`` (channels-first) between two ``Transpose`` nodes.  Recurrent
  layers are an ONNX ``Scan`` whose body is one step of fastnn's cell, with the mask blend
  ``h = where(m_t, h_new, h_old)`` when a mask reaches them: every mask pattern (padding at the end, in the middle,
  at both ends) gives fastnn's result, not only right-padded ones.  Masks are computed in the graph exactly as the
  executor computes them (Embedding(mask_zero=True), Masking; the AND of several masks at a merge).
- Inference semantics: Dropout is the identity (weight_scaling mode: a multiplication by 1 - rate), BatchNorm uses
  its running statistics, a Residual with stochastic depth adds ``survival_prob * block(x)``.

Every layer class of ``fastnn.layers.REGISTRY`` converts; any other class (a user-written layer, or a subclass of
a registry class) is refused with a ValueError naming the layer.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnx

    from fastnn.model import Model

DEFAULT_OPSET = 17      # LayerNormalization needs 17; onnxruntime >= 1.14 runs it
MIN_OPSET = 17
_INSTALL = 'pip install "fastnn[onnx]"'
_INT64_MIN = -(2 ** 63)

__all__ = ["export", "to_proto", "DEFAULT_OPSET", "MIN_OPSET"]


def _import_onnx():
    try:
        import onnx
    except ImportError as exc:
        raise ImportError(f"fastnn.onnx needs the onnx package, which is not installed: {_INSTALL}") from exc
    return onnx


def export(model: Model, path: str | os.PathLike[str], opset: int | None = None, dtype: str | None = None,
           batch_size: int | None = None, input_name: str = "input", output_name: str = "output") -> onnx.ModelProto:
    """Write `model` (a built fastnn ``Model`` or ``Sequential``) to `path` as an ONNX model; returns the
    ``onnx.ModelProto`` (checked with ``onnx.checker.check_model``).

    Args:
        model: the model; it must be built (``input_dim`` / ``input_shape`` given, or fit/predict called once).
        path: the file to write (a str or an ``os.PathLike``).
        opset: the ONNX opset (default ``DEFAULT_OPSET``, 17; from 17 up to what the installed onnx knows).
        dtype: "float32" (default, whatever the model's dtype) or "float64": the type of the ONNX input (unless
            it takes ids), output, weights and arithmetic.  onnxruntime's CPU provider lacks double kernels for
            some operators (Conv, pooling, Erf among them), so float64 files of such models may not run there.
        batch_size: None (default) for a dynamic batch axis, or an int >= 1 to fix it.
        input_name, output_name: the names of the graph's input and output.

    The file takes the arrays ``model.predict`` takes (channels-last; int64 ids for a model starting with an
    Embedding) and returns what it returns (probabilities for a model ending in softmax or sigmoid).  Raises
    TypeError for a non-model or a bad path, ValueError for an unbuilt model, a bad argument, or a layer that
    cannot be exported (naming it).
    """
    if isinstance(path, bool) or not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"export: path must be a str or an os.PathLike, got {type(path).__name__} {path!r}")
    path = os.fspath(path)
    if not isinstance(path, str):
        raise TypeError(f"export: path must name a file as text, got {path!r}")
    proto = to_proto(model, opset=opset, dtype=dtype, batch_size=batch_size, input_name=input_name,
                     output_name=output_name)
    _import_onnx().save_model(proto, path)
    return proto


def to_proto(model: Model, opset: int | None = None, dtype: str | None = None, batch_size: int | None = None,
             input_name: str = "input", output_name: str = "output") -> onnx.ModelProto:
    """The ``onnx.ModelProto`` that ``export`` writes (same arguments, no path), checked by the onnx checker."""
    onnx = _import_onnx()
    from fastnn.model import Model
    if not isinstance(model, Model):
        raise TypeError(f"export: model must be a fastnn Model or Sequential, got {type(model).__name__}")
    if not model.built:
        raise ValueError(f"export: {model.name} is not built yet: give input_dim / input_shape, or call predict "
                         "or fit once")
    max_opset = onnx.defs.onnx_opset_version()
    opset = DEFAULT_OPSET if opset is None else opset
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)) or not MIN_OPSET <= opset <= max_opset:
        raise ValueError(f"export: opset must be an int in [{MIN_OPSET}, {max_opset}] (the installed onnx "
                         f"{onnx.__version__} knows up to {max_opset}), got {opset!r}")
    try:
        np_dtype = np.dtype("float32" if dtype is None else dtype)
    except TypeError:
        np_dtype = None
    if np_dtype not in (np.float32, np.float64):
        raise ValueError(f"export: dtype must be 'float32' or 'float64', got {dtype!r}")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer))
                                   or batch_size < 1):
        raise ValueError(f"export: batch_size must be None (dynamic) or an int >= 1, got {batch_size!r}")
    for what, name in (("input_name", input_name), ("output_name", output_name)):
        if not isinstance(name, str) or not name:
            raise ValueError(f"export: {what} must be a non-empty str, got {name!r}")
    if input_name == output_name:
        raise ValueError(f"export: input_name and output_name must differ, both are {input_name!r}")
    for layer in model.graph.layers:
        _converter(layer)                      # refuses an unknown layer before anything is built
    ctx = _Context(onnx, int(opset), np_dtype, reserved=(input_name, output_name))
    proto = _convert(ctx, model, batch_size, input_name, output_name)
    onnx.checker.check_model(proto)
    return proto


# ====================================================================================== graph construction
class _Context:
    """What every graph under construction shares: the onnx module, the opset, the element type, the unique
    names and the initializers (all in the main graph; Scan bodies read them from the outer scope)."""

    def __init__(self, onnx, opset, np_dtype, reserved=()):
        self.onnx, self.helper = onnx, onnx.helper
        self.opset, self.dtype = opset, np_dtype
        self.elem = onnx.helper.np_dtype_to_tensor_dtype(np_dtype)
        self.initializers = []
        self._names = set(reserved)
        self._counts = {}
        self._scalars = {}

    def fresh(self, hint):
        """A value / node name not used before, from `hint` (``hint``, then ``hint_2``, ``hint_3``, ...)."""
        name = hint
        while name in self._names:
            self._counts[hint] = k = self._counts.get(hint, 1) + 1
            name = f"{hint}_{k}"
        self._names.add(name)
        return name

    def const(self, value, hint, dtype=None):
        """An initializer holding `value` (cast to the export dtype unless `dtype` is given); its name."""
        arr = np.ascontiguousarray(np.asarray(value, dtype=self.dtype if dtype is None else dtype))
        name = self.fresh(hint)
        self.initializers.append(self.onnx.numpy_helper.from_array(arr, name))
        return name

    def scalar(self, value):
        """A float scalar initializer of the export dtype, shared by every use of the same value."""
        key = float(value)
        if key not in self._scalars:
            self._scalars[key] = self.const(np.asarray(key), f"const_{key:g}")
        return self._scalars[key]

    def ints(self, values, hint="ints"):
        return self.const(np.asarray(values, dtype=np.int64), hint, dtype=np.int64)


class _Graph:
    """The nodes of one graph (the main one or a Scan body) and the operator helpers that add them."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.nodes = []

    def op(self, op_type, inputs, hint, n_out=1, **attrs):
        """Add an `op_type` node on `inputs`; its output name (a list of `n_out` names when n_out > 1)."""
        base = f"{hint}/{op_type}"
        outs = [self.ctx.fresh(base + (f":{k}" if n_out > 1 else "")) for k in range(n_out)]
        node = self.ctx.helper.make_node(op_type, list(inputs), outs, name=self.ctx.fresh(f"{base}#node"), **attrs)
        self.nodes.append(node)
        return outs if n_out > 1 else outs[0]

    def reduce(self, op_type, x, axes, keepdims, hint):
        """ReduceMax / ReduceMean over `axes` (their axes moved from attribute to input at opset 18)."""
        if self.ctx.opset >= 18:
            return self.op(op_type, [x, self.ctx.ints(axes, f"{hint}/axes")], hint, keepdims=int(keepdims))
        return self.op(op_type, [x], hint, axes=list(axes), keepdims=int(keepdims))

    def unsqueeze(self, x, axes, hint):
        return self.op("Unsqueeze", [x, self.ctx.ints(axes, f"{hint}/axes")], hint)

    def transpose(self, x, perm, hint):
        return self.op("Transpose", [x], hint, perm=list(perm))

    def reverse_time(self, x, hint):
        """x[:, ::-1]: axis 1 reversed."""
        c = self.ctx
        return self.op("Slice", [x, c.ints([-1], f"{hint}/start"), c.ints([_INT64_MIN], f"{hint}/end"),
                                 c.ints([1], f"{hint}/axis"), c.ints([-1], f"{hint}/step")], hint)

    def zeros_like_rows(self, x, units, hint):
        """Zeros of shape (N, units), N the first axis of x (an initial state)."""
        c = self.ctx
        n = self.op("Slice", [self.op("Shape", [x], hint), c.ints([0], f"{hint}/start"), c.ints([1], f"{hint}/end")],
                    hint)
        shape = self.op("Concat", [n, c.ints([units], f"{hint}/units")], hint, axis=0)
        zero = c.helper.make_tensor("zero", c.elem, [1], [0.0])
        return self.op("ConstantOfShape", [shape], hint, value=zero)


# ====================================================================================== activations
def _act_elu(g, x, alpha, scale, hint):
    """scale * (x for x > 0, alpha * (exp(x) - 1) otherwise), exp at min(x, 0) as fastnn computes it."""
    c = g.ctx
    neg = g.op("Sub", [g.op("Exp", [g.op("Min", [x, c.scalar(0.0)], hint)], hint), c.scalar(1.0)], hint)
    y = g.op("Where", [g.op("Greater", [x, c.scalar(0.0)], hint), x, g.op("Mul", [neg, c.scalar(alpha)], hint)],
             hint)
    return y if scale == 1.0 else g.op("Mul", [y, c.scalar(scale)], hint)


def _act_gelu(g, x, hint):
    c = g.ctx
    cdf = g.op("Add", [c.scalar(1.0), g.op("Erf", [g.op("Mul", [x, c.scalar(0.7071067811865476)], hint)], hint)],
               hint)
    return g.op("Mul", [g.op("Mul", [x, c.scalar(0.5)], hint), cdf], hint)


def _act_gelu_tanh(g, x, hint):
    """x (1 + tanh(sqrt(2/pi) (v + 0.044715 v^3))) / 2 with v = x clipped to [-20, 20] (fastnn's kernel)."""
    c = g.ctx
    v = g.op("Max", [g.op("Min", [x, c.scalar(20.0)], hint), c.scalar(-20.0)], hint)
    cube = g.op("Mul", [g.op("Mul", [v, v], hint), v], hint)
    inner = g.op("Add", [v, g.op("Mul", [cube, c.scalar(0.044715)], hint)], hint)
    t = g.op("Tanh", [g.op("Mul", [inner, c.scalar(0.7978845608028654)], hint)], hint)
    return g.op("Mul", [g.op("Mul", [x, c.scalar(0.5)], hint), g.op("Add", [t, c.scalar(1.0)], hint)], hint)


def _act_softplus(g, x, hint):
    """log(1 + exp(x)), x itself above 20 (torch's threshold, fastnn's kernel)."""
    c = g.ctx
    soft = g.op("Log", [g.op("Add", [g.op("Exp", [g.op("Min", [x, c.scalar(20.0)], hint)], hint), c.scalar(1.0)],
                             hint)], hint)
    return g.op("Where", [g.op("Greater", [x, c.scalar(20.0)], hint), x, soft], hint)


def _act_mish(g, x, hint):
    """x tanh(softplus(x)) as fastnn computes it: e = exp(min(x, 40)), n = e (e + 2), x n / (n + 2)."""
    c = g.ctx
    e = g.op("Exp", [g.op("Min", [x, c.scalar(40.0)], hint)], hint)
    n = g.op("Mul", [e, g.op("Add", [e, c.scalar(2.0)], hint)], hint)
    return g.op("Mul", [x, g.op("Div", [n, g.op("Add", [n, c.scalar(2.0)], hint)], hint)], hint)


def _activation_table():
    from fastnn._core.kinds import ACT
    selu_alpha, selu_scale = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946   # fnn_act.h
    return {
        ACT.IDENTITY: lambda g, x, a, h: g.op("Identity", [x], h),
        ACT.RELU: lambda g, x, a, h: g.op("Relu", [x], h),
        ACT.LEAKY_RELU: lambda g, x, a, h: g.op("Where", [g.op("Greater", [x, g.ctx.scalar(0.0)], h), x,
                                                          g.op("Mul", [x, g.ctx.scalar(a)], h)], h),
        ACT.SIGMOID: lambda g, x, a, h: g.op("Sigmoid", [x], h),
        ACT.TANH: lambda g, x, a, h: g.op("Tanh", [x], h),
        ACT.GELU: lambda g, x, a, h: _act_gelu(g, x, h),
        ACT.GELU_TANH: lambda g, x, a, h: _act_gelu_tanh(g, x, h),
        ACT.SILU: lambda g, x, a, h: g.op("Mul", [x, g.op("Sigmoid", [x], h)], h),
        ACT.ELU: lambda g, x, a, h: _act_elu(g, x, a, 1.0, h),
        ACT.SELU: lambda g, x, a, h: _act_elu(g, x, selu_alpha, selu_scale, h),
        ACT.SOFTPLUS: lambda g, x, a, h: _act_softplus(g, x, h),
        ACT.MISH: lambda g, x, a, h: _act_mish(g, x, h),
        ACT.SOFTMAX: lambda g, x, a, h: g.op("Softmax", [x], h, axis=-1),
    }


def _activate(g, act, x, hint):
    """The activation layer `act` (an Activation instance) applied to x."""
    fn = _activation_table().get(act.kind)
    if fn is None:
        raise ValueError(f"export: {hint}: the activation kind {act.kind.label!r} has no ONNX conversion in "
                         "fastnn/onnx.py (add it to _activation_table)")
    return fn(g, x, act.alpha, hint)


# ====================================================================================== layer converters
# Each takes (graph, layer, inputs: list of value names, mask: the (N, T) bool mask's name or None) and returns
# the list of the layer's output names (one per output).

def _c_activation(g, layer, xs, mask):
    return [_activate(g, layer, xs[0], layer.name)]


def _param(g, layer, key, hint=None):
    return g.ctx.const(layer.params[key], f"{hint or layer.name}.{key}")


def _c_dense(g, layer, xs, mask):
    y = g.op("MatMul", [xs[0], _param(g, layer, "weight")], layer.name)
    if layer.use_bias:
        y = g.op("Add", [y, _param(g, layer, "bias")], layer.name)
    return [_activate(g, layer.activation, y, layer.name)]


def _c_dropout(g, layer, xs, mask):
    if layer.mode == "inverted" or layer.rate == 0.0:
        return [g.op("Identity", [xs[0]], layer.name)]
    return [g.op("Mul", [xs[0], g.ctx.scalar(1.0 - layer.rate)], layer.name)]


def _c_flatten(g, layer, xs, mask):
    return [g.op("Flatten", [xs[0]], layer.name, axis=1)]


def _c_reshape(g, layer, xs, mask):
    shape = layer.output_shape if None not in layer.output_shape else layer.shape
    return [g.op("Reshape", [xs[0], g.ctx.ints([0] + list(shape), f"{layer.name}/shape")], layer.name)]


def _c_permute(g, layer, xs, mask):
    return [g.transpose(xs[0], (0,) + layer.dims, layer.name)]


def _c_add(g, layer, xs, mask):
    y = g.op("Add", [xs[0], xs[1]], layer.name)
    for x in xs[2:]:
        y = g.op("Add", [y, x], layer.name)
    return [y]


def _c_concatenate(g, layer, xs, mask):
    return [g.op("Concat", list(xs), layer.name, axis=-1)]


def _c_residual(g, layer, xs, mask):
    x, h = xs
    if layer.survival_prob < 1.0:         # inference of stochastic depth: x + p * block(x)
        return [g.op("Add", [g.op("Mul", [h, g.ctx.scalar(layer.survival_prob)], layer.name), x], layer.name)]
    return [g.op("Add", [x, h], layer.name)]


def _c_batchnorm(g, layer, xs, mask):
    """Inference over the last axis: (x - running_mean) / sqrt(running_var + eps) * weight + bias."""
    c, h = g.ctx, layer.name
    invstd = 1.0 / np.sqrt(np.asarray(layer.buffers["running_var"], np.float64) + layer.eps)
    xhat = g.op("Mul", [g.op("Sub", [xs[0], c.const(layer.buffers["running_mean"], f"{h}.running_mean")], h),
                        c.const(invstd, f"{h}.invstd")], h)
    y = g.op("Mul", [xhat, _param(g, layer, "weight")], h)
    return [g.op("Add", [y, _param(g, layer, "bias")], h)]


def _c_layernorm(g, layer, xs, mask):
    """xhat * weight + bias over the last axis, xhat = (x - mean) / sqrt(var + eps) with the statistics in float64
    as fastnn's kernel computes them (onnxruntime's LayerNormalization takes E[x^2] - E[x]^2 in float32, which
    loses digits when the mean is large against the spread)."""
    c, h = g.ctx, layer.name
    x = g.op("Cast", [xs[0]], h, to=c.onnx.TensorProto.DOUBLE) if c.dtype != np.float64 else xs[0]
    d = g.op("Sub", [x, g.reduce("ReduceMean", x, [-1], True, h)], h)
    var = g.reduce("ReduceMean", g.op("Mul", [d, d], h), [-1], True, h)
    eps = c.const(np.asarray(layer.eps), f"{h}.eps", dtype=np.float64)
    xhat = g.op("Div", [d, g.op("Sqrt", [g.op("Add", [var, eps], h)], h)], h)
    if c.dtype != np.float64:
        xhat = g.op("Cast", [xhat], h, to=c.elem)
    y = g.op("Mul", [xhat, _param(g, layer, "weight")], h)
    return [g.op("Add", [y, _param(g, layer, "bias")], h)]


def _c_embedding(g, layer, xs, mask):
    return [g.op("Gather", [_param(g, layer, "weight"), xs[0]], layer.name, axis=0)]


def _mask_embedding(g, layer, x):
    """(N, T) bool: the ids that are not 0."""
    return g.op("Not", [g.op("Equal", [x, g.ctx.ints(0, f"{layer.name}/pad_id")], layer.name)], layer.name)


def _mask_masking(g, layer, x):
    """(N, T) bool: the steps with some feature different from mask_value."""
    diff = g.op("Cast", [g.op("Not", [g.op("Equal", [x, g.ctx.scalar(layer.mask_value)], layer.name)], layer.name)],
                layer.name, to=g.ctx.onnx.TensorProto.INT32)
    rank = len(layer.input_shape) + 1
    anyv = g.reduce("ReduceMax", diff, list(range(2, rank)), False, layer.name)
    return g.op("Cast", [anyv], layer.name, to=g.ctx.onnx.TensorProto.BOOL)


def _c_masking(g, layer, xs, mask):
    """The input with the masked steps set to 0 (x * mask, as fastnn)."""
    keep = g.op("Cast", [mask], layer.name, to=g.ctx.elem)
    extra = list(range(2, len(layer.input_shape) + 1))
    return [g.op("Mul", [xs[0], g.unsqueeze(keep, extra, layer.name)], layer.name)]


def _variable_same(layer):
    """Whether `layer` pads "same" on an axis whose size varies (then the padding is computed at run time)."""
    return layer.padding == "same" and None in tuple(layer.input_shape[:-1])


def _spatial_attrs(layer, kernel, strides, dilations, pads_fn):
    """Conv / pool attributes: explicit pads from the layer's geometry when the spatial sizes are fixed, else
    SAME_UPPER (TensorFlow's "same": the odd extra position after) for a pool "same" on a variable axis (a
    convolution pads such an input itself: ``_pad_same``)."""
    attrs = {"kernel_shape": list(kernel), "strides": list(strides)}
    if dilations is not None:
        attrs["dilations"] = list(dilations)
    spatial = tuple(layer.input_shape[:-1])
    if _variable_same(layer):
        if dilations is None:
            attrs["auto_pad"] = "SAME_UPPER"
    else:
        pads = pads_fn(spatial)
        attrs["pads"] = [int(p[0]) for p in pads] + [int(p[1]) for p in pads]
    return attrs


def _channels_first(g, x, rank, hint):
    return g.transpose(x, [0, rank + 1] + list(range(1, rank + 1)), hint)


def _channels_last(g, x, rank, hint):
    return g.transpose(x, [0] + list(range(2, rank + 2)) + [1], hint)


def _pad_same(g, layer, x, rank):
    """x (channels-first) zero-padded as "same" pads it, sizes read at run time (a variable axis; onnxruntime's
    auto_pad refuses dilation): per axis total = max((ceil(n / s) - 1) s + d (k - 1) + 1 - n, 0), half (rounded
    down) before and the rest after, as fastnn's conv._same."""
    c, h = g.ctx, layer.name
    n = g.op("Slice", [g.op("Shape", [x], h), c.ints([2], f"{h}/start"), c.ints([2 + rank], f"{h}/end")], h)
    s = c.ints(layer.strides, f"{h}/strides")
    span = c.ints([d * (k - 1) + 1 for k, d in zip(layer.kernel_size, layer.dilation_rate)], f"{h}/span")
    one = c.ints([1] * rank, f"{h}/one")
    out = g.op("Div", [g.op("Sub", [g.op("Add", [n, s], h), one], h), s], h)              # ceil(n / s)
    need = g.op("Sub", [g.op("Add", [g.op("Mul", [g.op("Sub", [out, one], h), s], h), span], h), n], h)
    total = g.op("Max", [need, c.ints([0] * rank, f"{h}/zero")], h)
    before = g.op("Div", [total, c.ints([2] * rank, f"{h}/two")], h)
    after = g.op("Sub", [total, before], h)
    nc = c.ints([0, 0], f"{h}/nc")
    return g.op("Pad", [x, g.op("Concat", [nc, before, nc, after], h, axis=0)], h)


def _c_conv(g, layer, xs, mask):
    r = layer.spatial_rank
    W = np.asarray(layer.params["weight"]).transpose((r + 1, r) + tuple(range(r)))   # (F, C / groups, k...)
    x = _channels_first(g, xs[0], r, layer.name)
    if _variable_same(layer):
        x = _pad_same(g, layer, x, r)
    inputs = [x, g.ctx.const(W, f"{layer.name}.weight")]
    if layer.use_bias:
        inputs.append(_param(g, layer, "bias"))
    attrs = _spatial_attrs(layer, layer.kernel_size, layer.strides, layer.dilation_rate, layer.pads_for)
    y = g.op("Conv", inputs, layer.name, group=layer.groups, **attrs)
    return [_activate(g, layer.activation, _channels_last(g, y, r, layer.name), layer.name)]


def _c_pool(g, layer, xs, mask):
    r = layer.spatial_rank
    attrs = _spatial_attrs(layer, layer.pool_size, layer.strides, None, layer.pads_for)
    if layer.is_max:
        op = "MaxPool"
    else:
        op = "AveragePool"
        attrs["count_include_pad"] = 0      # "same": the mean of the real inputs of each window (Keras)
    y = g.op(op, [_channels_first(g, xs[0], r, layer.name)], layer.name, **attrs)
    return [_channels_last(g, y, r, layer.name)]


def _c_global_pool(g, layer, xs, mask):
    op = "ReduceMax" if layer.is_max else "ReduceMean"
    return [g.reduce(op, xs[0], list(range(1, layer.spatial_rank + 1)), layer.keepdims, layer.name)]


# ------------------------------------------------------------------------------------- recurrent layers
def _cell_step(g, layer, h, c, xp, W_hh, b_hh, hint):
    """One step of fastnn's cell (PyTorch's math) inside a Scan body: (h', c') (c' None unless LSTM).
    xp = x W_ih + b_ih of this step, computed for all steps before the loop."""
    from fastnn.layers.recurrent import GRU, LSTM
    ctx, U = g.ctx, layer.units
    hb = g.op("Add", [g.op("MatMul", [h, W_hh], hint), b_hh], hint)
    if isinstance(layer, LSTM):
        i, f, gg, o = g.op("Split", [g.op("Add", [xp, hb], hint), ctx.ints([U] * 4, f"{hint}/split")], hint,
                           n_out=4, axis=1)
        i, f, o = (g.op("Sigmoid", [v], hint) for v in (i, f, o))
        c_new = g.op("Add", [g.op("Mul", [f, c], hint), g.op("Mul", [i, g.op("Tanh", [gg], hint)], hint)], hint)
        return g.op("Mul", [o, g.op("Tanh", [c_new], hint)], hint), c_new
    if isinstance(layer, GRU):
        split = ctx.ints([U] * 3, f"{hint}/split")
        a_r, a_z, a_n = g.op("Split", [xp, split], hint, n_out=3, axis=1)
        b_r, b_z, b_n = g.op("Split", [hb, split], hint, n_out=3, axis=1)
        r = g.op("Sigmoid", [g.op("Add", [a_r, b_r], hint)], hint)
        z = g.op("Sigmoid", [g.op("Add", [a_z, b_z], hint)], hint)
        n = g.op("Tanh", [g.op("Add", [a_n, g.op("Mul", [r, b_n], hint)], hint)], hint)
        keep = g.op("Sub", [ctx.scalar(1.0), z], hint)
        return g.op("Add", [g.op("Mul", [keep, n], hint), g.op("Mul", [z, h], hint)], hint), None
    pre = g.op("Add", [xp, hb], hint)
    return g.op("Relu" if layer.activation == "relu" else "Tanh", [pre], hint), None


def _run_recurrent(g, layer, x, states, mask, want_sequence):
    """Scan `layer` (a SimpleRNN, LSTM or GRU) over x (N, T, F) from `states` ([] for zeros) under `mask`
    ((N, T) bool name or None).  Returns (sequence (N, T, U) in processing order or None, h_last, c_last)."""
    from fastnn.layers.recurrent import LSTM
    ctx, U, hint = g.ctx, layer.units, layer.name
    lstm = isinstance(layer, LSTM)
    helper, elem = ctx.helper, ctx.elem
    gu = layer.params["weight_hh"].shape[1]
    xp = g.op("Add", [g.op("MatMul", [x, _param(g, layer, "weight_ih", hint)], hint),
                      _param(g, layer, "bias_ih", hint)], hint)
    W_hh, b_hh = _param(g, layer, "weight_hh", hint), _param(g, layer, "bias_hh", hint)
    n_states = 2 if lstm else 1
    init = list(states) if states else [g.zeros_like_rows(x, U, f"{hint}/zeros") for _ in range(n_states)]
    scan_in = [xp] + ([g.unsqueeze(mask, [2], hint)] if mask is not None else [])

    body = _Graph(ctx)
    bh = f"{hint}/step"
    h_in = ctx.fresh(f"{bh}/h_in")
    c_in = ctx.fresh(f"{bh}/c_in") if lstm else None
    xp_t = ctx.fresh(f"{bh}/xp_t")
    m_t = ctx.fresh(f"{bh}/m_t") if mask is not None else None
    h_new, c_new = _cell_step(body, layer, h_in, c_in, xp_t, W_hh, b_hh, bh)
    if m_t is not None:                     # masked step: the state is carried unchanged
        h_new = body.op("Where", [m_t, h_new, h_in], bh)
        if lstm:
            c_new = body.op("Where", [m_t, c_new, c_in], bh)
    outs = [body.op("Identity", [h_new], bh)] + ([body.op("Identity", [c_new], bh)] if lstm else [])
    if want_sequence:
        outs.append(body.op("Identity", [h_new], bh))

    def vi(name, width, e=elem):
        return helper.make_tensor_value_info(name, e, [None, width])

    b_inputs = [vi(h_in, U)] + ([vi(c_in, U)] if lstm else []) + [vi(xp_t, gu)]
    if m_t is not None:
        b_inputs.append(vi(m_t, 1, ctx.onnx.TensorProto.BOOL))
    b_outputs = [vi(o, U) for o in outs]
    graph = helper.make_graph(body.nodes, ctx.fresh(f"{hint}_step"), b_inputs, b_outputs)
    k = len(scan_in)
    direction = 1 if layer.go_backwards else 0
    attrs = dict(body=graph, num_scan_inputs=k, scan_input_axes=[1] * k, scan_input_directions=[direction] * k)
    if want_sequence:
        attrs["scan_output_axes"] = [1]     # appended: position s holds the state after processing step s
    res = g.op("Scan", init + scan_in, hint, n_out=len(outs), **attrs)
    res = res if isinstance(res, list) else [res]
    h_last = res[0]
    c_last = res[1] if lstm else None
    return (res[-1] if want_sequence else None), h_last, c_last


def _c_recurrent(g, layer, xs, mask):
    seq, h, c = _run_recurrent(g, layer, xs[0], xs[1:], mask, layer.return_sequences)
    out = seq if layer.return_sequences else h
    if layer.return_state:
        return [out, h] + ([c] if c is not None else [])
    return [out]


def _c_bidirectional(g, layer, xs, mask):
    outs = []
    for lay in (layer.layer, layer.backward_layer):
        seq, h, _ = _run_recurrent(g, lay, xs[0], [], mask, lay.return_sequences)
        outs.append(seq if lay.return_sequences else h)
    yf, yb = outs
    if layer.return_sequences:          # the backward half back in time order: position t is time t
        yb = g.reverse_time(yb, layer.name)
    mode = layer.merge_mode
    if mode is None:
        return [g.op("Identity", [yf], layer.name), g.op("Identity", [yb], layer.name)]
    if mode == "concat":
        return [g.op("Concat", [yf, yb], layer.name, axis=-1)]
    if mode == "sum":
        return [g.op("Add", [yf, yb], layer.name)]
    if mode == "mul":
        return [g.op("Mul", [yf, yb], layer.name)]
    return [g.op("Mul", [g.op("Add", [yf, yb], layer.name), g.ctx.scalar(0.5)], layer.name)]


# ====================================================================================== dispatch and the walk
def _tables():
    from fastnn import layers as L
    from fastnn.layers import pooling as P
    conv = {L.Dense: _c_dense, L.Dropout: _c_dropout, L.Flatten: _c_flatten, L.Reshape: _c_reshape,
            L.Permute: _c_permute, L.Add: _c_add, L.Concatenate: _c_concatenate, L.Residual: _c_residual,
            L.BatchNorm: _c_batchnorm, L.LayerNorm: _c_layernorm, L.Embedding: _c_embedding,
            L.Masking: _c_masking, L.Conv1D: _c_conv, L.Conv2D: _c_conv, L.SimpleRNN: _c_recurrent,
            L.LSTM: _c_recurrent, L.GRU: _c_recurrent, L.Bidirectional: _c_bidirectional}
    for cls in (P.MaxPool2D, P.AvgPool2D, P.MaxPool1D, P.AvgPool1D):
        conv[cls] = _c_pool
    for cls in (P.GlobalMaxPooling2D, P.GlobalAveragePooling2D, P.GlobalMaxPooling1D, P.GlobalAveragePooling1D):
        conv[cls] = _c_global_pool
    for cls in L.activations.CLASSES.values():
        conv[cls] = _c_activation
    masks = {L.Embedding: _mask_embedding, L.Masking: _mask_masking}
    return conv, masks


def _converter(layer):
    """The converter of `layer`'s class; ValueError naming the layer for a class outside the registry (a
    user-written layer, or a subclass of a registry layer whose forward may differ)."""
    from fastnn.layers import REGISTRY
    conv, _ = _tables()
    cls = type(layer)
    fn = conv.get(cls)
    if fn is None or REGISTRY.get(cls.__name__) is not cls:
        raise ValueError(f"export: layer {layer.name!r} ({cls.__module__}.{cls.__qualname__}) cannot be exported to "
                         "ONNX: only the classes of fastnn.layers.REGISTRY are converted (a layer class written "
                         "outside fastnn, or a subclass of one of its layers, has a forward the exporter does not "
                         "know)")
    return fn


def _dims(shape, batch_size, prefix):
    head = ["N" if batch_size is None else int(batch_size)]
    return head + [f"{prefix}_d{k + 1}" if d is None else int(d) for k, d in enumerate(shape)]


def _convert(ctx, model, batch_size, input_name, output_name):
    onnx, helper = ctx.onnx, ctx.helper
    graph = model.graph
    _, maskers = _tables()
    g = _Graph(ctx)
    values, masks = [None] * len(graph.nodes), [None] * len(graph.nodes)
    for i, (layer, src) in enumerate(graph.nodes):
        pick = graph.picks[i]
        xs, m = [], None
        for j, s in enumerate(src):
            k = None if pick is None else pick[j]
            if s < 0:
                xs.append(input_name)
                continue
            xs.append(values[s] if k is None else values[s][k])
            ms = masks[s] if k is None else masks[s][k]
            if ms is not None and ms != m:     # several masked inputs: their AND (the executor's rule)
                m = ms if m is None else g.op("And", [m, ms], f"{layer.name}/mask")
        fn = _converter(layer)
        if layer.produces_mask:
            own = maskers[type(layer)](g, layer, xs[0])
            outs = fn(g, layer, xs, own)
            out_masks = [own] + [None] * (len(outs) - 1)
        else:
            outs = fn(g, layer, xs, m if layer.mask_support == "use" else None)
            out_mask = layer.output_mask(m) if m is not None else None
            if not isinstance(out_mask, (list, tuple)):
                out_mask = [out_mask] + [None] * (len(outs) - 1)
            out_masks = list(out_mask)
        if len(outs) != layer.n_outputs:
            raise ValueError(f"export: internal error: {layer.name} converted to {len(outs)} outputs, the layer has "
                             f"{layer.n_outputs}")
        values[i] = outs if layer.n_outputs != 1 else outs[0]
        masks[i] = out_masks if layer.n_outputs != 1 else out_masks[0]
    k = graph.output_index
    last = values[-1] if k is None else values[-1][k]
    g.nodes.append(helper.make_node("Identity", [last], [output_name], name=ctx.fresh("output/Identity")))

    in_elem = onnx.TensorProto.INT64 if graph.integer_input else ctx.elem
    inp = helper.make_tensor_value_info(input_name, in_elem, _dims(graph.input_shape, batch_size, input_name))
    out = helper.make_tensor_value_info(output_name, ctx.elem, _dims(graph.output_shape, batch_size, output_name))
    main = helper.make_graph(g.nodes, model.name, [inp], [out], initializer=ctx.initializers)
    import fastnn
    proto = helper.make_model(main, opset_imports=[helper.make_opsetid("", ctx.opset)],
                              producer_name="fastnn", producer_version=str(getattr(fastnn, "__version__", "unknown")),
                              doc_string=f"fastnn model {model.name!r} exported by fastnn.onnx.export")
    proto.ir_version = min(proto.ir_version, _ir_version(onnx, ctx.opset))
    return proto


def _ir_version(onnx, opset):
    """The IR version that goes with `opset` (onnx's table), so that older runtimes load the file."""
    for entry in onnx.helper.VERSION_TABLE:          # (release, ir_version, ai.onnx opset, ...)
        if entry[2] == opset:
            return entry[1]
    return onnx.IR_VERSION
