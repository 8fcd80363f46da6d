"""The parameter table: one row per parameter of a model, over two flat buffers.

All of a model's parameters live in one contiguous array (``parameters``) and their gradients in another
(``gradients``) of the same layout; each layer gets views into both.  Parameters that take weight decay come
first (``n_decay`` elements), so an optimizer applies decay to a prefix of the buffer.  A row records where a
parameter lives (``offset``, ``size``, ``shape``), so that services (io, pruning, diagnostics, the compiled
plan) find it by row instead of by address arithmetic on the views.
"""
from collections import namedtuple

import numpy as np

Row = namedtuple("Row", "layer name offset size shape decay trainable")
Row.__doc__ = """One parameter: its layer, its name in the layer, its place in the flat buffers (offset, size),
shape, whether weight decay applies, and whether the optimizer updates it (always True for now)."""


class ParameterTable:
    """The parameters of `layers` (in graph order) in one flat buffer, decayed parameters first.

    Initialization runs in graph order (not buffer order) and draws from `rng`, so that each layer's draw does
    not depend on the others' decay flags.  The layers are bound to their views (``Layer._bind``).

    Attributes:
        parameters, gradients: the flat buffers (1-D, `dtype`).
        n_decay: the number of leading elements that take weight decay.
        rows: the rows, in buffer order.
    """

    def __init__(self, layers, dtype, rng):
        self.dtype = dtype
        entries = [(layer, spec) for layer in layers for spec in layer.param_specs()]
        ordered = [e for e in entries if e[1].decay] + [e for e in entries if not e[1].decay]
        rows, offset = [], 0
        for layer, spec in ordered:
            if any(d is None for d in spec.shape):
                raise ValueError(f"{layer.name}: parameter {spec.name!r} would have shape {tuple(spec.shape)}: an "
                                 f"axis of variable size (None) cannot carry parameters (input shape "
                                 f"{layer.input_shape})")
            shape = tuple(int(d) for d in spec.shape)
            size = int(np.prod(shape, dtype=np.int64))
            rows.append(Row(layer, spec.name, offset, size, shape, bool(spec.decay), True))
            offset += size
        self.rows = rows
        self.parameters = np.zeros(offset, dtype=dtype)
        self.gradients = np.zeros(offset, dtype=dtype)
        self.n_decay = int(sum(r.size for r in rows if r.decay))
        self._index = {(id(r.layer), r.name): r for r in rows}
        self._by_layer = {}
        for r in rows:
            self._by_layer.setdefault(id(r.layer), []).append(r)
        for layer, spec in entries:
            self.param(layer, spec.name)[...] = spec.initialize(rng)
        for layer in layers:
            params = {r.name: self.param(layer, r.name) for r in self.rows_of(layer)}
            grads = {r.name: self.grad(layer, r.name) for r in self.rows_of(layer)}
            layer._bind(params, grads, dtype)

    # ------------------------------------------------------------------ lookups
    def row(self, layer, name):
        """The row of parameter `name` of `layer` (KeyError if there is none)."""
        try:
            return self._index[(id(layer), name)]
        except KeyError:
            raise KeyError(f"{getattr(layer, 'name', layer)} has no parameter {name!r}") from None

    def rows_of(self, layer):
        """The rows of `layer`, in buffer order (a layer's ``params`` dict has the same order)."""
        return list(self._by_layer.get(id(layer), ()))

    def view(self, flat, row):
        """The part of a flat buffer of this layout (parameters, gradients, an optimizer state) at `row`,
        shaped as the parameter."""
        return flat[row.offset:row.offset + row.size].reshape(row.shape)

    def param(self, layer, name):
        """The view of parameter `name` of `layer` in ``parameters``."""
        return self.view(self.parameters, self.row(layer, name))

    def grad(self, layer, name):
        """The view of the gradient of parameter `name` of `layer` in ``gradients``."""
        return self.view(self.gradients, self.row(layer, name))

    def offset(self, layer, name):
        """The offset of parameter `name` of `layer` in the flat buffers."""
        return self.row(layer, name).offset

    def segments(self, layer):
        """[(offset, size)] of the parameters of `layer`, in buffer order."""
        return [(r.offset, r.size) for r in self.rows_of(layer)]

    def locate(self, index):
        """'layer.param[i, j]' for an index into the flat buffers."""
        for r in self.rows:
            if r.offset <= index < r.offset + r.size:
                pos = np.unravel_index(index - r.offset, r.shape)
                return f"{r.layer.name}.{r.name}[{', '.join(str(int(i)) for i in pos)}]"
        return f"parameter {index}"

    @property
    def size(self):
        """The number of scalar parameters."""
        return int(self.parameters.size)

    def __len__(self):
        return len(self.rows)
