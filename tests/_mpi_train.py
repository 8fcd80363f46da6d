"""Run under mpiexec by tests/test_distributed.py (not a test module itself).

    mpiexec -n 2 python -m mpi4py tests/_mpi_train.py equiv OUT_DIR
    mpiexec -n 2 python -m mpi4py tests/_mpi_train.py kill OUT_DIR {plan,layers,raise}
    mpiexec -n 2 python -m mpi4py tests/_mpi_train.py localbn OUT_DIR

equiv: trains three float64 models (SGD with momentum on a compiled-plan MLP, Adam with validation data and a
metric, BatchNorm + Dropout with synchronized statistics) data-parallel with per-rank batch B, checking after
every step that the parameter buffers are bitwise equal on all ranks; rank 0 then trains the same models in one
process with batch B * size and writes OUT_DIR/result.json (max weight differences, history differences,
hash mismatches) and saves the distributed BatchNorm model to OUT_DIR/bn.fnn with its predictions.
kill: rank 1 kills itself with SIGKILL (or raises) at the end of the first epoch; rank 0 trains on into the next
allreduce (and the job must end with an error).
"""
import hashlib
import json
import os
import signal
import sys

import numpy as np
from mpi4py import MPI

import fastnn as fnn
from fastnn import distributed as dist

L = fnn.layers
B = 12          # per-rank batch
N = 101         # samples: the last global batch is short and split unevenly


class HashCheck(fnn.callbacks.Callback):
    """After every batch: gather a hash of the parameter buffer (and the optimizer state) from every rank."""

    def __init__(self, comm):
        self.comm, self.steps, self.mismatches = comm, 0, 0

    def on_batch_end(self, batch, logs=None):
        self.check()

    def check(self):
        h = hashlib.sha256(self.model.parameters.tobytes())
        for k in sorted(self.model.optimizer.state):
            h.update(self.model.optimizer.state[k].tobytes())
        every = self.comm.allgather(h.hexdigest())
        self.steps += 1
        self.mismatches += len(set(every)) - 1


class EpochHashCheck(HashCheck):
    """The same after every epoch (no batch hook: the compiled plan stays on)."""
    on_batch_end = fnn.callbacks.Callback.on_batch_end

    def on_epoch_end(self, epoch, logs=None):
        self.check()


def data(seed=0, n=N, d=6, k=3):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(np.int64) + (X[:, 2] > 1).astype(np.int64)
    return X, y


def make(case):
    if case == "plan_sgd":      # compiled-plan models (the plan calls MPI_Allreduce from C; max-norm applied in C)
        m = fnn.Sequential([L.Dense(16, activation="tanh", max_norm=0.5), L.Dense(3, max_norm=1.0)], input_dim=6,
                           seed=6, dtype="float64")
        m.compile("cross_entropy", fnn.optim.SGD(0.1, momentum=0.9, nesterov=True))
    elif case == "plan_overlap":    # the plan with the allreduce in buckets overlapped with the backward pass
        m = fnn.Sequential([L.Dense(16, activation="relu"), L.LayerNorm(), L.Dense(8, activation="tanh", max_norm=0.7),
                            L.Dense(3)], input_dim=6, seed=11, dtype="float64")
        m.compile("cross_entropy", fnn.optim.SGD(0.05, momentum=0.9))
    elif case == "plan_adam":
        m = fnn.Sequential([L.Dense(16, activation="relu"), L.Dense(8), L.Tanh(), L.Dense(2)], input_dim=6,
                           seed=7, dtype="float64")
        m.compile("mse", fnn.optim.Adam(1e-2))
    elif case == "masked":      # a masked sequence output: each rank's share is its real steps
        x = fnn.Input((7, 6))
        m = fnn.Model(x, L.Dense(3)(L.Dense(8, activation="tanh")(L.Masking()(x))), seed=8, dtype="float64")
        m.compile("cross_entropy", fnn.optim.Adam(1e-2))
    elif case == "conv":        # Conv2D, synchronized BatchNorm over (n, H, W, C), pooling, Dropout in a Residual
        m = fnn.Sequential([L.Conv2D(4, 3, padding="same", use_bias=False), L.BatchNorm(), L.ReLU(),
                            L.Residual([L.Conv2D(4, 3, padding="same", activation="relu"), L.Dropout(0.25)]),
                            L.MaxPool2D(2), L.Flatten(), L.Dense(3)], input_shape=(6, 6, 2), seed=9,
                           dtype="float64")
        m.compile("cross_entropy", fnn.optim.Adam(1e-2))
    elif case == "rnn":         # recurrent layers
        m = fnn.Sequential([L.Bidirectional(L.GRU(5, return_sequences=True)), L.LSTM(4), L.Dense(3)],
                           input_shape=(5, 3), seed=10, dtype="float64")
        m.compile("cross_entropy", fnn.optim.SGD(0.1, momentum=0.9))
    elif case == "sgd":
        m = fnn.Sequential([L.Dense(16, activation="tanh"), L.Dense(3)], input_dim=6, seed=3, dtype="float64")
        m.compile("cross_entropy", fnn.optim.SGD(0.1, momentum=0.9))
    elif case == "adam":
        m = fnn.Sequential([L.Dense(16, activation="relu"), L.Dense(3)], input_dim=6, seed=4, dtype="float64")
        m.compile("cross_entropy", fnn.optim.Adam(1e-2))
    else:
        # no bias before BatchNorm: its gradient is 0 up to rounding, which Adam would scale up to lr-sized steps
        m = fnn.Sequential([L.Dense(16, use_bias=False), L.BatchNorm(), L.ReLU(), L.Dropout(0.3), L.Dense(3)],
                           input_dim=6, seed=5, dtype="float64")
        m.compile("cross_entropy", fnn.optim.Adam(1e-2))
    return m


CASES = ("sgd", "adam", "bnd", "plan_sgd", "plan_adam", "plan_overlap", "masked", "conv", "rnn")


def fit_kwargs(case, X, y):
    kw = {"epochs": 3}
    if case == "plan_adam":
        kw.update(y=np.stack([X[:, 0] * X[:, 1], np.sin(X[:, 2])], axis=1))
    if case == "conv":
        kw.update(X=np.random.default_rng(3).standard_normal((X.shape[0], 6, 6, 2)))
    if case == "rnn":
        kw.update(X=np.random.default_rng(4).standard_normal((X.shape[0], 5, 3)))
    if case == "masked":        # sequences of 7 steps, padded (all-zero steps) after a random length
        rng = np.random.default_rng(2)
        Xs = rng.standard_normal((X.shape[0], 7, 6))
        for i, n in enumerate(rng.integers(1, 8, X.shape[0])):
            Xs[i, n:] = 0.0
        kw.update(X=Xs, y=rng.integers(0, 3, (X.shape[0], 7)), validation_split=0.2)
    if case == "adam":
        Xv, yv = data(seed=1, n=37)
        kw.update(validation_data=(Xv, yv), metrics=["top_k_accuracy"])
    return kw


def nan_stop(fit, X, y):
    """(what, batch, plan used, parameter hash, parameters) of the plan_adam model stopped by an infinite loss."""
    m = make("plan_adam")
    yn = fit_kwargs("plan_adam", X, y)["y"].copy()
    yn[50] = 1e200
    try:
        fit(m, X, yn)
        what = batch = None
    except fnn.NonFiniteError as e:
        what, batch = e.what, e.batch
    return (what, batch, m.trainer.train_plan is not None, hashlib.sha256(m.parameters.tobytes()).hexdigest(),
            m.parameters.tolist())


def equiv(out):
    comm = MPI.COMM_WORLD
    size = comm.Get_size()
    X, y = data()
    result = {"size": size, "cases": {}}
    models = {}
    for case in CASES:
        m = make(case)
        cb = (EpochHashCheck if case.startswith("plan") else HashCheck)(comm)
        dp = dist.DataParallel(sync_batchnorm=case in ("bnd", "conv"), overlap=case == "plan_overlap",
                               bucket_bytes=0)
        kw = fit_kwargs(case, X, y)
        cbs = [cb]
        if case == "adam":      # a callback that writes a file: rank 0 only
            cbs.append(fnn.callbacks.CSVLogger(os.path.join(out, f"log_rank{comm.Get_rank()}.csv")))
        h = m.fit(kw.pop("X", X), kw.pop("y", y), batch_size=B, callbacks=cbs, distributed=dp, **kw)
        if case.startswith("plan"):
            assert m.trainer.train_plan is not None and dp.allreduce_seconds > 0, "the compiled plan did not run"
        if case == "plan_overlap":      # one bucket per layer with parameters, each started after its backward
            assert [b[0] for b in m.trainer.train_plan.core.buckets] == [3, 2, 1, 0], m.trainer.train_plan.core.buckets
        models[case] = (m, h.history, cb)
    # the overlapped allreduce sums the same pairs as the blocking one: the same bits
    m = make("plan_overlap")
    m.fit(X, y, batch_size=B, distributed=dist.DataParallel(), **fit_kwargs("plan_overlap", X, y))
    same_as_blocking = bool(np.array_equal(m.parameters, models["plan_overlap"][0].parameters))
    # a non-finite loss in global batch 3 (row 50's target): the plan waits for the loss's allreduce after the
    # backward pass, and must stop every rank there, with the weights of the two batches before it
    nan = nan_stop(lambda m, Xn, yn: m.fit(Xn, yn, batch_size=B, epochs=1, shuffle=False,
                                           distributed=dist.DataParallel()), X, y)
    every = comm.allgather(nan)
    if comm.Get_rank() == 0:
        for case, (m, hist, cb) in models.items():
            ref = make(case)
            kw = fit_kwargs(case, X, y)
            rh = ref.fit(kw.pop("X", X), kw.pop("y", y), batch_size=B * size, **kw).history
            hd = max(abs(a - b) for k in rh if k != "time" for a, b in zip(rh[k], hist[k]))
            result["cases"][case] = {
                "weight_diff": float(np.max(np.abs(ref.parameters - m.parameters))),
                "state_diff": max([0.0] + [float(np.max(np.abs(ref.optimizer.state[k] - m.optimizer.state[k])))
                                           for k in ref.optimizer.state]),
                "buffer_diff": max([0.0] + [float(np.max(np.abs(a - b))) for la, lb in
                                            zip(ref.graph.layers, m.graph.layers)
                                            for a, b in zip(la.buffers.values(), lb.buffers.values())]),
                "history_keys": sorted(hist), "ref_history_keys": sorted(rh),
                "history_diff": float(hd), "steps": cb.steps, "hash_mismatches": cb.mismatches,
                "step_count": m.optimizer.step_count, "ref_step_count": ref.optimizer.step_count,
            }
        result["overlap_same_as_blocking"] = same_as_blocking
        ref = nan_stop(lambda m, Xn, yn: m.fit(Xn, yn, batch_size=B * size, epochs=1, shuffle=False), X, y)
        result["nan_stop"] = {"ranks": [e[:3] for e in every], "ref": ref[:3],
                              "same_hash": len({e[3] for e in every}) == 1,
                              "weight_diff": float(np.max(np.abs(np.array(ref[4]) - np.array(nan[4]))))}
        np.save(os.path.join(out, "bn_pred.npy"), models["bnd"][0].predict(X))
    else:
        result = {"steps": {c: v[2].steps for c, v in models.items()},
                  "hash_mismatches": {c: v[2].mismatches for c, v in models.items()},
                  "overlap_same_as_blocking": same_as_blocking}
    # the plan's transport as the bandwidth benchmark times it (plan.allreduce_seconds): an in-place sum
    from fastnn._core import plan as cplan
    hook = dist.DataParallel().plan_hook(np.float32)
    buf = np.full(1000, comm.Get_rank() + 1, np.float32)
    secs = cplan.allreduce_seconds(hook[0], hook[1], hook[2], hook[4], hook[5], buf, 1)
    result["allreduce_seconds"] = {"sum_ok": bool(np.all(buf == sum(range(1, size + 1)))), "positive": secs > 0}
    path = os.path.join(out, f"bn_rank{comm.Get_rank()}.fnn")
    models["bnd"][0].save(path)          # writes on rank 0 only
    with open(os.path.join(out, f"result{comm.Get_rank()}.json"), "w") as f:
        json.dump(result, f)


class KillAt(fnn.callbacks.Callback):
    """Rank 1 dies at the end of the first epoch: SIGKILL, or an exception (how="raise")."""

    def __init__(self, comm, how):
        self.comm, self.how = comm, how

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0 and self.comm.Get_rank() == 1:
            sys.stdout.flush()
            if self.how == "raise":
                raise RuntimeError("rank 1 fails on purpose")
            os.kill(os.getpid(), signal.SIGKILL)


def kill(out, how):
    """how: "plan" (the compiled plan's C allreduce), "layers" (the per-layer path, synchronized BatchNorm: the
    survivor waits in a forward-pass allreduce) or "raise" (an exception instead of SIGKILL)."""
    comm = MPI.COMM_WORLD
    X, y = data(n=4000)
    m = make("bnd" if how == "layers" else "adam")
    print(f"rank {comm.Get_rank()} training", flush=True)
    m.fit(X, y, batch_size=8, epochs=1000, callbacks=[KillAt(comm, how)],
          distributed=dist.DataParallel(sync_batchnorm=True))
    with open(os.path.join(out, f"finished{comm.Get_rank()}"), "w") as f:      # must not be reached
        f.write("finished")


SHARD_CASES = {     # name: (optimizer, dtype, clip_norm, clip_value, loss)
    "sgd": (lambda: fnn.optim.SGD(0.1, momentum=0.9, nesterov=True, weight_decay=1e-3), "float64", None, None, "ce"),
    "adam_clip": (lambda: fnn.optim.Adam(1e-2, weight_decay=1e-3), "float64", 0.05, None, "ce"),
    "rmsprop": (lambda: fnn.optim.RMSprop(1e-2, momentum=0.5, centered=True), "float64", None, 0.02, "ce"),
    "adamw32": (lambda: fnn.optim.AdamW(1e-2), "float32", 0.1, None, "ce"),
    "nan_state": (lambda: fnn.optim.Adam(1e-2), "float64", None, None, "mae"),
}


def shard_model(case):
    opt, dtype, cn, cv, _ = SHARD_CASES[case]
    # 7*13 + 13 + 13*3 + 3 = 146 parameters: not a multiple of 2 * 16 (shards (0, 80), (80, 146))
    act = None if case == "nan_state" else "tanh"
    m = fnn.Sequential([L.Dense(13, activation=act, max_norm=0.8), L.Dense(3)], input_dim=7, seed=12, dtype=dtype)
    m.compile("mae" if SHARD_CASES[case][4] == "mae" else "cross_entropy", opt(), clip_norm=cn, clip_value=cv)
    return m


def shard_data(case, n):
    rng = np.random.default_rng(5)
    X = rng.standard_normal((n, 7)).astype(SHARD_CASES[case][1])
    if SHARD_CASES[case][4] == "mae":
        y = rng.standard_normal((n, 3)).astype(X.dtype)
        X[2 * 2 * B + 3] = 1e160 if X.dtype == np.float64 else 1e20     # global batch 2: exp_avg_sq overflows
        return X, y
    return X, rng.integers(0, 3, n)


def shard(out):
    """Sharded update (DataParallel(shard_update=True)) against the unsharded one and one process: parameters and
    optimizer state hashed on both ranks after every step (epochs of one global batch), then 2 epochs of 5 batches."""
    comm = MPI.COMM_WORLD
    size = comm.Get_size()
    res = {}
    for case in SHARD_CASES:
        runs = {}
        for mode in ("shard", "whole", "ref"):
            if mode == "ref" and comm.Get_rank() != 0:
                continue
            m = shard_model(case)
            kw = {} if mode == "ref" else {"distributed": dist.DataParallel(shard_update=mode == "shard")}
            bs = B * size if mode == "ref" else B
            if case == "nan_state":
                X, y = shard_data(case, 5 * B * size)
                try:
                    m.fit(X, y, batch_size=bs, epochs=1, shuffle=False, **kw)
                    what = batch = None
                except fnn.NonFiniteError as e:
                    what, batch = e.what, (e.batch, str(e))
                cb = None
            else:
                X, y = shard_data(case, B * size)
                cb = EpochHashCheck(comm) if mode != "ref" else None
                m.fit(X, y, batch_size=bs, epochs=6, callbacks=[cb] if cb else [], **kw)   # one step per epoch
                X, y = shard_data(case, 5 * B * size - 7)
                m.fit(X, y, batch_size=bs, epochs=2, callbacks=[cb] if cb else [], **kw)
                what = batch = None
            core = m.trainer.train_plan.core if m.trainer.train_plan is not None else None
            h = hashlib.sha256(m.parameters.tobytes())
            for k in sorted(m.optimizer.state):
                h.update(m.optimizer.state[k].tobytes())
            runs[mode] = {"params": m.parameters.astype(np.float64),
                          "state": {k: v.astype(np.float64) for k, v in m.optimizer.state.items()},
                          "hash": h.hexdigest(), "what": what, "batch": batch,
                          "steps": cb.steps if cb else 0, "mismatches": cb.mismatches if cb else 0,
                          "shards": [] if core is None else core.shards, "step_count": m.optimizer.step_count}
        every = comm.allgather({k: (v["hash"], v["what"], v["batch"], v["mismatches"], v["steps"], v["shards"])
                                for k, v in runs.items()})
        if comm.Get_rank() == 0:
            def diff(a, b, runs=runs):
                d = float(np.max(np.abs(runs[a]["params"] - runs[b]["params"])))
                for k in runs[a]["state"]:
                    d = max(d, float(np.max(np.abs(runs[a]["state"][k] - runs[b]["state"][k]))))
                return d
            res[case] = {"ranks": every, "shard_vs_whole": diff("shard", "whole"), "shard_vs_ref": diff("shard", "ref"),
                         "whole_vs_ref": diff("whole", "ref"), "ref_what": runs["ref"]["what"],
                         "ref_batch": runs["ref"]["batch"],
                         "step_counts": [runs[k]["step_count"] for k in ("shard", "whole", "ref")]}
    if comm.Get_rank() == 0:
        with open(os.path.join(out, "shard.json"), "w") as f:
            json.dump(res, f)


class LocalStats(fnn.callbacks.Callback):
    """Local BatchNorm statistics: after every batch, a copy of the BatchNorm's running statistics (this rank's
    own, before the epoch's end averages them); at the end of each epoch, the statistics now in the model against
    the mean over ranks of the last batch's copies, and whether the ranks' own copies differed."""

    def __init__(self, comm, bn):
        self.comm, self.bn, self.last, self.epochs = comm, bn, None, []

    def on_batch_end(self, batch, logs=None):
        self.last = {k: v.copy() for k, v in self.bn.buffers.items()}

    def on_epoch_end(self, epoch, logs=None):
        every = self.comm.allgather(self.last)
        diff = max(float(np.max(np.abs(self.bn.buffers[k] - np.mean([e[k] for e in every], axis=0))))
                   for k in self.last)
        spread = max(float(np.max(np.abs(every[0][k] - every[1][k]))) for k in self.last)
        self.epochs.append({"vs_mean": diff, "ranks_differed": spread > 1e-6})


def localbn(out):
    """BatchNorm with local statistics (DataParallel's default) and ModelCheckpoint: parameters and optimizer
    state bitwise equal on both ranks after every step; at each epoch's end the running statistics are the mean
    of the ranks' own; ModelCheckpoint (writes_files) saves on rank 0 only, after that average, so every rank
    loads the model it ends with."""
    comm = MPI.COMM_WORLD
    X, y = data(seed=6)
    m = fnn.Sequential([L.Dense(16, use_bias=False), L.BatchNorm(momentum=0.3), L.ReLU(), L.Dense(3)], input_dim=6,
                       seed=12, dtype="float64")
    m.compile("cross_entropy", fnn.optim.Adam(1e-2))
    bn = m.layers[1]
    hc, ls = HashCheck(comm), LocalStats(comm, bn)
    # each rank names its own files: only rank 0's may appear
    ck = fnn.callbacks.ModelCheckpoint(os.path.join(out, f"ck-r{comm.Get_rank()}-{{epoch}}.fnn"), save_best_only=False)
    dp = dist.DataParallel()
    assert not dp.sync_batchnorm
    m.fit(X, y, batch_size=B, epochs=3, callbacks=[hc, ls, ck], distributed=dp)
    dp.barrier()
    saved = sorted(f for f in os.listdir(out) if f.startswith("ck-"))
    last = fnn.load(os.path.join(out, saved[-1]))
    Xt = data(seed=7, n=31)[0]
    res = {"steps": hc.steps, "mismatches": hc.mismatches, "epochs": ls.epochs, "saved": saved,
           "checkpoint_predicts_the_same": bool(np.array_equal(last.predict(Xt), m.predict(Xt))),
           "checkpoint_stats_equal": all(np.array_equal(last.layers[1].buffers[k], bn.buffers[k])
                                         for k in bn.buffers)}
    with open(os.path.join(out, f"localbn{comm.Get_rank()}.json"), "w") as f:
        json.dump(res, f)


if __name__ == "__main__":
    {"equiv": equiv, "kill": kill, "shard": shard, "localbn": localbn}[sys.argv[1]](*sys.argv[2:])
