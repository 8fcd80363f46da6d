# cython: language_level=3, auto_pickle=False
"""Strict attribute setting for layers, with no cost on the hot path.

``fastnn.layers.Layer`` derives from ``StrictAttributes``.  Its ``__setattr__`` is C code: a name that starts
with an underscore (the private state every ``forward`` / ``backward`` writes) goes straight to the generic
setter, as for any object, so the check costs nothing there (a ``__setattr__`` written in Python would cost
~0.2 us per assignment, a few percent of a small per-layer training step).  A public name is set when the
instance or its class already has it (a setting the layer defines, a property such as ``weight`` or
``trainable``), or while the layer is being constructed (``_sealed`` not yet set); any other public name is
handed to ``self._reject_attribute(name)``, the layer's policy (it raises AttributeError naming the layer and
the closest known attribute).
"""
from cpython.object cimport PyObject_GenericSetAttr

cdef extern from "Python.h":
    Py_ssize_t PyUnicode_GET_LENGTH(object o)
    Py_UCS4 PyUnicode_READ_CHAR(object o, Py_ssize_t index)


cdef class StrictAttributes:
    """Base class whose instances accept new public attributes only until they are sealed (``_sealed``)."""

    def __setattr__(self, name, value):
        if type(name) is str and PyUnicode_GET_LENGTH(name) > 0 and PyUnicode_READ_CHAR(name, 0) == 95:  # "_"
            PyObject_GenericSetAttr(self, name, value)
            return
        d = self.__dict__
        if name in d or not d.get("_sealed", False) or hasattr(type(self), name):
            PyObject_GenericSetAttr(self, name, value)
            return
        self._reject_attribute(name)

    def _reject_attribute(self, name):
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")
