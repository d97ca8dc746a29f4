"""Training and serving speed of tfp_vae against hand-written TensorFlow, PyTorch and numpy.

    python benchmarks/speed.py [--repeats 3] [--out benchmarks/results/speed.md]

Training: D=64, hidden 256x2, K=16, batch 256, 20,000 rows, Adam. Each implementation runs in
fresh processes (`--repeats` of them); each process times 5 epochs after a warm-up epoch and
reports its median; the table gives the median over processes, as examples per second and as a
ratio to `GaussianVAE.fit`. The same maths everywhere: full-covariance posterior, learned
sigma(z) floored at 1e-3, reparameterised single sample, analytic KL. PyTorch needs the `[bench]`
extra (torch==2.13.0, the CPU build).

Serving: the exported SavedModel, loaded in a fresh process with TensorFlow only, against two
floors measured in the same process: an identity SavedModel signature (the runtime's call
overhead) and a numpy forward pass of the same weights; and against a hand-written export of the
same network without the in-graph normalisation and raw-unit outputs, as written (weights in
variables) and with its weights folded into constants as tfp_vae's export does.
"""

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile

from report import write_report

D, HIDDEN, K, BATCH, ROWS, EPOCHS = 64, 256, 16, 256, 20_000, 5
ROUNDS, SMALL_CALLS, LARGE_CALLS = 10, 200, 30  # serving calls per round, batch 1 and batch 1024
FLOP_PER_EXAMPLE = 1.3e6
HERE = os.path.dirname(os.path.abspath(__file__))



def training_rows():
    """ROWS x D float32 rows: eight factors plus noise, at feature scales from 0.01 to 1,000."""
    import numpy as np
    rng = np.random.default_rng(0)
    x = rng.normal(size=(ROWS, 8)) @ rng.normal(size=(8, D)) + 0.3 * rng.normal(size=(ROWS, D))
    return (x * np.geomspace(1e-2, 1e3, D) + 5.0).astype(np.float32)


COMMON = f"""
import os, sys, time, json
import numpy as np
sys.path.insert(0, {HERE!r})
from speed import D, HIDDEN, K, BATCH, ROWS, EPOCHS, ROUNDS, SMALL_CALLS, LARGE_CALLS, training_rows
rng = np.random.default_rng(0)
x = training_rows()
def report(times):
    print(json.dumps(ROWS / np.median(times)))
"""

TFP_VAE = COMMON + """
sys.path.insert(0, sys.argv[1])
from tfp_vae import GaussianVAE
from tfp_vae._keras import tf_keras
model = GaussianVAE(D, K, hidden=(HIDDEN, HIDDEN), seed=0)
model.compile(tf_keras.optimizers.Adam(1e-3))
model.adapt(x)
times = []
class Clock(tf_keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None): self.start = time.perf_counter()
    def on_epoch_end(self, epoch, logs=None): times.append(time.perf_counter() - self.start)
model.fit(x, batch_size=BATCH, epochs=EPOCHS + 1, verbose=0, callbacks=[Clock()])
report(times[1:])
"""

RAW_TF = COMMON + """
import tensorflow as tf
jit = sys.argv[2] == "xla"
tf.random.set_seed(0)
mean, scale = x.mean(0), x.std(0)
def dense(n_in, n_out):
    limit = np.sqrt(6 / (n_in + n_out))
    return [tf.Variable(rng.uniform(-limit, limit, (n_in, n_out)).astype(np.float32)), tf.Variable(np.zeros(n_out, np.float32))]
tril_size = K * (K + 1) // 2
layers = [dense(D, HIDDEN), dense(HIDDEN, HIDDEN), dense(HIDDEN, K + tril_size),
          dense(K, HIDDEN), dense(HIDDEN, HIDDEN), dense(HIDDEN, 2 * D)]
variables = [v for layer in layers for v in layer]
rows, cols = np.tril_indices(K)
scatter = np.zeros((K, K), np.int64); scatter[rows, cols] = np.arange(tril_size) + 1
is_diag = tf.constant(np.eye(K, dtype=bool))
optimizer = tf.optimizers.Adam(1e-3)
def mlp(h, first, last):
    for w, b in layers[first:last - 1]:
        h = tf.nn.leaky_relu(h @ w + b)
    w, b = layers[last - 1]
    return h @ w + b
data = tf.constant(x)
@tf.function(jit_compile=jit)
def step(rows):
    batch = tf.gather(data, rows)
    eps = tf.random.normal([BATCH, K])
    u = (batch - mean) / scale
    with tf.GradientTape() as tape:
        params = mlp(u, 0, 3)
        loc = params[:, :K]
        flat = tf.pad(params[:, K:], [[0, 0], [1, 0]])
        tril = tf.gather(flat, scatter, axis=1)
        tril = tf.where(is_diag, tf.nn.softplus(tril) + 1e-5, tril)
        z = loc + tf.linalg.matvec(tril, eps)
        out = mlp(z, 3, 6)
        mu, sigma = out[:, :D], 1e-3 + tf.nn.softplus(out[:, D:])
        distortion = tf.reduce_sum(0.5 * np.log(2 * np.pi) + tf.math.log(sigma) + 0.5 * tf.square((u - mu) / sigma), 1)
        diag = tf.linalg.diag_part(tril)
        rate = 0.5 * (tf.reduce_sum(tf.square(tril), [1, 2]) + tf.reduce_sum(tf.square(loc), 1) - K
                      - 2 * tf.reduce_sum(tf.math.log(diag), 1))
        loss = tf.reduce_mean(distortion + rate)
    optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
    return loss
times = []
for epoch in range(EPOCHS + 1):
    order = tf.reshape(tf.random.shuffle(tf.range(ROWS))[:ROWS // BATCH * BATCH], [-1, BATCH])
    start = time.perf_counter()
    for rows in order:
        loss = step(rows)
    float(loss)
    times.append(time.perf_counter() - start)
report(times[1:])
"""

TORCH = COMMON + """
import math
import torch
torch.manual_seed(0)
compiled = sys.argv[2] == "compile"
class VAE(torch.nn.Module):
    def __init__(self):
        super().__init__()
        act = torch.nn.LeakyReLU(0.2)
        self.encoder = torch.nn.Sequential(torch.nn.Linear(D, HIDDEN), act, torch.nn.Linear(HIDDEN, HIDDEN), act,
                                           torch.nn.Linear(HIDDEN, K + K * (K + 1) // 2))
        self.decoder = torch.nn.Sequential(torch.nn.Linear(K, HIDDEN), act, torch.nn.Linear(HIDDEN, HIDDEN), act,
                                           torch.nn.Linear(HIDDEN, 2 * D))
        rows, cols = torch.tril_indices(K, K)
        self.register_buffer("rows", rows); self.register_buffer("cols", cols)
        self.register_buffer("mean", torch.tensor(x.mean(0))); self.register_buffer("scale", torch.tensor(x.std(0)))
    def forward(self, batch):
        u = (batch - self.mean) / self.scale
        params = self.encoder(u)
        loc = params[:, :K]
        tril = torch.zeros(batch.shape[0], K, K)
        tril[:, self.rows, self.cols] = params[:, K:]
        diag = torch.nn.functional.softplus(torch.diagonal(tril, dim1=1, dim2=2)) + 1e-5
        tril = torch.tril(tril, -1) + torch.diag_embed(diag)
        z = loc + (tril @ torch.randn(batch.shape[0], K, 1)).squeeze(-1)
        out = self.decoder(z)
        mu, sigma = out[:, :D], 1e-3 + torch.nn.functional.softplus(out[:, D:])
        distortion = (0.5 * math.log(2 * math.pi) + sigma.log() + 0.5 * ((u - mu) / sigma) ** 2).sum(1)
        rate = 0.5 * ((tril ** 2).sum((1, 2)) + (loc ** 2).sum(1) - K - 2 * diag.log().sum(1))
        return (distortion + rate).mean()
model = VAE()
optimizer = torch.optim.Adam(model.parameters(), 1e-3)
def step(batch):
    optimizer.zero_grad(set_to_none=True)
    loss = model(batch)
    loss.backward()
    optimizer.step()
    return loss
if compiled:
    step = torch.compile(step)
data = torch.tensor(x)
times = []
for epoch in range(EPOCHS + 1):
    order = torch.randperm(ROWS)
    start = time.perf_counter()
    for first in range(0, ROWS - BATCH + 1, BATCH):
        step(data[order[first:first + BATCH]])
    times.append(time.perf_counter() - start)
report(times[1:])
"""

SERVING = COMMON + r"""
import tensorflow as tf
for name in ("tfp_vae", "tensorflow_probability", "tf_keras"):
    assert name not in sys.modules
export, identity, weights_path, hand, hand_frozen = sys.argv[1:6]
loaded = tf.saved_model.load(export)
trivial = tf.saved_model.load(identity)
handwritten = tf.saved_model.load(hand)
handwritten_frozen = tf.saved_model.load(hand_frozen)
weights = dict(np.load(weights_path))
def numpy_reconstruct(batch):
    u = (batch - weights["mean"]) / weights["scale"]
    h = u
    for i in range(2):
        h = h @ weights[f"e{i}w"] + weights[f"e{i}b"]; h = np.where(h > 0, h, 0.2 * h)
    code = (h @ weights["epw"] + weights["epb"])[:, :K]
    h = code
    for i in range(2):
        h = h @ weights[f"d{i}w"] + weights[f"d{i}b"]; h = np.where(h > 0, h, 0.2 * h)
    loc = h @ weights["dlw"] + weights["dlb"]
    raw = h @ weights["dsw"] + weights["dsb"]
    sigma = 1e-3 + np.logaddexp(0, raw)
    return code, loc * weights["scale"] + weights["mean"], sigma * weights["scale"]
def latencies(call, batch, count):
    for _ in range(5):
        call(batch)
    out = []
    for _ in range(count):
        start = time.perf_counter(); call(batch); out.append(time.perf_counter() - start)
    return out
one, many = x[:1], x[:1024]
calls = {
    "identity signature (floor)": lambda b: trivial.signatures["serving_default"](x=tf.constant(b)),
    "numpy forward pass (floor)": numpy_reconstruct,
    "hand-written export, no normalisation": lambda b: handwritten.signatures["serving_default"](x=tf.constant(b)),
    "hand-written export, no normalisation, weights as constants":
        lambda b: handwritten_frozen.signatures["serving_default"](x=tf.constant(b)),
    "tfp_vae serving_default": lambda b: loaded.signatures["serving_default"](x=tf.constant(b)),
    "tfp_vae score": lambda b: loaded.signatures["score"](x=tf.constant(b)),
}
np.testing.assert_allclose(numpy_reconstruct(many)[1], loaded.signatures["serving_default"](x=tf.constant(many))["mean"].numpy(), rtol=1e-3, atol=1e-2)
# Rounds interleave the calls, so drift in the machine's speed reaches every row alike.
small, large = {name: [] for name in calls}, {name: [] for name in calls}
for _ in range(ROUNDS):
    for name, call in calls.items():
        small[name] += latencies(call, one, SMALL_CALLS)
        large[name] += latencies(call, many, LARGE_CALLS)
results = {name: {"p50_us": float(np.median(small[name]) * 1e6), "p99_us": float(np.quantile(small[name], 0.99) * 1e6),
                  "rows_per_s": float(1024 / np.median(large[name]))} for name in calls}
print(json.dumps(results))
"""


def run(code, *args):
    completed = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                               env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    if completed.returncode != 0:
        raise RuntimeError(completed.stderr[-3000:])
    return json.loads(completed.stdout.strip().splitlines()[-1])


def write_serving_artifacts(folder):
    """Trains briefly, exports with tfp_vae, and writes the floors: identity SavedModel, weights, hand export."""
    sys.path.insert(0, os.path.join(HERE, ".."))
    import numpy as np
    import tensorflow as tf
    from tfp_vae import GaussianVAE, export_saved_model
    from tfp_vae._keras import tf_keras
    from tfp_vae.export import frozen
    x = training_rows()
    model = GaussianVAE(D, K, hidden=(HIDDEN, HIDDEN), seed=0)
    model.compile(tf_keras.optimizers.Adam(1e-3))
    model.fit(x, batch_size=BATCH, epochs=1, verbose=0)
    export = export_saved_model(model, os.path.join(folder, "export"))

    class Identity(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, D], tf.float32, name="x")])
        def serve(self, x):
            return {"x": tf.identity(x)}
    identity = Identity()
    tf.saved_model.save(identity, os.path.join(folder, "identity"), signatures={"serving_default": identity.serve})

    dense = {"e0": model.encoder_mlp.dense_layers[0], "e1": model.encoder_mlp.dense_layers[1], "ep": model.encoder_params,
             "d0": model.decoder_mlp.dense_layers[0], "d1": model.decoder_mlp.dense_layers[1], "dl": model.decoder_loc,
             "ds": model.decoder_scale_params.dense}
    arrays = {f"{k}w": layer.kernel.numpy() for k, layer in dense.items()}
    arrays.update({f"{k}b": layer.bias.numpy() for k, layer in dense.items()})
    arrays.update(mean=model.standardize.mean.numpy(), scale=model.standardize.scale.numpy())
    np.savez(os.path.join(folder, "weights.npz"), **arrays)

    class Hand(tf.Module):
        def __init__(self):
            super().__init__()
            self.v = {k: tf.Variable(v) for k, v in arrays.items()}

        @tf.function(input_signature=[tf.TensorSpec([None, D], tf.float32, name="x")])
        def serve(self, x):
            def dense(h, name):
                # BiasAdd, not +, so grappler fuses MatMul, bias and activation as it does for Keras's Dense.
                return tf.nn.bias_add(h @ self.v[f"{name}w"], self.v[f"{name}b"])
            h = x
            for i in range(2):
                h = tf.nn.leaky_relu(dense(h, f"e{i}"))
            code = dense(h, "ep")[:, :K]
            h = code
            for i in range(2):
                h = tf.nn.leaky_relu(dense(h, f"d{i}"))
            return {"code_mean": code, "mean": dense(h, "dl"), "stddev": 1e-3 + tf.nn.softplus(dense(h, "ds"))}
    hand = Hand()
    tf.saved_model.save(hand, os.path.join(folder, "hand"), signatures={"serving_default": hand.serve})
    hand.serve_frozen = frozen(hand.serve)
    tf.saved_model.save(hand, os.path.join(folder, "hand_frozen"),
                        signatures={"serving_default": hand.serve_frozen})
    return [export, os.path.join(folder, "identity"), os.path.join(folder, "weights.npz"),
            os.path.join(folder, "hand"), os.path.join(folder, "hand_frozen")]


def machine():
    import numpy as np
    import tensorflow as tf
    versions = [f"Python {platform.python_version()}", f"TensorFlow {tf.__version__}", f"numpy {np.__version__}"]
    try:
        import torch
        versions.append(f"PyTorch {torch.__version__}")
    except ImportError:
        pass
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    mhz = next((float(line.split(":", 1)[1]) for line in open("/proc/cpuinfo") if line.startswith("cpu MHz")), 0.0)
    return f"{os.cpu_count()} cores ({model}, {mhz / 1000:.2f} GHz), " + ", ".join(versions), mhz


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=os.path.join(HERE, "results", "speed.md"))
    args = parser.parse_args(argv)
    root = os.path.join(HERE, "..")
    implementations = {"tfp_vae GaussianVAE.fit": (TFP_VAE, "xla"), "raw TF, tf.function": (RAW_TF, "plain"),
                       "raw TF, tf.function + XLA": (RAW_TF, "xla")}
    if importlib.util.find_spec("torch"):
        implementations.update({"PyTorch eager": (TORCH, "eager"), "PyTorch torch.compile": (TORCH, "compile")})
    else:
        print("PyTorch not installed: pip install 'tfp-vae[bench]' to include it", file=sys.stderr)
    throughput = {}
    for name, (code, arg) in implementations.items():
        throughput[name] = statistics.median(run(code, root, arg) for _ in range(args.repeats))
        print(f"{name}: {throughput[name]:,.0f} examples/s", file=sys.stderr, flush=True)
    described, mhz = machine()
    peak = os.cpu_count() * 32 * mhz * 1e6  # two 256-bit FMA pipes: 32 float32 FLOP per cycle per core
    base = throughput["tfp_vae GaussianVAE.fit"]
    lines = ["# Speed", "", f"`python benchmarks/speed.py --repeats {args.repeats}` on {described}.", "",
             f"## Training (D={D}, hidden {HIDDEN}x2, K={K}, batch {BATCH}, {ROWS:,} rows; median of {args.repeats} "
             f"fresh processes x {EPOCHS} epochs)", "",
             "| implementation | examples/s | ratio to GaussianVAE.fit | share of peak FLOP/s |", "|---|---|---|---|"]
    for name, value in sorted(throughput.items(), key=lambda item: -item[1]):
        lines.append(f"| {name} | {value:,.0f} | {value / base:.2f} | {value * FLOP_PER_EXAMPLE / peak:.1%} |")
    fastest = max(throughput, key=throughput.get)
    lines += ["", f"Peak taken as {os.cpu_count()} cores x 32 float32 FLOP/cycle x {mhz / 1000:.2f} GHz = "
                  f"{peak / 1e9:.0f} GFLOP/s, at {FLOP_PER_EXAMPLE / 1e6:.1f} MFLOP per example (forward and backward).",
              f"Goal (tfp_vae the fastest): {'met' if fastest.startswith('tfp_vae') else 'NOT met'}; fastest is {fastest}."]
    with tempfile.TemporaryDirectory() as folder:
        serving = run(SERVING, *write_serving_artifacts(folder))
    floor, numpy_floor = serving["identity signature (floor)"], serving["numpy forward pass (floor)"]
    lines += ["", f"## Serving (fresh process, TensorFlow only; batch 1: {ROUNDS * SMALL_CALLS:,} calls, batch 1024: "
                  f"{ROUNDS * LARGE_CALLS} calls, interleaved in {ROUNDS} rounds)", "",
              "| call | batch 1 p50, us | batch 1 p99, us | batch 1024 rows/s |", "|---|---|---|---|"]
    for name, value in serving.items():
        lines.append(f"| {name} | {value['p50_us']:.0f} | {value['p99_us']:.0f} | {value['rows_per_s']:,.0f} |")
    ours, hand = serving["tfp_vae serving_default"], serving["hand-written export, no normalisation, weights as constants"]
    lines += ["",
              f"- batch 1: serving_default p50 is {ours['p50_us'] / floor['p50_us']:.2f}x the identity signature "
              f"(goal 1.5x: {'met' if ours['p50_us'] <= 1.5 * floor['p50_us'] else 'NOT met'}).",
              f"- batch 1024: {ours['rows_per_s'] / numpy_floor['rows_per_s']:.2f}x numpy's rows/s "
              f"(goal 1.3x: {'met' if ours['rows_per_s'] >= 1.3 * numpy_floor['rows_per_s'] else 'NOT met'}).",
              f"- normalisation and raw-unit outputs in the graph cost {ours['p50_us'] / hand['p50_us'] - 1:+.1%} at "
              f"batch 1 and {hand['rows_per_s'] / ours['rows_per_s'] - 1:+.1%} at batch 1024 against the hand-written "
              "export with its weights folded the same way (goal: at most 10%)."]
    write_report(lines, args.out)


if __name__ == "__main__":
    main()
