"""Recurrent layers: SimpleRNN, LSTM, GRU (PyTorch's math, Keras' interface) and Bidirectional.

The loops run in the compiled kernel ``fastnn._core.rnn`` (csrc/fnn_rnn.h): the input projection of all time steps
as one GEMM, per step the recurrent GEMM and one fused pass over the gates, backpropagation through time with the
weight gradients as large GEMMs after the time loop.  A right-padded mask (each row a prefix of True) runs only the
rows still real at each step (the batch sorted by length once); any other mask is blended per row and step.

Math (PyTorch's, so results can be checked against ``torch.nn.RNN/LSTM/GRU``), with x W_ih + b_ih + h W_hh + b_hh:
    SimpleRNN  h' = act(x W_ih + b_ih + h W_hh + b_hh), act tanh or relu
    LSTM       i, f, g, o = sigmoid, sigmoid, tanh, sigmoid of the four column blocks (that order);
               c' = f c + i g, h' = o tanh(c')
    GRU        r, z = sigmoid of the first two blocks; n = tanh(x W_in + b_in + r (h W_hn + b_hn));
               h' = (1 - z) n + z h
Parameters: ``weight_ih`` (n_in, G units), ``weight_hh`` (units, G units), ``bias_ih`` and ``bias_hh`` (G units,),
G = 1, 4, 3: torch's ``weight_ih_l0`` is ``weight_ih.T`` (and ``weight_hh_l0`` is ``weight_hh.T``).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from fastnn import initializers
from fastnn._core import rnn as _k
from fastnn._typing import Config, NDArray
from fastnn.graph import Tensor
from fastnn.layers.base import Layer, ParamSpec, get_num_threads

if TYPE_CHECKING:
    from typing_extensions import Self

    from fastnn.initializers import Initializer


def _as_list(x):
    return list(x) if isinstance(x, (list, tuple)) else [x]


class _Recurrent(Layer):
    """Shared machinery of SimpleRNN, LSTM and GRU (see the module docstring and each class)."""
    mask_support = "use"
    _n_states = 1
    _cell_name = None

    def __init__(self, units: int, return_sequences: bool = False, return_state: bool = False,
                 go_backwards: bool = False, kernel_init: str | Initializer = "xavier_uniform",
                 recurrent_init: str | Initializer = "glorot_bengio_uniform", bias_init: str | Initializer = "zeros",
                 name: str | None = None) -> None:
        super().__init__(name)
        if isinstance(units, bool) or not isinstance(units, (int, np.integer)):
            raise TypeError(f"{self.name}: units must be an int, got {type(units).__name__} {units!r}")
        if units < 1:
            raise ValueError(f"{self.name}: units must be >= 1, got {units}")
        self.units = int(units)
        for what, v in (("return_sequences", return_sequences), ("return_state", return_state),
                        ("go_backwards", go_backwards)):
            if not isinstance(v, (bool, np.bool_)):
                raise TypeError(f"{self.name}: {what} must be a bool, got {type(v).__name__} {v!r}")
        self.return_sequences = bool(return_sequences)
        self.return_state = bool(return_state)
        self.go_backwards = bool(go_backwards)
        self.kernel_init = initializers.get(kernel_init, owner=f"{self.name} kernel_init")
        self.recurrent_init = initializers.get(recurrent_init, owner=f"{self.name} recurrent_init")
        self.bias_init = initializers.get(bias_init, owner=f"{self.name} bias_init")
        self.record_step_grad_norms = False   # backward then stores ||dh_s|| per step in step_grad_norms
        self.n_inputs: int = 1
        self.n_outputs = 1 + self._n_states if self.return_state else 1   # [output, h(, c)] (fastnn.graph)
        self._norms = None
        self._saved: Any = None   # what the backward needs from the last forward

    # ------------------------------------------------------------------ graph construction
    def __call__(self, inputs: Tensor | Sequence[Tensor], initial_state: Sequence[Tensor] | None = None) -> Any:
        """Call the layer on a sequence tensor (n, T, features); ``initial_state``: a list of tensors, [h0] (LSTM:
        [h0, c0]), each (n, units); the layer then has the sequence and the states as its inputs."""
        if initial_state is None:
            return Tensor.from_layer(self, inputs)
        states = _as_list(initial_state)
        if len(states) != self._n_states:
            raise ValueError(f"{self.name}: initial_state must hold {self._n_states} tensor(s) "
                             f"({'[h0, c0]' if self._n_states == 2 else '[h0]'}), got {len(states)}")
        self.n_inputs = 1 + self._n_states
        return Tensor.from_layer(self, [inputs] + states)

    @property
    def _cell(self):
        raise NotImplementedError

    @property
    def state_shapes(self) -> list[tuple[int]]:
        """The shapes (without the batch axis) of the states: [(units,)] or, for LSTM, [(units,), (units,)]."""
        return [(self.units,)] * self._n_states

    def _build(self, input_shape):
        if self.n_inputs > 1:
            shapes = [tuple(s) for s in input_shape]
            x_shape = shapes[0]
            for k, s in enumerate(shapes[1:]):
                if s != (self.units,):
                    raise ValueError(f"{self.name}: initial state {k} must have feature shape ({self.units},), "
                                     f"got {s}")
        else:
            x_shape = tuple(input_shape)
        if len(x_shape) != 2:
            raise ValueError(f"{self.name}: {type(self).__name__} expects sequences of shape (n, steps, features), "
                             f"got feature shape {x_shape} (rank {len(x_shape) + 1} inputs)")
        if x_shape[1] is None or x_shape[1] < 1:
            raise ValueError(f"{self.name}: the feature axis must have a fixed size >= 1, got {x_shape[1]}")
        steps = x_shape[0]
        out = (steps, self.units) if self.return_sequences else (self.units,)
        return [out] + self.state_shapes if self.return_state else out

    def output_mask(self, mask: Any) -> Any:
        """The output's mask given the input's: the mask with return_sequences, else None (the states: None)."""
        out = mask if self.return_sequences else None
        return [out] + [None] * self._n_states if self.return_state else out

    def param_specs(self) -> list[ParamSpec]:
        shapes = self.input_shape if self.n_inputs > 1 else [self.input_shape]
        n_in = shapes[0][-1]
        gu = _k.n_gates(self._cell) * self.units
        return [ParamSpec("weight_ih", (n_in, gu), self.kernel_init, True, fan_in=n_in, fan_out=gu, unit_axis=1),
                ParamSpec("weight_hh", (self.units, gu), self.recurrent_init, True, fan_in=self.units, fan_out=gu,
                          unit_axis=1),
                ParamSpec("bias_ih", (gu,), self.bias_init, False, fan_in=self.units, fan_out=gu, unit_axis=0),
                ParamSpec("bias_hh", (gu,), self.bias_init, False, fan_in=self.units, fan_out=gu, unit_axis=0)]

    # ------------------------------------------------------------------ parameters as attributes
    weight_ih = property(lambda self: self._param("weight_ih"), lambda self, v: self._set_param("weight_ih", v))
    weight_hh = property(lambda self: self._param("weight_hh"), lambda self, v: self._set_param("weight_hh", v))
    bias_ih = property(lambda self: self._param("bias_ih"), lambda self, v: self._set_param("bias_ih", v))
    bias_hh = property(lambda self: self._param("bias_hh"), lambda self, v: self._set_param("bias_hh", v))

    @property
    def step_grad_norms(self) -> NDArray[Any] | None:
        """With ``record_step_grad_norms`` set: the (T,) L2 norms over the batch of the gradient reaching the state
        after each processing step in the last backward (step s reads time T-1-s with go_backwards); else None."""
        return self._norms if self.record_step_grad_norms else None

    # ------------------------------------------------------------------ execution
    def _check_input(self, X, what="input"):
        if not isinstance(X, np.ndarray):
            raise TypeError(f"{self.name}: {what} must be a numpy array, got {type(X).__name__}")
        if X.dtype != self.dtype:
            raise TypeError(f"{self.name}: {what} has dtype {X.dtype}, expected the model's {np.dtype(self.dtype)}")

    def forward(self, X: Any, training: bool = False, mask: NDArray[np.bool_] | None = None) -> Any:
        """X: (n, T, features), or [X, h0] / [X, h0, c0] when the layer was called with an initial state.
        mask: None or an (n, T) bool array (True: a real step).  Returns the output (n, T, units) with
        return_sequences (step s of a go_backwards layer is at position s: reversed, as Keras), else (n, units);
        with return_state the list [output, h] / [output, h, c]."""
        if "weight_ih" not in self.params:
            raise RuntimeError(f"{self.name}: the layer is not built into a model (no parameters)")
        inputs = _as_list(X)
        if len(inputs) != self.n_inputs:
            raise ValueError(f"{self.name}: expects {self.n_inputs} input(s) (the sequence"
                             f"{' and the initial states' if self.n_inputs > 1 else ''}), got {len(inputs)}")
        X = inputs[0]
        self._check_input(X)
        n_in = self.params["weight_ih"].shape[0]
        if X.ndim != 3 or X.shape[2] != n_in:
            raise ValueError(f"{self.name}: expects input of shape (n, T, {n_in}), got {X.shape}")
        x_shape = (self.input_shape[0] if self.n_inputs > 1 else self.input_shape)
        if x_shape[0] is not None and X.shape[1] != x_shape[0]:
            raise ValueError(f"{self.name}: expects {x_shape[0]} time steps, got input of shape {X.shape}")
        n, steps = X.shape[0], X.shape[1]
        U = self.units
        states = inputs[1:]
        for k, s in enumerate(states):
            self._check_input(s, f"initial state {k}")
            if s.shape != (n, U):
                raise ValueError(f"{self.name}: initial state {k} must have shape {(n, U)}, got {s.shape}")
        if mask is not None:
            mask = np.asarray(mask)
            if mask.dtype != np.bool_ or mask.shape != (n, steps):
                raise ValueError(f"{self.name}: mask must be a bool array of shape {(n, steps)}, got "
                                 f"{mask.dtype} {mask.shape}")
        X = np.ascontiguousarray(X)
        states = [np.ascontiguousarray(s) for s in states]
        cell, lstm = self._cell, self._cell == _k.LSTM
        gu, sv = _k.n_gates(cell) * U, _k.n_saved(cell) * U
        dt = self.dtype

        def make(_):
            return dict(XP=np.empty(n * steps * gu, dt), HP=np.empty(n * gu, dt),
                        Hs=np.empty((steps + 1) * n * U, dt), Cs=np.empty((steps + 1) * n * U, dt) if lstm else None,
                        Gs=np.empty(steps * n * sv, dt) if sv else None, Y=np.empty((n, steps, U), dt),
                        h=np.empty((n, U), dt), c=np.empty((n, U), dt) if lstm else None,
                        perm=np.empty(n, np.intc), n_active=np.empty(steps, np.intc),
                        scratch=np.empty(n + steps + 1, np.intc), mask=np.empty((n, steps), np.uint8),
                        Wp=None)

        b = self._batch_buffers(X.shape, make)
        nt = get_num_threads()
        if dt == np.float32:       # the packing scratch: its size depends on the thread count (remade if it changed)
            wp_size = _k.packed_size(cell, n_in, U, nt)
            if b["Wp"] is None or b["Wp"].size != wp_size:
                b["Wp"] = np.empty(wp_size, dt)
        m8 = None
        if mask is not None:
            np.copyto(b["mask"], mask, casting="unsafe")
            m8 = b["mask"]
        mode = _k.mask_plan(m8, self.go_backwards, b["perm"], b["n_active"], b["scratch"])
        kmask = m8 if mode == 1 else None
        h0 = states[0].reshape(-1) if states else None
        c0 = states[1].reshape(-1) if len(states) > 1 else None
        Y = b["Y"] if self.return_sequences else None
        _k.rnn_forward(cell, n, steps, n_in, U, self.go_backwards, b["perm"], b["n_active"], kmask,
                       X.reshape(-1), self.params["weight_ih"].reshape(-1), self.params["weight_hh"].reshape(-1),
                       self.params["bias_ih"], self.params["bias_hh"], h0, c0, b["XP"], b["HP"], b["Hs"], b["Cs"],
                       b["Gs"], None if Y is None else Y.reshape(-1), b["h"].reshape(-1),
                       None if b["c"] is None else b["c"].reshape(-1), nt, b["Wp"])
        self._saved = (X, b, kmask, n, steps, nt)
        out = b["Y"] if self.return_sequences else b["h"]
        if self.return_state:
            return [out, b["h"], b["c"]] if lstm else [out, b["h"]]
        return out

    def backward(self, dY: Any) -> Any:
        """dY: the gradient of the output, or with return_state the list [d output, dh(, dc)] (None: zero).
        Returns dX, or [dX, dh0(, dc0)] when the layer took initial states (dX None if not needed)."""
        if self._saved is None:
            raise RuntimeError(f"{self.name}: backward before forward")
        X, b, kmask, n, steps, nt = self._saved
        U, cell = self.units, self._cell
        lstm = cell == _k.LSTM
        grads = _as_list(dY) if self.return_state else [dY]
        if len(grads) != (1 + self._n_states if self.return_state else 1):
            raise ValueError(f"{self.name}: backward expects {1 + self._n_states} gradients, got {len(grads)}")
        dout = grads[0]
        dh_state = grads[1] if self.return_state else None
        dc_state = grads[2] if (self.return_state and lstm) else None
        out_shape = (n, steps, U) if self.return_sequences else (n, U)
        for what, g, shape in (("the output's gradient", dout, out_shape), ("dh", dh_state, (n, U)),
                               ("dc", dc_state, (n, U))):
            if g is not None and (not isinstance(g, np.ndarray) or g.shape != shape):
                raise ValueError(f"{self.name}: {what} must have shape {shape}, got "
                                 f"{getattr(g, 'shape', type(g).__name__)}")
        gu = _k.n_gates(cell) * U
        dt = self.dtype
        n_in = X.shape[2]

        def make(_):
            return dict(dH=np.empty(n * U, dt), dC=np.empty(n * U, dt) if lstm else None,
                        dGt=np.empty(steps * n * gu, dt), dGo=np.empty(n * steps * gu, dt),
                        dX=np.empty((n, steps, n_in), dt), dh0=np.empty((n, U), dt),
                        dc0=np.empty((n, U), dt) if lstm else None, dhsum=np.empty((n, U), dt),
                        norms=np.empty(steps, np.float64))

        g = self._batch_buffers(X.shape, make, tag="grad")
        dYseq, dhout = None, None
        if self.return_sequences:
            dYseq = None if dout is None else np.ascontiguousarray(dout, dtype=dt).reshape(-1)
            dhout = dh_state
        else:
            dhout = dout
            if dh_state is not None:
                dhout = dh_state if dout is None else np.add(dout, dh_state, out=g["dhsum"])
        dhout = None if dhout is None else np.ascontiguousarray(dhout, dtype=dt).reshape(-1)
        dcout = None if dc_state is None else np.ascontiguousarray(dc_state, dtype=dt).reshape(-1)
        want_states = self.n_inputs > 1
        dX = g["dX"] if self.need_input_grad else None
        norms = g["norms"] if self.record_step_grad_norms else None
        _k.rnn_backward(cell, n, steps, n_in, U, self.go_backwards, b["perm"], b["n_active"], kmask,
                        X.reshape(-1), self.params["weight_ih"].reshape(-1), self.params["weight_hh"].reshape(-1),
                        b["Hs"], b["Cs"], b["Gs"], dYseq, dhout, dcout, g["dH"], g["dC"], g["dGt"], g["dGo"],
                        None if dX is None else dX.reshape(-1), self.grads["weight_ih"].reshape(-1),
                        self.grads["weight_hh"].reshape(-1), self.grads["bias_ih"], self.grads["bias_hh"],
                        g["dh0"].reshape(-1) if want_states else None,
                        g["dc0"].reshape(-1) if (want_states and lstm) else None, norms, nt, b["Wp"])
        self._norms = norms
        if want_states:
            return [dX, g["dh0"], g["dc0"]] if lstm else [dX, g["dh0"]]
        return dX

    # ------------------------------------------------------------------ description
    def get_config(self) -> Config:
        return {"name": self.name, "units": self.units, "return_sequences": self.return_sequences,
                "return_state": self.return_state, "go_backwards": self.go_backwards,
                "kernel_init": self.kernel_init.get_config(), "recurrent_init": self.recurrent_init.get_config(),
                "bias_init": self.bias_init.get_config()}

    @classmethod
    def from_config(cls, config: Config) -> Self:
        config = dict(config)
        for key in ("kernel_init", "recurrent_init", "bias_init"):
            if key in config and isinstance(config[key], dict):
                config[key] = initializers.from_config(config[key])
        return cls(**config)

    def extra_repr(self) -> str:
        flags = [k for k in ("return_sequences", "return_state", "go_backwards") if getattr(self, k)]
        return f"{self.units}" + "".join(f", {k}=True" for k in flags)


class SimpleRNN(_Recurrent):
    """Fully connected recurrent layer: ``h' = act(x W_ih + b_ih + h W_hh + b_hh)`` (torch.nn.RNN's math).

    Args:
        units: the size of the state h.
        activation: "tanh" (default) or "relu".
        return_sequences: return the state at every step (n, T, units) instead of the last one (n, units).
        return_state: return [output, h] (functional API).
        go_backwards: process the sequence in reversed time; as in Keras, the returned sequence is in the
            processing order (reversed too).
        kernel_init, recurrent_init, bias_init: initializers of weight_ih, weight_hh and both biases.  Defaults:
            "xavier_uniform" (Keras' glorot_uniform on the input kernel: scaled by the input width, which for
            recurrent inputs varies from a 32-wide embedding to a wide one-hot), "glorot_bengio_uniform" on
            weight_hh, i.e. U(-1/sqrt(units), 1/sqrt(units)), torch's scale for the recurrent matrix (Keras'
            orthogonal is not among fastnn's initializers), and zeros for the biases (Keras).

    Shape: input (n, T, features), T may vary (None); mask (n, T) bool: masked steps leave the state unchanged.
    Call with ``initial_state=[h0]`` for a given initial state (else zeros).
    """
    def __init__(self, units: int, activation: str = "tanh", return_sequences: bool = False,
                 return_state: bool = False, go_backwards: bool = False,
                 kernel_init: str | Initializer = "xavier_uniform",
                 recurrent_init: str | Initializer = "glorot_bengio_uniform", bias_init: str | Initializer = "zeros",
                 name: str | None = None) -> None:
        super().__init__(units, return_sequences, return_state, go_backwards, kernel_init, recurrent_init,
                         bias_init, name)
        if activation not in ("tanh", "relu"):
            raise ValueError(f"{self.name}: activation must be 'tanh' or 'relu', got {activation!r}")
        self.activation = activation

    @property
    def _cell(self):
        return _k.RELU if self.activation == "relu" else _k.TANH

    def get_config(self) -> Config:
        return {**super().get_config(), "activation": self.activation}


class LSTM(_Recurrent):
    """Long short-term memory (torch.nn.LSTM's math: gates i, f, g, o in that column order, two biases).

    ``c' = f c + i g``, ``h' = o tanh(c')``.  Same arguments as SimpleRNN (without activation); return_state
    returns [output, h, c]; ``initial_state=[h0, c0]``.
    """
    _n_states = 2

    @property
    def _cell(self):
        return _k.LSTM


class GRU(_Recurrent):
    """Gated recurrent unit (torch.nn.GRU's math: gates r, z, n; ``n = tanh(x W_in + b_in + r (h W_hn + b_hn))``,
    ``h' = (1 - z) n + z h``; two biases).  Same arguments as SimpleRNN (without activation)."""

    @property
    def _cell(self):
        return _k.GRU


class Bidirectional(Layer):
    """Runs a recurrent layer forward and a copy of it backward in time and merges their outputs.

    Args:
        layer: a SimpleRNN, LSTM or GRU (not yet in a graph); the backward copy is built from its config with
            ``go_backwards`` flipped.  Its return_state must be False.
        merge_mode: "concat" (default: features [forward, backward]), "sum", "mul", "ave", or None (the list
            [forward, backward]).

    With return_sequences the backward layer's sequence is reversed back before merging, so that position t
    of both halves belongs to time t (Keras; torch's bidirectional output).  Parameters: the forward layer's
    as ``forward_<name>`` and the backward one's as ``backward_<name>`` (e.g. ``backward_weight_ih``).
    """
    mask_support = "use"
    _MODES = ("concat", "sum", "mul", "ave", None)

    def __init__(self, layer: _Recurrent, merge_mode: str | None = "concat", name: str | None = None) -> None:
        super().__init__(name)
        if not isinstance(layer, _Recurrent):
            raise TypeError(f"{self.name}: layer must be a SimpleRNN, LSTM or GRU, got {type(layer).__name__}")
        if layer._in_graph:
            raise ValueError(f"{self.name}: layer {layer.name} is already used in a graph")
        if layer.return_state:
            raise ValueError(f"{self.name}: the wrapped layer must have return_state=False")
        if merge_mode not in self._MODES:
            raise ValueError(f"{self.name}: merge_mode must be one of {self._MODES}, got {merge_mode!r}")
        self.merge_mode = merge_mode
        self.layer = layer
        cfg = layer.get_config()
        cfg.update(name=f"{layer.name}_backward", go_backwards=not layer.go_backwards)
        self.backward_layer = type(layer).from_config(cfg)
        self.return_sequences = layer.return_sequences
        self.n_outputs = 2 if merge_mode is None else 1    # None: [forward, backward] (fastnn.graph)

    def _build(self, input_shape):
        out = self.layer.build(input_shape)
        self.backward_layer.build(input_shape)
        if self.merge_mode == "concat":
            return tuple(out[:-1]) + (2 * out[-1],)
        if self.merge_mode is None:
            return [out, out]
        return out

    def output_mask(self, mask: Any) -> Any:
        out = mask if self.return_sequences else None
        return [out, out] if self.merge_mode is None else out

    def param_specs(self) -> list[ParamSpec]:
        specs = []
        for prefix, lay in (("forward_", self.layer), ("backward_", self.backward_layer)):
            specs += [s._replace(name=prefix + s.name) for s in lay.param_specs()]
        return specs

    def _bind(self, params, grads, dtype):
        super()._bind(params, grads, dtype)
        for prefix, lay in (("forward_", self.layer), ("backward_", self.backward_layer)):
            k = len(prefix)
            lay._bind({n[k:]: v for n, v in params.items() if n.startswith(prefix)},
                      {n[k:]: v for n, v in grads.items() if n.startswith(prefix)}, dtype)

    @property
    def need_input_grad(self) -> bool:
        return self.layer.need_input_grad

    @need_input_grad.setter
    def need_input_grad(self, value: bool) -> None:
        if "layer" in self.__dict__:
            self.layer.need_input_grad = value
            self.backward_layer.need_input_grad = value

    def forward(self, X: Any, training: bool = False, mask: NDArray[np.bool_] | None = None) -> Any:
        """X (n, T, features); mask None or (n, T) bool.  The merged output (see the class docstring)."""
        yf = self.layer.forward(X, training, mask=mask)
        yb = self.backward_layer.forward(X, training, mask=mask)
        if self.return_sequences:
            yb = yb[:, ::-1]
        self._y = (yf, yb)
        if self.merge_mode is None:
            return [yf, yb]
        key = (self.merge_mode, yf.shape)

        def make(_):
            return np.empty(yf.shape[:-1] + (2 * yf.shape[-1],) if self.merge_mode == "concat" else yf.shape,
                            self.dtype)

        out = self._batch_buffers(key[1], make, tag="out")
        if self.merge_mode == "concat":
            u = yf.shape[-1]
            out[..., :u] = yf
            out[..., u:] = yb
        elif self.merge_mode == "sum":
            np.add(yf, yb, out=out)
        elif self.merge_mode == "mul":
            np.multiply(yf, yb, out=out)
        else:
            np.add(yf, yb, out=out)
            out *= 0.5
        self._y = (yf, yb)
        return out

    def backward(self, dY: Any) -> Any:
        """The gradient of the merged output -> the gradient of the input (sum of both directions)."""
        yf, yb = self._y
        u = yf.shape[-1]
        # the two directions' output gradients, contiguous, in buffers of this layer (the backward one's in its
        # processing order: reversed in time with return_sequences)
        df, db = self._batch_buffers(yf.shape, lambda _: (np.empty(yf.shape, self.dtype),
                                                           np.empty(yf.shape, self.dtype)), tag="grad")
        db_view = db[:, ::-1] if self.return_sequences else db     # db_view[:, t] is time t
        if self.merge_mode is None:
            gf, gb = dY
            for g, out in ((gf, df), (gb, db_view)):
                if g is None:
                    out[...] = 0
                else:
                    np.copyto(out, g)
        elif self.merge_mode == "concat":
            np.copyto(df, dY[..., :u])
            np.copyto(db_view, dY[..., u:])
        elif self.merge_mode == "sum":
            np.copyto(df, dY)
            np.copyto(db_view, dY)
        elif self.merge_mode == "mul":
            np.multiply(dY, yb, out=df)
            np.multiply(dY, yf, out=db_view)
        else:
            np.multiply(dY, 0.5, out=df)
            np.copyto(db_view, df)
        dxf = self.layer.backward(df)
        dxb = self.backward_layer.backward(db)
        if dxf is None:
            return None
        dxf += dxb          # the forward layer's own dX buffer: nothing else reads it before its next backward
        return dxf

    def get_config(self) -> Config:
        return {"name": self.name, "merge_mode": self.merge_mode,
                "layer": {"class": type(self.layer).__name__, "config": self.layer.get_config()}}

    @classmethod
    def from_config(cls, config: Config) -> Self:
        config = dict(config)
        inner = config.pop("layer")
        classes = {c.__name__: c for c in (SimpleRNN, LSTM, GRU)}
        if not isinstance(inner, dict) or inner.get("class") not in classes:
            raise ValueError(f"Bidirectional.from_config: unknown inner layer {inner!r}")
        return cls(classes[inner["class"]].from_config(inner["config"]), **config)

    def extra_repr(self) -> str:
        return f"{self.layer!r}, merge_mode={self.merge_mode!r}"
