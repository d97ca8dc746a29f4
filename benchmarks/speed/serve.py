"""Serving latency and throughput, in a process with TensorFlow alone.

    python serve.py ARTIFACTS_JSON

ARTIFACTS_JSON maps call names to what they time: `exports` {row name: SavedModel}, and the
floors `identity`, `weights` (.npz for numpy), `hand`, `hand_frozen`. Prints, per call, batch-1
p50/p99 in microseconds and batch-1024 rows per second, and each export's ops per signature graph.
"""

import json
import sys
import time

import numpy as np
import tensorflow as tf

from common import K, LARGE_CALLS, ROUNDS, SMALL_CALLS, report, training_rows

for name in ("tfp_vae", "tensorflow_probability", "tf_keras"):
    assert name not in sys.modules
artifacts = json.load(open(sys.argv[1]))
x = training_rows()
exports = {name: tf.saved_model.load(path) for name, path in artifacts["exports"].items()}
trivial = tf.saved_model.load(artifacts["identity"])
handwritten = tf.saved_model.load(artifacts["hand"])
handwritten_frozen = tf.saved_model.load(artifacts["hand_frozen"])
weights = dict(np.load(artifacts["weights"]))


def numpy_reconstruct(batch):
    h = (batch - weights["mean"]) / weights["scale"]
    for i in range(2):
        h = h @ weights[f"e{i}w"] + weights[f"e{i}b"]
        h = np.where(h > 0, h, 0.2 * h)
    code = (h @ weights["epw"] + weights["epb"])[:, :K]
    h = code
    for i in range(2):
        h = h @ weights[f"d{i}w"] + weights[f"d{i}b"]
        h = np.where(h > 0, h, 0.2 * h)
    loc = h @ weights["dlw"] + weights["dlb"]
    sigma = 1e-3 + np.logaddexp(0, h @ weights["dsw"] + weights["dsb"])
    return code, loc * weights["scale"] + weights["mean"], sigma * weights["scale"]


def latencies(call, batch, count):
    for _ in range(5):
        call(batch)
    out = []
    for _ in range(count):
        start = time.perf_counter()
        call(batch)
        out.append(time.perf_counter() - start)
    return out


def signature(model, name):
    return lambda batch: model.signatures[name](x=tf.constant(batch))


one, many = x[:1], x[:1024]
calls = {
    "identity signature (floor)": signature(trivial, "serving_default"),
    "numpy forward pass (floor)": numpy_reconstruct,
    "hand-written export, no normalisation": signature(handwritten, "serving_default"),
    "hand-written export, no normalisation, weights as constants": signature(handwritten_frozen, "serving_default"),
}
for name, model in exports.items():
    calls[f"{name} serving_default"] = signature(model, "serving_default")
    calls[f"{name} score"] = signature(model, "score")
today = next(iter(exports.values()))
np.testing.assert_allclose(numpy_reconstruct(many)[1], signature(today, "serving_default")(many)["mean"].numpy(),
                           rtol=1e-3, atol=1e-2)
# Rounds interleave the calls, so drift in the machine's speed reaches every row alike.
small, large = {name: [] for name in calls}, {name: [] for name in calls}
for _ in range(ROUNDS):
    for name, call in calls.items():
        small[name] += latencies(call, one, SMALL_CALLS)
        large[name] += latencies(call, many, LARGE_CALLS)
results = {name: {"p50_us": float(np.median(small[name]) * 1e6), "p99_us": float(np.quantile(small[name], 0.99) * 1e6),
                  "rows_per_s": float(1024 / np.median(large[name]))} for name in calls}


def op_count(function) -> int:
    """Ops a call runs: the signature's graph and, through its call ops, every function it calls."""
    graph = function.graph.as_graph_def()
    library = {called.signature.name: called.node_def for called in graph.library.function}

    def count(nodes) -> int:
        called = [node.attr["f"].func.name for node in nodes if "f" in node.attr]
        return len(nodes) + sum(count(library[name]) for name in called if name in library)
    return count(graph.node)


ops = {name: {signature_name: op_count(function) for signature_name, function in model.signatures.items()}
       for name, model in exports.items()}
report({"calls": results, "ops": ops})
