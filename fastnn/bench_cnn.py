"""The convolutional workloads of ``python -m fastnn bench --workloads cnn``: fastnn against PyTorch eager in its
default NCHW layout and with ``memory_format=torch.channels_last``.

Every peer runs the same network: the same sizes, the same initial weights (drawn here in numpy, in fastnn's
layout, and permuted for torch: a conv weight (kh, kw, C_in, F) -> (F, C_in, kh, kw), the Dense after a Flatten
re-ordered from fastnn's (H, W, C) flattening to torch's (C, H, W)), the same synthetic data (N(0, 1) images of
the workload's shape, uniform random labels: the timings do not depend on the values), the same optimizer and
hyperparameters (weight decay on the conv/dense weights only, as fastnn's default), the same batch size and
per-epoch shuffling.  The peers are interleaved in one process (repeat r runs fastnn, torch NCHW, torch
channels_last, then repeat r + 1); the table reports medians, min-max and the speed ratios of the medians.

| id | network (channels-last input) | loss / optimizer | batch |
|---|---|---|---|
| C1 | LeNet-5, 28x28x1: conv5x5 6 pad 2 relu, maxpool 2, conv5x5 16 relu, maxpool 2, 120 relu, 84 relu, 10 | CE / SGD 0.01 momentum 0.9 | 64 |
| C2 | PyTorch's MNIST example, 28x28x1: conv3x3 32 relu, conv3x3 64 relu, maxpool 2, dropout .25, flatten, 128 relu, dropout .5, 10 | CE / Adam 1e-3 | 64 |
| C3 | Keras' cifar10 CNN, 32x32x3: conv3x3 32 same, conv3x3 32, pool, dropout .25, conv3x3 64 same, conv3x3 64, pool, dropout .25, 512 relu, dropout .5, 10 (relu after every conv) | CE / RMSprop 1e-4 | 32 |
| C4 | ResNet-8 (CIFAR), 32x32x3: conv3x3 16 BN relu, one basic block per stage (16, 32, 64 channels; conv3x3 BN relu conv3x3 BN + shortcut, relu; 1x1 stride-2 conv + BN projection shortcuts), global average pooling, 10 | CE / SGD 0.1 momentum 0.9 weight decay 5e-4 | 128 |

Also: ``Clayers``, per-layer timings of forward, backward-data and backward-weights of ResNet-8's 3x3 layers and
the first layers of C1 and C3 (GFLOP/s and the share of the machine's sgemm peak, a 1024^3 float32 GEMM through
fastnn's BLAS measured in the same run at the same thread count); ``Cinfer``, C2's single-image and batch-256
inference latency; ``Cfirst``, the first training step's time against a steady step (C2 and C4, fresh models).
The default runs a few hundred samples per training workload; ``--full`` runs 8x more.
"""  # noqa: E501  (a markdown table: its rows cannot be wrapped)
import math
import sys
import time

import numpy as np

# bench.py's helpers; in a peak-RSS child process both files are loaded from their paths, without importing the
# fastnn package (so that the torch peers' memory does not include fastnn's)
if "_fastnn_bench_rss" in sys.modules:
    _bench = sys.modules["_fastnn_bench_rss"]
else:
    from fastnn import bench as _bench
_median, _settle, _torch = _bench._median, _bench._settle, _bench._torch

WORKLOADS = ("C1", "C2", "C3", "C4", "Clayers", "Cinfer", "Cfirst")
TRAINING = ("C1", "C2", "C3", "C4")
TARGETS = {"C1": ">= 2.5x torch (its faster layout)", "C2": ">= 1.4x torch, >= 65% of sgemm peak",
           "C3": ">= 1.4x torch, >= 65% of sgemm peak", "C4": ">= 1.4x torch, >= 65% of sgemm peak",
           "C2 single image": "<= 0.5x torch's latency", "first step": "<= 3x a steady step",
           "forward": "3x3 with >= 32 channels: >= 75% of peak", "backward": "3x3 with >= 32 channels: >= 60% of peak"}


# ====================================================================== network definitions
def _spec(wid, full=False, scale=1):
    """{"input": (H, W, C), "net": [op, ...], "opt": (name, kwargs), "batch", "n"}; scale > 1 divides the batch
    size by it and runs two batches (tests)."""
    mult = 8 if full else 1
    if wid == "C1":
        net = [("conv", 6, 5, 1, 2, "relu", True), ("maxpool", 2), ("conv", 16, 5, 1, 0, "relu", True),
               ("maxpool", 2), ("flatten",), ("dense", 120, "relu"), ("dense", 84, "relu"), ("dense", 10, None)]
        s = dict(input=(28, 28, 1), net=net, opt=("sgd", {"lr": 0.01, "momentum": 0.9}), batch=64, n=640)
    elif wid == "C2":
        net = [("conv", 32, 3, 1, 0, "relu", True), ("conv", 64, 3, 1, 0, "relu", True), ("maxpool", 2),
               ("dropout", 0.25), ("flatten",), ("dense", 128, "relu"), ("dropout", 0.5), ("dense", 10, None)]
        s = dict(input=(28, 28, 1), net=net, opt=("adam", {"lr": 1e-3}), batch=64, n=256)
    elif wid == "C3":
        net = [("conv", 32, 3, 1, 1, "relu", True), ("conv", 32, 3, 1, 0, "relu", True), ("maxpool", 2),
               ("dropout", 0.25), ("conv", 64, 3, 1, 1, "relu", True), ("conv", 64, 3, 1, 0, "relu", True),
               ("maxpool", 2), ("dropout", 0.25), ("flatten",), ("dense", 512, "relu"), ("dropout", 0.5),
               ("dense", 10, None)]
        s = dict(input=(32, 32, 3), net=net, opt=("rmsprop", {"lr": 1e-4}), batch=32, n=192)
    elif wid == "C4":
        net = [("conv", 16, 3, 1, 1, None, False), ("bn",), ("relu",), ("block", 16, 1), ("block", 32, 2),
               ("block", 64, 2), ("gap",), ("dense", 10, None)]
        s = dict(input=(32, 32, 3), net=net, opt=("sgd", {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4}),
                 batch=128, n=256)
    else:
        raise ValueError(f"bench: unknown CNN workload {wid!r}")
    if scale > 1:          # tests: small batches, two of them
        s["batch"] = max(4, s["batch"] // scale)
        s["n"] = 2 * s["batch"]
    else:
        s["n"] *= mult
    return s


def _expand(net):
    """The op list with every residual block written out as ("res", [main ops], [shortcut ops])."""
    out = []
    c = None
    for op in net:
        if op[0] == "block":
            f, stride = op[1], op[2]
            main = [("conv", f, 3, stride, 1, None, False), ("bn",), ("relu",), ("conv", f, 3, 1, 1, None, False),
                    ("bn",)]
            short = [] if stride == 1 and c == f else [("conv", f, 1, stride, 0, None, False), ("bn",)]
            out.append(("res", main, short))
            out.append(("relu",))
            c = f
        else:
            if op[0] == "conv":
                c = op[1]
            out.append(op)
    return out


def _walk(ops, shape):
    """[(op, input shape (H, W, C) or (F,), output shape)] in order, residual blocks flattened in (main ops,
    then shortcut ops), with their shapes."""
    res = []
    for op in ops:
        if op[0] == "res":
            s = shape
            for sub in op[1]:
                res.append((sub, s, _out_shape(sub, s)))
                s = _out_shape(sub, s)
            t = shape
            for sub in op[2]:
                res.append((sub, t, _out_shape(sub, t)))
                t = _out_shape(sub, t)
            shape = s
        else:
            res.append((op, shape, _out_shape(op, shape)))
            shape = _out_shape(op, shape)
    return res


def _out_shape(op, s):
    kind = op[0]
    if kind == "conv":
        _, f, k, st, p, _, _ = op
        return ((s[0] + 2 * p - k) // st + 1, (s[1] + 2 * p - k) // st + 1, f)
    if kind == "maxpool":
        return (s[0] // op[1], s[1] // op[1], s[2])
    if kind == "flatten":
        return (int(np.prod(s)),)
    if kind == "gap":
        return (s[-1],)
    if kind == "dense":
        return (op[1],)
    return s


def make_weights(spec, seed=0):
    """Initial weights in fastnn's layout, one entry per conv / dense / bn op in ``_walk`` order: {"weight",
    "bias"} (He-uniform conv and dense weights, zero biases; BN scale 1, shift 0), drawn in numpy so that the
    peers' processes need not import each other."""
    rng = np.random.default_rng(seed)
    out = []
    for op, s_in, _s_out in _walk(_expand(spec["net"]), spec["input"]):
        if op[0] == "conv":
            _, f, k, _, _, _, bias = op
            fan_in = k * k * s_in[-1]
            lim = math.sqrt(6.0 / fan_in)
            w = {"weight": rng.uniform(-lim, lim, (k, k, s_in[-1], f)).astype(np.float32)}
            if bias:
                w["bias"] = np.zeros(f, np.float32)
            out.append(w)
        elif op[0] == "dense":
            lim = math.sqrt(6.0 / s_in[-1])
            out.append({"weight": rng.uniform(-lim, lim, (s_in[-1], op[1])).astype(np.float32),
                        "bias": np.zeros(op[1], np.float32)})
        elif op[0] == "bn":
            out.append({"weight": np.ones(s_in[-1], np.float32), "bias": np.zeros(s_in[-1], np.float32)})
    return out


def make_data(spec, seed=0):
    rng = np.random.default_rng(seed + 1)
    X = rng.standard_normal((spec["n"],) + spec["input"], dtype=np.float32)
    y = rng.integers(0, 10, spec["n"]).astype(np.int64)
    return X, y


def train_flops(spec):
    """Multiply-adds x 2 of one training sample: forward, backward-data (but not of the first layer, whose input
    needs no gradient) and backward-weights of every conv and dense layer."""
    total = 0
    first = True
    for op, s_in, s_out in _walk(_expand(spec["net"]), spec["input"]):
        if op[0] == "conv":
            f = 2 * s_out[0] * s_out[1] * op[1] * op[2] * op[2] * s_in[-1]
        elif op[0] == "dense":
            f = 2 * s_in[-1] * op[1]
        else:
            continue
        total += f * (2 if first else 3)
        first = False
    return total


# ====================================================================== fastnn
def fastnn_model(spec, weights):
    import fastnn as fnn
    L = fnn.layers
    layers = []       # the weighted layers, in _walk order

    def build(op, x):
        kind = op[0]
        if kind == "conv":
            _, f, k, st, p, act, bias = op
            layer = L.Conv2D(f, k, strides=st, padding=p, activation=act, use_bias=bias)
        elif kind == "dense":
            layer = L.Dense(op[1], activation=op[2])
        elif kind == "bn":
            layer = L.BatchNorm()
        elif kind == "relu":
            return L.ReLU()(x)
        elif kind == "maxpool":
            return L.MaxPool2D(op[1])(x)
        elif kind == "dropout":
            return L.Dropout(op[1])(x)
        elif kind == "flatten":
            return L.Flatten()(x)
        elif kind == "gap":
            return L.GlobalAveragePooling2D()(x)
        else:
            raise ValueError(kind)
        layers.append(layer)
        return layer(x)

    inp = fnn.Input(spec["input"])
    x = inp
    for op in _expand(spec["net"]):
        if op[0] == "res":
            h = x
            for sub in op[1]:
                h = build(sub, h)
            s = x
            for sub in op[2]:
                s = build(sub, s)
            x = L.Add()([h, s])
        else:
            x = build(op, x)
    model = fnn.Model(inp, x, seed=0)
    for layer, w in zip(layers, weights):
        for name, v in w.items():
            layer.params[name][...] = v
    name, kw = spec["opt"]
    opt = {"sgd": fnn.optim.SGD, "adam": fnn.optim.Adam, "rmsprop": fnn.optim.RMSprop}[name](**kw)
    model.compile("cross_entropy", opt)
    return model


def fastnn_train(model, X, y, spec, epochs=1, rng=None):
    t0 = time.perf_counter()
    model.fit(X, y, epochs=epochs, batch_size=spec["batch"])
    return time.perf_counter() - t0


# ====================================================================== torch
def torch_model(spec, weights, channels_last=False):
    """(net, optimizer, loss, channels_last) of the same network in torch (NCHW modules)."""
    torch = _torch()
    nn = torch.nn
    it = iter(weights)

    def conv_w(w):
        return torch.from_numpy(np.ascontiguousarray(w.transpose(3, 2, 0, 1)))

    def make(op, s_in):
        kind = op[0]
        if kind == "conv":
            _, f, k, st, p, act, bias = op
            m = nn.Conv2d(s_in[-1], f, k, stride=st, padding=p, bias=bias)
            w = next(it)
            with torch.no_grad():
                m.weight.copy_(conv_w(w["weight"]))
                if bias:
                    m.bias.copy_(torch.from_numpy(w["bias"]))
            return [m] + ([nn.ReLU()] if act == "relu" else [])
        if kind == "dense":
            m = nn.Linear(s_in[-1], op[1])
            w = next(it)
            W = w["weight"]
            if len(s_in) == 1 and getattr(make, "flat_from", None) is not None:
                H, Wd, C = make.flat_from         # fastnn flattens (H, W, C), torch (C, H, W)
                W = W.reshape(H, Wd, C, -1).transpose(2, 0, 1, 3).reshape(H * Wd * C, -1)
                make.flat_from = None
            with torch.no_grad():
                m.weight.copy_(torch.from_numpy(np.ascontiguousarray(W.T)))
                m.bias.copy_(torch.from_numpy(w["bias"]))
            return [m] + ([nn.ReLU()] if op[2] == "relu" else [])
        if kind == "bn":
            next(it)
            return [nn.BatchNorm2d(s_in[-1])]
        if kind == "relu":
            return [nn.ReLU()]
        if kind == "maxpool":
            return [nn.MaxPool2d(op[1])]
        if kind == "dropout":
            return [nn.Dropout(op[1])]
        if kind == "flatten":
            make.flat_from = s_in
            return [nn.Flatten()]
        if kind == "gap":
            return [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        raise ValueError(kind)

    make.flat_from = None

    class Block(nn.Module):
        def __init__(self, main, short):
            super().__init__()
            self.main, self.short = nn.Sequential(*main), nn.Sequential(*short)

        def forward(self, x):
            return self.main(x) + self.short(x)

    mods, shape = [], spec["input"]
    for op in _expand(spec["net"]):
        if op[0] == "res":
            main, s = [], shape
            for sub in op[1]:
                main += make(sub, s)
                s = _out_shape(sub, s)
            short, t = [], shape
            for sub in op[2]:
                short += make(sub, t)
                t = _out_shape(sub, t)
            mods.append(Block(main, short))
            shape = s
        else:
            mods += make(op, shape)
            shape = _out_shape(op, shape)
    net = nn.Sequential(*mods)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    name, kw = spec["opt"]
    kw = dict(kw)
    wd = kw.pop("weight_decay", 0.0)
    decayed = [p for n, p in net.named_parameters() if n.endswith("weight") and p.dim() > 1]
    rest = [p for n, p in net.named_parameters() if not (n.endswith("weight") and p.dim() > 1)]
    groups = [{"params": decayed, "weight_decay": wd}, {"params": rest, "weight_decay": 0.0}]
    opt = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "rmsprop": torch.optim.RMSprop}[name](groups, **kw)
    return net, opt, nn.CrossEntropyLoss(), channels_last


def torch_input(X, channels_last):
    """A torch tensor of the channels-last batch X: NCHW-contiguous, or NCHW with channels_last strides (no
    copy)."""
    torch = _torch()
    t = torch.from_numpy(X).permute(0, 3, 1, 2)
    return t if channels_last else t.contiguous()


def torch_train(state, X, y, spec, epochs=1, rng=None):
    torch = _torch()
    net, opt, lossf, cl = state
    net.train()
    Xt, yt = torch_input(X, cl), torch.from_numpy(y)
    fmt = torch.channels_last if cl else torch.contiguous_format
    bs, n = spec["batch"], X.shape[0]
    rng = rng or np.random.default_rng(0)
    t0 = time.perf_counter()
    for _ in range(epochs):
        perm = torch.from_numpy(rng.permutation(n))
        for s in range(0, n, bs):
            idx = perm[s:s + bs]
            xb, yb = Xt[idx].contiguous(memory_format=fmt), yt[idx]
            opt.zero_grad(set_to_none=True)
            loss = lossf(net(xb), yb)
            loss.backward()
            opt.step()
    return time.perf_counter() - t0


def rss_data(wid, full):
    """What a peak-RSS child makes before training (bench.py ``--rss --rss-workload C2``): spec, weights, data."""
    spec = _spec(wid, full)
    return spec, make_weights(spec), make_data(spec)


def rss_train(peer, job):
    """One epoch of the job's training by `peer` ("fastnn", "torch NCHW", "torch channels_last")."""
    spec, weights, (X, y) = job
    if peer == "fastnn":
        fastnn_train(fastnn_model(spec, weights), X, y, spec)
    else:
        torch_train(torch_model(spec, weights, channels_last=peer.endswith("channels_last")), X, y, spec)


# ====================================================================== sgemm peak
def sgemm_peak(n=1024, reps=3):
    """GFLOP/s of an n^3 float32 GEMM through fastnn's BLAS at its current thread count (best of reps)."""
    from fastnn._core._threads import gemm
    rng = np.random.default_rng(0)
    A = rng.standard_normal((n, n), dtype=np.float32)
    B = rng.standard_normal((n, n), dtype=np.float32)
    C = np.empty((n, n), np.float32)
    gemm(False, False, 1.0, A, B, 0.0, C)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        gemm(False, False, 1.0, A, B, 0.0, C)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n ** 3 / best / 1e9


# ====================================================================== runs
def _peers(spec, weights):
    peers = {"fastnn": (fastnn_model(spec, weights), fastnn_train)}
    if _torch() is not None:
        peers["torch NCHW"] = (torch_model(spec, weights), torch_train)
        peers["torch channels_last"] = (torch_model(spec, weights, channels_last=True), torch_train)
    return peers


def run_training(wid, repeats, full, log, scale=1):
    """Samples per second of every peer (lists over repeats) for a training workload."""
    spec = _spec(wid, full, scale)
    weights = make_weights(spec)
    X, y = make_data(spec)
    peers = _peers(spec, weights)
    nw = min(X.shape[0], 2 * spec["batch"])
    for state, fn in peers.values():          # warm-up: buffers, caches, torch's lazy init
        fn(state, X[:nw], y[:nw], spec)
    samples = {k: [] for k in peers}
    for r in range(repeats):
        for name, (state, fn) in peers.items():
            _settle()
            samples[name].append(X.shape[0] / fn(state, X, y, spec))
        log(f"  {wid} repeat {r + 1}/{repeats}: " + ", ".join(f"{k} {v[-1]:,.0f}/s" for k, v in samples.items()))
    return spec, samples


def _layer_cases(scale=1):
    """(label, batch, (H, W, C_in), filters, k, stride, pad): ResNet-8's 3x3 layers, C1's and C3's first."""
    b4, b1, b3 = max(1, 128 // scale), max(1, 64 // scale), max(1, 32 // scale)
    return [("C1 conv1 5x5 1->6", b1, (28, 28, 1), 6, 5, 1, 2),
            ("C3 conv1 3x3 3->32", b3, (32, 32, 3), 32, 3, 1, 1),
            ("C4 3x3 16->16 32x32", b4, (32, 32, 16), 16, 3, 1, 1),
            ("C4 3x3 16->32 /2", b4, (32, 32, 16), 32, 3, 2, 1),
            ("C4 3x3 32->32 16x16", b4, (16, 16, 32), 32, 3, 1, 1),
            ("C4 3x3 32->64 /2", b4, (16, 16, 32), 64, 3, 2, 1),
            ("C4 3x3 64->64 8x8", b4, (8, 8, 64), 64, 3, 1, 1)]


def _time(fn, reps):
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return _median(ts)


def run_layers(repeats, log, scale=1, reps=5):
    """{label: {peer: {"forward", "backward-data", "backward-weights": seconds (median)}}} and the flops of
    each case (one pass)."""
    import fastnn as fnn
    torch = _torch()
    out, flops = {}, {}
    for label, n, shape, f, k, st, p in _layer_cases(scale):
        rng = np.random.default_rng(0)
        X = rng.standard_normal((n,) + shape, dtype=np.float32)
        model = fnn.Sequential([fnn.layers.Conv2D(f, k, strides=st, padding=p)], input_shape=shape, seed=0)
        layer = model.layers[0]
        Y = layer.forward(X, True)
        dY = rng.standard_normal(Y.shape, dtype=np.float32)
        flops[label] = 2 * Y.size * k * k * shape[-1]

        def f_fwd(layer=layer, X=X):
            layer.forward(X, True)

        def f_bwd(need, layer=layer, dY=dY):
            def run():
                layer.need_input_grad = need
                layer.backward(dY)
            return run

        res = {}
        t_fwd, t_w, t_all = [], [], []
        for _ in range(repeats):
            t_fwd.append(_time(f_fwd, reps))
            t_w.append(_time(f_bwd(False), reps))
            t_all.append(_time(f_bwd(True), reps))
        tw = _median(t_w)
        res["fastnn"] = {"forward": _median(t_fwd), "backward-weights": tw,
                         "backward-data": max(_median(t_all) - tw, 1e-9)}
        if torch is not None:
            W = torch.from_numpy(np.ascontiguousarray(layer.params["weight"].transpose(3, 2, 0, 1)))
            for cl in (False, True):
                x = torch_input(X, cl)
                w = W.contiguous(memory_format=torch.channels_last) if cl else W
                g = torch.from_numpy(dY).permute(0, 3, 1, 2)
                g = g if cl else g.contiguous()
                conv = torch.ops.aten.convolution_backward
                args = (g, x, w, [f], [st, st], [p, p], [1, 1], False, [0, 0], 1)
                with torch.no_grad():
                    def fw(x=x, w=w, st=st, p=p):
                        return torch.nn.functional.conv2d(x, w, None, st, p)

                    def bd(conv=conv, args=args):
                        return conv(*args, [True, False, False])

                    def bw(conv=conv, args=args):
                        return conv(*args, [False, True, True])

                    res["torch channels_last" if cl else "torch NCHW"] = {
                        "forward": _median([_time(fw, reps) for _ in range(repeats)]),
                        "backward-data": _median([_time(bd, reps) for _ in range(repeats)]),
                        "backward-weights": _median([_time(bw, reps) for _ in range(repeats)])}
        out[label] = res
        log(f"  layer {label}: fastnn fwd {res['fastnn']['forward'] * 1e3:.2f} ms")
    return out, flops


def run_infer(repeats, log, n_single=200, n_batch=5, batch=256):
    """C2 inference: microseconds per single-image predict and per batch-256 predict, per peer."""
    torch = _torch()
    spec = _spec("C2")
    weights = make_weights(spec)
    X = np.random.default_rng(3).standard_normal((batch,) + spec["input"], dtype=np.float32)
    x1 = X[:1].copy()
    model = fastnn_model(spec, weights)
    peers = {"fastnn": lambda x: model.predict(x)}
    if torch is not None:
        for cl in (False, True):
            net = torch_model(spec, weights, cl)[0].eval()

            def pred(x, net=net, cl=cl):
                with torch.no_grad():
                    return net(torch_input(x, cl)).numpy()
            peers["torch channels_last" if cl else "torch NCHW"] = pred
    single = {k: [] for k in peers}
    many = {k: [] for k in peers}
    for f in peers.values():
        for _ in range(5):
            f(x1)
        f(X)
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
            many[name].append((time.perf_counter() - t0) / n_batch * 1e6)
        log(f"  Cinfer repeat {r + 1}/{repeats}: " + ", ".join(f"{k} {single[k][-1]:.0f} us" for k in peers))
    return single, many


def run_first(wids, log, scale=1, steady=None):
    """{wid: {peer: first step seconds / median of the next `steady` steps}}, each peer on a fresh model."""
    out = {}
    steady = steady or (2 if scale > 1 else 5)
    for wid in wids:
        spec = _spec(wid, False, scale)
        X, y = make_data(dict(spec, n=spec["batch"] * (steady + 1)))
        weights = make_weights(spec)
        res = {}
        names = ["fastnn"] + (["torch NCHW", "torch channels_last"] if _torch() is not None else [])
        for name in names:
            _settle()
            if name == "fastnn":
                model = fastnn_model(spec, weights)
            else:
                model = torch_model(spec, weights, name.endswith("channels_last"))

            def step(xb, yb, name=name, model=model, spec=spec):
                if name == "fastnn":
                    model.train_on_batch(xb, yb)
                else:
                    torch_train(model, xb, yb, dict(spec, batch=xb.shape[0]), rng=np.random.default_rng(0))
            ts = []
            bs = spec["batch"]
            for s in range(steady + 1):
                t0 = time.perf_counter()
                step(X[s * bs:(s + 1) * bs], y[s * bs:(s + 1) * bs])
                ts.append(time.perf_counter() - t0)
            res[name] = ts[0] / _median(ts[1:])
        out[wid] = res
        log(f"  Cfirst {wid}: " + ", ".join(f"{k} {v:.2f}x" for k, v in res.items()))
    return out


def run(workloads, repeats, full, log, add, scale=1):
    """Run the CNN workloads in `workloads` (ids of WORKLOADS), adding table rows through ``add(wid, unit,
    samples, higher_better, target, note)`` (bench.run's row maker)."""
    peak = None
    if any(w in ("C1", "C2", "C3", "C4", "Clayers") for w in workloads):
        peak = sgemm_peak(256 if scale > 1 else 1024)
        log(f"  sgemm peak: {peak:.1f} GFLOP/s")
        add("sgemm peak (1024^3, fastnn's BLAS)", "GFLOP/s", {"fastnn": [peak]}, True, "", "")
    for wid in workloads:
        if wid in TRAINING:
            spec, s = run_training(wid, repeats, full, log, scale)
            fl = train_flops(spec)
            med = _median(s["fastnn"])
            note = (f"{fl / 1e6:.1f} MFLOP/sample; fastnn {med * fl / 1e9:.1f} GFLOP/s = "
                    f"{100 * med * fl / 1e9 / peak:.0f}% of sgemm peak")
            if "torch channels_last" in s:
                best = max(_median(s["torch NCHW"]), _median(s["torch channels_last"]))
                note += f"; torch (faster layout) {100 * best * fl / 1e9 / peak:.0f}%"
            add(f"{wid} training (batch {spec['batch']}, {spec['n']} samples)", "samples/s", s, True,
                TARGETS[wid], note)
        elif wid == "Clayers":
            times, flops = run_layers(repeats, log, scale)
            for label, res in times.items():
                for part in ("forward", "backward-data", "backward-weights"):
                    g = {peer: [flops[label] / r[part] / 1e9] for peer, r in res.items()}
                    note = ", ".join(f"{peer} {100 * v[0] / peak:.0f}%" for peer, v in g.items()) + " of sgemm peak"
                    add(f"{label} {part}", "GFLOP/s", g, True, TARGETS[part.split("-")[0]], note)
        elif wid == "Cinfer":
            single, many = run_infer(repeats, log, n_single=max(2, 200 // scale), n_batch=max(1, 5 // scale),
                                     batch=max(2, 256 // scale))
            add("C2 single image", "us", single, False, TARGETS["C2 single image"], "")
            add(f"C2 batch {max(2, 256 // scale)}", "us", many, False, "", "")
        elif wid == "Cfirst":
            for w, res in run_first(("C2", "C4"), log, scale).items():
                add(f"{w} first step / steady step", "x", {k: [v] for k, v in res.items()}, False,
                    TARGETS["first step"], "")
        else:
            raise ValueError(f"bench: unknown CNN workload {wid!r}; known: {', '.join(WORKLOADS)}")
