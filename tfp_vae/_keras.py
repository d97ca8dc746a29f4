"""The one place tfp_vae imports Keras.

`tfp.layers` is built on Keras 2, which ships as the `tf_keras` package. Keras 3
(`import keras`) objects must never mix with it, so every module takes Keras
from here. `serializable` registers a class under the package's name, so a model
file names it as `tfp_vae>Class`.
"""

import tf_keras

PACKAGE = "tfp_vae"
serializable = tf_keras.saving.register_keras_serializable(PACKAGE)

__all__ = ["PACKAGE", "serializable", "tf_keras"]
