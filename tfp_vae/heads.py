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

from tfp_vae._keras import tf_keras

tfd = tfp.distributions
tfpl = tfp.layers

POSTERIORS = ("full", "diagonal")
NORMALIZATIONS = ("standardize", "whiten")
DECODER_SCALES = ("learned", "shared", "optimal", "fixed", "full")
PACKAGE = "tfp_vae"
# A DistributionLambda turns its distribution into a tensor on every call; the
# mean costs nothing, where the default, a sample, would draw noise nobody uses.
MEAN = tfd.Distribution.mean


def _layer_config(layer: tf_keras.layers.Layer) -> dict:
    """The base Keras arguments (name, trainable, dtype) of a layer."""
    return tf_keras.layers.Layer.get_config(layer)


class RebuiltFromConfig:
    """`from_config` as the constructor, replacing `Lambda`'s unpickling of functions."""

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def softplus_inverse(y):
    """The raw parameter whose softplus is `y` (for `y > 0`)."""
    return tfp.math.softplus_inverse(y)


@tf_keras.saving.register_keras_serializable(PACKAGE)
class Standardize(tf_keras.layers.Layer):
    """`(x - mean) / scale`, with the statistics held as non-trainable weights.

    `scale` is the feature's standard deviation, floored at float32's resolution
    of its mean, so a constant column is kept rather than divided by zero.

    #### Example

    ```python
    layer = Standardize(input_size=2)
    layer.set_moments(mean=[1e4, 0.0], stddev=[1e-3, 1e6])
    layer(tf.constant([[1e4 + 1e-3, -1e6]]))  # ==> [[1., -1.]]
    ```
    """

    def __init__(self, input_size: int, **kwargs):
        super().__init__(**kwargs)
        self.input_size = input_size
        self.mean = self.add_weight("mean", shape=[input_size], initializer="zeros", trainable=False)
        self.scale = self.add_weight("scale", shape=[input_size], initializer="ones", trainable=False)
        self.count = self.add_weight("count", shape=[], initializer="zeros", trainable=False)

    @property
    def is_adapted(self) -> bool:
        return bool(self.count.numpy() > 0)

    @staticmethod
    def floored_scale(mean: np.ndarray, stddev: np.ndarray) -> np.ndarray:
        floor = np.finfo(np.float32).eps * np.maximum(np.abs(mean), 1.0)
        return np.maximum(stddev, floor)

    def set_moments(self, mean, stddev, count: float = 1.0, covariance=None) -> None:
        """Sets the statistics; `covariance` is what `Whiten` needs, and is not used here."""
        mean = np.asarray(mean, np.float64)
        self.mean.assign(mean.astype(np.float32))
        self.scale.assign(self.floored_scale(mean, np.asarray(stddev, np.float64)).astype(np.float32))
        self.count.assign(float(count))

    def call(self, x):
        return (x - self.mean) / self.scale

    def inverse(self, u):
        """Raw units from standardised ones."""
        return u * self.scale + self.mean

    def raw_stddev(self, scale):
        """The raw-unit standard deviation of each feature of N(loc, S S^T) in model units.

        `scale` is the per-feature standard deviations [..., D] or a lower-triangular operator S.
        """
        return self.standardized_stddev(scale) * self.scale

    def standardized_stddev(self, scale):
        return tf.norm(scale.to_dense(), axis=-1) if is_full(scale) else scale

    def raw_distribution(self, loc, scale):
        """N(loc, S S^T) in model units, as a distribution over raw rows (`scale` as in `raw_stddev`)."""
        if is_full(scale):
            return tfd.MultivariateNormalTriL(self.inverse(loc), self.scale[:, tf.newaxis] * scale.to_dense())
        return tfd.Independent(tfd.Normal(self.inverse(loc), self.raw_stddev(scale)), reinterpreted_batch_ndims=1)

    def log_det_jacobian(self):
        """sum log scale: what a density loses going from standardised to raw units."""
        return tf.reduce_sum(tf.math.log(self.scale))

    def fold_output(self, kernel, bias):
        """`(kernel', bias')` with `self.inverse(h @ kernel + bias) == h @ kernel' + bias'`: raw units out.

        Only the way out folds: folding `(x - mean) / scale` into the next layer
        would subtract `mean / scale` after multiplying, which loses float32's
        digits to cancellation for any feature whose offset dwarfs its spread.
        """
        return kernel * self.scale, self.inverse(bias[tf.newaxis])[0]

    def get_config(self):
        return {**_layer_config(self), "input_size": self.input_size}


@tf_keras.saving.register_keras_serializable(PACKAGE)
class Whiten(Standardize):
    """Standardised, then decorrelated: `C^(-1/2) (x - mean) / scale` for the correlation matrix C.

    ZCA whitening: of all the maps that whiten the data it moves each feature
    least, so model unit d still mostly means feature d. A decoder whose noise is
    independent in these units has covariance `diag(scale) C^(1/2) diag(sigma^2)
    C^(1/2) diag(scale)` in raw units: correlated residuals, which strongly
    correlated measurements need, at the cost of three D x D products per call.
    Eigenvalues of C are floored at `EIGENVALUE_FLOOR`, so collinear or constant
    columns stay finite.

    #### Example

    ```python
    layer = Whiten(input_size=2)
    layer.set_moments(mean=[0.0, 0.0], stddev=[1.0, 10.0], covariance=[[1.0, 8.0], [8.0, 100.0]])
    layer(tf.constant([[1.0, 10.0]]))  # ==> [[0.745, 0.745]]: correlation 0.8, unit variance
    ```
    """

    EIGENVALUE_FLOOR = 1e-6

    def __init__(self, input_size: int, **kwargs):
        super().__init__(input_size, **kwargs)
        self.unmixing = self.add_weight("unmixing", shape=[input_size, input_size], initializer="identity",
                                        trainable=False)
        self.mixing = self.add_weight("mixing", shape=[input_size, input_size], initializer="identity",
                                      trainable=False)
        self.mixing_cholesky = self.add_weight("mixing_cholesky", shape=[input_size, input_size],
                                               initializer="identity", trainable=False)
        self.log_det_mixing = self.add_weight("log_det_mixing", shape=[], initializer="zeros", trainable=False)

    def set_moments(self, mean, stddev, count: float = 1.0, covariance=None) -> None:
        if covariance is None:
            raise ValueError("whitening needs the data's covariance: pass covariance=[D, D] "
                             "(tfp_vae.data.RunningMoments(covariance=True) keeps it)")
        super().set_moments(mean, stddev, count)
        scale = self.scale.numpy().astype(np.float64)
        correlation = np.asarray(covariance, np.float64) / np.outer(scale, scale)
        eigenvalues, eigenvectors = np.linalg.eigh(correlation)
        eigenvalues = np.maximum(eigenvalues, self.EIGENVALUE_FLOOR)
        self.unmixing.assign(((eigenvectors / np.sqrt(eigenvalues)) @ eigenvectors.T).astype(np.float32))
        mixing = (eigenvectors * np.sqrt(eigenvalues)) @ eigenvectors.T
        self.mixing.assign(mixing.astype(np.float32))
        self.mixing_cholesky.assign(np.linalg.cholesky(mixing).astype(np.float32))
        self.log_det_mixing.assign(0.5 * np.sum(np.log(eigenvalues)))

    def call(self, x):
        return tf.matmul(super().call(x), self.unmixing)

    def inverse(self, u):
        return super().inverse(tf.matmul(u, self.mixing))

    def standardized_stddev(self, scale):
        # Standardised units are C^(1/2) times model units (C^(1/2) is symmetric), so their
        # covariance is C^(1/2) S S^T C^(1/2): each feature's variance is a row norm of C^(1/2) S.
        if is_full(scale):
            return tf.norm(tf.matmul(self.mixing, scale.to_dense()), axis=-1)
        return tf.sqrt(tf.matmul(tf.square(scale), tf.square(self.mixing)))

    def raw_distribution(self, loc, scale):
        # diag(scale) C^(1/2) S, with C^(1/2) as its Cholesky factors: solves and the log determinant
        # stay triangular, exact and free of mixing the features' scales in one float32 matrix.
        mixing_tril = tf.linalg.LinearOperatorLowerTriangular(self.mixing_cholesky, is_non_singular=True)
        model_scale = scale if is_full(scale) else tf.linalg.LinearOperatorDiag(scale, is_positive_definite=True)
        raw_scale = tf.linalg.LinearOperatorComposition([
            tf.linalg.LinearOperatorDiag(self.scale, is_positive_definite=True),
            mixing_tril, tf.linalg.LinearOperatorAdjoint(mixing_tril), model_scale])
        return tfd.MultivariateNormalLinearOperator(self.inverse(loc), raw_scale)

    def log_det_jacobian(self):
        return super().log_det_jacobian() + self.log_det_mixing

    def fold_output(self, kernel, bias):
        return super().fold_output(tf.matmul(kernel, self.mixing), bias)


@tf_keras.saving.register_keras_serializable(PACKAGE)
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
        return {**_layer_config(self), "units": list(self.units),
                "activation": self.activation, "seed": self.seed}


def seeded_initializer(seed, offset: int):
    """Glorot-uniform weights that a seed fixes; each layer takes its own offset."""
    return tf_keras.initializers.GlorotUniform(seed=None if seed is None else seed + offset)


def is_full(scale) -> bool:
    """Whether a decoder scale is a lower-triangular operator rather than per-feature stddevs."""
    return isinstance(scale, tf.linalg.LinearOperator)


def fill_scale_tril(params, event_size: int, diagonal_floor: float = 1e-5):
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


@tf_keras.saving.register_keras_serializable(PACKAGE)
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

    def get_config(self):
        return {**_layer_config(self), "event_size": self.event_size}


@tf_keras.saving.register_keras_serializable(PACKAGE)
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
        return tfd.MultivariateNormalDiag(loc=loc, scale_diag=1e-5 + tf.math.softplus(raw_scale))

    @staticmethod
    def params_size(event_size: int) -> int:
        return 2 * event_size

    def get_config(self):
        return {**_layer_config(self), "event_size": self.event_size}


def decoder_scale(raw_scale, min_scale: float):
    """The decoder's standard deviation: positive, and never below `min_scale`."""
    return min_scale + tf.math.softplus(raw_scale)


class FlooredDecoderHead(RebuiltFromConfig):
    """A decoder head whose distribution comes from `new(params, event_size, min_scale)`."""

    def __init__(self, event_size: int, min_scale: float = 1e-3, **kwargs):
        tfpl.DistributionLambda.__init__(self, lambda t: type(self).new(t, event_size, min_scale), MEAN, **kwargs)
        self.event_size = event_size
        self.min_scale = min_scale

    def get_config(self):
        return {**_layer_config(self), "event_size": self.event_size, "min_scale": self.min_scale}


@tf_keras.saving.register_keras_serializable(PACKAGE)
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
            tfd.Normal(loc=loc, scale=decoder_scale(raw_scale, min_scale)),
            reinterpreted_batch_ndims=1)

    @staticmethod
    def params_size(event_size: int) -> int:
        return 2 * event_size


@tf_keras.saving.register_keras_serializable(PACKAGE)
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


@tf_keras.saving.register_keras_serializable(PACKAGE)
class DecoderScale(tf_keras.layers.Layer):
    """The raw scale parameters that `DecoderNormal` turns into sigma, per `mode`.

    - `"learned"`: sigma(z), a dense layer on the decoder's last hidden layer;
    - `"shared"`: one learned sigma per feature;
    - `"optimal"`: the sigma-VAE scale, a running average of the per-feature root
      mean squared error that training updates through `update_optimal`;
    - `"fixed"`: `fixed_scale` for every feature;
    - `"full"`: S(z), the `D (D + 1) / 2` numbers of a lower-triangular scale, a
      dense layer on the decoder's last hidden layer (`DecoderFullNormal`).

    Scales are in standardised units (multiples of each feature's standard
    deviation); every mode starts at sigma = 1 (`"fixed"`: at `fixed_scale`).

    #### Example

    ```python
    scale = DecoderScale(event_size=3, mode="fixed", fixed_scale=0.5)
    decoder_scale(scale(tf.zeros([8, 16])), min_scale=1e-3)  # ==> 0.5 everywhere
    ```
    """

    MOMENTUM = 0.95

    def __init__(self, event_size: int, mode: str = "learned", min_scale: float = 1e-3,
                 fixed_scale: float = 1.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        if mode not in DECODER_SCALES:
            raise ValueError(f"decoder_scale must be one of {DECODER_SCALES}, got {mode!r}")
        if not fixed_scale > min_scale:
            raise ValueError(f"fixed_scale must exceed min_scale={min_scale}, got {fixed_scale}")
        self.event_size = event_size
        self.mode = mode
        self.min_scale = min_scale
        self.fixed_scale = fixed_scale
        self.seed = seed
        unit_raw = float(softplus_inverse(np.float32(1.0 - min_scale)))
        if mode in ("learned", "full"):
            self.dense = tf_keras.layers.Dense(
                self.params_size(event_size, mode), name="dense", kernel_initializer=seeded_initializer(seed, 0),
                bias_initializer=tf_keras.initializers.Constant(self.unit_params(event_size, mode, unit_raw)))
        elif mode == "shared":
            self.raw_scale = self.add_weight(
                "raw_scale", shape=[event_size], initializer=tf_keras.initializers.Constant(unit_raw))
        elif mode == "optimal":
            self.mean_squared_error = self.add_weight(
                "mean_squared_error", shape=[event_size], initializer="ones", trainable=False,
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

    @staticmethod
    def params_size(event_size: int, mode: str) -> int:
        return event_size * (event_size + 1) // 2 if mode == "full" else event_size

    @staticmethod
    def unit_params(event_size: int, mode: str, unit_raw: float) -> np.ndarray:
        """The raw parameters of sigma = 1: `unit_raw` on the diagonal, 0 off it."""
        if mode != "full":
            return np.full(event_size, unit_raw, np.float32)
        rows, columns = np.tril_indices(event_size)
        return np.where(rows == columns, unit_raw, 0.0).astype(np.float32)

    def scale(self, raw_scale):
        """The scale `raw_scale` stands for: stddevs [..., D], or for `"full"` a lower-triangular operator."""
        if self.mode == "full":
            return tf.linalg.LinearOperatorLowerTriangular(
                fill_scale_tril(raw_scale, self.event_size, diagonal_floor=self.min_scale), is_non_singular=True)
        return decoder_scale(raw_scale, self.min_scale)

    def call(self, hidden):
        batch_shape = tf.shape(hidden)[:-1]
        if self.mode in ("learned", "full"):
            return self.dense(hidden)
        if self.mode == "shared":
            per_feature = self.raw_scale
        elif self.mode == "optimal":
            per_feature = self.raw_from_scale(tf.sqrt(self.mean_squared_error))
        else:
            per_feature = self.raw_from_scale(tf.fill([self.event_size], self.fixed_scale))
        return tf.broadcast_to(per_feature, tf.concat([batch_shape, [self.event_size]], 0))

    def raw_from_scale(self, scale):
        return softplus_inverse(tf.maximum(scale - self.min_scale, 1e-6))

    def update_optimal(self, batch_mean_squared_error):
        """Moves the stored sigma-VAE scale towards this batch's mean squared error."""
        self.mean_squared_error.assign(
            self.MOMENTUM * self.mean_squared_error + (1.0 - self.MOMENTUM) * batch_mean_squared_error)

    def get_config(self):
        return {**_layer_config(self), "event_size": self.event_size, "mode": self.mode,
                "min_scale": self.min_scale, "fixed_scale": self.fixed_scale, "seed": self.seed}
