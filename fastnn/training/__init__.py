"""Training: the trainer (fit / evaluate / train_on_batch / the guarded step) and its strategies.

- ``trainer.py``: the per-layer training loop over the executor (``fastnn.engine``), the NaN/inf guard,
  sample and class weights, callbacks wiring.
- ``compiled.py``: the compiled plan, one strategy of the trainer: whole epochs in ``fastnn._core.plan``.
- ``sampled.py``: the training step of a model compiled with ``fastnn.losses.SampledSoftmax``.

``fastnn.callbacks``, ``fastnn.schedules`` and ``fastnn.metrics`` stay public modules of their own.
"""
