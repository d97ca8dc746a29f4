"""SavedModel export that TensorFlow Serving serves, with only TensorFlow present.

`export_saved_model(model, export_base)` writes `export_base/<version>/`, the
layout TF Serving polls, with these signatures (float32, batch-major, raw units):

| signature                   | inputs                      | outputs                                          |
|-----------------------------|-----------------------------|--------------------------------------------------|
| `serving_default`, `reconstruct` | `x` [B, D]             | `code_mean` [B, K], `mean`, `stddev`, `lower`, `upper` [B, D] |
| `encode`                    | `x` [B, D]                  | `code_mean` [B, K], `code_scale_tril` [B, K, K]  |
| `decode`                    | `z` [B, K]                  | `mean` [B, D], `stddev` [B, D]                   |
| `score`                     | `x` [B, D]                  | `elbo`, `reconstruction_log_prob`, `kl` [B]      |
| `sample`                    | `num_samples`, `seed` int32 | `x` [num_samples, D]                             |

Each signature is traced from the model's maths and its weights are folded into
the graph as constants: no Keras layer is saved (Keras's layer serialisation
cannot trace distribution-valued layers), the graph holds nothing but stock
TensorFlow ops, and a batch-1 call skips a variable read per weight, about 40%
of its latency above the runtime's call overhead (`benchmarks/speed.py`).
`serving_default` traces `model.folded_call`, whose raw-unit mean is folded into
the decoder's last layer: with constant weights that folding happens once, at load.
Weights stored this way are read-only, as served weights are. The version
folder is built beside its final name and renamed into place, so TF Serving
never sees half of one.
"""

import os
import re
import shutil
import tempfile

import tensorflow as tf
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2_as_graph

from tfp_vae.errors import ExportError
from tfp_vae.model import VariationalAutoencoder

SIGNATURES = ("serving_default", "reconstruct", "encode", "decode", "score", "sample")
# A GraphDef must stay under protobuf's 2 GiB; weights appear once per signature graph that uses them.
MAX_FROZEN_WEIGHT_BYTES = 256 * 2**20


def frozen(function: tf.types.experimental.PolymorphicFunction) -> tf.types.experimental.ConcreteFunction:
    """`function` (with an input signature) as one graph with the variables it reads folded into constants.

    The folded graph is imported and pruned to the traced inputs and named outputs,
    so a call runs one flat function rather than a wrapper around a nested call.
    """
    traced = function.get_concrete_function()
    constant, graph_def = convert_variables_to_constants_v2_as_graph(traced)
    imported = tf.compat.v1.wrap_function(lambda: tf.graph_util.import_graph_def(graph_def, name=""), [])
    tensor = imported.graph.get_tensor_by_name
    inputs = [tensor(placeholder.name) for placeholder in traced.inputs[:len(traced.structured_input_signature[0])]]
    outputs = tf.nest.pack_sequence_as(traced.structured_outputs, [tensor(output.name) for output in constant.outputs])
    return imported.prune(inputs, outputs)


class ServingModule(tf.Module):
    """The model's maths as tensor-only `tf.function`s with its weights as constants."""

    def __init__(self, model: VariationalAutoencoder):
        super().__init__(name="tfp_vae_serving")
        d, k = model.input_size, model.code_size
        rows = tf.TensorSpec([None, d], tf.float32, name="x")
        codes = tf.TensorSpec([None, k], tf.float32, name="z")

        def checked(x, width):
            # TF Serving feeds whatever width it is sent; refuse it here, by name.
            return tf.ensure_shape(x, [None, width])

        def reconstruct(x):
            return model.folded_call(checked(x, d))

        def encode(x):
            qz = model.encode(checked(x, d))
            return {"code_mean": qz.mean(), "code_scale_tril": qz.scale.to_dense()}

        def decode(z):
            px = model.decode(checked(z, k))
            return {"mean": px.mean(), "stddev": px.stddev()}

        def score(x):
            return model.score(checked(x, d))

        def sample(num_samples, seed):
            return {"x": model.sample(num_samples, seed)}

        self.reconstruct = frozen(tf.function(reconstruct, input_signature=[rows]))
        self.encode = frozen(tf.function(encode, input_signature=[rows]))
        self.decode = frozen(tf.function(decode, input_signature=[codes]))
        self.score = frozen(tf.function(score, input_signature=[rows]))
        self.sample = frozen(tf.function(sample, input_signature=[
            tf.TensorSpec([], tf.int32, name="num_samples"), tf.TensorSpec([], tf.int32, name="seed")]))

    def signatures(self) -> dict:
        return {"serving_default": self.reconstruct, "reconstruct": self.reconstruct, "encode": self.encode,
                "decode": self.decode, "score": self.score, "sample": self.sample}


def next_version(export_base: str) -> int:
    """One more than the highest numeric folder in `export_base`, or 1."""
    if not os.path.isdir(export_base):
        return 1
    versions = [int(name) for name in os.listdir(export_base) if re.fullmatch(r"\d+", name)]
    return max(versions, default=0) + 1


def export_saved_model(model: VariationalAutoencoder, export_base, version: int | None = None) -> str:
    """Writes `export_base/<version>/` atomically and returns that path.

    With no `version`, the next integer after the highest present. An existing
    version is never overwritten: TF Serving would hot-load the change.
    """
    export_base = os.fspath(export_base)
    if os.path.exists(export_base) and not os.path.isdir(export_base):
        raise ExportError(f"{export_base}: export base exists and is not a folder")
    version = next_version(export_base) if version is None else int(version)
    if version < 0:
        raise ExportError(f"{export_base}: version must be a non-negative integer, got {version}")
    final = os.path.join(export_base, str(version))
    if os.path.exists(final):
        raise ExportError(f"{final}: version {version} already exists; TF Serving versions are immutable")
    weight_bytes = sum(variable.shape.num_elements() * variable.dtype.size for variable in model.variables)
    if weight_bytes > MAX_FROZEN_WEIGHT_BYTES:
        raise ExportError(f"{final}: {weight_bytes / 2**20:.0f} MiB of weights is more than the "
                          f"{MAX_FROZEN_WEIGHT_BYTES // 2**20} MiB that fit in a SavedModel graph as constants")
    os.makedirs(export_base, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=export_base)
    try:
        module = ServingModule(model)
        # Served graphs take no gradients; saving custom ones fails on Student-t sampling's captures.
        tf.saved_model.save(module, staging, signatures=module.signatures(),
                            options=tf.saved_model.SaveOptions(experimental_custom_gradients=False))
        os.rename(staging, final)
    except OSError as error:
        raise ExportError(f"{final}: could not write the export ({error.strerror or error})") from error
    finally:
        if os.path.exists(staging):
            shutil.rmtree(staging, ignore_errors=True)
    return final
