"""Command line: ``python -m fastnn demo`` trains an MLP on the bundled digits and reports test accuracy
(``--model cnn``: a CNN on the digits as 8x8x1 images);
(``--model lstm``: a character-level LSTM on the bundled Shakespeare text, which prints a generated sample);
``python -m fastnn bench`` runs the side-by-side benchmark (fastnn, PyTorch and JAX when installed, plain numpy)."""
import argparse
import sys
import time

import numpy as np

from fastnn.bench import threads_text


def shifted(X, y, side=8):
    """The images of X (n, side*side) and their copies moved by one pixel up, down, left and right (the pixel
    moved out is dropped, zeros come in), with their labels: 5n samples, the original ones first."""
    img = X.reshape(-1, side, side)
    out = [img]
    for axis, step in ((1, 1), (1, -1), (2, 1), (2, -1)):
        moved = np.roll(img, step, axis=axis)
        edge = 0 if step == 1 else -1
        if axis == 1:
            moved[:, edge, :] = 0
        else:
            moved[:, :, edge] = 0
        out.append(moved)
    return np.concatenate(out).reshape(-1, side * side), np.tile(y, len(out))


def cnn_model(seed=0, dtype="float32"):
    """The demo's CNN on 8x8x1 digit images: two 3x3 "same" convolutions (16 and 32 filters, each followed by
    BatchNorm and ReLU), 2x2 max pooling, dropout, a 64-unit ReLU layer and the 10 logits."""
    import fastnn as fnn
    L = fnn.layers
    return fnn.Sequential([
        L.Conv2D(16, 3, padding="same", use_bias=False), L.BatchNorm(), L.ReLU(),
        L.Conv2D(32, 3, padding="same", use_bias=False), L.BatchNorm(), L.ReLU(),
        L.MaxPool2D(2),
        L.Flatten(),
        L.Dropout(0.3),
        L.Dense(64, activation="relu", kernel_init="he_normal"),
        L.Dense(10),
    ], input_shape=(8, 8, 1), seed=seed, dtype=dtype)


# per model: epochs, batch size, learning rate (each overridden by its option), the accuracy the exit status asks
DEMO_DEFAULTS = {"mlp": (20, 32, 2e-3, 0.96), "cnn": (4, 32, 3e-3, 0.985)}


def demo(args):
    if args.model == "lstm":
        return demo_lstm(args)
    import fastnn as fnn
    from fastnn.datasets import DIGITS_CITATION, load_digits, stratified_split

    if args.threads:
        fnn.set_num_threads(args.threads)
    kind = getattr(args, "model", "mlp")
    epochs, batch_size, lr, goal = DEMO_DEFAULTS[kind]
    epochs = epochs if args.epochs is None else args.epochs
    batch_size = batch_size if args.batch_size is None else args.batch_size
    lr = lr if args.lr is None else args.lr
    X, y = load_digits()
    X_train, y_train, X_test, y_test = stratified_split(X, y, test_fraction=0.2, seed=args.seed)
    X_train, y_train, X_val, y_val = stratified_split(X_train, y_train, test_fraction=0.125, seed=args.seed)
    print(f"fastnn {fnn.__version__} demo: UCI hand-written digits, {len(X_train)} train / {len(X_val)} validation"
          f" / {len(X_test)} test samples, {threads_text(fnn.get_num_threads())}")
    print(f"data: {DIGITS_CITATION}")
    if kind == "cnn":
        # 8x8x1 images (channels-last); the training images also moved by one pixel each way (5x the samples)
        X_train, y_train = shifted(X_train, y_train)
        X_train, X_val, X_test = (a.reshape(-1, 8, 8, 1) for a in (X_train, X_val, X_test))
        print(f"model: CNN on 8x8x1 images; the training set with its one-pixel shifts: {len(X_train)} images")
        model = cnn_model(args.seed, args.dtype)
    else:
        model = fnn.Sequential([
            fnn.layers.Dense(128, activation="relu", kernel_init="he_normal"),
            fnn.layers.Dense(64, activation="tanh"),
            fnn.layers.Dense(10),
        ], input_dim=64, seed=args.seed, dtype=args.dtype)
    # the CNN's learning rate decays to 0 over its few epochs (cosine)
    schedule = fnn.schedules.Cosine(epochs) if kind == "cnn" else None
    model.compile(loss="cross_entropy", optimizer=fnn.optim.Adam(lr=lr), lr_schedule=schedule)
    t0 = time.perf_counter()
    model.fit(X_train, y_train, epochs=epochs, batch_size=batch_size,
              validation_data=(X_val, y_val), verbose=1)
    train_time = time.perf_counter() - t0
    scores = model.evaluate(X_test, y_test)
    print(f"trained {epochs} epochs in {train_time:.2f}s; "
          f"test loss {scores['loss']:.4f}, test accuracy {scores['accuracy']:.4f}")
    return 0 if scores["accuracy"] >= goal else 1


def sample_text(model, vocab, seed_text, length, seq_len, temperature=0.8, rng=None):
    """Generate ``length`` characters after ``seed_text`` with a character model: each next character is drawn
    from softmax(logits / temperature) at the last step of the model's output on the last ``seq_len``
    characters."""
    from fastnn.datasets import encode_text
    rng = rng or np.random.default_rng(0)
    ids = list(encode_text(seed_text, vocab))
    out = []
    for _ in range(length):
        window = np.asarray(ids[-seq_len:], dtype=np.int64)[None, :]
        logits = np.asarray(model.predict(window)[0, -1], dtype=np.float64) / temperature
        p = np.exp(logits - logits.max())
        p /= p.sum()
        nxt = int(rng.choice(len(vocab), p=p))
        ids.append(nxt)
        out.append(vocab[nxt])
    return "".join(out)


def demo_lstm(args):
    """A character-level LSTM on the shipped Shakespeare text: Embedding - LSTM - Dense per step, trained on
    windows of the text to predict each next character; prints the loss per epoch and a generated sample."""
    import fastnn as fnn
    from fastnn.datasets import SHAKESPEARE_SOURCE, encode_text, load_text, text_windows

    if args.threads:
        fnn.set_num_threads(args.threads)
    epochs = 4 if args.epochs is None else args.epochs
    batch = 32 if args.batch_size is None else args.batch_size
    lr = 3e-3 if args.lr is None else args.lr
    text, vocab = load_text("shakespeare")
    if args.max_chars:
        text = text[:args.max_chars]
    ids = encode_text(text, vocab)
    split = int(len(ids) * 0.9)
    X, Y = text_windows(ids[:split], args.seq_len)
    Xv, Yv = text_windows(ids[split:], args.seq_len)
    if len(X) == 0 or len(Xv) == 0:
        print(f"demo: --max-chars {args.max_chars} leaves no window of --seq-len {args.seq_len}", file=sys.stderr)
        return 2
    print(f"fastnn {fnn.__version__} demo: character LSTM on {len(text):,} characters of Shakespeare "
          f"({len(vocab)} distinct), {len(X)} train / {len(Xv)} validation windows of {args.seq_len}, "
          f"{threads_text(fnn.get_num_threads())}")
    print(f"data: {SHAKESPEARE_SOURCE}")
    L = fnn.layers
    model = fnn.Sequential([
        L.Embedding(len(vocab), args.embed),
        L.LSTM(args.hidden, return_sequences=True),
        L.Dense(len(vocab)),
    ], input_shape=(None,), seed=args.seed, dtype=args.dtype)
    model.compile(loss="cross_entropy", optimizer=fnn.optim.Adam(lr=lr), clip_norm=5.0)
    before = model.evaluate(Xv, Yv)["loss"]
    print(f"untrained: validation loss {before:.4f} (uniform guessing: ln {len(vocab)} = {np.log(len(vocab)):.4f})")
    t0 = time.perf_counter()
    history = model.fit(X, Y, epochs=epochs, batch_size=batch, validation_data=(Xv, Yv), verbose=1)
    train_time = time.perf_counter() - t0
    after = history.history["val_loss"][-1]
    print(f"trained {epochs} epochs in {train_time:.2f}s; validation loss {before:.4f} -> {after:.4f} "
          f"(train loss {history.history['loss'][0]:.4f} -> {history.history['loss'][-1]:.4f})")
    seed_text = text[split:split + args.seq_len]
    sample = sample_text(model, vocab, seed_text, args.sample_len, args.seq_len, args.temperature,
                         np.random.default_rng(args.seed))
    print(f"sample (temperature {args.temperature}, after {seed_text[-40:]!r}):")
    print(sample)
    return 0 if after < before else 1


def main(argv=None):
    from fastnn._version import __version__
    parser = argparse.ArgumentParser(prog="python -m fastnn", description=__doc__)
    parser.add_argument("--version", action="version", version=f"fastnn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="train an MLP (or a CNN) on the bundled UCI digits and report the test accuracy; "
                                    "--model lstm: a character LSTM on the bundled Shakespeare text")
    p.add_argument("--model", default="mlp", choices=["mlp", "cnn", "lstm"],
                   help="mlp: 64-128-64-10 on the flat pixels (default); cnn: a CNN on 8x8x1 images; "
                        "lstm: a character-level LSTM that prints generated text")
    p.add_argument("--epochs", type=int, default=None, help="default: 20 (mlp), 4 (cnn, lstm)")
    p.add_argument("--batch-size", type=int, default=None, help="default: 32")
    p.add_argument("--lr", type=float, default=None,
                   help="Adam's learning rate; default: 2e-3 (mlp), 3e-3 (cnn, decaying to 0 by a cosine; lstm)")
    p.add_argument("--hidden", type=int, default=128, help="lstm: the LSTM's units")
    p.add_argument("--embed", type=int, default=32, help="lstm: the embedding size")
    p.add_argument("--seq-len", type=int, default=64, help="lstm: the training window length")
    p.add_argument("--max-chars", type=int, default=0, help="lstm: train on the first N characters (0: all)")
    p.add_argument("--sample-len", type=int, default=300, help="lstm: characters to generate")
    p.add_argument("--temperature", type=float, default=0.8, help="lstm: the sampling temperature")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="threads for kernels and BLAS (0: default)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    b = sub.add_parser("bench", help="benchmark fastnn against PyTorch and JAX (if installed) and plain numpy")
    b.add_argument("--workloads", default="",
                   help="comma-separated subset of W1,W2,W3,W4,mnist,digits (default: these), "
                   "of the CNN workloads C1,C2,C3,C4,Clayers,Cinfer,Cfirst (cnn: all of them) and of the recurrent "
                   "R1,R2,R3,R4 (rnn: all four)")
    b.add_argument("--repeats", type=int, default=3, help="interleaved repeats per workload (medians reported)")
    b.add_argument("--threads", type=int, default=2, help="threads for every peer (fastnn, torch, numpy's BLAS)")
    b.add_argument("--full", action="store_true", help="the issue's full units (whole 60k/100k epochs, 40 W2 steps)")
    b.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    b.add_argument("--png", default=None, metavar="PATH", help="also draw a bar chart (needs matplotlib)")
    b.add_argument("--rss", action="store_true",
                   help="also measure the peak RSS of W1 training per peer, each in a fresh subprocess "
                        "(alone, without --workloads: only that)")
    b.add_argument("--rss-workload", default="W1", choices=["W1", "C1", "C2", "C3", "C4", "R1", "R3", "R4"],
                   help="the training --rss measures (default W1; C1..C4: a CNN workload against torch NCHW and "
                        "channels_last; R1, R3, R4 (its LSTM at hidden 128): a recurrent one against torch)")
    b.add_argument("--quiet", action="store_true", help="no per-repeat progress on stderr")
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo(args)
    if args.command == "bench":
        if args.repeats < 1 or args.threads < 1:
            parser.error("--repeats and --threads must be >= 1")
        from fastnn import bench
        return bench.main(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
