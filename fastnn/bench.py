"""Side-by-side benchmark: fastnn against PyTorch eager (when installed), JAX (W1 and W3, when installed: a jit'd
step per batch, "jax", and the whole epoch under ``jax.lax.scan``, "jax-scan") and a plain numpy implementation.

Every peer runs the same workload: the same layer sizes, the same Glorot-uniform initial weights (zero
biases), the same synthetic N(0, 1) data, the same optimizer and hyperparameters, the same batch size and
per-epoch shuffling.  The peers are interleaved in one process (repeat r runs fastnn, torch, numpy, then
repeat r + 1 ...), so that the noise of a shared machine hits all of them alike; the table reports the
median over the repeats, the min-max, and the ratios of the medians.  The "BLAS limit" of a training
workload is the time of its GEMMs alone (forward X.W, backward X^T.dZ and dZ.W^T, at the workload's
shapes) through the BLAS fastnn uses: no implementation that calls that BLAS can be faster.

Workloads (the issue's table; ``--full`` runs the full units, the default runs shorter slices of them and
reports rates, which are what the targets are about):

| id | network | loss / optimizer | batch | unit |
|---|---|---|---|---|
| W1 | 784-256-128-10 ReLU | softmax CE / Adam 1e-3 | 64 | epoch of 60,000 samples |
| W2 | 1024-2048-2048-1000 ReLU | softmax CE / SGD 1e-2 momentum 0.9 | 256 | 40 steps |
| W3 | 32-64-64-1 tanh | MSE / SGD 1e-2 | 32 | epoch of 100,000 samples |
| W4 | the W1 network | prediction | 1 and 1024 | one predict call |
| mnist | W1's network and training, 20 epochs on 4,000 MNIST-sized samples | | 64 | seconds |
| digits | ``python -m fastnn demo``'s training (20 epochs, with validation) | | 32 | seconds |

    python -m fastnn bench [--workloads W1,W3] [--repeats 5] [--threads 2] [--full] [--json out.json]
                           [--png out.png] [--rss]

``--workloads cnn`` (or any of C1, C2, C3, C4, Clayers, Cinfer, Cfirst) runs the convolutional workloads of
``fastnn/bench_cnn.py`` (fastnn against PyTorch eager in NCHW and channels_last), in the same table.
``--workloads rnn`` (or any of R1, R2, R3, R4) runs the recurrent workloads of ``fastnn/bench_rnn.py``.
Without ``--workloads`` only the MLP workloads above run.

The header names the CPU model, the ISA path of fastnn's runtime dispatch and OpenBLAS's core type
(``machine_info``).

``--rss`` also measures the peak RSS of W1 training (one epoch, the same data sizes) for each peer, each in a
fresh subprocess (``ru_maxrss`` after the bare imports, after making the data, after training); alone (without
``--workloads``) it runs only that measurement.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:                      # matplotlib stays optional: only plot() imports it
    from matplotlib.figure import Figure

# Pause before every timed segment: each peer's thread pool (libgomp's workers, numpy's and torch's BLAS
# threads) keeps spinning on the cores for a while after its work, and would be timed as the next peer's.
SETTLE_S = 0.2


def _settle():
    time.sleep(SETTLE_S)

WORKLOADS = ("W1", "W2", "W3", "W4", "mnist", "digits")
CNN_WORKLOADS = ("C1", "C2", "C3", "C4", "Clayers", "Cinfer", "Cfirst")   # fastnn/bench_cnn.py; "cnn": all of them
# groups of workloads in modules of their own (each has WORKLOADS and run_workload(wid, repeats, full, log) ->
# rows of run()'s format); --workloads takes a group's name for all its workloads, the default runs only WORKLOADS
# (the MLPs)
GROUPS = {"rnn": "fastnn.bench_rnn"}


def _group(name):
    import importlib
    return importlib.import_module(GROUPS[name])


def _group_of(wid):
    """The module of the group that holds workload `wid`, or None."""
    for name in GROUPS:
        mod = _group(name)
        if wid in mod.WORKLOADS:
            return mod
    return None


def expand_workloads(names):
    """Workload ids from a list of ids and group names (an empty list: the MLP WORKLOADS); "cnn" is the
    CNN_WORKLOADS; ValueError for an
    unknown name."""
    if not names:
        names = list(WORKLOADS)
    out = []
    for w in names:
        if w == "cnn":
            out.extend(CNN_WORKLOADS)
        elif w in GROUPS:
            out.extend(_group(w).WORKLOADS)
        elif w in WORKLOADS or w in CNN_WORKLOADS or _group_of(w) is not None:
            out.append(w)
        else:
            known = (list(WORKLOADS) + list(CNN_WORKLOADS) + [x for g in GROUPS for x in _group(g).WORKLOADS]
                     + ["cnn"] + list(GROUPS))
            raise ValueError(f"bench: unknown workload {w!r}; known: {', '.join(known)}")
    return out


# ====================================================================== shared definitions
def glorot(rng, n_in, n_out):
    lim = np.sqrt(6.0 / (n_in + n_out))
    return rng.uniform(-lim, lim, (n_in, n_out)).astype(np.float32)


def _spec(wid, full):
    """sizes, activation, loss, optimizer (name, kwargs), batch, number of training samples (or steps)."""
    if wid in ("W1", "W4", "mnist"):
        s = dict(sizes=(784, 256, 128, 10), act="relu", loss="cross_entropy", opt=("adam", {"lr": 1e-3}), batch=64,
                 n=60000 if full else 6400)
        if wid == "mnist":
            s.update(n=4000, epochs=20 if full else 4)     # seconds are reported for 20 epochs
        return s
    if wid == "W2":
        return dict(sizes=(1024, 2048, 2048, 1000), act="relu", loss="cross_entropy",
                    opt=("sgd", {"lr": 1e-2, "momentum": 0.9}), batch=256, n=256 * (40 if full else 3))
    if wid == "W3":
        return dict(sizes=(32, 64, 64, 1), act="tanh", loss="mse", opt=("sgd", {"lr": 1e-2}), batch=32,
                    n=100000 if full else 10000)
    if wid == "digits":
        return dict(sizes=(64, 128, 64, 10), act=("relu", "tanh"), loss="cross_entropy",
                    opt=("adam", {"lr": 2e-3}), batch=32, epochs=20)
    raise ValueError(wid)


def _acts(spec):
    a = spec["act"]
    n_hidden = len(spec["sizes"]) - 2
    return list(a) if isinstance(a, tuple) else [a] * n_hidden


def make_data(spec, seed=0):
    rng = np.random.default_rng(seed)
    sizes = spec["sizes"]
    weights = [glorot(rng, a, b) for a, b in zip(sizes[:-1], sizes[1:])]
    X = rng.standard_normal((spec["n"], sizes[0]), dtype=np.float32)
    if spec["loss"] == "cross_entropy":
        y = rng.integers(0, sizes[-1], spec["n"]).astype(np.int64)
    else:
        y = rng.standard_normal((spec["n"], sizes[-1]), dtype=np.float32)
    return weights, X, y


# ====================================================================== fastnn
def fastnn_model(spec, weights):
    import fastnn as fnn
    acts = _acts(spec) + [None]
    layers = [fnn.layers.Dense(W.shape[1], activation=a) for W, a in zip(weights, acts)]
    model = fnn.Sequential(layers, input_dim=weights[0].shape[0], seed=0)
    for layer, W in zip(model.layers, weights):
        layer.weight = W
        layer.bias = np.zeros(W.shape[1], np.float32)
    name, kw = spec["opt"]
    opt = fnn.optim.Adam(**kw) if name == "adam" else fnn.optim.SGD(**kw)
    model.compile(spec["loss"], opt)
    return model


def fastnn_train(model, X, y, spec, epochs=1):
    t0 = time.perf_counter()
    model.fit(X, y, epochs=epochs, batch_size=spec["batch"])
    return time.perf_counter() - t0


# ====================================================================== torch (optional)
def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def torch_model(spec, weights, fused=False):
    torch = _torch()
    mods = []
    acts = _acts(spec) + [None]
    for W, a in zip(weights, acts):
        lin = torch.nn.Linear(W.shape[0], W.shape[1])
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(W.T)))
            lin.bias.zero_()
        mods.append(lin)
        if a is not None:
            mods.append(torch.nn.ReLU() if a == "relu" else torch.nn.Tanh())
    net = torch.nn.Sequential(*mods)
    name, kw = spec["opt"]
    if name == "adam":
        opt = (torch.optim.Adam(net.parameters(), fused=True, **kw) if fused
               else torch.optim.Adam(net.parameters(), **kw))
    else:
        opt = torch.optim.SGD(net.parameters(), **kw)
    lossf = torch.nn.CrossEntropyLoss() if spec["loss"] == "cross_entropy" else torch.nn.MSELoss()
    return net, opt, lossf


def torch_train(state, X, y, spec, epochs=1, rng=None):
    torch = _torch()
    net, opt, lossf = state
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    bs, n = spec["batch"], X.shape[0]
    rng = rng or np.random.default_rng(0)
    t0 = time.perf_counter()
    for _ in range(epochs):
        perm = torch.from_numpy(rng.permutation(n))
        for s in range(0, n, bs):
            idx = perm[s:s + bs]
            xb, yb = Xt[idx], yt[idx]
            opt.zero_grad(set_to_none=True)
            loss = lossf(net(xb), yb)
            loss.backward()
            opt.step()
    return time.perf_counter() - t0


# ====================================================================== plain numpy
class NumpyMLP:
    """The same MLP, forward/backward/update in plain numpy (the baseline a user writes by hand)."""

    def __init__(self, spec, weights):
        self.W = [W.copy() for W in weights]
        self.b = [np.zeros(W.shape[1], np.float32) for W in weights]
        self.acts = _acts(spec) + [None]
        self.spec = spec
        name, kw = spec["opt"]
        self.opt, self.kw, self.t = name, kw, 0
        params = self.W + self.b
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]

    def forward(self, x):
        hs = [x]
        for W, b, a in zip(self.W, self.b, self.acts):
            z = hs[-1] @ W
            z += b
            if a == "relu":
                np.maximum(z, 0, out=z)
            elif a == "tanh":
                np.tanh(z, out=z)
            hs.append(z)
        return hs

    def step(self, x, y):
        hs = self.forward(x)
        out, n = hs[-1], x.shape[0]
        if self.spec["loss"] == "cross_entropy":
            e = np.exp(out - out.max(axis=1, keepdims=True))
            e /= e.sum(axis=1, keepdims=True)
            e[np.arange(n), y] -= 1
            g = e / n
        else:
            g = (out - y) * (2.0 / out.size)
        gW, gb = [None] * len(self.W), [None] * len(self.W)
        for i in range(len(self.W) - 1, -1, -1):
            gW[i] = hs[i].T @ g
            gb[i] = g.sum(axis=0)
            if i:
                g = g @ self.W[i].T
                a = self.acts[i - 1]
                if a == "relu":
                    g *= hs[i] > 0
                elif a == "tanh":
                    g *= 1 - hs[i] * hs[i]
        self.t += 1
        lr = self.kw["lr"]
        for j, (p, gp) in enumerate(zip(self.W + self.b, gW + gb)):
            if self.opt == "adam":
                m, v = self.m[j], self.v[j]
                m *= 0.9
                m += 0.1 * gp
                v *= 0.999
                v += 0.001 * gp * gp
                bc1, bc2 = 1 - 0.9 ** self.t, 1 - 0.999 ** self.t
                p -= (lr / bc1) * m / (np.sqrt(v / bc2) + 1e-8)
            elif self.kw.get("momentum"):
                buf = self.m[j]
                if self.t == 1:
                    buf[...] = gp
                else:
                    buf *= self.kw["momentum"]
                    buf += gp
                p -= lr * buf
            else:
                p -= lr * gp

    def predict(self, x):
        return self.forward(x)[-1]


def numpy_train(net, X, y, spec, epochs=1, rng=None):
    bs, n = spec["batch"], X.shape[0]
    rng = rng or np.random.default_rng(0)
    t0 = time.perf_counter()
    for _ in range(epochs):
        perm = rng.permutation(n)
        for s in range(0, n, bs):
            idx = perm[s:s + bs]
            net.step(X[idx], y[idx])
    return time.perf_counter() - t0


# ====================================================================== JAX (optional)
# The JAX peers run the MLP workloads JAX_WORKLOADS: "jax" calls a jax.jit-compiled train step once per batch from
# Python (as the torch peer calls its eager step), "jax-scan" compiles the whole epoch, the batches run by
# jax.lax.scan.  Same weights, data, loss, optimizer and hyperparameters, and the same per-epoch permutation
# drawing as the torch and numpy peers.  jax is imported only here, when a run asks for these peers.
JAX_PEERS = ("jax", "jax-scan")
JAX_WORKLOADS = ("W1", "W3")
_JAX_STATE: dict = {}         # "module": the imported jax (None when the import failed), "note": how it runs


def _jax(threads: int = 1, log=None):
    """jax, imported for the CPU and set to `threads` threads where it can be, or None (with a note through
    `log`, once) when ``import jax`` fails.

    jax and XLA read their settings once, when jax is imported and its CPU client made, so they are set here only
    when this process has not imported jax yet:
    - ``JAX_PLATFORMS=cpu``: the CPU backend only (no probing for accelerators); the peers also place every array
      on ``jax.devices("cpu")[0]``, which holds where jax was imported before.
    - one thread: XLA (jaxlib 0.10) has no flag for it.  ``XLA_FLAGS=--xla_cpu_multi_thread_eigen=false`` (set)
      keeps Eigen's own matmuls on the calling thread, but XLA still runs its work on its intra-op pool: W1 and W3
      used 1.6-1.9 CPU seconds per wall second with the flag on 2 idle cores.  (The often-quoted companion
      ``intra_op_parallelism_threads=1``, jax issue #743, is no XLA flag: written without dashes XLA's parser
      ignores it, with dashes jaxlib aborts with "Unknown flag in XLA_FLAGS".)  The pool is sized from the CPU
      affinity of the thread that makes the client, and its threads inherit that affinity; so the client is made
      while this thread is pinned to one CPU (``_JAX_STATE["cpu"]``), and the peers pin the calling thread to the
      same CPU while they train (``JaxMLP.train``): every thread XLA runs on shares one core, 1.0 CPU seconds
      per wall second.  ``jax_cpu_enable_async_dispatch`` is off as well, so that the "jax" peer's Python loop
      does not overlap the step it dispatched.
    - more threads: XLA's defaults (its pool takes every core the process may use: no setting picks a count)."""
    if "module" in _JAX_STATE:
        return _JAX_STATE["module"]
    fresh = "jax" not in sys.modules
    pin = None
    if fresh:
        os.environ["JAX_PLATFORMS"] = "cpu"
        flags = os.environ.get("XLA_FLAGS", "")
        if threads == 1 and "xla_cpu_multi_thread_eigen" not in flags:
            os.environ["XLA_FLAGS"] = (flags + " --xla_cpu_multi_thread_eigen=false").strip()
        if threads == 1 and hasattr(os, "sched_setaffinity"):
            pin = min(os.sched_getaffinity(0))
        note = (f"jax at 1 thread (XLA's threads pinned to CPU {pin}, XLA_FLAGS={os.environ['XLA_FLAGS']}, "
                f"synchronous dispatch)" if threads == 1 and pin is not None else
                "jax at 1 thread: no CPU affinity on this system, XLA may use more threads" if threads == 1 else
                f"jax with XLA's default threads (its pool takes all {_ncpu()} CPUs; no setting picks a count)")
    else:
        note = f"jax was imported before the benchmark: its thread settings are the importer's (XLA_FLAGS=" \
               f"{os.environ.get('XLA_FLAGS', '')!r})"
    module: Any = None
    with _pinned(pin):
        try:
            import jax
            if fresh and threads == 1:
                jax.config.update("jax_cpu_enable_async_dispatch", False)
            jax.devices("cpu")          # makes the CPU client and its thread pool
            module = jax
        except Exception as e:          # not installed, or a jaxlib that does not load: the peers are skipped
            note = f"jax peers skipped: import jax failed ({type(e).__name__}: {e}); pip install jax"
    _JAX_STATE.update(module=module, note=note, cpu=pin if module is not None else None)
    if log is not None:
        log(f"  {note}")
    return module


class _pinned:
    """Context: the calling thread runs on CPU `cpu` only (nothing when None); its affinity is restored after."""

    def __init__(self, cpu):
        self.cpu, self.saved = cpu, None

    def __enter__(self):
        if self.cpu is not None:
            self.saved = os.sched_getaffinity(0)
            os.sched_setaffinity(0, {self.cpu})

    def __exit__(self, *exc):
        if self.saved is not None:
            os.sched_setaffinity(0, self.saved)


def _jax_version():
    """jax's version when this process imported it (the JAX peers ran), else None."""
    jax = _JAX_STATE.get("module")
    return getattr(jax, "__version__", None)


class JaxMLP:
    """The same MLP trained in JAX: forward and loss in jax.numpy, gradients by ``jax.grad``, the optimizer's
    update written out by hand (no optax).  ``scan=False``: one jit-compiled step per batch, called from Python;
    ``scan=True``: one jit-compiled epoch, the full batches run by ``jax.lax.scan`` and a last partial batch (n not
    a multiple of the batch size) by one more step of its own size, inside the same compiled function: every
    peer trains on the same batches, the last one smaller.

    Adam is ``torch.optim.Adam``'s definition (as fastnn's): m <- m + (1 - b1)(g - m), v <- b2 v + (1 - b2) g²,
    p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps), the step's two bias-corrected factors
    computed in float64 on the host and rounded to float32 as torch does with its Python scalars.  SGD:
    p <- p - lr g.  Parameters are the pairs (W (n_in, n_out), b) of fastnn's layout."""

    def __init__(self, spec: dict, weights: list, scan: bool = False) -> None:
        jax = _jax()
        if jax is None:
            raise ImportError("JaxMLP needs jax (pip install jax)")
        name, kw = spec["opt"]
        if name not in ("adam", "sgd") or kw.get("momentum"):
            raise ValueError(f"JaxMLP: optimizer {name} {kw} is not written for the JAX peer (Adam, plain SGD)")
        self.spec, self.scan, self.adam, self.kw, self.t = spec, scan, name == "adam", kw, 0
        self.cpu = jax.devices("cpu")[0]
        self.params = jax.device_put([(W.copy(), np.zeros(W.shape[1], np.float32)) for W in weights], self.cpu)
        self.m = jax.tree.map(jax.numpy.zeros_like, self.params) if self.adam else ()
        self.v = jax.tree.map(jax.numpy.zeros_like, self.params) if self.adam else ()
        self._data: tuple | None = None
        self._compile(jax)

    def _compile(self, jax):
        jnp = jax.numpy
        acts = _acts(self.spec) + [None]
        ce = self.spec["loss"] == "cross_entropy"
        adam = self.adam
        b1, b2, eps = 0.9, 0.999, 1e-8

        def loss(params, x, y):
            for (W, b), a in zip(params, acts):
                x = x @ W + b
                if a == "relu":
                    x = jax.nn.relu(x)          # gradient 0 at 0, as torch's and fastnn's (jnp.maximum's is 0.5)
                elif a == "tanh":
                    x = jnp.tanh(x)
            if ce:
                return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(x), y[:, None], axis=1))
            return jnp.mean((x - y) ** 2)

        def step(params, m, v, x, y, step_size, bc2_sqrt):
            g = jax.grad(loss)(params, x, y)
            if not adam:
                return jax.tree.map(lambda p, gp: p - step_size * gp, params, g), m, v
            m = jax.tree.map(lambda mp, gp: mp + (1 - b1) * (gp - mp), m, g)
            v = jax.tree.map(lambda vp, gp: vp * b2 + (1 - b2) * gp * gp, v, g)
            params = jax.tree.map(lambda p, mp, vp: p - step_size * (mp / (jnp.sqrt(vp) / bc2_sqrt + eps)),
                                  params, m, v)
            return params, m, v

        def batch_step(params, m, v, X, y, idx, step_size, bc2_sqrt):
            return step(params, m, v, X[idx], y[idx], step_size, bc2_sqrt)

        def epoch(params, m, v, X, y, idx_full, ss_full, bc_full, idx_rest, ss_rest, bc_rest):
            def body(carry, xs):
                idx, ss, bc = xs
                return step(*carry, X[idx], y[idx], ss, bc), None
            (params, m, v), _ = jax.lax.scan(body, (params, m, v), (idx_full, ss_full, bc_full))
            if idx_rest.shape[0]:           # static: the last partial batch, one step of its own size
                params, m, v = step(params, m, v, X[idx_rest], y[idx_rest], ss_rest, bc_rest)
            return params, m, v

        # the parameters and the optimizer's moments are updated in place (donated buffers)
        self._step = jax.jit(batch_step, donate_argnums=(0, 1, 2))
        self._epoch = jax.jit(epoch, donate_argnums=(0, 1, 2))

    def _factors(self, n_steps):
        """The per-step scalars of the next n_steps steps: Adam's lr / (1 - b1^t) and sqrt(1 - b2^t) (float64,
        rounded to float32), SGD's lr and 1."""
        lr = self.kw["lr"]
        t = np.arange(self.t + 1, self.t + n_steps + 1, dtype=np.float64)
        self.t += n_steps
        if not self.adam:
            return np.full(n_steps, lr, np.float32), np.ones(n_steps, np.float32)
        return (lr / (1 - 0.9 ** t)).astype(np.float32), np.sqrt(1 - 0.999 ** t).astype(np.float32)

    def device_data(self, X: np.ndarray, y: np.ndarray) -> tuple:
        """X and y on the CPU device (kept for the next call with the same arrays: the torch peer's from_numpy,
        outside the timed part too)."""
        if self._data is None or self._data[0] is not X or self._data[1] is not y:
            jax = _jax()
            yd = y.astype(np.int32) if self.spec["loss"] == "cross_entropy" else y
            self._data = (X, y, jax.device_put(X, self.cpu), jax.device_put(yd, self.cpu))
        return self._data[2], self._data[3]

    def train(self, X: np.ndarray, y: np.ndarray, epochs: int = 1, rng: np.random.Generator | None = None
              ) -> float:
        """Train `epochs` epochs on (X, y), each on a fresh permutation from `rng` (``np.random.default_rng(0)``
        when None, as the other peers); returns the seconds (the device transfer of X and y excluded)."""
        Xd, yd = self.device_data(X, y)
        bs, n = self.spec["batch"], X.shape[0]
        rng = rng or np.random.default_rng(0)
        with _pinned(_JAX_STATE.get("cpu")):            # one thread: on the CPU of XLA's pool (see _jax)
            return self._train(Xd, yd, n, bs, epochs, rng)

    def _train(self, Xd, yd, n, bs, epochs, rng):
        n_full, rest = divmod(n, bs)
        n_steps = n_full + (1 if rest else 0)
        t0 = time.perf_counter()
        params, m, v = self.params, self.m, self.v
        for _ in range(epochs):
            perm = rng.permutation(n).astype(np.int32)
            ss, bc = self._factors(n_steps)
            if self.scan:
                params, m, v = self._epoch(params, m, v, Xd, yd, perm[:n_full * bs].reshape(n_full, bs),
                                           ss[:n_full], bc[:n_full], perm[n_full * bs:], ss[-1], bc[-1])
            else:
                for i, s in enumerate(range(0, n, bs)):
                    params, m, v = self._step(params, m, v, Xd, yd, perm[s:s + bs], ss[i], bc[i])
        _jax().block_until_ready(params)
        self.params, self.m, self.v = params, m, v
        return time.perf_counter() - t0

    def weights(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """The parameters as numpy arrays: [(W, b), ...]."""
        return [(np.asarray(W), np.asarray(b)) for W, b in self.params]


def jax_train(net: JaxMLP, X: np.ndarray, y: np.ndarray, spec: dict, epochs: int = 1,
              rng: np.random.Generator | None = None) -> float:
    """The JAX peers' entry of ``run_training`` (``JaxMLP.train``)."""
    return net.train(X, y, epochs, rng)


# ====================================================================== BLAS limit
def blas_limit_time(spec, n_samples, reps=1):
    """Seconds of the GEMMs alone (forward, dW, dX except for the first layer) for n_samples of training."""
    from fastnn._core._threads import gemm
    sizes, bs = spec["sizes"], spec["batch"]
    rng = np.random.default_rng(1)
    acts = [rng.standard_normal((bs, d), dtype=np.float32) for d in sizes]
    grads = [np.empty_like(a) for a in acts]
    Ws = [rng.standard_normal((a, b), dtype=np.float32) for a, b in zip(sizes[:-1], sizes[1:])]
    dWs = [np.empty_like(W) for W in Ws]
    steps = -(-n_samples // bs)
    t0 = time.perf_counter()
    for _ in range(steps):
        for i, W in enumerate(Ws):
            gemm(False, False, 1.0, acts[i], W, 0.0, acts[i + 1])
        for i in range(len(Ws) - 1, -1, -1):
            gemm(True, False, 1.0, acts[i], acts[i + 1], 0.0, dWs[i])
            if i:
                gemm(False, True, 1.0, acts[i + 1], Ws[i], 0.0, grads[i])
    return time.perf_counter() - t0


# ====================================================================== runs
def _median(v):
    return statistics.median(v) if v else float("nan")


def _set_threads(n):
    import fastnn as fnn
    fnn.set_num_threads(n)
    torch = _torch()
    if torch is not None:
        torch.set_num_threads(n)
    try:
        from threadpoolctl import threadpool_limits
        # numpy's own OpenBLAS (the plain numpy peer); fastnn's BLAS follows fnn.set_num_threads
        threadpool_limits(n, user_api="blas")
        fnn.set_num_threads(n)
    except ImportError:
        pass


def training_peers(wid: str, spec: dict, weights: list, threads: int = 1, log: Any = print) -> dict:
    """The peers of a training workload: name -> (state, train function); torch's when torch is installed, the JAX
    peers (JAX_PEERS) for JAX_WORKLOADS when jax imports (skipped with a note through `log` otherwise)."""
    peers: dict[str, tuple[Any, Any]] = {"fastnn": (fastnn_model(spec, weights), fastnn_train)}
    if _torch() is not None:
        peers["torch"] = (torch_model(spec, weights), torch_train)
        if spec["opt"][0] == "adam":
            peers["torch fused Adam"] = (torch_model(spec, weights, fused=True), torch_train)
    if wid in JAX_WORKLOADS and _jax(threads, log) is not None:
        peers["jax"] = (JaxMLP(spec, weights), jax_train)
        peers["jax-scan"] = (JaxMLP(spec, weights, scan=True), jax_train)
    peers["numpy"] = (NumpyMLP(spec, weights), numpy_train)
    peers["BLAS limit"] = (None, None)
    return peers


def run_training(wid, repeats, full, log, threads=1):
    """Samples per second of every peer (lists over repeats) for a training workload."""
    spec = _spec(wid, full)
    weights, X, y = make_data(spec)
    epochs = spec.get("epochs", 1)
    peers = training_peers(wid, spec, weights, threads, log)
    # warm-up (one short pass each: buffers, caches, torch's lazy init); the JAX peers compile for the shapes of
    # the data, so theirs is one epoch of the full data (compilation is not timed, as torch's lazy init is not)
    nw = min(X.shape[0], 20 * spec["batch"])
    for name, (state, fn) in peers.items():
        if name in JAX_PEERS:
            log(f"  {wid} {name}: compiled and warmed up in {fn(state, X, y, spec):.2f} s")
        elif fn is not None:
            fn(state, X[:nw], y[:nw], spec)
    blas_limit_time(spec, nw)
    samples = {k: [] for k in peers}
    for r in range(repeats):
        for name, (state, fn) in peers.items():
            _settle()
            if fn is None:
                t = blas_limit_time(spec, X.shape[0] * epochs)
            else:
                t = fn(state, X, y, spec, epochs)
            samples[name].append(X.shape[0] * epochs / t)
        log(f"  {wid} repeat {r + 1}/{repeats}: " + ", ".join(f"{k} {v[-1]:,.0f}/s" for k, v in samples.items()))
    return spec, samples


def run_predict(repeats, log):
    """W4: microseconds per single-sample predict, samples/s at batch 1024."""
    spec = _spec("W4", False)
    weights, X, _ = make_data(dict(spec, n=1024))
    x1 = X[:1].copy()
    model = fastnn_model(spec, weights)
    npnet = NumpyMLP(spec, weights)
    torch = _torch()
    peers = {"fastnn": lambda x: model.predict(x), "numpy": npnet.predict}
    if torch is not None:
        net = torch_model(spec, weights)[0].eval()

        def tpred(x):
            with torch.no_grad():
                return net(torch.from_numpy(x)).numpy()
        peers = {"fastnn": peers["fastnn"], "torch": tpred, "numpy": npnet.predict}
    single = {k: [] for k in peers}
    batch = {k: [] for k in peers}
    for f in peers.values():
        for _ in range(200):
            f(x1)
        f(X)
    n_single, n_batch = 2000, 20
    for r in range(repeats):
        for name, f in peers.items():
            _settle()
            t0 = time.perf_counter()
            for _ in range(n_single):
                f(x1)
            single[name].append((time.perf_counter() - t0) / n_single * 1e6)
            _settle()
            t0 = time.perf_counter()
            for _ in range(n_batch):
                f(X)
            batch[name].append(n_batch * X.shape[0] / (time.perf_counter() - t0))
        log(f"  W4 repeat {r + 1}/{repeats}: " + ", ".join(f"{k} {single[k][-1]:.1f} us" for k in peers))
    return single, batch


def run_digits(repeats, log):
    """The demo's training: seconds for 20 epochs (with validation), fastnn only (numpy/torch: same network)."""
    from fastnn.datasets import load_digits, stratified_split
    X, y = load_digits()
    Xtr, ytr, _, _ = stratified_split(X, y, test_fraction=0.2, seed=0)
    Xtr, ytr, Xv, yv = stratified_split(Xtr, ytr, test_fraction=0.125, seed=0)
    spec = _spec("digits", False)
    times = {"fastnn": []}
    torch = _torch()
    if torch is not None:
        times["torch"] = []
    times["numpy"] = []
    rng = np.random.default_rng(0)
    weights = [glorot(rng, a, b) for a, b in zip(spec["sizes"][:-1], spec["sizes"][1:])]
    for r in range(repeats + 1):
        for name in times:
            _settle()
            if name == "fastnn":
                m = fastnn_model(spec, weights)
                t0 = time.perf_counter()
                m.fit(Xtr, ytr, epochs=20, batch_size=32, validation_data=(Xv, yv))
                t = time.perf_counter() - t0
            elif name == "torch":
                st = torch_model(spec, weights)
                t = torch_train(st, Xtr, ytr.astype(np.int64), spec, 20)
            else:
                t = numpy_train(NumpyMLP(spec, weights), Xtr, ytr, spec, 20)
            if r:                       # the first round is a warm-up
                times[name].append(t)
        if r:
            log(f"  digits repeat {r}/{repeats}: " + ", ".join(f"{k} {v[-1]:.3f} s" for k, v in times.items()))
    return times


TARGETS = {"W1": "fastnn >= 2.2x torch, >= 80% of BLAS limit", "W2": ">= 1.0x torch, >= 95% of BLAS limit",
           "W3": ">= 15x torch (~1.7M samples/s)", "W4 single": "<= 12 us",
           "W4 batch 1024": ">= 1.0x torch", "mnist": "<= 1.1 s", "digits": "<= 0.05 s"}


def _fmt(v, unit):
    if unit in ("samples/s", "sequences/s"):
        return f"{v:,.0f}"
    if unit == "us":
        return f"{v:.1f}"
    if unit in ("GFLOP/s", "x"):
        return f"{v:.2f}"
    return f"{v:.3f}"


def run(workloads=WORKLOADS, repeats=3, threads=2, full=False, log=print):
    """Run the benchmark; returns a dict of rows (see ``format_table``)."""
    import fastnn as fnn
    _set_threads(threads)
    rows = []

    def add(wid, unit, samples, higher_better=True, target=None, note=""):
        row = {"workload": wid, "unit": unit, "higher_is_better": higher_better,
               "median": {k: _median(v) for k, v in samples.items()},
               "min": {k: min(v) for k, v in samples.items()}, "max": {k: max(v) for k, v in samples.items()},
               "samples": samples, "target": TARGETS.get(wid, "") if target is None else target, "note": note}
        rows.append(row)

    cnn = [w for w in workloads if w in CNN_WORKLOADS]
    if cnn:
        from fastnn import bench_cnn
        bench_cnn.run(cnn, repeats, full, log, add)
    for wid in workloads:
        if wid in CNN_WORKLOADS:
            continue
        if wid in ("W1", "W2", "W3"):
            _, s = run_training(wid, repeats, full, log, threads)
            add(wid, "samples/s", s)
        elif wid == "W4":
            single, batch = run_predict(repeats, log)
            add("W4 single", "us", single, higher_better=False)
            add("W4 batch 1024", "samples/s", batch)
        elif wid == "mnist":
            spec = _spec("mnist", False)
            _, s = run_training("mnist", max(1, repeats // 2), full, log)
            secs = {k: [spec["n"] * 20 / x for x in v] for k, v in s.items()}     # 20 epochs
            add("mnist", "s", secs, higher_better=False)
        elif wid == "digits":
            add("digits", "s", run_digits(max(1, repeats // 2), log), higher_better=False)
        elif _group_of(wid) is not None:
            rows.extend(_group_of(wid).run_workload(wid, repeats, full, log))
        else:
            raise ValueError(f"bench: unknown workload {wid!r}; known: {', '.join(WORKLOADS + CNN_WORKLOADS)}")
    import fastnn._core._threads as th
    info = machine_info()
    return {"rows": rows, "threads": threads, "repeats": repeats, "full": full,
            "machine": machine_text(info), "cpu": info,
            "python": sys.version.split()[0], "numpy": np.__version__, "fastnn": fnn.__version__,
            "torch": getattr(_torch(), "__version__", None), "jax": _jax_version(), "blas": th.blas_config(),
            "date": time.strftime("%Y-%m-%d %H:%M")}


def _ncpu():
    import os
    return os.cpu_count()


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's model name: the first "model name" line of /proc/cpuinfo (Linux), else ``platform.processor()``,
    else ``platform.platform()``."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip() == "model name" and value.strip():
                    return " ".join(value.split())
    except OSError:
        pass
    return platform.processor() or platform.platform()


def machine_info() -> dict:
    """What the numbers depend on: the architecture, the CPU count and model, the ISA path of fastnn's runtime
    dispatch (``fastnn._core._threads.isa_path``) and the kernel family OpenBLAS chose (its core type)."""
    import fastnn._core._threads as th
    return {"arch": platform.machine(), "ncpu": _ncpu(), "cpu": cpu_model(), "isa": th.isa_path(),
            "blas_core": th.blas_corename()}


def machine_text(info: dict) -> str:
    """``machine_info``'s dict in one line, e.g. "x86_64, 2 CPUs, AMD EPYC 7B13, fastnn ISA path avx2+fma, OpenBLAS
    core Haswell" (the "machine" entry of ``run``'s result, in the table's header and the chart's subtitle)."""
    return (f"{info['arch']}, {info['ncpu']} CPUs, {info['cpu']}, fastnn ISA path {info['isa']}, "
            f"OpenBLAS core {info['blas_core']}")


def format_table(result):
    """Markdown table: medians (min-max) per peer and the ratios fastnn / peer (speed ratios, > 1 is faster)."""
    rows = result["rows"]
    peers = []
    for r in rows:
        for k in r["median"]:
            if k not in peers:
                peers.append(k)
    head = ["workload", "unit"] + peers + [f"fastnn vs {p}" for p in peers if p != "fastnn"] + ["target"]
    lines = [f"fastnn bench, {result['date']}, {threads_text(result['threads'])}, {result['repeats']} repeats "
             f"(medians, min-max), {result['machine']}; numpy {result['numpy']}, torch {result['torch']}"
             + (f", jax {result['jax']}" if result.get("jax") else ""),
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        unit, med = r["unit"], r["median"]
        cells = [r["workload"], unit]
        for p in peers:
            if p in med:
                cells.append(f"{_fmt(med[p], unit)} ({_fmt(r['min'][p], unit)}-{_fmt(r['max'][p], unit)})")
            else:
                cells.append("")
        for p in peers:
            if p == "fastnn":
                continue
            if p in med and "fastnn" in med:
                ratio = med["fastnn"] / med[p] if r["higher_is_better"] else med[p] / med["fastnn"]
                cells.append(f"{ratio:.2f}x" if p != "BLAS limit" else f"{100 * ratio:.0f}%")
            else:
                cells.append("")
        cells.append("; ".join(t for t in (r["target"], r.get("note", "")) if t))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Ratios are speed ratios of the medians (> 1: fastnn faster); against the BLAS limit, the share of "
                 "the GEMMs-only speed fastnn reaches.")
    if any(r.get("note") for r in rows):
        lines.append("CNN rows: the last column adds the shares of the sgemm peak (the 1024^3 GEMM row) reached; "
                     "the data is synthetic (fastnn/bench_cnn.py).")
    return "\n".join(lines)


def threads_text(n: object) -> str:
    """The thread count in words: "1 thread", "2 threads" ("? threads" for a result that does not say)."""
    return f"{n} thread" if n == 1 else f"{n} threads"


def _wrap_at_commas(text: str, width: int) -> str:
    """`text` in lines of at most `width` characters where it can, broken only after its ", " separators."""
    lines: list[str] = []
    for part in text.split(", "):
        if lines and len(lines[-1]) + 2 + len(part) <= width:
            lines[-1] += ", " + part
        else:
            if lines:
                lines[-1] += ","
            lines.append(part)
    return "\n".join(lines)


def plot(result: dict, path: str | os.PathLike | None = None) -> Figure:
    """A bar chart of ``result`` (``run``'s dict, or the same loaded from ``--json``), written as a PNG to ``path``
    when given; returns the matplotlib Figure.

    One panel per row (and one for the peak RSS when measured).  Bars are the medians over the repeats, fastnn in
    blue and the peers in grey, with error bars from each peer's min to its max; each bar is labelled with its
    value and fastnn's speed ratio against it.  The BLAS limit (a ceiling, not a peer) is a dashed red line over a
    band of its own min-max, named with its value and fastnn's share of it in a legend above the panel, so that
    the label never covers fastnn's bar when fastnn is near the limit.  The title gives the date, the threads, the
    repeats and the machine.  Needs matplotlib (drawn without pyplot: the caller's backend is left alone)."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter
    rows = list(result["rows"])
    rss = result.get("rss") or {}
    n_panels = len(rows) + (1 if rss else 0)
    if n_panels == 0:
        raise ValueError("bench: nothing to plot")
    # wider panels for many bars (the JAX peers make 6 on W1), so that the value labels do not run into each other
    panel_w = max([3.4] + [0.72 * len([k for k in r["median"] if k != "BLAS limit"]) for r in rows])
    fig = Figure(figsize=(panel_w * n_panels, 4.0), layout="constrained")
    axes = fig.subplots(1, n_panels, squeeze=False)[0]
    # the titles sit above the limits' legends (pad: a legend's height), at one height in every panel
    title_pad = 16 if any("BLAS limit" in r["median"] for r in rows) else 6
    label_box = {"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.8}
    for ax, r in zip(axes, rows):
        med, unit, hib = r["median"], r["unit"], r["higher_is_better"]
        lo, hi = r.get("min", {}), r.get("max", {})
        names = [k for k in med if k != "BLAS limit"]
        vals = [med[k] for k in names]
        # error bars: each peer's min-max over the repeats (none where the row records no spread)
        yerr = [[max(0.0, v - lo.get(k, v)) for k, v in zip(names, vals)],
                [max(0.0, hi.get(k, v) - v) for k, v in zip(names, vals)]]
        bars = ax.bar(range(len(names)), vals, color=["C0" if k == "fastnn" else "C7" for k in names],
                      yerr=yerr if any(map(any, yerr)) else None, capsize=3,
                      error_kw={"elinewidth": 0.8, "capthick": 0.8, "ecolor": "0.2"})
        top = 0.0
        for k, bar, v, up in zip(names, bars, vals, yerr[1]):
            label = _fmt(v, unit)
            if k != "fastnn" and "fastnn" in med and v > 0 and med["fastnn"] > 0:
                ratio = med["fastnn"] / v if hib else v / med["fastnn"]
                label += f"\n(fastnn {ratio:.2f}x)"
            # above the error bar, on a white box so that the limit's line does not strike through it
            ax.annotate(label, (bar.get_x() + bar.get_width() / 2, v + up), ha="center", va="bottom", fontsize=6,
                        xytext=(0, 2), textcoords="offset points", bbox=label_box, zorder=4)
            top = max(top, v + up)
        if "BLAS limit" in med:
            lim = med["BLAS limit"]
            ax.axhspan(lo.get("BLAS limit", lim), hi.get("BLAS limit", lim), color="C3", alpha=0.12, lw=0, zorder=0)
            ax.axhline(lim, color="C3", ls="--", lw=1, zorder=3)
            text = f"BLAS limit {_fmt(lim, unit)}"
            if med.get("fastnn", 0) > 0 and lim > 0:
                text += f" (fastnn {100 * (med['fastnn'] / lim if hib else lim / med['fastnn']):.0f}%)"
            ax.legend(handles=[Line2D([], [], color="C3", ls="--", lw=1)], labels=[text], loc="lower center",
                      bbox_to_anchor=(0.5, 1.0), fontsize=6, frameon=False, borderaxespad=0.2, handlelength=2.5)
            top = max(top, hi.get("BLAS limit", lim))
        ax.set_ylim(0, (top or 1.0) * 1.3)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=7)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 100 else f"{v:g}"))
        ax.tick_params(axis="y", labelsize=7)
        ax.set_ylabel(unit, fontsize=7)
        ax.set_title(f"{r['workload']}: {'higher' if hib else 'lower'} is better", fontsize=8, pad=title_pad)
    if rss:
        ax = axes[-1]
        names = list(rss)
        peaks = [rss[k]["peak"] for k in names]
        imports = [rss[k]["imports"] for k in names]
        ax.bar(range(len(names)), peaks, color=["C0" if k == "fastnn" else "C7" for k in names], label="peak")
        ax.bar(range(len(names)), imports, color="none", edgecolor="k", hatch="//", lw=0.5, label="bare imports")
        for i, v in enumerate(peaks):
            ax.annotate(f"{v:.0f}", (i, v), ha="center", va="bottom", fontsize=6, xytext=(0, 1),
                        textcoords="offset points")
        ax.set_ylim(0, max(peaks) * 1.2)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
        ax.set_ylabel("MiB", fontsize=7)
        ax.legend(fontsize=6, loc="upper left")
        ax.set_title(f"{result.get('rss_workload', 'W1')} training peak RSS: lower is better", fontsize=8,
                     pad=title_pad)
    repeats = result.get("repeats")
    spread = f", {repeats} repeats (bars: medians, error bars: min-max)" if rows and repeats else ""
    title = f"fastnn bench, {result.get('date', '')}, {threads_text(result.get('threads', '?'))}{spread}"
    width = int(panel_w * n_panels * 18)         # characters of 7-point text across the figure
    fig.suptitle(_wrap_at_commas(title, width) + "\n" + _wrap_at_commas(result.get("machine", ""), width), fontsize=7)
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


# ====================================================================== peak RSS (--rss)
RSS_PEERS = ("fastnn", "torch", "torch fused Adam", "numpy")


def _maxrss_mib():
    """Peak RSS of this process so far, MiB.  On Linux, VmHWM of /proc/self/status: ``ru_maxrss`` is not usable
    in a child started by a bigger process, since Linux carries the parent's high-water mark over fork and exec
    into the child's ``ru_maxrss`` (a child of a bench process that had imported torch reported torch's 222 MiB
    after importing numpy alone).  Elsewhere ``resource.getrusage(RUSAGE_SELF).ru_maxrss``."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 2 ** 20 if sys.platform == "darwin" else r / 1024       # bytes on macOS, KiB on Linux


def _rss_child(peer, threads, full, workload="W1"):
    """In a fresh process: import the peer, make W1's data, train one W1 epoch; print the peak RSS (MiB) after the
    imports, after the data and after training, as JSON.  Run through ``measure_rss`` (this module is loaded
    from its file there, without fastnn's package, so that the torch and numpy peers do not import fastnn).
    A CNN `workload` (C1..C4) or a recurrent one (R1, R3, R4): its data and one epoch of its training, through
    bench_cnn.py or bench_rnn.py, loaded from its file the same way."""
    if peer == "fastnn":
        import fastnn as fnn
        fnn.set_num_threads(threads)
    elif peer.startswith("torch"):
        import torch
        torch.set_num_threads(threads)
    else:
        try:
            from threadpoolctl import threadpool_limits
            threadpool_limits(threads, user_api="blas")
        except ImportError:
            pass
    imports = _maxrss_mib()
    if workload != "W1":
        import importlib.util
        import os
        group = "bench_rnn" if workload.startswith("R") else "bench_cnn"
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), group + ".py")
        s = importlib.util.spec_from_file_location("_fastnn_" + group + "_rss", path)
        mod = importlib.util.module_from_spec(s)
        s.loader.exec_module(mod)
        job = mod.rss_data(workload, full)
        data = _maxrss_mib()
        mod.rss_train(peer, job)
        print(json.dumps({"imports": imports, "data": data, "peak": _maxrss_mib()}))
        return
    spec = _spec("W1", full)
    weights, X, y = make_data(spec)
    data = _maxrss_mib()
    if peer == "fastnn":
        fastnn_train(fastnn_model(spec, weights), X, y, spec)
    elif peer.startswith("torch"):
        torch_train(torch_model(spec, weights, fused=peer != "torch"), X, y, spec)
    else:
        numpy_train(NumpyMLP(spec, weights), X, y, spec)
    print(json.dumps({"imports": imports, "data": data, "peak": _maxrss_mib()}))


def measure_rss(threads=2, full=False, log=print, workload="W1"):
    """Peak RSS of one W1 training epoch per peer (or of a CNN `workload`, C1..C4: fastnn, torch NCHW and torch
    channels_last; or of a recurrent one, R1, R3, R4: fastnn and torch), each in its own fresh subprocess
    (``ru_maxrss``): a dict peer -> {"imports": MiB after the bare imports, "data": after making the data, "peak":
    after training}."""
    import os
    import subprocess
    code = ("import importlib.util, sys; s = importlib.util.spec_from_file_location('_fastnn_bench_rss', sys.argv[1]); "
            "m = importlib.util.module_from_spec(s); s.loader.exec_module(m); "
            "m._rss_child(sys.argv[2], int(sys.argv[3]), sys.argv[4] == '1', sys.argv[5])")
    # the child finds fastnn as this process did (an in-place build run from the source tree included)
    pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    out = {}
    peers = (RSS_PEERS if workload == "W1" else ("fastnn", "torch") if workload.startswith("R")
             else ("fastnn", "torch NCHW", "torch channels_last"))
    for peer in peers:
        if peer.startswith("torch") and _torch() is None:
            continue
        res = subprocess.run([sys.executable, "-c", code, os.path.abspath(__file__), peer, str(threads),
                              "1" if full else "0", workload], capture_output=True, text=True, env=env)
        if res.returncode != 0:
            log(f"  rss {peer}: failed: {res.stderr.strip().splitlines()[-1:]}")
            continue
        out[peer] = json.loads(res.stdout.strip().splitlines()[-1])
        log(f"  rss {peer}: " + ", ".join(f"{k} {v:.1f} MiB" for k, v in out[peer].items()))
    return out


def format_rss(rss, threads, full, workload="W1"):
    if workload == "W1":
        n = _spec("W1", full)["n"]
    elif workload.startswith("R"):
        from fastnn import bench_rnn
        rs = bench_rnn._spec(workload, full, hidden=128 if workload == "R4" else None)
        n = rs["batch"] * rs["batches"]
    else:
        from fastnn import bench_cnn
        n = bench_cnn._spec(workload, full)["n"]
    lines = [f"Peak RSS (VmHWM / ru_maxrss, MiB), {workload} training: one epoch of {n:,} samples, "
             f"{threads_text(threads)}, each peer in a fresh process", "",
             "| peer | bare imports | + data | peak (training) | training - data |",
             "|---|---|---|---|---|"]
    for peer, r in rss.items():
        lines.append(f"| {peer} | {r['imports']:.1f} | {r['data']:.1f} | {r['peak']:.1f} | "
                     f"{r['peak'] - r['data']:.1f} |")
    torch_peer = "torch" if "torch" in rss else "torch NCHW"
    if "fastnn" in rss and torch_peer in rss:
        lines += ["", f"fastnn's peak is {100 * rss['fastnn']['peak'] / rss[torch_peer]['peak']:.0f}% of "
                      f"{torch_peer}'s."]
    return "\n".join(lines)


def main(args):
    try:
        wl = expand_workloads([w.strip() for w in args.workloads.split(",") if w.strip()])
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    log = (lambda s: print(s, file=sys.stderr)) if not args.quiet else (lambda s: None)
    rss_flag = getattr(args, "rss", False)
    if rss_flag and not args.workloads:      # --rss alone: only the memory measurement
        wl = []
    result = run(wl, args.repeats, args.threads, args.full, log) if wl else None
    if result is not None:
        print(format_table(result))
    if rss_flag:
        rw = getattr(args, "rss_workload", "W1")
        rss = measure_rss(args.threads, args.full, log) if rw == "W1" else measure_rss(args.threads, args.full,
                                                                                        log, workload=rw)
        print(("\n" if result is not None else "") + format_rss(rss, args.threads, args.full, rw))
        if result is None:
            result = {"rows": [], "threads": args.threads, "full": args.full, "date": time.strftime("%Y-%m-%d %H:%M"),
                      "machine": machine_text(machine_info())}
        result["rss"], result["rss_workload"] = rss, rw
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    if args.png:
        try:
            plot(result, args.png)
        except ImportError:
            print("bench: --png needs matplotlib (not installed); no chart written", file=sys.stderr)
    return 0
