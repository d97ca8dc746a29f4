"""The serving floors and peers of a trained tfp_vae model: `python write_floors.py ROOT MODEL FOLDER`.

Writes an identity SavedModel (the runtime's call overhead), the export's weights
for a numpy forward pass, and a hand-written export of the same network without
the in-graph normalisation and raw-unit outputs, as written (weights in variables)
and with its weights folded into constants as tfp_vae's export does, all with
the weights of the `.keras` file MODEL. Prints the paths.
"""

import os
import sys

import numpy as np

from common import D, K, report, use_checkout

root, model_file, folder = sys.argv[1:4]
use_checkout(root)
import tensorflow as tf  # noqa: E402

from tfp_vae._keras import tf_keras  # noqa: E402
from tfp_vae.export import frozen  # noqa: E402
from tfp_vae.model import GaussianVAE  # noqa: E402

model = tf_keras.models.load_model(model_file, custom_objects={"tfp_vae>GaussianVAE": GaussianVAE})


class Identity(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, D], tf.float32, name="x")])
    def serve(self, x):
        return {"x": tf.identity(x)}


identity = Identity()
tf.saved_model.save(identity, os.path.join(folder, "identity"), signatures={"serving_default": identity.serve})

dense = {"e0": model.encoder_mlp.dense_layers[0], "e1": model.encoder_mlp.dense_layers[1],
         "ep": model.encoder_params, "d0": model.decoder_mlp.dense_layers[0],
         "d1": model.decoder_mlp.dense_layers[1], "dl": model.decoder_loc, "ds": model.likelihood.dense}
arrays = {f"{k}w": layer.kernel.numpy() for k, layer in dense.items()}
arrays.update({f"{k}b": layer.bias.numpy() for k, layer in dense.items()})
arrays.update(mean=model.normalizer.mean.numpy(), scale=model.normalizer.scale.numpy())
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
tf.saved_model.save(hand, os.path.join(folder, "hand_frozen"), signatures={"serving_default": hand.serve_frozen})
report([os.path.join(folder, name) for name in ("identity", "weights.npz", "hand", "hand_frozen")])
