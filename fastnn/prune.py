"""Structured pruning: remove whole units (neurons) of a Dense layer, or filters (output channels) of a Conv2D /
Conv1D layer, so that the network really gets smaller.

``fnn.prune.neurons(model, layer=..., amount=0.3, criterion="l2")`` returns a **new model** (the original is
not changed) in which the chosen units of the layer are gone:

* the layer's weight columns and bias entries (along each parameter's ``ParamSpec.unit_axis``: a Dense weight's
  columns, a convolution weight's last axis, its filters); the layer may act on the last axis of N-D data (a
  Dense on (N, T, F) sequences, a convolution's (N, H, W, C) output), whose other axes are positions;
* the per-feature parameters and running statistics of the BatchNorm / LayerNorm layers between it and the next
  layer with weights (activation layers, Dropout, and the channel-preserving pooling layers in between have
  nothing to prune; a ``Flatten`` in between turns channel c of an (H, W, C) output into the features
  c, c + C, c + 2C, ... of its channels-last flattening, and those go);
* the matching inputs of that next layer: the rows of a Dense weight (after a Flatten: the rows of the removed
  channels at every position), or the C_in axis (axis -2) of a following Conv2D / Conv1D weight;
* the optimizer state (momentum, Adam's moments, ...) of all of these, and its step count, so training goes on
  exactly as for a model built at the smaller size with the same weights and state.

The new model has new flat parameter / gradient / state buffers (it is rebuilt from an in-memory snapshot in the
save format, ``fastnn.io.snapshot`` / ``build``, so layer names, ``trainable`` flags, loss, optimizer, generator
states and ``epochs_trained`` carry over; clipping and the learning-rate schedule are copied too).

Criteria (the units with the lowest score go):

| criterion | score of a unit | needs X |
|---|---|---|
| ``"l2"`` | L2 norm of its incoming weights (its column of ``weight``) | no |
| ``"activation"`` | mean absolute value of its activation over X, every sample and position (inference mode); with a mask on the layer's input (Embedding(mask_zero=True), Masking), its real steps only | yes |
| ``"dead"`` | removes every unit whose ReLU output is 0 for every sample of X, masked steps included (``amount`` is not used) | yes |

For a convolution a unit is a channel: its score sums (l2) or averages (activation) over every position, and it
is dead when its ReLU output is 0 at every position of every sample.

Removing dead units does not change the predictions: a dead unit sends a constant to the next layer (0, or,
with a BatchNorm after the ReLU, that layer's constant output), and a non-zero constant is folded into the next
layer's bias (a Dense's, or an unpadded convolution's: a padded one sees the constant only inside the image, so
there a non-zero constant is refused, as it is for a next layer without a bias).  (A LayerNorm in between
normalizes over the remaining units, so there the outputs change.)

Refused with ValueError naming the layer: a layer that is not Dense / Conv1D / Conv2D, the output layer, a
convolution with ``groups > 1`` or one followed by a convolution with ``groups > 1`` (the groups split the
channels evenly; removing some would leave groups of different sizes, and removing whole groups would cascade
into the layers after), and a layer whose units feed anything else than a chain of activation / Dropout /
BatchNorm / LayerNorm / pooling / Flatten layers ending in one Dense or convolution layer -- Add, Concatenate,
Residual, Softmax, Reshape, Permute, or a tensor used by several layers -- since its units could not be removed
consistently there.
"""  # noqa: E501  (a markdown table: its rows cannot be wrapped)
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from fastnn._core.kinds import ACT
from fastnn._typing import ArrayLike, NDArray

if TYPE_CHECKING:
    from fastnn.layers.base import Layer
    from fastnn.model import Model

_CRITERIA = ("l2", "activation", "dead")


def _resolve(model, layer, owner):
    from fastnn.model import Model
    if not isinstance(model, Model):
        raise TypeError(f"{owner}: model must be a fastnn Model or Sequential, got {type(model).__name__}")
    if not model.built:
        raise ValueError(f"{owner}: {model.name} is not built yet (give input_dim, or fit/predict once)")
    layers = model.layers
    if isinstance(layer, str):
        found = [i for i, candidate in enumerate(layers) if candidate.name == layer]
        if not found:
            raise ValueError(f"{owner}: no layer named {layer!r} in {model.name} (layers: "
                             f"{[candidate.name for candidate in layers]})")
        return found[0]
    if isinstance(layer, (int, np.integer)) and not isinstance(layer, bool):
        if not -len(layers) <= layer < len(layers):
            raise ValueError(f"{owner}: layer index {layer} is out of range for {len(layers)} layers")
        return int(layer) % len(layers)
    for i, candidate in enumerate(layers):
        if candidate is layer:
            return i
    raise ValueError(f"{owner}: layer must be a layer of the model, its name or its index, got {layer!r}")


def _types(*names):
    """The classes of fastnn.layers among `names` (a tuple for isinstance)."""
    from fastnn import layers
    return tuple(getattr(layers, n) for n in names if hasattr(layers, n))


def _convs():
    return _types("Conv1D", "Conv2D")


# layers that keep the channel axis (the last) as it is: the pooling layers, over positions only
_POOLS = ("MaxPool1D", "MaxPool2D", "AvgPool1D", "AvgPool2D", "GlobalAveragePooling1D", "GlobalAveragePooling2D",
          "GlobalMaxPooling1D", "GlobalMaxPooling2D")


def n_units(layer: Layer) -> int:
    """The number of units of a prunable layer: a Dense's ``units``, a convolution's ``filters``."""
    return layer.filters if isinstance(layer, _convs()) else layer.units


def _repeat(model, chain):
    """{node: how many positions its last axis holds per channel}: 1, but after a Flatten the product of the
    positions it flattened (its features are position * C + channel, channels-last)."""
    from fastnn.layers import Flatten
    rep, out = 1, {}
    for j in chain:
        L = model.layers[j]
        if isinstance(L, Flatten):
            rep *= int(np.prod(L.input_shape[:-1], dtype=np.int64))
        out[j] = rep
    return out


def _features(keep, units, rep):
    """The last-axis indices of the kept channels `keep` (of `units`) at a node holding `rep` positions per
    channel: keep, keep + units, keep + 2 units, ... (channels-last flattening)."""
    return (np.arange(rep)[:, None] * units + np.asarray(keep)[None, :]).ravel()


def _chain(model, i, owner):
    """(chain, nxt): the node indices between node i and the next Dense or convolution (exclusive), and that
    layer's index."""
    from fastnn.layers import Activation, BatchNorm, Dense, Dropout, Flatten, LayerNorm, Softmax
    plan = model.graph.nodes
    name = plan[i][0].name
    convs = _convs()
    if not isinstance(plan[i][0], (Dense,) + convs):
        raise ValueError(f"{owner}: layer {name} is a {type(plan[i][0]).__name__}; only Dense units and Conv1D / "
                         "Conv2D filters can be pruned")
    if isinstance(plan[i][0], convs) and plan[i][0].groups != 1:
        raise ValueError(f"{owner}: cannot prune layer {name}: it has groups={plan[i][0].groups}, whose filters "
                         "are split evenly among the groups; removing some would leave groups of different sizes")
    passing = (Dropout, BatchNorm, LayerNorm, Flatten) + _types(*_POOLS)
    chain, cur = [], i
    while True:
        if cur == len(plan) - 1:
            raise ValueError(f"{owner}: cannot prune layer {name}: its units are the model's output")
        cons = model.graph.consumers(cur)
        if len(cons) != 1 or len(plan[cons[0]][1]) != 1:
            names = ", ".join(f"{plan[k][0].name} ({type(plan[k][0]).__name__})" for k in cons)
            raise ValueError(f"{owner}: cannot prune layer {name}: its units feed {names} (several layers or a "
                             "multi-input layer), which cannot be pruned consistently")
        nxt = cons[0]
        L = plan[nxt][0]
        if isinstance(L, convs) and L.groups != 1:
            raise ValueError(f"{owner}: cannot prune layer {name}: its channels feed {L.name} ({type(L).__name__} "
                             f"with groups={L.groups}), whose input channels are split evenly among the groups; "
                             "removing some would leave groups of different sizes")
        if isinstance(L, (Dense,) + convs):
            if isinstance(L, convs) and any(isinstance(plan[j][0], Flatten) for j in chain):
                raise ValueError(f"{owner}: cannot prune layer {name}: a Flatten lies between it and {L.name}")
            return chain, nxt
        if (isinstance(L, Activation) and not isinstance(L, Softmax)) or isinstance(L, passing):
            chain.append(nxt)
            cur = nxt
            continue
        raise ValueError(f"{owner}: cannot prune layer {name}: its units feed {L.name} ({type(L).__name__}), "
                         "which cannot be pruned consistently (only activation, Dropout, BatchNorm, LayerNorm, "
                         "pooling and Flatten layers may lie between it and the next Dense or convolution layer)")


def _scan(model, X, point, relu, end, batch_size, units):
    """One inference pass over X: per-unit mean |value| at node `point`, the ReLU counters of node `relu`
    (or None), and per-feature min / max at node `end` (the input of the next Dense / convolution).  A unit is
    a channel: its values at every position (also those a Flatten moved onto the last axis) count."""
    from fastnn import diagnostics as _diag
    X = model.trainer.check_X(X, "prune.neurons")
    n = X.shape[0]
    if n == 0:
        raise ValueError("prune.neurons: X has no samples")
    counters = _diag._Counters(model) if relu is not None else None
    plan_layers = model.layers
    absum = lo = hi = None
    rows = 0
    prev, model.training = model.training, False
    try:
        for start in range(0, n, batch_size):
            model.engine.forward(X[start:start + batch_size], False)
            # units are on the last axis (channels-last): every other axis is a sample, a step or a pixel, and
            # after a Flatten the last axis is (position, channel) with the channel fastest
            v = model.engine.values[point]
            mk = model.engine.masks[point] if model.graph.has_masks else None
            if mk is not None:       # a masked sequence: score the real steps only (padding says nothing)
                v = v.reshape(mk.size, -1, v.shape[-1])[mk.reshape(-1)]
            v = v.reshape(-1, units)
            rows += v.shape[0]
            s = np.abs(v).sum(axis=0, dtype=np.float64)
            absum = s if absum is None else absum + s
            e = model.engine.values[end]
            e = e.reshape(-1, e.shape[-1])
            lo = e.min(axis=0) if lo is None else np.minimum(lo, e.min(axis=0))
            hi = e.max(axis=0) if hi is None else np.maximum(hi, e.max(axis=0))
        counts = None
        if counters is not None:
            buf = counters.buffers.get(plan_layers[relu])
            counts = buf.sum(axis=0).reshape(-1, units).sum(axis=0)
    finally:
        if counters is not None:
            counters.close()
        model.training = prev
    return absum / rows, counts, lo, hi


def select(model: Model, layer: Layer | str | int, amount: float | int | None = None, criterion: str = "l2",
           X: ArrayLike | None = None, batch_size: int = 1024) -> NDArray[np.intp]:
    """The indices (sorted) of the units of `layer` that ``neurons`` would remove; see ``neurons``."""
    return _plan_pruning(model, layer, amount, criterion, X, batch_size)[0]


def _plan_pruning(model, layer, amount, criterion, X, batch_size):
    owner = "prune.neurons"
    from fastnn.layers import Activation
    i = _resolve(model, layer, owner)
    chain, nxt = _chain(model, i, owner)
    L = model.layers[i]
    name, units = L.name, n_units(L)
    if not isinstance(criterion, str) or criterion not in _CRITERIA:
        raise ValueError(f"{owner}: criterion must be one of {_CRITERIA}, got {criterion!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"{owner}: batch_size must be a positive int, got {batch_size!r}")
    if criterion == "dead":
        if amount is not None:
            raise ValueError(f"{owner}: criterion 'dead' removes every dead unit; do not give amount")
    else:
        if amount is None:
            amount = 0.3
        if isinstance(amount, bool) or not isinstance(amount, (int, float, np.integer, np.floating)):
            raise TypeError(f"{owner}: amount must be a fraction in [0, 1) or a number of units, got {amount!r}")
        if isinstance(amount, (float, np.floating)):
            if not 0.0 <= amount < 1.0:
                raise ValueError(f"{owner}: amount must be a fraction in [0, 1) (or an int count), got {amount}")
            k = int(round(amount * units))
        else:
            k = int(amount)
        if not 0 <= k < units:
            raise ValueError(f"{owner}: cannot remove {k} of the {units} units of layer {name}: at least one must "
                             "stay and the count cannot be negative")
    if criterion in ("activation", "dead") and X is None:
        raise ValueError(f"{owner}: criterion {criterion!r} needs the data X")
    fold = None
    if criterion == "l2":
        W = L.params["weight"].astype(np.float64)
        ax = _unit_axes(L)["weight"]
        scores = np.sqrt((W * W).sum(axis=tuple(a for a in range(W.ndim) if a != ax)))
    else:
        point = i if L.activation.kind != ACT.IDENTITY else next(
            (j for j in chain if isinstance(model.layers[j], Activation)), i)
        relu = None
        if criterion == "dead":
            relu = i if L.activation.kind == ACT.RELU else next(
                (j for j in chain if isinstance(model.layers[j], Activation) and model.layers[j].kind == ACT.RELU),
                None)
            if relu is None:
                raise ValueError(f"{owner}: criterion 'dead' needs a ReLU after layer {name} (its activation or a "
                                 "ReLU layer before the next Dense)")
        end = chain[-1] if chain else i
        scores, counts, lo, hi = _scan(model, X, point, relu, end, batch_size, units)
        if criterion == "dead":
            dead = np.flatnonzero(counts == 0)
            if dead.size >= units:
                raise ValueError(f"{owner}: every unit of layer {name} is dead on X; the layer cannot be pruned "
                                 "to nothing")
            const = np.where(lo == hi, lo, 0.0).astype(np.float64)
            fold = const
            _check_fold(model, i, chain, nxt, dead, fold, owner)
            return np.sort(dead), (i, chain, nxt, fold)
    order = np.argsort(scores, kind="stable")
    return np.sort(order[:k]), (i, chain, nxt, fold)


def neurons(model: Model, layer: Layer | str | int, amount: float | int | None = None, criterion: str = "l2",
            X: ArrayLike | None = None, batch_size: int = 1024) -> Model:
    """Remove units of a Dense layer (filters of a Conv1D / Conv2D layer); return the smaller model (a new one;
    `model` is not changed).

    Args:
        model: a built Model or Sequential.
        layer: the Dense / Conv1D / Conv2D layer, its name, or its index in ``model.layers``.
        amount: the fraction of the layer's units to remove (a float in [0, 1), rounded to a count; default
            0.3), or an int count.  Not used with criterion "dead".
        criterion: "l2", "activation" or "dead" (see the module docstring).
        X: data for the "activation" and "dead" criteria, run in inference mode in batches of ``batch_size``.

    Raises ValueError naming the layer when it cannot be pruned consistently, and for bad arguments.
    """
    remove, (i, chain, nxt, fold) = _plan_pruning(model, layer, amount, criterion, X, batch_size)
    units = n_units(model.layers[i])
    keep = np.setdiff1d(np.arange(units), remove)
    return _rebuild(model, i, chain, nxt, keep, remove, fold)


def _unit_axes(layer):
    """{parameter name: the axis of its output units} from the layer's ParamSpecs."""
    return {spec.name: spec.unit_axis for spec in layer.param_specs()}


def _in_axis(layer):
    """The axis of the next layer's weight that indexes its input features: a Dense's rows, a convolution's C_in
    (the one before the filters)."""
    return layer.params["weight"].ndim - 2


def _pads(layer):
    """Whether a convolution pads its input (then a constant channel's contribution varies at the borders)."""
    p = layer.padding
    if isinstance(p, str):
        return p != "valid"
    return bool(np.any(np.asarray(p) != 0))


def _fold_bias(model, nxt, remove, fold, units, rep):
    """The next layer's bias change (float64, (n_out,)) that stands for the constant values `fold` (per
    feature of its input, `rep` positions per channel) of the removed units, or None when they are all 0."""
    feats = _features(remove, units, rep)
    c = fold[feats]
    if not np.any(c != 0):
        return None
    W = model.layers[nxt].params["weight"].astype(np.float64)
    W = np.take(W, feats, axis=_in_axis(model.layers[nxt]))
    # every tap of an unpadded convolution sees the constant: its sum over the taps
    return np.tensordot(c, W.reshape((-1,) + W.shape[-2:]).sum(axis=0), axes=1) if W.ndim > 2 else c @ W


def _check_fold(model, i, chain, nxt, remove, fold, owner):
    """Refuse a removal of dead units whose constant output cannot be folded into the next layer's bias."""
    nl = model.layers[nxt]
    units = n_units(model.layers[i])
    rep = _repeat(model, chain).get(chain[-1], 1) if chain else 1
    c = fold[_features(remove, units, rep)]
    if not np.any(c != 0):
        return
    if not nl.use_bias:
        raise ValueError(f"{owner}: cannot remove the dead units of layer {model.layers[i].name}: they send a "
                         f"non-zero constant to {nl.name}, which has no bias to fold it into")
    if isinstance(nl, _convs()) and _pads(nl):
        raise ValueError(f"{owner}: cannot remove the dead units of layer {model.layers[i].name}: they send a "
                         f"non-zero constant to {nl.name}, whose padding ({nl.padding!r}) lets the constant reach "
                         "only part of each window at the borders, so no bias can stand for it")


def _rebuild(model, i, chain, nxt, keep, remove, fold):
    from fastnn import io as _io
    header, arrays = _io.snapshot(model, include_optimizer=True, owner="prune.neurons")
    cfg = header["model"]["nodes"][i]["config"]
    cfg["filters" if "filters" in cfg else "units"] = int(keep.size)
    units = n_units(model.layers[i])
    rep = _repeat(model, chain)
    end_rep = rep[chain[-1]] if chain else 1
    in_axis = _in_axis(model.layers[nxt])
    chain = set(chain)
    axes = {j: _unit_axes(model.layers[j]) for j in chain | {i}}
    out = {}
    for key, a in arrays.items():
        parts = key.split("/")
        if parts[0] in ("param", "buffer"):
            node, pname = int(parts[1]), parts[2]
        elif parts[0] == "optim":
            node, pname = int(parts[2]), parts[3]
        else:
            out[key] = a
            continue
        if node == i or node in chain:
            # along the parameter's unit axis (ParamSpec.unit_axis); buffers (running statistics) are per unit;
            # after a Flatten, the kept channels at every position
            a = np.take(a, _features(keep, units, rep.get(node, 1)), axis=axes[node].get(pname, 0))
        elif node == nxt and pname == "weight":        # the next layer's inputs: Dense rows, a convolution's C_in
            a = np.take(a, _features(keep, units, end_rep), axis=in_axis)
        out[key] = np.ascontiguousarray(a)
    nxt_layer = model.layers[nxt]
    if fold is not None and remove.size and nxt_layer.use_bias:
        db = _fold_bias(model, nxt, remove, fold, units, end_rep)
        if db is not None:
            b = out[f"param/{nxt}/bias"].astype(np.float64) + db
            out[f"param/{nxt}/bias"] = b.astype(out[f"param/{nxt}/bias"].dtype)
    new = _io.build(header, out, compile=True)
    if model.loss is not None:
        new.loss = model.loss
        new.clip_norm, new.clip_value, new.lr_schedule = model.clip_norm, model.clip_value, model.lr_schedule
        new.trainer.base_lr = model.trainer.base_lr
        new.trainer.attach()
    return new
