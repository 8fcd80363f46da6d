"""Exceptions raised by training (re-exported by ``fastnn`` and ``fastnn.model``)."""


class NonFiniteError(FloatingPointError):
    """Training met a NaN or infinity: in the loss, in the gradients, in a layer buffer (BatchNorm's running
    statistics) after the forward pass, or in the parameters after an update.

    The weights and layer buffers are those of the last finite state: from before the batch (``what`` "loss",
    "gradient" or "buffer"), or restored from the copy taken before the update (``what`` "parameters").
    ``epoch`` and ``batch`` are 1-based (None outside fit); ``index`` is the first bad element of the flat buffer
    (None for the loss).
    """

    def __init__(self, message, what=None, epoch=None, batch=None, index=None):
        super().__init__(message)
        self.what, self.epoch, self.batch, self.index = what, epoch, batch, index
