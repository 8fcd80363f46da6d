"""The parameter table: one row per parameter of a model, over two flat buffers.

All of a model's parameters live in one contiguous array (``parameters``) and their gradients in another
(``gradients``) of the same layout; each layer gets views into both.  The rows are ordered

    [trainable and decayed | trainable, not decayed | frozen]

so that the optimizer binds to the trainable prefix (``trainable_parameters`` / ``trainable_gradients``, the
first ``n_trainable`` elements) and applies weight decay to the first ``n_decay`` of those; a frozen layer's
parameters (``layer.trainable = False``, or inside a frozen container) sit after the prefix, where no update,
clipping or NaN-guard scan reaches.  A row records where a parameter lives (``offset``, ``size``, ``shape``),
so that services (io, pruning, diagnostics, the compiled plan) find it by row instead of by address arithmetic
on the views.

``relayout()`` (called at ``compile``) re-orders the buffers when the set of frozen layers changed: the values
are kept, the layers are bound to views of the new buffers, and it returns how the trainable prefix moved so
that the optimizer can carry its state.
"""
from __future__ import annotations

import math
import os
from collections import namedtuple
from collections.abc import Iterable

import numpy as np

from fastnn._typing import DTypeLike, FloatArray
from fastnn.layers.base import Layer, trainable_changes

Row = namedtuple("Row", "layer name offset size shape decay trainable")
Row.__doc__ = """One parameter: its layer, its name in the layer, its place in the flat buffers (offset, size),
shape, whether weight decay applies, and whether the optimizer updates it (False for a frozen layer)."""


MAX_AXIS = 2**31 - 1      # the largest axis of a parameter: the BLAS (scipy-openblas32) takes 32-bit sizes


def physical_memory() -> int | None:
    """This machine's memory in bytes, or None where the system does not say."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def frozen_layers(layers: Iterable[Layer]) -> set[int]:
    """The ids of the layers whose parameters are frozen: ``trainable`` False, or inside a container (its
    ``sublayers()``, recursively) whose ``trainable`` is False (Keras: a frozen model freezes its layers)."""
    frozen: set[int] = set()

    def freeze(layer: Layer) -> None:
        for sub in layer.sublayers():
            frozen.add(id(sub))
            freeze(sub)

    for layer in layers:
        if not layer.trainable:
            frozen.add(id(layer))
            freeze(layer)
    return frozen


class ParameterTable:
    """The parameters of `layers` (in graph order) in one flat buffer: trainable decayed parameters first, then
    the other trainable ones, then the frozen ones.

    Initialization runs in graph order (not buffer order) and draws from `rng`, so that each layer's draw does
    not depend on the others' decay or trainable flags.  The layers are bound to their views (``Layer._bind``).

    Attributes:
        parameters, gradients: the flat buffers (1-D, `dtype`).
        n_trainable: the number of leading elements the optimizer updates.
        trainable_parameters, trainable_gradients: the first ``n_trainable`` elements (the buffers themselves
            when nothing is frozen), the arrays the optimizer binds to.
        n_decay: the number of leading elements that take weight decay (all trainable).
        rows: the rows, in buffer order.
    """

    def __init__(self, layers: Iterable[Layer], dtype: DTypeLike, rng: np.random.Generator) -> None:
        self.dtype = dtype
        self.layers = list(layers)
        self._layout(frozen_layers(self.layers))
        for layer in self.layers:
            for spec in layer.param_specs():
                self.param(layer, spec.name)[...] = spec.initialize(rng)
        self._bind_layers()

    def _layout(self, frozen):
        """Rows and fresh (zero) buffers for the set `frozen` of frozen layer ids."""
        entries = [(layer, spec, id(layer) not in frozen) for layer in self.layers for spec in layer.param_specs()]
        groups = [[e for e in entries if e[2] and e[1].decay], [e for e in entries if e[2] and not e[1].decay],
                  [e for e in entries if not e[2] and e[1].decay], [e for e in entries if not e[2] and not e[1].decay]]
        rows, offset = [], 0
        for layer, spec, trainable in (e for g in groups for e in g):
            if any(d is None for d in spec.shape):
                raise ValueError(f"{layer.name}: parameter {spec.name!r} would have shape {tuple(spec.shape)}: an "
                                 f"axis of variable size (None) cannot carry parameters (input shape "
                                 f"{layer.input_shape})")
            shape = tuple(int(d) for d in spec.shape)
            if any(d > MAX_AXIS for d in shape):
                raise ValueError(f"{layer.name}: parameter {spec.name!r} would have shape {shape}: an axis above "
                                 f"{MAX_AXIS} (2**31 - 1), the largest the BLAS takes (input shape "
                                 f"{layer.input_shape})")
            size = math.prod(shape)         # a Python int: exact at any size (np.prod would wrap around)
            rows.append(Row(layer, spec.name, offset, size, shape, bool(spec.decay), trainable))
            offset += size
        self._check_size(rows, offset)
        try:        # into locals first: a failed allocation leaves the table as it was
            parameters = np.zeros(offset, dtype=self.dtype)
            gradients = np.zeros(offset, dtype=self.dtype)
        except MemoryError:
            raise MemoryError(f"{self._largest(rows)}: the model's {offset} parameters and their gradients "
                              f"({self._gib(offset)} GiB) do not fit in the free memory") from None
        self.rows, self.parameters, self.gradients = rows, parameters, gradients
        self.n_trainable = int(sum(r.size for r in rows if r.trainable))
        self.n_decay = int(sum(r.size for r in rows if r.trainable and r.decay))
        if self.n_trainable == offset:
            self.trainable_parameters, self.trainable_gradients = self.parameters, self.gradients
        else:
            self.trainable_parameters = self.parameters[:self.n_trainable]
            self.trainable_gradients = self.gradients[:self.n_trainable]
        self.frozen = frozenset(frozen)
        self._changes_seen = trainable_changes()
        self._index = {(id(r.layer), r.name): r for r in rows}
        # each layer's rows in its ParamSpec order (the order of layer.params, get_weights and state_dict)
        self._by_layer = {}
        for layer, spec, _ in entries:
            self._by_layer.setdefault(id(layer), []).append(self._index[(id(layer), spec.name)])

    def _gib(self, n):
        return f"{2 * n * np.dtype(self.dtype).itemsize / 2**30:.3g}"

    @staticmethod
    def _largest(rows):
        r = max(rows, key=lambda r: r.size)
        return f"{r.layer.name}: parameter {r.name!r} of shape {r.shape} ({r.size} values)"

    def _check_size(self, rows, n):
        """Raise a ValueError naming the largest parameter when the parameters and gradients (`n` values each)
        would take more than this machine's memory, before anything is allocated."""
        mem = physical_memory()
        if mem is not None and 2 * n * np.dtype(self.dtype).itemsize > mem:
            raise ValueError(f"{self._largest(rows)}: the model's {n} parameters and their gradients would take "
                             f"{self._gib(n)} GiB, more than this machine's memory ({mem / 2**30:.3g} GiB)")

    def _bind_layers(self):
        for layer in self.layers:
            params = {r.name: self.param(layer, r.name) for r in self.rows_of(layer)}
            grads = {r.name: self.grad(layer, r.name) for r in self.rows_of(layer)}
            layer._bind(params, grads, self.dtype)
            layer._frozen = id(layer) in self.frozen

    # ------------------------------------------------------------------ freezing
    def trainable_changed(self) -> bool:
        """Whether the layers' ``trainable`` flags now freeze another set of layers than this layout does.
        Cheap when no flag was assigned since the layout (one integer comparison)."""
        if trainable_changes() == self._changes_seen:
            return False
        if frozen_layers(self.layers) == self.frozen:
            self._changes_seen = trainable_changes()
            return False
        return True

    def changed_layers(self) -> list[Layer]:
        """The layers whose frozen state differs between their flags and this layout, in graph order."""
        now = frozen_layers(self.layers)
        return [layer for layer in self.layers if (id(layer) in now) != (id(layer) in self.frozen)]

    def relayout(self) -> list[tuple[int, int, int]] | None:
        """Re-order the buffers for the layers' current ``trainable`` flags; None when nothing changed.

        The values of the parameters and gradients are kept; the layers are bound to views of the new buffers
        (new arrays: whatever held the old ones, such as a compiled plan, must be rebuilt).  Returns the moves
        of the parameters that are trainable before and after, [(old offset, new offset, size)], in the
        trainable prefixes, for the optimizer to carry its state (``Optimizer._rebind``).
        """
        frozen = frozen_layers(self.layers)
        if frozen == self.frozen:
            self._changes_seen = trainable_changes()
            return None
        old_rows, old_params, old_grads = self.rows, self.parameters, self.gradients
        self._layout(frozen)
        moves = []
        for old in old_rows:
            new = self._index[(id(old.layer), old.name)]
            self.parameters[new.offset:new.offset + new.size] = old_params[old.offset:old.offset + old.size]
            self.gradients[new.offset:new.offset + new.size] = old_grads[old.offset:old.offset + old.size]
            if old.trainable and new.trainable:
                moves.append((old.offset, new.offset, old.size))
        self._bind_layers()
        return moves

    # ------------------------------------------------------------------ lookups
    def row(self, layer: Layer, name: str) -> Row:
        """The row of parameter `name` of `layer` (KeyError if there is none)."""
        try:
            return self._index[(id(layer), name)]
        except KeyError:
            raise KeyError(f"{getattr(layer, 'name', layer)} has no parameter {name!r}") from None

    def rows_of(self, layer: Layer) -> list[Row]:
        """The rows of `layer`, in its ParamSpec order (a layer's ``params`` dict has the same order)."""
        return list(self._by_layer.get(id(layer), ()))

    def view(self, flat: FloatArray, row: Row) -> FloatArray:
        """The part of a flat buffer of this layout (parameters, gradients, an optimizer state) at `row`,
        shaped as the parameter."""
        return flat[row.offset:row.offset + row.size].reshape(row.shape)

    def param(self, layer: Layer, name: str) -> FloatArray:
        """The view of parameter `name` of `layer` in ``parameters``."""
        return self.view(self.parameters, self.row(layer, name))

    def grad(self, layer: Layer, name: str) -> FloatArray:
        """The view of the gradient of parameter `name` of `layer` in ``gradients``."""
        return self.view(self.gradients, self.row(layer, name))

    def offset(self, layer: Layer, name: str) -> int:
        """The offset of parameter `name` of `layer` in the flat buffers."""
        return self.row(layer, name).offset

    def segments(self, layer: Layer) -> list[tuple[int, int]]:
        """[(offset, size)] of the parameters of `layer`, in its ParamSpec order."""
        return [(r.offset, r.size) for r in self.rows_of(layer)]

    def locate(self, index: int) -> str:
        """'layer.param[i, j]' for an index into the flat buffers."""
        for r in self.rows:
            if r.offset <= index < r.offset + r.size:
                pos = np.unravel_index(index - r.offset, r.shape)
                return f"{r.layer.name}.{r.name}[{', '.join(str(int(i)) for i in pos)}]"
        return f"parameter {index}"

    @property
    def size(self) -> int:
        """The number of scalar parameters."""
        return int(self.parameters.size)

    def __len__(self) -> int:
        return len(self.rows)
