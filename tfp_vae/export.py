"""SavedModel export that TensorFlow Serving serves, with only TensorFlow present.

`export_saved_model(model, export_base)` writes `export_base/<version>/`, the
layout TF Serving polls, with these signatures (float32, batch-major, raw units):

| signature                   | inputs                      | outputs                                          |
|-----------------------------|-----------------------------|--------------------------------------------------|
| `serving_default`, `reconstruct` | `x` [B, D]             | `code_mean` [B, K], `mean`, `stddev`, `lower`, `upper` [B, D] |
| `encode`                    | `x` [B, D]                  | `code_mean` [B, K], `code_scale_tril` [B, K, K]  |
| `decode`                    | `z` [B, K]                  | `mean` [B, D], `stddev` [B, D]                   |
| `score`                     | `x` [B, D]                  | `elbo`, `reconstruction_log_prob`, `kl` [B]      |
| `sample`                    | `num_samples`, `seed` int32 | `x` [num_samples, D], `integer_columns` rounded  |
| `impute` (`allow_missing` models) | `x` [B, D], NaN = missing | `x` [B, D] filled, `stddev` [B, D] (0 where observed) |

Each signature is traced from the model's maths and its weights are folded into
the graph as constants: no Keras layer is saved (Keras's layer serialisation
cannot trace distribution-valued layers), the graph holds nothing but stock
TensorFlow ops, and a batch-1 call skips a variable read per weight, about 40%
of its latency above the runtime's call overhead (`benchmarks/speed.py`).
`serving_default` traces `model.folded_call`, whose raw-unit mean is folded into
the decoder's last layer: with constant weights that folding happens once, at load.
Weights stored this way are read-only, as served weights are. The version
folder is built beside its final name and renamed into place, so TF Serving
never sees half of one. `assets.extra/tf_serving_warmup_requests` holds one
request per signature, which TF Serving runs when it loads the version, so the
first real request finds the graph warm.
"""

import errno
import json
import os
import re
import shutil

import numpy as np
import tensorflow as tf
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2_as_graph

from tfp_vae.config import MAX_VERSION
from tfp_vae.errors import ExportError, write_failure_cause
from tfp_vae.files import give_usual_permissions, staging_folder
from tfp_vae.model import VariationalAutoencoder
from tfp_vae.serving import warmup_record

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

    def __init__(self, model: VariationalAutoencoder, imputer=None):
        super().__init__(name="tfp_vae_serving")
        imputer = model if imputer is None else imputer
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
            mean, stddev, _, _ = model.decoder_outputs(checked(z, k))
            return {"mean": mean, "stddev": stddev}

        def score(x):
            return model.score(checked(x, d))

        def sample(num_samples, seed):
            return {"x": model.sample(num_samples, seed)}

        def impute(x):
            filled, stddev = imputer.imputation(checked(x, d))
            return {"x": filled, "stddev": stddev}

        self.reconstruct = frozen(tf.function(reconstruct, input_signature=[rows]))
        self.encode = frozen(tf.function(encode, input_signature=[rows]))
        self.decode = frozen(tf.function(decode, input_signature=[codes]))
        self.score = frozen(tf.function(score, input_signature=[rows]))
        self.sample = frozen(tf.function(sample, input_signature=[
            tf.TensorSpec([], tf.int32, name="num_samples"), tf.TensorSpec([], tf.int32, name="seed")]))
        # Only a model trained on gaps can fill them.
        self.impute = (frozen(tf.function(impute, input_signature=[rows]))
                       if getattr(model, "allow_missing", False) else None)

    def signatures(self) -> dict:
        signatures = {"serving_default": self.reconstruct, "reconstruct": self.reconstruct, "encode": self.encode,
                      "decode": self.decode, "score": self.score, "sample": self.sample}
        return {**signatures, "impute": self.impute} if self.impute is not None else signatures


def next_version(export_base: str) -> int:
    """One more than the highest numeric folder in `export_base`, or 1."""
    if not os.path.isdir(export_base):
        return 1
    versions = [int(name) for name in os.listdir(export_base) if re.fullmatch(r"\d+", name)]
    return max(versions, default=0) + 1


STAGING = ".tmp-"
ASSETS_EXTRA = "assets.extra"  # what TF Serving reads beside the graph (warm-up requests; here, thresholds too)
WARMUP_FILE = "tf_serving_warmup_requests"  # a TFRecord of PredictionLogs that TF Serving replays at load


def warmup_inputs(model: VariationalAutoencoder, signatures: dict) -> dict:
    """One small request per signature, for TF Serving to run at load (`assets.extra/tf_serving_warmup_requests`).

    Its row is the decoder's centre at the prior's mean: inside the data's support, where a row of zeros need not be
    (under `transform="log"`).
    """
    code = np.zeros([1, model.code_size], np.float32)
    rows = model.raw_center(model.decoder_params(code)[0]).numpy().astype(np.float32)
    gappy = rows.copy()
    gappy[0, 0] = np.nan
    inputs = {"serving_default": {"x": rows}, "reconstruct": {"x": rows}, "encode": {"x": rows},
              "decode": {"z": code}, "score": {"x": rows},
              "sample": {"num_samples": np.int32(1), "seed": np.int32(0)}, "impute": {"x": gappy}}
    return {name: inputs[name] for name in signatures}


def export_saved_model(model: VariationalAutoencoder, export_base, version: int | None = None,
                       thresholds: dict | None = None, imputer=None) -> str:
    """Writes `export_base/<version>/` atomically and returns that path.

    With no `version`, the next integer after the highest present, taken when the
    export is complete: two exports racing on one base get successive versions. An
    existing version is never overwritten: TF Serving would hot-load the change.
    The folder gets the permissions the umask gives, so a server running as another
    user can read it. `thresholds` (a run's `thresholds.json`: validation quantiles of
    the ELBO that `score` returns) travel as `assets.extra/thresholds.json`.
    `imputer` fills gaps in the `impute` signature in the model's place: a run's
    blend of candidates (`runs.load_imputer`).
    """
    export_base = os.fspath(export_base)
    if os.path.exists(export_base) and not os.path.isdir(export_base):
        raise ExportError(f"{export_base}: export base exists and is not a folder")
    if version is not None and not 0 <= int(version) <= MAX_VERSION:
        raise ExportError(f"{export_base}: version must be an integer from 0 to {MAX_VERSION}, got {version}")
    final = os.path.join(export_base, str(next_version(export_base) if version is None else int(version)))
    if os.path.exists(final):
        raise ExportError(f"{final}: version {version} already exists; TF Serving versions are immutable")
    served = [model] + [member for member in getattr(imputer, "members", []) if member is not model]
    weight_bytes = sum(member.constant_bytes for member in served)
    if weight_bytes > MAX_FROZEN_WEIGHT_BYTES:
        raise ExportError(f"{final}: {weight_bytes / 2**20:.0f} MiB of weights is more than the "
                          f"{MAX_FROZEN_WEIGHT_BYTES // 2**20} MiB that fit in a SavedModel graph as constants")
    try:
        os.makedirs(export_base, exist_ok=True)
        staging = staging_folder(export_base, STAGING)
    except OSError as error:
        raise ExportError(f"{export_base}: cannot write the export ({error.strerror or error})") from error
    try:
        module = ServingModule(model, imputer)
        # Served graphs take no gradients; saving custom ones fails on Student-t sampling's captures.
        tf.saved_model.save(module, staging, signatures=module.signatures(),
                            options=tf.saved_model.SaveOptions(experimental_custom_gradients=False))
        os.makedirs(os.path.join(staging, ASSETS_EXTRA))
        with tf.io.TFRecordWriter(os.path.join(staging, ASSETS_EXTRA, WARMUP_FILE)) as writer:
            for signature, inputs in warmup_inputs(model, module.signatures()).items():
                writer.write(warmup_record(signature, inputs))
        if thresholds is not None:
            with open(os.path.join(staging, ASSETS_EXTRA, "thresholds.json"), "w") as file:
                json.dump(thresholds, file, indent=2)
        give_usual_permissions(staging)
        return rename_into_place(staging, export_base, version)
    except (OSError, tf.errors.OpError) as error:  # a full disk, a folder gone read-only (ours or TF's writers)
        raise ExportError(f"{final}: could not write the export ({write_failure_cause(error)})") from None
    finally:
        if os.path.exists(staging):
            shutil.rmtree(staging, ignore_errors=True)


def rename_into_place(staging: str, export_base: str, version: int | None) -> str:
    """Renames the finished export to its version; with no version asked, the next free one, even in a race."""
    while True:
        final = os.path.join(export_base, str(next_version(export_base) if version is None else int(version)))
        try:
            os.rename(staging, final)
            return final
        except OSError as error:
            if error.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            if version is not None:
                raise ExportError(f"{final}: version {version} already exists; TF Serving versions are "
                                  "immutable") from None
