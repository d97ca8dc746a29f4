"""The one place tfp_vae imports Keras.

`tfp.layers` is built on Keras 2, which ships as the `tf_keras` package. Keras 3
(`import keras`) objects must never mix with it, so every module takes Keras
from here.
"""

import tf_keras

__all__ = ["tf_keras"]
