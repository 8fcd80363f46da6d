"""The recurrent group of ``python -m fastnn bench``: fastnn against PyTorch eager on recurrent networks.

Both peers train the same network: fastnn's model is built first (seed 0), and PyTorch's gets its weights
(``weight_ih`` / ``weight_hh`` transposed into ``weight_ih_l{k}`` / ``weight_hh_l{k}``, both biases, the
embedding table, the Dense weight transposed), the same data, batches in the same order, the same optimizer
and hyperparameters.  The peers alternate in one process (repeat r runs fastnn then torch), and the table
reports medians over the repeats; ``bench.format_table`` prints the rows with the others.

| id | network | data, loss / optimizer | batch | unit |
|---|---|---|---|---|
| R1 | Embedding(65, 64) - LSTM(128) - LSTM(128) - Dense(65) per step | the shipped Shakespeare text in windows of T 50, cross-entropy over all steps / RMSprop 2e-3, clip norm 5 | 50 | sequences/s |
| R2 | R1 with GRU, and with SimpleRNN (tanh) | as R1 | 50 | sequences/s |
| R3 | Embedding(10000, 32) - LSTM(100) - Dense(1) on the last state | random tokens, T 500, random 0/1 labels, BCE on logits / Adam 0.01 | 256 | sequences/s |
| R3 var | R3 with lengths uniform in 50..500: right-padded with token 0, masked in fastnn (``mask_zero=True``), ``pack_padded_sequence`` in torch | as R3 | 256 | sequences/s |
| R4 | one LSTM / GRU, input = hidden in {64, 128, 256}, outputs of every step | N(0, 1) inputs, MSE to 0 / SGD 1e-3 (forward, backward, update) | 32 | GFLOP/s |
| R1 first/steady | R1's LSTM: a fresh model's first epoch over the median of its next ones (lower is better) | | | ratio |

R4's GFLOP/s count the GEMM work of the recurrent layer only: 2·T·N·G·H·(n_in + H) multiply-adds for the forward
pass (the input projection and the recurrent product, G gates), twice that for the backward (the gradients of the
input, the state and both weights), so 6·T·N·G·H·(n_in + H) flops per batch; the gate math is not counted.  Its
"BLAS limit" is the time of exactly those GEMMs through fastnn's BLAS, at the shapes a per-step implementation
uses: the input projection of all steps, its gradient and weight gradient as three large GEMMs, and per step the
recurrent product (N, H) x (H, G·H) and its gradient (N, G·H) x (G·H, H), the recurrent weight gradient as one
large GEMM.

The default runs short slices (R1/R2: 10 batches, R3: 1 batch, R4: 8 batches per repeat); ``--full`` runs the
whole text per R1/R2 epoch (79 batches), 10 R3 batches and 32 R4 batches.  PyTorch's packed R3 is slow (about
100 s per batch of 256 on a busy 2-core machine at 1 thread), so R3 dominates the group's time.
"""  # noqa: E501  (a markdown table: its rows cannot be wrapped)
import time

import numpy as np

WORKLOADS = ("R1", "R2", "R3", "R4")
GATES = {"LSTM": 4, "GRU": 3, "SimpleRNN": 1}
TORCH_CLASS = {"LSTM": "LSTM", "GRU": "GRU", "SimpleRNN": "RNN"}

TARGETS = {"LSTM": ">= 1.3x torch", "GRU": ">= 1.5x torch", "SimpleRNN": ">= 2x torch", "var": ">= 3x torch",
           "first": "<= 1.2", "R4 LSTM h128": ">= 1.3x torch; >= 80% of sgemm peak"}


def _spec(wid, full=False, tiny=False, kind="LSTM", hidden=None, variable=False):
    """The sizes of a workload: vocab (0: float input), emb, units, layers, n_out, T, batch, batches, per_step,
    loss, optimizer (name, kwargs), clip_norm, variable lengths."""
    if wid in ("R1", "R2"):
        s = dict(vocab=65, emb=64, units=128, layers=2, n_out=65, T=50, batch=50, batches=79 if full else 10,
                 per_step=True, loss="cross_entropy", opt=("rmsprop", {"lr": 2e-3}), clip=5.0)
    elif wid == "R3":
        s = dict(vocab=10000, emb=32, units=100, layers=1, n_out=1, T=500, batch=256, batches=10 if full else 1,
                 per_step=False, loss="binary_cross_entropy", opt=("adam", {"lr": 0.01}), clip=None)
    elif wid == "R4":
        s = dict(vocab=0, emb=hidden, units=hidden, layers=1, n_out=0, T=100, batch=32, batches=32 if full else 8,
                 per_step=True, loss="mse", opt=("sgd", {"lr": 1e-3}), clip=None)
    else:
        raise ValueError(wid)
    s.update(kind=kind, variable=variable, wid=wid)
    if tiny:
        s.update(vocab=min(s["vocab"], 30), emb=6, units=5, T=7, batch=4, batches=2)
        if wid == "R1" or wid == "R2":
            s["n_out"] = 30
    return s


# ====================================================================== data
def make_data(spec, seed=0):
    """(X, y, lengths or None) for ``spec["batches"]`` batches."""
    rng = np.random.default_rng(seed)
    n, T = spec["batch"] * spec["batches"], spec["T"]
    if spec["wid"] in ("R1", "R2"):
        from fastnn.datasets import encode_text, load_text, text_windows
        text, vocab = load_text()
        ids = encode_text(text, vocab) % spec["vocab"]
        X, y = text_windows(ids, T)
        if len(X) < n:
            X, y = np.concatenate([X] * (n // len(X) + 1)), np.concatenate([y] * (n // len(y) + 1))
        return X[:n], y[:n], None
    if spec["wid"] == "R3":
        X = rng.integers(1, spec["vocab"], (n, T)).astype(np.int64)
        lengths = None
        if spec["variable"]:
            lo = max(1, T // 10)
            lengths = rng.integers(lo, T + 1, n)
            X[np.arange(T)[None, :] >= lengths[:, None]] = 0
        y = rng.integers(0, 2, (n, 1)).astype(np.float32)
        return X, y, lengths
    X = rng.standard_normal((n, T, spec["emb"]), dtype=np.float32)
    return X, np.zeros((n, T, spec["units"]), np.float32), None


# ====================================================================== fastnn
def fastnn_model(spec):
    import fastnn as fnn
    L = fnn.layers
    layers = []
    if spec["vocab"]:
        layers.append(L.Embedding(spec["vocab"], spec["emb"], mask_zero=spec["variable"]))
    cls = getattr(L, spec["kind"])
    for i in range(spec["layers"]):
        layers.append(cls(spec["units"], return_sequences=spec["per_step"] or i < spec["layers"] - 1))
    if spec["n_out"]:
        layers.append(L.Dense(spec["n_out"]))
    shape = (spec["T"],) if spec["vocab"] else (spec["T"], spec["emb"])
    model = fnn.Sequential(layers, input_shape=shape, seed=0)
    name, kw = spec["opt"]
    opt = {"rmsprop": fnn.optim.RMSprop, "adam": fnn.optim.Adam, "sgd": fnn.optim.SGD}[name](**kw)
    model.compile(spec["loss"], opt, clip_norm=spec["clip"])
    return model


def fastnn_train(model, X, y, spec):
    t0 = time.perf_counter()
    model.fit(X, y, epochs=1, batch_size=spec["batch"], shuffle=False)
    return time.perf_counter() - t0


# ====================================================================== torch
def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def torch_model(spec, model):
    """PyTorch's network for ``spec`` with the weights of the fastnn ``model`` (see the module docstring), or with
    torch's own initial weights where ``model`` is None (the peak-RSS child, which must not import fastnn)."""
    torch = _torch()
    nn = torch.nn
    kind = spec["kind"]

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(spec["vocab"], spec["emb"]) if spec["vocab"] else None
            self.rnn = getattr(nn, TORCH_CLASS[kind])(spec["emb"], spec["units"], num_layers=spec["layers"],
                                                      batch_first=True)
            self.out = nn.Linear(spec["units"], spec["n_out"]) if spec["n_out"] else None

        def forward(self, x, lengths=None):
            h = self.emb(x) if self.emb is not None else x
            if lengths is not None:
                packed = nn.utils.rnn.pack_padded_sequence(h, lengths, batch_first=True, enforce_sorted=False)
                _, hn = self.rnn(packed)
                return self.out((hn[0] if kind == "LSTM" else hn)[-1])
            y, _ = self.rnn(h)
            if not spec["per_step"]:
                y = y[:, -1]
            return self.out(y) if self.out is not None else y

    net = Net()
    layers = list(model.layers) if model is not None else []     # None: torch's own initial weights (RSS runs)
    table = model.table if model is not None else None

    def put(param, layer, name, transpose=False):
        v = np.asarray(table.param(layer, name), dtype=np.float32)
        param.copy_(torch.from_numpy(np.ascontiguousarray(v.T if transpose else v)))

    with torch.no_grad():
        k = 0
        for layer in layers:
            lname = type(layer).__name__
            if lname == "Embedding":
                put(net.emb.weight, layer, "weight")
            elif lname in GATES:
                put(getattr(net.rnn, f"weight_ih_l{k}"), layer, "weight_ih", True)
                put(getattr(net.rnn, f"weight_hh_l{k}"), layer, "weight_hh", True)
                put(getattr(net.rnn, f"bias_ih_l{k}"), layer, "bias_ih")
                put(getattr(net.rnn, f"bias_hh_l{k}"), layer, "bias_hh")
                k += 1
            elif lname == "Dense":
                put(net.out.weight, layer, "weight", True)
                put(net.out.bias, layer, "bias")
    name, kw = spec["opt"]
    opt = {"rmsprop": torch.optim.RMSprop, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}[name](
        net.parameters(), **kw)
    if spec["loss"] == "cross_entropy":
        lossf = nn.CrossEntropyLoss()
    elif spec["loss"] == "binary_cross_entropy":
        lossf = nn.BCEWithLogitsLoss()
    else:
        lossf = nn.MSELoss()
    return net, opt, lossf


def torch_train(state, X, y, spec, lengths=None):
    torch = _torch()
    net, opt, lossf = state
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    bs = spec["batch"]
    t0 = time.perf_counter()
    for s in range(0, X.shape[0], bs):
        xb, yb = Xt[s:s + bs], yt[s:s + bs]
        opt.zero_grad(set_to_none=True)
        out = net(xb, None if lengths is None else torch.from_numpy(lengths[s:s + bs]))
        if spec["loss"] == "cross_entropy":
            loss = lossf(out.reshape(-1, out.shape[-1]), yb.reshape(-1))
        else:
            loss = lossf(out, yb)
        loss.backward()
        if spec["clip"]:
            torch.nn.utils.clip_grad_norm_(net.parameters(), spec["clip"])
        opt.step()
    return time.perf_counter() - t0


# ====================================================================== peak RSS
RSS_WORKLOADS = ("R1", "R3", "R4")


def rss_data(wid, full):
    """What a peak-RSS child makes before training (bench.py ``--rss --rss-workload R1|R3|R4``): (spec, (X, y,
    lengths)).  R4 is its LSTM at hidden 128.  R1's ids are drawn at random from its 65-symbol vocabulary instead
    of read from the shipped text (the same shapes and dtypes: reading the text goes through fastnn.datasets,
    which would import fastnn into the torch peer's process)."""
    spec = _spec(wid, full, hidden=128 if wid == "R4" else None)
    if wid == "R1":
        rng = np.random.default_rng(0)
        n, T = spec["batch"] * spec["batches"], spec["T"]
        return spec, (rng.integers(0, spec["vocab"], (n, T)), rng.integers(0, spec["vocab"], (n, T)), None)
    return spec, make_data(spec)


def rss_train(peer, job):
    """One epoch of the job's training by `peer` ("fastnn" or "torch"; torch with its own initial weights)."""
    spec, (X, y, lengths) = job
    if peer == "fastnn":
        fastnn_train(fastnn_model(spec), X, y, spec)
    else:
        torch_train(torch_model(spec, None), X, y, spec, lengths)


# ====================================================================== R4's GEMM count and BLAS limit
def step_flops(spec):
    """Flops of the recurrent layer's GEMMs per batch, forward and backward (the module docstring)."""
    G, H, n_in = GATES[spec["kind"]], spec["units"], spec["emb"]
    return 6.0 * spec["T"] * spec["batch"] * G * H * (n_in + H)


def blas_limit_time(spec, n_batches):
    """Seconds of the recurrent layer's GEMMs alone for ``n_batches`` batches, at a per-step implementation's
    shapes (the module docstring), through fastnn's BLAS."""
    from fastnn._core._threads import gemm
    G, H, n_in, T, N = GATES[spec["kind"]], spec["units"], spec["emb"], spec["T"], spec["batch"]
    rng = np.random.default_rng(1)
    X = rng.standard_normal((T * N, n_in), dtype=np.float32)
    W_ih = rng.standard_normal((n_in, G * H), dtype=np.float32)
    W_hh = rng.standard_normal((H, G * H), dtype=np.float32)
    gates = np.empty((T * N, G * H), np.float32)
    hs = rng.standard_normal((T * N, H), dtype=np.float32)
    dh = np.empty((N, H), np.float32)
    dX = np.empty_like(X)
    dW_ih, dW_hh = np.empty_like(W_ih), np.empty_like(W_hh)
    t0 = time.perf_counter()
    for _ in range(n_batches):
        gemm(False, False, 1.0, X, W_ih, 0.0, gates)
        for t in range(T):
            gemm(False, False, 1.0, hs[t * N:(t + 1) * N], W_hh, 1.0, gates[t * N:(t + 1) * N])
        for t in range(T - 1, -1, -1):
            gemm(False, True, 1.0, gates[t * N:(t + 1) * N], W_hh, 0.0, dh)
        gemm(True, False, 1.0, hs, gates, 0.0, dW_hh)
        gemm(True, False, 1.0, X, gates, 0.0, dW_ih)
        gemm(False, True, 1.0, gates, W_ih, 0.0, dX)
    return time.perf_counter() - t0


# ====================================================================== runs
def _row(wid, unit, samples, target, higher_is_better=True):
    import statistics
    return {"workload": wid, "unit": unit, "higher_is_better": higher_is_better,
            "median": {k: statistics.median(v) for k, v in samples.items()},
            "min": {k: min(v) for k, v in samples.items()}, "max": {k: max(v) for k, v in samples.items()},
            "samples": samples, "target": target}


def _pair(spec, repeats, log, label, unit="sequences/s"):
    """Interleaved fastnn / torch training of one spec: {peer: [rate per repeat]}."""
    X, y, lengths = make_data(spec)
    model = fastnn_model(spec)
    peers = {"fastnn": lambda: fastnn_train(model, X, y, spec)}
    if _torch() is not None:
        state = torch_model(spec, model)
        peers["torch"] = lambda: torch_train(state, X, y, spec, lengths)
    if unit == "GFLOP/s":
        peers["BLAS limit"] = lambda: blas_limit_time(spec, spec["batches"])
        scale = step_flops(spec) * spec["batches"] / 1e9
    else:
        scale = X.shape[0]
    nw = spec["batch"]
    fastnn_train(model, X[:nw], y[:nw], spec)                           # warm-up: buffers, caches, lazy init
    if "torch" in peers:
        torch_train(state, X[:nw], y[:nw], spec, None if lengths is None else lengths[:nw])
    samples = {k: [] for k in peers}
    from fastnn.bench import _settle
    for r in range(repeats):
        for name, fn in peers.items():
            _settle()
            samples[name].append(scale / fn())
        log(f"  {label} repeat {r + 1}/{repeats}: " + ", ".join(f"{k} {v[-1]:,.1f}" for k, v in samples.items()))
    return samples


def _first_steady(spec, epochs, log):
    """A fresh model's first epoch over the median of its next ``epochs - 1`` epochs, per peer."""
    import statistics
    X, y, lengths = make_data(spec)
    model = fastnn_model(spec)
    times = {"fastnn": [fastnn_train(model, X, y, spec) for _ in range(epochs)]}
    if _torch() is not None:
        state = torch_model(spec, model)
        times["torch"] = [torch_train(state, X, y, spec, lengths) for _ in range(epochs)]
    out = {k: [v[0] / statistics.median(v[1:])] for k, v in times.items()}
    log("  R1 first/steady: " + ", ".join(f"{k} {v[0]:.2f}" for k, v in out.items()))
    return out


def run_workload(wid, repeats=3, full=False, log=print, tiny=False):
    """The rows of one recurrent workload (R1..R4), in ``bench.run``'s row format."""
    rows = []
    if wid == "R1":
        spec = _spec("R1", full, tiny)
        rows.append(_row("R1 char LSTM", "sequences/s", _pair(spec, repeats, log, "R1"), TARGETS["LSTM"]))
        rows.append(_row("R1 first/steady", "ratio", _first_steady(spec, 4 if tiny else 5, log), TARGETS["first"],
                         higher_is_better=False))
    elif wid == "R2":
        for kind in ("GRU", "SimpleRNN"):
            spec = _spec("R2", full, tiny, kind=kind)
            rows.append(_row(f"R2 char {kind}", "sequences/s", _pair(spec, repeats, log, f"R2 {kind}"),
                             TARGETS[kind]))
    elif wid == "R3":
        for variable in (False, True):
            spec = _spec("R3", full, tiny, variable=variable)
            label = "R3 var masked/packed" if variable else "R3 LSTM T 500"
            rows.append(_row(label, "sequences/s", _pair(spec, repeats, log, label),
                             TARGETS["var" if variable else "LSTM"]))
    elif wid == "R4":
        for kind in ("LSTM", "GRU"):
            for hidden in ((4, 6) if tiny else (64, 128, 256)):
                spec = _spec("R4", full, tiny, kind=kind, hidden=hidden)
                if tiny:
                    spec.update(emb=hidden, units=hidden)
                label = f"R4 {kind} h{hidden}"
                rows.append(_row(label, "GFLOP/s", _pair(spec, repeats, log, label, unit="GFLOP/s"),
                                 TARGETS.get(label, TARGETS[kind])))
    else:
        raise ValueError(f"bench: unknown recurrent workload {wid!r}; known: {', '.join(WORKLOADS)}")
    return rows
