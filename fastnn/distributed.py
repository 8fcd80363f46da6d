"""Data-parallel training over MPI (mpi4py): the same model on several processes, identical weights.

Needs the "mpi" extra (``pip install "fastnn[mpi]"``: mpi4py and the MPICH wheel, which brings ``mpiexec``); the
core never imports mpi4py, only this module does, when a ``DataParallel`` is made.  Launch a script that calls
``model.fit(..., distributed=DataParallel())`` with ``mpiexec -n N python -m mpi4py train.py`` (``-m mpi4py``
makes an uncaught exception on one rank abort every rank instead of leaving them waiting).

What a distributed ``fit`` does (fastnn/training/trainer.py calls the methods below):

- At the start rank 0's parameters (the whole flat buffer), layer buffers, optimizer state and step count and
  the model's two generators (shuffling, random layers) are broadcast, so that every rank starts identical
  whatever its seed; every rank must pass the same data (its shape is checked).
- Every epoch's permutation is drawn from ``model.rng`` (the same on every rank).  A global batch holds
  ``batch_size * size`` samples; rank r trains on rows ``[r * m // size, (r + 1) * m // size)`` of each global
  batch of m rows (so a short last batch is split as evenly as it can be).
- Each rank's loss gradient is scaled by its share of the global batch's weight (rows, or summed sample
  weights, or real steps of a masked output) before the backward pass; after it one ``Allreduce`` (sum, in
  place) over the trainable part of the flat gradient buffer gives every rank the gradient of the global
  batch, and the update runs on every rank: the weights stay bitwise identical.  The loss, the accuracy count
  and the weights of the batch travel in one small ``Allreduce`` before the backward pass, so every rank sees
  the global batch's loss (the NaN guard decides the same on every rank); the compiled plan starts it before the
  backward pass and waits for it after the gradient's allreduce, so that a step waits for the other ranks once
  (a non-finite global loss then stops every rank after the backward pass, nothing updated).
- BatchNorm: local batch statistics by default (each rank normalizes its own rows; the running statistics are
  averaged over ranks at the end of every epoch).  ``sync_batchnorm=True`` normalizes with the statistics of
  the global batch (two small allreduces in the forward pass, one in the backward pass): then training equals
  the one-process run with the global batch.
- Dropout draws the global batch's mask: every rank draws the same seed from the model's layer generator and
  skips ahead in the counter-based generator to its own rows (``Dropout.row_offset``).
- The epoch's loss, accuracy and metrics, and the validation (each rank evaluates a contiguous share of the
  validation data) are reduced over ranks, so the History is the same on every rank.  Callbacks that write
  files (``ModelCheckpoint``, ``CSVLogger``: ``writes_files = True``) and verbose output run on rank 0 only;
  ``model.save`` writes on rank 0 only (other ranks return without writing).

Exact equivalence with one process training on the global batch (``batch_size * size``), up to the rounding of
the sums (float64: ~1e-16 in tests/test_distributed.py): any optimizer and loss, sample and class weights,
masked outputs, convolutional and recurrent layers, Dropout (also inside a Residual), stochastic depth (one draw
per batch, the same on every rank), and BatchNorm with ``sync_batchnorm=True``.  Not equal: BatchNorm with local
statistics (the default), and a layer that draws random numbers per sample in another way than Dropout.

A model that qualifies for the compiled training plan (fastnn/training/compiled.py: Dense/activation chains,
SGD/Adam/AdamW, no per-batch callbacks or metrics) keeps running whole epochs in C: the plan calls
``MPI_Allreduce`` itself (its address looked up in the MPI library mpi4py loaded, with mpi4py's handles; MPICH's
ABI), so a step has no Python in it; with ``overlap=True`` it starts ``MPI_Iallreduce`` on each layer's gradients
as soon as the backward pass has made them and waits for all before the update (Plan.overlap): the same sums
(each element's over the ranks, once), so the same weights as the blocking call.  Every other model runs the
per-layer path with the allreduce between the backward pass and the update.  ``shard_update=True`` makes the plan
reduce-scatter the gradient, update only this rank's shard and allgather the parameters (Plan.shard).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional, cast

import numpy as np

from fastnn._core import losses as _kloss
from fastnn._typing import DTypeLike, NDArray

if TYPE_CHECKING:
    from fastnn.callbacks import CallbackList
    from fastnn.metrics import Metric
    from fastnn.model import Model
    from fastnn.training.trainer import Trainer

#: (X, targets, sample weights or None): the arrays of a fit or a validation set
Arrays3 = tuple[NDArray[Any], NDArray[Any], Optional[NDArray[Any]]]

__all__ = ["DataParallel"]


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as e:        # pragma: no cover - depends on the install
        raise ImportError("fastnn.distributed needs mpi4py and an MPI library: pip install \"fastnn[mpi]\" "
                          "(mpi4py and mpich)") from e
    return MPI


def _all_layers(layers):
    """`layers` and the layers they contain (``sublayers()``, recursively), each once."""
    seen, out = set(), []
    stack = list(layers)[::-1]
    while stack:
        layer = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        out.append(layer)
        stack.extend(layer.sublayers()[::-1])
    return out


class DataParallel:
    """Data-parallel training over the MPI communicator `comm` (default ``MPI.COMM_WORLD``): pass it to
    ``model.fit(..., distributed=DataParallel())``; ``batch_size`` is then the per-rank batch.

    Args:
        comm: an ``mpi4py.MPI.Intracomm`` (default COMM_WORLD).
        sync_batchnorm: normalize BatchNorm layers with the statistics of the global batch (allreduced) instead
            of each rank's own rows; needed for training equal to one process with the global batch.
        compiled_plan: let a model that qualifies for the compiled training plan (fastnn/training/compiled.py)
            train whole epochs in C, the plan calling MPI_Allreduce itself (needs an MPI library with MPICH's
            ABI, as the mpich wheel; otherwise, or False, every step runs the per-layer path).
        overlap: on the compiled plan, allreduce the gradient in buckets with ``MPI_Iallreduce`` while the
            backward pass runs (each layer's gradients as soon as they are final, the last layer's first, at
            least ``bucket_bytes`` per bucket), calling ``MPI_Testall`` between the backward pass's GEMMs so that
            MPICH progresses them, and wait for all before the update; the same sums, so the same weights, as
            the one blocking ``MPI_Allreduce`` of the default.  The per-layer path ignores it.
        bucket_bytes: the smallest bucket of the overlap (default 256 KiB).
        shard_update: on the compiled plan, split the trainable parameters into one contiguous shard per rank
            and reduce-scatter the gradient (``MPI_Reduce_scatter``) instead of allreducing it; each rank runs the
            optimizer update (and the guard's and clipping's scans) on its shard only, the partial results
            combined in one small ``MPI_Allgather``, then ``MPI_Allgatherv`` gives every rank the full parameters
            (and, before each run of batches returns, the full optimizer state): weights and state bitwise
            identical on every rank, equal to the whole update up to the rounding of the clipping norm's sum
            (Plan.shard).  Off by default: on the 2-core test machine it measured no faster (W1 1.27 vs 1.26
            ms/step, W2 106 vs 105), the halved update paid back in extra synchronizations.  Not combined with
            ``overlap`` (its buckets are allreduced; overlap wins); the per-layer path ignores it.

    Attributes: ``comm``, ``rank``, ``size``, ``sync_batchnorm``, ``overlap``, ``bucket_bytes``, ``shard_update``;
    ``allreduce_seconds``, the time the last fit spent in the gradient allreduce (with the waits for the slower rank
    in it); ``progress_calls`` (overlap's MPI_Testall calls) and ``defer_loss`` (the plan waits for the loss's
    allreduce after the gradient's, so a step waits for the other ranks once), both True, switches for
    measurements.
    """

    def __init__(self, comm: Any = None, sync_batchnorm: bool = False, compiled_plan: bool = True,
                 overlap: bool = False, bucket_bytes: int = 256 * 1024, shard_update: bool = False) -> None:
        MPI = _mpi()
        self._MPI = MPI
        if comm is None:
            comm = MPI.COMM_WORLD
        if not isinstance(comm, MPI.Intracomm):
            raise TypeError(f"DataParallel: comm must be an mpi4py.MPI.Intracomm, got {type(comm).__name__}")
        if not isinstance(sync_batchnorm, (bool, np.bool_)):
            raise TypeError(f"DataParallel: sync_batchnorm must be a bool, got {type(sync_batchnorm).__name__}")
        self.comm = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        self.sync_batchnorm = bool(sync_batchnorm)
        self.compiled_plan = bool(compiled_plan)
        if not isinstance(overlap, (bool, np.bool_)):
            raise TypeError(f"DataParallel: overlap must be a bool, got {type(overlap).__name__}")
        if isinstance(bucket_bytes, (bool, np.bool_)) or not isinstance(bucket_bytes, (int, np.integer)) or \
                bucket_bytes < 0:
            raise ValueError(f"DataParallel: bucket_bytes must be an int >= 0, got {bucket_bytes!r}")
        self.overlap = bool(overlap)
        if not isinstance(shard_update, (bool, np.bool_)):
            raise TypeError(f"DataParallel: shard_update must be a bool, got {type(shard_update).__name__}")
        self.shard_update = bool(shard_update)
        self.bucket_bytes = int(bucket_bytes)
        self.progress_calls = True      # overlap: MPI_Testall between the backward pass's GEMMs
        self.defer_loss = True          # the plan waits for the loss's allreduce after the gradient's (Plan.allreduce)
        self._hook: Any = False      # not looked up yet (plan_hook); then the handles or None
        self.allreduce_seconds = 0.0
        self._small = np.zeros(5, dtype=np.float64)
        self._last: tuple[float, int] = (0.0, 0)     # (batch weight, predictions) of the last combine_loss

    def __repr__(self) -> str:
        return f"DataParallel(rank={self.rank}, size={self.size}, sync_batchnorm={self.sync_batchnorm})"

    def plan_hook(self, dtype: DTypeLike) -> tuple[int, ...] | None:
        """The arguments of the compiled plan's ``Plan.allreduce`` for parameters of `dtype`: the address of
        MPI_Allreduce in the MPI library mpi4py loaded and the handles, or None where the plan cannot call it
        (compiled_plan=False, one rank, or an MPI without MPICH's ABI of int handles)."""
        if self._hook is False:
            self._hook = self._find_allreduce() if (self.compiled_plan and self.size > 1) else None
        if self._hook is None:
            return None
        fn, comm, dbl, flt, op, iall, wait = self._hook[:7]
        return (fn, comm, dbl if np.dtype(dtype) == np.float64 else flt, dbl, op, -1, self.rank, self.size,
                iall if self.defer_loss else 0, wait)

    def overlap_hook(self, dtype: DTypeLike) -> tuple[int, ...] | None:
        """The arguments of the compiled plan's ``Plan.overlap`` (MPI_Iallreduce, MPI_Waitall, MPI_Testall or 0,
        the smallest bucket in elements of `dtype`), or None for one blocking MPI_Allreduce per step (overlap off,
        or no plan hook)."""
        if not self.overlap or self.plan_hook(dtype) is None:
            return None
        iall, wait, test = self._hook[5:8]
        return (iall, wait, test if self.progress_calls else 0, -(-self.bucket_bytes // np.dtype(dtype).itemsize))

    def shard_hook(self, dtype: DTypeLike) -> tuple[int, ...] | None:
        """The arguments of the compiled plan's ``Plan.shard`` (MPI_Reduce_scatter, MPI_Allgatherv, MPI_Allgather),
        or None for the whole update on every rank (shard_update off, overlap on, or no plan hook)."""
        if not self.shard_update or self.overlap or self.plan_hook(dtype) is None:
            return None
        return tuple(self._hook[8:11])

    def _find_allreduce(self):
        import ctypes
        MPI = self._MPI
        if MPI._handleof(MPI.COMM_WORLD) != 0x44000000:     # not MPICH's ABI (int handles, MPI_IN_PLACE = -1)
            return None
        try:
            with open("/proc/self/maps") as f:
                libs = {line.split()[-1] for line in f if "/libmpi" in line}
        except OSError:
            return None
        for path in sorted(libs):
            try:
                lib = ctypes.CDLL(path)
                fns = [ctypes.cast(getattr(lib, name), ctypes.c_void_p).value
                       for name in ("MPI_Allreduce", "MPI_Iallreduce", "MPI_Waitall", "MPI_Testall",
                                    "MPI_Reduce_scatter", "MPI_Allgatherv", "MPI_Allgather")]
            except (OSError, AttributeError):
                continue
            if all(fns):
                return (fns[0], MPI._handleof(self.comm), MPI._handleof(MPI.DOUBLE), MPI._handleof(MPI.FLOAT),
                        MPI._handleof(MPI.SUM), *fns[1:])
        return None

    def barrier(self) -> None:
        """Wait for every rank (e.g. before other ranks read a file rank 0 saved)."""
        self.comm.Barrier()

    # ------------------------------------------------------------------ start of fit
    def start(self, model: Model, train: Arrays3, val: Arrays3 | None) -> None:
        """Check that every rank has the same data shapes and make every rank's model equal to rank 0's."""
        X, T, W = train
        mine = (X.shape, T.shape, W is not None, None if val is None else (val[0].shape, val[1].shape))
        every = self.comm.allgather(mine)
        if any(o != every[0] for o in every):
            raise ValueError("fit(distributed=...): every rank must pass the same data (X, y, sample_weight, "
                             f"validation); the shapes differ: {every}")
        comm = self.comm
        comm.Bcast(model.parameters, root=0)
        for layer in _all_layers(model.graph.layers):
            for arr in layer.buffers.values():
                if isinstance(arr, np.ndarray) and arr.flags.c_contiguous:
                    comm.Bcast(arr, root=0)
        opt = model.optimizer
        assert opt is not None      # fit checked that the model is compiled
        for key in sorted(opt.state):
            comm.Bcast(opt.state[key], root=0)
        state = comm.bcast((opt.step_count, model.rng.bit_generator.state, model.layer_rng.bit_generator.state),
                           root=0)
        opt.step_count = state[0]
        model.rng.bit_generator.state = state[1]
        model.layer_rng.bit_generator.state = state[2]
        self.allreduce_seconds = 0.0
        from fastnn.layers.dropout import Dropout
        from fastnn.layers.normalization import BatchNorm
        layers = _all_layers(model.graph.layers)
        self._dropouts = [layer for layer in layers if isinstance(layer, Dropout)]
        self._batchnorms = [layer for layer in layers if isinstance(layer, BatchNorm)]
        for layer in self._batchnorms:
            layer.reducer = self.sum_over_ranks if self.sync_batchnorm else None

    def finish(self, model: Model) -> None:
        """Detach from the layers at the end of fit (the model keeps this object for ``save``)."""
        for layer in self._batchnorms:
            layer.reducer = None
        for layer in self._dropouts:
            layer.row_offset = 0

    def shard(self, m: int) -> tuple[int, int]:
        """(lo, hi): this rank's rows of a global batch of m rows."""
        return self.rank * m // self.size, (self.rank + 1) * m // self.size

    # ------------------------------------------------------------------ one step
    def combine_loss(self, trainer: Trainer, loss: float, correct: int, grad: NDArray[Any], rows: int,
                     Wb: NDArray[Any] | None) -> tuple[float, int]:
        """The global batch's (loss, correct) from this rank's; scales this rank's loss gradient `grad` by its
        share of the batch weight (before the backward pass).  Every rank gets the same numbers."""
        model = trainer.model
        lossf = model.loss
        masked = model.graph.has_masks
        mask = model.engine.output_mask_value() if masked else None
        if rows == 0:
            w, npred, loss, correct = 0.0, 0, 0.0, 0
        elif mask is not None:
            w, npred = trainer.mask_weight(mask, Wb, model.engine.output(), model.engine)
        else:
            w = float(rows) if Wb is None else _kloss.weight_sum(Wb)
            npred = lossf.n_predictions(rows, model.engine.output().shape[1:]) if masked else 0
        s = self._small
        s[0] = w
        s[1] = loss if lossf.sums else loss * w
        s[2] = correct
        s[3] = npred
        s[4] = 0.0
        self.comm.Allreduce(self._MPI.IN_PLACE, s, op=self._MPI.SUM)
        W = s[0]
        if not lossf.sums and rows:
            np.multiply(grad, w / W if W > 0 else 0.0, out=grad)
        self._last = (W, int(s[3]))
        glob = s[1] if lossf.sums else (s[1] / W if W > 0 else 0.0)
        return float(glob), int(s[2])

    def reduce_gradients(self, grads: NDArray[Any]) -> None:
        """Sum the (scaled) gradients of all ranks in place: every rank gets the global batch's gradient."""
        import time
        t0 = time.perf_counter()
        self.comm.Allreduce(self._MPI.IN_PLACE, grads, op=self._MPI.SUM)
        self.allreduce_seconds += time.perf_counter() - t0

    # ------------------------------------------------------------------ the epoch
    def fit_epoch(self, trainer: Trainer, epoch: int, train: Arrays3, bs: int, shuffle: bool,
                  metrics: list[Metric], cbs: CallbackList) -> dict[str, Any]:
        """One distributed epoch; returns the global batch logs.  A model that qualifies runs the compiled plan
        with its C allreduce hook (``plan_hook``), any other the per-layer path, sharded."""
        model = trainer.model
        from fastnn.training import compiled as _compiled
        plan = _compiled.plan_for(model, train, bs, metrics, cbs)
        if plan is not None:
            return _compiled.fit_epoch(model, plan, epoch, train, bs, shuffle, cbs)
        X, T, W = train
        n = X.shape[0]
        gbs = bs * self.size
        idx = model.rng.permutation(n) if shuffle else None
        for m in metrics:
            m.reset()
        hooks, progress = cbs.batch_hooks, cbs.progress
        sums = model.loss.sums
        masked = model.graph.has_masks
        total, wtotal, seen, correct, predictions = 0.0, 0.0, 0, 0, 0
        running = 0.0         # the progress display's running loss
        for b, start in enumerate(range(0, n, gbs)):
            stop = min(start + gbs, n)
            m = stop - start
            lo, hi = self.shard(m)
            if hooks:
                cbs.on_batch_begin(b, {"batch": b, "size": m})
            sel = slice(start + lo, start + hi)
            if shuffle:
                assert idx is not None
                Xb, Tb, Wb = trainer.gather(X, T, W, idx[sel])
            else:
                Xb, Tb, Wb = X[sel], T[sel], None if W is None else W[sel]
            for layer in self._dropouts:
                layer.row_offset = lo
            loss, c = trainer.step(Xb, Tb, (epoch, b), Wb)
            Wg, npred = self._last
            total += loss if sums else loss * Wg
            wtotal += Wg
            predictions += npred
            seen += m
            correct += c
            if metrics and hi > lo:
                out = model.engine.output()
                mask = model.engine.output_mask_value() if masked else None
                from fastnn.training.trainer import update_metric
                for met in metrics:
                    update_metric(met, out, Tb, mask)
            if hooks:
                cbs.on_batch_end(b, {"batch": b, "size": m, "loss": loss})
            if progress:
                running += loss * m
                cbs.on_progress(b + 1, running / seen)
            if model.stop_training:
                break
        self._average_local_buffers()
        denom = wtotal if (W is not None or masked) else seen
        logs: dict[str, Any] = {"loss": total if sums else (total / denom if denom > 0 else 0.0)}
        if model.loss.classification:
            npred = predictions if masked else model.loss.n_predictions(seen, trainer.output_shape_for(T))
            logs["accuracy"] = correct / npred if npred else 0.0
        self.reduce_metrics(metrics)
        for met in metrics:
            logs[cast(str, met.name)] = met.result()
        return logs

    def _average_local_buffers(self):
        """Local BatchNorm statistics: average the running statistics over ranks (the model then is the same on
        every rank, and rank 0 saves the average)."""
        if self.sync_batchnorm:
            return
        for layer in self._batchnorms:
            for arr in layer.buffers.values():
                if isinstance(arr, np.ndarray) and arr.dtype.kind == "f" and arr.flags.c_contiguous:
                    self.comm.Allreduce(self._MPI.IN_PLACE, arr, op=self._MPI.SUM)
                    arr /= self.size

    def reduce_metrics(self, metrics: list[Metric]) -> None:
        """Sum the metrics' states (``Metric.state``: counts and sums) over ranks."""
        if not metrics:
            return
        every = self.comm.allgather([met.state() for met in metrics])
        for i, met in enumerate(metrics):
            met.merge_states([s[i] for s in every])

    def evaluate(self, trainer: Trainer, val: Arrays3, metrics: list[Metric]) -> dict[str, Any]:
        """The validation logs, each rank evaluating a contiguous share of the rows, reduced over ranks."""
        Xv, Tv, Wv = val
        n = Xv.shape[0]
        lo, hi = self.shard(n)
        sums = np.zeros(4)
        if hi > lo:
            sums[:] = trainer.evaluate_sums(Xv[lo:hi], Tv[lo:hi], None, None if Wv is None else Wv[lo:hi], metrics)
        else:
            for m in metrics:
                m.reset()
        self.comm.Allreduce(self._MPI.IN_PLACE, sums, op=self._MPI.SUM)
        self.reduce_metrics(metrics)
        return trainer.logs_from_sums(float(sums[0]), float(sums[1]), int(sums[2]), int(sums[3]), metrics)

    # ------------------------------------------------------------------ synchronized BatchNorm
    def sum_over_ranks(self, buf: NDArray[np.float64]) -> None:
        """Sum the float64 array `buf` over the ranks, in place (BatchNorm's ``reducer`` under
        ``sync_batchnorm=True``)."""
        self.comm.Allreduce(self._MPI.IN_PLACE, buf, op=self._MPI.SUM)
