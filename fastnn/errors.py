"""Exceptions raised by training (re-exported by ``fastnn`` and ``fastnn.model``)."""
from __future__ import annotations


class NonFiniteError(FloatingPointError):
    """Training met a NaN or infinity: in the loss, in the gradients, in a layer buffer (BatchNorm's running
    statistics) after the forward pass, or in the parameters after an update.

    The weights and layer buffers are those of the last finite state: from before the batch (``what`` "loss",
    "gradient" or "buffer"), or restored from the copy taken before the update (``what`` "parameters").
    ``epoch`` and ``batch`` are 1-based (None outside fit); ``index`` is the first bad element of the flat buffer
    (None for the loss).
    """

    def __init__(self, message: str, what: str | None = None, epoch: int | None = None, batch: int | None = None,
                 index: int | None = None) -> None:
        super().__init__(message)
        self.what, self.epoch, self.batch, self.index = what, epoch, batch, index
