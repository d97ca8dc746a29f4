"""The layers a VAE for real-valued data is built from.

- `Standardize`: raw data to standardised units inside the graph, and back
  (`fold_output`: back, folded into the dense layer before it).
- `Whiten`: standardised, then decorrelated (ZCA), so the decoder's independent
  noise becomes a full covariance in raw units.
- `MLP`: the hidden layers of the encoder and the decoder.
- `FullPosterior` / `DiagonalPosterior`: q(z|x) from a parameter vector.
- `DecoderScale`: the raw decoder-scale parameters for each `decoder_scale` mode.
- `DecoderNormal`: p(x|z), an `IndependentNormal` whose scale is floored.
- `DecoderFullNormal`: p(x|z) with a full covariance (`decoder_scale="full"`),
  a `MultivariateNormalTriL` whose scale's diagonal is floored.

A decoder's scale in model units is either a tensor of per-feature standard
deviations [..., D] or, for a full covariance, a `LinearOperatorLowerTriangular`
S [..., D, D] with covariance S S^T (what each distribution's `.scale` holds).

Every layer's `get_config` returns exactly its constructor arguments, so a saved
model is rebuilt from its config rather than from pickled Python lambdas.
"""

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_vae._keras import serializable, tf_keras
from tfp_vae.saving import RestorableLayer

tfd = tfp.distributions
tfpl = tfp.layers

# A DistributionLambda turns its distribution into a tensor on every call; the
# mean costs nothing, where the default, a sample, would draw noise nobody uses.
MEAN = tfd.Distribution.mean


def base_config(layer: tf_keras.layers.Layer) -> dict:
    """The base Keras arguments (name, trainable, dtype) of a layer."""
    return tf_keras.layers.Layer.get_config(layer)


class RebuiltFromConfig:
    """`from_config` as the constructor: for layers (and models) whose config is their constructor's arguments.

    For the distribution layers, this replaces `Lambda`'s unpickling of functions.
    """

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def softplus_inverse(y):
    """The raw parameter whose softplus is `y` (for `y > 0`)."""
    return tfp.math.softplus_inverse(y)


@serializable
class MLP(tf_keras.layers.Layer):
    """Dense layers of the given widths, each followed by `activation`.

    #### Example

    ```python
    mlp = MLP(units=(64, 64), activation="leaky_relu", seed=0)
    mlp(tf.zeros([8, 3])).shape  # ==> [8, 64]
    ```
    """

    def __init__(self, units=(64, 64), activation: str = "leaky_relu", seed=None, **kwargs):
        super().__init__(**kwargs)
        self.units = tuple(int(u) for u in units)
        self.activation = activation
        self.seed = seed
        self.dense_layers = [
            tf_keras.layers.Dense(
                width, activation=activation, name=f"dense_{i}",
                kernel_initializer=seeded_initializer(seed, i))
            for i, width in enumerate(self.units)
        ]

    def call(self, x):
        for layer in self.dense_layers:
            x = layer(x)
        return x

    def get_config(self):
        return {**base_config(self), "units": list(self.units),
                "activation": self.activation, "seed": self.seed}


@serializable
class Dense(RestorableLayer, tf_keras.layers.Dense):
    """`tf_keras.layers.Dense`, whose weights a model can take from an older file's paths."""


def seeded_initializer(seed, offset: int):
    """Glorot-uniform weights that a seed fixes; each layer takes its own offset."""
    return tf_keras.initializers.GlorotUniform(seed=None if seed is None else seed + offset)


POSTERIOR_SCALE_FLOOR = 1e-5


def unit_posterior_scale() -> float:
    """The raw parameter of a posterior scale of 1 (the prior's), above `POSTERIOR_SCALE_FLOOR`."""
    return float(softplus_inverse(np.float32(1.0 - POSTERIOR_SCALE_FLOOR)))


def fill_scale_tril(params, event_size: int, diagonal_floor: float = POSTERIOR_SCALE_FLOOR):
    """A lower-triangular K x K scale from K (K + 1) / 2 numbers: row by row, diagonal softplus + floor.

    The same map as TFP's `FillScaleTriL` up to the order of the numbers, with
    indices fixed at trace time, so XLA compiles it and its gradient.
    """
    rows, columns = np.tril_indices(event_size)
    positions = np.zeros((event_size, event_size), np.int32)
    positions[rows, columns] = np.arange(len(rows)) + 1
    padded = tf.concat([tf.zeros_like(params[..., :1]), params], axis=-1)
    tril = tf.gather(padded, positions, axis=-1)
    return tf.where(np.eye(event_size, dtype=bool), tf.math.softplus(tril) + diagonal_floor, tril)


@serializable
class FullPosterior(RebuiltFromConfig, tfpl.MultivariateNormalTriL):
    """q(z|x) = N(loc, L L^T), a full covariance from `params_size(K)` numbers.

    TFP's `MultivariateNormalTriL` with a scale map XLA can compile
    (`fill_scale_tril`) and a `get_config` that rebuilds it.

    #### Example

    ```python
    head = FullPosterior(event_size=2)
    qz = head(tf.zeros([8, FullPosterior.params_size(2)]))
    qz.scale.to_dense().shape  # ==> [8, 2, 2]
    ```
    """

    def __init__(self, event_size: int, **kwargs):
        tfpl.DistributionLambda.__init__(self, lambda t: FullPosterior.new(t, event_size), MEAN, **kwargs)
        self.event_size = event_size

    @staticmethod
    def new(params, event_size: int):
        return tfd.MultivariateNormalTriL(
            loc=params[..., :event_size], scale_tril=fill_scale_tril(params[..., event_size:], event_size))

    @staticmethod
    def prior_params(event_size: int) -> np.ndarray:
        """The parameters of N(0, I), the prior: a zero mean, and a scale with unit diagonal."""
        rows, columns = np.tril_indices(event_size)
        scale = np.where(rows == columns, unit_posterior_scale(), 0.0)
        return np.concatenate([np.zeros(event_size), scale]).astype(np.float32)

    def get_config(self):
        return {**base_config(self), "event_size": self.event_size}


@serializable
class DiagonalPosterior(RebuiltFromConfig, tfpl.DistributionLambda):
    """q(z|x) = N(loc, diag(softplus(raw)^2)) from `2 K` numbers.

    #### Example

    ```python
    head = DiagonalPosterior(event_size=2)
    qz = head(tf.zeros([8, DiagonalPosterior.params_size(2)]))
    qz.stddev().shape  # ==> [8, 2]
    ```
    """

    def __init__(self, event_size: int, **kwargs):
        super().__init__(lambda t: DiagonalPosterior.new(t, event_size), MEAN, **kwargs)
        self.event_size = event_size

    @staticmethod
    def new(params, event_size: int):
        loc, raw_scale = params[..., :event_size], params[..., event_size:]
        return tfd.MultivariateNormalDiag(loc=loc, scale_diag=POSTERIOR_SCALE_FLOOR + tf.math.softplus(raw_scale))

    @staticmethod
    def params_size(event_size: int) -> int:
        return 2 * event_size

    @staticmethod
    def prior_params(event_size: int) -> np.ndarray:
        """The parameters of N(0, I), the prior."""
        return np.concatenate([np.zeros(event_size), np.full(event_size, unit_posterior_scale())]).astype(np.float32)

    def get_config(self):
        return {**base_config(self), "event_size": self.event_size}


def floored_softplus(raw, floor: float):
    """`floor + softplus(raw)`: a standard deviation that is positive and never below `floor`."""
    return floor + tf.math.softplus(raw)


class FlooredDecoderHead(RebuiltFromConfig):
    """A decoder head whose distribution comes from `new(params, event_size, min_scale)`."""

    def __init__(self, event_size: int, min_scale: float = 1e-3, **kwargs):
        tfpl.DistributionLambda.__init__(self, lambda t: type(self).new(t, event_size, min_scale), MEAN, **kwargs)
        self.event_size = event_size
        self.min_scale = min_scale

    def get_config(self):
        return {**base_config(self), "event_size": self.event_size, "min_scale": self.min_scale}


@serializable
class DecoderNormal(FlooredDecoderHead, tfpl.IndependentNormal):
    """p(x|z) = prod_d N(x_d; loc_d, min_scale + softplus(raw_d)) from `2 D` numbers.

    TFP's `IndependentNormal` lets the softplus scale reach zero, where a learned
    variance makes the likelihood unbounded; this one floors it at `min_scale`.

    #### Example

    ```python
    head = DecoderNormal(event_size=3, min_scale=1e-3)
    px = head(tf.zeros([8, DecoderNormal.params_size(3)]))
    px.stddev()  # ==> 1e-3 + log(2) everywhere
    ```
    """

    @staticmethod
    def new(params, event_size: int, min_scale: float = 1e-3):
        loc, raw_scale = params[..., :event_size], params[..., event_size:]
        return tfd.Independent(
            tfd.Normal(loc=loc, scale=floored_softplus(raw_scale, min_scale)),
            reinterpreted_batch_ndims=1)

    @staticmethod
    def params_size(event_size: int) -> int:
        return 2 * event_size


@serializable
class DecoderFullNormal(FlooredDecoderHead, tfpl.MultivariateNormalTriL):
    """p(x|z) = N(loc, S S^T), S lower-triangular with diagonal `min_scale + softplus(raw)`.

    TFP's `MultivariateNormalTriL` from `params_size(D)` numbers with `fill_scale_tril`'s
    map: features whose noise is correlated, differently for each z (derived
    columns, totals, ratios), get a residual covariance a diagonal cannot give.

    #### Example

    ```python
    head = DecoderFullNormal(event_size=3, min_scale=1e-3)
    px = head(tf.zeros([8, DecoderFullNormal.params_size(3)]))
    px.scale.to_dense().shape  # ==> [8, 3, 3]; diagonal 1e-3 + log(2), zeros off it
    ```
    """

    @staticmethod
    def new(params, event_size: int, min_scale: float = 1e-3):
        return tfd.MultivariateNormalTriL(
            loc=params[..., :event_size],
            scale_tril=fill_scale_tril(params[..., event_size:], event_size, diagonal_floor=min_scale))


POSTERIOR_HEADS = {"full": FullPosterior, "diagonal": DiagonalPosterior}


MIN_DEGREES_OF_FREEDOM = 2.0
# Steps of the raw parameter move log(df - 2) ten times as far: from nearly Gaussian (df 30) to heavy tails
# (df 2.5) in a few hundred optimizer steps rather than tens of thousands. Capped where a t is a Gaussian.
DEGREES_OF_FREEDOM_SPEED, MAX_LOG_DEGREES_OF_FREEDOM = 10.0, 20.0


def degrees_of_freedom(raw):
    """Student-t degrees of freedom above `MIN_DEGREES_OF_FREEDOM`, where the variance exists."""
    return MIN_DEGREES_OF_FREEDOM + tf.exp(tf.minimum(DEGREES_OF_FREEDOM_SPEED * raw, MAX_LOG_DEGREES_OF_FREEDOM))


def raw_degrees_of_freedom(df: float) -> float:
    """The raw parameter of `df` degrees of freedom (the inverse of `degrees_of_freedom`)."""
    return float(np.log(df - MIN_DEGREES_OF_FREEDOM) / DEGREES_OF_FREEDOM_SPEED)


@serializable
class DecoderStudentT(FlooredDecoderHead, tfpl.DistributionLambda):
    """p(x|z) = prod_d t_{df_d}(x_d; loc_d, min_scale + softplus(raw_d)) from `3 D` numbers.

    The numbers are the location, the raw scale and the raw degrees of freedom
    (`degrees_of_freedom`), D each: heavy tails per feature, and robustness to
    outliers a Gaussian would stretch its sigma for.

    #### Example

    ```python
    head = DecoderStudentT(event_size=3, min_scale=1e-3)
    px = head(tf.zeros([8, DecoderStudentT.params_size(3)]))
    px.distribution.df  # ==> 3 everywhere
    ```
    """

    @staticmethod
    def new(params, event_size: int, min_scale: float = 1e-3):
        loc, raw_scale, raw_df = (params[..., i * event_size:(i + 1) * event_size] for i in range(3))
        return tfd.Independent(
            tfd.StudentT(degrees_of_freedom(raw_df), loc, floored_softplus(raw_scale, min_scale)),
            reinterpreted_batch_ndims=1)

    @staticmethod
    def params_size(event_size: int) -> int:
        return 3 * event_size
