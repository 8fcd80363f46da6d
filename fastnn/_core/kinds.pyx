"""The Python mirror of csrc/fnn_kinds.h, the one table of fastnn's integer kinds.

Built at import from the compiled names (nothing is retyped here): ``ACT``, ``LOSS``, ``OPT``, ``PLAN_LAYER`` and
``PLAN_STATUS`` are ``enum.IntEnum`` classes whose members are the C table's rows (``ACT.RELU`` is C's
``FNN_ACT_RELU``, with ``ACT.RELU.label == "relu"``), and ``ACT_ELEMENTWISE`` is the set of elementwise activation
kinds.  ``check(table, kind, owner)`` is the validation that every Python entry into the compiled core runs.
"""
import enum

from fastnn._core.kinds cimport (fnn_act_id, fnn_act_name, fnn_loss_id, fnn_loss_name, fnn_opt_id, fnn_opt_name,
                                 fnn_layer_id, fnn_layer_name, fnn_status_id, fnn_status_name, FNN_N_ACT,
                                 FNN_N_ACT_ELEMENTWISE, FNN_N_LOSS, FNN_N_OPT, FNN_N_LAYER, FNN_N_STATUS)


class Kind(enum.IntEnum):
    """Base of the kind enums: an integer kind of the compiled core, with its table name as ``label``."""

    @property
    def label(self):
        return _LABELS[type(self)][self]

    @classmethod
    def from_label(cls, label, owner=None):
        """The member whose table name is ``label``; ValueError naming the known names otherwise."""
        for member, name in _LABELS[cls].items():
            if name == label:
                return member
        raise ValueError(f"{owner or cls.__name__}: unknown {cls.__name__} name {label!r}; known: "
                         f"{sorted(_LABELS[cls].values())}")


_LABELS = {}


cdef _table(str cls_name, int n, ids, names):
    rows = [(ids(k).decode(), k) for k in range(n)]
    cls = Kind(cls_name, rows, module=__name__)
    _LABELS[cls] = {cls(k): names(k).decode() for k in range(n)}
    return cls


ACT = _table("ACT", FNN_N_ACT, lambda k: fnn_act_id(k), lambda k: fnn_act_name(k))
LOSS = _table("LOSS", FNN_N_LOSS, lambda k: fnn_loss_id(k), lambda k: fnn_loss_name(k))
OPT = _table("OPT", FNN_N_OPT, lambda k: fnn_opt_id(k), lambda k: fnn_opt_name(k))
PLAN_LAYER = _table("PLAN_LAYER", FNN_N_LAYER, lambda k: fnn_layer_id(k), lambda k: fnn_layer_name(k))
PLAN_STATUS = _table("PLAN_STATUS", FNN_N_STATUS, lambda k: fnn_status_id(k), lambda k: fnn_status_name(k))

ACT_ELEMENTWISE = frozenset(ACT(k) for k in range(FNN_N_ACT_ELEMENTWISE))


def check(table, kind, owner):
    """``table(kind)`` (a member of the enum ``table``), or ValueError naming ``owner`` for a kind outside it."""
    try:
        return table(kind)
    except (ValueError, TypeError):
        raise ValueError(f"{owner}: unknown {table.__name__} kind {kind!r}; known: "
                         f"{', '.join(f'{m.value} {m.label}' for m in table)}") from None
